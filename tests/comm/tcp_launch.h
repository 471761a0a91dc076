// Forked ranks of a TCP-bootstrapped job for the comm tests: each child finds the others through
// torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and make_bootstrap_from_env,
// and reports through its exit code.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "locmoe/core/params.h"
#include "locmoe/core/status.h"

namespace locmoe {
namespace {

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);
  return ntohs(sa.sin_port);
}

// Child exit code: 0 on success, else the Status code (or 100 for a failed check).
int code_of(const Status& s) {
  if (!s.ok()) std::fprintf(stderr, "rank %s: %s\n", std::getenv("RANK"), s.to_string().c_str());
  return s.ok() ? 0 : static_cast<int>(s.code());
}
#define CHILD_CHECK(cond)                                                                   \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "rank %s: check failed: %s\n", std::getenv("RANK"), #cond);     \
      return 100;                                                                           \
    }                                                                                       \
  } while (0)

// Runs body(rank) in `ranks` forked processes of a `world`-sized job; returns exit codes.
std::vector<int> launch(int world, const std::vector<int>& ranks, double timeout_s,
                        const std::function<int(int)>& body) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r : ranks) {
    pid_t pid = fork();
    if (pid == 0) {
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      setenv("LOCMOE_TIMEOUT_S", fmt::format("{}", timeout_s).c_str(), 1);
      unsetenv("LOCMOE_BOOTSTRAP");
      unsetenv("OMPI_COMM_WORLD_SIZE");
      params::reset();
      std::fflush(stderr);
      _exit(body(r));
    }
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int st = 0;
    waitpid(pid, &st, 0);
    codes.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  }
  return codes;
}


double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace
}  // namespace locmoe
