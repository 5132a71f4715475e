// safetensors files (https://github.com/huggingface/safetensors): a memory-mapped, fully
// validated reader and a writer, plus Hugging Face checkpoint directories that are either one
// `model.safetensors` or shards listed in `model.safetensors.index.json`.
// Not here: which tensors a model needs (model/checkpoint.h) or how they are laid out in memory.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace grpo {

enum class Dtype { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool, kOther };

// "F32", "BF16", ...; kOther prints "OTHER".
const char* DtypeName(Dtype d);
int64_t DtypeSize(Dtype d);  // bytes per element; 0 for kOther

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::string dtype_name;      // as written in the header (kept for kOther)
  std::vector<int64_t> shape;  // [] is a scalar
  uint64_t begin = 0;          // byte offsets relative to the data section, end exclusive
  uint64_t end = 0;
  int64_t numel() const;
};

// One .safetensors file, memory-mapped read-only. Open() validates the whole header against the
// format's rules: 8-byte length, header size <= 100 MB, JSON object, known dtype strings,
// shapes of non-negative ints, byte size == numel * dtype size, offsets contiguous from 0 with no
// holes or overlaps, last end == data section length (no truncation, no trailing bytes), no
// duplicate names, `__metadata__` a string->string map. Errors name the file and the tensor.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In header order sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(const std::string& name) const;  // null if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Raw little-endian bytes of a tensor (may be unaligned).
  const uint8_t* Data(const TensorInfo& t) const;
  // Converts F32 / F16 / BF16 / F64 into float (dst holds numel() floats). Other dtypes: error
  // naming the file, the tensor and its dtype.
  absl::Status ReadAsFloat(const TensorInfo& t, float* dst) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  uint64_t data_offset_ = 0;  // 8 + header length
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: fp32 source data converted to `dtype` (kF32 or kBF16, round-to-nearest-even).
struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // numel floats
  Dtype dtype = Dtype::kF32;
};

// Writes one file the reference way: header padded with spaces to a multiple of 8, tensors
// sorted by name, `__metadata__` = metadata (HF writers use {"format":"pt"}). Written to a
// temporary file and renamed, so a failure never leaves a half-written checkpoint.
absl::Status WriteSafetensors(const std::string& path, absl::Span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata = {
                                  {"format", "pt"}});

// A Hugging Face checkpoint directory: `model.safetensors`, or `model.safetensors.index.json`
// with its shards. Open() checks that every weight_map entry names a shard that exists and that
// holds that tensor, and that no shard holds a tensor the index does not list (or a tensor
// twice across shards).
class CheckpointDir {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointDir>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Every tensor name in the checkpoint, sorted.
  std::vector<std::string> TensorNames() const;
  // The file holding `name` and its info; null file if absent.
  struct Entry {
    const SafetensorsFile* file = nullptr;
    const TensorInfo* info = nullptr;
  };
  Entry Find(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
};

// Writes a checkpoint directory's weights: one `model.safetensors` if the total is at most
// max_shard_bytes, else shards `model-0000i-of-0000n.safetensors` (greedy in name order, a
// tensor larger than the limit alone in its shard) plus `model.safetensors.index.json`
// ({"metadata":{"total_size":...},"weight_map":{...}}, sorted keys, indent 2). Removes stale
// model*.safetensors files and index from an earlier save in the same directory only after the
// new files are complete.
absl::Status WriteCheckpointWeights(const std::string& dir,
                                    absl::Span<const TensorToWrite> tensors,
                                    int64_t max_shard_bytes = int64_t{5} << 30);

}  // namespace grpo
