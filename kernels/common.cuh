// Shared pieces of the CUDA kernels: error checking (every runtime call and
// every launch; failures become rlhf::Error E_CUDA), warp/block reductions,
// bfloat16 conversion, launch-size helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../native/error.h"
#include "../native/ops/math.h"
#include "cuda_backend.h"

namespace rlhf::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw Error(code::kCuda, std::string(what) + " failed: " + cudaGetErrorName(e) + " (" + std::to_string(static_cast<int>(e)) +
                               "): " + cudaGetErrorString(e) + " [" + file + ":" + std::to_string(line) + "]");
}

#define RLHF_CUDA_CHECK(expr)                                              \
  do {                                                                     \
    cudaError_t rlhf_err_ = (expr);                                        \
    if (rlhf_err_ != cudaSuccess) ::rlhf::cuda::throw_cuda(rlhf_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch: launch-configuration errors surface here.
#define RLHF_CUDA_LAUNCHED() RLHF_CUDA_CHECK(cudaGetLastError())

inline cudaStream_t stream_of(const CudaBackend& be) { return static_cast<cudaStream_t>(be.stream()); }

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < cap ? b : cap);
}

// ---------------------------------------------------------------- bf16
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }
// Round to nearest even (NaN kept NaN), as torch's float -> bfloat16.
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const uint16_t* p) { return bf16_bits_to_f32(*p); }

// ---------------------------------------------------------------- reductions
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets
// the result. `sh` holds 32 values of T. The order is fixed for a given block
// size, so results are deterministic.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T r = lane < warps ? sh[lane] : T(0);
  r = warp_sum(r);
  return r;
}
__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float r = lane < warps ? sh[lane] : -INFINITY;
  return warp_max(r);
}

// K sums at once (fp64), every thread gets all K; sh holds 32*K doubles.
template <int K>
__device__ __forceinline__ void block_sum_n(double (&v)[K], double* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  __syncthreads();
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) sh[k * 32 + warp] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < warps ? sh[k * 32 + lane] : 0.0);
}

}  // namespace rlhf::cuda
