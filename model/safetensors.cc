// safetensors reader (mmap + full header validation) and writer (F32/BF16, temp file + rename),
// per FORMATS.md A1. Checkpoint directories (single file or index + shards): safetensors_dir.cc.
#include "model/safetensors.h"
#include "model/safetensors_internal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace grpo {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

using nlohmann::json;

constexpr uint64_t kMaxHeaderSize = 100'000'000;
using safetensors_internal::ErrnoText;
using safetensors_internal::FileError;
using safetensors_internal::kFixHint;
using safetensors_internal::TensorError;

struct DtypeSpec {
  const char* name;
  Dtype dtype;
  int bits;
};

// Every dtype string the reference implementation knows, with its bit size.
constexpr DtypeSpec kDtypes[] = {
    {"BOOL", Dtype::kBool, 8},        {"F4", Dtype::kOther, 4},
    {"F6_E2M3", Dtype::kOther, 6},    {"F6_E3M2", Dtype::kOther, 6},
    {"U8", Dtype::kU8, 8},            {"I8", Dtype::kI8, 8},
    {"F8_E5M2", Dtype::kOther, 8},    {"F8_E4M3", Dtype::kOther, 8},
    {"F8_E8M0", Dtype::kOther, 8},    {"F8_E4M3FNUZ", Dtype::kOther, 8},
    {"F8_E5M2FNUZ", Dtype::kOther, 8}, {"I16", Dtype::kI16, 16},
    {"U16", Dtype::kOther, 16},       {"F16", Dtype::kF16, 16},
    {"BF16", Dtype::kBF16, 16},       {"I32", Dtype::kI32, 32},
    {"U32", Dtype::kOther, 32},       {"F32", Dtype::kF32, 32},
    {"C64", Dtype::kOther, 64},       {"F64", Dtype::kF64, 64},
    {"I64", Dtype::kI64, 64},         {"U64", Dtype::kOther, 64},
};

const DtypeSpec* LookupDtype(const std::string& s) {
  for (const DtypeSpec& d : kDtypes) {
    if (s == d.name) return &d;
  }
  return nullptr;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;  // +-0
    } else {        // subnormal: normalize into a float normal
      int e = 1;
      do {
        --e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      mant &= 0x3ffu;
      bits = sign | (static_cast<uint32_t>(e + 112) << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t FloatToBf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // NaN: keep sign, force quiet bit
  }
  const uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

// Reads a non-negative integer that fits in uint64 (nlohmann parses those as unsigned).
bool GetU64(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

// Parses the header JSON, rejecting duplicate keys at any depth (serde_json does too).
absl::StatusOr<json> ParseHeader(const std::string& path, const char* begin, const char* end) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty() && parsed.is_string()) {
      if (!keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  json header;
  try {
    header = json::parse(begin, end, cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    return FileError(path, absl::StrCat("header is not valid JSON (", e.what(), "); ", kFixHint));
  }
  if (!duplicate.empty()) {
    return FileError(path, absl::StrCat("header has duplicate key '", duplicate, "'; ", kFixHint));
  }
  return header;
}

// Validates one tensor entry of the header into *t (name already set).
absl::Status ParseTensorInfo(const std::string& path, const json& v, TensorInfo* t) {
  const std::string& name = t->name;
  if (!v.is_object()) {
    return TensorError(path, name,
                       absl::StrCat("header entry must be an object, got ", JsonTypeName(v)));
  }
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) {
    return TensorError(path, name, absl::StrCat("'dtype' must be a string, got ",
                                                dt == v.end() ? "nothing" : JsonTypeName(*dt)));
  }
  t->dtype_name = dt->get<std::string>();
  const DtypeSpec* spec = LookupDtype(t->dtype_name);
  if (spec == nullptr) {
    return TensorError(path, name,
                       absl::StrCat("unknown dtype '", t->dtype_name,
                                    "' (not a safetensors dtype); ", kFixHint));
  }
  t->dtype = spec->dtype;

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) {
    return TensorError(path, name, absl::StrCat("'shape' must be an array, got ",
                                                sh == v.end() ? "nothing" : JsonTypeName(*sh)));
  }
  uint64_t numel = 1;
  for (const json& d : *sh) {
    uint64_t dim = 0;
    if (!GetU64(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
      return TensorError(path, name,
                         absl::StrCat("shape ", sh->dump(), " must hold non-negative integers"));
    }
    t->shape.push_back(static_cast<int64_t>(dim));
    if (__builtin_mul_overflow(numel, dim, &numel) || numel > static_cast<uint64_t>(INT64_MAX)) {
      return TensorError(path, name, absl::StrCat("shape ", sh->dump(), " overflows 64 bits"));
    }
  }

  auto off = v.find("data_offsets");
  uint64_t begin = 0, end = 0;
  if (off == v.end() || !off->is_array() || off->size() != 2 || !GetU64((*off)[0], &begin) ||
      !GetU64((*off)[1], &end)) {
    return TensorError(path, name,
                       absl::StrCat("'data_offsets' must be [begin, end] of non-negative integers, "
                                    "got ", off == v.end() ? "nothing" : off->dump()));
  }
  if (end < begin) {
    return TensorError(path, name, absl::StrCat("data_offsets [", begin, ", ", end,
                                                "] end before begin; ", kFixHint));
  }
  t->begin = begin;
  t->end = end;

  uint64_t nbits = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(spec->bits), &nbits)) {
    return TensorError(path, name, absl::StrCat("shape ", sh->dump(), " overflows 64 bits"));
  }
  if (nbits % 8 != 0) {
    return TensorError(path, name, absl::StrCat(numel, " elements of ", t->dtype_name,
                                                " do not end on a byte boundary"));
  }
  if (end - begin != nbits / 8) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets [", begin, ", ", end, "] span ", end - begin,
                                    " bytes but shape ", sh->dump(), " of ", t->dtype_name,
                                    " needs ", nbits / 8, "; ", kFixHint));
  }
  return absl::OkStatus();
}

}  // namespace

const char* DtypeName(Dtype d) {
  switch (d) {
    case Dtype::kF32: return "F32";
    case Dtype::kF16: return "F16";
    case Dtype::kBF16: return "BF16";
    case Dtype::kF64: return "F64";
    case Dtype::kI64: return "I64";
    case Dtype::kI32: return "I32";
    case Dtype::kI16: return "I16";
    case Dtype::kI8: return "I8";
    case Dtype::kU8: return "U8";
    case Dtype::kBool: return "BOOL";
    case Dtype::kOther: return "OTHER";
  }
  return "OTHER";
}

int64_t DtypeSize(Dtype d) {
  switch (d) {
    case Dtype::kF64:
    case Dtype::kI64: return 8;
    case Dtype::kF32:
    case Dtype::kI32: return 4;
    case Dtype::kF16:
    case Dtype::kBF16:
    case Dtype::kI16: return 2;
    case Dtype::kI8:
    case Dtype::kU8:
    case Dtype::kBool: return 1;
    case Dtype::kOther: return 0;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated against overflow when read
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const bool missing = errno == ENOENT;
    const std::string msg = absl::StrCat(path, ": cannot open safetensors file: ", ErrnoText());
    return missing ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string msg = absl::StrCat(path, ": cannot stat: ", ErrnoText());
    ::close(fd);
    return absl::InternalError(msg);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return FileError(path, absl::StrCat("only ", file_size,
                                        " bytes, too short to be a safetensors file (needs an "
                                        "8-byte header length); ", kFixHint));
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat(path, ": mmap of ", file_size, " bytes failed: ", std::strerror(map_errno)));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = static_cast<const uint8_t*>(map);
  f->map_size_ = file_size;

  uint64_t n = 0;
  std::memcpy(&n, f->map_, 8);
  if (n > kMaxHeaderSize) {
    return FileError(path, absl::StrCat("header length ", n, " exceeds the 100000000-byte limit; "
                                        "not a safetensors file or corrupt; ", kFixHint));
  }
  if (n > file_size - 8) {
    return FileError(path, absl::StrCat("header length ", n, " is larger than the file (",
                                        file_size, " bytes); file truncated or not safetensors; ",
                                        kFixHint));
  }
  f->data_offset_ = 8 + n;
  const char* hb = reinterpret_cast<const char*>(f->map_ + 8);
  const char* he = hb + n;
  const char* p = hb;
  while (p < he && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  if (p == he || *p != '{') {
    return FileError(path, absl::StrCat("header does not start with '{'; not a safetensors file "
                                        "or corrupt; ", kFixHint));
  }
  ASSIGN_OR_RETURN(json header, ParseHeader(path, hb, he));
  if (!header.is_object()) {
    return FileError(path, absl::StrCat("header must be a JSON object, got ",
                                        JsonTypeName(header)));
  }

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object()) {
        return FileError(path, absl::StrCat("__metadata__ must be a string->string map, got ",
                                            JsonTypeName(*it)));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return FileError(path, absl::StrCat("__metadata__ key '", m.key(), "' must be a string, "
                                              "got ", JsonTypeName(*m)));
        }
        f->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TensorInfo t;
    t.name = it.key();
    RETURN_IF_ERROR(ParseTensorInfo(path, *it, &t));
    f->tensors_.push_back(std::move(t));
  }

  // Contiguity: sorted by offsets, tensors must tile [0, data size) exactly.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : f->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin != pos) {
      const std::string after =
          prev ? absl::StrCat("the previous tensor '", prev->name, "' ends at ", pos)
               : std::string("the data section starts at 0");
      return TensorError(path, t->name,
                         absl::StrCat("begins at data offset ", t->begin, " but ", after, " (",
                                      t->begin > pos ? "hole" : "overlap",
                                      "); tensors must be packed contiguously; ", kFixHint));
    }
    pos = t->end;
    prev = t;
  }
  const uint64_t data_size = file_size - f->data_offset_;
  if (pos != data_size) {
    return FileError(path, absl::StrCat("tensors cover ", pos, " data bytes but the file has ",
                                        data_size, " (",
                                        pos > data_size ? "file truncated" : "trailing bytes",
                                        "); ", kFixHint));
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t* SafetensorsFile::Data(const TensorInfo& t) const {
  return map_ + data_offset_ + t.begin;
}

absl::Status SafetensorsFile::ReadAsFloat(const TensorInfo& t, float* dst) const {
  if (t.dtype != Dtype::kF32 && t.dtype != Dtype::kBF16 && t.dtype != Dtype::kF16 &&
      t.dtype != Dtype::kF64) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", t.name, "' has dtype ", t.dtype_name,
                     "; only F32, F16, BF16 and F64 can be read as float"));
  }
  const int64_t n = t.numel();
  const int64_t esize = DtypeSize(t.dtype);
  if (t.end < t.begin || t.end > map_size_ - data_offset_ ||
      static_cast<uint64_t>(n) * static_cast<uint64_t>(esize) != t.end - t.begin) {
    return TensorError(path_, t.name, "TensorInfo does not describe a tensor of this file");
  }
  const uint8_t* src = Data(t);
  switch (t.dtype) {
    case Dtype::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return absl::OkStatus();
    case Dtype::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
      }
      return absl::OkStatus();
    case Dtype::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return absl::OkStatus();
    case Dtype::kF64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return absl::OkStatus();
    default:
      return absl::OkStatus();  // unreachable: checked above
  }
}

namespace safetensors_internal {

// Byte size of a tensor to write, after validating its name, shape, dtype and data. Also used by
// WriteCheckpointWeights (safetensors_dir.cc) to validate everything before writing any shard.
absl::StatusOr<uint64_t> WriteByteSize(const std::string& path, const TensorToWrite& t) {
  if (t.dtype != Dtype::kF32 && t.dtype != Dtype::kBF16) {
    return TensorError(path, t.name, absl::StrCat("cannot write dtype ", DtypeName(t.dtype),
                                                  "; only F32 and BF16 are supported"));
  }
  if (t.name == "__metadata__") {
    return TensorError(path, t.name, "the name is reserved for file metadata");
  }
  uint64_t n = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return TensorError(path, t.name, absl::StrCat("negative dimension ", d));
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n) ||
        n > static_cast<uint64_t>(INT64_MAX) / 4) {
      return TensorError(path, t.name, "shape overflows 64 bits");
    }
  }
  if (n > 0 && t.data == nullptr) return TensorError(path, t.name, "data is null");
  return n * static_cast<uint64_t>(DtypeSize(t.dtype));
}

}  // namespace safetensors_internal

namespace {

using safetensors_internal::WriteByteSize;

// Writes all of [data, data + size) or returns an error naming `path`.
absl::Status WriteAll(std::FILE* f, const std::string& path, const void* data, size_t size) {
  if (size > 0 && std::fwrite(data, 1, size, f) != size) {
    return absl::DataLossError(absl::StrCat(path, ": write failed: ", ErrnoText(),
                                            " (disk full?)"));
  }
  return absl::OkStatus();
}

absl::Status WriteBody(std::FILE* f, const std::string& tmp, const std::string& header,
                       const std::vector<const TensorToWrite*>& order) {
  const uint64_t n = header.size();
  uint8_t len[8];
  std::memcpy(len, &n, 8);
  RETURN_IF_ERROR(WriteAll(f, tmp, len, 8));
  RETURN_IF_ERROR(WriteAll(f, tmp, header.data(), header.size()));
  std::vector<uint16_t> buf;
  for (const TensorToWrite* t : order) {
    int64_t numel = 1;
    for (int64_t d : t->shape) numel *= d;
    if (t->dtype == Dtype::kF32) {
      RETURN_IF_ERROR(WriteAll(f, tmp, t->data, static_cast<size_t>(numel) * 4));
      continue;
    }
    constexpr int64_t kChunk = 1 << 16;
    buf.resize(kChunk);
    for (int64_t i = 0; i < numel; i += kChunk) {
      const int64_t m = std::min(kChunk, numel - i);
      for (int64_t k = 0; k < m; ++k) buf[k] = FloatToBf16(t->data[i + k]);
      RETURN_IF_ERROR(WriteAll(f, tmp, buf.data(), static_cast<size_t>(m) * 2));
    }
  }
  if (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0) {
    return absl::DataLossError(absl::StrCat(tmp, ": flush failed: ", ErrnoText(), " (disk full?)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, absl::Span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });
  std::string header;
  try {
    json h = json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      const TensorToWrite& t = *order[i];
      if (i > 0 && order[i - 1]->name == t.name) {
        return TensorError(path, t.name, "given twice; tensor names must be unique");
      }
      ASSIGN_OR_RETURN(uint64_t bytes, WriteByteSize(path, t));
      h[t.name] = {{"dtype", DtypeName(t.dtype)},
                   {"shape", t.shape},
                   {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    header = h.dump();
  } catch (const json::exception& e) {
    return FileError(path, absl::StrCat("cannot build header (", e.what(),
                                        "); are tensor names and metadata valid UTF-8?"));
  }
  header.append((8 - header.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat(tmp, ": cannot open for writing: ", ErrnoText()));
  }
  absl::Status s = WriteBody(f, tmp, header, order);
  if (std::fclose(f) != 0 && s.ok()) {
    s = absl::DataLossError(absl::StrCat(tmp, ": close failed: ", ErrnoText(), " (disk full?)"));
  }
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    s = absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ErrnoText()));
  }
  if (!s.ok()) std::remove(tmp.c_str());
  return s;
}

}  // namespace grpo
