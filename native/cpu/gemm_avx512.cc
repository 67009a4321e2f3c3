// AVX-512 micro-kernels for gemm.cc: a 12x32 register tile (24 zmm
// accumulators, 2 for B, 1 broadcast of A: 27 of the 32 zmm registers).
// Same structure as gemm_avx2.cc, twice the vector width and more rows.
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
namespace {

constexpr int MR = 12, NR = 32;

void micro_12x32(int64_t kc, const float* pa, const float* pb, float* c, int64_t ldc, int mr, int nr, bool accumulate) {
  // The C tile misses cache (it is touched once per K slab): start fetching
  // it now so the loads and stores at the end do not stall.
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(pb);
    const __m512 b1 = _mm512_loadu_ps(pb + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(pa[i]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
    pa += MR;
    pb += NR;
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      if (accumulate) {
        acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_loadu_ps(ci));
        acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_loadu_ps(ci + 16));
      }
      _mm512_storeu_ps(ci, acc[i][0]);
      _mm512_storeu_ps(ci + 16, acc[i][1]);
    }
    return;
  }
  alignas(64) float tile[MR * NR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    _mm512_store_ps(tile + i * NR, acc[i][0]);
    _mm512_store_ps(tile + i * NR + 16, acc[i][1]);
  }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// Up to 4 rows of A against 4 rows of B at a time: 16 accumulators, A and B
// each loaded once per 16 k. Each weight row is read from memory once per call.
template <int RM>
void dot_block(int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               bool accumulate) {
  const int64_t k8 = k & ~int64_t(15);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    __m512 acc[RM][4];
#pragma GCC unroll 4
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k8; kk += 16) {
      __m512 av[RM];
#pragma GCC unroll 4
      for (int i = 0; i < RM; ++i) av[i] = _mm512_loadu_ps(a + i * lda + kk);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512 bv = _mm512_loadu_ps(b + (n + j) * ldb + kk);
#pragma GCC unroll 4
        for (int i = 0; i < RM; ++i) acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        float s = hsum(acc[i][j]);
        for (int64_t kk = k8; kk < k; ++kk) s += a[i * lda + kk] * b[(n + j) * ldb + kk];
        float* dst = c + i * ldc + n + j;
        *dst = accumulate ? *dst + s : s;
      }
  }
  for (; n < n1; ++n) {
    for (int i = 0; i < RM; ++i) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t kk = 0; kk < k8; kk += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i * lda + kk), _mm512_loadu_ps(b + n * ldb + kk), acc);
      float s = hsum(acc);
      for (int64_t kk = k8; kk < k; ++kk) s += a[i * lda + kk] * b[n * ldb + kk];
      float* dst = c + i * ldc + n;
      *dst = accumulate ? *dst + s : s;
    }
  }
}

void rows_dot(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) dot_block<4>(n0, n1, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  if (m - i == 3) dot_block<3>(n0, n1, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  if (m - i == 2) dot_block<2>(n0, n1, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  if (m - i == 1) dot_block<1>(n0, n1, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
}

}  // namespace

const GemmKernel kGemmAvx512 = {"avx512", MR, NR, micro_12x32, rows_dot};

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // __x86_64__
