// The one check-macro family. Every macro returns a Status (or the Status of a Result) from the
// enclosing function; none aborts. The error is logged at INFO where it is decided, so
// LOCMOE_DEBUG=INFO shows the first failure's file and line, then it travels up unchanged.
#pragma once

#include "locmoe/core/log.h"
#include "locmoe/core/status.h"

#define LOCMOE_CONCAT_INNER(a, b) a##b
#define LOCMOE_CONCAT(a, b) LOCMOE_CONCAT_INNER(a, b)

// Returns the Status of `expr` (a Status) when it is an error.
#define LOCMOE_RETURN_IF_ERROR(expr)                     \
  do {                                                   \
    ::locmoe::Status locmoe_status_ = (expr);            \
    if (!locmoe_status_.ok()) return locmoe_status_;     \
  } while (0)

// `lhs` = value of `expr` (a Result<T>), or returns its error.
#define LOCMOE_ASSIGN_OR_RETURN(lhs, expr) \
  LOCMOE_ASSIGN_OR_RETURN_IMPL(LOCMOE_CONCAT(locmoe_result_, __LINE__), lhs, expr)
#define LOCMOE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

// Returns error(code, fmt, ...) when `cond` is false.
#define LOCMOE_CHECK(cond, code, ...)                                             \
  do {                                                                            \
    if (!(cond)) {                                                                \
      ::locmoe::Status locmoe_status_ = ::locmoe::error(code, __VA_ARGS__);       \
      LOCMOE_INFO("error decided at {}:{}: {}", __FILE__, __LINE__,               \
                  locmoe_status_.to_string());                                    \
      return locmoe_status_;                                                      \
    }                                                                             \
  } while (0)

#define LOCMOE_CHECK_ARG(cond, ...) LOCMOE_CHECK(cond, ::locmoe::Code::kInvalidArgument, __VA_ARGS__)
#define LOCMOE_CHECK_RANGE(cond, ...) LOCMOE_CHECK(cond, ::locmoe::Code::kOutOfRange, __VA_ARGS__)
