// Status codes and Result<T>: how every locmoe layer reports an error.
//
// An error is decided once, where the bad value is seen, and carries a message that names that
// value and what was expected ("expert id 70 out of range [0, 64)"). Callers pass it up unchanged
// (LOCMOE_RETURN_IF_ERROR) or add the context they know (Status::with_context). Out-parameters are
// written only on success. No locmoe function throws; the C API turns a Status into a code plus a
// last-error string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace locmoe {

// Stable numeric values: they cross the C API as locmoe_status_t.
enum class Code : int32_t {
  kOk = 0,
  kInvalidArgument = 1,  // a caller-supplied value is wrong (shape, id, NaN, flag value)
  kOutOfRange = 2,       // an index or size outside what is allowed
  kNotFound = 3,         // a file, device or name that does not exist
  kParseError = 4,       // a file or string that could not be parsed
  kUnsupported = 5,      // valid request this build or machine cannot serve
  kMismatch = 6,         // ranks disagree (sizes, counts, configuration)
  kTimeout = 7,          // a deadline passed while waiting for a peer
  kPeerFailure = 8,      // a peer died or its connection broke
  kSystemError = 9,      // an OS / library call failed (errno, MPI, UCX, CUDA)
  kInternal = 10,        // a locmoe bug: an invariant did not hold
};

// Short lower-case name of a code ("invalid argument").
const char* code_name(Code code) noexcept;

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const noexcept { return code_ == Code::kOk; }
  Code code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  // "<code name>: <message>", or "ok".
  std::string to_string() const;
  // Prefixes the message with "<context>: " (no-op on OK). Returns *this for chaining.
  Status& with_context(std::string_view context);

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status ok_status() { return Status(); }

// Builds an error with a fmt-formatted message.
template <typename... Args>
Status error(Code code, fmt::format_string<Args...> format, Args&&... args) {
  return Status(code, fmt::format(format, std::forward<Args>(args)...));
}

// A value or the error that prevented it. Access to value() on an error is a bug (asserted).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: must be an error

  bool ok() const noexcept { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace locmoe
