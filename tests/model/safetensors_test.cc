// Tests for model/safetensors.h: hand-built files from the spec, F32/BF16/F16/F64 decoding, the
// writer's rounding and layout, header validation errors, and sharded checkpoint directories.
#include "model/safetensors.h"

#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "nlohmann/json.hpp"

namespace grpo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh, empty directory under the build tree for one test.
std::string TmpDir(const std::string& name) {
  const std::string dir = std::string(GRPO_BINARY_DIR) + "/test_tmp/safetensors/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string ReadBytes(const std::string& path) {
  auto s = ReadFile(path);
  REQUIRE(s.ok());
  return *s;
}

// 8-byte little-endian header length + header + `data`.
std::string MakeFile(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }
float FromBits(uint32_t b) { return std::bit_cast<float>(b); }

std::string U16Bytes(const std::vector<uint16_t>& v) {
  std::string s(v.size() * 2, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

TEST_CASE("DtypeName and DtypeSize", "[safetensors]") {
  CHECK(std::string(DtypeName(Dtype::kBF16)) == "BF16");
  CHECK(std::string(DtypeName(Dtype::kBool)) == "BOOL");
  CHECK(std::string(DtypeName(Dtype::kOther)) == "OTHER");
  CHECK(DtypeSize(Dtype::kF32) == 4);
  CHECK(DtypeSize(Dtype::kF16) == 2);
  CHECK(DtypeSize(Dtype::kI64) == 8);
  CHECK(DtypeSize(Dtype::kU8) == 1);
  CHECK(DtypeSize(Dtype::kOther) == 0);
}

TEST_CASE("The spec's minimal example file opens", "[safetensors]") {
  const std::string dir = TmpDir("minimal");
  const std::string header = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";
  REQUIRE(header.size() == 0x3C);
  std::string bytes = std::string("<\0\0\0\0\0\0\0", 8) + header;
  for (int i = 0; i < 16; ++i) bytes.push_back(static_cast<char>(i));
  const std::string path = dir + "/min.safetensors";
  WriteBytes(path, bytes);
  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  const auto& file = **f;
  CHECK(file.path() == path);
  REQUIRE(file.tensors().size() == 1);
  const TensorInfo* t = file.Find("test");
  REQUIRE(t != nullptr);
  CHECK(t->dtype == Dtype::kI32);
  CHECK(t->dtype_name == "I32");
  CHECK(t->shape == std::vector<int64_t>{2, 2});
  CHECK(t->begin == 0);
  CHECK(t->end == 16);
  CHECK(t->numel() == 4);
  CHECK(file.metadata().empty());
  CHECK(file.Find("nope") == nullptr);
  const uint8_t* d = file.Data(*t);
  for (int i = 0; i < 16; ++i) CHECK(d[i] == i);
  std::vector<float> out(4);
  absl::Status s = file.ReadAsFloat(*t, out.data());
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(Msg(s), Catch::Contains(path) && Catch::Contains("'test'") &&
                         Catch::Contains("dtype I32"));
}

TEST_CASE("F32 round trip is bitwise exact, and the writer pads and sorts", "[safetensors]") {
  const std::string dir = TmpDir("f32_roundtrip");
  std::vector<float> w = {0.0f, -0.0f, 1.0f, -3.25f, std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::infinity(), FromBits(0x7fc01234u),
                          FromBits(0xff800001u), 1e-30f, 123456.789f, -7.0f};
  std::vector<float> scalar = {42.5f};
  std::vector<TensorToWrite> ts = {
      {"zeta.weight", {3, 4}, w.data(), Dtype::kF32},
      {"alpha", {}, scalar.data(), Dtype::kF32},
      {"empty", {0, 5}, nullptr, Dtype::kF32},
  };
  const std::string path = dir + "/x.safetensors";
  REQUIRE(WriteSafetensors(path, ts, {{"format", "pt"}, {"note", "hi"}}).ok());
  CHECK_FALSE(fs::exists(path + ".tmp"));

  // Layout: header length a multiple of 8, padded with spaces, tensors packed in name order.
  const std::string raw = ReadBytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(raw.size() == 8 + n + 4 + 48);
  const std::string header = raw.substr(8, n);
  CHECK(header.front() == '{');
  CHECK(header.find_last_not_of(' ') == header.rfind('}'));
  json h = json::parse(header);
  CHECK(h["__metadata__"] == json({{"format", "pt"}, {"note", "hi"}}));
  CHECK(h["alpha"]["data_offsets"] == json({0, 4}));
  CHECK(h["empty"]["data_offsets"] == json({4, 4}));
  CHECK(h["zeta.weight"]["data_offsets"] == json({4, 52}));
  CHECK(h["zeta.weight"]["dtype"] == "F32");
  CHECK(h["zeta.weight"]["shape"] == json({3, 4}));

  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  const auto& file = **f;
  REQUIRE(file.tensors().size() == 3);
  CHECK(file.tensors()[0].name == "alpha");
  CHECK(file.tensors()[1].name == "empty");
  CHECK(file.tensors()[2].name == "zeta.weight");
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}});
  const TensorInfo* a = file.Find("alpha");
  REQUIRE(a != nullptr);
  CHECK(a->shape.empty());
  CHECK(a->numel() == 1);
  float av = 0;
  REQUIRE(file.ReadAsFloat(*a, &av).ok());
  CHECK(av == 42.5f);
  CHECK(file.Find("empty")->numel() == 0);
  REQUIRE(file.ReadAsFloat(*file.Find("empty"), nullptr).ok());
  std::vector<float> back(12, 0.5f);
  REQUIRE(file.ReadAsFloat(*file.Find("zeta.weight"), back.data()).ok());
  for (size_t i = 0; i < w.size(); ++i) {
    INFO("element " << i);
    CHECK(Bits(back[i]) == Bits(w[i]));
  }
  CHECK(std::memcmp(file.Data(*file.Find("zeta.weight")), w.data(), 48) == 0);
}

TEST_CASE("BF16 writer rounds to nearest even and keeps NaN", "[safetensors]") {
  const std::string dir = TmpDir("bf16");
  struct Case {
    uint32_t in;
    uint16_t out;
  };
  const std::vector<Case> cases = {
      {0x3f800000u, 0x3f80},  // 1.0 exact
      {0x3f808000u, 0x3f80},  // halfway, even below: stays
      {0x3f818000u, 0x3f82},  // halfway, odd below: rounds up to even
      {0x3f808001u, 0x3f81},  // just above halfway
      {0x3f807fffu, 0x3f80},  // just below halfway
      {0xbf818000u, 0xbf82},  // negative halfway
      {0x7f800000u, 0x7f80},  // +inf
      {0xff800000u, 0xff80},  // -inf
      {0x7f7fffffu, 0x7f80},  // FLT_MAX overflows to inf
      {0x7fc00000u, 0x7fc0},  // quiet NaN
      {0x7f800001u, 0x7fc0},  // NaN whose payload is only in the low bits stays NaN
      {0xffc00001u, 0xffc0},  // negative NaN
      {0x80000000u, 0x8000},  // -0
      {0x00000001u, 0x0000},  // smallest subnormal rounds to 0
  };
  std::vector<float> in;
  for (const Case& c : cases) in.push_back(FromBits(c.in));
  std::vector<TensorToWrite> ts = {
      {"b", {static_cast<int64_t>(in.size())}, in.data(), Dtype::kBF16}};
  const std::string path = dir + "/b.safetensors";
  REQUIRE(WriteSafetensors(path, ts).ok());
  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  const TensorInfo* t = (*f)->Find("b");
  REQUIRE(t != nullptr);
  CHECK(t->dtype == Dtype::kBF16);
  CHECK(t->end - t->begin == 2 * cases.size());
  CHECK((*f)->metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  std::vector<float> back(in.size());
  REQUIRE((*f)->ReadAsFloat(*t, back.data()).ok());
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("input bits " << std::hex << cases[i].in);
    uint16_t raw;
    std::memcpy(&raw, (*f)->Data(*t) + 2 * i, 2);
    CHECK(raw == cases[i].out);
    CHECK(Bits(back[i]) == static_cast<uint32_t>(cases[i].out) << 16);
  }
  CHECK(std::isnan(back[10]));
}

TEST_CASE("F16, BF16 and F64 decode from hand-written, unaligned bytes", "[safetensors]") {
  const std::string dir = TmpDir("decode");
  const std::vector<uint16_t> half = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400,
                                      0x7c00, 0xfc00, 0x7e00, 0x8000, 0x3555, 0x8001};
  const std::vector<uint32_t> want = {
      0x3f800000u,                        // 1
      0xc0000000u,                        // -2
      Bits(65504.0f),                     // max half
      Bits(std::ldexp(1.0f, -24)),        // smallest subnormal
      Bits(1023.0f * std::ldexp(1.0f, -24)),  // largest subnormal
      Bits(std::ldexp(1.0f, -14)),        // smallest normal
      0x7f800000u,                        // inf
      0xff800000u,                        // -inf
      0x7fc00000u,                        // NaN
      0x80000000u,                        // -0
      Bits(0.333251953125f),              // 0x3555
      Bits(-std::ldexp(1.0f, -24)),       // negative subnormal
  };
  const std::vector<uint16_t> bf = {0x3f80, 0x4049, 0xc2f7};
  const double f64[] = {1.5, 0.1, -1e10};
  // A 1-byte U8 tensor first so every following tensor starts at an odd offset.
  const std::string header = absl::StrCat(
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)",
      R"("h":{"dtype":"F16","shape":[12],"data_offsets":[1,25]},)",
      R"("p":{"dtype":"BF16","shape":[3],"data_offsets":[25,31]},)",
      R"("q":{"dtype":"F64","shape":[3],"data_offsets":[31,55]}})");
  std::string data = "\x07" + U16Bytes(half) + U16Bytes(bf);
  data.append(reinterpret_cast<const char*>(f64), sizeof(f64));
  const std::string path = dir + "/d.safetensors";
  WriteBytes(path, MakeFile(header, data));
  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  const auto& file = **f;
  CHECK(file.Find("a")->dtype == Dtype::kU8);
  CHECK(*file.Data(*file.Find("a")) == 7);
  std::vector<float> h(12);
  REQUIRE(file.ReadAsFloat(*file.Find("h"), h.data()).ok());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("half bits " << std::hex << half[i]);
    CHECK(Bits(h[i]) == want[i]);
  }
  CHECK(h[3] == 5.9604644775390625e-08f);
  std::vector<float> p(3);
  REQUIRE(file.ReadAsFloat(*file.Find("p"), p.data()).ok());
  CHECK(p[0] == 1.0f);
  CHECK(p[1] == 3.140625f);
  CHECK(p[2] == -123.5f);
  std::vector<float> q(3);
  REQUIRE(file.ReadAsFloat(*file.Find("q"), q.data()).ok());
  CHECK(q[0] == 1.5f);
  CHECK(q[1] == 0.1f);
  CHECK(q[2] == -1e10f);
}

TEST_CASE("Accepted header variants: leading whitespace, other dtypes, F4", "[safetensors]") {
  const std::string dir = TmpDir("variants");
  const std::string path = dir + "/v.safetensors";
  const std::string header = absl::StrCat(
      " \n\t{\"__metadata__\":{\"format\":\"pt\"},",
      R"("e":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]},)",
      R"("m":{"dtype":"F4","shape":[4],"data_offsets":[4,6]},)",
      R"("u":{"dtype":"U16","shape":[1],"data_offsets":[6,8]},)",
      R"("z":{"dtype":"BOOL","shape":[0],"data_offsets":[8,8]}}   )");
  WriteBytes(path, MakeFile(header, std::string(8, '\x01')));
  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  const auto& file = **f;
  CHECK(file.tensors().size() == 4);
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.Find("e")->dtype == Dtype::kOther);
  CHECK(file.Find("e")->dtype_name == "F8_E4M3");
  CHECK(file.Find("m")->dtype_name == "F4");
  CHECK(file.Find("u")->dtype == Dtype::kOther);
  CHECK(file.Find("z")->dtype == Dtype::kBool);
  float out[4];
  absl::Status s = file.ReadAsFloat(*file.Find("e"), out);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(Msg(s), Catch::Contains("'e'") && Catch::Contains("F8_E4M3"));
}

TEST_CASE("Malformed files are rejected naming the file and the problem", "[safetensors]") {
  const std::string dir = TmpDir("malformed");
  const std::string ok_a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    const char* label;
    std::string bytes;
    std::vector<std::string> want;
  };
  auto hdr = [](const std::string& h, size_t data) { return MakeFile(h, std::string(data, 'x')); };
  std::string huge(8, '\0');
  const uint64_t big = 200'000'000;
  std::memcpy(huge.data(), &big, 8);
  std::string longer(8, '\0');
  const uint64_t n1000 = 1000;
  std::memcpy(longer.data(), &n1000, 8);
  longer += "{}                      ";
  const std::string good = hdr("{" + ok_a + "}", 8);
  const std::vector<Case> cases = {
      {"too short", "abc", {"only 3 bytes", "too short"}},
      {"header over limit", huge + "{}", {"header length 200000000", "100000000-byte limit"}},
      {"header longer than file", longer, {"header length 1000", "larger than the file"}},
      {"truncated", good.substr(0, good.size() - 3), {"cover 8 data bytes", "file truncated"}},
      {"trailing bytes", good + "zzz", {"has 11", "trailing bytes"}},
      {"empty header", hdr("", 0), {"does not start with '{'"}},
      {"non-object JSON", hdr("[1,2]", 0), {"does not start with '{'"}},
      {"invalid JSON", hdr(R"({"a":{"dtype":)", 0), {"not valid JSON"}},
      {"garbage after JSON", hdr(R"({} x)", 0), {"not valid JSON"}},
      {"entry not object", hdr(R"({"a":1})", 0), {"'a'", "must be an object, got integer"}},
      {"duplicate key", hdr("{" + ok_a + "," + ok_a + "}", 8), {"duplicate key 'a'"}},
      {"bad dtype", hdr(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8),
       {"'a'", "unknown dtype 'F33'"}},
      {"dtype not string", hdr(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8),
       {"'a'", "'dtype' must be a string, got integer"}},
      {"negative dim", hdr(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       {"'a'", "non-negative integers"}},
      {"float dim", hdr(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
       {"'a'", "non-negative integers"}},
      {"shape not array", hdr(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
       {"'a'", "'shape' must be an array"}},
      {"shape overflow",
       hdr(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})", 8),
       {"'a'", "overflows 64 bits"}},
      {"missing offsets", hdr(R"({"a":{"dtype":"F32","shape":[2]}})", 8),
       {"'a'", "'data_offsets' must be [begin, end]"}},
      {"three offsets", hdr(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", 8),
       {"'a'", "'data_offsets' must be [begin, end]"}},
      {"end before begin", hdr(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
       {"'a'", "end before begin"}},
      {"size mismatch", hdr(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       {"'a'", "span 8 bytes", "needs 12"}},
      {"sub-byte tail", hdr(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
       {"'a'", "byte boundary"}},
      {"hole", hdr(absl::StrCat("{", ok_a, R"(,"b":{"dtype":"F32","shape":[1],)",
                                R"("data_offsets":[12,16]}})"), 16),
       {"'b'", "begins at data offset 12", "'a' ends at 8", "hole"}},
      {"overlap", hdr(absl::StrCat("{", ok_a, R"(,"b":{"dtype":"F32","shape":[2],)",
                                   R"("data_offsets":[4,12]}})"), 12),
       {"'b'", "begins at data offset 4", "overlap"}},
      {"not from zero", hdr(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       {"'a'", "starts at 0", "hole"}},
      {"metadata not map", hdr(R"({"__metadata__":"pt"})", 0),
       {"__metadata__ must be a string->string map, got string"}},
      {"metadata value not string", hdr(R"({"__metadata__":{"format":"pt","n":1}})", 0),
       {"__metadata__ key 'n' must be a string, got integer"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO("case: " << c.label);
    const std::string path = absl::StrCat(dir, "/bad", i, ".safetensors");
    WriteBytes(path, c.bytes);
    auto f = SafetensorsFile::Open(path);
    REQUIRE_FALSE(f.ok());
    const std::string m = Msg(f.status());
    INFO("message: " << m);
    CHECK(m.rfind(path + ": ", 0) == 0);
    CHECK(m.find('\n') == std::string::npos);
    for (const std::string& w : c.want) CHECK_THAT(m, Catch::Contains(w));
  }
  auto missing = SafetensorsFile::Open(dir + "/nope.safetensors");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
  CHECK_THAT(Msg(missing.status()), Catch::Contains(dir + "/nope.safetensors"));
}

TEST_CASE("Writer rejects bad input and leaves no file", "[safetensors]") {
  const std::string dir = TmpDir("writer_errors");
  const std::string path = dir + "/w.safetensors";
  std::vector<float> v(4, 1.0f);
  struct Case {
    std::vector<TensorToWrite> ts;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{{"x", {4}, v.data(), Dtype::kF32}, {"x", {4}, v.data(), Dtype::kF32}}, "given twice"},
      {{{"x", {4}, v.data(), Dtype::kI32}}, "cannot write dtype I32"},
      {{{"x", {-1, 4}, v.data(), Dtype::kF32}}, "negative dimension -1"},
      {{{"x", {4}, nullptr, Dtype::kF32}}, "data is null"},
      {{{"__metadata__", {4}, v.data(), Dtype::kF32}}, "reserved"},
  };
  for (const Case& c : cases) {
    absl::Status s = WriteSafetensors(path, c.ts);
    REQUIRE_FALSE(s.ok());
    CHECK_THAT(Msg(s), Catch::Contains(path) && Catch::Contains(c.want));
    CHECK_FALSE(fs::exists(path));
    CHECK_FALSE(fs::exists(path + ".tmp"));
  }
  absl::Status s = WriteSafetensors(dir + "/no/such/dir/w.safetensors",
                                    std::vector<TensorToWrite>{{"x", {4}, v.data()}});
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(Msg(s), Catch::Contains("cannot open for writing"));
}

// Five tensors, 480 bytes: with max_shard_bytes = 100 they shard as [a] [b] [c] [d, e].
struct Sample {
  std::vector<float> a = std::vector<float>(16), b = std::vector<float>(16),
                     c = std::vector<float>(64), d = std::vector<float>(16),
                     e = std::vector<float>(16);
  Sample() {
    for (int i = 0; i < 16; ++i) {
      a[i] = i * 0.5f;
      b[i] = -i - 0.25f;
      d[i] = static_cast<float>(i * 4);  // exact in BF16
      e[i] = 1000.0f + i;
    }
    for (int i = 0; i < 64; ++i) c[i] = i * 1.0e-3f;
  }
  std::vector<TensorToWrite> Tensors() const {
    return {{"e", {16}, e.data(), Dtype::kF32},
            {"c", {8, 8}, c.data(), Dtype::kF32},
            {"a", {4, 4}, a.data(), Dtype::kF32},
            {"d", {2, 8}, d.data(), Dtype::kBF16},
            {"b", {16}, b.data(), Dtype::kF32}};
  }
};

std::string Shard(int i, int n) {
  return absl::StrCat("model-0000", i, "-of-0000", n, ".safetensors");
}

TEST_CASE("Sharded checkpoint write and open round trip", "[safetensors]") {
  const std::string dir = TmpDir("sharded");
  Sample s;
  REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
  for (int i = 1; i <= 4; ++i) CHECK(fs::exists(dir + "/" + Shard(i, 4)));
  CHECK_FALSE(fs::exists(dir + "/" + Shard(5, 5)));
  CHECK_FALSE(fs::exists(dir + "/model.safetensors"));
  CHECK_FALSE(fs::exists(dir + "/model.safetensors.index.json.tmp"));

  const std::string text = ReadBytes(dir + "/model.safetensors.index.json");
  CHECK(text.rfind("{\n  \"metadata\": {\n    \"total_size\": 480\n  },\n  \"weight_map\": {\n"
                   "    \"a\": \"model-00001-of-00004.safetensors\",\n",
                   0) == 0);
  json index = json::parse(text);
  CHECK(index["metadata"]["total_size"] == 480);
  CHECK(index["weight_map"] == json({{"a", Shard(1, 4)},
                                     {"b", Shard(2, 4)},
                                     {"c", Shard(3, 4)},
                                     {"d", Shard(4, 4)},
                                     {"e", Shard(4, 4)}}));
  {
    auto shard4 = SafetensorsFile::Open(dir + "/" + Shard(4, 4));
    REQUIRE(shard4.ok());
    CHECK((*shard4)->tensors().size() == 2);
    CHECK((*shard4)->Find("d")->begin == 0);
    CHECK((*shard4)->Find("e")->begin == 32);
  }

  auto c = CheckpointDir::Open(dir);
  REQUIRE(c.ok());
  CHECK((*c)->dir() == dir);
  CHECK((*c)->TensorNames() == std::vector<std::string>{"a", "b", "c", "d", "e"});
  CheckpointDir::Entry missing = (*c)->Find("zz");
  CHECK(missing.file == nullptr);
  CHECK(missing.info == nullptr);
  const std::vector<std::pair<std::string, const std::vector<float>*>> expect = {
      {"a", &s.a}, {"b", &s.b}, {"c", &s.c}, {"d", &s.d}, {"e", &s.e}};
  for (const auto& [name, values] : expect) {
    INFO("tensor " << name);
    CheckpointDir::Entry e = (*c)->Find(name);
    REQUIRE(e.file != nullptr);
    REQUIRE(e.info != nullptr);
    CHECK(e.info->name == name);
    CHECK(e.file->path() == dir + "/" + index["weight_map"][name].get<std::string>());
    std::vector<float> out(values->size());
    REQUIRE(e.file->ReadAsFloat(*e.info, out.data()).ok());
    CHECK(out == *values);
  }
  CHECK((*c)->Find("d").info->dtype == Dtype::kBF16);
  CHECK((*c)->Find("c").info->shape == std::vector<int64_t>{8, 8});
}

TEST_CASE("Unsharded checkpoint when everything fits", "[safetensors]") {
  const std::string dir = TmpDir("single");
  Sample s;
  REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 480).ok());
  CHECK(fs::exists(dir + "/model.safetensors"));
  CHECK_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  auto c = CheckpointDir::Open(dir);
  REQUIRE(c.ok());
  CHECK((*c)->TensorNames().size() == 5);
  CHECK((*c)->Find("c").file->path() == dir + "/model.safetensors");
  CHECK((*c)->Find("a").file->metadata().at("format") == "pt");
  absl::Status bad = WriteCheckpointWeights(dir, s.Tensors(), 0);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(Msg(bad), Catch::Contains("max_shard_bytes must be positive"));
}

// Rewrites the index of a sharded `dir` after `edit` changes its weight_map.
template <typename F>
void EditIndex(const std::string& dir, F edit) {
  const std::string path = dir + "/model.safetensors.index.json";
  auto j = ReadJsonFile(path);
  REQUIRE(j.ok());
  edit(*j);
  REQUIRE(WriteFileAtomic(path, j->dump(2)).ok());
}

TEST_CASE("Inconsistent sharded checkpoints are rejected", "[safetensors]") {
  Sample s;
  const std::string idx = "/model.safetensors.index.json";
  auto expect_error = [](const std::string& dir, std::vector<std::string> want) {
    auto c = CheckpointDir::Open(dir);
    REQUIRE_FALSE(c.ok());
    const std::string m = Msg(c.status());
    INFO("message: " << m);
    for (const std::string& w : want) CHECK_THAT(m, Catch::Contains(w));
  };
  SECTION("empty directory") {
    const std::string dir = TmpDir("bad_empty");
    expect_error(dir, {dir + ": no model.safetensors or model.safetensors.index.json found"});
  }
  SECTION("missing shard file") {
    const std::string dir = TmpDir("bad_missing_shard");
    REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
    fs::remove(dir + "/" + Shard(3, 4));
    expect_error(dir, {dir + idx, "shard '" + Shard(3, 4) + "'", "'c'", "does not exist"});
  }
  SECTION("index names a tensor its shard lacks") {
    const std::string dir = TmpDir("bad_missing_tensor");
    REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
    EditIndex(dir, [](json& j) { j["weight_map"]["ghost"] = Shard(2, 4); });
    expect_error(dir, {dir + idx, "'ghost'", Shard(2, 4), "does not contain it"});
  }
  SECTION("shard holds a tensor the index does not list") {
    const std::string dir = TmpDir("bad_unlisted");
    REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
    EditIndex(dir, [](json& j) { j["weight_map"].erase("e"); });
    expect_error(dir, {dir + "/" + Shard(4, 4), "'e'", "does not list"});
  }
  SECTION("tensor in two shards") {
    const std::string dir = TmpDir("bad_two_shards");
    REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
    std::vector<TensorToWrite> two = {{"a", {16}, s.a.data()}, {"b", {16}, s.b.data()}};
    REQUIRE(WriteSafetensors(dir + "/" + Shard(2, 4), two).ok());
    expect_error(dir, {dir + "/" + Shard(2, 4), "'a'", "two shards"});
  }
  SECTION("index is not an object / weight_map malformed") {
    const std::string dir = TmpDir("bad_index_json");
    REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
    REQUIRE(WriteFileAtomic(dir + idx, "[1]").ok());
    expect_error(dir, {dir + idx, "must be a JSON object, got array"});
    REQUIRE(WriteFileAtomic(dir + idx, R"({"metadata":{}})").ok());
    expect_error(dir, {dir + idx, "'weight_map' must be an object", "got nothing"});
    REQUIRE(WriteFileAtomic(dir + idx, R"({"weight_map":{"a":3}})").ok());
    expect_error(dir, {dir + idx, "weight_map['a'] must be a shard file name, got 3"});
    REQUIRE(WriteFileAtomic(dir + idx, R"({"weight_map":)").ok());
    expect_error(dir, {dir + idx, "not valid JSON"});
  }
  SECTION("corrupt shard") {
    const std::string dir = TmpDir("bad_corrupt_shard");
    REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
    const std::string shard = dir + "/" + Shard(3, 4);
    fs::resize_file(shard, fs::file_size(shard) - 4);
    expect_error(dir, {shard + ": ", "file truncated"});
  }
}

TEST_CASE("Rewriting a checkpoint removes stale weight files only", "[safetensors]") {
  const std::string dir = TmpDir("rewrite");
  Sample s;
  WriteBytes(dir + "/config.json", "{}");
  WriteBytes(dir + "/model_other.safetensors", "keep");
  REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
  REQUIRE(fs::exists(dir + "/" + Shard(4, 4)));

  // 4 shards -> 2 shards: [a, b, c] (384 bytes) [d, e].
  REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 384).ok());
  for (int i = 1; i <= 4; ++i) CHECK_FALSE(fs::exists(dir + "/" + Shard(i, 4)));
  CHECK(fs::exists(dir + "/" + Shard(1, 2)));
  CHECK(fs::exists(dir + "/" + Shard(2, 2)));
  {
    auto c = CheckpointDir::Open(dir);
    REQUIRE(c.ok());
    CHECK((*c)->TensorNames().size() == 5);
    CHECK((*c)->Find("c").file->path() == dir + "/" + Shard(1, 2));
    CHECK((*c)->Find("d").file->path() == dir + "/" + Shard(2, 2));
  }

  // Sharded -> single file: shards and index go.
  REQUIRE(WriteCheckpointWeights(dir, s.Tensors()).ok());
  CHECK(fs::exists(dir + "/model.safetensors"));
  CHECK_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  CHECK_FALSE(fs::exists(dir + "/" + Shard(1, 2)));
  CHECK_FALSE(fs::exists(dir + "/" + Shard(2, 2)));
  {
    auto c = CheckpointDir::Open(dir);
    REQUIRE(c.ok());
    CHECK((*c)->Find("a").file->path() == dir + "/model.safetensors");
  }

  // Single file -> sharded: the lone model.safetensors goes.
  REQUIRE(WriteCheckpointWeights(dir, s.Tensors(), 100).ok());
  CHECK_FALSE(fs::exists(dir + "/model.safetensors"));
  CHECK(fs::exists(dir + "/model.safetensors.index.json"));
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    (void)entry;
    ++files;
  }
  CHECK(files == 7);  // 4 shards, index, config.json, model_other.safetensors
  CHECK(ReadBytes(dir + "/config.json") == "{}");
  CHECK(ReadBytes(dir + "/model_other.safetensors") == "keep");
  auto c = CheckpointDir::Open(dir);
  REQUIRE(c.ok());
  std::vector<float> out(16);
  REQUIRE((*c)->Find("e").file->ReadAsFloat(*(*c)->Find("e").info, out.data()).ok());
  CHECK(out == s.e);
}

}  // namespace
}  // namespace grpo
