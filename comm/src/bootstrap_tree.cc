// The two-level TCP bootstrap: the star around rank 0 (bootstrap_tcp.cc) for every small
// collective, and for large ones a path through one leader per host. Why: in a star, rank 0's
// host link carries an allgather's whole result once per rank on the other hosts (8 ranks on 2
// hosts: 4 copies out, plus the 4 parts in), and the router's candidate allgather and a trainer's
// dense-gradient allreduce are large; through the leaders that link carries one copy each way.
//
// Matching stays global: a large collective first allgathers its Header over the star, so a peer
// in another collective (or at another step) is named on every rank exactly as on the star, and a
// rejecting rank (Bootstrap::reject, on the star) pairs with that header exchange. Only then do
// bytes move: inside each host (a star around the host's leader, its lowest rank), among the
// leaders (a star around rank 0), inside each host again. Those groups see only collectives all
// their members reached together, so the only failures left there are a dead or stopped peer: the
// rank that sees one aborts all three groups, and every rank learns it at once.
#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "bootstrap_frame.h"
#include "bootstrap_tcp.h"
#include "locmoe/core/check.h"
#include "locmoe/core/host.h"
#include "locmoe/core/params.h"

namespace locmoe::tcp_detail {
namespace {

using namespace bootstrap_detail;

// Who is where: the nodes (hosts, numbered by their lowest rank), each rank's index inside its
// node, and the largest node. A node's leader is its lowest rank, so leader order is node order.
struct Layout {
  std::vector<int> node_of_rank, index_in_node;
  std::vector<std::vector<int>> ranks_of_node;
  size_t max_node_size = 0;
};

Layout layout_of(const std::vector<uint64_t>& host_of_rank) {
  Layout l;
  std::vector<uint64_t> hosts;
  for (const uint64_t h : host_of_rank) {
    size_t n = std::find(hosts.begin(), hosts.end(), h) - hosts.begin();
    if (n == hosts.size()) {
      hosts.push_back(h);
      l.ranks_of_node.emplace_back();
    }
    l.node_of_rank.push_back(static_cast<int>(n));
    l.index_in_node.push_back(static_cast<int>(l.ranks_of_node[n].size()));
    l.ranks_of_node[n].push_back(static_cast<int>(l.node_of_rank.size() - 1));
  }
  for (const auto& v : l.ranks_of_node) l.max_node_size = std::max(l.max_node_size, v.size());
  return l;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (const int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

// 64-bit FNV-1a: host ids of any length travel as one fixed-size word (equal ids, equal words).
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

class TwoLevelBootstrap final : public Bootstrap {
 public:
  TwoLevelBootstrap(std::unique_ptr<Bootstrap> world, std::unique_ptr<Bootstrap> host,
                    std::unique_ptr<Bootstrap> leaders, Layout layout, uint64_t tree_bytes)
      : world_(std::move(world)), host_(std::move(host)), leaders_(std::move(leaders)), layout_(std::move(layout)),
        tree_bytes_(tree_bytes), node_(layout_.node_of_rank[static_cast<size_t>(world_->rank())]) {
    host_what_ = fmt::format("inside the host of ranks {} (numbered there from 0)",
                             rank_list(layout_.ranks_of_node[static_cast<size_t>(node_)]));
    std::vector<int> leader_ranks;
    for (const auto& v : layout_.ranks_of_node) leader_ranks.push_back(v[0]);
    leaders_what_ = fmt::format("among the hosts' leaders, ranks {} (numbered there from 0)", rank_list(leader_ranks));
  }

  int rank() const override { return world_->rank(); }
  int size() const override { return world_->size(); }
  const char* name() const override { return "tcp-tree"; }

  Status allgather(const void* send, void* recv, size_t bytes) override {
    LOCMOE_RETURN_IF_ERROR(usable());
    if (!tree(bytes * static_cast<size_t>(size()))) return world_->allgather(send, recv, bytes);
    LOCMOE_RETURN_IF_ERROR(check({kAllgather, 0, seq_, bytes}));
    // Each node's block holds its ranks' parts in node order, padded to the largest node, so the
    // leaders exchange equal sizes.
    const size_t block = layout_.max_node_size * bytes;
    const size_t nodes = layout_.ranks_of_node.size();
    mine_.assign(block, 0);
    all_.resize(nodes * block);
    if (host_) {
      LOCMOE_RETURN_IF_ERROR(phase(host_->allgather(send, mine_.data(), bytes), host_what_));
    } else {
      std::memcpy(mine_.data(), send, bytes);
    }
    if (leader()) LOCMOE_RETURN_IF_ERROR(phase(leaders_->allgather(mine_.data(), all_.data(), block), leaders_what_));
    if (host_) LOCMOE_RETURN_IF_ERROR(phase(host_->broadcast(all_.data(), all_.size(), 0), host_what_));
    auto* out = static_cast<char*>(recv);
    for (int r = 0; r < size(); ++r)
      std::memcpy(out + static_cast<size_t>(r) * bytes,
                  all_.data() + static_cast<size_t>(layout_.node_of_rank[static_cast<size_t>(r)]) * block +
                      static_cast<size_t>(layout_.index_in_node[static_cast<size_t>(r)]) * bytes,
                  bytes);
    return ok_status();
  }

  Status allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    LOCMOE_RETURN_IF_ERROR(usable());
    const size_t bytes = count * data_type_size(type);
    if (!tree(bytes)) return world_->allreduce(send, recv, count, type, op);
    LOCMOE_RETURN_IF_ERROR(
        check({kAllreduce, static_cast<uint32_t>(type) << 8 | static_cast<uint32_t>(op), seq_, count}));
    if (host_) {
      LOCMOE_RETURN_IF_ERROR(phase(host_->allreduce(send, recv, count, type, op), host_what_));
    } else if (send != recv) {
      std::memmove(recv, send, bytes);
    }
    if (leader()) LOCMOE_RETURN_IF_ERROR(phase(leaders_->allreduce(recv, recv, count, type, op), leaders_what_));
    if (host_) LOCMOE_RETURN_IF_ERROR(phase(host_->broadcast(recv, bytes, 0), host_what_));
    return ok_status();
  }

  Status broadcast(void* buf, size_t bytes, int root) override {
    LOCMOE_RETURN_IF_ERROR(usable());
    if (root < 0 || root >= size())  // refused on every rank: the peers are not left waiting
      return world_->reject(error(Code::kOutOfRange, "broadcast root {} out of range [0, {})", root, size()));
    if (!tree(bytes)) return world_->broadcast(buf, bytes, root);
    LOCMOE_RETURN_IF_ERROR(check({kBroadcast, static_cast<uint32_t>(root), seq_, bytes}));
    const int root_node = layout_.node_of_rank[static_cast<size_t>(root)];
    if (host_ && node_ == root_node)
      LOCMOE_RETURN_IF_ERROR(
          phase(host_->broadcast(buf, bytes, layout_.index_in_node[static_cast<size_t>(root)]), host_what_));
    if (leader()) LOCMOE_RETURN_IF_ERROR(phase(leaders_->broadcast(buf, bytes, root_node), leaders_what_));
    if (host_ && node_ != root_node) LOCMOE_RETURN_IF_ERROR(phase(host_->broadcast(buf, bytes, 0), host_what_));
    return ok_status();
  }

  Status barrier() override {
    LOCMOE_RETURN_IF_ERROR(usable());
    return world_->barrier();
  }
  Status reject(const Status& why) override {
    if (!usable().ok()) return why;
    return world_->reject(why);
  }
  void abort(std::string_view message) override {
    world_->abort(message);
    if (host_) host_->abort(message);
    if (leaders_) leaders_->abort(message);
    if (dead_.empty()) dead_ = fmt::format("this rank aborted the group: {}", message);
  }

 private:
  bool tree(size_t result_bytes) const { return tree_bytes_ > 0 && result_bytes >= tree_bytes_; }
  bool leader() const { return layout_.index_in_node[static_cast<size_t>(rank())] == 0; }
  // Every call (either path, rejections too) starts here: each is one operation on the star on
  // every rank, so seq_ counts the same on every rank in step.
  Status usable() {
    ++seq_;
    LOCMOE_CHECK(dead_.empty(), Code::kPeerFailure, "TCP bootstrap on rank {} is unusable: {}", rank(), dead_);
    return ok_status();
  }

  // Every rank's header over the star: the same verdict on every rank (a mismatch names the first
  // rank that differs from rank 0 and both operations; a rejection on the star names its rank).
  Status check(const Header& h) {
    headers_.resize(static_cast<size_t>(size()));
    Status got = world_->allgather(&h, headers_.data(), sizeof h);
    if (!got.ok()) return got.with_context(fmt::format("TCP bootstrap {}, its header on the star", describe(h)));
    Status s = check_headers(headers_, rank(), "TCP");
    if (!s.ok()) dead_ = s.message();  // as on the star: the ranks are out of step now
    return s;
  }

  // A data phase failed here (a peer died, stopped or aborted): every group this rank is in
  // learns it at once, so no rank waits out its deadline in a later phase.
  Status phase(Status s, const std::string& what) {
    if (s.ok()) return s;
    Status out = s.with_context(fmt::format("two-level TCP bootstrap on rank {}, {}", rank(), what));
    abort(out.message());
    dead_ = out.message();
    return out;
  }

  std::unique_ptr<Bootstrap> world_, host_, leaders_;  // host_: null alone on its host; leaders_: leaders only
  Layout layout_;
  uint64_t tree_bytes_;
  int node_;
  uint64_t seq_ = 0;
  std::string dead_, host_what_, leaders_what_;
  std::vector<Header> headers_;
  std::vector<char> mine_, all_;  // reused: a step's collectives allocate once
};

// Each rank's part of the set-up exchange (fixed size, one allgather).
struct Contact {
  uint64_t host = 0;
  int64_t tree_bytes = 0;
  int32_t host_port = 0, leaders_port = 0;  // a leader's listener for its host; rank 0's for the leaders
  char address[256] = {0};                  // where this rank listens: rank 0, the root's address
};

}  // namespace

Result<std::unique_ptr<Bootstrap>> make_two_level(std::unique_ptr<Bootstrap> world, const std::string& root_addr,
                                                  double timeout_s) {
  Bootstrap& w = *world;
  const int R = w.size(), me = w.rank();
  if (R == 1) return world;
  Contact mine;
  Status input;
  auto id = local_host_id();
  auto tree_bytes = params::get_int(params::Id::bootstrap_tree_bytes);
  if (!id.ok()) input = id.status();
  else if (!tree_bytes.ok()) input = tree_bytes.status();
  if (!input.ok()) return w.reject(input.with_context("TCP bootstrap set-up"));
  mine.host = fnv1a(*id);
  mine.tree_bytes = *tree_bytes;
  std::vector<Contact> all(static_cast<size_t>(R));
  LOCMOE_RETURN_IF_ERROR(w.allgather(&mine, all.data(), sizeof mine));
  for (int r = 1; r < R; ++r)
    LOCMOE_CHECK(all[static_cast<size_t>(r)].tree_bytes == all[0].tree_bytes, Code::kMismatch,
                 "LOCMOE_BOOTSTRAP_TREE_BYTES must be the same on every rank: rank {} has {}, rank 0 has {} (this is "
                 "rank {})",
                 r, all[static_cast<size_t>(r)].tree_bytes, all[0].tree_bytes, me);
  std::vector<uint64_t> hosts;
  for (const Contact& c : all) hosts.push_back(c.host);
  Layout layout = layout_of(hosts);
  const size_t nodes = layout.ranks_of_node.size();
  if (mine.tree_bytes == 0 || nodes == 1 || nodes == static_cast<size_t>(R)) return world;

  // Listeners first (ports the kernel picks, published below), so no connect can race a bind.
  const int node = layout.node_of_rank[static_cast<size_t>(me)];
  const int index = layout.index_in_node[static_cast<size_t>(me)];
  const int host_size = static_cast<int>(layout.ranks_of_node[static_cast<size_t>(node)].size());
  std::optional<Listener> host_listener, leaders_listener;
  Status local = ok_status();
  auto listen = [&](std::optional<Listener>& l, int32_t& port) {
    auto opened = Listener::open(0);
    if (!opened.ok()) return opened.status();
    l.emplace(std::move(*opened));
    port = l->port();
    return ok_status();
  };
  if (index == 0 && host_size > 1) local = listen(host_listener, mine.host_port);
  if (local.ok() && me == 0) local = listen(leaders_listener, mine.leaders_port);
  std::string address = root_addr;
  if (local.ok() && me != 0) {
    auto a = address_towards_root(w);
    if (a.ok()) address = *a; else local = a.status();
  }
  if (local.ok() && address.size() >= sizeof mine.address)
    local = error(Code::kInvalidArgument, "bootstrap address '{}' is longer than {} bytes", address,
                  sizeof mine.address - 1);
  if (!local.ok()) return w.reject(local.with_context(fmt::format("TCP bootstrap set-up on rank {}", me)));
  std::memcpy(mine.address, address.data(), address.size());
  LOCMOE_RETURN_IF_ERROR(w.allgather(&mine, all.data(), sizeof mine));

  // Inside each host first (a leader accepts its host's ranks before it joins the leaders), then
  // among the leaders: no rank waits on one that is itself waiting on it.
  std::unique_ptr<Bootstrap> host, leaders;
  if (host_size > 1) {
    const Contact& lead = all[static_cast<size_t>(layout.ranks_of_node[static_cast<size_t>(node)][0])];
    auto made = make_star(index == 0 ? &*host_listener : nullptr, lead.address, lead.host_port, index, host_size,
                          timeout_s);
    if (made.ok()) host = std::move(*made); else local = Status(made.status()).with_context("the host's group");
  }
  if (local.ok() && index == 0) {
    auto made = make_star(me == 0 ? &*leaders_listener : nullptr, root_addr, all[0].leaders_port, node,
                          static_cast<int>(nodes), timeout_s);
    if (made.ok()) leaders = std::move(*made); else local = Status(made.status()).with_context("the leaders' group");
  }
  LOCMOE_RETURN_IF_ERROR(agree_on_input(w, local).with_context("TCP bootstrap set-up (per-host groups)"));
  return std::unique_ptr<Bootstrap>(std::make_unique<TwoLevelBootstrap>(
      std::move(world), std::move(host), std::move(leaders), std::move(layout), static_cast<uint64_t>(mine.tree_bytes)));
}

}  // namespace locmoe::tcp_detail
