// Weight-sync benchmark (not a test): how long one update of a model's weights takes to reach the
// rollout workers, per transport, against a plain copy of the same bytes measured in the same
// run. Every timed path is also checked (a #wrong column: values that differ from what was sent,
// fp32 bitwise, bf16 against round-to-nearest-even).
//
// CPU (always): baseline memcpy of the fp32 parameters; then
//   direct-f32              a copy per worker into its engine's spare buffer: the point-to-point
//                           path to in-process workers (time per receiver);
//   local-f32 / local-bf16  PackedWeights + BroadcastWeights over a LocalGroup to R in-process
//                           receivers (rollout/weight_sync.h), checksums verified, bf16 widened;
// Every receiver gets the previous repeat's buffer back, as a worker's engine hands its spare
// (Engine::TakeSpareParams): every path makes one untimed update first (it faults the buffers
// in), and the medians are of the updates after it.
//   grpc-f32                RolloutClient::PushWeights over loopback gRPC into a WeightAssembler
//                           (the CPU-worker path; one receiver).
// GPU (CUDA builds where a device exists): baseline device-to-device copy bandwidth; then
//   ipc                     ExportDeviceBuffer / IpcBuffer::Import + one device copy (same GPU);
//   nccl-bf16               the bucketed broadcast (header + payload per bucket) of device buffers
//                           over an NCCL group of one rank per GPU (needs 2+ GPUs).
// GB/s is payload bytes delivered to one receiver per second; "ratio" divides it by the baseline's
// bytes per second (a copy moves each byte once; the device figure is cudaMemcpy's bytes
// read + written halved). Target on a GPU: >= 0.8.
//
// Run: build/bench/weight_sync_bench --config configs/bench_moe.json [--receivers 2]
//      [--bucket-mb 64] [--repeats 3] [--skip-grpc]     (bench/run_weight_sync_bench.sh: both
//      reference configs)
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "comm/cuda_ipc.h"
#include "comm/local_communicator.h"
#include "comm/nccl_communicator.h"
#include "model/config.h"
#include "model/params.h"
#include "proto/rollout.grpc.pb.h"
#include "rollout/rollout_client.h"
#include "rollout/rollout_service.h"
#include "rollout/weight_sync.h"
#include "rollout/weights.h"

#ifdef GRPO_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/device.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
const char* Arg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return def;
}
bool Flag(int argc, char** argv, const char* name) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return true;
  return false;
}
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Row(const char* path, double bytes, double seconds, double baseline_bps, int64_t wrong,
         const std::string& note = "") {
  const double gbps = bytes / seconds / 1e9;
  std::printf("  %-12s %10.4f s %9.2f GB/s  ratio %5.2f  #wrong %lld  %s\n", path, seconds, gbps,
              bytes / seconds / baseline_bps, static_cast<long long>(wrong), note.c_str());
}

// The gRPC receiving end alone: the worker's UpdateWeights handler minus the engine.
class AssembleOnly final : public grpo::rollout::RolloutService::Service {
 public:
  AssembleOnly(int64_t n, uint64_t fp) : n_(n), fp_(fp) {}
  grpc::Status UpdateWeights(grpc::ServerContext*,
                             grpc::ServerReader<grpo::rollout::WeightChunk>* reader,
                             grpo::rollout::UpdateWeightsResponse* response) override {
    grpo::WeightAssembler a(n_, fp_, version_);
    a.Reuse(std::move(last_));  // as the server does with its engine's spare buffer
    grpo::rollout::WeightChunk chunk;
    while (reader->Read(&chunk)) {
      absl::Status s = a.Add(chunk);
      if (!s.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, std::string(s.message()));
    }
    auto p = a.Finish(&version_);
    if (!p.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, std::string(p.status().message()));
    last_ = std::move(*p);
    response->set_version(version_);
    return grpc::Status::OK;
  }
  std::vector<float> last_;
  uint64_t version_ = 0;

 private:
  int64_t n_;
  uint64_t fp_;
};

std::string WireNote(double payload, int receivers) {
  char b[96];
  std::snprintf(b, sizeof(b), "%d receivers, %.0f MB on the wire each", receivers, payload / 1e6);
  return b;
}

int64_t CountWrong(const std::vector<float>& got, const std::vector<float>& sent, bool bf16) {
  if (got.size() != sent.size()) return static_cast<int64_t>(sent.size());
  int64_t wrong = 0;
  for (size_t i = 0; i < sent.size(); ++i) {
    const float want = bf16 ? grpo::Bf16ToFloat(grpo::FloatToBf16(sent[i])) : sent[i];
    if (std::memcmp(&got[i], &want, 4) != 0) ++wrong;
  }
  return wrong;
}

void RunGpu(const std::vector<float>& params, int64_t bucket_bytes, int repeats);

}  // namespace

int main(int argc, char** argv) {
  const std::string config_path = Arg(argc, argv, "--config", "configs/bench_moe.json");
  const int receivers = std::max(1, std::atoi(Arg(argc, argv, "--receivers", "2")));
  const int64_t bucket_bytes =
      static_cast<int64_t>(std::atof(Arg(argc, argv, "--bucket-mb", "64")) * (1 << 20));
  const int repeats = std::max(1, std::atoi(Arg(argc, argv, "--repeats", "3")));
  auto config = grpo::LoadModelConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "weight_sync_bench: %s\n", config.status().ToString().c_str());
    return 1;
  }
  const grpo::ParamLayout layout = grpo::ParamLayout::Build(*config);
  const int64_t n = layout.total;
  const double f32_bytes = static_cast<double>(n) * 4;
  std::printf("weight_sync_bench: %s, %lld params (%.2f GB fp32), buckets %.0f MiB, %d repeats\n",
              config_path.c_str(), static_cast<long long>(n), f32_bytes / 1e9,
              bucket_bytes / 1048576.0, repeats);
  // Values spread over many exponents so that bf16 rounding is exercised everywhere.
  std::vector<float> params(n);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = static_cast<uint32_t>(i) * 2654435761u;
    params[i] = (static_cast<float>(h >> 8) / 16777216.0f - 0.5f) * 0.1f;
  }
  const uint64_t fp = grpo::LayoutFingerprint(layout);

  // Baseline: one memcpy of the fp32 parameters (destination already faulted in).
  std::vector<float> dst(n);
  std::memcpy(dst.data(), params.data(), n * 4);
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    std::memcpy(dst.data(), params.data(), n * 4);
    t.push_back(Since(t0));
  }
  const double memcpy_bps = f32_bytes / Median(t);
  std::printf("CPU baseline memcpy: %.2f GB/s (%.4f s)\n", memcpy_bps / 1e9, Median(t));
  dst = std::vector<float>();

  std::printf("CPU paths (%d in-process receivers for direct and local-*, 1 for grpc):\n",
              receivers);
  {
    // What the point-to-point path does for in-process workers: a copy per worker into its
    // engine's spare buffer (LocalRolloutWorker::PushWeights -> Engine::StageWeights), no checksum.
    std::vector<double> times;
    int64_t wrong = 0;
    std::vector<std::vector<float>> copies(receivers);
    for (int r = -1; r < repeats; ++r) {  // r = -1: untimed, faults the receivers' buffers in
      const auto t0 = Clock::now();
      for (int k = 0; k < receivers; ++k) copies[k].assign(params.begin(), params.end());
      if (r >= 0) times.push_back(Since(t0));
      for (auto& c : copies) wrong += CountWrong(c, params, false);
    }
    Row("direct-f32", f32_bytes, Median(times) / receivers, memcpy_bps, wrong,
        "per receiver (copies made one after another)");
  }
  uint64_t version = 1;
  for (grpo::WeightDtype dtype : {grpo::WeightDtype::kF32, grpo::WeightDtype::kBf16}) {
    const bool bf16 = dtype == grpo::WeightDtype::kBf16;
    std::vector<double> times;
    int64_t wrong = 0;
    double payload = 0;
    std::vector<std::vector<float>> spare(receivers);
    for (int r = -1; r < repeats; ++r, ++version) {  // r = -1: untimed, as above
      auto group = grpo::comm::LocalGroup::Create(receivers + 1);
      std::vector<std::unique_ptr<grpo::comm::Communicator>> comms;
      for (int k = 0; k <= receivers; ++k) comms.push_back(group->Rank(k));
      std::vector<absl::StatusOr<std::vector<float>>> got(receivers, absl::UnknownError("not run"));
      const auto t0 = Clock::now();
      const grpo::PackedWeights packed =
          grpo::PackedWeights::Pack(params, fp, version, dtype, bucket_bytes, 600);
      std::vector<std::thread> threads;
      for (int k = 0; k < receivers; ++k) {
        threads.emplace_back([&, k] {
          got[k] = grpo::ReceiveWeights(comms[k + 1].get(), 0, packed.manifest(),
                                        {n, fp, version - 1}, nullptr, std::move(spare[k]));
        });
      }
      const absl::Status s = grpo::BroadcastWeights(comms[0].get(), packed);
      for (auto& th : threads) th.join();
      if (r >= 0) times.push_back(Since(t0));
      payload = static_cast<double>(packed.manifest().total_bytes());
      if (!s.ok()) {
        std::fprintf(stderr, "broadcast: %s\n", s.ToString().c_str());
        return 1;
      }
      for (int k = 0; k < receivers; ++k) {
        wrong += got[k].ok() ? CountWrong(*got[k], params, bf16) : n;
        if (got[k].ok()) spare[k] = std::move(*got[k]);
      }
    }
    // Bytes per receiver as fp32 parameters delivered (what the engine gets).
    Row(bf16 ? "local-bf16" : "local-f32", f32_bytes, Median(times), memcpy_bps, wrong,
        WireNote(payload, receivers));
  }
  if (!Flag(argc, argv, "--skip-grpc")) {
    AssembleOnly service(n, fp);
    int port = 0;
    auto server = grpo::StartRolloutServer(&service, "127.0.0.1", 0, &port);
    if (!server.ok()) {
      std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
      return 1;
    }
    auto client = grpo::RolloutClient::Connect("127.0.0.1:" + std::to_string(port));
    std::vector<double> times;
    int64_t wrong = 0;
    for (int r = -1; r < repeats; ++r) {  // r = -1: untimed, as above
      const auto t0 = Clock::now();
      const absl::Status s = (*client)->PushWeights(service.version_ + 1, layout, params,
                                                    absl::Now() + absl::Minutes(10));
      if (r >= 0) times.push_back(Since(t0));
      if (!s.ok()) {
        std::fprintf(stderr, "grpc push: %s\n", s.ToString().c_str());
        return 1;
      }
      wrong += CountWrong(service.last_, params, false);
    }
    Row("grpc-f32", f32_bytes, Median(times), memcpy_bps, wrong, "loopback, 4 MiB chunks");
    (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  RunGpu(params, bucket_bytes, repeats);
  return 0;
}

namespace {

#ifndef GRPO_HAVE_CUDA
void RunGpu(const std::vector<float>&, int64_t, int) {
  std::printf("GPU paths: built without CUDA; not measured\n");
}
#else
void RunGpu(const std::vector<float>& params, int64_t bucket_bytes, int repeats) {
  const int num_gpus = grpo::cuda::DeviceCount();
  if (num_gpus == 0) {
    std::printf("GPU paths: no CUDA device on this machine; not measured\n");
    return;
  }
  const int64_t n = static_cast<int64_t>(params.size());
  // The GPU wire format: bf16, as GPU receivers take it.
  std::vector<uint16_t> host(n);
  grpo::FloatsToBf16(params.data(), n, host.data());
  const size_t bytes = static_cast<size_t>(n) * 2;
  auto bw = grpo::cuda::MeasureCopyBandwidth(bytes);
  if (!bw.ok()) {
    std::printf("GPU: %s\n", bw.status().ToString().c_str());
    return;
  }
  const double copy_bps = *bw / 2;  // bytes moved per second
  std::printf("GPU baseline device-to-device copy (%s): %.1f GB/s moved (%.1f read+write)\n",
              grpo::cuda::DeviceDescription(0).c_str(), copy_bps / 1e9, *bw / 1e9);
  auto check = [&](const grpo::cuda::DeviceBuffer& b) {
    std::vector<uint16_t> back(n);
    if (!b.CopyToHost(back.data(), bytes).ok()) return n;
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) wrong += back[i] != host[i];
    return wrong;
  };
  {
    auto src = grpo::cuda::DeviceBuffer::Allocate(bytes);
    auto dst = grpo::cuda::DeviceBuffer::Allocate(bytes);
    if (!src.ok() || !dst.ok() || !src->CopyFromHost(host.data(), bytes).ok()) {
      std::printf("GPU: allocation failed\n");
      return;
    }
    std::vector<double> times;
    for (int r = 0; r <= repeats; ++r) {
      const auto t0 = Clock::now();
      auto handle = grpo::comm::ExportDeviceBuffer(src->data(), bytes);
      auto shared = handle.ok() ? grpo::comm::IpcBuffer::Import(*handle)
                                : absl::StatusOr<grpo::comm::IpcBuffer>(handle.status());
      absl::Status s = shared.ok()
                           ? grpo::comm::CopyDeviceToDevice(dst->data(), shared->data(), bytes)
                           : shared.status();
      if (!s.ok()) {
        std::printf("  ipc: %s\n", s.ToString().c_str());
        return;
      }
      if (r > 0) times.push_back(Since(t0));  // the first is a warm-up
    }
    Row("ipc-bf16", static_cast<double>(bytes), Median(times), copy_bps, check(*dst),
        "same process: handle, import (no copy), one device copy");
  }
  if (num_gpus < 2 || !grpo::comm::NcclAvailable()) {
    std::printf("  nccl-bf16    not measured: needs 2+ GPUs and NCCL (this machine: %d GPU%s)\n",
                num_gpus, num_gpus == 1 ? "" : "s");
    return;
  }
  auto id = grpo::comm::NewNcclUniqueId();
  if (!id.ok()) return;
  const std::vector<grpo::WeightBucketInfo> plan =
      grpo::PlanBuckets(n, grpo::WeightDtype::kBf16, bucket_bytes);
  std::vector<double> times(num_gpus, 0);
  std::vector<int64_t> wrong(num_gpus, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < num_gpus; ++r) {
    threads.emplace_back([&, r] {
      auto c = grpo::comm::NcclCommunicator::Create(*id, r, num_gpus, r, absl::Seconds(120));
      if (!c.ok()) {
        std::printf("  nccl rank %d: %s\n", r, c.status().ToString().c_str());
        return;
      }
      cudaSetDevice(r);
      auto buf = grpo::cuda::DeviceBuffer::Allocate(bytes);
      auto hdr = grpo::cuda::DeviceBuffer::Allocate(sizeof(grpo::BucketHeader));
      if (!buf.ok() || !hdr.ok()) return;
      if (r == 0 && !buf->CopyFromHost(host.data(), bytes).ok()) return;
      std::vector<double> ts;
      for (int k = 0; k <= repeats; ++k) {
        if (!(*c)->Barrier(absl::Seconds(60)).ok()) return;
        const auto t0 = Clock::now();
        for (const grpo::WeightBucketInfo& b : plan) {
          if (!(*c)->Broadcast(hdr->data(), sizeof(grpo::BucketHeader), 0, absl::Seconds(60))
                   .ok() ||
              !(*c)->Broadcast(buf->as<uint16_t>() + b.offset, b.bytes, 0, absl::Seconds(60))
                   .ok()) {
            return;
          }
        }
        if (k > 0) ts.push_back(Since(t0));
      }
      times[r] = Median(ts);
      if (r > 0) wrong[r] = check(*buf);
    });
  }
  for (auto& th : threads) th.join();
  int64_t all_wrong = 0;
  double slowest = 0;
  for (int r = 0; r < num_gpus; ++r) {
    all_wrong += wrong[r];
    slowest = std::max(slowest, times[r]);
  }
  if (slowest == 0) return;
  Row("nccl-bf16", static_cast<double>(bytes), slowest, copy_bps, all_wrong,
      std::to_string(num_gpus) + " ranks, device buffers, " + std::to_string(plan.size()) +
          " buckets");
}
#endif

}  // namespace
