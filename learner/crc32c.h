// CRC-32C for the learner's files: a string_view front end to the rollout module's
// implementation (rollout/weights.h) plus TensorFlow's "masked" form used by TFRecord / tfevents.
#pragma once

#include <cstdint>
#include <string_view>

#include "rollout/weights.h"

namespace grpo {

// CRC-32C of `data`, continuing from `crc` (0 for a fresh checksum). Not an overload of
// Crc32c: a (const char*, uint32_t) call would bind to its (pointer, size) form.
// Crc32cOf("123456789") == 0xE3069283.
inline uint32_t Crc32cOf(std::string_view data, uint32_t crc = 0) {
  return Crc32c(data.data(), data.size(), crc);
}

// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
inline uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace grpo
