#include "locmoe/core/params.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace locmoe::params {
namespace {

constexpr Info kInfos[] = {
#define LOCMOE_PARAM(id, env, type, def, allowed, desc) {Id::id, env, Type::type, def, allowed, desc},
#include "locmoe/core/params.def"
#undef LOCMOE_PARAM
};
static_assert(std::size(kInfos) == static_cast<size_t>(Id::kCount));

struct State {
  std::mutex mu;
  std::optional<std::string> api[static_cast<size_t>(Id::kCount)];
};
State& state() {
  static State s;
  return s;
}

// Text of the value after precedence, and where it came from.
std::pair<std::string, const char*> lookup(Id id) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (const auto& v = s.api[static_cast<size_t>(id)]) return {*v, "api"};
  }
  if (const char* env = std::getenv(info(id).env)) return {env, "env"};
  return {info(id).def, "default"};
}

Status bad(const Info& i, std::string_view value, std::string_view expected) {
  return error(Code::kInvalidArgument, "{}='{}' is not valid: expected {}", i.env, value, expected);
}

bool allowed(const Info& i, std::string_view value) {
  std::string_view list = i.allowed;
  if (list.empty()) return true;
  size_t start = 0;
  while (true) {
    size_t bar = list.find('|', start);
    if (list.substr(start, bar - start) == value) return true;
    if (bar == std::string_view::npos) return false;
    start = bar + 1;
  }
}

// Numbers: `allowed` is "LO..HI" (inclusive; an empty side is unbounded) or empty.
Status in_range(const Info& i, std::string_view text, double v) {
  std::string_view range = i.allowed;
  const size_t dots = range.find("..");
  if (dots == std::string_view::npos) return ok_status();
  const std::string lo(range.substr(0, dots)), hi(range.substr(dots + 2));
  if ((!lo.empty() && v < std::strtod(lo.c_str(), nullptr)) || (!hi.empty() && v > std::strtod(hi.c_str(), nullptr)))
    return bad(i, text, fmt::format("a value in [{}, {}]", lo.empty() ? "-inf" : lo, hi.empty() ? "inf" : hi));
  return ok_status();
}

Status parse(const Info& i, const std::string& text) {
  // The C parsers below (and every consumer that calls c_str()) stop at a NUL byte: "12\0junk"
  // would read as 12 from the API, and the environment cannot carry such a value at all.
  if (text.find('\0') != std::string::npos) return bad(i, text, "text without NUL bytes");
  switch (i.type) {
    case Type::Int: {
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || errno == ERANGE) return bad(i, text, "an integer");
      return in_range(i, text, static_cast<double>(v));
    }
    case Type::Float: {
      errno = 0;
      char* end = nullptr;
      double v = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
        return bad(i, text, "a finite number");
      return in_range(i, text, v);
    }
    case Type::Bool: {
      static const char* kWords[] = {"1", "0", "true", "false", "yes", "no", "on", "off"};
      for (const char* w : kWords)
        if (text == w) return ok_status();
      return bad(i, text, "1/0, true/false, yes/no or on/off");
    }
    case Type::String:
      if (!allowed(i, text)) return bad(i, text, fmt::format("one of '{}'", i.allowed));
      return ok_status();
  }
  return ok_status();
}

Result<std::string> checked(Id id, Type type) {
  const Info& i = info(id);
  if (i.type != type) return error(Code::kInternal, "{} is a {}, read as {}", i.env, type_name(i.type), type_name(type));
  auto [text, src] = lookup(id);
  Status st = parse(i, text);
  if (!st.ok()) return st;
  return text;
}

}  // namespace

std::span<const Info> all() { return kInfos; }
const Info& info(Id id) { return kInfos[static_cast<size_t>(id)]; }

const char* type_name(Type type) {
  switch (type) {
    case Type::Int: return "int";
    case Type::Float: return "float";
    case Type::String: return "string";
    case Type::Bool: return "bool";
  }
  return "?";
}

Result<int64_t> get_int(Id id) {
  auto text = checked(id, Type::Int);
  if (!text.ok()) return text.status();
  return static_cast<int64_t>(std::strtoll(text->c_str(), nullptr, 10));
}

Result<double> get_float(Id id) {
  auto text = checked(id, Type::Float);
  if (!text.ok()) return text.status();
  return std::strtod(text->c_str(), nullptr);
}

Result<bool> get_bool(Id id) {
  auto text = checked(id, Type::Bool);
  if (!text.ok()) return text.status();
  return *text == "1" || *text == "true" || *text == "yes" || *text == "on";
}

Result<std::string> get_string(Id id) { return checked(id, Type::String); }

const char* source(Id id) { return lookup(id).second; }
std::string raw_value(Id id) { return lookup(id).first; }

Status set(std::string_view env_name, std::string_view value) {
  for (const Info& i : kInfos) {
    if (env_name != i.env) continue;
    std::string text(value);
    Status st = parse(i, text);
    if (!st.ok()) return st;
    std::lock_guard<std::mutex> lock(state().mu);
    state().api[static_cast<size_t>(i.id)] = std::move(text);
    return ok_status();
  }
  return error(Code::kNotFound, "unknown parameter '{}' (see locmoe-info --params)", env_name);
}

void reset() {
  std::lock_guard<std::mutex> lock(state().mu);
  for (auto& v : state().api) v.reset();
}

Status validate_all() {
  for (const Info& i : kInfos) {
    Status st = parse(i, lookup(i.id).first);
    if (!st.ok()) return st;
  }
  return ok_status();
}

std::string table(bool json) {
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const Info& i : kInfos)
      list.push_back({{"name", i.env}, {"type", type_name(i.type)}, {"default", i.def}, {"allowed", i.allowed},
                      {"value", raw_value(i.id)}, {"source", source(i.id)}, {"description", i.description}});
    return list.dump(2);
  }
  std::string out = fmt::format("{:<24} {:<7} {:<10} {:<12} {:<8} {}\n", "PARAMETER", "TYPE", "DEFAULT", "VALUE",
                                "SOURCE", "DESCRIPTION");
  for (const Info& i : kInfos)
    out += fmt::format("{:<24} {:<7} {:<10} {:<12} {:<8} {}{}{}\n", i.env, type_name(i.type), i.def, raw_value(i.id),
                       source(i.id), i.description,
                       !*i.allowed ? "" : (i.type == Type::String ? "; one of " : "; in "), i.allowed);
  return out;
}

void print_table(FILE* out, bool json) {
  std::string text = table(json);
  std::fprintf(out, "%s%s", text.c_str(), json ? "\n" : "");
}

}  // namespace locmoe::params
