// Buffers in host or CUDA device memory for the Dispatcher, and the few copies it needs between
// them. Without CUDA in the build, device requests fail with Code::kUnsupported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "locmoe/comm/communicator.h"
#include "locmoe/core/status.h"

namespace locmoe::ep_detail {

// A 64-byte aligned allocation in host memory or device memory (cudaMalloc), move-only.
class Buffer {
 public:
  Buffer() = default;
  static Result<Buffer> make(size_t bytes, MemoryKind kind);
  // Page-locked host memory (cudaMallocHost) when this build has CUDA, else plain host memory:
  // the staging buffer of copies that must not synchronize (a cudaMemcpyAsync from pageable
  // memory to the device waits for the stream first; one to pageable memory is not async).
  static Result<Buffer> make_pinned(size_t bytes);
  Buffer(Buffer&& o) noexcept { *this = static_cast<Buffer&&>(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  unsigned char* data() const { return data_; }
  template <typename T>
  T* as() const { return reinterpret_cast<T*>(data_); }
  size_t size() const { return bytes_; }

 private:
  unsigned char* data_ = nullptr;
  size_t bytes_ = 0;
  MemoryKind kind_ = MemoryKind::kHost;
  bool pinned_ = false;
};

// Copies `bytes` from `src` (in `src_kind` memory) to host memory and waits for it: device
// copies are ordered on `stream` after the work already enqueued there, and the call
// synchronizes `stream` (cudaStreamSynchronize) once.
// With sync = false the copy is only enqueued (dst must be pinned for it to be asynchronous) and
// is complete after the next synchronization of `stream`.
Status copy_to_host(void* dst, const void* src, size_t bytes, MemoryKind src_kind, void* stream, bool sync = true);
// cudaStreamSynchronize(stream) (nothing in a build without CUDA).
Status sync_stream(void* stream);
// Copies `bytes` from host memory to `dst` (in `dst_kind` memory), ordered on `stream`. Does
// not synchronize when `src` is pinned (Buffer::make_pinned); the source must then stay
// unchanged until the stream has passed the copy.
Status copy_from_host(void* dst, const void* src, size_t bytes, MemoryKind dst_kind, void* stream);
// Copies `rows` blocks of `width` bytes, block i from src + i * spitch to dst + i * dpitch, both
// in `kind` memory (a loop of memcpy on the host; cudaMemcpy2DAsync on `stream`, no
// synchronization, on the device). How the Dispatcher moves slot metadata into and out of the
// tails of its strided rows.
Status copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, MemoryKind kind,
               void* stream);
// Sets `bytes` bytes at dst (in `kind` memory) to `value` (memset; cudaMemsetAsync on `stream`).
Status fill_bytes(void* dst, unsigned char value, size_t bytes, MemoryKind kind, void* stream);
// kUnsupported unless this build has CUDA and the process sees a device.
// PCI bus id of the CUDA device current on this thread ("0000:07:00.0"); "" in a build without
// CUDA or when no device is usable. Queries device attributes only (creates no context).
std::string current_cuda_bus_id();
Status check_device_available();

}  // namespace locmoe::ep_detail
