// Weight transfer pieces shared by the learner's sender (rollout/rollout_client.h) and the
// worker's receiver: CRC32C, the parameter-layout fingerprint, and WeightAssembler, which turns a
// stream of WeightChunk messages (proto/rollout.proto) into verified parameters or one error that
// names what was wrong. Plain logic: tests drive it without a server.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/params.h"
#include "proto/rollout.pb.h"

namespace grpo {

// CRC32C (Castagnoli, reflected 0x82F63B78, init and final xor ~0), as in iSCSI / ext4 / gRPC.
// Continue a running checksum by passing the previous value as `crc`. Uses SSE4.2 when compiled
// for it.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// 64-bit FNV-1a over every tensor's name, shape, offset and size and the total: equal for two
// models exactly when their flat parameter arrays mean the same thing.
uint64_t LayoutFingerprint(const ParamLayout& layout);

// Largest chunk a sender may use (bounded by gRPC's receive limit, raised by the server).
constexpr int64_t kMaxWeightChunkBytes = int64_t{64} << 20;

// Collects one update's chunks. Add() each chunk in stream order, then Finish(). Any error means
// the update is rejected and the caller keeps serving the old weights.
class WeightAssembler {
 public:
  // The served model: its parameter count and layout fingerprint, and the newest version the
  // server already has (serving or staged); an update must be newer.
  WeightAssembler(int64_t num_params, uint64_t layout_fingerprint, uint64_t newest_version);

  // dtype "f32" (num_params * 4 bytes) or "bf16" (num_params * 2, widened exactly at Finish).
  // Errors: INVALID_ARGUMENT (wrong dtype, size, layout, header fields that change mid-stream,
  // a gap or overlap, a chunk over kMaxWeightChunkBytes), FAILED_PRECONDITION (version not newer),
  // DATA_LOSS (chunk checksum).
  absl::Status Add(const rollout::WeightChunk& chunk);
  // Receive into `buffer` (e.g. Engine::TakeSpareParams: an earlier update's parameters): its
  // pages are mapped already, so a large update does not take a page fault per 4 KiB again
  // (measured: most of a fresh buffer's cost on the CPU). Its contents are overwritten; any size
  // works. Call before the first Add.
  void Reuse(std::vector<float> buffer) { params_ = std::move(buffer); }
  // Errors: ABORTED (no chunks, or fewer bytes than total_bytes), DATA_LOSS (payload checksum).
  // On success returns the parameters (num_params floats) and sets *version.
  absl::StatusOr<std::vector<float>> Finish(uint64_t* version);

  int64_t bytes_received() const { return received_; }

 private:
  const int64_t num_params_;
  const uint64_t fingerprint_;
  const uint64_t newest_version_;
  bool started_ = false;
  rollout::WeightChunk header_;  // first chunk's header fields (data cleared)
  int64_t received_ = 0;
  uint32_t running_crc_ = 0;
  std::vector<float> params_;
  std::vector<uint16_t> bf16_;  // a bf16 stream's payload until Finish widens it
};

}  // namespace grpo
