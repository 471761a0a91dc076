// MPI helpers shared by the MPI bootstrap and transport: error code -> text (MPI_Error_string),
// and waits on MPI requests that have a deadline (no blocking MPI call in the library: Open MPI 4.1
// has no ULFM, so a blocking collective with a dead or stopped peer would never return).
#pragma once

#include <mpi.h>

#include <chrono>
#include <string>
#include <string_view>
#include <thread>

#include "locmoe/core/check.h"

namespace locmoe {

inline std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return std::string(text, len);
}

// Polls `req` until it completes or `timeout_s` passes. Spins briefly, then naps, so that ranks
// oversubscribing the cores leave them to the peers they wait for. On timeout the request stays
// pending (MPI cannot cancel collectives): `what` and `after` say so in the error.
inline Status wait_mpi_request(MPI_Request& req, double timeout_s, std::string_view what, std::string_view after) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int done = 0;
  for (unsigned spins = 0;; ++spins) {
    const int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    LOCMOE_CHECK(rc == MPI_SUCCESS, Code::kPeerFailure, "{} failed: {}", what, mpi_error_text(rc));
    if (done) return ok_status();
    if (std::chrono::steady_clock::now() > deadline) break;
    if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return error(Code::kTimeout, "{} did not complete within LOCMOE_TIMEOUT_S={} s: a peer is dead or stopped{}", what,
               timeout_s, after);
}

// MPI_Comm_idup of `comm` waited for with a deadline; the duplicate returns errors (MPI_ERRORS_RETURN).
inline Result<MPI_Comm> dup_comm_with_deadline(MPI_Comm comm, double timeout_s) {
  MPI_Comm dup = MPI_COMM_NULL;
  MPI_Request req;
  const int rc = MPI_Comm_idup(comm, &dup, &req);
  LOCMOE_CHECK(rc == MPI_SUCCESS, Code::kSystemError, "MPI_Comm_idup failed: {}", mpi_error_text(rc));
  LOCMOE_RETURN_IF_ERROR(wait_mpi_request(req, timeout_s, "MPI_Comm_idup", ""));
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return dup;
}

}  // namespace locmoe
