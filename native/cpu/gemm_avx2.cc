// AVX2 + FMA instantiation of the GEMM micro-kernels (gemm_impl.h): a 6x16
// register tile, and the small-M path in blocks of up to 4 rows.
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_kernels.h"

namespace rlhf::cpu {
namespace gemm_avx2 {

struct V {
  using T = __m256;
  static constexpr int W = 8, MR = 6, NR = 16;  // 12 ymm accumulators + 2 for B + 1 broadcast of A
  static constexpr int kMaxRows = 4;             // small-M block: 4 x 3 accumulators
  static T zero() { return _mm256_setzero_ps(); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // B values as floats, from fp32 or from bf16 (a bf16 is the top half of an fp32).
  static T load_b(const float* p) { return _mm256_loadu_ps(p); }
  static T load_b(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};

#include "gemm_impl.h"

}  // namespace gemm_avx2

const GemmKernel kGemmAvx2 = {"avx2", gemm_avx2::MR, gemm_avx2::NR, gemm_avx2::micro, gemm_avx2::micro_a, gemm_avx2::rows_dot, gemm_avx2::rows_dot_bf16,
                             pack_b_trans_avx2, pack_b_trans_bf16_avx2, pack_b_rows_avx2, pack_b_rows_bf16_avx2,
                             pack_a_rows_avx2, pack_a_cols_avx2};

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // __x86_64__
