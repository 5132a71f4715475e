// Bucketed, verified weight broadcast over a Communicator (rollout/weight_sync.h).
#include "rollout/weight_sync.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "rollout/weights.h"

#ifdef GRPO_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace grpo {
namespace {

absl::Duration Timeout(const WeightManifest& m) { return absl::Seconds(m.timeout_s); }

// Moves bytes through a communicator whatever memory it wants: host communicators get the
// caller's buffer as is; device communicators get a device staging buffer (one per direction of
// use, grown to the largest bucket) and a copy on each side.
class Staging {
 public:
  explicit Staging(comm::Communicator* comm) : comm_(comm) {}

  // Root: broadcasts `bytes` bytes at host `src`.
  absl::Status Send(const void* src, int64_t bytes) {
    if (comm_->memory() == comm::MemorySpace::kHost) {
      return comm_->Broadcast(const_cast<void*>(src), bytes, comm_->rank(), timeout_);
    }
#ifdef GRPO_HAVE_CUDA
    RETURN_IF_ERROR(device_.Reserve(static_cast<size_t>(std::max<int64_t>(bytes, 1))));
    RETURN_IF_ERROR(device_.CopyFromHost(src, static_cast<size_t>(bytes)));
    return comm_->Broadcast(device_.data(), bytes, comm_->rank(), timeout_);
#else
    return absl::FailedPreconditionError("a device communicator in a build without CUDA");
#endif
  }
  // Receiver: fills host `dst` with `bytes` bytes from `root`.
  absl::Status Receive(void* dst, int64_t bytes, int root) {
    if (comm_->memory() == comm::MemorySpace::kHost) {
      return comm_->Broadcast(dst, bytes, root, timeout_);
    }
#ifdef GRPO_HAVE_CUDA
    RETURN_IF_ERROR(device_.Reserve(static_cast<size_t>(std::max<int64_t>(bytes, 1))));
    RETURN_IF_ERROR(comm_->Broadcast(device_.data(), bytes, root, timeout_));
    return device_.CopyToHost(dst, static_cast<size_t>(bytes));
#else
    return absl::FailedPreconditionError("a device communicator in a build without CUDA");
#endif
  }
  void set_timeout(absl::Duration t) { timeout_ = t; }

 private:
  comm::Communicator* comm_;
  absl::Duration timeout_ = absl::Seconds(60);
#ifdef GRPO_HAVE_CUDA
  cuda::DeviceBuffer device_;
#endif
};

}  // namespace

const char* WeightDtypeName(WeightDtype dtype) {
  return dtype == WeightDtype::kF32 ? "f32" : "bf16";
}

absl::StatusOr<WeightDtype> ParseWeightDtype(const std::string& name) {
  if (name == "f32") return WeightDtype::kF32;
  if (name == "bf16") return WeightDtype::kBf16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", name, "\" is not supported (f32 or bf16)"));
}

uint16_t FloatToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then truncate. A NaN
  // keeps its sign and gets a quiet payload bit instead (rounding could carry it into infinity).
  // Branch-free so that the array loops below vectorize.
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t nan = (bits >> 16) | 0x0040u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

float Bf16ToFloat(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void FloatsToBf16(const float* in, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToBf16(in[i]);
}

void Bf16ToFloats(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToFloat(in[i]);
}

int64_t WeightManifest::total_bytes() const {
  int64_t t = 0;
  for (const WeightBucketInfo& b : buckets) t += b.bytes;
  return t;
}

void ManifestToProto(const WeightManifest& m, rollout::WeightManifest* out) {
  out->Clear();
  out->set_version(m.version);
  out->set_dtype(WeightDtypeName(m.dtype));
  out->set_num_params(static_cast<uint64_t>(m.num_params));
  out->set_layout_fingerprint(m.layout_fingerprint);
  out->set_timeout_s(m.timeout_s);
  for (const WeightBucketInfo& b : m.buckets) {
    rollout::WeightBucket* pb = out->add_buckets();
    pb->set_offset(static_cast<uint64_t>(b.offset));
    pb->set_num_params(static_cast<uint64_t>(b.num_params));
    pb->set_bytes(static_cast<uint64_t>(b.bytes));
    pb->set_crc32c(b.crc32c);
  }
}

absl::StatusOr<WeightManifest> ManifestFromProto(const rollout::WeightManifest& p) {
  WeightManifest m;
  m.version = p.version();
  {
    auto d = ParseWeightDtype(p.dtype());
    if (!d.ok()) return WithContext(d.status(), "weight manifest");
    m.dtype = *d;
  }
  // Bounded so that offsets and byte counts below cannot overflow int64.
  if (p.num_params() == 0 || p.num_params() > (uint64_t{1} << 40)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight manifest: num_params ", p.num_params(), " is not in [1, 2^40]"));
  }
  m.num_params = static_cast<int64_t>(p.num_params());
  m.layout_fingerprint = p.layout_fingerprint();
  if (!(p.timeout_s() > 0) || !std::isfinite(p.timeout_s())) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight manifest: timeout_s ", p.timeout_s(), " must be > 0"));
  }
  m.timeout_s = p.timeout_s();
  const int64_t elem = WeightDtypeBytes(m.dtype);
  uint64_t next = 0;
  for (int i = 0; i < p.buckets_size(); ++i) {
    const rollout::WeightBucket& b = p.buckets(i);
    const std::string where = absl::StrCat("weight manifest: buckets[", i, "]");
    if (b.offset() != next) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": offset ", b.offset(), ", expected ",
                                                     next,
                                                     " (buckets must be contiguous and in order)"));
    }
    if (b.num_params() == 0 || b.num_params() > p.num_params() - next) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": num_params ", b.num_params(),
                                                     " is 0 or runs past num_params ",
                                                     p.num_params()));
    }
    if (b.bytes() != b.num_params() * static_cast<uint64_t>(elem) ||
        b.bytes() > static_cast<uint64_t>(kMaxWeightBucketBytes)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": bytes ", b.bytes(),
                                                     " must be num_params * ", elem,
                                                     " and at most ", kMaxWeightBucketBytes));
    }
    m.buckets.push_back({static_cast<int64_t>(b.offset()), static_cast<int64_t>(b.num_params()),
                         static_cast<int64_t>(b.bytes()), b.crc32c()});
    next += b.num_params();
  }
  if (next != p.num_params()) {
    return absl::InvalidArgumentError(absl::StrCat("weight manifest: the buckets cover ", next,
                                                   " of num_params ", p.num_params()));
  }
  return m;
}

std::vector<WeightBucketInfo> PlanBuckets(int64_t num_params, WeightDtype dtype,
                                          int64_t bucket_bytes) {
  const int64_t elem = WeightDtypeBytes(dtype);
  const int64_t per = std::max<int64_t>(1, std::min(bucket_bytes, kMaxWeightBucketBytes) / elem);
  std::vector<WeightBucketInfo> out;
  for (int64_t off = 0; off < num_params; off += per) {
    WeightBucketInfo b;
    b.offset = off;
    b.num_params = std::min(per, num_params - off);
    b.bytes = b.num_params * elem;
    out.push_back(b);
  }
  return out;
}

PackedWeights PackedWeights::Pack(absl::Span<const float> params, uint64_t layout_fingerprint,
                                  uint64_t version, WeightDtype dtype, int64_t bucket_bytes,
                                  double timeout_s) {
  PackedWeights p;
  WeightManifest& m = p.manifest_;
  m.version = version;
  m.dtype = dtype;
  m.num_params = static_cast<int64_t>(params.size());
  m.layout_fingerprint = layout_fingerprint;
  m.timeout_s = timeout_s;
  m.buckets = PlanBuckets(m.num_params, dtype, bucket_bytes);
  if (dtype == WeightDtype::kF32) {
    p.data_ = reinterpret_cast<const uint8_t*>(params.data());
  } else {
    p.bf16_.resize(params.size());
    FloatsToBf16(params.data(), m.num_params, p.bf16_.data());
    p.data_ = reinterpret_cast<const uint8_t*>(p.bf16_.data());
  }
  for (WeightBucketInfo& b : m.buckets) {
    b.crc32c = Crc32c(p.data_ + b.offset * WeightDtypeBytes(dtype), static_cast<size_t>(b.bytes));
  }
  return p;
}

const uint8_t* PackedWeights::bucket_data(size_t b) const {
  return data_ + manifest_.buckets[b].offset * WeightDtypeBytes(manifest_.dtype);
}

absl::Status BroadcastWeights(comm::Communicator* comm, const PackedWeights& weights) {
  const WeightManifest& m = weights.manifest();
  Staging staging(comm);
  staging.set_timeout(Timeout(m));
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    BucketHeader h;
    h.version = m.version;
    h.index = static_cast<uint32_t>(b);
    h.crc32c = m.buckets[b].crc32c;
    h.bytes = static_cast<uint64_t>(m.buckets[b].bytes);
    RETURN_IF_ERROR(WithContext(staging.Send(&h, sizeof(h)),
                                absl::StrCat("weight broadcast v", m.version, " bucket ", b)));
    RETURN_IF_ERROR(WithContext(staging.Send(weights.bucket_data(b), m.buckets[b].bytes),
                                absl::StrCat("weight broadcast v", m.version, " bucket ", b)));
  }
  return absl::OkStatus();
}

absl::Status CheckManifestForModel(const WeightManifest& m, const WeightTarget& target) {
  if (m.num_params != target.num_params) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight update v", m.version, ": num_params ", m.num_params, " but the served model has ",
        target.num_params, "; the learner and this worker must load the same config.json"));
  }
  if (m.layout_fingerprint != target.layout_fingerprint) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight update v", m.version, ": layout_fingerprint ", m.layout_fingerprint,
        " differs from the served model's ", target.layout_fingerprint,
        " (same size, different tensors); the learner and this worker must load the same "
        "config.json"));
  }
  if (m.version <= target.newest_version) {
    return absl::FailedPreconditionError(absl::StrCat("weight update: version ", m.version,
                                                      " is not newer than this worker's version ",
                                                      target.newest_version));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> ReceiveWeights(comm::Communicator* comm, int root,
                                                  const WeightManifest& m,
                                                  const WeightTarget& target, ReceiveStats* stats,
                                                  std::vector<float> reuse) {
  const auto t0 = std::chrono::steady_clock::now();
  // The first reason to refuse the update; receiving goes on regardless so that every rank
  // makes the same sequence of collectives.
  absl::Status refused = CheckManifestForModel(m, target);
  // The engine takes ownership of the buffer. A reused one (the engine's spare) has its pages
  // mapped already; a fresh one pays a fault per 4 KiB (transparent huge pages would cut those,
  // but measured here their compaction stalls cost more: 3.7 s once for 1 GiB).
  std::vector<float> params = std::move(reuse);
  if (refused.ok()) params.resize(static_cast<size_t>(m.num_params));
  std::vector<uint8_t> scratch;  // bf16 payloads, and any payload of a refused update
  Staging staging(comm);
  staging.set_timeout(Timeout(m));
  const int64_t elem = WeightDtypeBytes(m.dtype);
  int64_t received = 0;
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    const WeightBucketInfo& info = m.buckets[b];
    const std::string where = absl::StrCat("weight update v", m.version, " bucket ", b);
    BucketHeader h;
    RETURN_IF_ERROR(WithContext(staging.Receive(&h, sizeof(h), root), where));
    if (refused.ok()) {
      if (h.magic != BucketHeader::kMagic) {
        refused = absl::InvalidArgumentError(absl::StrCat(where, ": not a bucket header"));
      } else if (h.version != m.version) {
        refused = absl::InvalidArgumentError(absl::StrCat(where, ": the bucket belongs to version ",
                                                          h.version, ", not to this update"));
      } else if (h.index != b) {
        refused = absl::InvalidArgumentError(absl::StrCat(
            where, ": bucket ", h.index, " arrived in position ", b, " (out of order)"));
      } else if (h.bytes != static_cast<uint64_t>(info.bytes) || h.crc32c != info.crc32c) {
        refused = absl::InvalidArgumentError(absl::StrCat(
            where, ": header (", h.bytes, " bytes, crc32c ", h.crc32c,
            ") differs from the manifest (", info.bytes, " bytes, crc32c ", info.crc32c, ")"));
      }
    }
    // fp32 lands in place; bf16 (and anything refused) goes through the scratch buffer.
    uint8_t* dst;
    const bool in_place = refused.ok() && m.dtype == WeightDtype::kF32;
    if (in_place) {
      dst = reinterpret_cast<uint8_t*>(params.data() + info.offset);
    } else {
      if (scratch.size() < static_cast<size_t>(info.bytes)) scratch.resize(info.bytes);
      dst = scratch.data();
    }
    RETURN_IF_ERROR(WithContext(staging.Receive(dst, info.bytes, root), where));
    received += info.bytes;
    if (!refused.ok()) continue;
    const uint32_t crc = Crc32c(dst, static_cast<size_t>(info.bytes));
    if (crc != info.crc32c) {
      refused = absl::DataLossError(absl::StrCat(where, ": crc32c mismatch (got ", crc,
                                                 ", manifest says ", info.crc32c, ")"));
      continue;
    }
    if (!in_place) {
      GRPO_CHECK(m.dtype == WeightDtype::kBf16 && info.bytes == info.num_params * elem);
      Bf16ToFloats(reinterpret_cast<const uint16_t*>(dst), info.num_params,
                   params.data() + info.offset);
    }
  }
  if (stats != nullptr) {
    stats->bytes = received;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (!refused.ok()) return refused;
  return params;
}

}  // namespace grpo
