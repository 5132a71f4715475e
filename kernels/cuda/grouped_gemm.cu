// Expert GEMMs whose group sizes live on the device (ops.h GroupedLinearForwardDevice): bf16
// tensor-core tiles (WMMA 16x16x16, fp32 accumulation), so an MoE layer needs no host round trip
// for its expert loads and a decode step of any batch size can be one CUDA graph.
//
// Block tile: 64 rows x 64 output columns, K in slices of 32 staged in shared memory; 4 warps,
// each owning a 32 x 32 quarter (2 x 2 fragments). Grid: (output tiles, row tiles, groups); a
// block walks the row tiles of its group in strides of gridDim.y, so a group larger than the
// caller's bound is still covered, and returns at once when its group has no rows there.
#include <mma.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grpo::cuda {
namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 32;
constexpr int kPadK = kTileK + 8;  // bf16 row stride of staged tiles (16-byte rows stay aligned)
constexpr int kPadN = kTileN + 4;  // fp32 row stride of the output staging
constexpr int kThreads = 128;      // 4 warps

// Stages rows [r0, r0 + 64) x columns [k0, k0 + 32) of a (rows, ld) bf16 matrix into dst (64 x
// kPadK), zeros outside [r0, r_end) x [0, K). kVec: 16-byte chunks (K % 8 == 0, 16-byte aligned
// rows); else element by element.
template <bool kVec>
__device__ __forceinline__ void StageTile(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t r0,
                                          int64_t r_end, int64_t k0, int64_t K, int64_t ld) {
  if constexpr (kVec) {
    for (int c = threadIdx.x; c < kTileM * (kTileK / 8); c += kThreads) {
      const int r = c / (kTileK / 8), kc = (c % (kTileK / 8)) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r0 + r < r_end && k0 + kc < K) {
        v = *reinterpret_cast<const uint4*>(src + (r0 + r) * ld + k0 + kc);
      }
      *reinterpret_cast<uint4*>(dst + r * kPadK + kc) = v;
    }
  } else {
    for (int c = threadIdx.x; c < kTileM * kTileK; c += kThreads) {
      const int r = c / kTileK, kc = c % kTileK;
      __nv_bfloat16 v = __float2bfloat16(0.f);
      if (r0 + r < r_end && k0 + kc < K) v = src[(r0 + r) * ld + k0 + kc];
      dst[r * kPadK + kc] = v;
    }
  }
}

// y[r, n] = sum_k x[r, k] * W_g[n, k] for rows r of group g = blockIdx.z.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    grouped_gemm_kernel(float* y, const __nv_bfloat16* x, const __nv_bfloat16* W,
                        const int64_t* begin, int64_t in, int64_t out) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 As[kTileM * kPadK];
  __shared__ __align__(32) __nv_bfloat16 Bs[kTileN * kPadK];
  __shared__ __align__(32) float Cs[kTileM * kPadN];
  const int64_t g = blockIdx.z;
  const int64_t g_begin = begin[g], g_end = begin[g + 1];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const __nv_bfloat16* Wg = W + g * out * in;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  for (int64_t r0 = g_begin + static_cast<int64_t>(blockIdx.y) * kTileM; r0 < g_end;
       r0 += static_cast<int64_t>(gridDim.y) * kTileM) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    for (int64_t k0 = 0; k0 < in; k0 += kTileK) {
      __syncthreads();  // the previous slice (or tile's output) is no longer read
      StageTile<kVec>(As, x, r0, g_end, k0, in, in);
      StageTile<kVec>(Bs, Wg, n0, out, k0, in, in);
      __syncthreads();
      for (int kk = 0; kk < kTileK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
        for (int i = 0; i < 2; ++i) {
          wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * kPadK + kk, kPadK);
        }
        // B (K x N) column-major is W's rows: element (k, n) at Bs[n * kPadK + k].
        for (int j = 0; j < 2; ++j) {
          wmma::load_matrix_sync(b[j], Bs + (wn * 32 + j * 16) * kPadK + kk, kPadK);
        }
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kPadN + wn * 32 + j * 16, acc[i][j],
                                kPadN, wmma::mem_row_major);
      }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < kTileM * kTileN; c += kThreads) {
      const int r = c / kTileN, n = c % kTileN;
      if (r0 + r < g_end && n0 + n < out) y[(r0 + r) * out + n0 + n] = Cs[r * kPadN + n];
    }
  }
}

// begin[0] = 0, begin[e + 1] = begin[e] + counts[e]: one thread (E <= 1024, a few hundred adds).
__global__ void expert_begin_kernel(int64_t* begin, const int32_t* counts, int64_t E) {
  int64_t s = 0;
  begin[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    s += counts[e];
    begin[e + 1] = s;
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

absl::Status ExpertBeginFromCounts(int64_t* begin, const int32_t* counts, int64_t E) {
  if (E <= 0) return absl::InvalidArgumentError("ExpertBeginFromCounts: need E > 0");
  expert_begin_kernel<<<1, 1, 0, Stream()>>>(begin, counts, E);
  return LaunchStatus("expert_begin_kernel");
}

absl::Status GroupedLinearForwardDevice(float* y, const bf16_bits* x, const bf16_bits* W,
                                        const int64_t* begin, int64_t num_groups, int64_t max_rows,
                                        int64_t in, int64_t out) {
  if (num_groups == 0 || out == 0 || max_rows <= 0) return absl::OkStatus();
  if (in <= 0 || num_groups > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedLinearForwardDevice: need in (", in,
                                                   ") > 0 and at most 65535 groups (", num_groups,
                                                   ")"));
  }
  const dim3 grid(CeilDiv(out, kTileN), std::min<unsigned>(CeilDiv(max_rows, kTileM), 65535),
                  static_cast<unsigned>(num_groups));
  const auto* xb = reinterpret_cast<const __nv_bfloat16*>(x);
  const auto* wb = reinterpret_cast<const __nv_bfloat16*>(W);
  if (in % 8 == 0 && Aligned16(x) && Aligned16(W)) {
    grouped_gemm_kernel<true><<<grid, kThreads, 0, Stream()>>>(y, xb, wb, begin, in, out);
  } else {
    grouped_gemm_kernel<false><<<grid, kThreads, 0, Stream()>>>(y, xb, wb, begin, in, out);
  }
  return LaunchStatus("grouped_gemm_kernel");
}

}  // namespace grpo::cuda
