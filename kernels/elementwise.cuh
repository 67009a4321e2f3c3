// Launch helpers for row-strided element-wise kernels and deterministic
// column sums (weight/bias gradients): partial sums over fixed row slices,
// then the slices added in order.
#pragma once
#include <algorithm>

#include "common.cuh"

namespace rlhf::cuda {

// Grid for a [rows, cols] element-wise kernel: x over columns (256 per block),
// y over rows (grid-stride when rows exceed the grid limit).
inline dim3 rows_grid(int64_t rows, int64_t cols, int threads = 256) {
  const int64_t bx = std::max<int64_t>(1, (cols + threads - 1) / threads);
  const int64_t by = std::max<int64_t>(1, std::min<int64_t>(rows, 65535));
  return dim3(static_cast<unsigned>(std::min<int64_t>(bx, 1 << 30)), static_cast<unsigned>(by));
}
#define RLHF_FOR_ROWS(i, rows) for (int64_t i = blockIdx.y; i < (rows); i += gridDim.y)
#define RLHF_COL(j) const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x

// part[k][s][j] = sum over rows i of slice s of f(i, j)[k], rows in order.
template <int K, typename F>
__global__ void colsum_partial_kernel(int64_t n, int64_t dim, int64_t rows_per, F f, float* part, int splits) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int s = blockIdx.y;
  if (j >= dim) return;
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.f;
  const int64_t i0 = s * rows_per, i1 = min(n, i0 + rows_per);
  for (int64_t i = i0; i < i1; ++i) {
    float v[K];
    f(i, j, v);
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] += v[k];
  }
#pragma unroll
  for (int k = 0; k < K; ++k) part[(static_cast<int64_t>(k) * splits + s) * dim + j] = acc[k];
}

template <int K>
__global__ void colsum_finish_kernel(int64_t dim, int splits, const float* part, float* out0, float* out1) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= dim) return;
  float* outs[2] = {out0, out1};
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (!outs[k]) continue;
    float s = 0.f;
    for (int p = 0; p < splits; ++p) s += part[(static_cast<int64_t>(k) * splits + p) * dim + j];
    outs[k][j] += s;
  }
}

// out_k[j] += sum_i f(i, j)[k] for k < K (K <= 2; a null out_k is skipped).
// Deterministic: the row slices depend on n and dim only.
template <int K, typename F>
void colsum(CudaBackend& be, int64_t n, int64_t dim, const F& f, float* out0, float* out1 = nullptr) {
  if (n <= 0 || dim <= 0) return;
  const int64_t colblocks = (dim + 255) / 256;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>((n + 63) / 64, (4 * static_cast<int64_t>(be.sm_count()) + colblocks - 1) / colblocks));
  splits = std::min<int64_t>(splits, 65535);
  const int64_t rows_per = (n + splits - 1) / splits;
  splits = (n + rows_per - 1) / rows_per;
  float* part = static_cast<float*>(be.workspace(sizeof(float) * K * splits * dim));
  colsum_partial_kernel<K, F><<<dim3(static_cast<unsigned>(colblocks), static_cast<unsigned>(splits)), 256, 0, stream_of(be)>>>(
      n, dim, rows_per, f, part, static_cast<int>(splits));
  RLHF_CUDA_LAUNCHED();
  colsum_finish_kernel<K><<<static_cast<unsigned>(colblocks), 256, 0, stream_of(be)>>>(dim, static_cast<int>(splits), part, out0, out1);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
