// TCP rendezvous bootstrap: a star around rank 0. Each message is a frame header {magic, op,
// bytes} followed by the payload, so a peer calling a different collective (or the same one with
// another size) is detected and named instead of corrupting the stream. Sockets are blocking
// only in the sense of their data; every wait goes through poll() with the deadline.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

constexpr uint32_t kMagic = 0x4c4d4f45;  // "LMOE"
enum Op : uint32_t { kHello = 1, kAllgather, kAllreduce, kBroadcast, kBarrier };
const char* op_name(uint32_t op) {
  switch (op) {
    case kHello: return "hello";
    case kAllgather: return "allgather";
    case kAllreduce: return "allreduce";
    case kBroadcast: return "broadcast";
    case kBarrier: return "barrier";
  }
  return "unknown";
}

struct Frame {
  uint32_t magic;
  uint32_t op;
  uint64_t bytes;
};

using TimePoint = std::chrono::steady_clock::time_point;

int ms_left(TimePoint deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1000));
}

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

  Status connect_all(const std::string& addr, int port) {
    const TimePoint deadline = make_deadline();
    if (rank_ == 0) return accept_all(port, deadline);
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
    return send_frame(0, kHello, hello, sizeof hello);
  }

  Status allgather(const void* send, void* recv, size_t bytes) override {
    auto* out = static_cast<char*>(recv);
    if (send != recv) std::memmove(out + rank_ * bytes, send, bytes);
    const TimePoint deadline = make_deadline();
    if (rank_ != 0) {
      LOCMOE_RETURN_IF_ERROR(send_frame(0, kAllgather, out + rank_ * bytes, bytes));
      return recv_frame(0, kAllgather, out, bytes * size_, deadline);
    }
    for (int r = 1; r < size_; ++r) LOCMOE_RETURN_IF_ERROR(recv_frame(r, kAllgather, out + r * bytes, bytes, deadline));
    for (int r = 1; r < size_; ++r) LOCMOE_RETURN_IF_ERROR(send_frame(r, kAllgather, out, bytes * size_));
    return ok_status();
  }

  Status allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    const size_t bytes = count * data_type_size(type);
    if (send != recv) std::memmove(recv, send, bytes);
    const TimePoint deadline = make_deadline();
    if (rank_ != 0) {
      LOCMOE_RETURN_IF_ERROR(send_frame(0, kAllreduce, recv, bytes));
      return recv_frame(0, kAllreduce, recv, bytes, deadline);
    }
    std::vector<char> other(bytes);
    for (int r = 1; r < size_; ++r) {
      LOCMOE_RETURN_IF_ERROR(recv_frame(r, kAllreduce, other.data(), bytes, deadline));
      reduce(recv, other.data(), count, type, op);
    }
    for (int r = 1; r < size_; ++r) LOCMOE_RETURN_IF_ERROR(send_frame(r, kAllreduce, recv, bytes));
    return ok_status();
  }

  Status broadcast(void* buf, size_t bytes, int root) override {
    LOCMOE_CHECK_RANGE(root >= 0 && root < size_, "broadcast root {} out of range [0, {})", root, size_);
    const TimePoint deadline = make_deadline();
    if (rank_ != 0) {
      if (rank_ == root) LOCMOE_RETURN_IF_ERROR(send_frame(0, kBroadcast, buf, bytes));
      return rank_ == root ? recv_frame(0, kBroadcast, nullptr, 0, deadline)  // completion notice
                           : recv_frame(0, kBroadcast, buf, bytes, deadline);
    }
    if (root != 0) LOCMOE_RETURN_IF_ERROR(recv_frame(root, kBroadcast, buf, bytes, deadline));
    for (int r = 1; r < size_; ++r)
      LOCMOE_RETURN_IF_ERROR(r == root ? send_frame(r, kBroadcast, nullptr, 0) : send_frame(r, kBroadcast, buf, bytes));
    return ok_status();
  }

  Status barrier() override {
    const TimePoint deadline = make_deadline();
    if (rank_ != 0) {
      LOCMOE_RETURN_IF_ERROR(send_frame(0, kBarrier, nullptr, 0));
      return recv_frame(0, kBarrier, nullptr, 0, deadline);
    }
    for (int r = 1; r < size_; ++r) LOCMOE_RETURN_IF_ERROR(recv_frame(r, kBarrier, nullptr, 0, deadline));
    for (int r = 1; r < size_; ++r) LOCMOE_RETURN_IF_ERROR(send_frame(r, kBarrier, nullptr, 0));
    return ok_status();
  }

 private:
  TimePoint make_deadline() const {
    return std::chrono::steady_clock::now() +
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s_));
  }

  Status accept_all(int port, TimePoint deadline) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    LOCMOE_CHECK(lfd >= 0, Code::kSystemError, "socket: {}", std::strerror(errno));
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    sa.sin_port = htons(static_cast<uint16_t>(port));
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, size_) != 0) {
      const int e = errno;
      ::close(lfd);
      return error(Code::kSystemError, "rank 0 cannot listen on port {}: {}", port, std::strerror(e));
    }
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
      if (status.ok() && (f.magic != kMagic || f.op != kHello || f.bytes != sizeof hello))
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
    ::close(lfd);
    return status;
  }

  Status send_frame(int peer, uint32_t op, const void* data, size_t bytes) {
    Frame f{kMagic, op, bytes};
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
  Status recv_frame(int peer, uint32_t op, void* data, size_t bytes, TimePoint deadline) {
    Frame f{};
    const std::string who = "rank " + std::to_string(peer);
    LOCMOE_RETURN_IF_ERROR(recv_raw(fds_[peer], &f, sizeof f, deadline, who));
    LOCMOE_CHECK(f.magic == kMagic, Code::kMismatch, "TCP bootstrap: garbage from rank {}", peer);
    LOCMOE_CHECK(f.op == op && f.bytes == bytes, Code::kMismatch,
                 "TCP bootstrap: rank {} called {} of {} bytes while rank {} called {} of {} bytes", peer, op_name(f.op),
                 f.bytes, rank_, op_name(op), bytes);
    return recv_raw(fds_[peer], data, bytes, deadline, who);
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

Result<std::unique_ptr<Bootstrap>> make_tcp_bootstrap(const std::string& addr, int port, int rank, int size) {
  LOCMOE_CHECK_ARG(size >= 1, "world size {} must be at least 1", size);
  LOCMOE_CHECK_RANGE(rank >= 0 && rank < size, "rank {} out of range [0, {})", rank, size);
  LOCMOE_CHECK_RANGE(port > 0 && port < 65536, "port {} out of range (0, 65536)", port);
  LOCMOE_ASSIGN_OR_RETURN(double timeout_s, params::get_float(params::Id::timeout_s));
  LOCMOE_CHECK_ARG(timeout_s > 0, "LOCMOE_TIMEOUT_S={} must be positive", timeout_s);
  auto b = std::make_unique<TcpBootstrap>(rank, size, timeout_s);
  if (size > 1) LOCMOE_RETURN_IF_ERROR(b->connect_all(addr, port));
  return std::unique_ptr<Bootstrap>(std::move(b));
}

Result<std::unique_ptr<Bootstrap>> make_bootstrap_from_env() {
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
    return make_mpi_bootstrap(MPI_COMM_WORLD);
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
  }
  LOCMOE_ASSIGN_OR_RETURN(int rank, int_env("RANK"));
  LOCMOE_ASSIGN_OR_RETURN(int size, int_env("WORLD_SIZE"));
  return make_tcp_bootstrap(addr, port, rank, size);
}

}  // namespace locmoe
