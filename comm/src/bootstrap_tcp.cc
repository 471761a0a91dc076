// TCP rendezvous bootstrap: a star around rank 0. Each message is a frame {magic, kind, Header
// (operation, parameters, sequence number), payload bytes} followed by the payload, so a peer
// calling a different collective (or the same one with another size, or at another step) is
// detected and named on every rank instead of corrupting the stream. Sockets are blocking only in
// the sense of their data; every wait goes through poll() with the deadline.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "bootstrap_frame.h"
#include "bootstrap_tcp.h"
#include "torchrun_store.h"

namespace locmoe {
namespace {

using namespace bootstrap_detail;

constexpr uint32_t kMagic = 0x4c4d4f45;  // "LMOE"
// What a frame carries: a connecting rank's hello, a rank's part of a collective (kCall, `h`
// says which), rank 0's answer (kResult, or kError: h.op is the Code, the payload the message,
// h.arg is 1 when it is a rejection, which leaves every rank in step), or an abort notice
// (payload: the message).
enum Kind : uint32_t { kHello = 1, kCall, kResult, kError, kAbort };

struct Frame {
  uint32_t magic = kMagic;
  uint32_t kind = 0;
  Header h;
  uint64_t payload = 0;  // bytes that follow
};
static_assert(sizeof(Frame) == 40);
constexpr uint64_t kMaxPayload = uint64_t{1} << 34;

using TimePoint = std::chrono::steady_clock::time_point;

int ms_left(TimePoint deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1000));
}

// Every collective: each rank sends rank 0 one kCall frame (its Header and its part), rank 0
// reads all of them before it answers anyone, checks the headers, and answers every rank with the
// result or with the same verdict (kError) : a peer in another collective, or one that rejects
// its input, fails every rank at once and leaves every stream in step.
class TcpBootstrap final : public Bootstrap {
 public:
  TcpBootstrap(int rank, int size, double timeout_s) : rank_(rank), size_(size), timeout_s_(timeout_s), fds_(size, -1) {}
  ~TcpBootstrap() override {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "tcp"; }

  // Rank 0 accepts on `listener`; every other rank connects to addr:port (listener unused).
  Status connect_all(const tcp_detail::Listener* listener, const std::string& addr, int port) {
    const TimePoint deadline = make_deadline();
    if (rank_ == 0) return accept_all(*listener, deadline);
    // Resolve, then connect with retries: rank 0 may not be listening yet.
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res);
    LOCMOE_CHECK(rc == 0, Code::kInvalidArgument, "cannot resolve bootstrap address '{}': {}", addr, gai_strerror(rc));
    int fd = -1;
    int last_errno = 0;
    while (true) {
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) break;
      last_errno = errno;
      if (fd >= 0) ::close(fd);
      fd = -1;
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    freeaddrinfo(res);
    LOCMOE_CHECK(fd >= 0, Code::kTimeout, "rank {} could not connect to rank 0 at {}:{} within LOCMOE_TIMEOUT_S={} s: {}",
                 rank_, addr, port, timeout_s_, std::strerror(last_errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fds_[0] = fd;
    const int32_t hello[2] = {rank_, size_};
    return send_frame(0, kHello, Header{}, hello, sizeof hello);
  }

  Status allgather(const void* send, void* recv, size_t bytes) override {
    auto* out = static_cast<char*>(recv);
    if (send != recv) std::memmove(out + rank_ * bytes, send, bytes);
    // Each rank has its own part already: rank 0 sends it the others' (bytes * (size - 1)).
    return collective({kAllgather, 0, 0, bytes}, out + rank_ * bytes, bytes, out, bytes * size_,
                      [&](std::vector<std::vector<char>>& in) {
                        for (int r = 1; r < size_; ++r) std::memcpy(out + r * bytes, in[r].data(), bytes);
                      }, bytes);
  }

  Status allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    const size_t bytes = count * data_type_size(type);
    if (send != recv) std::memmove(recv, send, bytes);
    return collective({kAllreduce, static_cast<uint32_t>(type) << 8 | static_cast<uint32_t>(op), 0, count}, recv, bytes,
                      recv, bytes, [&](std::vector<std::vector<char>>& in) {
                        for (int r = 1; r < size_; ++r) reduce(recv, in[r].data(), count, type, op);
                      });
  }

  Status broadcast(void* buf, size_t bytes, int root) override {
    LOCMOE_CHECK_RANGE(root >= 0 && root < size_, "broadcast root {} out of range [0, {})", root, size_);
    return collective({kBroadcast, static_cast<uint32_t>(root), 0, bytes}, buf, rank_ == root && root != 0 ? bytes : 0,
                      buf, bytes, [&](std::vector<std::vector<char>>& in) {
                        if (root != 0) std::memcpy(buf, in[root].data(), bytes);
                      });
  }

  Status barrier() override {
    return collective({kBarrier, 0, 0, 0}, nullptr, 0, nullptr, 0, [](std::vector<std::vector<char>>&) {});
  }

  Status reject(const Status& why) override {
    if (size_ == 1) return why;
    const std::string& m = why.message();
    (void)collective({kReject, 0, 0, 0}, m.data(), std::min(m.size(), kReasonBytes), nullptr, 0,
                     [](std::vector<std::vector<char>>&) {});
    return why;
  }

  void abort(std::string_view message) override {
    if (size_ == 1 || !dead_.empty()) return;
    dead_ = fmt::format("this rank aborted the group: {}", message);
    const std::string text(message.substr(0, kReasonBytes));
    const std::string notice = rank_ == 0 ? fmt::format("rank 0 aborted the group: {}", text) : text;
    for (int p = 0; p < size_; ++p)
      if (fds_[p] >= 0) (void)send_frame(p, kAbort, Header{}, notice.data(), notice.size());
  }

 private:
  TimePoint make_deadline() const {
    return std::chrono::steady_clock::now() +
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s_));
  }

  // One collective. `part`: this rank's contribution (to rank 0); `result`: where the answer goes
  // (rank 0 computes it with combine(parts), parts[r] = rank r's contribution).
  // `own`: each rank's own part is in `result` at rank * own already (an allgather's), so the
  // answer to rank r leaves those bytes out.
  template <typename Combine>
  Status collective(Header h, const void* part, size_t part_bytes, void* result, size_t result_bytes,
                    Combine&& combine, size_t own = 0) {
    LOCMOE_CHECK(dead_.empty(), Code::kPeerFailure, "TCP bootstrap on rank {} is unusable: {}", rank_, dead_);
    h.seq = ++seq_;
    if (size_ == 1) return ok_status();
    // A rank waiting on rank 0 waits a little longer than rank 0 waits on anyone (a quarter more,
    // at most 2 s): when a rank is missing, rank 0's verdict, which names it, arrives first,
    // instead of each rank's own deadline racing rank 0's and naming only rank 0.
    const TimePoint deadline =
        make_deadline() + (rank_ == 0 ? std::chrono::steady_clock::duration::zero()
                                      : std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                            std::chrono::duration<double>(std::min(0.25 * timeout_s_, 2.0))));
    if (rank_ != 0) {
      if (Status sent = send_frame(0, kCall, h, part, part_bytes); !sent.ok())
        return dead_if_error(last_word_of_root(h, std::move(sent)));
      Frame f;
      LOCMOE_RETURN_IF_ERROR(dead_if_error(recv_header(0, f, deadline)));
      if (f.kind == kResult && f.h == h && f.payload == result_bytes - own) {
        char* out = static_cast<char*>(result);
        const size_t before = static_cast<size_t>(rank_) * own;
        LOCMOE_RETURN_IF_ERROR(dead_if_error(recv_raw(fds_[0], out, before, deadline, "rank 0")));
        return dead_if_error(recv_raw(fds_[0], out + before + own, result_bytes - before - own, deadline, "rank 0"));
      }
      std::string text;
      LOCMOE_RETURN_IF_ERROR(dead_if_error(recv_text(0, f, text, deadline)));
      if (f.kind == kAbort) {
        dead_ = text;
        return error(Code::kPeerFailure, "TCP bootstrap {} on rank {}: {}", describe(h), rank_, text);
      }
      if (f.kind == kError) {
        // Only a rejection (h.arg == 1) leaves the ranks in step; anything else ends the bootstrap.
        const auto code = static_cast<Code>(f.h.op);
        if (f.h.arg != 1) dead_ = text;
        return error(code, "{}", text);
      }
      dead_ = "rank 0 answered out of step";
      return error(Code::kMismatch, "TCP bootstrap on rank {}: rank 0 answered {} with a frame of kind {} for {}",
                   rank_, describe(h), f.kind, describe(f.h));
    }
    // Rank 0: every rank's part, then one verdict for all.
    std::vector<Header> all(size_);
    std::vector<std::vector<char>> in(size_);
    all[0] = h;
    if (part_bytes) in[0].assign(static_cast<const char*>(part), static_cast<const char*>(part) + part_bytes);
    std::vector<bool> got(size_, false);
    got[0] = true;
    for (int left = size_ - 1; left > 0;) {
      std::vector<pollfd> pf;
      for (int r = 1; r < size_; ++r)
        if (!got[r]) pf.push_back({fds_[r], POLLIN, 0});
      const int ready = ::poll(pf.data(), pf.size(), ms_left(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) {
        if (std::chrono::steady_clock::now() <= deadline) continue;
        std::string missing;
        for (int r = 1; r < size_; ++r)
          if (!got[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        return give_up(error(Code::kTimeout,
                             "TCP bootstrap {}: rank(s) {} sent nothing within LOCMOE_TIMEOUT_S={} s (dead or stopped; "
                             "seen by rank 0); the bootstrap is unusable now",
                             describe(h), missing, timeout_s_));
      }
      for (const pollfd& p : pf) {
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        int r = 1;
        while (fds_[r] != p.fd) ++r;
        Frame f;
        Status s = recv_header(r, f, deadline);
        if (s.ok() && f.kind == kCall && f.payload <= kMaxPayload) {
          in[r].resize(f.payload);
          s = recv_raw(fds_[r], in[r].data(), f.payload, deadline, "rank " + std::to_string(r));
          all[r] = f.h;
        } else if (s.ok()) {
          std::string text;
          s = recv_text(r, f, text, deadline);
          if (s.ok())
            s = f.kind == kAbort ? error(Code::kPeerFailure, "rank {} aborted the group: {}", r, text)
                                 : error(Code::kMismatch, "TCP bootstrap: rank {} sent a frame of kind {} in {}", r,
                                         f.kind, describe(h));
        }
        if (!s.ok()) return give_up(s.with_context(fmt::format("TCP bootstrap {} on rank 0", describe(h))));
        got[r] = true;
        --left;
      }
    }
    // The verdict, phrased for each rank.
    auto verdict = [&](int r) -> Status {
      const int rejecting = first_reject(all);
      if (rejecting >= 0) {
        const auto& why = in[rejecting];
        return rejected(rejecting, all[r], std::string_view(why.data(), why.size()));
      }
      return check_headers(all, r, "TCP");
    };
    Status mine = verdict(0);
    if (mine.ok()) combine(in);
    if (!mine.ok() && first_reject(all) < 0) dead_ = mine.message();
    for (int r = 1; r < size_; ++r) {
      Status theirs = mine.ok() ? ok_status() : verdict(r);
      Status s = theirs.ok() ? send_result(r, all[r], static_cast<const char*>(result), result_bytes, own)
                             : send_frame(r, kError,
                                          Header{static_cast<uint32_t>(theirs.code()), first_reject(all) >= 0 ? 1u : 0u, 0, 0},
                                          theirs.message().data(), theirs.message().size());
      if (!s.ok()) return give_up(s);
    }
    return mine;
  }

  // Rank 0 cannot finish a collective: every other rank learns why at once (not at its own
  // deadline), and the bootstrap is out of step, so unusable, everywhere.
  Status give_up(Status s) {
    dead_ = s.message();
    for (int r = 1; r < size_; ++r)
      if (fds_[r] >= 0)
        (void)send_frame(r, kError, Header{static_cast<uint32_t>(Code::kPeerFailure), 0, 0, 0}, s.message().data(),
                         s.message().size());
    return s;
  }
  // Rank 0 may have given up (or aborted) and exited before this rank sent its part: its verdict
  // is still in this socket's receive queue (Linux keeps it readable after the peer's close), and
  // it names the rank at fault, where the failed send names only rank 0.
  Status last_word_of_root(const Header& h, Status send_failure) {
    pollfd p{fds_[0], POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN)) return send_failure;
    const TimePoint soon = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    Frame f;
    std::string text;
    if (!recv_header(0, f, soon).ok() || (f.kind != kError && f.kind != kAbort) || !recv_text(0, f, text, soon).ok())
      return send_failure;
    if (f.kind == kAbort) return error(Code::kPeerFailure, "TCP bootstrap {} on rank {}: {}", describe(h), rank_, text);
    return error(static_cast<Code>(f.h.op), "{}", text);
  }
  Status dead_if_error(Status s) {
    if (!s.ok() && dead_.empty()) dead_ = s.message();
    return s;
  }

  Status accept_all(const tcp_detail::Listener& listener, TimePoint deadline) {
    const int lfd = listener.fd(), port = listener.port();
    int one = 1;
    int joined = 1;
    Status status;
    while (joined < size_ && status.ok()) {
      pollfd p{lfd, POLLIN, 0};
      const int ready = ::poll(&p, 1, ms_left(deadline));
      if (ready <= 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          std::string missing;
          for (int r = 1; r < size_; ++r)
            if (fds_[r] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
          status = error(Code::kTimeout, "TCP rendezvous on port {}: ranks {} did not connect within LOCMOE_TIMEOUT_S={} s",
                         port, missing, timeout_s_);
        }
        continue;
      }
      const int fd = ::accept(lfd, nullptr, nullptr);
      if (fd < 0) continue;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      int32_t hello[2] = {-1, -1};
      Frame f{};
      status = recv_raw(fd, &f, sizeof f, deadline, "a connecting rank");
      if (status.ok() && (f.magic != kMagic || f.kind != kHello || f.payload != sizeof hello))
        status = error(Code::kMismatch, "a process connected to the TCP rendezvous on port {} without a locmoe hello", port);
      if (status.ok()) status = recv_raw(fd, hello, sizeof hello, deadline, "a connecting rank");
      if (status.ok() && (hello[1] != size_ || hello[0] <= 0 || hello[0] >= size_ || fds_[hello[0]] >= 0))
        status = error(Code::kMismatch, "TCP rendezvous: a peer says it is rank {} of {}, rank 0 expects a new rank in [1, {}) of {}",
                       hello[0], hello[1], size_, size_);
      if (!status.ok()) {
        ::close(fd);
        break;
      }
      fds_[hello[0]] = fd;
      ++joined;
    }
    // The ranks that did join learn why at once (in their first collective), not at their deadline.
    if (!status.ok()) (void)give_up(status);
    return status;
  }

 public:
  // Rank != 0: the IPv4 address of this rank's end of its socket to rank 0, an address of this
  // host on the interface that reaches rank 0 (so peers on this host can connect to it too).
  Result<std::string> address_towards_root() const {
    LOCMOE_CHECK(rank_ != 0 && fds_[0] >= 0, Code::kInternal, "address_towards_root: rank {} has no socket to rank 0",
                 rank_);
    sockaddr_in sa{};
    socklen_t len = sizeof sa;
    LOCMOE_CHECK(::getsockname(fds_[0], reinterpret_cast<sockaddr*>(&sa), &len) == 0, Code::kSystemError,
                 "getsockname: {}", std::strerror(errno));
    char text[INET_ADDRSTRLEN] = {0};
    LOCMOE_CHECK(::inet_ntop(AF_INET, &sa.sin_addr, text, sizeof text) != nullptr, Code::kSystemError, "inet_ntop: {}",
                 std::strerror(errno));
    return std::string(text);
  }

 private:

  // The result of a collective for `peer`, less its own `own` bytes at peer * own.
  Status send_result(int peer, const Header& h, const char* result, size_t bytes, size_t own) {
    Frame f;
    f.kind = kResult;
    f.h = h;
    f.payload = bytes - own;
    const size_t before = static_cast<size_t>(peer) * own;
    LOCMOE_RETURN_IF_ERROR(send_raw(peer, &f, sizeof f));
    LOCMOE_RETURN_IF_ERROR(send_raw(peer, result, before));
    return send_raw(peer, result + before + own, bytes - before - own);
  }
  Status send_frame(int peer, uint32_t kind, const Header& h, const void* data, size_t bytes) {
    Frame f;
    f.kind = kind;
    f.h = h;
    f.payload = bytes;
    LOCMOE_RETURN_IF_ERROR(send_raw(peer, &f, sizeof f));
    return send_raw(peer, data, bytes);
  }
  Status send_raw(int peer, const void* data, size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::send(fds_[peer], p, bytes, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      LOCMOE_CHECK(n > 0, Code::kPeerFailure, "TCP bootstrap: sending to rank {} failed: {} (the peer died or closed)",
                   peer, std::strerror(errno));
      p += n;
      bytes -= static_cast<size_t>(n);
    }
    return ok_status();
  }
  Status recv_header(int peer, Frame& f, TimePoint deadline) {
    LOCMOE_RETURN_IF_ERROR(recv_raw(fds_[peer], &f, sizeof f, deadline, "rank " + std::to_string(peer)));
    LOCMOE_CHECK(f.magic == kMagic, Code::kMismatch, "TCP bootstrap: garbage from rank {}", peer);
    return ok_status();
  }
  // The message of a kError / kAbort frame (or skips the payload of an unexpected one).
  Status recv_text(int peer, const Frame& f, std::string& text, TimePoint deadline) {
    LOCMOE_CHECK(f.payload <= kMaxPayload, Code::kMismatch, "TCP bootstrap: garbage from rank {}", peer);
    text.resize(f.payload);
    return recv_raw(fds_[peer], text.data(), f.payload, deadline, "rank " + std::to_string(peer));
  }
  Status recv_raw(int fd, void* data, size_t bytes, TimePoint deadline, const std::string& who) {
    char* p = static_cast<char*>(data);
    while (bytes > 0) {
      pollfd pfd{fd, POLLIN, 0};
      const int ready = ::poll(&pfd, 1, ms_left(deadline));
      if (ready == 0) {
        LOCMOE_CHECK(std::chrono::steady_clock::now() <= deadline, Code::kTimeout,
                     "TCP bootstrap on rank {}: {} sent nothing within LOCMOE_TIMEOUT_S={} s (dead or stopped)", rank_, who,
                     timeout_s_);
        continue;
      }
      if (ready < 0 && errno == EINTR) continue;
      const ssize_t n = ::recv(fd, p, bytes, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      LOCMOE_CHECK(n > 0, Code::kPeerFailure, "TCP bootstrap on rank {}: {} closed the connection ({})", rank_, who,
                   n == 0 ? "it exited or died" : std::strerror(errno));
      p += n;
      bytes -= static_cast<size_t>(n);
    }
    return ok_status();
  }

  template <typename T>
  static void reduce_typed(void* acc, const void* other, size_t count, ReduceOp op) {
    auto* a = static_cast<T*>(acc);
    const auto* b = static_cast<const T*>(other);
    for (size_t i = 0; i < count; ++i) {
      switch (op) {
        case ReduceOp::kSum: a[i] = a[i] + b[i]; break;
        case ReduceOp::kMax: a[i] = std::max(a[i], b[i]); break;
        case ReduceOp::kMin: a[i] = std::min(a[i], b[i]); break;
      }
    }
  }
  static void reduce(void* acc, const void* other, size_t count, DataType type, ReduceOp op) {
    switch (type) {
      case DataType::kInt32: return reduce_typed<int32_t>(acc, other, count, op);
      case DataType::kInt64: return reduce_typed<int64_t>(acc, other, count, op);
      case DataType::kUint64: return reduce_typed<uint64_t>(acc, other, count, op);
      case DataType::kFloat32: return reduce_typed<float>(acc, other, count, op);
      case DataType::kFloat64: return reduce_typed<double>(acc, other, count, op);
    }
  }

  int rank_, size_;
  double timeout_s_;
  uint64_t seq_ = 0;
  std::string dead_;      // why the bootstrap is unusable ("" while usable)
  std::vector<int> fds_;  // rank 0: one socket per peer; others: fds_[0] only
};

Result<int> int_env(const char* name) {
  const char* v = std::getenv(name);
  LOCMOE_CHECK(v && *v, Code::kInvalidArgument, "the TCP bootstrap needs {} (set by torchrun, or by hand)", name);
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  LOCMOE_CHECK(*end == '\0' && x >= 0 && x <= INT32_MAX, Code::kInvalidArgument, "{}='{}' is not a non-negative integer",
               name, v);
  return static_cast<int>(x);
}

}  // namespace

namespace tcp_detail {

Result<Listener> Listener::open(int port) {
  LOCMOE_CHECK_RANGE(port >= 0 && port < 65536, "port {} out of range [0, 65536)", port);
  Listener l;
  l.fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  LOCMOE_CHECK(l.fd_ >= 0, Code::kSystemError, "socket: {}", std::strerror(errno));
  int one = 1;
  setsockopt(l.fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  // The backlog holds every rank that connects before accept_all runs (they may all arrive at once).
  if (::bind(l.fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(l.fd_, SOMAXCONN) != 0)
    return error(Code::kSystemError, "cannot listen on port {}: {}", port, std::strerror(errno));
  socklen_t len = sizeof sa;
  LOCMOE_CHECK(::getsockname(l.fd_, reinterpret_cast<sockaddr*>(&sa), &len) == 0, Code::kSystemError,
               "getsockname: {}", std::strerror(errno));
  l.port_ = ntohs(sa.sin_port);
  return l;
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<Bootstrap>> make_star(const Listener* listener, const std::string& addr, int port, int rank,
                                             int size, double timeout_s) {
  LOCMOE_CHECK(rank != 0 || size == 1 || listener != nullptr, Code::kInternal, "make_star: rank 0 needs a listener");
  auto b = std::make_unique<TcpBootstrap>(rank, size, timeout_s);
  if (size > 1) LOCMOE_RETURN_IF_ERROR(b->connect_all(listener, addr, port));
  return std::unique_ptr<Bootstrap>(std::move(b));
}

Result<std::string> address_towards_root(const Bootstrap& star) {
  const auto* tcp = dynamic_cast<const TcpBootstrap*>(&star);
  LOCMOE_CHECK(tcp != nullptr, Code::kInternal, "address_towards_root: a {} bootstrap is not a TCP star", star.name());
  return tcp->address_towards_root();
}

}  // namespace tcp_detail

Result<std::unique_ptr<Bootstrap>> make_tcp_bootstrap(const std::string& addr, int port, int rank, int size,
                                                      double timeout_s) {
  LOCMOE_CHECK_ARG(size >= 1, "world size {} must be at least 1", size);
  LOCMOE_CHECK_RANGE(rank >= 0 && rank < size, "rank {} out of range [0, {})", rank, size);
  LOCMOE_CHECK_RANGE(port > 0 && port < 65536, "port {} out of range (0, 65536)", port);
  LOCMOE_ASSIGN_OR_RETURN(timeout_s, resolve_timeout(timeout_s));
  std::optional<tcp_detail::Listener> listener;
  if (rank == 0 && size > 1) {
    auto l = tcp_detail::Listener::open(port);
    if (!l.ok()) return error(l.status().code(), "rank 0: {}", l.status().message());
    listener.emplace(std::move(*l));
  }
  LOCMOE_ASSIGN_OR_RETURN(std::unique_ptr<Bootstrap> star,
                          tcp_detail::make_star(listener ? &*listener : nullptr, addr, port, rank, size, timeout_s));
  listener.reset();  // every rank has joined: nothing more connects to this port
  return tcp_detail::make_two_level(std::move(star), addr, timeout_s);
}

// Under torchrun MASTER_ADDR:MASTER_PORT is the agent's store: rank 0 listens on a port of its own
// and publishes it there (torchrun_store.h). A rank 0 that cannot listen publishes its reason
// instead (a value starting with '!'), so the others fail at once, naming it.
static Result<std::unique_ptr<Bootstrap>> torchrun_bootstrap(const std::string& store_host, int store_port, int rank,
                                                             int size, double timeout_s) {
  static std::atomic<int> groups{0};  // every rank makes its groups in the same order
  LOCMOE_CHECK_RANGE(rank >= 0 && rank < size, "rank {} out of range [0, {})", rank, size);
  LOCMOE_ASSIGN_OR_RETURN(timeout_s, resolve_timeout(timeout_s));
  const std::string key = tcp_detail::store_key(groups++);
  std::optional<tcp_detail::Listener> listener;
  std::string root;
  if (rank == 0) {
    Status bad = ok_status();
    std::string me;
    if (auto l = tcp_detail::Listener::open(0); l.ok()) listener.emplace(std::move(*l)); else bad = l.status();
    if (bad.ok()) {
      if (auto a = tcp_detail::address_towards(store_host); a.ok()) me = *a; else bad = a.status();
    }
    root = bad.ok() ? fmt::format("{}:{}", me, listener->port()) : "!" + bad.message();
    LOCMOE_RETURN_IF_ERROR(tcp_detail::store_set(store_host, store_port, key, root, timeout_s));
    if (!bad.ok()) return error(bad.code(), "rank 0 cannot open the TCP rendezvous: {}", bad.message());
  } else {
    LOCMOE_ASSIGN_OR_RETURN(root, tcp_detail::store_get(store_host, store_port, key, timeout_s));
    LOCMOE_CHECK(root.empty() || root[0] != '!', Code::kPeerFailure, "rank 0 cannot open the TCP rendezvous: {}",
                 root.substr(1));
  }
  const size_t colon = root.rfind(':');
  LOCMOE_CHECK(colon != std::string::npos, Code::kMismatch, "torchrun's store holds '{}' for key '{}', not host:port",
               root, key);
  const std::string host = root.substr(0, colon);
  const int port = std::atoi(root.c_str() + colon + 1);
  LOCMOE_ASSIGN_OR_RETURN(std::unique_ptr<Bootstrap> star, tcp_detail::make_star(listener ? &*listener : nullptr, host,
                                                                                 port, rank, size, timeout_s));
  listener.reset();
  return tcp_detail::make_two_level(std::move(star), host, timeout_s);
}

Result<std::unique_ptr<Bootstrap>> make_bootstrap_from_env(double timeout_s) {
  auto requested = params::get_string(params::Id::bootstrap);
  if (!requested.ok()) return requested.status();
  const std::string_view mode = *requested != "auto"                                   ? std::string_view(*requested)
                                : std::getenv("OMPI_COMM_WORLD_SIZE")                  ? "mpi"
                                : (std::getenv("RANK") && std::getenv("WORLD_SIZE")) ? "tcp"
                                                                                       : "self";
  if (mode == "self") return std::unique_ptr<Bootstrap>(new SelfBootstrap());
  if (mode == "mpi") {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      LOCMOE_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) == MPI_SUCCESS,
                   Code::kSystemError, "MPI_Init_thread failed");
    }
    return make_mpi_bootstrap(MPI_COMM_WORLD, timeout_s);
  }
  // tcp
  LOCMOE_ASSIGN_OR_RETURN(std::string addr, params::get_string(params::Id::bootstrap_addr));
  int port = 0;
  if (!addr.empty()) {
    const size_t colon = addr.rfind(':');
    LOCMOE_CHECK_ARG(colon != std::string::npos && colon + 1 < addr.size(),
                     "LOCMOE_BOOTSTRAP_ADDR='{}' must be host:port", addr);
    char* end = nullptr;
    port = static_cast<int>(std::strtol(addr.c_str() + colon + 1, &end, 10));
    LOCMOE_CHECK_ARG(*end == '\0', "LOCMOE_BOOTSTRAP_ADDR='{}': port is not a number", addr);
    addr = addr.substr(0, colon);
  } else {
    const char* master = std::getenv("MASTER_ADDR");
    LOCMOE_CHECK_ARG(master && *master, "the TCP bootstrap needs LOCMOE_BOOTSTRAP_ADDR=host:port or MASTER_ADDR and MASTER_PORT");
    addr = master;
    LOCMOE_ASSIGN_OR_RETURN(port, int_env("MASTER_PORT"));
    LOCMOE_ASSIGN_OR_RETURN(int rank, int_env("RANK"));
    LOCMOE_ASSIGN_OR_RETURN(int size, int_env("WORLD_SIZE"));
    if (tcp_detail::started_by_torchrun_agent() && size > 1)
      return torchrun_bootstrap(addr, port, rank, size, timeout_s);
    return make_tcp_bootstrap(addr, port, rank, size, timeout_s);
  }
  LOCMOE_ASSIGN_OR_RETURN(int rank, int_env("RANK"));
  LOCMOE_ASSIGN_OR_RETURN(int size, int_env("WORLD_SIZE"));
  return make_tcp_bootstrap(addr, port, rank, size, timeout_s);
}

}  // namespace locmoe
