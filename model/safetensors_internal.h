// Private to model/safetensors*.cc: error helpers and the writer's per-tensor validation.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "model/safetensors.h"

namespace grpo::safetensors_internal {

inline constexpr const char* kFixHint = "re-download or re-save the checkpoint";

inline absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

inline absl::Status TensorError(const std::string& path, const std::string& name,
                                const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", what));
}

inline std::string ErrnoText() { return std::strerror(errno); }

// Validates a tensor to write (name, shape, data, dtype) and returns its byte size.
absl::StatusOr<uint64_t> WriteByteSize(const std::string& path, const TensorToWrite& t);

}  // namespace grpo::safetensors_internal
