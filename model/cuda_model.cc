// CudaModel: Create, parameters, Forward / Backward / AdamW on the GPU (decode: cuda_decode.cc),
// and the --device choice. Mirrors model.cc / model_ffn.cc step by step; see cuda_model.h.
#include "model/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/status.h"

#ifdef GRPO_HAVE_CUDA
#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "model/cuda_model_internal.h"
#endif

namespace grpo {

const char* DeviceName(Device d) { return d == Device::kCuda ? "cuda" : "cpu"; }

absl::Status CudaModel::CheckWeightBuffers(const ParamLayout& layout, const WeightBuffers& src) {
  // The fp32 buffer holds every parameter with master weights, else the norms and biases.
  size_t f32_values = 0;
  for (const ParamTensor& t : layout.tensors) {
    if (t.is_norm || t.is_bias) f32_values += static_cast<size_t>(t.numel);
  }
  if (src.master) f32_values = static_cast<size_t>(layout.total);
  const size_t want_bf16 = 2 * static_cast<size_t>(layout.total);
  const size_t want_f32 = sizeof(float) * std::max<size_t>(f32_values, 1);
  if (src.bf16 == nullptr || src.f32 == nullptr || src.bf16_bytes != want_bf16 ||
      src.f32_bytes != want_f32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device weights of ", src.bf16_bytes, " bf16 + ", src.f32_bytes, " fp32 bytes (",
        src.master ? "with" : "without", " master weights); this model needs ", want_bf16, " + ",
        want_f32, " (another model config?)"));
  }
  return absl::OkStatus();
}

#ifdef GRPO_HAVE_CUDA

bool CudaAvailable() { return cuda::DeviceCount() > 0; }
int CudaDeviceCount() { return cuda::DeviceCount(); }

absl::StatusOr<Device> ResolveDevice(const std::string& flag) {
  if (flag == "cpu") return Device::kCpu;
  if (flag == "auto") return CudaAvailable() ? Device::kCuda : Device::kCpu;
  if (flag == "cuda") {
    if (!CudaAvailable()) {
      return absl::UnavailableError(absl::StrCat("--device cuda: ", cuda::DeviceDescription(0),
                                                 "; use --device cpu or auto"));
    }
    return Device::kCuda;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device: '", flag, "' is not one of auto, cpu, cuda"));
}

namespace {

using cuda::GemmBf16;

struct Dims {
  int64_t H, nh, nkv, hd, qd, kvd, qkvd, E, K, Im, I, V;
  explicit Dims(const ModelConfig& c)
      : H(c.hidden_size),
        nh(c.num_attention_heads),
        nkv(c.num_key_value_heads),
        hd(c.head_dim),
        qd(nh * hd),
        kvd(nkv * hd),
        qkvd(qd + 2 * kvd),
        E(c.num_experts),
        K(c.num_experts_per_tok),
        Im(c.moe_intermediate_size),
        I(c.intermediate_size),
        V(c.vocab_size) {}
};

// Logits rows per chunk of the vocabulary head: at most 256 MiB of fp32 logits at a time.
int64_t HeadChunk(int64_t T, int64_t V) {
  return std::max<int64_t>(1, std::min<int64_t>(T, (int64_t{256} << 20) / (4 * V)));
}

}  // namespace

absl::Status CudaModel::Impl::EnsureGrads() {
  if (grads.size() != 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(grads, DeviceBuffer::Allocate(sizeof(float) * layout.total));
  TIMED("Memset", cuda::Memset(grads.data(), 0, grads.size()));
  return absl::OkStatus();
}

absl::Status CudaModel::Impl::EnsureRope(int64_t max_pos) {
  if (max_pos <= rope_len) return absl::OkStatus();
  const int64_t n =
      std::max<int64_t>(max_pos, std::min<int64_t>(2 * rope_len, config.max_position_embeddings));
  const int64_t half = config.head_dim / 2;
  const std::vector<float> inv = config.RopeInvFreq();
  std::vector<float> c(n * half), s(n * half);
  cpu::RopeTable<float>(c.data(), s.data(), inv.data(), n, half);
  RETURN_IF_ERROR(cuda::Synchronize());  // the old tables may still be read
  ASSIGN_OR_RETURN(rope_cos, DeviceBuffer::Allocate(sizeof(float) * c.size()));
  ASSIGN_OR_RETURN(rope_sin, DeviceBuffer::Allocate(sizeof(float) * s.size()));
  RETURN_IF_ERROR(rope_cos.CopyFromHost(c.data(), sizeof(float) * c.size()));
  RETURN_IF_ERROR(rope_sin.CopyFromHost(s.data(), sizeof(float) * s.size()));
  rope_len = n;
  return absl::OkStatus();
}

void CudaModel::Impl::PlanLayer(DeviceArena& A, CudaLayerActs& a, int64_t T, bool training) {
  const Dims d(config);
  const bool any_moe = config.num_experts > 0;
  const bool any_dense = config.NumMoeLayers() < config.num_hidden_layers;
  const int64_t NK = T * d.K, R = ExpertRowsCapacity(NK, d.E, d.K);
  a.x_in = training ? A.Take<float>(T * d.H) : nullptr;
  a.ln1 = A.Take<bf16_bits>(T * d.H);
  a.rstd1 = A.Take<float>(T);
  a.qkv = A.Take<float>(T * d.qkvd);
  a.rstd_q = A.Take<float>(T * d.nh);
  a.rstd_k = A.Take<float>(T * d.nkv);
  a.q = A.Take<float>(T * d.qd);
  a.k = A.Take<bf16_bits>(T * d.kvd);
  a.v = A.Take<bf16_bits>(T * d.kvd);
  a.attn = A.Take<bf16_bits>(T * d.qd);
  a.lse = A.Take<float>(T * d.nh);
  a.x_mid = training ? A.Take<float>(T * d.H) : nullptr;
  a.ln2 = A.Take<bf16_bits>(T * d.H);
  a.rstd2 = A.Take<float>(T);
  a.gu = any_dense ? A.Take<float>(T * 2 * d.I) : nullptr;
  a.h = any_dense ? A.Take<bf16_bits>(T * d.I) : nullptr;
  if (any_moe) {
    a.router_logits = A.Take<float>(T * d.E);
    a.probs = A.Take<float>(T * d.E);
    a.idx = A.Take<int32_t>(NK);
    a.w = A.Take<float>(NK);
    a.expert_begin = A.Take<int64_t>(d.E + 1);
    a.slot_token = A.Take<int32_t>(R);
    a.slot_of = A.Take<int32_t>(NK);
    a.xe = A.Take<bf16_bits>(R * d.H);
    a.gu_e = A.Take<float>(R * 2 * d.Im);
    a.h_e = A.Take<bf16_bits>(R * d.Im);
    a.ye = A.Take<float>(R * d.H);
  }
}

void CudaModel::Impl::PlanHead(DeviceArena& A, int64_t T, bool training) {
  const Dims d(config);
  const int64_t NK = T * d.K, R = ExpertRowsCapacity(NK, d.E, d.K);
  chunk = HeadChunk(T, d.V);
  const StepInputs in(T);
  inputs = A.Take<char>(static_cast<int64_t>(in.bytes));
  tokens = in.Tokens(inputs);
  targets = in.Targets(inputs);
  pos = in.Pos(inputs);
  kv_row = in.KvRow(inputs);
  seqs_dev = in.Seqs(inputs);
  forced = A.Take<int32_t>(std::max<int64_t>(1, config.NumMoeLayers() * NK));
  counts = A.Take<int32_t>(std::max<int64_t>(1, d.E));
  x = A.Take<float>(T * d.H);
  lnf = A.Take<bf16_bits>(T * d.H);
  rstdf = A.Take<float>(T);
  lp = A.Take<float>(T);
  ent = A.Take<float>(T);
  lse = A.Take<float>(T);
  logits = A.Take<float>(chunk * d.V);
  prob_sum = A.Take<float>(std::max<int64_t>(1, d.E));
  aux_dprobs = A.Take<float>(std::max<int64_t>(1, d.E));
  dx16 = A.Take<bf16_bits>(T * d.H);  // also the gathered last rows in decode
  if (!training) return;
  const int64_t ffn_rows = std::max(R * d.Im, T * d.I);
  dlogits = A.Take<bf16_bits>(chunk * d.V);
  dx = A.Take<float>(T * d.H);
  dln = A.Take<float>(T * d.H);
  dq = A.Take<float>(T * d.qd);
  dk = A.Take<float>(T * d.kvd);
  dv = A.Take<float>(T * d.kvd);
  delta = A.Take<float>(T * d.nh);
  dqkv = A.Take<float>(T * d.qkvd);
  dattn_f = A.Take<float>(T * d.qd);
  dw = A.Take<float>(std::max<int64_t>(1, NK));
  dh = A.Take<float>(ffn_rows);
  dxe = A.Take<float>(std::max<int64_t>(1, R * d.H));
  drouter = A.Take<float>(std::max<int64_t>(1, T * d.E));
  dlp = A.Take<float>(T);
  dent = A.Take<float>(T);
  dattn16 = A.Take<bf16_bits>(T * d.qd);
  dqkv16 = A.Take<bf16_bits>(T * d.qkvd);
  dye16 = A.Take<bf16_bits>(std::max<int64_t>(1, R * d.H));
  dgu16 = A.Take<bf16_bits>(2 * ffn_rows);
  drouter16 = A.Take<bf16_bits>(std::max<int64_t>(1, T * d.E));
}

absl::Status CudaModel::Impl::Prepare(int64_t T, bool save) {
  for (int pass = 0;; ++pass) {
    scratch_arena.Begin();
    PlanHead(scratch_arena, T, save);
    PlanLayer(scratch_arena, scratch, T, false);
    if (scratch_arena.Fits()) break;
    GRPO_CHECK(pass == 0);
    RETURN_IF_ERROR(scratch_arena.Grow());
  }
  if (!save) return absl::OkStatus();
  layers.resize(config.num_hidden_layers);
  for (int pass = 0;; ++pass) {
    saved_arena.Begin();
    for (CudaLayerActs& a : layers) PlanLayer(saved_arena, a, T, true);
    if (saved_arena.Fits()) break;
    GRPO_CHECK(pass == 0);
    RETURN_IF_ERROR(saved_arena.Grow());
  }
  return absl::OkStatus();
}

bool CudaModel::Impl::DecodeSyncFree(int64_t T) const {
  if (T > kDeviceLoadTokens) return false;  // also bounds the graphs a model keeps
  if (config.num_experts == 0 || config.NumMoeLayers() == 0) return true;
  return !ForcePackedExperts();
}

absl::Status CudaModel::Impl::FfnForward(int64_t l, CudaLayerActs& a, int64_t T,
                                         const int32_t* forced_l, bool need_counts, bool decode) {
  const Dims d(config);
  const LayerOffsets& o = layout.layers[l];
  if (!o.moe) {
    TIMED("GemmBf16", GemmBf16(false, true, T, 2 * d.I, d.H, 1.f, a.ln2, d.H, P16() + o.mlp_gate_up,
                               d.H, 0.f, a.gu, 2 * d.I));
    TIMED("SwiGluForward", cuda::SwiGluForward(a.h, a.gu, T, d.I));
    TIMED("GemmBf16",
          GemmBf16(false, true, T, d.H, d.I, 1.f, a.h, d.I, P16() + o.mlp_down, d.I, 1.f, x, d.H));
    return absl::OkStatus();
  }
  const int64_t NK = T * d.K;
  TIMED("GemmBf16", GemmBf16(false, true, T, d.E, d.H, 1.f, a.ln2, d.H, P16() + o.router, d.H, 0.f,
                             a.router_logits, d.E));
  TIMED("RouterForward", cuda::RouterForward(a.probs, a.idx, a.w, a.router_logits, forced_l, T, d.E,
                                             d.K, config.norm_topk_prob));
  const bool force_packed = ForcePackedExperts();
  const int64_t* expert_begin = a.expert_begin;
  a.device_loads = false;
  if (decode && !need_counts && !force_packed && T > kSyncFreeTokens && T <= kDeviceLoadTokens) {
    // Packed rows whose ranges are computed on the device, and expert GEMMs that read them there:
    // no host sync. A token picks an expert at most once, so no expert has more than T rows.
    TIMED("MoeCount", cuda::MoeCount(counts, a.idx, NK, d.E));
    TIMED("ExpertBeginFromCounts", cuda::ExpertBeginFromCounts(a.expert_begin, counts, d.E));
    a.device_loads = true;
    a.padded = false;
    a.cap = 0;
    a.rows = NK;
    a.host_begin.clear();
  } else if (!need_counts && !force_packed && T <= kSyncFreeTokens) {
    // A token picks an expert at most once, so no expert has more than T <= 64 rows: the padded
    // layout at cap 64 (what the loads would give, since 1 <= max load <= 64) without reading
    // them back. Decode steps take this path: no host sync per MoE layer. It always fits:
    // ExpertRowsCapacity >= 64 E.
    a.cap = kSyncFreeTokens;
    a.padded = true;
    a.host_begin.assign(d.E + 1, 0);
    for (int64_t e = 0; e < d.E; ++e) a.host_begin[e + 1] = (e + 1) * a.cap;
    a.rows = d.E * a.cap;
    expert_begin = padded_begin.as<int64_t>();
  } else {
    // Expert sizes must be known on the host for the GEMM shapes: one small copy per MoE layer.
    TIMED("MoeCount", cuda::MoeCount(counts, a.idx, NK, d.E));
    std::vector<int32_t>& host_counts = a.host_counts;
    host_counts.resize(d.E);
    RETURN_IF_ERROR(cuda::CopyToHost(host_counts.data(), counts, sizeof(int32_t) * d.E));
    // Padded layout when it fits (one batched GEMM per projection; the capacity is rounded up so
    // that shapes repeat and cuBLAS reuses its choices), else packed.
    const int64_t max_count = *std::max_element(host_counts.begin(), host_counts.end());
    a.cap = (max_count + 63) / 64 * 64;
    a.padded = !force_packed && d.E * a.cap <= ExpertRowsCapacity(NK, d.E, d.K);
    a.host_begin.assign(d.E + 1, 0);
    for (int64_t e = 0; e < d.E; ++e) {
      a.host_begin[e + 1] = a.padded ? (e + 1) * a.cap : a.host_begin[e] + host_counts[e];
    }
    a.rows = a.padded ? d.E * a.cap : NK;
    RETURN_IF_ERROR(
        cuda::CopyToDevice(a.expert_begin, a.host_begin.data(), sizeof(int64_t) * (d.E + 1)));
  }
  if (a.padded) RETURN_IF_ERROR(cuda::Memset(a.slot_token, 0xff, sizeof(int32_t) * a.rows));
  TIMED("MoeAssign", cuda::MoeAssign(a.slot_token, a.slot_of, a.idx, expert_begin, NK, d.K, d.E));
  TIMED("GatherRows", cuda::GatherRows(a.xe, a.ln2, a.slot_token, a.rows, d.H));
  if (a.device_loads) {
    TIMED("GroupedLinearForwardDevice",
          cuda::GroupedLinearForwardDevice(a.gu_e, a.xe, P16() + o.experts_gate_up, expert_begin,
                                           d.E, T, d.H, 2 * d.Im));
  } else if (a.padded) {
    TIMED("BatchedLinearForward",
          cuda::BatchedLinearForward(a.gu_e, a.xe, P16() + o.experts_gate_up, d.E, a.cap, d.H,
                                     2 * d.Im));
  } else {
    TIMED("GroupedLinearForward",
          cuda::GroupedLinearForward(a.gu_e, a.xe, P16() + o.experts_gate_up, a.host_begin.data(),
                                     d.E, d.H, 2 * d.Im, 0.f));
  }
  TIMED("SwiGluForward", cuda::SwiGluForward(a.h_e, a.gu_e, a.rows, d.Im));
  if (a.device_loads) {
    TIMED("GroupedLinearForwardDevice",
          cuda::GroupedLinearForwardDevice(a.ye, a.h_e, P16() + o.experts_down, expert_begin, d.E,
                                           T, d.Im, d.H));
  } else if (a.padded) {
    TIMED("BatchedLinearForward",
          cuda::BatchedLinearForward(a.ye, a.h_e, P16() + o.experts_down, d.E, a.cap, d.Im, d.H));
  } else {
    TIMED("GroupedLinearForward",
          cuda::GroupedLinearForward(a.ye, a.h_e, P16() + o.experts_down, a.host_begin.data(), d.E,
                                     d.Im, d.H, 0.f));
  }
  TIMED("MoeCombine", cuda::MoeCombine(x, a.ye, a.w, a.slot_of, T, d.K, d.H));
  return absl::OkStatus();
}

absl::Status CudaModel::Impl::LayerForward(int64_t l, CudaLayerActs& a, int64_t T,
                                           const std::vector<cuda::AttnSeq>& seqs, bool decode,
                                           const int32_t* forced_l,
                                           std::vector<int32_t>* routing_out, int32_t* routing_dev,
                                           double* count_acc) {
  const Dims d(config);
  const LayerOffsets& o = layout.layers[l];
  const float eps = config.rms_norm_eps;
  if (a.x_in != nullptr)
    TIMED("CopyOnDevice", cuda::CopyOnDevice(a.x_in, x, sizeof(float) * T * d.H));
  TIMED("RmsNormForward",
        cuda::RmsNormForward(nullptr, a.ln1, a.rstd1, x, F32(o.ln1), T, d.H, eps));
  TIMED("GemmBf16", GemmBf16(false, true, T, d.qkvd, d.H, 1.f, a.ln1, d.H, P16() + o.q, d.H, 0.f,
                             a.qkv, d.qkvd));
  bf16_bits* kb = decode ? cache_k[l].as<bf16_bits>() : a.k;
  bf16_bits* vb = decode ? cache_v[l].as<bf16_bits>() : a.v;
  const bool qkn = config.qk_norm;
  TIMED("QkvForward",
        cuda::QkvForward(a.q, kb, vb, a.rstd_q, a.rstd_k, a.qkv, o.qb >= 0 ? F32(o.qb) : nullptr,
                         qkn ? F32(o.q_norm) : nullptr, qkn ? F32(o.k_norm) : nullptr, pos,
                         decode ? kv_row : nullptr, rope_cos.as<float>(), rope_sin.as<float>(),
                         {T, d.nh, d.nkv, d.hd}, eps));
  const float scale = 1.f / std::sqrt(static_cast<float>(d.hd));
  if (decode) {  // the table came up with the step's inputs (Extend)
    TIMED("AttentionForward",
          cuda::AttentionForwardDevice(a.attn, a.lse, a.q, kb, vb, seqs_dev, step_seqs, step_max_q,
                                       d.nh, d.nkv, d.hd, scale));
  } else {
    TIMED("AttentionForward",
          cuda::AttentionForward(a.attn, a.lse, a.q, kb, vb, seqs, d.nh, d.nkv, d.hd, scale));
  }
  RETURN_IF_ERROR(
      GemmBf16(false, true, T, d.H, d.qd, 1.f, a.attn, d.qd, P16() + o.o, d.qd, 1.f, x, d.H));
  if (o.ob >= 0) TIMED("AddRowBias", cuda::AddRowBias(x, F32(o.ob), T, d.H));
  if (a.x_mid != nullptr) {
    TIMED("CopyOnDevice", cuda::CopyOnDevice(a.x_mid, x, sizeof(float) * T * d.H));
  }
  TIMED("RmsNormForward",
        cuda::RmsNormForward(nullptr, a.ln2, a.rstd2, x, F32(o.ln2), T, d.H, eps));
  RETURN_IF_ERROR(FfnForward(l, a, T, forced_l, count_acc != nullptr, decode));
  if (o.moe) {
    if (routing_dev != nullptr) {
      RETURN_IF_ERROR(cuda::CopyOnDevice(routing_dev, a.idx, sizeof(int32_t) * T * d.K));
    }
    if (routing_out != nullptr) {
      const size_t n = routing_out->size();
      routing_out->resize(n + T * d.K);
      RETURN_IF_ERROR(cuda::CopyToHost(routing_out->data() + n, a.idx, sizeof(int32_t) * T * d.K));
    }
    if (count_acc != nullptr) {
      for (int64_t e = 0; e < d.E; ++e) count_acc[e] += a.host_counts[e];
      TIMED("ColumnSumAdd", cuda::ColumnSumAdd(prob_sum, a.probs, T, d.E));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Impl::FfnBackward(int64_t l, CudaLayerActs& a, int64_t T) {
  const Dims d(config);
  const LayerOffsets& o = layout.layers[l];
  float* Gr = G();
  if (!o.moe) {
    TIMED("CastToBf16", cuda::CastToBf16(dx16, dx, T * d.H));
    TIMED("GemmBf16", GemmBf16(false, false, T, d.I, d.H, 1.f, dx16, d.H, P16() + o.mlp_down, d.I,
                               0.f, dh, d.I));
    TIMED("GemmBf16",
          GemmBf16(true, false, d.H, d.I, T, 1.f, dx16, d.H, a.h, d.I, 1.f, Gr + o.mlp_down, d.I));
    TIMED("SwiGluBackward", cuda::SwiGluBackward(dgu16, dh, a.gu, T, d.I));
    TIMED("GemmBf16", GemmBf16(false, false, T, d.H, 2 * d.I, 1.f, dgu16, 2 * d.I,
                               P16() + o.mlp_gate_up, d.H, 0.f, dln, d.H));
    TIMED("GemmBf16", GemmBf16(true, false, 2 * d.I, d.H, T, 1.f, dgu16, 2 * d.I, a.ln2, d.H, 1.f,
                               Gr + o.mlp_gate_up, d.H));
    return absl::OkStatus();
  }
  const int64_t* begin = a.host_begin.data();
  // Padding rows of dye must be zero: they multiply the (zero) padding rows of h_e / xe.
  if (a.padded) RETURN_IF_ERROR(cuda::Memset(dye16, 0, sizeof(bf16_bits) * a.rows * d.H));
  TIMED("MoeCombineBackward",
        cuda::MoeCombineBackward(dye16, dw, dx, a.ye, a.w, a.slot_of, T, d.K, d.H));
  if (a.padded) {
    TIMED(
        "BatchedLinearBackwardData",
        cuda::BatchedLinearBackwardData(dh, dye16, P16() + o.experts_down, d.E, a.cap, d.Im, d.H));
    TIMED("BatchedLinearBackwardWeight",
          cuda::BatchedLinearBackwardWeight(Gr + o.experts_down, dye16, a.h_e, d.E, a.cap, d.Im,
                                            d.H));
  } else {
    TIMED(
        "GroupedLinearBackwardData",
        cuda::GroupedLinearBackwardData(dh, dye16, P16() + o.experts_down, begin, d.E, d.Im, d.H));
    TIMED("GroupedLinearBackwardWeight",
          cuda::GroupedLinearBackwardWeight(Gr + o.experts_down, dye16, a.h_e, begin, d.E, d.Im,
                                            d.H));
  }
  TIMED("SwiGluBackward", cuda::SwiGluBackward(dgu16, dh, a.gu_e, a.rows, d.Im));
  if (a.padded) {
    TIMED("BatchedLinearBackwardData",
          cuda::BatchedLinearBackwardData(dxe, dgu16, P16() + o.experts_gate_up, d.E, a.cap, d.H,
                                          2 * d.Im));
    TIMED("BatchedLinearBackwardWeight",
          cuda::BatchedLinearBackwardWeight(Gr + o.experts_gate_up, dgu16, a.xe, d.E, a.cap, d.H,
                                            2 * d.Im));
  } else {
    TIMED("GroupedLinearBackwardData",
          cuda::GroupedLinearBackwardData(dxe, dgu16, P16() + o.experts_gate_up, begin, d.E, d.H,
                                          2 * d.Im));
    TIMED("GroupedLinearBackwardWeight",
          cuda::GroupedLinearBackwardWeight(Gr + o.experts_gate_up, dgu16, a.xe, begin, d.E, d.H,
                                            2 * d.Im));
  }
  RETURN_IF_ERROR(cuda::Memset(dln, 0, sizeof(float) * T * d.H));
  TIMED("MoeGatherAdd", cuda::MoeGatherAdd(dln, dxe, a.slot_of, T, d.K, d.H));
  TIMED("RouterBackward", cuda::RouterBackward(drouter, dw, use_aux ? aux_dprobs : nullptr, a.probs,
                                               a.idx, a.w, T, d.E, d.K, config.norm_topk_prob));
  TIMED("CastToBf16", cuda::CastToBf16(drouter16, drouter, T * d.E));
  TIMED("GemmBf16", GemmBf16(false, false, T, d.H, d.E, 1.f, drouter16, d.E, P16() + o.router, d.H,
                             1.f, dln, d.H));
  TIMED("GemmBf16", GemmBf16(true, false, d.E, d.H, T, 1.f, drouter16, d.E, a.ln2, d.H, 1.f,
                             Gr + o.router, d.H));
  return absl::OkStatus();
}

absl::Status CudaModel::Impl::LayerBackward(int64_t l, CudaLayerActs& a, int64_t T,
                                            const std::vector<cuda::AttnSeq>& seqs) {
  const Dims d(config);
  const LayerOffsets& o = layout.layers[l];
  float* Gr = G();
  RETURN_IF_ERROR(FfnBackward(l, a, T));
  RETURN_IF_ERROR(cuda::RmsNormBackward(dx, Gr + o.ln2, dln, a.x_mid, F32(o.ln2), a.rstd2, T, d.H));
  TIMED("CastToBf16", cuda::CastToBf16(dx16, dx, T * d.H));
  TIMED("GemmBf16", GemmBf16(false, false, T, d.qd, d.H, 1.f, dx16, d.H, P16() + o.o, d.qd, 0.f,
                             dattn_f, d.qd));
  RETURN_IF_ERROR(
      GemmBf16(true, false, d.H, d.qd, T, 1.f, dx16, d.H, a.attn, d.qd, 1.f, Gr + o.o, d.qd));
  if (o.ob >= 0) TIMED("ColumnSumAdd", cuda::ColumnSumAdd(Gr + o.ob, dx, T, d.H));
  TIMED("CastToBf16", cuda::CastToBf16(dattn16, dattn_f, T * d.qd));
  const float scale = 1.f / std::sqrt(static_cast<float>(d.hd));
  TIMED("AttentionBackward", cuda::AttentionBackward(dq, dk, dv, delta, dattn16, a.attn, a.lse, a.q,
                                                     a.k, a.v, seqs, T, d.nh, d.nkv, d.hd, scale));
  const bool qkn = config.qk_norm;
  TIMED(
      "QkvBackward",
      cuda::QkvBackward(dqkv, qkn ? Gr + o.q_norm : nullptr, qkn ? Gr + o.k_norm : nullptr, dq, dk,
                        dv, a.qkv, o.qb >= 0 ? F32(o.qb) : nullptr, qkn ? F32(o.q_norm) : nullptr,
                        qkn ? F32(o.k_norm) : nullptr, a.rstd_q, a.rstd_k, pos,
                        rope_cos.as<float>(), rope_sin.as<float>(), {T, d.nh, d.nkv, d.hd}));
  if (o.qb >= 0) TIMED("ColumnSumAdd", cuda::ColumnSumAdd(Gr + o.qb, dqkv, T, d.qkvd));
  TIMED("CastToBf16", cuda::CastToBf16(dqkv16, dqkv, T * d.qkvd));
  TIMED("GemmBf16", GemmBf16(false, false, T, d.H, d.qkvd, 1.f, dqkv16, d.qkvd, P16() + o.q, d.H,
                             0.f, dln, d.H));
  TIMED("GemmBf16",
        GemmBf16(true, false, d.qkvd, d.H, T, 1.f, dqkv16, d.qkvd, a.ln1, d.H, 1.f, Gr + o.q, d.H));
  TIMED("RmsNormBackward",
        cuda::RmsNormBackward(dx, Gr + o.ln1, dln, a.x_in, F32(o.ln1), a.rstd1, T, d.H));
  return absl::OkStatus();
}

CudaModel::CudaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
// The buffers are freed with their device current.
CudaModel::~CudaModel() { (void)impl_->Activate(); }

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig& config,
                                                             CudaModelOptions options) {
  RETURN_IF_ERROR(config.Validate());
  if (config.HasSharedExpert()) {
    return absl::UnimplementedError(
        "cuda model: qwen2_moe's shared expert is not implemented on the GPU; use --device cpu");
  }
  if (!CudaAvailable()) {
    return absl::UnavailableError(
        absl::StrCat("cuda model: ", cuda::DeviceDescription(0), "; use --device cpu"));
  }
  const int devices = cuda::DeviceCount();
  if (options.device < 0 || options.device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("cuda model: device ", options.device,
                                                   " does not exist (", devices, " present)"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = options.device;
  RETURN_IF_ERROR(impl->Activate());
  impl->config = config;
  impl->layout = ParamLayout::Build(config);
  const int64_t n = impl->layout.total;
  impl->master = options.master_weights;
  impl->decode_graphs = options.decode_graphs;
  int64_t f32_values = n;
  if (!impl->master) {
    f32_values = 0;
    for (const ParamTensor& t : impl->layout.tensors) {
      if (!t.is_norm && !t.is_bias) continue;
      impl->f32_index.push_back({t.offset, f32_values, t.numel});
      f32_values += t.numel;
    }
    std::sort(impl->f32_index.begin(), impl->f32_index.end(),
              [](const auto& a, const auto& b) { return a.flat < b.flat; });
  }
  ASSIGN_OR_RETURN(impl->params,
                   DeviceBuffer::Allocate(sizeof(float) * std::max<int64_t>(f32_values, 1)));
  ASSIGN_OR_RETURN(impl->params16, DeviceBuffer::Allocate(sizeof(bf16_bits) * n));
  RETURN_IF_ERROR(cuda::Memset(impl->params.data(), 0, impl->params.size()));
  RETURN_IF_ERROR(cuda::Memset(impl->params16.data(), 0, impl->params16.size()));
  if (config.num_experts > 0) {
    std::vector<int64_t> begin(config.num_experts + 1);
    for (size_t e = 0; e < begin.size(); ++e) begin[e] = e * Impl::kSyncFreeTokens;
    ASSIGN_OR_RETURN(impl->padded_begin, DeviceBuffer::Allocate(sizeof(int64_t) * begin.size()));
    RETURN_IF_ERROR(impl->padded_begin.CopyFromHost(begin.data(), sizeof(int64_t) * begin.size()));
  }
  return std::unique_ptr<CudaModel>(new CudaModel(std::move(impl)));
}

const ModelConfig& CudaModel::config() const { return impl_->config; }
const ParamLayout& CudaModel::layout() const { return impl_->layout; }
int64_t CudaModel::num_params() const { return impl_->layout.total; }
int64_t CudaModel::WeightBytesBf16() const { return 2 * impl_->layout.total; }
int64_t CudaModel::WeightDeviceBytes() const {
  return static_cast<int64_t>(impl_->params.size() + impl_->params16.size());
}

namespace {
// SetParams without master weights casts through a staging buffer of at most this many floats
// (64 MiB), so a model too big for fp32 on the device still loads.
constexpr int64_t kStagingFloats = int64_t{16} << 20;

absl::Status NoMaster(const char* what) {
  return absl::FailedPreconditionError(
      absl::StrCat("cuda model: ", what,
                   " needs the fp32 master weights, and this model was created without "
                   "them (CudaModelOptions::master_weights)"));
}
}  // namespace

absl::Status CudaModel::SetParams(absl::Span<const float> host) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  if (static_cast<int64_t>(host.size()) != s.layout.total) {
    return absl::InvalidArgumentError(absl::StrCat("cuda model: SetParams got ", host.size(),
                                                   " values, the model has ", s.layout.total));
  }
  if (s.master) {
    RETURN_IF_ERROR(s.params.CopyFromHost(host.data(), sizeof(float) * host.size()));
    TIMED("CastToBf16",
          cuda::CastToBf16(s.params16.as<bf16_bits>(), s.params.as<float>(), s.layout.total));
    return absl::OkStatus();
  }
  // The norms and biases in fp32, then every weight cast to bf16 chunk by chunk by the same
  // kernel as above (so the bf16 values are bitwise the master path's). Each synchronous copy
  // into the staging buffer waits for the cast that read it before (one default stream).
  std::vector<float> small(s.params.size() / sizeof(float));
  for (const auto& b : s.f32_index) {
    std::copy_n(host.data() + b.flat, b.numel, small.data() + b.packed);
  }
  RETURN_IF_ERROR(s.params.CopyFromHost(small.data(), sizeof(float) * small.size()));
  const int64_t chunk = std::min(s.layout.total, kStagingFloats);
  RETURN_IF_ERROR(s.staging.Reserve(sizeof(float) * chunk));
  for (int64_t i = 0; i < s.layout.total; i += chunk) {
    const int64_t n = std::min(chunk, s.layout.total - i);
    RETURN_IF_ERROR(s.staging.CopyFromHost(host.data() + i, sizeof(float) * n));
    TIMED("CastToBf16", cuda::CastToBf16(s.params16.as<bf16_bits>() + i, s.staging.as<float>(), n));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::GetParams(absl::Span<float> host) const {
  RETURN_IF_ERROR(impl_->Activate());
  if (static_cast<int64_t>(host.size()) != impl_->layout.total) {
    return absl::InvalidArgumentError("cuda model: GetParams needs num_params() values");
  }
  if (!impl_->master) return NoMaster("GetParams");
  return impl_->params.CopyToHost(host.data(), sizeof(float) * host.size());
}

absl::Status CudaModel::CopyWeightsFrom(const CudaModel& src_model) {
  const Impl& src = *src_model.impl_;
  if (src.layout.total != impl_->layout.total ||
      src.layout.tensors.size() != impl_->layout.tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cuda model: CopyWeightsFrom a model of ",
                                                   src.layout.total, " parameters into one of ",
                                                   impl_->layout.total));
  }
  return CopyWeightsFrom(src_model.weight_buffers());
}

CudaModel::WeightBuffers CudaModel::weight_buffers() const {
  return {impl_->params16.data(), impl_->params16.size(), impl_->params.data(),
          impl_->params.size(), impl_->master};
}

absl::Status CudaModel::CopyWeightsFrom(const WeightBuffers& src) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  RETURN_IF_ERROR(WithContext(CheckWeightBuffers(s.layout, src), "cuda model: CopyWeightsFrom"));
  if (s.master && !src.master) return NoMaster("CopyWeightsFrom into a model with them");
  RETURN_IF_ERROR(cuda::CopyOnDevice(s.params16.data(), src.bf16, s.params16.size()));
  if (s.master || !src.master) {  // the same fp32 arrangement on both sides
    return cuda::CopyOnDevice(s.params.data(), src.f32, s.params.size());
  }
  const float* src_f32 = static_cast<const float*>(src.f32);
  for (const auto& b : s.f32_index) {  // the norms and biases out of src's master copy
    RETURN_IF_ERROR(cuda::CopyOnDevice(s.params.as<float>() + b.packed, src_f32 + b.flat,
                                       sizeof(float) * b.numel));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::GetGrads(absl::Span<float> host) const {
  RETURN_IF_ERROR(impl_->Activate());
  if (static_cast<int64_t>(host.size()) != impl_->layout.total) {
    return absl::InvalidArgumentError("cuda model: GetGrads needs num_params() values");
  }
  RETURN_IF_ERROR(impl_->EnsureGrads());
  return impl_->grads.CopyToHost(host.data(), sizeof(float) * host.size());
}

absl::Status CudaModel::ZeroGrads() {
  RETURN_IF_ERROR(impl_->Activate());
  RETURN_IF_ERROR(impl_->EnsureGrads());
  TIMED("Memset", cuda::Memset(impl_->grads.data(), 0, impl_->grads.size()));
  return absl::OkStatus();
}

absl::StatusOr<float*> CudaModel::GradsOnDevice() {
  RETURN_IF_ERROR(impl_->Activate());
  RETURN_IF_ERROR(impl_->EnsureGrads());
  RETURN_IF_ERROR(cuda::Synchronize());
  return impl_->G();
}

absl::Status CudaModel::Impl::ReportGrads(int64_t first, int64_t count) {
  if (!grad_ready) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::shared_ptr<cuda::StreamMark> mark, cuda::StreamMark::Record());
  grad_ready(first, count, [mark](absl::Duration timeout) { return mark->Wait(timeout); });
  return absl::OkStatus();
}

void CudaModel::set_grad_ready_callback(GradReadyCallback callback) {
  impl_->grad_ready = std::move(callback);
}

absl::Status CudaModel::Forward(const TokenBatch& batch, const ForwardOptions& opt,
                                ForwardResult<float>* result) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  const ModelConfig& c = s.config;
  s.valid = false;
  const int64_t T = batch.num_tokens(), B = batch.num_seqs();
  const Dims d(c);
  const int64_t num_moe = c.NumMoeLayers();
  if (T == 0 || B <= 0) return absl::InvalidArgumentError("forward: empty batch");
  if (batch.offsets.front() != 0 || batch.offsets.back() != T) {
    return absl::InvalidArgumentError("forward: batch offsets must start at 0 and end at T");
  }
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = batch.offsets[b + 1] - batch.offsets[b];
    if (len < 0) return absl::InvalidArgumentError("forward: batch offsets must not decrease");
    max_len = std::max(max_len, len);
  }
  if (max_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("forward: a sequence of ", max_len,
                                                   " tokens exceeds max_position_embeddings (",
                                                   c.max_position_embeddings, ")"));
  }
  if (!(opt.temperature > 0) || !std::isfinite(opt.temperature)) {
    return absl::InvalidArgumentError("forward: temperature must be a positive finite number");
  }
  for (int64_t p = 0; p < T; ++p) {
    if (batch.tokens[p] < 0 || batch.tokens[p] >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: token ", batch.tokens[p], " at packed position ", p,
                       " is outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  if (!opt.replay_routing.empty()) {
    if (static_cast<int64_t>(opt.replay_routing.size()) != num_moe * T * d.K) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: replay_routing has ", opt.replay_routing.size(), " ids, expected ",
                       num_moe, " MoE layers x ", T, " tokens x ", d.K, " = ", num_moe * T * d.K));
    }
    for (size_t i = 0; i < opt.replay_routing.size(); ++i) {
      const int32_t e = opt.replay_routing[i];
      const size_t row = i / d.K * d.K;
      bool dup = false;
      for (size_t j = row; j < i; ++j) dup |= opt.replay_routing[j] == e;
      if (e < 0 || e >= c.num_experts || dup) {
        return absl::InvalidArgumentError(absl::StrCat("forward: replay_routing[", i, "] = ", e,
                                                       " is not a valid distinct expert id in [0, ",
                                                       c.num_experts, ")"));
      }
    }
  }
  const bool save = opt.for_backward;
  RETURN_IF_ERROR(s.EnsureRope(max_len));
  RETURN_IF_ERROR(s.Prepare(T, save));
  s.T = T;
  s.temperature = opt.temperature;
  s.offsets = batch.offsets;
  std::vector<int32_t> pos(T), targets(T);
  std::vector<cuda::AttnSeq> seqs(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t o0 = batch.offsets[b], o1 = batch.offsets[b + 1];
    seqs[b] = {o0, o1 - o0, o0, o1 - o0};
    for (int64_t p = o0; p < o1; ++p) {
      pos[p] = static_cast<int32_t>(p - o0);
      targets[p] = p + 1 < o1 ? batch.tokens[p + 1] : -1;
    }
  }
  RETURN_IF_ERROR(cuda::CopyToDevice(s.tokens, batch.tokens.data(), sizeof(int32_t) * T));
  RETURN_IF_ERROR(cuda::CopyToDevice(s.targets, targets.data(), sizeof(int32_t) * T));
  RETURN_IF_ERROR(cuda::CopyToDevice(s.pos, pos.data(), sizeof(int32_t) * T));
  if (!opt.replay_routing.empty()) {
    RETURN_IF_ERROR(cuda::CopyToDevice(s.forced, opt.replay_routing.data(),
                                       sizeof(int32_t) * opt.replay_routing.size()));
  }
  TIMED("EmbeddingForward",
        cuda::EmbeddingForward(s.x, s.tokens, s.P16() + s.layout.embed, T, d.H));
  result->routing.clear();
  const bool aux = opt.aux_loss_coef > 0 && num_moe > 0;
  std::vector<double> count(std::max<int64_t>(1, d.E), 0.0);
  if (aux) RETURN_IF_ERROR(cuda::Memset(s.prob_sum, 0, sizeof(float) * d.E));
  int64_t moe_idx = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    CudaLayerActs& a = save ? s.layers[l] : s.scratch;
    const bool moe = s.layout.layers[l].moe;
    const int32_t* forced_l =
        moe && !opt.replay_routing.empty() ? s.forced + moe_idx * T * d.K : nullptr;
    RETURN_IF_ERROR(WithContext(s.LayerForward(l, a, T, seqs, false, forced_l,
                                               opt.record_routing ? &result->routing : nullptr,
                                               nullptr, aux ? count.data() : nullptr),
                                absl::StrCat("cuda forward, layer ", l)));
    moe_idx += moe;
  }
  result->aux_loss = 0;
  s.use_aux = aux;
  if (aux) {
    // L = E * sum_e f_e * Pm_e over all MoE layers' tokens (see Model::Forward).
    std::vector<float> prob_sum(d.E), dprobs(d.E);
    RETURN_IF_ERROR(cuda::CopyToHost(prob_sum.data(), s.prob_sum, sizeof(float) * d.E));
    const double t_all = static_cast<double>(num_moe * T), E = static_cast<double>(d.E);
    double loss = 0;
    for (int64_t e = 0; e < d.E; ++e) {
      loss += count[e] * prob_sum[e];
      dprobs[e] = static_cast<float>(opt.aux_loss_coef * E * count[e] / t_all / t_all);
    }
    result->aux_loss = static_cast<float>(E * loss / (t_all * t_all));
    RETURN_IF_ERROR(cuda::CopyToDevice(s.aux_dprobs, dprobs.data(), sizeof(float) * d.E));
  }
  // Final norm and the vocabulary head, a chunk of rows at a time.
  TIMED("RmsNormForward", cuda::RmsNormForward(nullptr, s.lnf, s.rstdf, s.x, s.F32(s.layout.norm),
                                               T, d.H, c.rms_norm_eps));
  for (int64_t r0 = 0; r0 < T; r0 += s.chunk) {
    const int64_t rows = std::min(s.chunk, T - r0);
    TIMED("GemmBf16", GemmBf16(false, true, rows, d.V, d.H, 1.f, s.lnf + r0 * d.H, d.H,
                               s.P16() + s.layout.lm_head, d.H, 0.f, s.logits, d.V));
    TIMED("LogprobForward", cuda::LogprobForward(s.lp + r0, s.ent + r0, s.lse + r0, s.logits,
                                                 s.targets + r0, rows, d.V, opt.temperature));
  }
  result->logprobs.resize(T);
  result->entropy.resize(T);
  RETURN_IF_ERROR(cuda::CopyToHost(result->logprobs.data(), s.lp, sizeof(float) * T));
  RETURN_IF_ERROR(cuda::CopyToHost(result->entropy.data(), s.ent, sizeof(float) * T));
  RETURN_IF_ERROR(cuda::Synchronize());
  s.valid = save;
  return absl::OkStatus();
}

absl::Status CudaModel::Backward(absl::Span<const float> dlogprobs,
                                 absl::Span<const float> dentropy) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  if (!s.valid) {
    return absl::FailedPreconditionError(
        "backward: no saved activations (call Forward with for_backward first, once per "
        "Backward)");
  }
  const ModelConfig& c = s.config;
  const Dims d(c);
  const int64_t T = s.T;
  if (static_cast<int64_t>(dlogprobs.size()) != T ||
      (!dentropy.empty() && static_cast<int64_t>(dentropy.size()) != T)) {
    return absl::InvalidArgumentError(absl::StrCat("backward: expected ", T, " gradients, got ",
                                                   dlogprobs.size(), " / ", dentropy.size()));
  }
  s.valid = false;
  RETURN_IF_ERROR(s.EnsureGrads());
  float* Gr = s.G();
  RETURN_IF_ERROR(cuda::CopyToDevice(s.dlp, dlogprobs.data(), sizeof(float) * T));
  if (!dentropy.empty()) {
    RETURN_IF_ERROR(cuda::CopyToDevice(s.dent, dentropy.data(), sizeof(float) * T));
  }
  for (int64_t r0 = 0; r0 < T; r0 += s.chunk) {
    const int64_t rows = std::min(s.chunk, T - r0);
    TIMED("GemmBf16", GemmBf16(false, true, rows, d.V, d.H, 1.f, s.lnf + r0 * d.H, d.H,
                               s.P16() + s.layout.lm_head, d.H, 0.f, s.logits, d.V));
    TIMED("LogprobBackward",
          cuda::LogprobBackward(s.dlogits, s.logits, s.dlp + r0,
                                dentropy.empty() ? nullptr : s.dent + r0, s.lse + r0,
                                s.targets + r0, rows, d.V, s.temperature));
    TIMED("GemmBf16", GemmBf16(false, false, rows, d.H, d.V, 1.f, s.dlogits, d.V,
                               s.P16() + s.layout.lm_head, d.H, 0.f, s.dln + r0 * d.H, d.H));
    TIMED("GemmBf16", GemmBf16(true, false, d.V, d.H, rows, 1.f, s.dlogits, d.V, s.lnf + r0 * d.H,
                               d.H, 1.f, Gr + s.layout.lm_head, d.H));
  }
  RETURN_IF_ERROR(cuda::Memset(s.dx, 0, sizeof(float) * T * d.H));
  // s.x still holds the last layer's output (nothing wrote it after the forward's last layer).
  TIMED("RmsNormBackward", cuda::RmsNormBackward(s.dx, Gr + s.layout.norm, s.dln, s.x,
                                                 s.F32(s.layout.norm), s.rstdf, T, d.H));
  // Grad-ready blocks, as Model<float>::Backward reports them: [embed][layer 0]..[layer L-1]
  // [norm][lm_head unless tied]; layer l's block starts at its input_layernorm.
  const bool tied = s.layout.lm_head == s.layout.embed;
  RETURN_IF_ERROR(s.ReportGrads(s.layout.norm, tied ? d.H : s.layout.total - s.layout.norm));
  const int64_t B = static_cast<int64_t>(s.offsets.size()) - 1;
  std::vector<cuda::AttnSeq> seqs(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t o0 = s.offsets[b], n = s.offsets[b + 1] - o0;
    seqs[b] = {o0, n, o0, n};
  }
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    RETURN_IF_ERROR(WithContext(s.LayerBackward(l, s.layers[l], T, seqs),
                                absl::StrCat("cuda backward, layer ", l)));
    const int64_t end = l + 1 < c.num_hidden_layers ? s.layout.layers[l + 1].ln1 : s.layout.norm;
    RETURN_IF_ERROR(s.ReportGrads(s.layout.layers[l].ln1, end - s.layout.layers[l].ln1));
  }
  TIMED("EmbeddingBackward", cuda::EmbeddingBackward(Gr + s.layout.embed, s.tokens, s.dx, T, d.H));
  RETURN_IF_ERROR(s.ReportGrads(s.layout.embed, d.V * d.H));
  return cuda::Synchronize();
}

absl::Status CudaModel::AdamWStep(const CudaAdamW& opt, int64_t step) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  if (!s.master) return NoMaster("AdamWStep");
  RETURN_IF_ERROR(s.EnsureGrads());
  const int64_t n = s.layout.total;
  if (s.adam_m.size() == 0) {
    ASSIGN_OR_RETURN(s.adam_m, DeviceBuffer::Allocate(sizeof(float) * n));
    ASSIGN_OR_RETURN(s.adam_v, DeviceBuffer::Allocate(sizeof(float) * n));
    RETURN_IF_ERROR(cuda::Memset(s.adam_m.data(), 0, s.adam_m.size()));
    RETURN_IF_ERROR(cuda::Memset(s.adam_v.data(), 0, s.adam_v.size()));
  }
  TIMED("AdamW", cuda::AdamW(s.params.as<float>(), s.params16.as<bf16_bits>(), s.G(),
                             s.adam_m.as<float>(), s.adam_v.as<float>(), n,
                             {opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay, step}));
  return absl::OkStatus();
}

#else  // no CUDA in this build

struct CudaModel::Impl {};
bool CudaAvailable() { return false; }
int CudaDeviceCount() { return 0; }
absl::StatusOr<Device> ResolveDevice(const std::string& flag) {
  if (flag == "cpu" || flag == "auto") return Device::kCpu;
  if (flag == "cuda") {
    return absl::UnavailableError(
        "--device cuda: this grpo was built without CUDA (nvcc not found); use --device cpu");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device: '", flag, "' is not one of auto, cpu, cuda"));
}
namespace {
absl::Status NoCuda() {
  return absl::UnavailableError("cuda model: this grpo was built without CUDA");
}
}  // namespace
CudaModel::CudaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaModel::~CudaModel() = default;
absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig&, CudaModelOptions) {
  return NoCuda();
}
// Unreachable: Create() never returns a model in this build.
const ModelConfig& CudaModel::config() const { std::abort(); }
const ParamLayout& CudaModel::layout() const { std::abort(); }
int64_t CudaModel::num_params() const { return 0; }
int64_t CudaModel::WeightBytesBf16() const { return 0; }
int64_t CudaModel::WeightDeviceBytes() const { return 0; }
absl::Status CudaModel::SetParams(absl::Span<const float>) { return NoCuda(); }
absl::Status CudaModel::GetParams(absl::Span<float>) const { return NoCuda(); }
absl::Status CudaModel::GetGrads(absl::Span<float>) const { return NoCuda(); }
absl::Status CudaModel::CopyWeightsFrom(const CudaModel&) { return NoCuda(); }
CudaModel::WeightBuffers CudaModel::weight_buffers() const { return {}; }
absl::Status CudaModel::CopyWeightsFrom(const WeightBuffers&) { return NoCuda(); }
absl::Status CudaModel::ZeroGrads() { return NoCuda(); }
absl::StatusOr<float*> CudaModel::GradsOnDevice() { return NoCuda(); }
void CudaModel::set_grad_ready_callback(GradReadyCallback) {}
absl::Status CudaModel::Forward(const TokenBatch&, const ForwardOptions&, ForwardResult<float>*) {
  return NoCuda();
}
absl::Status CudaModel::Backward(absl::Span<const float>, absl::Span<const float>) {
  return NoCuda();
}
absl::Status CudaModel::AdamWStep(const CudaAdamW&, int64_t) { return NoCuda(); }
absl::Status CudaModel::InitCache(int64_t, int64_t) { return NoCuda(); }
absl::Status CudaModel::InitPooledCache(int64_t, int64_t) { return NoCuda(); }
absl::Status CudaModel::AssignSlot(int64_t, int64_t, int64_t) { return NoCuda(); }
absl::Status CudaModel::CopyPrefix(int64_t, int64_t, int64_t) { return NoCuda(); }
absl::Status CudaModel::SharePrefix(int64_t, int64_t, int64_t) { return NoCuda(); }
int64_t CudaModel::cache_length(int64_t) const { return 0; }
int64_t CudaModel::decode_graph_replays() const { return 0; }
int64_t CudaModel::decode_graph_captures() const { return 0; }
void CudaModel::ResetSlot(int64_t) {}
absl::Status CudaModel::Extend(absl::Span<const int64_t>,
                               absl::Span<const absl::Span<const int32_t>>, float*,
                               std::vector<int32_t>*) {
  return NoCuda();
}
absl::Status CudaModel::Sample(float, int64_t, float, absl::Span<const float>,
                               std::vector<int32_t>*) {
  return NoCuda();
}
absl::Status CudaModel::SampleWithLogprobs(float, absl::Span<const float>, std::vector<int32_t>*,
                                           std::vector<float>*) {
  return NoCuda();
}

#endif

}  // namespace grpo
