// Body of the GEMM micro-kernels, included by gemm_avx2.cc and
// gemm_avx512.cc after they define `struct V`: the vector type T of W
// floats, the register tile MR x NR (NR = 2 W), kMaxRows (activation rows of
// the small-M path per register block) and the primitives used below.
// Includes no headers: everything here is compiled for that ISA only.
//
// micro / micro_a: an MR x NR tile of C kept in 2 MR vector registers; A from
// a packed panel or read in place, B rows of NR values at stride b_ks.
// rows_dot: the small-M (decode) path, see gemm_kernels.h.

namespace {

using T = V::T;
constexpr int MR = V::MR, NR = V::NR;

inline float b_at(const float* p) { return *p; }
inline float b_at(const uint16_t* p) { return bf16_to_f32(*p); }

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
  T acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V::zero();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const T b0 = V::load(pb);
    const T b1 = V::load(pb + V::W);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const T a = V::bcast(A.at(i));
      acc[i][0] = V::fmadd(a, b0, acc[i][0]);
      acc[i][1] = V::fmadd(a, b1, acc[i][1]);
    }
    A.next();
    pb += b_ks;
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      if (accumulate) {
        acc[i][0] = V::add(acc[i][0], V::load(ci));
        acc[i][1] = V::add(acc[i][1], V::load(ci + V::W));
      }
      V::store(ci, acc[i][0]);
      V::store(ci + V::W, acc[i][1]);
    }
    return;
  }
  alignas(64) float tile[MR * NR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    V::store(tile + i * NR, acc[i][0]);
    V::store(tile + i * NR + V::W, acc[i][1]);
  }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

void micro(int64_t kc, const float* pa, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr, int nr, bool accumulate) {
  micro_body(kc, PackedA{pa}, pb, b_ks, c, ldc, mr, nr, accumulate);
}

void micro_a(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr,
              int nr, bool accumulate) {
  DirectA A;
  A.ks = a_ks;
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) A.rows[i] = a + (i < mr ? i : 0) * a_rs;
  micro_body(kc, A, pb, b_ks, c, ldc, mr, nr, accumulate);
}

// Small-M path (decode): C[m, n] = dot(A[m, :], B[n, :]). Each register
// block is RM rows of A against RW = 3 rows of B, RM*RW accumulators. B is
// walked in chunks of rows that stay in L2 while every group of A rows passes
// over them, so the weights stream from memory once per call.
template <int RM, typename TB>
void dot_block(int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const TB* b, int64_t ldb, float* c, int64_t ldc,
               bool accumulate) {
  constexpr int RW = 3;
  const int64_t kv = k & ~int64_t(V::W - 1);
  int64_t n = n0;
  for (; n + RW <= n1; n += RW) {
    T acc[RM][RW];
#pragma GCC unroll 8
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 3
      for (int j = 0; j < RW; ++j) acc[i][j] = V::zero();
    const TB* b0 = b + n * ldb;
    for (int64_t kk = 0; kk < kv; kk += V::W) {
      T bv[RW];
#pragma GCC unroll 3
      for (int j = 0; j < RW; ++j) bv[j] = V::load_b(b0 + j * ldb + kk);
#pragma GCC unroll 8
      for (int i = 0; i < RM; ++i) {
        const T av = V::load(a + i * lda + kk);
#pragma GCC unroll 3
        for (int j = 0; j < RW; ++j) acc[i][j] = V::fmadd(av, bv[j], acc[i][j]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 3
      for (int j = 0; j < RW; ++j) {
        float s = V::hsum(acc[i][j]);
        for (int64_t kk = kv; kk < k; ++kk) s += a[i * lda + kk] * b_at(b + (n + j) * ldb + kk);
        float* dst = c + i * ldc + n + j;
        *dst = accumulate ? *dst + s : s;
      }
  }
  for (; n < n1; ++n)
    for (int i = 0; i < RM; ++i) {
      T acc = V::zero();
      for (int64_t kk = 0; kk < kv; kk += V::W) acc = V::fmadd(V::load(a + i * lda + kk), V::load_b(b + n * ldb + kk), acc);
      float s = V::hsum(acc);
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
    for (int64_t i = 0; i < m; i += V::kMaxRows) {
      const int64_t rm = m - i < V::kMaxRows ? m - i : V::kMaxRows;
      const float* ai = a + i * lda;
      float* ci = c + i * ldc;
      switch (rm) {
        case 1: dot_block<1, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 2: dot_block<2, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 3: dot_block<3, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 4: dot_block<4, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 5:
          if constexpr (V::kMaxRows >= 5) dot_block<5, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate);
          break;
        case 6:
          if constexpr (V::kMaxRows >= 6) dot_block<6, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate);
          break;
        case 7:
          if constexpr (V::kMaxRows >= 7) dot_block<7, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate);
          break;
        case 8:
          if constexpr (V::kMaxRows >= 8) dot_block<8, TB>(c0, c1, k, ai, lda, b, ldb, ci, ldc, accumulate);
          break;
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
