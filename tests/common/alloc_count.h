// Allocation counting for the hot-path tests (tests/comm/test_alloc.cc, tests/ep/test_alloc.cc):
// malloc/calloc/realloc/aligned allocations and every operator new, replaced in the test binary.
// Include it in exactly ONE translation unit of a test executable (it defines the replacements).
// Counted ("ours"): every operator new (vectors, deques, std::function, strings: fmt and Status
// messages) and every C allocation called from this executable's own code (locmoe is linked in
// statically); C allocations from shared libraries (the transports' own pools) are counted apart
// ("libs"). Only the calling thread's allocations, and only inside a Counting scope. Under
// ASan/TSan (which own malloc) nothing is replaced and LOCMOE_COUNT_ALLOCS is 0.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LOCMOE_COUNT_ALLOCS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define LOCMOE_COUNT_ALLOCS 0
#endif
#endif
#ifndef LOCMOE_COUNT_ALLOCS
#define LOCMOE_COUNT_ALLOCS 1
#endif

namespace {
thread_local bool t_counting = false;
std::atomic<uint64_t> g_ours{0}, g_libs{0};
}  // namespace

#if LOCMOE_COUNT_ALLOCS
extern "C" {
extern char __executable_start, etext;  // this executable's code (the linker defines both)
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
}
namespace {
// A C allocation: ours when called from this executable's code, else a library's.
inline void note_c(const void* caller) {
  if (!t_counting) return;
  const char* c = static_cast<const char*>(caller);
  (c >= &__executable_start && c < &etext ? g_ours : g_libs).fetch_add(1, std::memory_order_relaxed);
}
inline void note_new() {
  if (t_counting) g_ours.fetch_add(1, std::memory_order_relaxed);
}
void* new_or_throw(size_t n) {
  void* p = __libc_malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace
extern "C" {
void* malloc(size_t n) {
  note_c(__builtin_return_address(0));
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  note_c(__builtin_return_address(0));
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  note_c(__builtin_return_address(0));
  return __libc_realloc(p, n);
}
void* memalign(size_t a, size_t n) {
  note_c(__builtin_return_address(0));
  return __libc_memalign(a, n);
}
void* aligned_alloc(size_t a, size_t n) {
  note_c(__builtin_return_address(0));
  return __libc_memalign(a, n);
}
int posix_memalign(void** p, size_t a, size_t n) {
  note_c(__builtin_return_address(0));
  *p = __libc_memalign(a, n);
  return *p ? 0 : ENOMEM;
}
}
void* operator new(size_t n) {
  note_new();
  return new_or_throw(n);
}
void* operator new[](size_t n) {
  note_new();
  return new_or_throw(n);
}
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  note_new();
  return __libc_malloc(n ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  note_new();
  return __libc_malloc(n ? n : 1);
}
void* operator new(size_t n, std::align_val_t a) {
  note_new();
  void* p = __libc_memalign(static_cast<size_t>(a), n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t n, std::align_val_t a) {
  note_new();
  void* p = __libc_memalign(static_cast<size_t>(a), n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { __libc_free(p); }
void operator delete[](void* p) noexcept { __libc_free(p); }
void operator delete(void* p, size_t) noexcept { __libc_free(p); }
void operator delete[](void* p, size_t) noexcept { __libc_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { __libc_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { __libc_free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { __libc_free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { __libc_free(p); }
#endif

namespace locmoe::test {
// Counts this thread's allocations while alive.
struct Counting {
  uint64_t start, libs_start;
  Counting() : start(g_ours.load()), libs_start(g_libs.load()) { t_counting = true; }
  ~Counting() { t_counting = false; }
  uint64_t count() const { return g_ours.load() - start; }
  uint64_t libs() const { return g_libs.load() - libs_start; }
};

}  // namespace locmoe::test
