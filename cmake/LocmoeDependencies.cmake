# Every dependency is found here, once. Required ones fail configure with the Debian package to
# install; optional ones (CUDA, NCCL, UCX, Python) switch a backend off and say why in the summary.
include(CheckLanguage)
find_package(PkgConfig REQUIRED)

pkg_check_modules(HWLOC REQUIRED IMPORTED_TARGET hwloc)  # hwloc ships no CMake package
find_package(MPI REQUIRED COMPONENTS C CXX)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
# pugixml parses NCCL topology files and validates hwloc XML before hwloc sees it
# (libpugixml-dev; hwloc 2.9 crashes on some malformed XML).
find_package(pugixml REQUIRED)
find_package(Threads REQUIRED)
set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread
          HINTS /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu)
if(NOT CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: apt-get install libopenblas-dev")
endif()

# --- UCX -----------------------------------------------------------------------------------
set(LOCMOE_HAVE_UCX OFF)
set(LOCMOE_UCX_WHY "disabled by LOCMOE_ENABLE_UCX=OFF")
if(LOCMOE_ENABLE_UCX)
  find_package(ucx QUIET)
  if(ucx_FOUND)
    set(LOCMOE_HAVE_UCX ON)
    set(LOCMOE_UCX_WHY "ucx ${ucx_VERSION}")
  else()
    set(LOCMOE_UCX_WHY "UCX not found (apt-get install libucx-dev)")
  endif()
endif()

# --- CUDA and NCCL ------------------------------------------------------------------------
set(LOCMOE_HAVE_CUDA OFF)
set(LOCMOE_HAVE_NCCL OFF)
set(LOCMOE_CUDA_WHY "disabled by LOCMOE_ENABLE_CUDA=OFF")
set(LOCMOE_NCCL_WHY "needs CUDA")
if(LOCMOE_ENABLE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Hopper by default so CI (2 cores) builds one architecture; pass -DCMAKE_CUDA_ARCHITECTURES
    # for others. Only set when the caller set none.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    # CMake < 3.26 knows no C++20 flag for nvcc ("CUDA20 not supported"); nvcc >= 12 has it.
    if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(LOCMOE_HAVE_CUDA ON)
    set(LOCMOE_CUDA_WHY "CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
    # NCCL sits in the toolkit's own include/ and lib/; NCCL::nccl exists only in very new NCCL.
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{NCCL_HOME}/include)
    find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} $ENV{NCCL_HOME}/lib)
    if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
      # Headers only: the library is loaded at run time (comm/src/nccl/nccl_api.h), this one as
      # the last fallback, so that locmoe never picks the NCCL torch gets.
      get_filename_component(_nccl_real ${NCCL_LIBRARY} REALPATH)
      add_library(locmoe_nccl INTERFACE)
      target_include_directories(locmoe_nccl INTERFACE ${NCCL_INCLUDE_DIR})
      target_compile_definitions(locmoe_nccl INTERFACE LOCMOE_NCCL_CONFIGURED_LIBRARY="${_nccl_real}")
      target_link_libraries(locmoe_nccl INTERFACE CUDA::cudart ${CMAKE_DL_LIBS})
      set(LOCMOE_HAVE_NCCL ON)
      set(LOCMOE_NCCL_WHY "${NCCL_LIBRARY}")
    else()
      set(LOCMOE_NCCL_WHY "nccl.h or libnccl not found next to the CUDA toolkit (set NCCL_HOME)")
    endif()
  else()
    set(LOCMOE_CUDA_WHY "no CUDA compiler found (nvcc); GPU kernels and NCCL are off, CPU references stay")
  endif()
endif()

if(LOCMOE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(LOCMOE_BUILD_PERF)
  find_package(benchmark REQUIRED)
endif()

# MPI launcher settings shared by every multi-rank test and the scripts: as root, Open MPI
# refuses to start without these, and --oversubscribe lets 8 ranks share 2 cores.
set(LOCMOE_MPIEXEC ${MPIEXEC_EXECUTABLE})
set(LOCMOE_MPIEXEC_FLAGS --oversubscribe --bind-to none)
