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

// A packed: row i of step k at pa[k*MR + i].
struct PackedA {
  const float* p;
  const float* at(int i) const { return p + i; }
  void next() { p += MR; }
};
// A read in place: row i at rows[i] (rows past mr alias row 0), advancing by ks.
struct DirectA {
  const float* rows[MR];
  int64_t ks;
  const float* at(int i) const { return rows[i]; }
  void next() {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) rows[i] += ks;
  }
};

template <typename AT>
inline void micro_body(int64_t kc, AT A, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr, int nr, bool accumulate) {
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
      const __m512 a = _mm512_set1_ps(*A.at(i));
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
    A.next();
    pb += b_ks;
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

void micro_12x32(int64_t kc, const float* pa, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr, int nr, bool accumulate) {
  micro_body(kc, PackedA{pa}, pb, b_ks, c, ldc, mr, nr, accumulate);
}

void micro_12x32_a(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr,
              int nr, bool accumulate) {
  DirectA A;
  A.ks = a_ks;
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) A.rows[i] = a + (i < mr ? i : 0) * a_rs;
  micro_body(kc, A, pb, b_ks, c, ldc, mr, nr, accumulate);
}

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// Loads 16 B values as floats, from fp32 or from bf16 (a bf16 is the top half of an fp32).
inline __m512 load_b(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_b(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline float b_at(const float* p) { return *p; }
inline float b_at(const uint16_t* p) { return bf16_to_f32(*p); }

// Small-M path (decode): C[m, n] = dot(A[m, :], B[n, :]). Each register
// block is RM rows of A against RW = 3 rows of B, RM*RW accumulators. B is
// walked in chunks of rows that stay in L2 while every group of A rows passes
// over them, so the weights stream from memory once per call.
template <int RM, typename TB>
void dot_block(int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const TB* b, int64_t ldb, float* c, int64_t ldc,
               bool accumulate) {
  constexpr int RW = 3;
  const int64_t kv = k & ~int64_t(15);
  int64_t n = n0;
  for (; n + RW <= n1; n += RW) {
    __m512 acc[RM][RW];
#pragma GCC unroll 8
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 3
      for (int j = 0; j < RW; ++j) acc[i][j] = _mm512_setzero_ps();
    const TB* b0 = b + n * ldb;
    for (int64_t kk = 0; kk < kv; kk += 16) {
      __m512 bv[RW];
#pragma GCC unroll 3
      for (int j = 0; j < RW; ++j) bv[j] = load_b(b0 + j * ldb + kk);
#pragma GCC unroll 8
      for (int i = 0; i < RM; ++i) {
        const __m512 av = _mm512_loadu_ps(a + i * lda + kk);
#pragma GCC unroll 3
        for (int j = 0; j < RW; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 3
      for (int j = 0; j < RW; ++j) {
        float s = hsum(acc[i][j]);
        for (int64_t kk = kv; kk < k; ++kk) s += a[i * lda + kk] * b_at(b + (n + j) * ldb + kk);
        float* dst = c + i * ldc + n + j;
        *dst = accumulate ? *dst + s : s;
      }
  }
  for (; n < n1; ++n)
    for (int i = 0; i < RM; ++i) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t kk = 0; kk < kv; kk += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i * lda + kk), load_b(b + n * ldb + kk), acc);
      float s = hsum(acc);
      for (int64_t kk = kv; kk < k; ++kk) s += a[i * lda + kk] * b_at(b + n * ldb + kk);
      float* dst = c + i * ldc + n;
      *dst = accumulate ? *dst + s : s;
    }
}

template <typename TB>
void rows_dot_t(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const TB* b, int64_t ldb, float* c,
                int64_t ldc, bool accumulate) {
  // Rows of B per chunk: ~96 KB, so the chunk is still in L2 for the next group of A rows.
  const int64_t chunk = k > 0 ? (24 * 1024 / k + 2) / 3 * 3 + 3 : 48;
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = c0 + chunk < n1 ? c0 + chunk : n1;
    for (int64_t i = 0; i < m; i += 8) {
      const int64_t rm = m - i < 8 ? m - i : 8;
      const float* ai = a + i * lda;
      float* ci = c + i * ldc;
      switch (rm) {
        case 1: dot_block<1, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 2: dot_block<2, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 3: dot_block<3, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 4: dot_block<4, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 5: dot_block<5, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 6: dot_block<6, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 7: dot_block<7, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 8: dot_block<8, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
      }
    }
  }
}

void rows_dot(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc, bool accumulate) {
  rows_dot_t(m, n0, n1, k, a, lda, b, ldb, c, ldc, accumulate);
}
void rows_dot_bf16(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                   float* c, int64_t ldc, bool accumulate) {
  rows_dot_t(m, n0, n1, k, a, lda, b, ldb, c, ldc, accumulate);
}

}  // namespace

const GemmKernel kGemmAvx512 = {"avx512", MR, NR, micro_12x32, micro_12x32_a, rows_dot, rows_dot_bf16};

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // __x86_64__
