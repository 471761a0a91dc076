#include "memory.h"

#include <cstring>
#include <new>
#include <utility>

#include "locmoe/core/check.h"
#include "locmoe/core/config.h"

#if LOCMOE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace locmoe::ep_detail {

namespace {
#if LOCMOE_HAVE_CUDA
Status cuda_status(cudaError_t e, const char* what) {
  LOCMOE_CHECK(e == cudaSuccess, Code::kSystemError, "{} failed: {}", what, cudaGetErrorString(e));
  return ok_status();
}
#else
Status no_cuda(const char* what) {
  return error(Code::kUnsupported, "{}: device memory needs a CUDA build of locmoe (LOCMOE_ENABLE_CUDA=ON)", what);
}
#endif
}  // namespace

Status check_device_available() {
#if LOCMOE_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  LOCMOE_CHECK(e == cudaSuccess && n > 0, Code::kUnsupported,
               "device memory requested but no CUDA device is usable ({})",
               e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
  return ok_status();
#else
  return no_cuda("Dispatcher");
#endif
}

std::string current_cuda_bus_id() {
#if LOCMOE_HAVE_CUDA
  int n = 0, dev = 0;
  char id[32] = {0};
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0 || cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetPCIBusId(id, sizeof id - 1, dev) != cudaSuccess) {
    (void)cudaGetLastError();  // leave no sticky error behind for the caller's next CUDA call
    return "";
  }
  return id;
#else
  return "";
#endif
}

Result<Buffer> Buffer::make(size_t bytes, MemoryKind kind) {
  Buffer b;
  b.kind_ = kind;
  b.bytes_ = bytes;
  if (bytes == 0) return b;
  if (kind == MemoryKind::kHost) {
    b.data_ = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(64), std::nothrow));
    LOCMOE_CHECK(b.data_ != nullptr, Code::kSystemError, "host allocation of {} bytes failed", bytes);
    return b;
  }
#if LOCMOE_HAVE_CUDA
  void* p = nullptr;
  LOCMOE_RETURN_IF_ERROR(cuda_status(cudaMalloc(&p, bytes), "cudaMalloc"));
  b.data_ = static_cast<unsigned char*>(p);
  return b;
#else
  b.bytes_ = 0;
  return no_cuda("Buffer");
#endif
}

Result<Buffer> Buffer::make_pinned(size_t bytes) {
#if LOCMOE_HAVE_CUDA
  Buffer b;
  b.kind_ = MemoryKind::kHost;
  b.bytes_ = bytes;
  b.pinned_ = true;
  if (bytes == 0) return b;
  void* p = nullptr;
  LOCMOE_RETURN_IF_ERROR(cuda_status(cudaMallocHost(&p, bytes), "cudaMallocHost"));
  b.data_ = static_cast<unsigned char*>(p);
  return b;
#else
  return make(bytes, MemoryKind::kHost);
#endif
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  std::swap(data_, o.data_);
  std::swap(bytes_, o.bytes_);
  std::swap(kind_, o.kind_);
  std::swap(pinned_, o.pinned_);
  return *this;
}

Buffer::~Buffer() {
  if (data_ == nullptr) return;
  if (pinned_) {
#if LOCMOE_HAVE_CUDA
    cudaFreeHost(data_);
#endif
  } else if (kind_ == MemoryKind::kHost) {
    ::operator delete(data_, std::align_val_t(64));
  } else {
#if LOCMOE_HAVE_CUDA
    cudaFree(data_);
#endif
  }
}

Status sync_stream(void* stream) {
#if LOCMOE_HAVE_CUDA
  return cuda_status(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
#else
  (void)stream;
  return ok_status();
#endif
}

Status copy_to_host(void* dst, const void* src, size_t bytes, MemoryKind src_kind, void* stream, bool sync) {
  if (bytes == 0) return ok_status();
  if (src_kind == MemoryKind::kHost) {
    std::memcpy(dst, src, bytes);
    return ok_status();
  }
#if LOCMOE_HAVE_CUDA
  auto s = static_cast<cudaStream_t>(stream);
  LOCMOE_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H"));
  if (!sync) return ok_status();
  return cuda_status(cudaStreamSynchronize(s), "cudaStreamSynchronize");
#else
  (void)stream;
  (void)sync;
  return no_cuda("copy_to_host");
#endif
}

Status copy_from_host(void* dst, const void* src, size_t bytes, MemoryKind dst_kind, void* stream) {
  if (bytes == 0) return ok_status();
  if (dst_kind == MemoryKind::kHost) {
    std::memcpy(dst, src, bytes);
    return ok_status();
  }
#if LOCMOE_HAVE_CUDA
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
                     "cudaMemcpyAsync H2D");
#else
  (void)stream;
  return no_cuda("copy_from_host");
#endif
}

Status copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, MemoryKind kind,
               void* stream) {
  if (width == 0 || rows == 0) return ok_status();
  if (kind == MemoryKind::kHost) {
    auto* d = static_cast<unsigned char*>(dst);
    const auto* s = static_cast<const unsigned char*>(src);
    for (size_t i = 0; i < rows; ++i) std::memcpy(d + i * dpitch, s + i * spitch, width);
    return ok_status();
  }
#if LOCMOE_HAVE_CUDA
  return cuda_status(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice,
                                       static_cast<cudaStream_t>(stream)),
                     "cudaMemcpy2DAsync D2D");
#else
  (void)stream;
  return no_cuda("copy_2d");
#endif
}

Status fill_bytes(void* dst, unsigned char value, size_t bytes, MemoryKind kind, void* stream) {
  if (bytes == 0) return ok_status();
  if (kind == MemoryKind::kHost) {
    std::memset(dst, value, bytes);
    return ok_status();
  }
#if LOCMOE_HAVE_CUDA
  return cuda_status(cudaMemsetAsync(dst, value, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
#else
  (void)stream;
  return no_cuda("fill_bytes");
#endif
}

}  // namespace locmoe::ep_detail
