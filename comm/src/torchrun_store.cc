// A client of torch's TCPStore wire protocol, just what the rendezvous needs. A query is one byte
// of type followed by its arguments; strings and values travel as a little-endian uint64 length
// then the bytes. VALIDATE (type 0, then the uint32 magic 0x3C85F7CE) opens a connection; SET (1:
// key, value) has no answer; CHECK (5: uint64 count, keys) answers one byte, 0 when every key is
// set; GET (3: key) answers the value. The store (torch's libuv server, torch 2.x) keeps keys as
// given; torch's own Python client prefixes "/", so our keys never meet torch's.
#include "torchrun_store.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "locmoe/core/check.h"

namespace locmoe::tcp_detail {
namespace {

using Clock = std::chrono::steady_clock;

enum Query : uint8_t { kValidate = 0, kSet = 1, kGet = 3, kCheck = 5 };
constexpr uint32_t kValidationMagic = 0x3C85F7CE;

Clock::time_point deadline_in(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// One connection to the store; every read and write waits at most until `deadline`.
class StoreConnection {
 public:
  ~StoreConnection() {
    if (fd_ >= 0) ::close(fd_);
  }

  Status open(const std::string& host, int port, Clock::time_point deadline) {
    where_ = fmt::format("torchrun's store at {}:{}", host, port);
    deadline_ = deadline;
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    LOCMOE_CHECK(rc == 0, Code::kInvalidArgument, "cannot resolve MASTER_ADDR '{}': {}", host, gai_strerror(rc));
    int last_errno = 0;
    while (fd_ < 0) {  // torchrun starts its store before its workers; retry anyway until the deadline
      for (addrinfo* a = res; a != nullptr && fd_ < 0; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          fd_ = fd;
          break;
        }
        last_errno = errno;
        if (fd >= 0) ::close(fd);
      }
      if (fd_ < 0 && Clock::now() > deadline_) break;
      if (fd_ < 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    freeaddrinfo(res);
    LOCMOE_CHECK(fd_ >= 0, Code::kTimeout, "could not connect to {} within the deadline: {}", where_,
                 std::strerror(last_errno));
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::vector<char> q;
    q.push_back(static_cast<char>(kValidate));
    append_raw(q, &kValidationMagic, sizeof kValidationMagic);
    return send(q);
  }

  Status set(const std::string& key, const std::string& value) {
    std::vector<char> q{static_cast<char>(kSet)};
    append_string(q, key);
    append_string(q, value);
    return send(q);
  }

  Result<bool> has(const std::string& key) {
    std::vector<char> q{static_cast<char>(kCheck)};
    const uint64_t one = 1;
    append_raw(q, &one, sizeof one);
    append_string(q, key);
    LOCMOE_RETURN_IF_ERROR(send(q));
    uint8_t answer = 1;
    LOCMOE_RETURN_IF_ERROR(recv(&answer, 1));
    LOCMOE_CHECK(answer <= 1, Code::kMismatch, "{} answered CHECK with {}: not a torch TCPStore?", where_, answer);
    return answer == 0;
  }

  Result<std::string> get(const std::string& key) {
    std::vector<char> q{static_cast<char>(kGet)};
    append_string(q, key);
    LOCMOE_RETURN_IF_ERROR(send(q));
    uint64_t n = 0;
    LOCMOE_RETURN_IF_ERROR(recv(&n, sizeof n));
    LOCMOE_CHECK(n <= 4096, Code::kMismatch, "{}: the value of '{}' is {} bytes, not an address", where_, key, n);
    std::string value(n, '\0');
    LOCMOE_RETURN_IF_ERROR(recv(value.data(), n));
    return value;
  }

  const std::string& where() const { return where_; }

 private:
  // The protocol is little-endian, as are the hosts torch runs on.
  static void append_raw(std::vector<char>& q, const void* p, size_t n) {
    q.insert(q.end(), static_cast<const char*>(p), static_cast<const char*>(p) + n);
  }
  static void append_string(std::vector<char>& q, const std::string& s) {
    const uint64_t n = s.size();
    append_raw(q, &n, sizeof n);
    q.insert(q.end(), s.begin(), s.end());
  }

  Status wait_for(short events) {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
      LOCMOE_CHECK(left > 0, Code::kTimeout, "{} did not answer within the deadline", where_);
      pollfd p{fd_, events, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (ready > 0) return ok_status();
      LOCMOE_CHECK(ready == 0 || errno == EINTR, Code::kSystemError, "poll on {}: {}", where_, std::strerror(errno));
    }
  }
  Status send(const std::vector<char>& q) {
    for (size_t done = 0; done < q.size();) {
      LOCMOE_RETURN_IF_ERROR(wait_for(POLLOUT));
      const ssize_t n = ::send(fd_, q.data() + done, q.size() - done, MSG_NOSIGNAL);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      LOCMOE_CHECK(n > 0, Code::kPeerFailure, "sending to {} failed: {}", where_, std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    return ok_status();
  }
  Status recv(void* out, size_t bytes) {
    char* p = static_cast<char*>(out);
    while (bytes > 0) {
      LOCMOE_RETURN_IF_ERROR(wait_for(POLLIN));
      const ssize_t n = ::recv(fd_, p, bytes, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      LOCMOE_CHECK(n > 0, Code::kPeerFailure, "{} closed the connection ({})", where_,
                   n == 0 ? "torchrun's agent exited?" : std::strerror(errno));
      p += n;
      bytes -= static_cast<size_t>(n);
    }
    return ok_status();
  }

  int fd_ = -1;
  std::string where_;
  Clock::time_point deadline_;
};

}  // namespace

bool started_by_torchrun_agent() {
  const char* v = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  return v && std::string(v) == "True" && std::getenv("MASTER_ADDR") && std::getenv("MASTER_PORT");
}

std::string store_key(int ordinal) {
  const char* run = std::getenv("TORCHELASTIC_RUN_ID");
  const char* restart = std::getenv("TORCHELASTIC_RESTART_COUNT");
  return fmt::format("locmoe-c/{}/{}/group{}", run ? run : "", restart ? restart : "0", ordinal);
}

Status store_set(const std::string& host, int port, const std::string& key, const std::string& value,
                 double timeout_s) {
  StoreConnection c;
  LOCMOE_RETURN_IF_ERROR(c.open(host, port, deadline_in(timeout_s)));
  LOCMOE_RETURN_IF_ERROR(c.set(key, value));
  // SET has no answer: a CHECK of the key makes sure the store has it before the connection closes.
  LOCMOE_ASSIGN_OR_RETURN(bool there, c.has(key));
  LOCMOE_CHECK(there, Code::kSystemError, "{} does not hold '{}' after setting it", c.where(), key);
  return ok_status();
}

Result<std::string> store_get(const std::string& host, int port, const std::string& key, double timeout_s) {
  const auto deadline = deadline_in(timeout_s);
  StoreConnection c;
  LOCMOE_RETURN_IF_ERROR(c.open(host, port, deadline));
  auto pause = std::chrono::milliseconds(1);
  while (true) {
    LOCMOE_ASSIGN_OR_RETURN(bool there, c.has(key));
    if (there) return c.get(key);
    LOCMOE_CHECK(Clock::now() + pause < deadline, Code::kTimeout,
                 "rank 0 did not publish its rendezvous address in {} within LOCMOE_TIMEOUT_S={} s (key '{}')",
                 c.where(), timeout_s, key);
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
}

Result<std::string> address_towards(const std::string& host) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  const int rc = getaddrinfo(host.c_str(), "9", &hints, &res);
  LOCMOE_CHECK(rc == 0, Code::kInvalidArgument, "cannot resolve '{}': {}", host, gai_strerror(rc));
  // A UDP connect sends nothing: it only asks the kernel for the route, whose source is this end.
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in mine{};
  socklen_t len = sizeof mine;
  const bool ok = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &len) == 0;
  const int e = errno;
  if (fd >= 0) ::close(fd);
  freeaddrinfo(res);
  LOCMOE_CHECK(ok, Code::kSystemError, "no route from this host to '{}': {}", host, std::strerror(e));
  char text[INET_ADDRSTRLEN] = {0};
  LOCMOE_CHECK(::inet_ntop(AF_INET, &mine.sin_addr, text, sizeof text) != nullptr, Code::kSystemError, "inet_ntop: {}",
               std::strerror(errno));
  return std::string(text);
}

}  // namespace locmoe::tcp_detail
