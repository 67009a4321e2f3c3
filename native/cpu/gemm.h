// fp32 GEMM for the CPU backend: C = op(A) op(B) (+ C), row-major.
//
//   op(A) is [M,K]: A itself (lda >= K) or, with trans_a, the transpose of a
//   stored [K,M] matrix (lda >= M). op(B) is [K,N]: B itself ([K,N], ldb >= N)
//   or, with trans_b, the transpose of a stored [N,K] matrix (ldb >= K) — the
//   layout of a Hugging Face Linear weight, so y = x W^T is gemm(false, true).
//
// Blocked as in BLIS/GotoBLAS: K in slabs, N in NC blocks; A and B are
// packed into MR-row / NR-column micro-panels so the micro-kernel streams
// both from contiguous memory; the micro-kernel keeps an MR x NR tile of C in
// registers. AVX-512 or AVX2+FMA kernels are picked at run time, with a
// scalar fallback. Small M (decode) takes a dot-product path that reads each
// weight row once.
#pragma once
#include <cstdint>

namespace rlhf::cpu {

class ThreadPool;

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  const uint16_t* b16 = nullptr;  // B in bfloat16 instead of `b` (frozen weights)
  float* c = nullptr;
  int64_t ldc = 0;
  bool accumulate = false;  // C += op(A) op(B) instead of C = ...
  // op(A) already packed by gemm_pack_a (same m, k, trans_a, a): the blocked
  // path reads it instead of packing A again. `a` must still be set (the
  // small-M path reads A in place).
  const float* a_packed = nullptr;
  // K extension (LoRA's expand, fused into the base product): with k_ext > 0,
  // C (+)= op(A) op(B) + A_ext B_ext^T, A_ext [M, k_ext] row-major (lda_ext),
  // B_ext [N, k_ext] (ldb_ext, a Linear weight's layout), fp32. The extra
  // k_ext terms join the last K slab, so C is written once. For y = x W^T
  // (trans_b, no trans_a, no a_packed); other calls run it as a second product.
  const float* a_ext = nullptr;
  int64_t lda_ext = 0;
  const float* b_ext = nullptr;
  int64_t ldb_ext = 0;
  int64_t k_ext = 0;
};

void gemm_f32(const GemmArgs& g, ThreadPool& pool);
// C[i, :] += bias for the m rows of C (a Linear's bias after its product).
void add_bias_rows(const float* bias, float* c, int64_t ldc, int64_t m, int64_t n, ThreadPool& pool);
// The same on the calling thread only, for ops that already run one task per
// thread (attention blocks).
void gemm_f32_serial(const GemmArgs& g);

// Packs op(A) of g, all of K, as gemm_f32 reads it through GemmArgs::a_packed:
// for a caller that multiplies one A by many B's (the LM head: one block of
// hidden rows against every vocabulary chunk) and would otherwise repack A
// for each. dst holds gemm_packed_a_floats(g.m, g.k) floats.
int64_t gemm_packed_a_floats(int64_t m, int64_t k);
void gemm_pack_a(const GemmArgs& g, float* dst, ThreadPool& pool);

// Scratch of the calling thread, kept (and grown, never shrunk) between
// calls: slot s is one buffer of at least n floats, contents undefined, valid
// until the next call with the same slot on this thread. For multi-MB packing
// and logits buffers, which a fresh allocation per call would map and the
// kernel zero page by page each time. Slots 0-1: gemm_f32; 2-3: the LM head;
// 4: gemm_f32's per-task A blocks (on the pool's threads).
float* thread_scratch(int slot, int64_t n);
constexpr int kScratchSlots = 5;

// Which kernel gemm_f32 uses on this CPU: "avx512" | "avx2" | "scalar".
const char* gemm_kernel_name();
// Testing hook: force a kernel ("avx512", "avx2", "scalar"); returns false if this CPU lacks it.
bool gemm_force_kernel(const char* name);

}  // namespace rlhf::cpu
