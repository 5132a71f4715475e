// CudaModel's incremental decode: the device KV cache, Extend (prefill and decode steps over
// cache slots, mixed freely) and Sample (argmax / temperature / top-k / top-p on the device).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/cuda_model.h"

#ifdef GRPO_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "model/cuda_model_internal.h"

namespace grpo {

absl::Status CudaModel::InitPooledCache(int64_t num_slots, int64_t pool_rows) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  if (num_slots <= 0 || pool_rows <= 0) {
    return absl::InvalidArgumentError("cuda cache: need num_slots > 0 and pool_rows > 0");
  }
  const ModelConfig& c = s.config;
  const int64_t row = c.num_key_value_heads * c.head_dim;
  s.cache_k.clear();
  s.cache_v.clear();
  s.cache_slots = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    ASSIGN_OR_RETURN(DeviceBuffer k, DeviceBuffer::Allocate(sizeof(bf16_bits) * pool_rows * row));
    ASSIGN_OR_RETURN(DeviceBuffer v, DeviceBuffer::Allocate(sizeof(bf16_bits) * pool_rows * row));
    s.cache_k.push_back(std::move(k));
    s.cache_v.push_back(std::move(v));
  }
  s.cache_slots = num_slots;
  s.cache_rows = pool_rows;
  s.cache_len.assign(num_slots, 0);
  s.cache_offset.assign(num_slots, 0);
  s.cache_capacity.assign(num_slots, 0);
  s.cache_shared_offset.assign(num_slots, 0);
  s.cache_shared_len.assign(num_slots, 0);
  return absl::OkStatus();
}

absl::Status CudaModel::InitCache(int64_t num_slots, int64_t max_len) {
  RETURN_IF_ERROR(impl_->Activate());
  if (num_slots <= 0 || max_len <= 0) {
    return absl::InvalidArgumentError("cuda cache: need num_slots > 0 and max_len > 0");
  }
  RETURN_IF_ERROR(InitPooledCache(num_slots, num_slots * max_len));
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    RETURN_IF_ERROR(AssignSlot(slot, slot * max_len, max_len));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::AssignSlot(int64_t slot, int64_t row_offset, int64_t capacity) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  if (slot < 0 || slot >= s.cache_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda cache: slot ", slot, " out of [0, ", s.cache_slots, ")"));
  }
  if (row_offset < 0 || capacity < 0 || row_offset + capacity > s.cache_rows) {
    return absl::InvalidArgumentError(absl::StrCat("cuda cache: rows [", row_offset, ", ",
                                                   row_offset + capacity, ") outside the pool of ",
                                                   s.cache_rows));
  }
  s.cache_len[slot] = 0;
  s.cache_offset[slot] = row_offset;
  s.cache_capacity[slot] = capacity;
  s.cache_shared_len[slot] = 0;
  return absl::OkStatus();
}

absl::Status CudaModel::CopyPrefix(int64_t src, int64_t dst, int64_t n) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  if (src < 0 || src >= s.cache_slots || dst < 0 || dst >= s.cache_slots || src == dst) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda cache: copy prefix from slot ", src, " to slot ", dst));
  }
  if (n < 0 || n > s.cache_len[src] || n > s.cache_capacity[dst] || s.cache_shared_len[src] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda cache: copy prefix of ", n, " tokens; slot ", src, " holds ", s.cache_len[src], " (",
        s.cache_shared_len[src], " shared), slot ", dst, " has room for ", s.cache_capacity[dst]));
  }
  const ModelConfig& c = s.config;
  const int64_t row = c.num_key_value_heads * c.head_dim;
  const size_t bytes = sizeof(bf16_bits) * n * row;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (DeviceBuffer* buf : {&s.cache_k[l], &s.cache_v[l]}) {
      bf16_bits* base = buf->as<bf16_bits>();
      if (n > 0) {
        RETURN_IF_ERROR(cuda::CopyOnDevice(base + s.cache_offset[dst] * row,
                                           base + s.cache_offset[src] * row, bytes));
      }
    }
  }
  s.cache_len[dst] = n;
  s.cache_shared_len[dst] = 0;
  return absl::OkStatus();
}

absl::Status CudaModel::SharePrefix(int64_t src, int64_t dst, int64_t n) {
  Impl& s = *impl_;
  if (src < 0 || src >= s.cache_slots || dst < 0 || dst >= s.cache_slots || src == dst) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda cache: share prefix of slot ", src, " with slot ", dst));
  }
  if (n < 0 || n > s.cache_len[src] || s.cache_shared_len[src] != 0 || s.cache_len[dst] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda cache: share prefix of ", n, " tokens; slot ", src, " holds ", s.cache_len[src], " (",
        s.cache_shared_len[src], " shared), slot ", dst, " holds ", s.cache_len[dst]));
  }
  s.cache_shared_offset[dst] = s.cache_offset[src];
  s.cache_shared_len[dst] = n;
  s.cache_len[dst] = n;
  return absl::OkStatus();
}

int64_t CudaModel::cache_length(int64_t slot) const { return impl_->cache_len.at(slot); }
void CudaModel::ResetSlot(int64_t slot) {
  impl_->cache_len.at(slot) = 0;
  impl_->cache_shared_len.at(slot) = 0;
}

absl::Status CudaModel::Extend(absl::Span<const int64_t> slots,
                               absl::Span<const absl::Span<const int32_t>> new_tokens,
                               float* logits, std::vector<int32_t>* routing) {
  RETURN_IF_ERROR(impl_->Activate());
  Impl& s = *impl_;
  const ModelConfig& c = s.config;
  s.valid = false;  // Extend reuses the scratch buffers
  const int64_t B = static_cast<int64_t>(slots.size());
  const int64_t H = c.hidden_size, V = c.vocab_size;
  if (B == 0 || new_tokens.size() != slots.size()) {
    return absl::InvalidArgumentError("extend: need one token list per slot, and at least one");
  }
  if (s.cache_slots == 0) return absl::FailedPreconditionError("extend: call InitCache first");
  std::vector<int64_t> offsets = {0}, kv_row;
  std::vector<int32_t> tokens, pos, last;
  std::vector<cuda::AttnSeq> seqs;
  int64_t max_pos = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t slot = slots[b];
    if (slot < 0 || slot >= s.cache_slots) {
      return absl::InvalidArgumentError(absl::StrCat("extend: slot ", slot, " out of range"));
    }
    for (int64_t j = 0; j < b; ++j) {
      if (slots[j] == slot) {
        return absl::InvalidArgumentError(absl::StrCat("extend: slot ", slot, " listed twice"));
      }
    }
    const int64_t n = static_cast<int64_t>(new_tokens[b].size()), past = s.cache_len[slot];
    const int64_t shared = s.cache_shared_len[slot];  // positions read from another slot's rows
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrCat("extend: slot ", slot, " has no new tokens"));
    }
    if (past + n > shared + s.cache_capacity[slot] || past + n > c.max_position_embeddings) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "extend: slot ", slot, " would hold ", past + n, " tokens; the slot holds ",
          shared + s.cache_capacity[slot], " and the model ", c.max_position_embeddings));
    }
    for (size_t i = 0; i < new_tokens[b].size(); ++i) {
      const int32_t t = new_tokens[b][i];
      if (t < 0 || t >= V) {
        return absl::InvalidArgumentError(absl::StrCat("slot ", slot, ": token ", t,
                                                       " at position ", i,
                                                       " is outside the vocabulary [0, ", V, ")"));
      }
    }
    seqs.push_back(
        {offsets.back(), n, s.cache_offset[slot], past + n, s.cache_shared_offset[slot], shared});
    tokens.insert(tokens.end(), new_tokens[b].begin(), new_tokens[b].end());
    for (int64_t i = 0; i < n; ++i) {
      pos.push_back(static_cast<int32_t>(past + i));
      kv_row.push_back(s.cache_offset[slot] + past - shared + i);  // the slot's own rows
    }
    offsets.push_back(static_cast<int64_t>(tokens.size()));
    last.push_back(static_cast<int32_t>(offsets.back() - 1));
    max_pos = std::max(max_pos, past + n);
  }
  const int64_t T = static_cast<int64_t>(tokens.size());
  RETURN_IF_ERROR(s.EnsureRope(max_pos));
  RETURN_IF_ERROR(s.Prepare(T, false));
  if (s.dec_B < B) {
    s.decode_arena.Begin();
    s.decode_arena.Take<float>(B * V);
    RETURN_IF_ERROR(s.decode_arena.Grow());
    s.dec_B = B;
  }
  s.decode_arena.Begin();
  s.dec_logits = s.decode_arena.Take<float>(B * V);
  const int64_t K = c.num_experts > 0 ? c.num_experts_per_tok : 0;
  const int64_t routing_n = c.NumMoeLayers() * T * K;
  const bool record = routing != nullptr && routing_n > 0;
  if (record) RETURN_IF_ERROR(s.routing_buf.Reserve(sizeof(int32_t) * routing_n));
  // The step's inputs, one block, one copy (StepInputs).
  const StepInputs in(T);
  s.host_inputs.resize(in.bytes);
  char* h = s.host_inputs.data();
  std::copy(tokens.begin(), tokens.end(), in.Tokens(h));
  std::copy(last.begin(), last.end(), in.Targets(h));
  std::copy(pos.begin(), pos.end(), in.Pos(h));
  std::copy(kv_row.begin(), kv_row.end(), in.KvRow(h));
  std::copy(seqs.begin(), seqs.end(), in.Seqs(h));
  RETURN_IF_ERROR(cuda::CopyToDevice(s.inputs, h, in.seqs_at + sizeof(cuda::AttnSeq) * B));
  s.step_seqs = B;
  s.step_max_q = 1;
  for (const cuda::AttnSeq& q : seqs) s.step_max_q = std::max(s.step_max_q, q.q_len);

  // Everything from the embedding to the logits, on the device with no host round trip.
  // Idempotent (it rewrites what it writes from the same inputs): DeviceGraph::Capture runs it
  // once uncaptured first.
  auto step = [&]() -> absl::Status {
    TIMED("EmbeddingForward",
          cuda::EmbeddingForward(s.x, s.tokens, s.P16() + s.layout.embed, T, H));
    int32_t* routing_dev = record ? s.routing_buf.as<int32_t>() : nullptr;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const bool moe = s.layout.layers[l].moe;
      RETURN_IF_ERROR(WithContext(s.LayerForward(l, s.scratch, T, seqs, true, nullptr, nullptr,
                                                 moe ? routing_dev : nullptr, nullptr),
                                  absl::StrCat("cuda extend, layer ", l)));
      if (moe && routing_dev != nullptr) routing_dev += T * K;
    }
    TIMED("RmsNormForward", cuda::RmsNormForward(nullptr, s.lnf, s.rstdf, s.x, s.F32(s.layout.norm),
                                                 T, H, c.rms_norm_eps));
    // Last new token of each slot: rows `last` of lnf, gathered into dx16 (B, H).
    TIMED("GatherRows", cuda::GatherRows(s.dx16, s.lnf, s.targets, B, H));
    TIMED("GemmBf16", cuda::GemmBf16(false, true, B, V, H, 1.f, s.dx16, H,
                                     s.P16() + s.layout.lm_head, H, 0.f, s.dec_logits, V));
    return absl::OkStatus();
  };
  // A decode step (one token per slot, few enough for a sync-free MoE path) replays a graph.
  const bool graphable =
      s.decode_graphs && T == B && s.DecodeSyncFree(T) && !cuda::OpTimingEnabled();
  bool ran = false;
  if (graphable) {
    Impl::DecodeGraph* g = &s.graphs[{B, record}];
    std::vector<const void*> key = s.DecodeGraphKey();
    if (g->graph == nullptr || g->key != key) {
      g->graph.reset();
      auto captured = cuda::DeviceGraph::Capture(step);
      if (captured.ok()) {
        g->graph = std::move(*captured);
        g->key = std::move(key);
        ++s.graph_captures;
      } else {
        // Launched one by one instead. If that fails too, the step is at fault, not the
        // capture: its error, graphs kept. Otherwise graphs are off for this model.
        RETURN_IF_ERROR(step());
        ran = true;
        std::fprintf(stderr,
                     "grpo cuda: capturing a decode step as a CUDA graph failed (%s); this model "
                     "decodes without graphs from now on\n",
                     std::string(captured.status().message()).c_str());
        s.decode_graphs = false;
        s.graphs.clear();
        g = nullptr;
      }
    }
    if (g != nullptr) {
      RETURN_IF_ERROR(g->graph->Launch());
      ++s.graph_replays;
      ran = true;
    }
  }
  if (!ran) RETURN_IF_ERROR(step());
  for (int64_t b = 0; b < B; ++b) s.cache_len[slots[b]] += offsets[b + 1] - offsets[b];
  s.last_B = B;
  if (routing != nullptr) {
    routing->assign(routing_n, 0);
    if (record) {
      RETURN_IF_ERROR(
          cuda::CopyToHost(routing->data(), s.routing_buf.data(), sizeof(int32_t) * routing_n));
    }
  }
  if (logits != nullptr) {
    RETURN_IF_ERROR(cuda::CopyToHost(logits, s.dec_logits, sizeof(float) * B * V));
  }
  return absl::OkStatus();
}

std::vector<const void*> CudaModel::Impl::DecodeGraphKey() const {
  std::vector<const void*> key = {scratch_arena.data(), decode_arena.data(), rope_cos.data(),
                                  rope_sin.data(),      params16.data(),     params.data(),
                                  padded_begin.data(),  routing_buf.data()};
  for (const DeviceBuffer& b : cache_k) key.push_back(b.data());
  for (const DeviceBuffer& b : cache_v) key.push_back(b.data());
  return key;
}

int64_t CudaModel::decode_graph_replays() const { return impl_->graph_replays; }
int64_t CudaModel::decode_graph_captures() const { return impl_->graph_captures; }

absl::Status CudaModel::Impl::SampleLastExtend(float temperature, int64_t top_k, float top_p,
                                               absl::Span<const float> u,
                                               std::vector<int32_t>* tokens,
                                               std::vector<float>* logprobs) {
  Impl& s = *this;
  const int64_t B = s.last_B;
  if (B == 0) return absl::FailedPreconditionError("sample: call Extend first");
  if (static_cast<int64_t>(u.size()) != B) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample: need one uniform per slot of the last Extend (", B, "), got ", u.size()));
  }
  if (!std::isfinite(temperature) || temperature < 0 || top_k < 0 || !(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(
        "sample: need temperature >= 0 (finite), top_k >= 0, top_p in (0, 1]");
  }
  // u (B) floats, then tokens (B) int32, then logprobs (B) floats.
  RETURN_IF_ERROR(s.sample_buf.Reserve(12 * B));
  float* du = s.sample_buf.as<float>();
  int32_t* dt = reinterpret_cast<int32_t*>(du + B);
  float* dlp = du + 2 * B;
  std::vector<float> uh(u.begin(), u.end());
  for (float& x : uh) x = std::min(std::max(x, 0.f), 0x1.fffffep-1f);  // [0, 1) as floats
  RETURN_IF_ERROR(cuda::CopyToDevice(du, uh.data(), sizeof(float) * B));
  const int64_t V = s.config.vocab_size;
  TIMED("SampleTokens", cuda::SampleTokens(dt, s.dec_logits, du, B, V, temperature, top_k, top_p));
  tokens->resize(B);
  RETURN_IF_ERROR(cuda::CopyToHost(tokens->data(), dt, sizeof(int32_t) * B));
  if (logprobs == nullptr) return absl::OkStatus();
  TIMED("LogprobForward", cuda::LogprobForward(dlp, nullptr, nullptr, s.dec_logits, dt, B, V,
                                               temperature > 0 ? temperature : 1.f));
  logprobs->resize(B);
  return cuda::CopyToHost(logprobs->data(), dlp, sizeof(float) * B);
}

absl::Status CudaModel::Sample(float temperature, int64_t top_k, float top_p,
                               absl::Span<const float> u, std::vector<int32_t>* tokens) {
  RETURN_IF_ERROR(impl_->Activate());
  return impl_->SampleLastExtend(temperature, top_k, top_p, u, tokens, nullptr);
}

absl::Status CudaModel::SampleWithLogprobs(float temperature, absl::Span<const float> u,
                                           std::vector<int32_t>* tokens,
                                           std::vector<float>* logprobs) {
  RETURN_IF_ERROR(impl_->Activate());
  return impl_->SampleLastExtend(temperature, 0, 1.f, u, tokens, logprobs);
}

}  // namespace grpo

#endif  // GRPO_HAVE_CUDA
