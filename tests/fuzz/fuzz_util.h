// Helpers shared by the fuzz targets: FUZZ_ASSERT for invariants, and MemFile.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

// An invariant that does not hold is a crash for libFuzzer, which then saves the input.
#define FUZZ_ASSERT(cond)           \
  do {                              \
    if (!(cond)) __builtin_trap();  \
  } while (0)

// A file that lives in memory (memfd), for fuzzing readers whose public API takes a path: each
// input is written to it and read back through /proc/self/fd/N, with no disk traffic.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("locmoe-fuzz", 0)) {
    if (fd_ < 0) std::abort();
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  // Replaces the content with `size` bytes of `data`.
  void write(const void* data, size_t size) {
    if (ftruncate(fd_, 0) != 0) std::abort();
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t done = 0; done < size;) {
      ssize_t n = pwrite(fd_, p + done, size - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};
