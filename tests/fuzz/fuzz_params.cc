// Fuzzes the LOCMOE_* parameter parser (core/src/params.cc) through both of its entry points:
// params::set(name, value) from the API, with arbitrary names and values, and the environment
// (setenv of a registered name, then every typed getter and validate_all()).
//
// Besides "no crash, no sanitizer report", each step checks invariants that do not depend on how
// the parser is written:
//   - set() succeeds only for a registered name; on success the value reads back byte for byte
//     from the API and its typed getter succeeds; on failure nothing changes.
//   - an accepted value contains no NUL byte: the environment (C strings) cannot carry one, so a
//     value with a NUL would mean different things from the API and from the environment.
//   - a NUL-free value is accepted by set() exactly when the same text in the environment reads
//     back without error: the API and the environment speak one language.
// A broken invariant calls __builtin_trap(), which libFuzzer reports as a crash with the input.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <fuzzer/FuzzedDataProvider.h>

#include "locmoe/core/params.h"
#include "fuzz_util.h"

namespace {

namespace p = locmoe::params;

// Reads `id` with the getter of its declared type; true when it parses.
bool typed_get_ok(p::Id id) {
  switch (p::info(id).type) {
    case p::Type::Int: return p::get_int(id).ok();
    case p::Type::Float: return p::get_float(id).ok();
    case p::Type::Bool: return p::get_bool(id).ok();
    case p::Type::String: return p::get_string(id).ok();
  }
  return false;
}

// Reads every parameter with every getter: wrong-type reads must be errors, never crashes.
void read_everything() {
  for (const p::Info& i : p::all()) {
    (void)p::get_int(i.id);
    (void)p::get_float(i.id);
    (void)p::get_bool(i.id);
    (void)p::get_string(i.id);
    (void)p::source(i.id);
    (void)p::raw_value(i.id);
  }
  (void)p::validate_all();
}

void check_set(std::string_view name, const std::string& value) {
  const p::Info* target = nullptr;
  for (const p::Info& i : p::all())
    if (name == i.env) target = &i;
  std::string before = target ? p::raw_value(target->id) : std::string();
  std::string before_src = target ? p::source(target->id) : std::string();

  locmoe::Status st = p::set(name, value);
  if (!target) {
    FUZZ_ASSERT(!st.ok());
    return;
  }
  if (st.ok()) {
    FUZZ_ASSERT(value.find('\0') == std::string::npos);
    FUZZ_ASSERT(p::raw_value(target->id) == value);
    FUZZ_ASSERT(std::string(p::source(target->id)) == "api");
    FUZZ_ASSERT(typed_get_ok(target->id));
  } else {
    FUZZ_ASSERT(p::raw_value(target->id) == before);
    FUZZ_ASSERT(p::source(target->id) == before_src);
  }

  // Same text through the environment, read back with no API override in the way.
  if (value.find('\0') == std::string::npos) {
    p::reset();
    // putenv with a buffer of ours, not setenv: glibc's setenv keeps every distinct string it was
    // ever given, so millions of fuzzed values would grow the process until the RSS limit.
    static std::string entry;
    entry = std::string(target->env) + "=" + value;
    putenv(entry.data());
    FUZZ_ASSERT(typed_get_ok(target->id) == st.ok());
    read_everything();
    unsetenv(target->env);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  p::reset();
  const auto all = p::all();
  // A few operations per input: enough to mix API and environment values, few enough that every
  // input stays fast (each environment step re-reads every parameter).
  for (int op = 0; op < 8 && in.remaining_bytes() > 0; ++op) {
    switch (in.ConsumeIntegralInRange<int>(0, 2)) {
      case 0: {  // arbitrary name and value
        std::string name = in.ConsumeRandomLengthString(64);
        std::string value = in.ConsumeRandomLengthString(256);
        check_set(name, value);
        break;
      }
      case 1: {  // registered name, arbitrary value
        const p::Info& i = all[in.ConsumeIntegralInRange<size_t>(0, all.size() - 1)];
        check_set(i.env, in.ConsumeRandomLengthString(256));
        break;
      }
      case 2:
        read_everything();
        break;
    }
  }
  p::reset();
  for (const p::Info& i : all) unsetenv(i.env);
  return 0;
}
