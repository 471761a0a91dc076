// NCCL's entry points, resolved at run time (dlopen on first use), never linked at load time.
//
// Why: NCCL's soname is libnccl.so.2 whatever its version, and the dynamic loader satisfies a
// DT_NEEDED of libnccl.so.2 with any library of that soname already in the process. A module that
// links the system NCCL (2.28, CUDA toolkit) and is imported before torch therefore hands torch
// (which bundles NCCL 2.30, PyPI's nvidia-nccl-cu*) the older library: libtorch_cuda.so fails with
// "undefined symbol: ncclCommResume". Loading NCCL only when the NCCL transport is made, and then
// choosing the one already in the process first, means locmoe never decides which NCCL torch gets
// and both always use one and the same library. docs/ARCHITECTURE.md ("How NCCL is found").
#pragma once

#include <nccl.h>

#include <string>
#include <vector>

#include "locmoe/core/status.h"

namespace locmoe::nccl {

// The NCCL functions the transport calls, from one loaded library.
struct Api {
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRankConfig)(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t*);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*GroupStart)();
  ncclResult_t (*GroupEnd)();
  ncclResult_t (*Send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  const char* (*GetErrorString)(ncclResult_t);
  std::string path;  // the file the functions come from
  std::string how;   // which rule picked it ("already loaded", "LOCMOE_NCCL_LIBRARY", ...)
};

// One candidate library: `name` is given to dlopen as it is (a path, or a soname the loader
// searches for); `noload` asks only for one already in the process (RTLD_NOLOAD).
struct Candidate {
  std::string name;
  std::string how;
  bool noload = false;
};

// The candidates in the order they are tried:
//   1. LOCMOE_NCCL_LIBRARY when set (that file only: no other is tried);
//   2. a libnccl.so.2 already in the process (torch's, once torch is imported);
//   3. the NCCL of a PyPI wheel (nvidia/nccl/lib/libnccl.so.2, what torch loads) next to any
//      Python package folder (site-packages, dist-packages) a loaded library sits in;
//   4. libnccl.so.2 by the loader's search path, then the one found at configure time.
// `loaded_objects` are the paths of the loaded libraries (dl_iterate_phdr), a parameter so that
// the rule is testable.
std::vector<Candidate> candidates(const std::string& override_path, const std::vector<std::string>& loaded_objects);

// The first candidate that opens and has every function of Api; errors name each one tried.
Result<Api> open_first(const std::vector<Candidate>& list);

// Loads NCCL on the first call (later calls return the same table). Errors name every library
// tried and why it failed; the NCCL transport is then unavailable, nothing else is affected.
Result<const Api*> api();

}  // namespace locmoe::nccl
