// The tensor-core tile of every matrix product of the CUDA backend (gemm.cu,
// lm_head.cu): a 128 x 128 block tile of C = op(A) op(B), K in steps of 32,
// 8 warps as 2 x 4, each warp 64 x 32 of C as 4 x 4 mma.sync.m16n8k16
// (bf16 in, fp32 accumulate). Operands are fp32 or bf16 in global memory, in
// any of the op table's layouts (op(A) = A or A^T, op(B) = B or B^T), and are
// converted to bf16 on their way into shared memory, stored there k-contiguous
// for both operands ([row][k] for A, [col][k] for B), which is the layout the
// mma fragments read with plain 32-bit loads; rows are padded by 8 halves so
// the fragment loads of a warp hit 32 different banks. Two shared-memory
// stages: the global loads of tile k+1 are in flight (in registers) while the
// tensor cores work on tile k. Bounds are checked on every load, so any
// m, n, k and leading dimension works (aligned rows take 16/8-byte loads).
#pragma once
#include "common.cuh"

namespace rlhf::cuda {

namespace tile {

constexpr int BM = 128, BN = 128, BK = 32, PAD = 8, LDS = BK + PAD;  // LDS in halves
constexpr int kThreads = 256;
constexpr int MI = 4, NI = 4;  // m16 / n8 tiles per warp

struct Smem {
  uint16_t a[2][BM][LDS];
  uint16_t b[2][BN][LDS];
};

// One operand as the tile loader sees it: element (r, kk) of the [rows, K]
// matrix op(X) (r = m for A, n for B) is x[r * rs + kk * ks]; exactly one of
// rs, ks is 1 ("k-contiguous" when ks == 1).
template <typename T>
struct Operand {
  const T* x;
  int64_t ld;
  bool kcontig;   // element (r, kk) at x[r*ld + kk]; else x[kk*ld + r]
  int64_t rows;   // extent of r
  bool vec;       // 4-element vector loads allowed (alignment of x and ld)
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_bf16_bits(lo)) | (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
}

// Four consecutive elements of the contiguous dimension, zero past `valid`.
template <typename T>
__device__ __forceinline__ void load4(const T* p, int valid, bool vec, float (&v)[4]);
template <>
__device__ __forceinline__ void load4<float>(const float* p, int valid, bool vec, float (&v)[4]) {
  if (vec && valid >= 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = e < valid ? p[e] : 0.f;
  }
}
template <>
__device__ __forceinline__ void load4<uint16_t>(const uint16_t* p, int valid, bool vec, float (&v)[4]) {
  if (vec && valid >= 4) {
    const uint2 q = *reinterpret_cast<const uint2*>(p);
    v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xffff0000u);
    v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xffff0000u);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = e < valid ? bf16_bits_to_f32(p[e]) : 0.f;
  }
}

// The 128 x 32 slab (rows r0.., k k0..) of one operand: 16 elements per
// thread, kept as 8 packed bf16 pairs until they are stored to shared memory.
//   k-contiguous: thread t takes row t/8 + 32p (p < 4), k (t%8)*4 .. +3
//   r-contiguous: thread t takes k t/32 + 8p, rows (t%32)*4 .. +3
template <typename T>
__device__ __forceinline__ void load_slab(const Operand<T>& op, int64_t r0, int64_t k0, int64_t K, uint32_t (&reg)[8]) {
  const int t = threadIdx.x;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    float v[4];
    if (op.kcontig) {
      const int64_t r = r0 + t / 8 + 32 * p, kk = k0 + (t % 8) * 4;
      const int valid = (r < op.rows) ? static_cast<int>((K - kk < 4 ? K - kk : 4)) : 0;
      if (valid > 0) load4(op.x + r * op.ld + kk, valid, op.vec, v);
      else v[0] = v[1] = v[2] = v[3] = 0.f;
    } else {
      const int64_t kk = k0 + t / 32 + 8 * p, r = r0 + (t % 32) * 4;
      const int valid = (kk < K) ? static_cast<int>((op.rows - r < 4 ? op.rows - r : 4)) : 0;
      if (valid > 0) load4(op.x + kk * op.ld + r, valid, op.vec, v);
      else v[0] = v[1] = v[2] = v[3] = 0.f;
    }
    reg[2 * p] = pack_bf16(v[0], v[1]);
    reg[2 * p + 1] = pack_bf16(v[2], v[3]);
  }
}

__device__ __forceinline__ void store_slab(bool kcontig, const uint32_t (&reg)[8], uint16_t (*s)[LDS]) {
  const int t = threadIdx.x;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    if (kcontig) {
      const int r = t / 8 + 32 * p, kk = (t % 8) * 4;
      *reinterpret_cast<uint2*>(&s[r][kk]) = make_uint2(reg[2 * p], reg[2 * p + 1]);
    } else {
      const int kk = t / 32 + 8 * p, r = (t % 32) * 4;
      s[r][kk] = static_cast<uint16_t>(reg[2 * p] & 0xffffu);
      s[r + 1][kk] = static_cast<uint16_t>(reg[2 * p] >> 16);
      s[r + 2][kk] = static_cast<uint16_t>(reg[2 * p + 1] & 0xffffu);
      s[r + 3][kk] = static_cast<uint16_t>(reg[2 * p + 1] >> 16);
    }
  }
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Warp (wm, wn) of the 2 x 4 grid; lane = 4 g + c. Accumulator element
// acc[mi][ni][h*2 + e] is C(row, col) with
//   row = wm*64 + mi*16 + g + 8h,  col = wn*32 + ni*8 + 2c + e.
__device__ __forceinline__ void mma_slab(const Smem& sm, int stage, float (&acc)[MI][NI][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int ks = 0; ks < BK; ks += 16) {
    uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      const int r = wm * 64 + mi * 16 + g;
      af[mi][0] = *reinterpret_cast<const uint32_t*>(&sm.a[stage][r][ks + 2 * c]);
      af[mi][1] = *reinterpret_cast<const uint32_t*>(&sm.a[stage][r + 8][ks + 2 * c]);
      af[mi][2] = *reinterpret_cast<const uint32_t*>(&sm.a[stage][r][ks + 2 * c + 8]);
      af[mi][3] = *reinterpret_cast<const uint32_t*>(&sm.a[stage][r + 8][ks + 2 * c + 8]);
    }
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
      const int col = wn * 32 + ni * 8 + g;
      bfr[ni][0] = *reinterpret_cast<const uint32_t*>(&sm.b[stage][col][ks + 2 * c]);
      bfr[ni][1] = *reinterpret_cast<const uint32_t*>(&sm.b[stage][col][ks + 2 * c + 8]);
    }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) mma_bf16(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
  }
}

// acc = op(A)[m0:m0+128, :] op(B)[:, n0:n0+128] over all of K (acc zeroed here).
// Ends with a __syncthreads, so the caller may reuse the shared memory.
template <typename TA, typename TB>
__device__ __forceinline__ void block_product(const Operand<TA>& A, const Operand<TB>& B, int64_t K, int64_t m0, int64_t n0,
                                              Smem& sm, float (&acc)[MI][NI][4], bool zero_acc = true) {
  // zero_acc = false adds this product to what acc holds (a second K
  // segment of the same output tile: the LoRA kernel's u B^T after x W^T).
  if (zero_acc) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
  }
  const int64_t KT = (K + BK - 1) / BK;
  if (KT == 0) return;
  uint32_t ra[8], rb[8];
  load_slab(A, m0, 0, K, ra);
  load_slab(B, n0, 0, K, rb);
  store_slab(A.kcontig, ra, sm.a[0]);
  store_slab(B.kcontig, rb, sm.b[0]);
  __syncthreads();
  for (int64_t kt = 0; kt < KT; ++kt) {
    const int stage = static_cast<int>(kt & 1);
    const bool more = kt + 1 < KT;
    if (more) {
      load_slab(A, m0, (kt + 1) * BK, K, ra);
      load_slab(B, n0, (kt + 1) * BK, K, rb);
    }
    mma_slab(sm, stage, acc);
    if (more) {
      store_slab(A.kcontig, ra, sm.a[stage ^ 1]);
      store_slab(B.kcontig, rb, sm.b[stage ^ 1]);
    }
    __syncthreads();
  }
}

// Host: describe op(A) ([m, k]) and op(B) ([k, n]) for the loader.
// Writes a block's accumulators to C[m0.., n0..] (rows ldc apart), adding
// the bias and, with accumulate, what C held; rows >= m and columns >= n are
// outside the matrix.
__device__ __forceinline__ void store_tile(const float (&acc)[MI][NI][4], int64_t m0, int64_t n0, float* c, int64_t ldc, int64_t m,
                                           int64_t n, const float* bias, bool accumulate) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = m0 + wm * 64 + mi * 16 + g + 8 * h;
      if (row >= m) continue;
      float* crow = c + row * ldc;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t col = n0 + wn * 32 + ni * 8 + 2 * q + e;
          if (col >= n) continue;
          float v = acc[mi][ni][h * 2 + e];
          if (accumulate) v += crow[col];
          if (bias) v += bias[col];
          crow[col] = v;
        }
    }
}

template <typename T>
inline Operand<T> operand_a(const T* a, int64_t lda, bool trans_a, int64_t m) {
  const bool vec = (reinterpret_cast<uintptr_t>(a) % (4 * sizeof(T)) == 0) && (lda % 4 == 0);
  return Operand<T>{a, lda, !trans_a, m, vec};
}
template <typename T>
inline Operand<T> operand_b(const T* b, int64_t ldb, bool trans_b, int64_t n) {
  const bool vec = (reinterpret_cast<uintptr_t>(b) % (4 * sizeof(T)) == 0) && (ldb % 4 == 0);
  return Operand<T>{b, ldb, trans_b, n, vec};
}

}  // namespace tile
}  // namespace rlhf::cuda
