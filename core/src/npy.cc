#include "locmoe/core/npy.h"

#include <bit>
#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include <fmt/ranges.h>

#include "locmoe/core/check.h"

namespace locmoe {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// NumPy caps header dicts far below this; a larger length field is a corrupt file, not a header.
constexpr uint64_t kMaxHeaderLen = 1 << 20;

// Minimal parser of the Python dict literal NumPy writes: {'descr': '<f4', 'fortran_order': False,
// 'shape': (3, 4), }. Errors say what was expected at which header offset.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string_view name) : s_(text), name_(name) {}

  Status parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_space();
    LOCMOE_RETURN_IF_ERROR(expect('{'));
    while (true) {
      skip_space();
      if (peek() == '}') break;
      std::string key;
      LOCMOE_RETURN_IF_ERROR(quoted(key));
      skip_space();
      LOCMOE_RETURN_IF_ERROR(expect(':'));
      skip_space();
      if (key == "descr") {
        LOCMOE_RETURN_IF_ERROR(quoted(descr));
        have_descr = true;
      } else if (key == "fortran_order") {
        LOCMOE_RETURN_IF_ERROR(boolean(fortran));
        have_fortran = true;
      } else if (key == "shape") {
        LOCMOE_RETURN_IF_ERROR(tuple(shape));
        have_shape = true;
      } else {
        return fail(fmt::format("unexpected key '{}'", key));
      }
      skip_space();
      if (peek() == ',') ++pos_;
    }
    ++pos_;
    LOCMOE_CHECK(have_descr && have_fortran && have_shape, Code::kParseError,
                 "{}: npy header dict lacks {}", name_,
                 !have_descr ? "'descr'" : !have_fortran ? "'fortran_order'" : "'shape'");
    return ok_status();
  }

 private:
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  Status fail(std::string_view what) const {
    return error(Code::kParseError, "{}: bad npy header dict at offset {}: {}", name_, pos_, what);
  }
  Status expect(char c) {
    if (peek() != c) return fail(fmt::format("expected '{}'", c));
    ++pos_;
    return ok_status();
  }
  Status quoted(std::string& out) {
    const char q = peek();
    if (q != '\'' && q != '"') return fail("expected a quoted string");
    const size_t end = s_.find(q, pos_ + 1);
    if (end == std::string_view::npos) return fail("unterminated string");
    out.assign(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return ok_status();
  }
  Status boolean(bool& out) {
    if (s_.substr(pos_, 4) == "True") {
      out = true;
      pos_ += 4;
    } else if (s_.substr(pos_, 5) == "False") {
      out = false;
      pos_ += 5;
    } else {
      return fail("expected True or False");
    }
    return ok_status();
  }
  Status tuple(std::vector<int64_t>& out) {
    out.clear();
    LOCMOE_RETURN_IF_ERROR(expect('('));
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) return fail("expected a dimension");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int d = peek() - '0';
        if (v > (std::numeric_limits<int64_t>::max() - d) / 10) return fail("dimension overflows int64");
        v = v * 10 + d;
        ++pos_;
      }
      out.push_back(v);
      skip_space();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ')') {
        return fail("expected ',' or ')' in shape");
      }
    }
    ++pos_;
    return ok_status();
  }

  std::string_view s_;
  std::string_view name_;
  size_t pos_ = 0;
};

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

template <typename T>
Status write_impl(const std::string& path, std::span<const T> data, std::span<const int64_t> shape,
                  const char* descr) {
  int64_t count = 1;
  for (const int64_t d : shape) {
    LOCMOE_CHECK_ARG(d >= 0, "{}: negative dimension {}", path, d);
    count *= d;
  }
  LOCMOE_CHECK_ARG(count == static_cast<int64_t>(data.size()),
                   "{}: shape holds {} elements but {} were given", path, count, data.size());
  // NumPy writes "(3,)" for one dimension, "(3, 4)" otherwise, "()" for a scalar.
  const std::string dims = shape.size() == 1 ? fmt::format("{},", shape[0])
                                             : fmt::format("{}", fmt::join(shape, ", "));
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
  // Data starts at a multiple of 64 bytes: magic (6) + version (2) + length (2) + header + '\n'.
  const size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  LOCMOE_CHECK(f.good(), Code::kSystemError, "{}: cannot open for writing", path);
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  const uint8_t prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                              static_cast<uint8_t>(hlen & 0xff), static_cast<uint8_t>(hlen >> 8)};
  f.write(reinterpret_cast<const char*>(prefix), sizeof(prefix));
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  static_assert(std::endian::native == std::endian::little, "npy writer assumes little-endian");
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size_bytes()));
  f.close();
  LOCMOE_CHECK(!f.fail(), Code::kSystemError, "{}: write failed", path);
  return ok_status();
}

}  // namespace

const char* npy_dtype_name(NpyDtype dtype) noexcept {
  switch (dtype) {
    case NpyDtype::kFloat32: return "float32";
    case NpyDtype::kFloat16: return "float16";
    case NpyDtype::kBfloat16: return "bfloat16";
    case NpyDtype::kInt32: return "int32";
  }
  return "?";
}

size_t npy_dtype_size(NpyDtype dtype) noexcept {
  return dtype == NpyDtype::kFloat16 || dtype == NpyDtype::kBfloat16 ? 2 : 4;
}

int64_t NpyArray::element_count() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

Result<NpyArray> parse_npy(std::span<const uint8_t> bytes, std::string_view name,
                           const NpyReadOptions& options) {
  LOCMOE_CHECK(bytes.size() >= kMagicLen + 2 && std::memcmp(bytes.data(), kMagic, kMagicLen) == 0,
               Code::kParseError, "{}: not an npy file (bad magic; {} bytes)", name, bytes.size());
  const int major = bytes[6];
  LOCMOE_CHECK(major >= 1 && major <= 3, Code::kUnsupported, "{}: npy format version {}.{} unsupported",
               name, major, bytes[7]);
  const size_t len_bytes = major == 1 ? 2 : 4;
  LOCMOE_CHECK(bytes.size() >= 8 + len_bytes, Code::kParseError,
               "{}: truncated npy header (file has {} bytes)", name, bytes.size());
  const uint64_t hlen = read_le(bytes.data() + 8, static_cast<int>(len_bytes));
  LOCMOE_CHECK(hlen <= kMaxHeaderLen, Code::kParseError, "{}: npy header length {} is implausible",
               name, hlen);
  const size_t data_start = 8 + len_bytes + hlen;
  LOCMOE_CHECK(bytes.size() >= data_start, Code::kParseError,
               "{}: truncated npy header (needs {} bytes, file has {})", name, data_start, bytes.size());
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8 + len_bytes, hlen);

  std::string descr;
  bool fortran = false;
  NpyArray out;
  LOCMOE_RETURN_IF_ERROR(HeaderParser(text, name).parse(descr, fortran, out.shape));
  LOCMOE_CHECK(!fortran, Code::kUnsupported, "{}: fortran_order arrays are unsupported (save C order)",
               name);
  if (descr == "<f4") {
    out.dtype = NpyDtype::kFloat32;
  } else if (descr == "<f2") {
    out.dtype = NpyDtype::kFloat16;
  } else if (descr == "<i4") {
    out.dtype = NpyDtype::kInt32;
  } else if (descr == "<u2" && options.u2_is_bfloat16) {
    out.dtype = NpyDtype::kBfloat16;
  } else {
    return error(Code::kUnsupported,
                 "{}: npy dtype '{}' unsupported (float32 '<f4', float16 '<f2', int32 '<i4'{})",
                 name, descr, options.u2_is_bfloat16 ? ", bfloat16 as '<u2'" : "");
  }
  const uint64_t esize = npy_dtype_size(out.dtype);
  uint64_t count = 1;
  for (const int64_t d : out.shape) {
    LOCMOE_CHECK(d == 0 || count <= std::numeric_limits<uint64_t>::max() / esize / static_cast<uint64_t>(d),
                 Code::kParseError, "{}: npy shape element count overflows", name);
    count *= static_cast<uint64_t>(d);
  }
  const uint64_t data_bytes = bytes.size() - data_start;
  LOCMOE_CHECK(data_bytes == count * esize, Code::kParseError,
               "{}: npy data has {} bytes but shape {} of {} needs {}{}", name, data_bytes,
               fmt::format("({})", fmt::join(out.shape, ", ")), npy_dtype_name(out.dtype),
               count * esize, data_bytes < count * esize ? " (truncated)" : "");
  out.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(data_start), bytes.end());
  return out;
}

Result<NpyArray> read_npy(const std::string& path, const NpyReadOptions& options) {
  std::ifstream f(path, std::ios::binary);
  LOCMOE_CHECK(f.good(), Code::kNotFound, "{}: cannot open", path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  LOCMOE_CHECK(!f.bad(), Code::kSystemError, "{}: read failed", path);
  return parse_npy(bytes, path, options);
}

float half_bits_to_float(uint16_t h) noexcept {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float v = static_cast<float>(man) * 0x1p-24f;
    return (h & 0x8000u) ? -v : v;
  }
  const uint32_t bits = exp == 0x1f ? (sign | 0x7f800000u | (man << 13))
                                    : (sign | ((exp + 112) << 23) | (man << 13));
  return std::bit_cast<float>(bits);
}

float bfloat16_bits_to_float(uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

Result<std::vector<float>> npy_to_float32(const NpyArray& a, std::string_view name) {
  const size_t n = static_cast<size_t>(a.element_count());
  std::vector<float> out(n);
  switch (a.dtype) {
    case NpyDtype::kFloat32:
      if (n) std::memcpy(out.data(), a.data.data(), n * 4);
      break;
    case NpyDtype::kFloat16:
    case NpyDtype::kBfloat16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t b = static_cast<uint16_t>(a.data[2 * i] | (a.data[2 * i + 1] << 8));
        out[i] = a.dtype == NpyDtype::kFloat16 ? half_bits_to_float(b) : bfloat16_bits_to_float(b);
      }
      break;
    case NpyDtype::kInt32:
      return error(Code::kUnsupported, "{}: expected a floating-point array, got int32", name);
  }
  return out;
}

Result<std::vector<int32_t>> npy_to_int32(const NpyArray& a, std::string_view name) {
  LOCMOE_CHECK(a.dtype == NpyDtype::kInt32, Code::kUnsupported, "{}: expected an int32 array, got {}",
               name, npy_dtype_name(a.dtype));
  std::vector<int32_t> out(static_cast<size_t>(a.element_count()));
  if (!out.empty()) std::memcpy(out.data(), a.data.data(), out.size() * 4);
  return out;
}

Status write_npy(const std::string& path, std::span<const float> data, std::span<const int64_t> shape) {
  return write_impl(path, data, shape, "<f4");
}
Status write_npy(const std::string& path, std::span<const int32_t> data, std::span<const int64_t> shape) {
  return write_impl(path, data, shape, "<i4");
}

}  // namespace locmoe
