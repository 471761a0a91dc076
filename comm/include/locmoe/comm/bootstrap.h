// Bootstrap implementations (the interface is locmoe/core/bootstrap.h): MPI and TCP rendezvous.
#pragma once

#include <memory>
#include <string>

#include <mpi.h>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe {

// Bootstrap over an MPI communicator (duplicated, so our traffic never matches the caller's).
// MPI must be initialized by the caller and stay so while the bootstrap lives. Collectives are
// non-blocking MPI calls polled against LOCMOE_TIMEOUT_S: a rank that never arrives gives
// Code::kTimeout instead of a hang (Open MPI has no ULFM; see docs/ARCHITECTURE.md).
// `timeout_s`: the deadline of every collective (0 = LOCMOE_TIMEOUT_S; negative refused).
Result<std::unique_ptr<Bootstrap>> make_mpi_bootstrap(MPI_Comm comm, double timeout_s = 0);

// TCP rendezvous, for jobs started without MPI (torchrun and the like). Rank 0 listens on
// `addr`:`port` (a host name or IPv4 address of rank 0's machine; rank 0 binds all interfaces)
// and every other rank connects to it, retrying until LOCMOE_TIMEOUT_S. Small collectives go
// through rank 0 (a star). On a job spanning several hosts (LOCMOE_HOSTID, else the hostname)
// with more than one rank on some host, collectives whose result is at least
// LOCMOE_BOOTSTRAP_TREE_BYTES (default 16 KiB; the same on every rank, checked here) go through
// one leader per host (its lowest rank): inside the host, among the leaders, inside the host
// again, so a host's link carries about one copy of the result each way instead of one per rank
// on the other hosts (the router's candidate allgather, a trainer's gradient allreduce); name()
// is then "tcp-tree" (else "tcp"). The leaders listen on ports the kernel picks and connect
// over the addresses the star already uses. Every connect, accept and receive has the
// LOCMOE_TIMEOUT_S deadline; a peer that closes its socket gives Code::kPeerFailure naming it,
// one that stays silent Code::kTimeout naming it, and a peer that calls a different collective
// or size Code::kMismatch on every rank (on both paths: a large collective's header is checked
// on the star before any byte moves). A peer lost in a leaders' phase makes the rank that sees
// it abort every group it is in, so the others fail at once too. Collective (all `size` ranks).
// `rank` in [0, size). `timeout_s` as for make_mpi_bootstrap.
Result<std::unique_ptr<Bootstrap>> make_tcp_bootstrap(const std::string& addr, int port, int rank, int size,
                                                      double timeout_s = 0);

// The bootstrap the environment asks for, by LOCMOE_BOOTSTRAP:
//   mpi  - MPI_COMM_WORLD (MPI_Init is called if the caller has not; the caller finalizes);
//   tcp  - make_tcp_bootstrap with LOCMOE_BOOTSTRAP_ADDR=host:port, else MASTER_ADDR and
//          MASTER_PORT, and RANK and WORLD_SIZE (torchrun's variables). Started by torchrun's
//          agent (TORCHELASTIC_USE_AGENT_STORE=True), MASTER_ADDR:MASTER_PORT is torchrun's own
//          store: rank 0 listens on a port the kernel picks and publishes it in that store
//          (torch's TCPStore protocol, spoken here: no torch needed), so a C or C++ program under
//          `torchrun --no-python` needs no extra variable;
//   self - one process;
//   auto - mpi when OMPI_COMM_WORLD_SIZE is set (started by Open MPI's mpirun), else tcp when
//          RANK and WORLD_SIZE are set, else self.
// A missing or malformed variable is an error naming it.
Result<std::unique_ptr<Bootstrap>> make_bootstrap_from_env(double timeout_s = 0);

}  // namespace locmoe
