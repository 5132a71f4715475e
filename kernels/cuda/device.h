// CUDA device discovery, device memory ownership and the cuBLAS context, callable from code that
// never includes CUDA headers (DESIGN.md: kernels/cuda headers carry no CUDA types). Every call
// that can fail returns an absl::Status naming the CUDA/cuBLAS call and its error string.
//
// Streams: all work is issued on the legacy default stream, in order; functions are asynchronous
// unless they say otherwise, and Synchronize() surfaces errors of kernels still in flight. The
// one exception is a DeviceGraph capture, which records the capturing thread's work instead of
// running it, and replays it on the legacy default stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpo::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never an error).
int DeviceCount();
// Makes device `index` current for the calling thread (cudaSetDevice).
absl::Status SetDevice(int index);

// "NVIDIA H200 (sm_90, 139 GiB)" for device `index`, or why none is usable.
std::string DeviceDescription(int index);

// Waits for all queued work; returns the first asynchronous error, if any.
absl::Status Synchronize();

// A point in the current device's legacy default stream: Record() marks "everything queued so
// far", and Wait() returns once all of it has run. Wait() may be called from any thread, any
// number of times; it polls (no blocking driver call), so a stuck kernel costs a
// DEADLINE_EXCEEDED after `timeout`, not a hang. What a GPU backward hands a gradient all-reduce
// running on another stream (model/cuda_model.h set_grad_ready_callback).
class StreamMark {
 public:
  static absl::StatusOr<std::shared_ptr<StreamMark>> Record();
  ~StreamMark();
  StreamMark(const StreamMark&) = delete;
  StreamMark& operator=(const StreamMark&) = delete;
  absl::Status Wait(absl::Duration timeout) const;

 private:
  StreamMark(void* event, int device) : event_(event), device_(device) {}
  void* event_;  // cudaEvent_t
  int device_;
};

// A recorded sequence of device work (a CUDA graph), replayed by one launch: what turns a
// decode step's few hundred small launches into one. Capture() runs `fn` twice: once queued on
// the legacy stream like any other work (a warm-up: `fn` must be idempotent, and an error of its
// own comes back here), then with this thread's kernels, asynchronous copies and GEMMs going to
// a private capture stream, which records them without running them (so `fn` must not read
// results back). Synchronous copies, allocation and synchronization are not capturable:
// Capture() then returns the error (no graph), and the caller may run `fn` uncaptured instead.
// Other threads are unaffected (thread-local capture mode).
// The graph holds the pointers and sizes `fn` used: replaying it is valid while those
// allocations live and hold what `fn`'s kernels expect. Launch() queues it on the legacy default
// stream, in order with everything else. One graph at a time per thread may be captured.
class DeviceGraph {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceGraph>> Capture(
      const std::function<absl::Status()>& fn);
  ~DeviceGraph();
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;
  absl::Status Launch() const;

 private:
  DeviceGraph(void* graph, void* exec, int device) : graph_(graph), exec_(exec), device_(device) {}
  void* graph_;  // cudaGraph_t
  void* exec_;   // cudaGraphExec_t
  int device_;
};

// Seconds per call of `fn` (which queues device work) averaged over `iters` calls after one
// warm-up call, timed with CUDA events on the default stream.
absl::StatusOr<double> TimeOnDevice(const std::function<absl::Status()>& fn, int iters);

// Ceilings measured on this device for benchmarks: device-to-device copy bandwidth in bytes/s
// counting bytes read plus written (cudaMemcpy of `bytes`), and the dense bf16 GEMM rate in
// FLOP/s of an n x n x n cuBLAS product (random data, fp32 accumulation).
absl::StatusOr<double> MeasureCopyBandwidth(size_t bytes);
absl::StatusOr<double> MeasureBf16GemmRate(int64_t n);

// Optional per-op timing for benchmarks: on when the environment has GRPO_CUDA_TIMING=1. The
// model then synchronizes around each op it times (slower; only for finding where time goes).
bool OpTimingEnabled();
void AddOpTime(const std::string& name, double seconds);
std::string OpTimingReport();  // "name: total ms (calls)" lines, largest first; then resets

// Owns one device allocation (move-only). Empty when size is 0.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }
  // Synchronous copies of the first `bytes` bytes.
  absl::Status CopyFromHost(const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, size_t bytes) const;
  // Grows to at least `bytes` (contents are lost when it grows).
  absl::Status Reserve(size_t bytes);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Synchronous host <-> device copies and asynchronous device-side fills/copies.
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes);
absl::Status CopyToHost(void* dst, const void* src, size_t bytes);
absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes);
absl::Status Memset(void* dst, int value, size_t bytes);

// bf16 values are passed as their 16-bit patterns (uint16_t) in these headers.
using bf16_bits = uint16_t;
// Round-to-nearest-even fp32 -> bf16 and back, on the host (for tests and weight upload).
bf16_bits FloatToBf16(float x);
float Bf16ToFloat(bf16_bits x);

// C = alpha * op(A) @ op(B) + beta * C, row-major like cpu::Gemm: op(A) is (M,K), op(B) (K,N),
// C (M,N) fp32 with leading dimension ldc; A and B are bf16; fp32 accumulation (cuBLAS,
// CUBLAS_COMPUTE_32F). Uses a process-wide cuBLAS handle created on first use.
absl::Status GemmBf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const bf16_bits* A, int64_t lda, const bf16_bits* B, int64_t ldb, float beta,
                      float* C, int64_t ldc);

// Same with fp32 A, B, C (TF32 off: exact fp32 products), for tests and small fp32 work.
absl::Status GemmF32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                     int64_t ldc);

// Grouped GEMMs over experts, rows of each group contiguous: group g owns rows
// [begin[g], begin[g+1]) (begin: HOST array, num_groups+1) and weight W_g = W + g*out*in.
// One cublasGemmGroupedBatchedEx call where supported, else a cublasGemmEx per non-empty group.
// y[rows, out] (fp32, beta as given) = x[rows, in] (bf16) @ W_g[out, in]^T
absl::Status GroupedLinearForward(float* y, const bf16_bits* x, const bf16_bits* W,
                                  const int64_t* begin, int64_t num_groups, int64_t in, int64_t out,
                                  float beta);
// dx[rows, in] (fp32, overwritten) = dy[rows, out] (bf16) @ W_g[out, in]
absl::Status GroupedLinearBackwardData(float* dx, const bf16_bits* dy, const bf16_bits* W,
                                       const int64_t* begin, int64_t num_groups, int64_t in,
                                       int64_t out);
// dW_g[out, in] (fp32) += dy_g^T @ x_g
absl::Status GroupedLinearBackwardWeight(float* dW, const bf16_bits* dy, const bf16_bits* x,
                                         const int64_t* begin, int64_t num_groups, int64_t in,
                                         int64_t out);

// The same three products for experts padded to a fixed capacity: group g owns rows
// [g*rows, (g+1)*rows) whatever its real count (padding rows must hold zeros where the result
// matters: zero dy rows leave dW unchanged). One cublasGemmStridedBatchedEx call each.
absl::Status BatchedLinearForward(float* y, const bf16_bits* x, const bf16_bits* W,
                                  int64_t num_groups, int64_t rows, int64_t in, int64_t out);
absl::Status BatchedLinearBackwardData(float* dx, const bf16_bits* dy, const bf16_bits* W,
                                       int64_t num_groups, int64_t rows, int64_t in, int64_t out);
absl::Status BatchedLinearBackwardWeight(float* dW, const bf16_bits* dy, const bf16_bits* x,
                                         int64_t num_groups, int64_t rows, int64_t in, int64_t out);

}  // namespace grpo::cuda
