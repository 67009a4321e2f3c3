// Micro-kernels of the fp32 GEMM, one set per instruction set, each compiled
// in its own translation unit with that ISA enabled (gemm_avx2.cc,
// gemm_avx512.cc) and picked at run time by gemm.cc. Those units include no
// standard-library headers, so no inline library code compiled for a newer
// ISA can leak into code that runs on older CPUs.
#pragma once
#include <cstdint>

namespace rlhf::cpu {

struct GemmKernel {
  const char* name;
  int mr, nr;  // register tile of C
  // C[0:mr,0:nr] (= or +=) sum_k pa[k*MR + i] * pb[k*b_ks + j]. pa is a packed
  // panel of full MR width (zero padded); B's row k holds NR values (packed:
  // b_ks = NR; read in place from a row-major B: b_ks = ldb); mr/nr <= MR/NR
  // are the valid part.
  void (*micro)(int64_t kc, const float* pa, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr, int nr, bool accumulate);
  // The same reading A in place: element (i, k) at a[i * a_rs + k * a_ks]
  // (rows past mr are never read). B's row k is at pb + k * b_ks (NR values).
  void (*micro_a)(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* pb, int64_t b_ks, float* c, int64_t ldc,
                  int mr, int nr, bool accumulate);
  // Small-M path: C[m, n0:n1] (= or +=) dot(A[m,:K], B[n,:K]) for m < M <= 8.
  void (*rows_dot)(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                   float* c, int64_t ldc, bool accumulate);
  // The same with B in bfloat16 (widened in registers): half the bytes to stream.
  void (*rows_dot_bf16)(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const uint16_t* b,
                        int64_t ldb, float* c, int64_t ldc, bool accumulate);
  // Vectorised packing of a full panel, or null (gemm.cc's scalar loops then):
  // pack_b_trans: dst[k*NR + c] = B[c*ldb + k] (B stored [N,K], c < NR);
  // pack_b_rows:  dst[k*NR + c] = B[k*ldb + c] (B stored [K,N]);
  // pack_a_rows:  dst[k*MR + r] = A[r*lda + k] (A stored [M,K], r < MR);
  // pack_a_cols:  dst[k*MR + r] = A[k*lda + r] (A stored [K,M]).
  void (*pack_b_trans)(const float* b, int64_t ldb, int64_t kc, float* dst);
  void (*pack_b_trans_bf16)(const uint16_t* b, int64_t ldb, int64_t kc, float* dst);
  void (*pack_b_rows)(const float* b, int64_t ldb, int64_t kc, float* dst);
  void (*pack_b_rows_bf16)(const uint16_t* b, int64_t ldb, int64_t kc, float* dst);
  void (*pack_a_rows)(const float* a, int64_t lda, int64_t kc, float* dst);
  void (*pack_a_cols)(const float* a, int64_t lda, int64_t kc, float* dst);
};

static inline float bf16_to_f32(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } v{static_cast<uint32_t>(h) << 16};
  return v.f;
}

extern const GemmKernel kGemmScalar;
#if defined(__x86_64__)
extern const GemmKernel kGemmAvx2;
void pack_b_trans_avx2(const float* b, int64_t ldb, int64_t kc, float* dst);  // gemm_pack_avx2.cc
void pack_b_trans_bf16_avx2(const uint16_t* b, int64_t ldb, int64_t kc, float* dst);
void pack_b_rows_avx2(const float* b, int64_t ldb, int64_t kc, float* dst);
void pack_b_rows_bf16_avx2(const uint16_t* b, int64_t ldb, int64_t kc, float* dst);
void pack_a_rows_avx2(const float* a, int64_t lda, int64_t kc, float* dst);
void pack_a_cols_avx2(const float* a, int64_t lda, int64_t kc, float* dst);
extern const GemmKernel kGemmAvx512;
#endif

}  // namespace rlhf::cpu
