// AVX-512 instantiation of the GEMM micro-kernels (gemm_impl.h): a 12x32
// register tile, and the small-M path in blocks of up to 8 rows.
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_kernels.h"

namespace rlhf::cpu {
namespace gemm_avx512 {

struct V {
  using T = __m512;
  static constexpr int W = 16, MR = 12, NR = 32;  // 24 zmm accumulators + 2 for B + 1 broadcast of A
  static constexpr int kMaxRows = 8;               // small-M block: 8 x 3 accumulators
  static T zero() { return _mm512_setzero_ps(); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static T load_b(const float* p) { return _mm512_loadu_ps(p); }
  static T load_b(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
};

#include "gemm_impl.h"

}  // namespace gemm_avx512

const GemmKernel kGemmAvx512 = {"avx512", gemm_avx512::MR, gemm_avx512::NR, gemm_avx512::micro, gemm_avx512::micro_a, gemm_avx512::rows_dot, gemm_avx512::rows_dot_bf16,
                               nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // __x86_64__
