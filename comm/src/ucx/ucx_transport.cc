// UCX transport (host memory): one ucp context and worker per transport, one endpoint per peer
// from worker addresses allgathered through the bootstrap, tag send/receive. Progress is driven
// only by our polling (ucp_worker_progress inside test()), so nothing runs or spins behind the
// caller's back and every wait has the caller's deadline.
//
// Tags: UCX matches tags worker-wide, not per endpoint, so the 64-bit UCX tag carries the
// source rank in its upper 32 bits and our tag in the lower ones; receives match it exactly.
//
// Peer failure: endpoints use UCP_ERR_HANDLING_MODE_PEER, whose error callback marks the peer
// failed; a request towards or from a failed peer then fails with Code::kPeerFailure. UCX 1.13
// drops its shared-memory transports in that mode unless POSIX_ERROR_HANDLING=y, which we set on
// our own ucp config (not the environment) unless the user chose a value.
//
// Rails: the rank's rail NIC from the cluster map (placement.h) becomes UCX's NET_DEVICES on our
// own config ("mlx5_0:1" for InfiniBand, the interface name for Ethernet), so each rank's
// inter-node traffic leaves through its own NIC, unless the user set UCX_NET_DEVICES. A NIC that
// is not a device of this machine (a topology file of another machine) is not passed (INFO).
#include <sys/stat.h>
#include <ucp/api/ucp.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "locmoe/comm/communicator.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/log.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

class UcxTransport;

struct PeerSlot {
  UcxTransport* self = nullptr;
  int peer = -1;
};

class UcxTransport final : public Transport {
 public:
  UcxTransport(int rank, int size) : rank_(rank), size_(size), eps_(size, nullptr),
                                     failed_peer_(size, UCS_OK), slots_(size) {
    for (int p = 0; p < size; ++p) slots_[p] = PeerSlot{this, p};
  }
  ~UcxTransport() override { (void)finalize(); }

  Status init(Bootstrap& bootstrap, bool peer_mode, const std::string& net_device) {
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    LOCMOE_CHECK(st == UCS_OK, Code::kSystemError, "ucp_config_read: {}", ucs_status_string(st));
    if (!net_device.empty()) {
      st = ucp_config_modify(config, "NET_DEVICES", net_device.c_str());
      if (st != UCS_OK) LOCMOE_INFO("UCX: cannot set NET_DEVICES={}: {}", net_device, ucs_status_string(st));
      else LOCMOE_INFO("UCX: rank {} uses its rail NIC, NET_DEVICES={}", rank_, net_device);
    }
    if (peer_mode && std::getenv("UCX_POSIX_ERROR_HANDLING") == nullptr) {
      // The posix transport's ERROR_HANDLING inherits MM_ERROR_HANDLING; only the latter is
      // accepted through ucp_config_modify in UCX 1.13.
      st = ucp_config_modify(config, "MM_ERROR_HANDLING", "y");
      if (st != UCS_OK) LOCMOE_INFO("UCX: cannot set MM_ERROR_HANDLING=y: {}", ucs_status_string(st));
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG;
    st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    LOCMOE_CHECK(st == UCS_OK, Code::kSystemError, "ucp_init{}: {}",
                 net_device.empty() ? "" : " with NET_DEVICES=" + net_device + " (the rank's rail NIC)",
                 ucs_status_string(st));
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    st = ucp_worker_create(context_, &wp, &worker_);
    LOCMOE_CHECK(st == UCS_OK, Code::kSystemError, "ucp_worker_create: {}", ucs_status_string(st));

    ucp_address_t* addr = nullptr;
    size_t addr_len = 0;
    st = ucp_worker_get_address(worker_, &addr, &addr_len);
    LOCMOE_CHECK(st == UCS_OK, Code::kSystemError, "ucp_worker_get_address: {}", ucs_status_string(st));
    // Addresses differ in length: agree on the longest, then allgather fixed-size slots.
    uint64_t max_len = addr_len;
    Status s = bootstrap.allreduce(&max_len, &max_len, 1, DataType::kUint64, ReduceOp::kMax);
    std::vector<uint8_t> mine(max_len + sizeof(uint64_t), 0), all;
    if (s.ok()) {
      const uint64_t len = addr_len;
      std::memcpy(mine.data(), &len, sizeof len);
      std::memcpy(mine.data() + sizeof len, addr, addr_len);
      all.resize(mine.size() * size_);
      s = bootstrap.allgather(mine.data(), all.data(), mine.size());
    }
    ucp_worker_release_address(worker_, addr);
    LOCMOE_RETURN_IF_ERROR(s);

    for (int p = 0; p < size_; ++p) {
      ucp_ep_params_t ep{};
      ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
      ep.address = reinterpret_cast<const ucp_address_t*>(all.data() + p * mine.size() + sizeof(uint64_t));
      ep.err_mode = peer_mode ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
      if (peer_mode) {
        ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
        ep.err_handler.cb = &UcxTransport::on_ep_error;
        ep.err_handler.arg = &slots_[p];
      }
      st = ucp_ep_create(worker_, &ep, &eps_[p]);
      LOCMOE_CHECK(st == UCS_OK, Code::kSystemError, "ucp_ep_create to rank {}: {}", p, ucs_status_string(st));
    }
    // LOCMOE_DEBUG=TRACE shows which UCX transports carry our messages (shm or tcp).
    if (log_level() >= LogLevel::kTrace && size_ > 1) ucp_ep_print_info(eps_[(rank_ + 1) % size_], stderr);
    return ok_status();
  }

  const char* name() const override { return "ucx"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool can_reach(int peer) const override { return peer >= 0 && peer < size_ && eps_[peer]; }
  bool supports(MemoryKind mem) const override { return mem == MemoryKind::kHost; }

  Status post_send(Request& req, int peer, uint64_t tag, const void* buf, uint64_t bytes, void*) override {
    LOCMOE_RETURN_IF_ERROR(check(peer, tag));
    ucp_request_param_t prm{};
    ucs_status_ptr_t sp = ucp_tag_send_nbx(eps_[peer], buf, bytes, wire_tag(rank_, tag), &prm);
    LOCMOE_CHECK(!UCS_PTR_IS_ERR(sp), Code::kPeerFailure, "UCX send of {} bytes to rank {} failed: {}", bytes,
                 peer, ucs_status_string(UCS_PTR_STATUS(sp)));
    req = Request{this, peer, true, tag, bytes, sp ? 0 : bytes, sp, sp == nullptr};
    return ok_status();
  }
  Status post_recv(Request& req, int peer, uint64_t tag, void* buf, uint64_t bytes, void*) override {
    LOCMOE_RETURN_IF_ERROR(check(peer, tag));
    ucp_request_param_t prm{};
    prm.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;  // always a request, so its length can be read
    ucs_status_ptr_t sp = ucp_tag_recv_nbx(worker_, buf, bytes, wire_tag(peer, tag), ~ucp_tag_t{0}, &prm);
    LOCMOE_CHECK(!UCS_PTR_IS_ERR(sp) && sp != nullptr, Code::kSystemError,
                 "UCX receive of {} bytes from rank {} failed: {}", bytes, peer,
                 ucs_status_string(UCS_PTR_STATUS(sp)));
    req = Request{this, peer, false, tag, bytes, 0, sp, false};
    return ok_status();
  }
  Status test(Request& req) override {
    if (req.done) return ok_status();
    ucp_worker_progress(worker_);
    ucs_status_t st;
    ucp_tag_recv_info_t info{};
    if (req.is_send) {
      st = ucp_request_check_status(req.handle);
    } else {
      st = ucp_tag_recv_request_test(req.handle, &info);
    }
    if (st == UCS_INPROGRESS) {
      // A receive is not tied to an endpoint, so UCX cannot fail it when the peer dies: the
      // endpoint's error callback tells us instead.
      if (failed_peer_[req.peer] != UCS_OK) {
        const ucs_status_t why = failed_peer_[req.peer];
        cancel(req);
        return error(Code::kPeerFailure, "UCX reported rank {} failed ({})", req.peer, ucs_status_string(why));
      }
      return ok_status();
    }
    ucp_request_free(req.handle);
    req.handle = nullptr;
    if (st == UCS_ERR_MESSAGE_TRUNCATED)
      return error(Code::kMismatch, "a message with tag {} from rank {} is longer than the {} bytes rank {} posted",
                   req.tag, req.peer, req.bytes, rank_);
    LOCMOE_CHECK(st == UCS_OK, Code::kPeerFailure, "UCX {} rank {} failed: {}",
                 req.is_send ? "send to" : "receive from", req.peer, ucs_status_string(st));
    req.bytes_done = req.is_send ? req.bytes : info.length;
    req.done = true;
    return ok_status();
  }
  void progress() override { ucp_worker_progress(worker_); }
  void cancel(Request& req) override {
    if (!req.handle) return;
    ucp_request_cancel(worker_, req.handle);
    ucp_request_free(req.handle);
    req.handle = nullptr;
  }
  void mark_failed() override { job_failed_ = true; }

  Status finalize() override {
    if (!worker_) {
      if (context_) ucp_cleanup(context_);
      context_ = nullptr;
      return ok_status();
    }
    // Healthy: flush-close so messages in flight still reach their peer; after a failure (or if
    // the flush does not finish quickly) force-close, which never waits for a peer.
    std::vector<void*> closing;
    for (int p = 0; p < size_; ++p) {
      if (!eps_[p]) continue;
      ucp_request_param_t prm{};
      prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      prm.flags = (job_failed_ || failed_peer_[p] != UCS_OK) ? UCP_EP_CLOSE_FLAG_FORCE : 0;
      ucs_status_ptr_t sp = ucp_ep_close_nbx(eps_[p], &prm);
      if (sp && !UCS_PTR_IS_ERR(sp)) closing.push_back(sp);
      eps_[p] = nullptr;
    }
    const auto deadline = Clock::now() + std::chrono::seconds(job_failed_ ? 1 : 10);
    for (void* r : closing) {
      while (ucp_request_check_status(r) == UCS_INPROGRESS && Clock::now() < deadline)
        ucp_worker_progress(worker_);
      if (ucp_request_check_status(r) != UCS_INPROGRESS) ucp_request_free(r);
    }
    ucp_worker_destroy(worker_);
    worker_ = nullptr;
    ucp_cleanup(context_);
    context_ = nullptr;
    return ok_status();
  }

 private:
  static ucp_tag_t wire_tag(int src, uint64_t tag) { return (static_cast<ucp_tag_t>(src) << 32) | tag; }
  Status check(int peer, uint64_t tag) const {
    LOCMOE_CHECK_RANGE(peer >= 0 && peer < size_, "peer rank {} out of range [0, {})", peer, size_);
    LOCMOE_CHECK_RANGE(tag < (1u << 30), "tag {} exceeds 2^30", tag);
    LOCMOE_CHECK(failed_peer_[peer] == UCS_OK, Code::kPeerFailure, "UCX reported rank {} failed ({})", peer,
                 ucs_status_string(failed_peer_[peer]));
    return ok_status();
  }
  static void on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* slot = static_cast<PeerSlot*>(arg);
    slot->self->failed_peer_[slot->peer] = status;
    LOCMOE_INFO("UCX endpoint to rank {} failed: {}", slot->peer, ucs_status_string(status));
  }

  int rank_, size_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<ucp_ep_h> eps_;
  std::vector<ucs_status_t> failed_peer_;
  std::vector<PeerSlot> slots_;
  bool job_failed_ = false;
};

bool exists(const std::string& path) {
  struct stat sb;
  return stat(path.c_str(), &sb) == 0;
}

}  // namespace

std::string ucx_net_device(const RankDescriptor& me) {
  if (std::getenv("UCX_NET_DEVICES") != nullptr || me.nic_name.empty() ||
      me.nic_name.find_first_of("/:,") != std::string::npos)
    return "";
  if (me.nic_kind == "ib" && exists("/sys/class/infiniband/" + me.nic_name)) return me.nic_name + ":1";
  if (me.nic_kind != "ib" && exists("/sys/class/net/" + me.nic_name)) return me.nic_name;
  LOCMOE_INFO("UCX: rail NIC {} is not a device of this machine; UCX picks its devices itself", me.nic_name);
  return "";
}

Result<std::unique_ptr<Transport>> make_ucx_transport(Bootstrap& bootstrap, const ClusterMap* cluster) {
  LOCMOE_ASSIGN_OR_RETURN(std::string mode, params::get_string(params::Id::ucx_error_mode));
  auto t = std::make_unique<UcxTransport>(bootstrap.rank(), bootstrap.size());
  const std::string dev = cluster != nullptr ? ucx_net_device(cluster->ranks[cluster->my_rank].desc) : "";
  LOCMOE_RETURN_IF_ERROR(t->init(bootstrap, mode == "peer", dev));
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace locmoe
