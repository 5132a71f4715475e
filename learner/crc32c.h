// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord / tfevents files use it, plus
// TensorFlow's "masked" form. Used for event-file records and checkpoint state checksums.
#pragma once

#include <cstdint>
#include <string_view>

namespace grpo {

// CRC-32C of `data`, continuing from `crc` (0 for a fresh checksum). Crc32c("123456789") ==
// 0xE3069283.
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
inline uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace grpo
