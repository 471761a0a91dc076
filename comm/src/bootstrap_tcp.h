// Internal to comm/: the pieces of the TCP bootstrap that the two-level bootstrap
// (bootstrap_tree.cc) builds its per-host and leaders' groups from, and the two-level bootstrap
// itself, which make_tcp_bootstrap returns for a job on several hosts.
#pragma once

#include <memory>
#include <string>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe::tcp_detail {

// A socket listening on every interface. Port 0 asks the kernel for a free one (port() says
// which): a group's root learns its port before anyone connects, with no race for it.
class Listener {
 public:
  static Result<Listener> open(int port);
  Listener(Listener&& o) noexcept : fd_(o.fd_), port_(o.port_) { o.fd_ = -1; }
  Listener& operator=(Listener&&) = delete;
  Listener(const Listener&) = delete;
  ~Listener();
  int fd() const { return fd_; }
  int port() const { return port_; }

 private:
  Listener() = default;
  int fd_ = -1;
  int port_ = 0;
};

// A star around rank 0 (the TCP bootstrap of bootstrap.h): rank 0 accepts `size - 1` ranks on
// `listener`; every other rank connects to addr:port (and passes no listener). Collective over
// the `size` ranks; the deadline of every wait is `timeout_s` (resolved, > 0).
Result<std::unique_ptr<Bootstrap>> make_star(const Listener* listener, const std::string& addr, int port, int rank,
                                             int size, double timeout_s);

// Rank != 0 of a star made by make_star: the IPv4 address (dotted) of this rank's end of its
// socket to rank 0, an address of this host that the ranks on this host can connect to.
Result<std::string> address_towards_root(const Bootstrap& star);

// Collective over `world` (a star made by make_star; `root_addr` is how its ranks reach rank 0).
// On a job whose ranks are on several hosts (local_host_id) with more than one rank on some host,
// a bootstrap whose large collectives (result >= LOCMOE_BOOTSTRAP_TREE_BYTES) go through one
// leader per host: inside each host, then among the leaders, then inside each host again, so a
// host's link carries a collective's bytes about once instead of once per rank on other hosts.
// Small collectives, barriers, rejections and aborts stay on the star. Otherwise `world` itself.
Result<std::unique_ptr<Bootstrap>> make_two_level(std::unique_ptr<Bootstrap> world, const std::string& root_addr,
                                                  double timeout_s);

}  // namespace locmoe::tcp_detail
