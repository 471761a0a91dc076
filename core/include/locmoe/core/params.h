// Typed registry of LOCMOE_* parameters (declared once, in params.def).
//
// Values are read from the environment on first use and cached; params::set() overrides a value
// from the API (highest precedence) and params::reset() forgets both (tests). A value that does
// not parse as its type, or is not among the allowed values, is an error naming the variable and
// the value; tools call validate_all() at start so a typo fails loudly before any work.
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <string_view>

#include "locmoe/core/status.h"

namespace locmoe::params {

enum class Type { Int, Float, String, Bool };

enum class Id : int {
#define LOCMOE_PARAM(id, env, type, def, allowed, desc) id,
#include "locmoe/core/params.def"
#undef LOCMOE_PARAM
  kCount
};

struct Info {
  Id id;
  const char* env;       // environment variable name
  Type type;
  const char* def;       // default, as text
  const char* allowed;   // "a|b|c" for strings with a fixed set of values; "" = any
  const char* description;
};

std::span<const Info> all();
const Info& info(Id id);
const char* type_name(Type type);

Result<int64_t> get_int(Id id);
Result<double> get_float(Id id);
Result<bool> get_bool(Id id);
Result<std::string> get_string(Id id);

// Where the current value comes from: "api", "env" or "default".
const char* source(Id id);
// Raw text of the current value (after precedence), for printing.
std::string raw_value(Id id);

// API override. Fails (and changes nothing) when `env_name` is unknown or `value` does not parse.
Status set(std::string_view env_name, std::string_view value);
// Drops API overrides and the cached environment (tests).
void reset();
// Parses every parameter; returns the first error.
Status validate_all();

// Every parameter with its type, default, current value, source and description: an aligned text
// table (header line first), or with `json` a JSON array of {"name","type","default","allowed",
// "value","source","description"}. The one printer behind `locmoe-info --params` and
// `locmoe-topo --params`.
std::string table(bool json);
// Writes table(json) to `out` (a JSON array ends with a newline).
void print_table(FILE* out, bool json);

}  // namespace locmoe::params
