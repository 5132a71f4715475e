// Device discovery, DeviceBuffer, copies, and the cuBLAS GEMM wrappers (see device.h).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"

namespace grpo::cuda {

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

absl::Status SetDevice(int index) { return CudaStatus(cudaSetDevice(index), "cudaSetDevice"); }

std::string DeviceDescription(int index) {
  cudaDeviceProp prop{};
  cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(err);
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%.200s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor,
                prop.totalGlobalMem / double(1ull << 30));
  return buf;
}

bool OpTimingEnabled() {
  static const bool on = [] {
    const char* e = std::getenv("GRPO_CUDA_TIMING");
    return e != nullptr && std::string(e) == "1";
  }();
  return on;
}

namespace {
std::mutex& OpTimesMutex() {
  static std::mutex mu;
  return mu;
}
std::map<std::string, std::pair<double, int64_t>>& OpTimes() {
  static std::map<std::string, std::pair<double, int64_t>> times;
  return times;
}
}  // namespace

void AddOpTime(const std::string& name, double seconds) {
  std::lock_guard<std::mutex> lock(OpTimesMutex());
  auto& t = OpTimes()[name];
  t.first += seconds;
  t.second += 1;
}

std::string OpTimingReport() {
  std::lock_guard<std::mutex> lock(OpTimesMutex());
  std::vector<std::pair<double, std::string>> rows;
  double total = 0;
  for (const auto& [name, t] : OpTimes()) {
    rows.push_back(
        {t.first, absl::StrCat("  ", name, ": ", t.first * 1e3, " ms (", t.second, " calls)\n")});
    total += t.first;
  }
  std::sort(rows.rbegin(), rows.rend());
  std::string out = absl::StrCat("  total timed: ", total * 1e3, " ms\n");
  for (const auto& r : rows) out += r.second;
  OpTimes().clear();
  return out;
}

namespace {
thread_local cudaStream_t t_stream = nullptr;  // non-null while this thread captures a graph

// What graph capture needs on one device, shared by the process (captures take turns, under
// CaptureMutex): a non-blocking stream to capture on, and a cuBLAS handle bound to it with a
// workspace of its own, since cuBLAS must not allocate while capturing. The captured GEMMs use
// that workspace whenever their graph replays; every replay is on the legacy default stream, so
// two never overlap. Never freed: a graph may be replayed until the process ends.
struct CaptureContext {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  void* workspace = nullptr;
};
constexpr size_t kCaptureWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper

std::mutex& CaptureMutex() {
  static std::mutex mu;
  return mu;
}

// The current device's context, made on first use. Call with CaptureMutex held.
absl::StatusOr<CaptureContext*> GetCaptureContext() {
  int device = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  static std::map<int, CaptureContext*> contexts;
  auto it = contexts.find(device);
  if (it != contexts.end()) return it->second;
  auto* c = new CaptureContext;
  RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                             "cudaStreamCreateWithFlags (graph capture)"));
  RETURN_IF_ERROR(CudaStatus(cudaMalloc(&c->workspace, kCaptureWorkspaceBytes),
                             "cudaMalloc (cuBLAS workspace for graph capture)"));
  RETURN_IF_ERROR(CublasStatus(cublasCreate(&c->blas), "cublasCreate (graph capture)"));
  cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);  // stream and workspace: bound by Capture
  contexts.emplace(device, c);
  return c;
}

thread_local CaptureContext* t_capture = nullptr;  // set with t_stream
}  // namespace

cudaStream_t Stream() { return t_stream; }

namespace {
// What a capture cannot record (a synchronous copy, an allocation, a wait) is refused here, so a
// capture fails the same way whatever the driver would make of the call.
absl::Status NotWhileCapturing(const char* what) {
  if (t_stream == nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(what, " cannot be recorded in a CUDA graph (DeviceGraph::Capture)"));
}
}  // namespace

absl::Status Synchronize() {
  RETURN_IF_ERROR(NotWhileCapturing("Synchronize"));
  return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

absl::StatusOr<std::shared_ptr<StreamMark>> StreamMark::Record() {
  int device = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  cudaEvent_t event = nullptr;
  RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                             "cudaEventCreateWithFlags"));
  std::shared_ptr<StreamMark> mark(new StreamMark(event, device));
  RETURN_IF_ERROR(CudaStatus(cudaEventRecord(event, 0), "cudaEventRecord"));
  return mark;
}

StreamMark::~StreamMark() {
  // The event belongs to device_'s context; destroying it there is always valid (and a pending
  // event is released once it completes).
  int current = 0;
  const bool restore = cudaGetDevice(&current) == cudaSuccess && current != device_;
  if (restore) cudaSetDevice(device_);
  cudaEventDestroy(static_cast<cudaEvent_t>(event_));
  if (restore) cudaSetDevice(current);
}

absl::Status StreamMark::Wait(absl::Duration timeout) const {
  // cudaEventQuery may be called with any device current.
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const cudaError_t q = cudaEventQuery(static_cast<cudaEvent_t>(event_));
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) {
      cudaGetLastError();
      return absl::InternalError(absl::StrCat("cudaEventQuery: ", cudaGetErrorString(q),
                                              " (a kernel queued before the mark failed)"));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("device work queued before the mark did not finish within ",
                       absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Microseconds(20));
  }
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  RETURN_IF_ERROR(NotWhileCapturing("DeviceBuffer::Allocate"));
  absl::Status s = CudaStatus(cudaMalloc(&b.ptr_, bytes), "cudaMalloc");
  if (!s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(s.message(), " (", bytes, " bytes)"));
  }
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes) {
  if (bytes > bytes_) return absl::OutOfRangeError("CopyFromHost: more bytes than the buffer");
  return CopyToDevice(ptr_, src, bytes);
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes) const {
  if (bytes > bytes_) return absl::OutOfRangeError("CopyToHost: more bytes than the buffer");
  return cuda::CopyToHost(dst, ptr_, bytes);
}

absl::Status DeviceBuffer::Reserve(size_t bytes) {
  if (bytes <= bytes_) return absl::OkStatus();
  // Free first so the peak is not old + new.
  *this = DeviceBuffer();
  auto b = Allocate(bytes);
  if (!b.ok()) return b.status();
  *this = std::move(*b);
  return absl::OkStatus();
}

absl::Status CopyToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  RETURN_IF_ERROR(NotWhileCapturing("a host-to-device copy"));
  return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
absl::Status CopyToHost(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  RETURN_IF_ERROR(NotWhileCapturing("a device-to-host copy"));
  return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, Stream()),
                    "cudaMemcpyAsync D2D");
}
absl::Status Memset(void* dst, int value, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemsetAsync(dst, value, bytes, Stream()), "cudaMemsetAsync");
}

bf16_bits FloatToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) != 0) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_bits>(u >> 16);
}
float Bf16ToFloat(bf16_bits x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

absl::StatusOr<std::unique_ptr<DeviceGraph>> DeviceGraph::Capture(
    const std::function<absl::Status()>& fn) {
  if (t_stream != nullptr) {
    return absl::FailedPreconditionError("DeviceGraph::Capture called while capturing");
  }
  int device = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  std::lock_guard<std::mutex> lock(CaptureMutex());
  ASSIGN_OR_RETURN(CaptureContext * ctx, GetCaptureContext());
  // While `fn` runs: GEMMs through the capture handle, and (capturing) everything else to the
  // capture stream; restored however `fn` ends.
  struct Route {
    Route(CaptureContext* c, bool capturing) {
      t_capture = c;
      t_stream = capturing ? c->stream : nullptr;
    }
    ~Route() {
      t_stream = nullptr;
      t_capture = nullptr;
    }
  };
  // Warm-up: `fn` run once on the legacy stream, in order with all other work (other threads'
  // replays, which use the same cuBLAS workspace, included), through the capture handle switched
  // to that stream. So the handle's first use (cuBLAS's set-up) and each kernel's (lazy loading)
  // happen outside the capture, and an error of `fn` itself shows here.
  auto bind = [&](cudaStream_t stream) -> absl::Status {
    // cublasSetStream resets the workspace to cuBLAS's own: set ours after it.
    RETURN_IF_ERROR(CublasStatus(cublasSetStream(ctx->blas, stream), "cublasSetStream"));
    return CublasStatus(cublasSetWorkspace(ctx->blas, ctx->workspace, kCaptureWorkspaceBytes),
                        "cublasSetWorkspace");
  };
  RETURN_IF_ERROR(bind(nullptr));
  absl::Status warm;
  {
    Route route(ctx, /*capturing=*/false);
    warm = fn();
  }
  RETURN_IF_ERROR(bind(ctx->stream));
  RETURN_IF_ERROR(warm);
  RETURN_IF_ERROR(CudaStatus(cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal),
                             "cudaStreamBeginCapture"));
  absl::Status st;
  {
    Route route(ctx, /*capturing=*/true);
    st = fn();
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(ctx->stream, &graph);
  if (st.ok() && end != cudaSuccess) st = CudaStatus(end, "cudaStreamEndCapture");
  if (st.ok() && graph == nullptr) st = absl::InternalError("cudaStreamEndCapture: no graph");
  if (!st.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();  // a refused call inside the capture is not the caller's next error
    return st;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  if (inst != cudaSuccess) {
    cudaGraphDestroy(graph);
    cudaGetLastError();
    return CudaStatus(inst, "cudaGraphInstantiate");
  }
  return std::unique_ptr<DeviceGraph>(new DeviceGraph(graph, exec, device));
}

DeviceGraph::~DeviceGraph() {
  int current = 0;
  const bool restore = cudaGetDevice(&current) == cudaSuccess && current != device_;
  if (restore) cudaSetDevice(device_);
  cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  if (restore) cudaSetDevice(current);
}

absl::Status DeviceGraph::Launch() const {
  int current = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&current), "cudaGetDevice"));
  if (current != device_) {
    return absl::FailedPreconditionError(
        absl::StrCat("DeviceGraph: captured on device ", device_, ", launched on ", current));
  }
  return CudaStatus(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), Stream()),
                    "cudaGraphLaunch");
}

absl::StatusOr<double> TimeOnDevice(const std::function<absl::Status()>& fn, int iters) {
  RETURN_IF_ERROR(fn());
  cudaEvent_t start, stop;
  RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&start), "cudaEventCreate"));
  RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&stop), "cudaEventCreate"));
  // Update() keeps the first error; later calls still run (harmless after a failure).
  absl::Status st = CudaStatus(cudaEventRecord(start, 0), "cudaEventRecord");
  for (int i = 0; i < iters && st.ok(); ++i) st.Update(fn());
  st.Update(CudaStatus(cudaEventRecord(stop, 0), "cudaEventRecord"));
  st.Update(CudaStatus(cudaEventSynchronize(stop), "cudaEventSynchronize"));
  float ms = 0;
  st.Update(CudaStatus(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime"));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!st.ok()) return st;
  return ms * 1e-3 / iters;
}

absl::StatusOr<double> MeasureCopyBandwidth(size_t bytes) {
  ASSIGN_OR_RETURN(DeviceBuffer a, DeviceBuffer::Allocate(bytes));
  ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(bytes));
  RETURN_IF_ERROR(Memset(a.data(), 1, bytes));
  ASSIGN_OR_RETURN(double s,
                   TimeOnDevice([&] { return CopyOnDevice(b.data(), a.data(), bytes); }, 20));
  return 2.0 * static_cast<double>(bytes) / s;
}

namespace {

__global__ void fill_random_bf16_kernel(__nv_bfloat16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2bfloat16((h & 0xffff) / 32768.f - 1.f);
  }
}

}  // namespace

absl::StatusOr<double> MeasureBf16GemmRate(int64_t n) {
  ASSIGN_OR_RETURN(DeviceBuffer a, DeviceBuffer::Allocate(2 * n * n));
  ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(2 * n * n));
  ASSIGN_OR_RETURN(DeviceBuffer c, DeviceBuffer::Allocate(4 * n * n));
  fill_random_bf16_kernel<<<1024, 256, 0, Stream()>>>(a.as<__nv_bfloat16>(), n * n, 1);
  fill_random_bf16_kernel<<<1024, 256, 0, Stream()>>>(b.as<__nv_bfloat16>(), n * n, 2);
  RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "fill_random_bf16_kernel"));
  ASSIGN_OR_RETURN(double s, TimeOnDevice(
                                 [&] {
                                   return GemmBf16(false, true, n, n, n, 1.f, a.as<bf16_bits>(), n,
                                                   b.as<bf16_bits>(), n, 0.f, c.as<float>(), n);
                                 },
                                 10));
  return 2.0 * n * n * n / s;
}

namespace {

// One handle per device for the process (a handle belongs to the device current when it was
// made), on the default stream; cuBLAS workspace is its own. Host threads share it: cuBLAS allows
// that as long as nobody reconfigures the handle, and nothing here does after creation. Never
// destroyed (work may be queued on it until the process ends). While this thread captures a
// graph: the capture context's handle instead.
absl::StatusOr<cublasHandle_t> Handle() {
  if (t_capture != nullptr) return t_capture->blas;
  int device = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  thread_local int cached_device = -1;
  thread_local cublasHandle_t cached = nullptr;
  if (device == cached_device) return cached;
  static std::mutex mu;
  static std::map<int, cublasHandle_t> handles;
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(device);
  if (it == handles.end()) {
    cublasHandle_t h = nullptr;
    const cublasStatus_t init = cublasCreate(&h);
    if (init != CUBLAS_STATUS_SUCCESS) return CublasStatus(init, "cublasCreate");
    cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    // A workspace of the capture handle's size: cuBLAS picks algorithms partly by workspace, so
    // a GEMM launched here and one replayed from a graph run the same algorithm (bitwise equal).
    void* workspace = nullptr;
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&workspace, kCaptureWorkspaceBytes),
                               "cudaMalloc (cuBLAS workspace)"));
    RETURN_IF_ERROR(CublasStatus(cublasSetWorkspace(h, workspace, kCaptureWorkspaceBytes),
                                 "cublasSetWorkspace"));
    it = handles.emplace(device, h).first;
  }
  cached_device = device;
  cached = it->second;
  return cached;
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
absl::Status GemmEx(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const void* A, cudaDataType_t at, int64_t lda, const void* B, cudaDataType_t bt,
                    int64_t ldb, float beta, float* C, int64_t ldc, cublasComputeType_t compute) {
  if (M == 0 || N == 0) return absl::OkStatus();
  auto h = Handle();
  if (!h.ok()) return h.status();
  if (K == 0) {
    if (beta == 0.f) {
      for (int64_t i = 0; i < M; ++i) {
        RETURN_IF_ERROR(Memset(C + i * ldc, 0, sizeof(float) * N));
      }
    }
    return absl::OkStatus();
  }
  return CublasStatus(
      cublasGemmEx(*h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                   static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B, bt,
                   static_cast<int>(ldb), A, at, static_cast<int>(lda), &beta, C, CUDA_R_32F,
                   static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

}  // namespace

absl::Status GemmBf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const bf16_bits* A, int64_t lda, const bf16_bits* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) {
  return GemmEx(trans_a, trans_b, M, N, K, alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, beta, C,
                ldc, CUBLAS_COMPUTE_32F);
}

absl::Status GemmF32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                     int64_t ldc) {
  return GemmEx(trans_a, trans_b, M, N, K, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C,
                ldc, CUBLAS_COMPUTE_32F);
}

namespace {

// One row-major GEMM of a group: C = alpha op(A) op(B) + beta C, A/B bf16, C fp32.
struct Problem {
  bool ta, tb;
  int64_t M, N, K;
  const bf16_bits* A;
  int64_t lda;
  const bf16_bits* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
};

// cublasGemmGroupedBatchedEx (one call for all experts; sizes on the host, pointer arrays on the
// device) when this cuBLAS supports bf16 x bf16 -> fp32 there; otherwise, or with
// GRPO_CUDA_GROUPED_GEMM=0 in the environment, one cublasGemmEx per expert.
absl::Status GroupedGemm(const std::vector<Problem>& ps, float alpha, float beta) {
  static const bool disabled = [] {
    const char* e = std::getenv("GRPO_CUDA_GROUPED_GEMM");
    return e != nullptr && std::string(e) == "0";
  }();
  static std::atomic<bool> unsupported{false};  // host threads may share the discovery
  if (ps.empty()) return absl::OkStatus();
  if (!disabled && !unsupported) {
    auto h = Handle();
    if (!h.ok()) return h.status();
    const size_t G = ps.size();
    std::vector<cublasOperation_t> ta(G), tb(G);
    std::vector<int> m(G), n(G), k(G), lda(G), ldb(G), ldc(G), size(G, 1);
    std::vector<float> alphas(G, alpha), betas(G, beta);
    std::vector<const void*> ptrs(3 * G);
    for (size_t i = 0; i < G; ++i) {
      const Problem& p = ps[i];  // row-major -> column-major: swap the operands
      ta[i] = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      tb[i] = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      m[i] = static_cast<int>(p.N);
      n[i] = static_cast<int>(p.M);
      k[i] = static_cast<int>(p.K);
      lda[i] = static_cast<int>(p.ldb);
      ldb[i] = static_cast<int>(p.lda);
      ldc[i] = static_cast<int>(p.ldc);
      ptrs[i] = p.B;
      ptrs[G + i] = p.A;
      ptrs[2 * G + i] = p.C;
    }
    void* dev = nullptr;
    RETURN_IF_ERROR(GetScratch(kScratchGemmPtrs, sizeof(void*) * ptrs.size(), &dev));
    RETURN_IF_ERROR(CopyToDevice(dev, ptrs.data(), sizeof(void*) * ptrs.size()));
    const void* const* d = static_cast<const void* const*>(dev);
    const cublasStatus_t st = cublasGemmGroupedBatchedEx(
        *h, ta.data(), tb.data(), m.data(), n.data(), k.data(), alphas.data(), d, CUDA_R_16BF,
        lda.data(), d + G, CUDA_R_16BF, ldb.data(), betas.data(),
        const_cast<void* const*>(d + 2 * G), CUDA_R_32F, ldc.data(), static_cast<int>(G),
        size.data(), CUBLAS_COMPUTE_32F);
    if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE) {
      return CublasStatus(st, "cublasGemmGroupedBatchedEx");
    }
    unsupported = true;
    std::fprintf(stderr,
                 "grpo cuda: cublasGemmGroupedBatchedEx unsupported here (status %d); "
                 "looping over experts\n",
                 static_cast<int>(st));
  }
  for (const Problem& p : ps) {
    RETURN_IF_ERROR(
        GemmBf16(p.ta, p.tb, p.M, p.N, p.K, alpha, p.A, p.lda, p.B, p.ldb, beta, p.C, p.ldc));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GroupedLinearForward(float* y, const bf16_bits* x, const bf16_bits* W,
                                  const int64_t* begin, int64_t num_groups, int64_t in, int64_t out,
                                  float beta) {
  std::vector<Problem> ps;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t r0 = begin[g], n = begin[g + 1] - r0;
    if (n > 0)
      ps.push_back(
          {false, true, n, out, in, x + r0 * in, in, W + g * out * in, in, y + r0 * out, out});
  }
  return GroupedGemm(ps, 1.f, beta);
}

absl::Status GroupedLinearBackwardData(float* dx, const bf16_bits* dy, const bf16_bits* W,
                                       const int64_t* begin, int64_t num_groups, int64_t in,
                                       int64_t out) {
  std::vector<Problem> ps;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t r0 = begin[g], n = begin[g + 1] - r0;
    if (n > 0)
      ps.push_back(
          {false, false, n, in, out, dy + r0 * out, out, W + g * out * in, in, dx + r0 * in, in});
  }
  return GroupedGemm(ps, 1.f, 0.f);
}

absl::Status GroupedLinearBackwardWeight(float* dW, const bf16_bits* dy, const bf16_bits* x,
                                         const int64_t* begin, int64_t num_groups, int64_t in,
                                         int64_t out) {
  std::vector<Problem> ps;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t r0 = begin[g], n = begin[g + 1] - r0;
    if (n > 0)
      ps.push_back(
          {true, false, out, in, n, dy + r0 * out, out, x + r0 * in, in, dW + g * out * in, in});
  }
  return GroupedGemm(ps, 1.f, 1.f);
}

namespace {

// Row-major strided-batched C_g = alpha op(A_g) op(B_g) + beta C_g (see GemmEx for the swap).
absl::Status StridedBatched(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const bf16_bits* A,
                            int64_t lda, int64_t sA, const bf16_bits* B, int64_t ldb, int64_t sB,
                            float beta, float* C, int64_t ldc, int64_t sC, int64_t G) {
  if (M == 0 || N == 0 || K == 0 || G == 0) return absl::OkStatus();
  auto h = Handle();
  if (!h.ok()) return h.status();
  const float alpha = 1.f;
  return CublasStatus(
      cublasGemmStridedBatchedEx(
          *h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
          static_cast<int>(M), static_cast<int>(K), &alpha, B, CUDA_R_16BF, static_cast<int>(ldb),
          sB, A, CUDA_R_16BF, static_cast<int>(lda), sA, &beta, C, CUDA_R_32F,
          static_cast<int>(ldc), sC, static_cast<int>(G), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

}  // namespace

absl::Status BatchedLinearForward(float* y, const bf16_bits* x, const bf16_bits* W,
                                  int64_t num_groups, int64_t rows, int64_t in, int64_t out) {
  return StridedBatched(false, true, rows, out, in, x, in, rows * in, W, in, out * in, 0.f, y, out,
                        rows * out, num_groups);
}

absl::Status BatchedLinearBackwardData(float* dx, const bf16_bits* dy, const bf16_bits* W,
                                       int64_t num_groups, int64_t rows, int64_t in, int64_t out) {
  return StridedBatched(false, false, rows, in, out, dy, out, rows * out, W, in, out * in, 0.f, dx,
                        in, rows * in, num_groups);
}

absl::Status BatchedLinearBackwardWeight(float* dW, const bf16_bits* dy, const bf16_bits* x,
                                         int64_t num_groups, int64_t rows, int64_t in,
                                         int64_t out) {
  return StridedBatched(true, false, out, in, rows, dy, out, rows * out, x, in, rows * in, 1.f, dW,
                        in, out * in, num_groups);
}

}  // namespace grpo::cuda
