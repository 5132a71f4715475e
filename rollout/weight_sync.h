// Collective weight sync, both ends: the learner packs its flat fp32 parameters into buckets
// (fp32, or bf16 rounded to nearest even), describes them in a manifest (version, layout
// fingerprint, dtype, bucket sizes, per-bucket CRC32C) sent over the control plane, and
// broadcasts the buckets over a comm::Communicator (LocalGroup in one process, NCCL between GPU
// processes). Each receiver checks the manifest against its model, takes part in every
// broadcast, verifies each bucket, and hands back parameters only when all of them verified; the
// caller then stages them (Engine::StageWeights), so a failed update never touches the serving
// weights. Transport-agnostic plain logic: tests drive both ends over a LocalGroup.
//
// Not here: who is in the group and when updates happen (learner/weight_sync.h), the gRPC
// control plane (RolloutService JoinWeightGroup / BeginWeightUpdate / EndWeightUpdate), and the
// point-to-point gRPC stream for CPU workers (rollout/weights.h WeightAssembler).
//
// Wire format of one update, in this order, every broadcast rooted at the learner's rank:
//   for each bucket b = 0 .. num_buckets-1:
//     Broadcast(BucketHeader, 32 bytes)   magic, manifest version, b, bucket bytes, CRC32C
//     Broadcast(payload, bucket bytes)    little-endian f32 or bf16 values of the bucket
// The header lets a receiver refuse a bucket that belongs to another update or another position
// (out of order) even when its bytes happen to checksum.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "proto/rollout.pb.h"

namespace grpo {

enum class WeightDtype { kF32, kBf16 };

// "f32" / "bf16", the manifest's spelling.
const char* WeightDtypeName(WeightDtype dtype);
absl::StatusOr<WeightDtype> ParseWeightDtype(const std::string& name);
inline int64_t WeightDtypeBytes(WeightDtype dtype) { return dtype == WeightDtype::kF32 ? 4 : 2; }

// fp32 -> bf16 with round-to-nearest-even (a NaN stays a quiet NaN of the same sign; values past
// the largest bf16 round to infinity, as IEEE rounding does), and the exact widening back.
uint16_t FloatToBf16(float x);
float Bf16ToFloat(uint16_t x);
void FloatsToBf16(const float* in, int64_t n, uint16_t* out);
void Bf16ToFloats(const uint16_t* in, int64_t n, float* out);

// Largest bucket a receiver accepts (it allocates a bucket-sized buffer).
constexpr int64_t kMaxWeightBucketBytes = int64_t{1} << 30;

struct WeightBucketInfo {
  int64_t offset = 0;      // first parameter (index into the flat array)
  int64_t num_params = 0;  // parameters in the bucket
  int64_t bytes = 0;       // num_params * dtype bytes
  uint32_t crc32c = 0;     // of the bytes as sent
};

struct WeightManifest {
  uint64_t version = 0;
  WeightDtype dtype = WeightDtype::kF32;
  int64_t num_params = 0;
  uint64_t layout_fingerprint = 0;
  std::vector<WeightBucketInfo> buckets;
  double timeout_s = 60;  // deadline of each broadcast

  int64_t total_bytes() const;
};

void ManifestToProto(const WeightManifest& m, rollout::WeightManifest* out);
// Structural checks only (INVALID_ARGUMENT naming the field): a known dtype, buckets contiguous
// and in order covering [0, num_params), bytes == num_params * dtype bytes, each in
// [1, kMaxWeightBucketBytes], timeout_s > 0. Whether the update fits a model is
// CheckManifestForModel's business.
absl::StatusOr<WeightManifest> ManifestFromProto(const rollout::WeightManifest& m);

// Buckets of at most bucket_bytes (rounded down to whole values, at least one value), covering
// [0, num_params) in order; the last one holds the remainder. CRCs are left 0 (PackWeights fills
// them).
std::vector<WeightBucketInfo> PlanBuckets(int64_t num_params, WeightDtype dtype,
                                          int64_t bucket_bytes);

// The learner's side: one update, packed and checksummed, ready to broadcast.
class PackedWeights {
 public:
  // Converts (bf16) or refers to (f32: no copy; `params` must outlive this object) the
  // parameters and checksums every bucket. bucket_bytes >= 1.
  static PackedWeights Pack(absl::Span<const float> params, uint64_t layout_fingerprint,
                            uint64_t version, WeightDtype dtype, int64_t bucket_bytes,
                            double timeout_s);
  const WeightManifest& manifest() const { return manifest_; }
  // The bytes of bucket b as sent.
  const uint8_t* bucket_data(size_t b) const;

 private:
  WeightManifest manifest_;
  const uint8_t* data_ = nullptr;  // all buckets back to back
  std::vector<uint16_t> bf16_;     // owns data_ for bf16
};

// Root side: broadcasts every bucket (header, then payload) as the wire format says. Every rank
// of `comm` must be in ReceiveWeights for the same manifest at the same time. Device
// communicators get each bucket staged through a device buffer (CUDA builds). Errors are the
// communicator's (DEADLINE_EXCEEDED: a receiver is dead; the group is aborted).
absl::Status BroadcastWeights(comm::Communicator* comm, const PackedWeights& weights);

// What the receiving model is: an update must match it.
struct WeightTarget {
  int64_t num_params = 0;
  uint64_t layout_fingerprint = 0;
  uint64_t newest_version = 0;  // serving or staged; an update must be newer
};

// INVALID_ARGUMENT (num_params or layout differ: name both values and say the learner and worker
// must load the same config.json), FAILED_PRECONDITION (version not newer).
absl::Status CheckManifestForModel(const WeightManifest& m, const WeightTarget& target);

struct ReceiveStats {
  int64_t bytes = 0;   // payload bytes received (all buckets, also when refused)
  double seconds = 0;  // first header to last payload
};

// Receiver side: takes part in every broadcast of `manifest` (rooted at `root`) and returns the
// parameters (num_params fp32 values; bf16 widened) when every bucket verified. A refused update
// (CheckManifestForModel, a bucket with a wrong header or checksum) still receives every bucket,
// so the root and the other receivers are not left waiting, and then returns the first error:
//   FAILED_PRECONDITION  stale version;  INVALID_ARGUMENT  wrong layout or size, a bucket header
//   of another version, index (out of order) or size;  DATA_LOSS  a bucket's CRC32C;
//   the communicator's errors (DEADLINE_EXCEEDED, ABORTED): the update is lost, the group too.
// The manifest must have passed ManifestFromProto's checks.
// `reuse`: a buffer to receive into (WeightAssembler::Reuse explains why; contents overwritten).
absl::StatusOr<std::vector<float>> ReceiveWeights(comm::Communicator* comm, int root,
                                                  const WeightManifest& manifest,
                                                  const WeightTarget& target,
                                                  ReceiveStats* stats = nullptr,
                                                  std::vector<float> reuse = {});

// The 32-byte header broadcast before each bucket's payload (little-endian, as laid out).
struct BucketHeader {
  static constexpr uint64_t kMagic = 0x31434e5953544757ull;  // "WGTSYNC1"
  uint64_t magic = kMagic;
  uint64_t version = 0;
  uint32_t index = 0;
  uint32_t crc32c = 0;
  uint64_t bytes = 0;
};
static_assert(sizeof(BucketHeader) == 32, "BucketHeader is a 32-byte wire struct");

}  // namespace grpo
