// .npy reader/writer: files built byte by byte here (independent of the writer), round trips, and
// every malformed case the reader must reject with a message naming the file and the problem.
#include <cmath>
#include <cstring>
#include <iterator>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/core/npy.h"

namespace locmoe {
namespace {

// A version-1.0 image with the given header dict (padded so data starts at 64) and data bytes.
std::vector<uint8_t> image(const std::string& dict, const std::vector<uint8_t>& data, int pad_to = 64) {
  std::string h = dict;
  while ((10 + h.size() + 1) % pad_to) h.push_back(' ');
  h.push_back('\n');
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                              static_cast<uint8_t>(h.size() & 0xff), static_cast<uint8_t>(h.size() >> 8)};
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> le_floats(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::string tmp(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TEST(Npy, ParsesHandBuiltFloat32) {
  const auto img = image("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                         le_floats({1, 2, 3, 4, 5, 6}));
  auto a = parse_npy(img, "x.npy");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  auto f = npy_to_float32(*a, "x.npy");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, (std::vector<float>{1, 2, 3, 4, 5, 6}));
}

TEST(Npy, Float16AndBfloat16Conversion) {
  // 1.0, -2.0, 65504 (max half), 2^-24 (smallest subnormal), +inf
  const std::vector<uint8_t> half = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x7c};
  auto a = parse_npy(image("{'descr': '<f2', 'fortran_order': False, 'shape': (5,), }", half), "h");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto f = npy_to_float32(*a, "h");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0], 1.0f);
  EXPECT_EQ((*f)[1], -2.0f);
  EXPECT_EQ((*f)[2], 65504.0f);
  EXPECT_EQ((*f)[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf((*f)[4]));
  // bfloat16 1.0 = 0x3f80, -0.5 = 0xbf00
  const std::vector<uint8_t> bf = {0x80, 0x3f, 0x00, 0xbf};
  const auto img = image("{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }", bf);
  EXPECT_EQ(parse_npy(img, "b").status().code(), Code::kUnsupported);  // u2 without the flag
  auto b = parse_npy(img, "b", NpyReadOptions{.u2_is_bfloat16 = true});
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  auto bfv = npy_to_float32(*b, "b");
  ASSERT_TRUE(bfv.ok());
  EXPECT_EQ((*bfv)[0], 1.0f);
  EXPECT_EQ((*bfv)[1], -0.5f);
}

TEST(Npy, RoundTripFloat32AndInt32) {
  const std::vector<float> f = {0.5f, -1.25f, 3e7f, 0.0f, 7.0f, -0.0f};
  const std::vector<int64_t> shape = {3, 2};
  ASSERT_TRUE(write_npy(tmp("f.npy"), std::span<const float>(f), shape).ok());
  auto a = read_npy(tmp("f.npy"));
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->shape, shape);
  EXPECT_EQ(*npy_to_float32(*a, "f"), f);

  const std::vector<int32_t> i = {-1, 2, 3};
  const std::vector<int64_t> shape1 = {3};
  ASSERT_TRUE(write_npy(tmp("i.npy"), std::span<const int32_t>(i), shape1).ok());
  auto b = read_npy(tmp("i.npy"));
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->shape, shape1);
  EXPECT_EQ(*npy_to_int32(*b, "i"), i);
  // The writer's header must be what NumPy writes: 1-D shapes carry a trailing comma.
  std::ifstream in(tmp("i.npy"), std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(all.find("'shape': (3,)"), std::string::npos);
  EXPECT_EQ((all.find('\n') + 1) % 64, 0u);  // data aligned to 64 bytes
  EXPECT_FALSE(write_npy(tmp("bad.npy"), std::span<const int32_t>(i), shape).ok());  // 3 != 6
}

// Each malformed image and a word its error message must contain.
TEST(Npy, RejectsMalformedFiles) {
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const auto data = le_floats({1, 2});
  struct Case {
    std::vector<uint8_t> img;
    std::string word;
  };
  std::vector<Case> cases;
  auto bad_magic = image(good, data);
  bad_magic[1] = 'X';
  cases.push_back({bad_magic, "magic"});
  cases.push_back({{0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0}, "truncated"});
  auto trunc_header = image(good, data);
  trunc_header.resize(30);
  cases.push_back({trunc_header, "truncated"});
  auto trunc_data = image(good, data);
  trunc_data.pop_back();
  cases.push_back({trunc_data, "truncated"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", le_floats({1, 2, 3})), "needs"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", data), "fortran"});
  cases.push_back({image("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", data), "'<f8'"});
  cases.push_back({image("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data), "'>f4'"});
  cases.push_back({image("{'descr': '<f4', 'shape': (2,), }", data), "fortran_order"});
  cases.push_back({image("['descr', '<f4']", data), "dict"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", data), "True or False"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", data), "dimension"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", data), "overflow"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", data), "overflow"});
  cases.push_back({image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", data), "extra"});
  cases.push_back({image("{'descr: '<f4'", data), "header"});
  auto version = image(good, data);
  version[6] = 9;
  cases.push_back({version, "version"});
  for (size_t i = 0; i < cases.size(); ++i) {
    auto r = parse_npy(cases[i].img, "case.npy");
    ASSERT_FALSE(r.ok()) << "case " << i << " was accepted";
    const std::string msg = r.status().message();
    EXPECT_NE(msg.find("case.npy"), std::string::npos) << msg;
    EXPECT_NE(msg.find(cases[i].word), std::string::npos) << "case " << i << ": " << msg;
  }
  // A file that does not exist names its path.
  auto missing = read_npy(tmp("does-not-exist.npy"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find("does-not-exist.npy"), std::string::npos);
  // int32 where floats are expected, and floats where int32 is expected.
  auto ints = parse_npy(image("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", data), "i");
  ASSERT_TRUE(ints.ok());
  EXPECT_FALSE(npy_to_float32(*ints, "i").ok());
  auto floats = parse_npy(image(good, data), "f");
  ASSERT_TRUE(floats.ok());
  EXPECT_FALSE(npy_to_int32(*floats, "f").ok());
}

TEST(Npy, EmptyAndVersion2) {
  auto a = parse_npy(image("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 8), }", {}), "e");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->element_count(), 0);
  // Version 2.0: 4-byte header length.
  std::string h = "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }";
  while ((12 + h.size() + 1) % 64) h.push_back(' ');
  h.push_back('\n');
  std::vector<uint8_t> img = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0,
                              static_cast<uint8_t>(h.size()), static_cast<uint8_t>(h.size() >> 8), 0, 0};
  img.insert(img.end(), h.begin(), h.end());
  img.insert(img.end(), {7, 0, 0, 0});
  auto b = parse_npy(img, "v2");
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ((*npy_to_int32(*b, "v2"))[0], 7);
}

}  // namespace
}  // namespace locmoe
