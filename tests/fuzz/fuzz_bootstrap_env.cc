// Fuzzes the environment the TCP bootstrap is configured from (comm/src/bootstrap_tcp.cc,
// make_bootstrap_from_env with LOCMOE_BOOTSTRAP=tcp): LOCMOE_BOOTSTRAP_ADDR ("host:port"),
// MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, each an arbitrary string. A world of one process
// needs no peer, so nothing touches the network; inputs whose WORLD_SIZE would start a real
// rendezvous are skipped. Invariant: an accepted environment gives rank 0 of a world of 1; any
// other outcome is an error with a message, never a crash.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <fuzzer/FuzzedDataProvider.h>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/params.h"
#include "fuzz_util.h"

namespace {

// putenv with buffers of ours (glibc's setenv keeps every distinct value it was given).
void put(std::string& slot, const char* name, const std::string& value, bool present) {
  unsetenv(name);
  if (!present) return;
  slot = std::string(name) + "=" + value;
  putenv(slot.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  static std::string slots[5];
  static const char* kNames[5] = {"LOCMOE_BOOTSTRAP_ADDR", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"};
  std::string values[5];
  for (int i = 0; i < 5; ++i) {
    const bool present = in.ConsumeBool();
    values[i] = in.ConsumeRandomLengthString(64);
    if (values[i].find('\0') != std::string::npos) values[i].resize(values[i].find('\0'));
    // A world of more than one process would wait for peers: not this fuzzer's business.
    if (i == 4 && present && std::strtol(values[i].c_str(), nullptr, 10) > 1) return -1;
    put(slots[i], kNames[i], values[i], present);
  }
  locmoe::params::reset();
  if (!locmoe::params::set("LOCMOE_BOOTSTRAP", "tcp").ok()) __builtin_trap();
  if (!locmoe::params::set("LOCMOE_TIMEOUT_S", "0.05").ok()) __builtin_trap();
  auto b = locmoe::make_bootstrap_from_env();
  if (b.ok()) {
    FUZZ_ASSERT((*b)->size() == 1 && (*b)->rank() == 0);
  } else {
    FUZZ_ASSERT(!b.status().message().empty());
  }
  for (const char* name : kNames) unsetenv(name);
  locmoe::params::reset();
  return 0;
}
