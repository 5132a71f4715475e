// AdamW, clipping and schedules (see optimizer.h).
#include "learner/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "learner/crc32c.h"
#include "rollout/weight_sync.h"

namespace grpo {

OptimizerConfig ReadOptimizerConfig(ConfigReader& r, const std::string& prefix) {
  auto key = [&](const char* name) { return prefix + "." + name; };
  OptimizerConfig op;
  op.lr = r.Double(key("lr"));
  op.beta1 = r.Double(key("beta1"));
  op.beta2 = r.Double(key("beta2"));
  op.eps = r.Double(key("eps"));
  op.weight_decay = r.Double(key("weight_decay"));
  op.max_grad_norm = r.Double(key("max_grad_norm"));
  op.schedule = r.Str(key("schedule"));
  op.warmup_steps = r.Int(key("warmup_steps"));
  op.warmup_init_ratio = r.Double(key("warmup_init_ratio"));
  op.min_lr_ratio = r.Double(key("min_lr_ratio"));
  op.num_cycles = r.Double(key("num_cycles"));
  op.weight_dtype = r.Str(key("weight_dtype"));
  return op;
}
namespace {

constexpr char kMagic[8] = {'G', 'R', 'P', 'O', 'A', 'D', 'A', 'M'};
constexpr uint32_t kVersion = 2;  // 1: no has_master field and no master copy
// Fixed chunk for SumOfSquares: the partial sums and their order do not depend on threads.
constexpr int64_t kChunk = 1 << 14;

template <typename T>
void Put(std::string* s, const T& v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

}  // namespace

absl::Status OptimizerConfig::Validate() const {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (!(lr >= 0 && std::isfinite(lr)))
    return bad(absl::StrCat("optimizer.lr ", lr, " must be >= 0"));
  if (!(beta1 >= 0 && beta1 < 1))
    return bad(absl::StrCat("optimizer.beta1 ", beta1, " must lie in [0, 1)"));
  if (!(beta2 >= 0 && beta2 < 1))
    return bad(absl::StrCat("optimizer.beta2 ", beta2, " must lie in [0, 1)"));
  if (!(eps > 0 && std::isfinite(eps)))
    return bad(absl::StrCat("optimizer.eps ", eps, " must be > 0"));
  if (!(weight_decay >= 0 && std::isfinite(weight_decay))) {
    return bad(absl::StrCat("optimizer.weight_decay ", weight_decay, " must be >= 0"));
  }
  if (!std::isfinite(max_grad_norm))
    return bad("optimizer.max_grad_norm must be finite (<= 0: off)");
  if (schedule != "constant" && schedule != "cosine") {
    return bad(absl::StrCat("optimizer.schedule '", schedule, "' is not constant or cosine"));
  }
  if (warmup_steps < 0) return bad("optimizer.warmup_steps must be >= 0");
  if (!(warmup_init_ratio >= 0 && warmup_init_ratio <= 1)) {
    return bad("optimizer.warmup_init_ratio must lie in [0, 1]");
  }
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
    return bad("optimizer.min_lr_ratio must lie in [0, 1]");
  if (!(num_cycles > 0 && std::isfinite(num_cycles)))
    return bad("optimizer.num_cycles must be > 0");
  if (weight_dtype != "fp32" && weight_dtype != "bf16") {
    return bad(absl::StrCat("optimizer.weight_dtype '", weight_dtype, "' is not fp32 or bf16"));
  }
  return absl::OkStatus();
}

double LearningRate(const OptimizerConfig& c, int64_t step, int64_t total_steps) {
  const double W = static_cast<double>(c.warmup_steps);
  const double t = static_cast<double>(step);
  if (c.schedule == "constant") {
    if (c.warmup_steps <= 0) return c.lr;
    return c.lr * std::min(1.0, t / std::max(1.0, W));
  }
  if (step < c.warmup_steps) {
    return c.lr * (c.warmup_init_ratio + (1 - c.warmup_init_ratio) * t / W);
  }
  const double progress = (t - W) / std::max(1.0, static_cast<double>(total_steps) - W);
  const double x = std::cos(std::numbers::pi * c.num_cycles * 2.0 * progress);
  return c.lr * std::max(c.min_lr_ratio, x * (1 - c.min_lr_ratio) / 2 + (1 + c.min_lr_ratio) / 2);
}

double SumOfSquares(const float* x, int64_t n) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(num_chunks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
    double s = 0;
    for (int64_t i = c * kChunk; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
    partial[c] = s;
  }
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

AdamW::AdamW(int64_t num_params, OptimizerConfig config)
    : config_(std::move(config)), m_(num_params, 0.0f), v_(num_params, 0.0f) {}

namespace {

void RoundToBf16(const float* in, int64_t n, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToFloat(FloatToBf16(in[i]));
}

}  // namespace

void RoundToBf16InPlace(float* x, int64_t n) { RoundToBf16(x, n, x); }

void AdamW::BindWeights(float* params) {
  const int64_t n = num_params();
  if (bf16_weights()) {
    if (master_.empty()) master_.assign(params, params + n);
    RoundToBf16(master_.data(), n, params);
  } else if (!master_.empty()) {
    std::copy(master_.begin(), master_.end(), params);
    master_.clear();
    master_.shrink_to_fit();
  }
}

OptimizerStepResult AdamW::Step(float* params, float* grads, double lr) {
  OptimizerStepResult r;
  const int64_t n = num_params();
  r.grad_norm = std::sqrt(SumOfSquares(grads, n));
  if (!std::isfinite(r.grad_norm)) {
    r.skipped = true;
    return r;
  }
  if (config_.max_grad_norm > 0 && r.grad_norm > config_.max_grad_norm) {
    r.clip_scale = config_.max_grad_norm / (r.grad_norm + 1e-6);
    const float s = static_cast<float>(r.clip_scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) grads[i] *= s;
  }
  ++step_;
  const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
  const float bc1 = static_cast<float>(1.0 - std::pow(config_.beta1, static_cast<double>(step_)));
  const float bc2 = static_cast<float>(1.0 - std::pow(config_.beta2, static_cast<double>(step_)));
  const float lr_f = static_cast<float>(lr);
  const float decay = static_cast<float>(1.0 - lr * config_.weight_decay);
  const float eps = static_cast<float>(config_.eps);
  float* m = m_.data();
  float* v = v_.data();
  if (bf16_weights() && master_.empty()) BindWeights(params);
  // With bf16 weights the update goes to the master copy and the weights are its rounding.
  float* p = master_.empty() ? params : master_.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i];
    m[i] = b1 * m[i] + (1 - b1) * g;
    v[i] = b2 * v[i] + (1 - b2) * g * g;
    const float m_hat = m[i] / bc1;
    const float v_hat = v[i] / bc2;
    p[i] = p[i] * decay - lr_f * m_hat / (std::sqrt(v_hat) + eps);
    if (p != params) params[i] = Bf16ToFloat(FloatToBf16(p[i]));
  }
  return r;
}

std::string AdamW::SerializeState() const {
  std::string s;
  s.append(kMagic, sizeof(kMagic));
  Put(&s, kVersion);
  Put(&s, static_cast<int64_t>(m_.size()));
  Put(&s, step_);
  Put(&s, static_cast<int64_t>(master_.empty() ? 0 : 1));
  s.append(reinterpret_cast<const char*>(m_.data()), m_.size() * sizeof(float));
  s.append(reinterpret_cast<const char*>(v_.data()), v_.size() * sizeof(float));
  s.append(reinterpret_cast<const char*>(master_.data()), master_.size() * sizeof(float));
  Put(&s, Crc32cOf(s));
  return s;
}

absl::Status AdamW::RestoreState(const std::string& bytes, const std::string& source) {
  const size_t v1_header = sizeof(kMagic) + sizeof(uint32_t) + 2 * sizeof(int64_t);
  const size_t n = m_.size();
  if (bytes.size() < v1_header || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(source, ": not an AdamW state file"));
  }
  uint32_t version;
  int64_t count, step, has_master = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&count, bytes.data() + 12, 8);
  std::memcpy(&step, bytes.data() + 20, 8);
  if (version != 1 && version != kVersion) {
    return absl::DataLossError(absl::StrCat(source, ": AdamW state version ", version,
                                            ", expected 1 or ", kVersion));
  }
  if (count != static_cast<int64_t>(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": AdamW state is for ", count, " parameters but the model has ", n));
  }
  size_t header = v1_header;
  if (version >= 2) {
    if (bytes.size() < header + sizeof(int64_t)) {
      return absl::DataLossError(absl::StrCat(source, ": AdamW state has ", bytes.size(),
                                              " bytes, too few for its header (truncated?)"));
    }
    std::memcpy(&has_master, bytes.data() + header, 8);
    header += sizeof(int64_t);
    if (has_master != 0 && has_master != 1) {
      return absl::DataLossError(absl::StrCat(source, ": AdamW state's has_master is ",
                                              has_master, ", not 0 or 1 (corrupt file)"));
    }
  }
  const size_t arrays = has_master ? 3 : 2;
  const size_t want = header + arrays * n * sizeof(float) + sizeof(uint32_t);
  if (bytes.size() != want) {
    return absl::DataLossError(absl::StrCat(source, ": AdamW state has ", bytes.size(),
                                            " bytes, expected ", want, " (truncated?)"));
  }
  uint32_t crc;
  std::memcpy(&crc, bytes.data() + want - 4, 4);
  if (Crc32cOf(std::string_view(bytes.data(), want - 4)) != crc) {
    return absl::DataLossError(
        absl::StrCat(source, ": AdamW state checksum mismatch (corrupt file)"));
  }
  step_ = step;
  std::memcpy(m_.data(), bytes.data() + header, n * sizeof(float));
  std::memcpy(v_.data(), bytes.data() + header + n * sizeof(float), n * sizeof(float));
  if (has_master) {
    master_.resize(n);
    std::memcpy(master_.data(), bytes.data() + header + 2 * n * sizeof(float), n * sizeof(float));
  } else {
    master_.clear();
  }
  return absl::OkStatus();
}

}  // namespace grpo
