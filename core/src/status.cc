#include "locmoe/core/status.h"

namespace locmoe {

const char* code_name(Code code) noexcept {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kOutOfRange: return "out of range";
    case Code::kNotFound: return "not found";
    case Code::kParseError: return "parse error";
    case Code::kUnsupported: return "unsupported";
    case Code::kMismatch: return "mismatch across ranks";
    case Code::kTimeout: return "timeout";
    case Code::kPeerFailure: return "peer failure";
    case Code::kSystemError: return "system error";
    case Code::kInternal: return "internal error";
  }
  return "unknown code";
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  return fmt::format("{}: {}", code_name(code_), message_);
}

Status& Status::with_context(std::string_view context) {
  if (!ok()) message_ = fmt::format("{}: {}", context, message_);
  return *this;
}

}  // namespace locmoe
