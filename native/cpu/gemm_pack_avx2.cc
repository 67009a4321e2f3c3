// AVX2 packing of full GEMM panels. Transposing ones: a Linear weight as B
// (y = x W^T: W is [N,K], the packed panel wants K-major rows of NR = 16
// columns) and a row-major A (panels of MR = 6 rows, interleaved per k), in
// 8x8 blocks through registers. Copying ones (B stored [K,N], A stored
// [K,M]): whole vectors per k instead of gemm.cc's float-by-float loops.
// Packing only moves values, so the GEMM's results are the same bits either way.
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>

#include "gemm_kernels.h"

namespace rlhf::cpu {
namespace {

inline float widen(float x) { return x; }
inline float widen(uint16_t x) { return bf16_to_f32(x); }

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {  // bf16 is the top half of an fp32
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// In place: r[i] holds row i (8 values); afterwards r[j] holds column j.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

constexpr int NR = 16, MR = 6;

// dst[k*16 + c] = b[c*ldb + k] for c < 16, k < kc.
template <typename TB>
void pack_b_trans_t(const TB* b, int64_t ldb, int64_t kc, float* dst) {
  const int64_t k8 = kc & ~int64_t(7);
  for (int half = 0; half < 2; ++half) {
    const TB* src = b + half * 8 * ldb;
    float* d = dst + half * 8;
    for (int64_t k = 0; k < k8; k += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) r[i] = load8(src + i * ldb + k);
      transpose8(r);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(d + (k + j) * NR, r[j]);
    }
    for (int64_t k = k8; k < kc; ++k)
      for (int i = 0; i < 8; ++i) d[k * NR + i] = widen(src[i * ldb + k]);
  }
}

// dst[k*16 + c] = b[k*ldb + c] for c < 16, k < kc.
template <typename TB>
void pack_b_rows_t(const TB* b, int64_t ldb, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    _mm256_storeu_ps(dst + k * NR, load8(b + k * ldb));
    _mm256_storeu_ps(dst + k * NR + 8, load8(b + k * ldb + 8));
  }
}

}  // namespace

void pack_b_rows_avx2(const float* b, int64_t ldb, int64_t kc, float* dst) { pack_b_rows_t(b, ldb, kc, dst); }
void pack_b_rows_bf16_avx2(const uint16_t* b, int64_t ldb, int64_t kc, float* dst) { pack_b_rows_t(b, ldb, kc, dst); }

// dst[k*6 + r] = a[k*lda + r] for r < 6, k < kc: a 4-float and a 2-float move per k.
void pack_a_cols_avx2(const float* a, int64_t lda, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = a + k * lda;
    float* d = dst + k * MR;
    _mm_storeu_ps(d, _mm_loadu_ps(s));
    _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), _mm_loadl_pi(_mm_setzero_ps(), reinterpret_cast<const __m64*>(s + 4)));
  }
}

void pack_b_trans_avx2(const float* b, int64_t ldb, int64_t kc, float* dst) { pack_b_trans_t(b, ldb, kc, dst); }
void pack_b_trans_bf16_avx2(const uint16_t* b, int64_t ldb, int64_t kc, float* dst) { pack_b_trans_t(b, ldb, kc, dst); }

// dst[k*6 + r] = a[r*lda + k] for r < 6, k < kc. Rows 6 and 7 of each 8x8
// block repeat row 5 (valid memory, never stored); each column's six values
// go out as a 4-float and a 2-float store, so nothing past the panel is written.
void pack_a_rows_avx2(const float* a, int64_t lda, int64_t kc, float* dst) {
  const int64_t k8 = kc & ~int64_t(7);
  for (int64_t k = 0; k < k8; k += 8) {
    __m256 r[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(a + (i < MR ? i : MR - 1) * lda + k);
    transpose8(r);
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      float* d = dst + (k + j) * MR;
      _mm_storeu_ps(d, _mm256_castps256_ps128(r[j]));
      _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), _mm256_extractf128_ps(r[j], 1));
    }
  }
  for (int64_t k = k8; k < kc; ++k)
    for (int i = 0; i < MR; ++i) dst[k * MR + i] = a[i * lda + k];
}

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // __x86_64__
