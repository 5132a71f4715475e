// Data-parallel learner step (learner/data_parallel.h): R ranks (threads over a LocalGroup) on a
// split mini-batch against one learner on the whole of it, gradient buckets and their overlap
// with backward, deadlines and aborts, replica checks. Tiny models (~2k parameters) so a test
// takes well under a second.
#include "learner/data_parallel.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "absl/synchronization/notification.h"
#include "comm/local_communicator.h"
#include "learner/device_model.h"
#include "learner/local_data_parallel.h"
#include "model/config.h"
#include "model/params.h"

namespace grpo {
namespace {

using comm::Communicator;
using comm::LocalGroup;

nlohmann::json TinyMoeJson(bool tied) {
  return {{"architectures", {"Qwen3MoeForCausalLM"}},
          {"model_type", "qwen3_moe"},
          {"vocab_size", 32},
          {"hidden_size", 8},
          {"intermediate_size", 12},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 1},
          {"head_dim", 4},
          {"num_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 4},
          {"norm_topk_prob", true},
          {"mlp_only_layers", nlohmann::json::array()},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"max_position_embeddings", 64},
          {"tie_word_embeddings", tied}};
}

std::unique_ptr<Model<float>> TinyModel(bool tied = false) {
  auto cfg = ParseModelConfig(TinyMoeJson(tied), "test");
  REQUIRE(cfg.ok());
  auto m = Model<float>::Create(*cfg);
  REQUIRE(m.ok());
  InitParams((*m)->layout(), 77, 0.3f, (*m)->params());
  return std::move(*m);
}

// A mini-batch of groups: owned storage plus the TrainSequence views over it.
struct Batch {
  int64_t num_groups = 0, group_size = 0;
  std::vector<std::vector<int32_t>> prompts, completions;
  std::vector<std::vector<double>> old_lp, ref_lp;
  std::vector<std::vector<float>> roll_lp;
  std::vector<TrainSequence> seqs;  // (num_groups * group_size), group-major

  absl::Span<const TrainSequence> Groups(GroupRange r) const {
    return absl::MakeConstSpan(seqs).subspan(r.first * group_size, (r.last - r.first) * group_size);
  }
};

// Random prompts/completions; old logprobs from the initial policy (so ratios start at 1), the
// rollout's a little off (mismatch statistics), the reference's further off (a real KL term).
// Sequence 1 is masked out (the overlong filter) and completions have different lengths.
Batch MakeBatch(Model<float>& model, int64_t num_groups, int64_t group_size, uint64_t seed) {
  Batch b;
  b.num_groups = num_groups;
  b.group_size = group_size;
  const int64_t n = num_groups * group_size;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(1, 31);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int64_t g = 0; g < num_groups; ++g) {
    std::vector<int32_t> prompt(2 + g % 3);
    for (auto& t : prompt) t = tok(rng);
    for (int64_t j = 0; j < group_size; ++j) {
      b.prompts.push_back(prompt);
      std::vector<int32_t> c(1 + (g * 7 + j * 3) % 6);
      for (auto& t : c) t = tok(rng);
      b.completions.push_back(c);
    }
  }
  b.old_lp.resize(n);
  b.ref_lp.resize(n);
  b.roll_lp.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    TokenBatch tb;
    std::vector<int32_t> all = b.prompts[i];
    all.insert(all.end(), b.completions[i].begin(), b.completions[i].end());
    tb.Add(all);
    ForwardResult<float> res;
    REQUIRE(model.Forward(tb, ForwardOptions{}, &res).ok());
    const size_t P = b.prompts[i].size();
    for (size_t j = 0; j < b.completions[i].size(); ++j) {
      const double lp = res.logprobs[P - 1 + j];
      b.old_lp[i].push_back(lp);
      b.roll_lp[i].push_back(static_cast<float>(lp + 0.05 * normal(rng)));
      b.ref_lp[i].push_back(lp + 0.3 * normal(rng));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    TrainSequence s;
    s.prompt = b.prompts[i];
    s.completion = b.completions[i];
    s.old_logprobs = b.old_lp[i];
    s.rollout_logprobs = b.roll_lp[i];
    s.ref_logprobs = b.ref_lp[i];
    s.advantage = normal(rng);
    s.mask = i == 1 ? 0.0 : 1.0;
    b.seqs.push_back(s);
  }
  return b;
}

MiniBatchOptions Options(LossAggregation agg, int64_t micro, double aux) {
  MiniBatchOptions o;
  o.loss.aggregation = agg;
  o.loss.norm_length = 8;
  o.loss.kl_coef = 0.1;
  o.loss.entropy_coef = 0.01;
  o.loss.mismatch = MismatchCorrection::kTokenTis;
  o.micro_batch_seqs = micro;
  o.aux_loss_coef = aux;
  o.lr = 3e-3;
  return o;
}

// eps well above the gradients' rounding noise: with eps -> 0 AdamW's update is sign(g) for a
// gradient that is ~0 by cancellation, so rounding-level differences in such an element (R ranks
// sum in another order) would become lr-sized parameter differences after a few steps.
OptimizerConfig Adam() {
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.eps = 1e-5;
  oc.max_grad_norm = 0.5;  // clipping active: the global norm must be the same everywhere
  return oc;
}

struct RankOutcome {
  std::vector<float> params;
  std::vector<float> first_grads;  // the summed (and clipped) gradient of the first step
  std::vector<MiniBatchResult> results;
  absl::Status status;
  DataParallelStats stats;
};

// `steps` optimizer steps over the same mini-batch. world == 0: one plain learner (no
// communicator) on the whole batch; otherwise `world` ranks as threads of a LocalGroup, rank r
// on AssignGroups(r). Every rank starts from the same initial model.
// cpu_device_models: every rank's step also gets a CPU DeviceModel (what a learner with
// "device": "cpu" could pass), which must change nothing.
std::vector<RankOutcome> Train(int world, const Batch& batch, const MiniBatchOptions& opts,
                               int steps, DataParallelConfig dp = {},
                               bool cpu_device_models = false) {
  const int ranks = std::max(world, 1);
  std::vector<RankOutcome> out(ranks);
  std::shared_ptr<LocalGroup> group = world > 0 ? LocalGroup::Create(world) : nullptr;
  std::vector<std::unique_ptr<Communicator>> comms(ranks);
  for (int r = 0; r < world; ++r) comms[r] = group->Rank(r);
  std::vector<std::unique_ptr<Model<float>>> models;
  std::vector<std::unique_ptr<AdamW>> optimizers(ranks);
  for (int r = 0; r < ranks; ++r) {
    models.push_back(TinyModel());
    optimizers[r] = std::make_unique<AdamW>(models[r]->num_params(), Adam());
  }
  dp.check_replicas = true;
  dp.timeout_s = 20;  // a broken step fails the test instead of hanging it
  auto body = [&](int r) {
    DataParallelStep step(models[r].get(), optimizers[r].get(), comms[r].get(), dp);
    std::unique_ptr<DeviceModel> device;
    if (cpu_device_models) {
      device = DeviceModel::Create(models[r].get(), Device::kCpu).value();
      step.set_device_model(device.get());
    }
    const GroupRange range =
        world > 0 ? AssignGroups(batch.num_groups, r, world) : GroupRange{0, batch.num_groups};
    for (int s = 0; s < steps; ++s) {
      MiniBatchOptions o = opts;
      o.opt_step = s + 1;
      auto res = step.Run(batch.Groups(range), o);
      if (!res.ok()) {
        out[r].status = res.status();
        break;
      }
      out[r].results.push_back(*res);
      if (s == 0) {
        out[r].first_grads.assign(models[r]->grads(), models[r]->grads() + models[r]->num_params());
      }
    }
    out[r].params.assign(models[r]->params(), models[r]->params() + models[r]->num_params());
    out[r].stats = step.stats();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
  return out;
}

// max |a - b| / (1e-6 + max |ref - init|): the difference relative to how far training moved.
double RelativeDiff(const std::vector<float>& a, const std::vector<float>& b,
                    const std::vector<float>& init) {
  double diff = 0, moved = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    moved = std::max(moved, std::abs(static_cast<double>(b[i]) - init[i]));
  }
  return diff / (1e-6 + moved);
}

std::vector<float> InitialParams() {
  auto m = TinyModel();
  return std::vector<float>(m->params(), m->params() + m->num_params());
}

void RequireSameUpdate(const std::vector<RankOutcome>& dp, const std::vector<RankOutcome>& ref) {
  const std::vector<float> init = InitialParams();
  for (const RankOutcome& o : dp) REQUIRE(o.status.ok());
  REQUIRE(ref[0].status.ok());
  // Every rank ends with bitwise the same parameters.
  for (size_t r = 1; r < dp.size(); ++r) {
    REQUIRE(std::memcmp(dp[r].params.data(), dp[0].params.data(),
                        dp[0].params.size() * sizeof(float)) == 0);
  }
  // The same training as one learner on the whole batch, up to float summation order. AdamW
  // divides by sqrt(v), so rounding-level gradient differences stay rounding-level in the
  // update, apart from elements whose gradient is ~0: compare against how far parameters moved.
  // The first step's gradient (summed over ranks): normalized error.
  double d2 = 0, g2 = 0;
  for (size_t i = 0; i < init.size(); ++i) {
    const double d = static_cast<double>(dp[0].first_grads[i]) - ref[0].first_grads[i];
    d2 += d * d;
    g2 += static_cast<double>(ref[0].first_grads[i]) * ref[0].first_grads[i];
  }
  INFO("normalized gradient error " << std::sqrt(d2 / g2));
  REQUIRE(g2 > 0);
  REQUIRE(std::sqrt(d2 / g2) < 1e-5);
  const double rel = RelativeDiff(dp[0].params, ref[0].params, init);
  INFO("relative parameter difference " << rel);
  REQUIRE(rel < 1e-4);
  double moved = 0;
  for (size_t i = 0; i < init.size(); ++i)
    moved = std::max(moved, std::abs(double{ref[0].params[i]} - init[i]));
  REQUIRE(moved > 1e-3);  // training did move the parameters
  for (size_t s = 0; s < ref[0].results.size(); ++s) {
    const MiniBatchResult& a = dp[0].results[s];
    const MiniBatchResult& b = ref[0].results[s];
    INFO("step " << s);
    REQUIRE(a.loss == Approx(b.loss).epsilon(1e-4).margin(1e-6));
    REQUIRE(a.opt.grad_norm == Approx(b.opt.grad_norm).epsilon(1e-4));
    REQUIRE(a.stats.num_tokens == b.stats.num_tokens);
    REQUIRE(a.stats.num_seqs == b.stats.num_seqs);
    REQUIRE(a.stats.kl_sum == Approx(b.stats.kl_sum).epsilon(1e-4).margin(1e-6));
    REQUIRE(a.stats.ratio_max == Approx(b.stats.ratio_max).epsilon(1e-6));
    REQUIRE(a.stats.ratio_min == Approx(b.stats.ratio_min).epsilon(1e-6));
    REQUIRE(a.aux_loss_sum == Approx(b.aux_loss_sum).epsilon(1e-5));
    REQUIRE(a.trained_tokens == b.trained_tokens);
    for (const RankOutcome& o : dp) {  // every rank reports the same global figures
      REQUIRE(o.results[s].loss == a.loss);
      REQUIRE(o.results[s].opt.grad_norm == a.opt.grad_norm);
    }
  }
}

}  // namespace

TEST_CASE("AssignGroups: whole groups, contiguous, deterministic, a rank may get none",
          "[learner][dp]") {
  for (int64_t n : {0, 1, 2, 5, 7, 16}) {
    for (int world : {1, 2, 3, 4}) {
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const GroupRange g = AssignGroups(n, r, world);
        REQUIRE(g.first == next);
        REQUIRE(g.last >= g.first);
        REQUIRE(g.last - g.first <= (n + world - 1) / world);
        next = g.last;
      }
      REQUIRE(next == n);
    }
  }
  REQUIRE(AssignGroups(2, 0, 3).last == 0);  // rank 0 of 3 gets no group of 2
}

TEST_CASE("PlanGradBuckets: every element once, from the end of the array", "[learner][dp]") {
  for (int64_t n : {1, 10, 1783}) {
    for (int64_t b : {int64_t{1}, int64_t{7}, int64_t{10}, int64_t{4096}}) {
      const auto buckets = PlanGradBuckets(n, b);
      int64_t end = n;
      for (const GradBucket& k : buckets) {
        REQUIRE(k.first + k.count == end);
        REQUIRE(k.count >= 1);
        REQUIRE(k.count <= b);
        end = k.first;
      }
      REQUIRE(end == 0);
      REQUIRE(static_cast<int64_t>(buckets.size()) == (n + b - 1) / b);
    }
  }
}

TEST_CASE("Model::Backward reports finished gradient blocks in backward order, covering all",
          "[learner][dp]") {
  for (bool tied : {false, true}) {
    auto model = TinyModel(tied);
    TokenBatch tb;
    tb.Add(std::vector<int32_t>{3, 4, 5, 6});
    ForwardOptions fo;
    fo.for_backward = true;
    ForwardResult<float> res;
    REQUIRE(model->Forward(tb, fo, &res).ok());
    std::vector<std::pair<int64_t, int64_t>> blocks;
    std::vector<float> snapshot;  // grads of the first block, as reported
    model->set_grad_ready_callback([&](int64_t first, int64_t count) {
      blocks.push_back({first, count});
      if (blocks.size() == 1)
        snapshot.assign(model->grads() + first, model->grads() + first + count);
    });
    std::vector<float> dlp(4, 0.5f);
    model->ZeroGrads();
    REQUIRE(model->Backward(dlp, {}).ok());
    const ParamLayout& L = model->layout();
    // norm (+ lm_head), layer 1, layer 0, embedding.
    REQUIRE(blocks.size() == 4);
    REQUIRE(blocks[0].first == L.norm);
    REQUIRE(blocks[1].first == L.layers[1].ln1);
    REQUIRE(blocks[2].first == L.layers[0].ln1);
    REQUIRE(blocks[3].first == L.embed);
    std::vector<int> covered(model->num_params(), 0);
    for (auto [first, count] : blocks) {
      for (int64_t i = first; i < first + count; ++i) covered[i] += 1;
    }
    for (int c : covered) REQUIRE(c == 1);
    // A reported block is final: the rest of the backward does not change it.
    REQUIRE(std::memcmp(snapshot.data(), model->grads() + blocks[0].first,
                        snapshot.size() * sizeof(float)) == 0);
    model->set_grad_ready_callback(nullptr);
  }
}

TEST_CASE("2 and 3 ranks on a split mini-batch make the update of 1 learner on all of it",
          "[learner][dp]") {
  auto model = TinyModel();
  // 4 groups of 3: 3 ranks get 1, 1, 2 groups (uneven).
  const Batch batch = MakeBatch(*model, 4, 3, 11);
  for (LossAggregation agg : {LossAggregation::kTokenMean, LossAggregation::kSeqMeanTokenMean,
                              LossAggregation::kSeqMeanTokenSumNorm}) {
    // One group per micro-batch: the micro-batches (and so the aux loss's token statistics) are
    // the same however groups are split; the aux-loss weight uses the global sequence count.
    const MiniBatchOptions o = Options(agg, /*micro=*/3, /*aux=*/0.01);
    const auto ref = Train(0, batch, o, 4);
    for (int world : {2, 3}) {
      INFO("aggregation " << static_cast<int>(agg) << ", " << world << " ranks");
      DataParallelConfig dp;
      dp.bucket_mb = 1000 * 4.0 / (1 << 20);  // 1000 elements: several buckets
      RequireSameUpdate(Train(world, batch, o, 4, dp), ref);
    }
  }
}

TEST_CASE("a CPU DeviceModel on the ranks leaves the data-parallel step bitwise unchanged",
          "[learner][dp]") {
  auto model = TinyModel();
  const Batch batch = MakeBatch(*model, 4, 3, 13);
  const MiniBatchOptions o = Options(LossAggregation::kTokenMean, /*micro=*/3, /*aux=*/0.01);
  const auto plain = Train(2, batch, o, 2);
  const auto with = Train(2, batch, o, 2, {}, /*cpu_device_models=*/true);
  for (int r = 0; r < 2; ++r) {
    REQUIRE(plain[r].status.ok());
    REQUIRE(with[r].status.ok());
    REQUIRE(with[r].params == plain[r].params);
    REQUIRE(with[r].results[1].loss == plain[r].results[1].loss);
  }
}

TEST_CASE("LocalDataParallel sums gradients in host memory without GPUs and one rank sums nothing",
          "[learner][dp]") {
  // The NCCL path needs a GPU per rank (tests/gpu/learner_cuda_test.cc); on the CPU, even with
  // (CPU) device models set, the ranks reduce over their LocalGroup.
  auto model = TinyModel();
  AdamW opt(model->num_params(), Adam());
  DataParallelConfig dc;
  auto one = LocalDataParallel::Create(model.get(), &opt, dc);
  REQUIRE(one.ok());
  CHECK((*one)->gradient_transport() == "none");
  dc.ranks = 2;
  auto two = LocalDataParallel::Create(model.get(), &opt, dc);
  REQUIRE(two.ok());
  CHECK((*two)->gradient_transport() == "host");
  auto device = DeviceModel::Create(model.get(), Device::kCpu);
  REQUIRE(device.ok());
  REQUIRE((*two)->set_device_model(device->get()).ok());
  CHECK((*two)->gradient_transport() == "host");
}

TEST_CASE("a rank with no group joins every collective and the result is unchanged",
          "[learner][dp]") {
  auto model = TinyModel();
  const Batch batch = MakeBatch(*model, 2, 3, 12);  // 2 groups over 3 ranks: rank 0 has none
  REQUIRE(AssignGroups(2, 0, 3).first == AssignGroups(2, 0, 3).last);
  // Whole local batch per micro-batch (different packing than the reference: rounding only).
  const MiniBatchOptions o = Options(LossAggregation::kSeqMeanTokenSum, /*micro=*/0, /*aux=*/0);
  const auto ref = Train(0, batch, o, 3);
  const auto dp = Train(3, batch, o, 3);
  RequireSameUpdate(dp, ref);
  REQUIRE(dp[0].results[0].stats.num_seqs == 6);  // rank 0 reports the global statistics
  REQUIRE(dp[0].stats.bytes_reduced == 3 * 4.0 * dp[0].params.size());
}

TEST_CASE("bucket size does not change the result: 1-element, ragged and one big bucket",
          "[learner][dp]") {
  auto model = TinyModel();
  const Batch batch = MakeBatch(*model, 3, 2, 13);
  const MiniBatchOptions o = Options(LossAggregation::kTokenMean, 0, 0.01);
  std::vector<std::vector<float>> finals;
  const int64_t n = model->num_params();
  for (int64_t elems : {int64_t{1}, int64_t{7}, int64_t{333}, n + 5}) {
    DataParallelConfig dp;
    dp.bucket_mb = static_cast<double>(elems) * 4.0 / (1 << 20);
    REQUIRE(dp.bucket_elems() == elems);
    const auto out = Train(2, batch, o, 2, dp);
    REQUIRE(out[0].status.ok());
    REQUIRE(out[1].status.ok());
    REQUIRE(out[0].stats.buckets_reduced == 2 * ((n + elems - 1) / elems));
    REQUIRE(out[0].stats.bytes_reduced == 2 * 4.0 * n);
    finals.push_back(out[0].params);
  }
  // The LocalGroup sums each element in rank order whatever the bucket: bitwise equal.
  for (size_t i = 1; i < finals.size(); ++i) {
    REQUIRE(std::memcmp(finals[i].data(), finals[0].data(), n * sizeof(float)) == 0);
  }
}

namespace {

// Wraps a rank's communicator and records each all-reduce: its size and when it ended.
class RecordingComm : public Communicator {
 public:
  explicit RecordingComm(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string backend() const override { return "recording"; }
  comm::MemorySpace memory() const override { return inner_->memory(); }
  absl::Status AllReduceSum(float* data, int64_t count, absl::Duration timeout) override {
    absl::Status s = inner_->AllReduceSum(data, count, timeout);
    absl::MutexLock lock(&mu_);
    sizes_.push_back(count);
    return s;
  }
  absl::Status Broadcast(void* data, int64_t bytes, int root, absl::Duration t) override {
    return inner_->Broadcast(data, bytes, root, t);
  }
  absl::Status Barrier(absl::Duration t) override { return inner_->Barrier(t); }
  void Abort() override { inner_->Abort(); }
  bool aborted() const override { return inner_->aborted(); }

  // Waits (at most `timeout`) until `n` all-reduces of size `size` have completed.
  bool AwaitCompleted(int64_t size, int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return std::count(sizes_.begin(), sizes_.end(), size) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  std::vector<int64_t> sizes() {
    absl::MutexLock lock(&mu_);
    return sizes_;
  }

 private:
  std::unique_ptr<Communicator> inner_;
  absl::Mutex mu_;
  std::vector<int64_t> sizes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

TEST_CASE("GradientReducer all-reduces a bucket before the rest of the gradient is ready",
          "[learner][dp]") {
  constexpr int64_t kN = 10, kBucket = 4;  // buckets [6,10), [2,6), [0,2)
  auto group = LocalGroup::Create(2);
  std::vector<std::unique_ptr<RecordingComm>> comms;
  for (int r = 0; r < 2; ++r) comms.push_back(std::make_unique<RecordingComm>(group->Rank(r)));
  std::vector<std::vector<float>> grads(2, std::vector<float>(kN));
  for (int r = 0; r < 2; ++r)
    for (int64_t i = 0; i < kN; ++i) grads[r][i] = static_cast<float>(i + 100 * r);
  std::vector<absl::Status> st(2);
  std::vector<bool> overlapped(2, false);
  auto body = [&](int r) {
    GradientReducer reducer(comms[r].get(), kN, kBucket, absl::Seconds(20));
    reducer.Begin(grads[r].data(), "test");
    reducer.MarkReady(5, 5);  // [5, 10): bucket 0 complete, bucket 1 partly
    // Bucket 0 is reduced while [0, 5) is still "in backward"; a reducer that waited for the
    // whole gradient would never get here and the wait would fail.
    overlapped[r] = comms[r]->AwaitCompleted(4, 1, absl::Seconds(10));
    reducer.MarkReady(0, 5);
    st[r] = reducer.Finish();
  };
  std::thread t1(body, 1);
  body(0);
  t1.join();
  for (int r = 0; r < 2; ++r) {
    REQUIRE(st[r].ok());
    REQUIRE(overlapped[r]);
    REQUIRE(comms[r]->sizes() == std::vector<int64_t>{4, 4, 2});
    for (int64_t i = 0; i < kN; ++i) REQUIRE(grads[r][i] == static_cast<float>(2 * i + 100));
  }
}

// A GPU backward marks a block once its kernels are queued, with a fence; the reducer must not
// all-reduce the bucket before the fence says the values are there.
TEST_CASE("GradientReducer waits on a block's fence before reducing its bucket", "[learner][dp]") {
  constexpr int64_t kN = 10, kBucket = 4;  // buckets [6,10), [2,6), [0,2)
  auto group = LocalGroup::Create(2);
  std::vector<std::unique_ptr<RecordingComm>> comms;
  for (int r = 0; r < 2; ++r) comms.push_back(std::make_unique<RecordingComm>(group->Rank(r)));
  // [5, 10) is still "being computed" when marked: it holds garbage until the fence opens.
  std::vector<std::vector<float>> grads(2, std::vector<float>(kN, 1e6f));
  for (int r = 0; r < 2; ++r)
    for (int64_t i = 0; i < 5; ++i) grads[r][i] = static_cast<float>(i + 100 * r);
  std::vector<absl::Status> st(2);
  std::vector<bool> early(2, true), late(2, false);
  std::vector<std::atomic<int>> calls_a(2), calls_b(2);
  absl::Notification computed[2];
  auto body = [&](int r) {
    GradientReducer reducer(comms[r].get(), kN, kBucket, absl::Seconds(20));
    reducer.Begin(grads[r].data(), "test");
    reducer.MarkReady(5, 5, [&, r](absl::Duration timeout) {
      ++calls_a[r];
      return computed[r].WaitForNotificationWithTimeout(timeout)
                 ? absl::OkStatus()
                 : absl::DeadlineExceededError("fence a");
    });
    // Bucket 0 is complete but its fence is closed: no all-reduce yet.
    early[r] = comms[r]->AwaitCompleted(4, 1, absl::Milliseconds(300));
    for (int64_t i = 5; i < kN; ++i) grads[r][i] = static_cast<float>(i + 100 * r);
    computed[r].Notify();
    late[r] = comms[r]->AwaitCompleted(4, 1, absl::Seconds(10));
    // The last block of buckets 1 and 2: its fence covers bucket 1's earlier part too.
    reducer.MarkReady(0, 5, [&, r](absl::Duration) {
      ++calls_b[r];
      return absl::OkStatus();
    });
    st[r] = reducer.Finish();
  };
  std::thread t1(body, 1);
  body(0);
  t1.join();
  for (int r = 0; r < 2; ++r) {
    REQUIRE(st[r].ok());
    CHECK_FALSE(early[r]);
    CHECK(late[r]);
    CHECK(calls_a[r].load() == 1);
    CHECK(calls_b[r].load() == 2);
    REQUIRE(comms[r]->sizes() == std::vector<int64_t>{4, 4, 2});
    for (int64_t i = 0; i < kN; ++i) REQUIRE(grads[r][i] == static_cast<float>(2 * i + 100));
  }
  // A fence that fails (a kernel error, a stuck device) fails the round with its error.
  auto solo = LocalGroup::Create(1);
  auto c = solo->Rank(0);
  GradientReducer reducer(c.get(), kN, kBucket, absl::Seconds(20));
  std::vector<float> g(kN, 1.0f);
  reducer.Begin(g.data(), "rank 0 step 3");
  reducer.MarkReady(0, kN,
                    [](absl::Duration) { return absl::InternalError("an illegal address"); });
  const absl::Status s = reducer.Finish();
  REQUIRE_FALSE(s.ok());
  CHECK(s.code() == absl::StatusCode::kInternal);
  CHECK_THAT(std::string(s.message()), Catch::Contains("an illegal address") &&
                                           Catch::Contains("rank 0 step 3") &&
                                           Catch::Contains("waiting for the backward"));
  // The reducer takes a new round after a failed one.
  reducer.Begin(g.data(), "rank 0 step 4");
  reducer.MarkAllReady();
  CHECK(reducer.Finish().ok());
}

TEST_CASE("the step's gradient all-reduce overlaps the model's backward", "[learner][dp]") {
  auto model0 = TinyModel();
  const Batch batch = MakeBatch(*model0, 2, 2, 14);
  auto group = LocalGroup::Create(2);
  std::vector<std::unique_ptr<RecordingComm>> comms;
  for (int r = 0; r < 2; ++r) comms.push_back(std::make_unique<RecordingComm>(group->Rank(r)));
  std::vector<std::unique_ptr<Model<float>>> models;
  std::vector<std::unique_ptr<AdamW>> opts;
  for (int r = 0; r < 2; ++r) {
    models.push_back(TinyModel());
    opts.push_back(std::make_unique<AdamW>(models[r]->num_params(), Adam()));
  }
  const ParamLayout& L = models[0]->layout();
  // Buckets of exactly the final norm + lm_head block: bucket 0 is complete after the first
  // grad-ready block.
  const int64_t head = L.total - L.norm;
  DataParallelConfig dp;
  dp.bucket_mb = static_cast<double>(head) * 4.0 / (1 << 20);
  std::vector<absl::Status> st(2);
  std::vector<int> blocks_seen(2, 0);
  std::vector<bool> overlapped(2, false);
  auto body = [&](int r) {
    DataParallelStep step(models[r].get(), opts[r].get(), comms[r].get(), dp);
    step.set_grad_ready_observer([&, r](int64_t, int64_t) {
      // At the second block (the last layer) the backward is still running; bucket 0 (the
      // head) must already be summed by the communication thread.
      if (++blocks_seen[r] == 2)
        overlapped[r] = comms[r]->AwaitCompleted(head, 1, absl::Seconds(10));
    });
    auto res =
        step.Run(batch.Groups(AssignGroups(2, r, 2)), Options(LossAggregation::kTokenMean, 0, 0));
    st[r] = res.status();
  };
  std::thread t1(body, 1);
  body(0);
  t1.join();
  for (int r = 0; r < 2; ++r) {
    REQUIRE(st[r].ok());
    REQUIRE(blocks_seen[r] == 4);
    REQUIRE(overlapped[r]);
  }
}

TEST_CASE("a stalled rank makes the others fail with DEADLINE_EXCEEDED, never a hang",
          "[learner][dp]") {
  auto model0 = TinyModel();
  const Batch batch = MakeBatch(*model0, 2, 2, 15);
  DataParallelConfig dp;
  dp.timeout_s = 0.3;
  dp.bucket_mb = 64 * 4.0 / (1 << 20);

  SECTION("a rank that never arrives") {
    auto group = LocalGroup::Create(2);
    auto c0 = group->Rank(0);
    auto c1 = group->Rank(1);  // rank 1 never calls anything
    auto m = TinyModel();
    AdamW opt(m->num_params(), Adam());
    DataParallelStep step(m.get(), &opt, c0.get(), dp);
    MiniBatchOptions o = Options(LossAggregation::kTokenMean, 0, 0);
    o.opt_step = 7;
    auto res = step.Run(batch.Groups({0, 1}), o);
    REQUIRE(res.status().code() == absl::StatusCode::kDeadlineExceeded);
    const std::string msg(res.status().message());
    INFO(msg);
    REQUIRE(msg.find("data-parallel rank 0 of 2, optimizer step 7") != std::string::npos);
    REQUIRE(msg.find("loss normalizers") != std::string::npos);
    // The communicator is dead from now on: the next step fails at once with ABORTED.
    REQUIRE(step.Run(batch.Groups({0, 1}), o).status().code() == absl::StatusCode::kAborted);
  }

  SECTION("a rank that stalls in the middle of its backward") {
    auto group = LocalGroup::Create(2);
    std::vector<std::unique_ptr<Communicator>> comms;
    for (int r = 0; r < 2; ++r) comms.push_back(group->Rank(r));
    std::vector<std::unique_ptr<Model<float>>> models;
    std::vector<std::unique_ptr<AdamW>> opts;
    for (int r = 0; r < 2; ++r) {
      models.push_back(TinyModel());
      opts.push_back(std::make_unique<AdamW>(models[r]->num_params(), Adam()));
    }
    absl::Notification rank0_done;
    bool stalled_long_enough = false;
    std::vector<absl::Status> st(2);
    auto body = [&](int r) {
      DataParallelStep step(models[r].get(), opts[r].get(), comms[r].get(), dp);
      if (r == 1) {
        step.set_grad_ready_observer([&](int64_t, int64_t) {
          if (!rank0_done.HasBeenNotified()) {
            stalled_long_enough = rank0_done.WaitForNotificationWithTimeout(absl::Seconds(20));
          }
        });
      }
      st[r] =
          step.Run(batch.Groups(AssignGroups(2, r, 2)), Options(LossAggregation::kTokenMean, 0, 0))
              .status();
      if (r == 0) rank0_done.Notify();
    };
    std::thread t1(body, 1);
    body(0);
    t1.join();
    REQUIRE(stalled_long_enough);
    INFO(st[0].ToString() << " / " << st[1].ToString());
    REQUIRE(st[0].code() == absl::StatusCode::kDeadlineExceeded);
    REQUIRE(std::string(st[0].message()).find("gradient bucket") != std::string::npos);
    REQUIRE(st[1].code() == absl::StatusCode::kAborted);
    REQUIRE(std::string(st[1].message()).find("data-parallel rank 1 of 2") != std::string::npos);
  }
}

TEST_CASE("a rank that fails mid-step releases the others with ABORTED at once", "[learner][dp]") {
  auto model0 = TinyModel();
  const Batch batch = MakeBatch(*model0, 2, 2, 16);
  DataParallelConfig dp;
  dp.timeout_s = 60;  // long: the others must be released by the abort, not the deadline
  auto group = LocalGroup::Create(2);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < 2; ++r) comms.push_back(group->Rank(r));
  std::vector<std::unique_ptr<Model<float>>> models;
  std::vector<std::unique_ptr<AdamW>> opts;
  for (int r = 0; r < 2; ++r) {
    models.push_back(TinyModel());
    opts.push_back(std::make_unique<AdamW>(models[r]->num_params(), Adam()));
  }
  std::vector<absl::Status> st(2);
  auto body = [&](int r) {
    DataParallelStep step(models[r].get(), opts[r].get(), comms[r].get(), dp);
    MiniBatchOptions o = Options(LossAggregation::kTokenMean, 0, 0);
    o.routing_replay = r == 1;  // rank 1's sequences carry no routing: an R3 error there
    st[r] = step.Run(batch.Groups(AssignGroups(2, r, 2)), o).status();
  };
  std::thread t1(body, 1);
  body(0);
  t1.join();
  INFO(st[0].ToString() << " / " << st[1].ToString());
  REQUIRE(st[1].code() == absl::StatusCode::kDataLoss);
  REQUIRE(std::string(st[1].message()).find("data-parallel rank 1 of 2") != std::string::npos);
  REQUIRE(st[0].code() == absl::StatusCode::kAborted);
}

TEST_CASE("VerifyReplicas names the rank whose parameters differ", "[learner][dp]") {
  auto group = LocalGroup::Create(3);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < 3; ++r) comms.push_back(group->Rank(r));
  std::vector<std::vector<float>> params(3, std::vector<float>(100, 1.5f));
  params[2][57] = std::nextafter(1.5f, 2.0f);  // one ulp
  std::vector<absl::Status> st(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back(
        [&, r] { st[r] = VerifyReplicas(*comms[r], params[r].data(), 100, absl::Seconds(20)); });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    REQUIRE(st[r].code() == absl::StatusCode::kDataLoss);
    REQUIRE(std::string(st[r].message()).find("rank 2") != std::string::npos);
  }
}

TEST_CASE("AllReduceCounts is exact beyond float precision", "[learner][dp]") {
  auto group = LocalGroup::Create(3);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < 3; ++r) comms.push_back(group->Rank(r));
  std::vector<std::vector<int64_t>> v(3);
  for (int r = 0; r < 3; ++r) v[r] = {(int64_t{1} << 30) + 1 + r, 0, 4095 * (r + 1)};
  std::vector<absl::Status> st(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back(
        [&, r] { st[r] = AllReduceCounts(*comms[r], absl::MakeSpan(v[r]), absl::Seconds(20)); });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    REQUIRE(st[r].ok());
    REQUIRE(v[r] == std::vector<int64_t>{3 * (int64_t{1} << 30) + 6, 0, 4095 * 6});
  }
}

TEST_CASE("DataParallelConfig::Validate names the key", "[learner][dp]") {
  DataParallelConfig c;
  REQUIRE(c.Validate("data_parallel").ok());
  c.ranks = 0;
  REQUIRE(std::string(c.Validate("data_parallel").message()).find("data_parallel.ranks") !=
          std::string::npos);
  c = {};
  c.bucket_mb = 0;
  REQUIRE(std::string(c.Validate("data_parallel").message()).find("data_parallel.bucket_mb") !=
          std::string::npos);
  c = {};
  c.timeout_s = -1;
  REQUIRE(std::string(c.Validate("data_parallel").message()).find("data_parallel.timeout_s") !=
          std::string::npos);
}

}  // namespace grpo
