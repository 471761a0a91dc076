# Fails when a layer target reaches a library its layer must not (see CMakeLists.txt here).
# Rules: "<target> must not reach <regex>", one per line of the list below.
set(rules
  "locmoe_contracts|locmoe_(topology|router|kernels|comm|ep)$|BLAS|HWLOC|hwloc|MPI|ucx|nccl|cudart"
  "locmoe_core|locmoe_(contracts|topology|router|kernels|comm|ep)$"
  "locmoe_kernels|locmoe_(topology|router|comm|ep)$|BLAS|openblas|HWLOC|hwloc|MPI|ucx|nccl"
  "locmoe_comm|locmoe_(topology|router|kernels|ep)$|BLAS|openblas|HWLOC|hwloc|pugixml"
  "locmoe_router|locmoe_(kernels|comm|ep)$|BLAS|openblas|MPI|ucx|nccl"
  "locmoe_topology|locmoe_(router|kernels|comm|ep)$|BLAS|openblas|MPI|ucx|nccl"
  # NCCL is loaded at run time (comm/src/nccl/nccl_api.h): nothing links the library itself.
  "locmoe_comm|libnccl"
  "locmoe_ep|libnccl")
file(STRINGS "${CLOSURES}" lines)
set(failed 0)
set(checked 0)
foreach(line IN LISTS lines)
  string(FIND "${line}" "=" eq)
  string(SUBSTRING "${line}" 0 ${eq} target)
  math(EXPR from "${eq} + 1")
  string(SUBSTRING "${line}" ${from} -1 deps)
  string(REPLACE "," ";" deps "${deps}")
  foreach(rule IN LISTS rules)
    string(FIND "${rule}" "|" bar)
    string(SUBSTRING "${rule}" 0 ${bar} rt)
    if(NOT rt STREQUAL target)
      continue()
    endif()
    math(EXPR from "${bar} + 1")
    string(SUBSTRING "${rule}" ${from} -1 forbidden)
    math(EXPR checked "${checked} + 1")
    foreach(d IN LISTS deps)
      if(d MATCHES "${forbidden}")
        message(SEND_ERROR "${target} links ${d} (forbidden: ${forbidden}); it reaches: ${deps}")
        set(failed 1)
      endif()
    endforeach()
  endforeach()
endforeach()
if(checked LESS 6)
  message(FATAL_ERROR "only ${checked} of 6 layer rules found a target in ${CLOSURES}")
endif()
if(failed)
  message(FATAL_ERROR "layering violated")
endif()
message(STATUS "layering: ${checked} layer targets reach only what their layer allows")
