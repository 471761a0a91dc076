// Bootstrap implementations (the interface is locmoe/core/bootstrap.h).
#pragma once

#include <memory>

#include <mpi.h>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe {

// Bootstrap over an MPI communicator (duplicated, so our traffic never matches the caller's).
// MPI must be initialized by the caller and stay so while the bootstrap lives. Collectives are
// non-blocking MPI calls polled against LOCMOE_TIMEOUT_S: a rank that never arrives gives
// Code::kTimeout instead of a hang (Open MPI has no ULFM; see docs/ARCHITECTURE.md).
Result<std::unique_ptr<Bootstrap>> make_mpi_bootstrap(MPI_Comm comm);

}  // namespace locmoe
