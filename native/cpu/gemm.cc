#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "gemm_kernels.h"
#include "threadpool.h"
#include "vec.h"

namespace rlhf::cpu {

// ---------------------------------------------------------------- scalar kernel
namespace {
constexpr int kScalarMR = 4, kScalarNR = 8;

void scalar_micro_a(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* pb, int64_t b_ks, float* c, int64_t ldc,
                    int mr, int nr, bool accumulate) {
  float acc[kScalarMR][kScalarNR] = {};
  for (int64_t k = 0; k < kc; ++k, pb += b_ks)
    for (int i = 0; i < mr; ++i)
      for (int j = 0; j < kScalarNR; ++j) acc[i][j] += a[i * a_rs + k * a_ks] * pb[j];
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

void scalar_micro(int64_t kc, const float* pa, const float* pb, int64_t b_ks, float* c, int64_t ldc, int mr, int nr, bool accumulate) {
  scalar_micro_a(kc, pa, 1, kScalarMR, pb, b_ks, c, ldc, mr, nr, accumulate);
}

void scalar_rows_dot(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                     float* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t n = n0; n < n1; ++n) {
      float s = 0;
      for (int64_t kk = 0; kk < k; ++kk) s += a[i * lda + kk] * b[n * ldb + kk];
      c[i * ldc + n] = accumulate ? c[i * ldc + n] + s : s;
    }
}
void scalar_rows_dot_bf16(int64_t m, int64_t n0, int64_t n1, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                          float* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t n = n0; n < n1; ++n) {
      float s = 0;
      for (int64_t kk = 0; kk < k; ++kk) s += a[i * lda + kk] * bf16_to_f32(b[n * ldb + kk]);
      c[i * ldc + n] = accumulate ? c[i * ldc + n] + s : s;
    }
}
}  // namespace

const GemmKernel kGemmScalar = {"scalar", kScalarMR, kScalarNR, scalar_micro, scalar_micro_a, scalar_rows_dot, scalar_rows_dot_bf16,
                                 nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};

// ---------------------------------------------------------------- dispatch
namespace {
const GemmKernel* detect_kernel() {
#if defined(__x86_64__)
  const Features& f = features();
  if (f.avx512f && f.avx512bw && f.avx512vl) return &kGemmAvx512;
  if (f.avx2 && f.fma) return &kGemmAvx2;
#endif
  return &kGemmScalar;
}
std::atomic<const GemmKernel*> g_kernel{nullptr};

const GemmKernel& kernel() {
  const GemmKernel* k = g_kernel.load(std::memory_order_acquire);
  if (!k) {
    k = detect_kernel();
    g_kernel.store(k, std::memory_order_release);
  }
  return *k;
}

// Cache blocking. A KC x NR panel of B is reused from L1/L2 while MR x KC
// slivers of A stream; the packed MC x KC block of A lives in L2; the packed
// KC x NC block of B in L2/L3.
constexpr int64_t KC = 256;
// Depth of the K slabs for a given K. 32-wide B panels (AVX-512): KC. 16-wide
// (AVX2): K in equal slabs of at most 3 KC (multiples of 8): K = 512 in one
// slab, 1408 in two of 704, the LM head's 32000 in 42 of at most 768. Each
// slab passes over C once (load, add, store) and repacks both operands, so
// fewer, deeper slabs pay that less often; the B panel (up to 48 KB) then
// streams from L2 with the prefetchers keeping up. Measured in-process against
// slabs of 256 (AVX2, 12-50 pairs per shape): the M training GEMMs 2-4%
// faster, dh = dz W (K = 32000) 7%; one slab for K = 1024 was 2-3% slower
// on the weight-gradient shapes. (Rounding follows the slab boundaries:
// deterministic, and the same for every thread count.)
inline int64_t slab_depth(int64_t k, int nr) {
  if (nr > 16) return KC;
  const int64_t slabs = (k + 3 * KC - 1) / (3 * KC);
  return ((k + slabs - 1) / slabs + 7) / 8 * 8;
}
constexpr int64_t MC = 192;   // multiple of 6 and 12
constexpr int64_t NC = 1536;  // multiple of 16 and 32
constexpr int64_t kSmallM = 8;

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float, AlignedFree>;

Buffer alloc_floats(int64_t n) {
  size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) & ~size_t(63);
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  if (!p) throw std::bad_alloc();
  return Buffer(static_cast<float*>(p));
}

// op(A)[i, k] for the packing loops.
inline float a_at(const GemmArgs& g, int64_t i, int64_t k) { return g.trans_a ? g.a[k * g.lda + i] : g.a[i * g.lda + k]; }

// Packs rows [i0, i0+mr) x cols [k0, k0+kc) of op(A) as one MR-row micro-panel:
// dst[k*MR + r], zero-padding rows past mr.
void pack_a_panel(const GemmArgs& g, const GemmKernel& kern, int64_t i0, int mr, int64_t k0, int64_t kc, float* dst) {
  const int MR = kern.mr;
  if (!g.trans_a && mr == MR && kern.pack_a_rows) return kern.pack_a_rows(g.a + i0 * g.lda + k0, g.lda, kc, dst);
  if (g.trans_a && mr == MR && kern.pack_a_cols) return kern.pack_a_cols(g.a + k0 * g.lda + i0, g.lda, kc, dst);
  if (!g.trans_a) {
    // mr row streams read in step, one contiguous write stream.
    const float* src[16];
    for (int r = 0; r < mr; ++r) src[r] = g.a + (i0 + r) * g.lda + k0;
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * MR;
      int r = 0;
      for (; r < mr; ++r) d[r] = src[r][k];
      for (; r < MR; ++r) d[r] = 0.f;
    }
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = g.a + (k0 + k) * g.lda + i0;
      float* d = dst + k * MR;
      int r = 0;
      for (; r < mr; ++r) d[r] = src[r];
      for (; r < MR; ++r) d[r] = 0.f;
    }
  }
}

inline float widen(float x) { return x; }
inline float widen(uint16_t x) { return bf16_to_f32(x); }

// Packs cols [j0, j0+nr) x rows [k0, k0+kc) of op(B) as one NR-column
// micro-panel: dst[k*NR + c], widening bf16 weights to fp32 on the way.
template <typename TB>
void pack_b_panel_t(const GemmArgs& g, const TB* b, int NR, int64_t j0, int nr, int64_t k0, int64_t kc, float* dst) {
  if (g.trans_b) {  // B stored [N,K]: column j of op(B) is row j of B
    // nr row streams read in step, one contiguous write stream.
    const TB* src[32];
    for (int c = 0; c < nr; ++c) src[c] = b + (j0 + c) * g.ldb + k0;
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * NR;
      int c = 0;
      for (; c < nr; ++c) d[c] = widen(src[c][k]);
      for (; c < NR; ++c) d[c] = 0.f;
    }
  } else {  // B stored [K,N]
    for (int64_t k = 0; k < kc; ++k) {
      const TB* src = b + (k0 + k) * g.ldb + j0;
      float* d = dst + k * NR;
      int c = 0;
      for (; c < nr; ++c) d[c] = widen(src[c]);
      for (; c < NR; ++c) d[c] = 0.f;
    }
  }
}

void pack_b_panel(const GemmArgs& g, const GemmKernel& kern, int64_t j0, int nr, int64_t k0, int64_t kc, float* dst) {
  const int NR = kern.nr;
  if (g.trans_b && nr == NR) {
    if (g.b16 && kern.pack_b_trans_bf16) return kern.pack_b_trans_bf16(g.b16 + j0 * g.ldb + k0, g.ldb, kc, dst);
    if (!g.b16 && kern.pack_b_trans) return kern.pack_b_trans(g.b + j0 * g.ldb + k0, g.ldb, kc, dst);
  }
  if (!g.trans_b && nr == NR) {
    if (g.b16 && kern.pack_b_rows_bf16) return kern.pack_b_rows_bf16(g.b16 + k0 * g.ldb + j0, g.ldb, kc, dst);
    if (!g.b16 && kern.pack_b_rows) return kern.pack_b_rows(g.b + k0 * g.ldb + j0, g.ldb, kc, dst);
  }
  if (g.b16) pack_b_panel_t(g, g.b16, NR, j0, nr, k0, kc, dst);
  else pack_b_panel_t(g, g.b, NR, j0, nr, k0, kc, dst);
}

// The K extension as a product of its own: op(A) = A_ext, op(B) = B_ext^T (a
// Linear weight's layout). Its panels are packed by pack_a_panel /
// pack_b_panel over K [0, k_ext), right after the last slab's kc_main
// columns (rows) of the same panel.
GemmArgs ext_args(const GemmArgs& g) {
  GemmArgs e;
  e.trans_b = true;
  e.m = g.m, e.n = g.n, e.k = g.k_ext, e.a = g.a_ext, e.lda = g.lda_ext, e.b = g.b_ext, e.ldb = g.ldb_ext;
  e.c = g.c, e.ldc = g.ldc, e.accumulate = true;
  return e;
}

void gemm_small_m(const GemmArgs& g, const GemmKernel& kern, ThreadPool& pool) {
  // Split N into chunks of whole 4-row groups; enough chunks to balance threads.
  const int64_t chunk = std::max<int64_t>(16, ((g.n + 4 * pool.size() - 1) / (4 * pool.size()) + 3) / 4 * 4);
  const int64_t tasks = (g.n + chunk - 1) / chunk;
  pool.parallel_for(tasks, [&](int64_t t, int) {
    const int64_t n0 = t * chunk, n1 = std::min(g.n, n0 + chunk);
    if (g.b16) kern.rows_dot_bf16(g.m, n0, n1, g.k, g.a, g.lda, g.b16, g.ldb, g.c, g.ldc, g.accumulate);
    else kern.rows_dot(g.m, n0, n1, g.k, g.a, g.lda, g.b, g.ldb, g.c, g.ldc, g.accumulate);
  });
}

void gemm_blocked(const GemmArgs& g, const GemmKernel& kern, ThreadPool& pool) {
  const int MR = kern.mr, NR = kern.nr;
  // Packing pays for itself when the packed panel is reused many times.
  // Otherwise A is read in place: when there are few B panels to reuse it
  // across (skinny outputs such as LoRA's rank-r products). A B panel read in
  // place strides rows ldb apart, which map to a few L1 sets and thrash when
  // it is reused (measured slower for the backward's row-major B), so B is
  // packed unless op(A) has at most 3 panels of rows (LoRA's dA += du^T x,
  // r = 16 rows: packing would copy all of x to use each value 3 times).
  // A packed by the caller (gemm_pack_a) is read as it is.
  const bool prepacked = g.a_packed != nullptr;
  const bool direct_a = !prepacked && g.n <= 2 * NR;
  const bool direct_b = !g.trans_b && !g.b16 && (g.m + MR - 1) / MR <= 3;
  const int64_t m_pad = (g.m + MR - 1) / MR * MR;
  // Row blocks. With enough rows, each task packs its own block of A (the
  // block then sits in the L2 of the core that streams it over the B panels;
  // packed in a shared pass it was in whichever core's cache packed it), and
  // the blocks are sized to balance: about 4 per thread, at most MC rows.
  // Otherwise MC-row blocks, A packed in the shared pass, and the columns
  // split further for parallelism.
  const int64_t m_panels = m_pad / MR;
  const bool private_a = !direct_a && !prepacked && m_panels >= 4 * pool.size();
  int64_t mc = MC;
  if (private_a) {
    const int64_t blocks = std::max<int64_t>(4 * pool.size(), (m_panels * MR + MC - 1) / MC);
    mc = (m_panels + blocks - 1) / blocks * MR;
  }
  const int64_t m_blocks = (g.m + mc - 1) / mc;
  const int64_t nc_max = std::min<int64_t>(NC, (g.n + NR - 1) / NR * NR);
  const int64_t kd = slab_depth(g.k, NR);
  const int64_t kc_max = std::min<int64_t>(kd, g.k) + g.k_ext;  // the last slab carries the K extension
  float* const bpack = thread_scratch(0, kc_max * nc_max);
  float* const apack = thread_scratch(1, direct_a || prepacked || private_a ? 16 : kc_max * m_pad);
  const GemmArgs ge = ext_args(g);

  for (int64_t jc = 0; jc < g.n; jc += NC) {
    const int64_t nc = std::min(NC, g.n - jc);
    const int64_t b_panels = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < g.k; pc += kd) {
      const int64_t kc_main = std::min(kd, g.k - pc);
      const bool ext = g.k_ext > 0 && pc + kc_main == g.k;  // last slab: append A_ext / B_ext
      const int64_t kc = kc_main + (ext ? g.k_ext : 0);
      const bool acc = g.accumulate || pc > 0;
      float* bp = bpack;
      float* ap_fill = apack;
      // Slab pc of a prepacked A starts after the m_pad x pc floats of the slabs before it.
      const float* ap = prepacked ? g.a_packed + pc * m_pad : ap_fill;
      const int64_t a_panels = direct_a || prepacked || private_a ? 0 : m_pad / MR;
      auto b_in_place = [&](int64_t p) { return direct_b && (p + 1) * NR <= nc; };
      // Pack what is not read in place (B panels, and all of A for this K slab).
      pool.parallel_for(b_panels + a_panels, [&](int64_t p, int) {
        if (p < b_panels) {
          if (b_in_place(p)) return;
          const int64_t j0 = p * NR;
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - j0));
          pack_b_panel(g, kern, jc + j0, nr, pc, kc_main, bp + p * NR * kc);
          if (ext) pack_b_panel(ge, kern, jc + j0, nr, 0, g.k_ext, bp + p * NR * kc + kc_main * NR);
        } else {
          const int64_t i0 = (p - b_panels) * MR;
          const int mr = static_cast<int>(std::min<int64_t>(MR, g.m - i0));
          pack_a_panel(g, kern, i0, mr, pc, kc_main, ap_fill + (p - b_panels) * MR * kc);
          if (ext) pack_a_panel(ge, kern, i0, mr, 0, g.k_ext, ap_fill + (p - b_panels) * MR * kc + kc_main * MR);
        }
      });
      // Tiles of mc rows x (a share of the NC columns), spread over threads.
      int64_t n_split = 1;
      while (m_blocks * n_split < 4 * pool.size() && b_panels / (n_split * 2) >= 2) n_split *= 2;
      if (private_a) n_split = 1;
      const int64_t panels_per_split = (b_panels + n_split - 1) / n_split;
      pool.parallel_for(m_blocks * n_split, [&](int64_t t, int) {
        const int64_t ib = t / n_split, js = t % n_split;
        const int64_t i_begin = ib * mc, i_end = std::min(g.m, i_begin + mc);
        const int64_t p_begin = js * panels_per_split, p_end = std::min(b_panels, p_begin + panels_per_split);
        // A block of this task: packed here, by the thread that uses it, into its own L2.
        const float* a_blk = ap + i_begin * kc;
        if (private_a) {
          float* mine = thread_scratch(4, mc * kc);
          for (int64_t i0 = i_begin; i0 < i_end; i0 += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, g.m - i0));
            pack_a_panel(g, kern, i0, mr, pc, kc_main, mine + (i0 - i_begin) * kc);
            if (ext) pack_a_panel(ge, kern, i0, mr, 0, g.k_ext, mine + (i0 - i_begin) * kc + kc_main * MR);
          }
          a_blk = mine;
        }
        for (int64_t p = p_begin; p < p_end; ++p) {
          const int64_t j0 = p * NR;
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - j0));
          const bool bdir = b_in_place(p);
          const float* bpanel = bdir ? g.b + pc * g.ldb + jc + j0 : bp + p * NR * kc;
          const int64_t b_ks = bdir ? g.ldb : NR;
          for (int64_t i = i_begin; i < i_end; i += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, g.m - i));
            float* c = g.c + i * g.ldc + jc + j0;
            if (direct_a) {
              // op(A)[i, k]: A[i*lda + k] (rows step lda) or, transposed, A[k*lda + i].
              const float* a = g.trans_a ? g.a + pc * g.lda + i : g.a + i * g.lda + pc;
              kern.micro_a(kc, a, g.trans_a ? 1 : g.lda, g.trans_a ? g.lda : 1, bpanel, b_ks, c, g.ldc, mr, nr, acc);
            } else {
              kern.micro(kc, a_blk + (i - i_begin) * kc, bpanel, b_ks, c, g.ldc, mr, nr, acc);
            }
          }
        }
      });
    }
  }
}

}  // namespace

float* thread_scratch(int slot, int64_t n) {
  thread_local Buffer bufs[kScratchSlots];
  thread_local int64_t caps[kScratchSlots] = {};
  if (n > caps[slot]) {
    bufs[slot].reset();  // free first: the peak stays one buffer
    bufs[slot] = alloc_floats(n);
    caps[slot] = n;
  }
  return bufs[slot].get();
}

void gemm_f32(const GemmArgs& g, ThreadPool& pool) {
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k_ext > 0 && (g.trans_a || !g.trans_b || g.a_packed || g.k <= 0 || g.m <= kSmallM || g.n <= 2 * kernel().nr)) {
    // Layouts and paths the fused extension does not cover: two products.
    GemmArgs base = g;
    base.k_ext = 0, base.a_ext = nullptr, base.b_ext = nullptr;
    gemm_f32(base, pool);
    return gemm_f32(ext_args(g), pool);
  }
  if (g.k <= 0) {  // empty sum
    if (!g.accumulate)
      for (int64_t i = 0; i < g.m; ++i) std::memset(g.c + i * g.ldc, 0, sizeof(float) * g.n);
    return;
  }
  const GemmKernel& kern = kernel();
  if (g.m <= kSmallM && g.trans_b && !g.trans_a) return gemm_small_m(g, kern, pool);
  gemm_blocked(g, kern, pool);
}

int64_t gemm_packed_a_floats(int64_t m, int64_t k) {
  const int MR = kernel().mr;
  return (m + MR - 1) / MR * MR * k;
}

// The layout gemm_blocked reads: K slab after K slab (slab_depth deep, the last one
// shorter), each the MR-row panels of all of op(A)'s rows.
void gemm_pack_a(const GemmArgs& g, float* dst, ThreadPool& pool) {
  const GemmKernel& kern = kernel();
  const int MR = kern.mr;
  const int64_t kd = slab_depth(g.k, kern.nr);
  const int64_t m_pad = (g.m + MR - 1) / MR * MR, panels = m_pad / MR, slabs = (g.k + kd - 1) / kd;
  pool.parallel_for(slabs * panels, [&](int64_t t, int) {
    const int64_t pc = (t / panels) * kd, kc = std::min(kd, g.k - pc), i0 = (t % panels) * MR;
    pack_a_panel(g, kern, i0, static_cast<int>(std::min<int64_t>(MR, g.m - i0)), pc, kc, dst + pc * m_pad + i0 * kc);
  });
}

void gemm_f32_serial(const GemmArgs& g) {
  thread_local ThreadPool serial(1);  // no workers: parallel_for runs inline
  gemm_f32(g, serial);
}

const char* gemm_kernel_name() { return kernel().name; }

bool gemm_force_kernel(const char* name) {
  const std::string n = name ? name : "";
  const GemmKernel* k = nullptr;
  if (n == "scalar") k = &kGemmScalar;
#if defined(__x86_64__)
  const Features& f = features();
  if (n == "avx2" && f.avx2 && f.fma) k = &kGemmAvx2;
  if (n == "avx512" && f.avx512f && f.avx512bw && f.avx512vl) k = &kGemmAvx512;
#endif
  if (n == "auto") k = detect_kernel();
  if (!k) return false;
  g_kernel.store(k, std::memory_order_release);
  return true;
}

}  // namespace rlhf::cpu

// ---------------------------------------------------------------- the op
#include "cpu_backend.h"

namespace rlhf::cpu {

void CpuBackend::gemm(const GemmOp& op) {
  GemmArgs g;
  g.trans_a = op.trans_a;
  g.trans_b = op.trans_b;
  g.m = op.m;
  g.n = op.n;
  g.k = op.k;
  g.a = op.a;
  g.lda = op.lda;
  g.b = op.b;
  g.ldb = op.ldb;
  g.b16 = op.b_bf16;
  g.c = op.c;
  g.ldc = op.ldc;
  g.accumulate = op.accumulate;
  gemm_f32(g, pool_);
  if (op.bias) add_bias_rows(op.bias, op.c, op.ldc, op.m, op.n, pool_);
}

void add_bias_rows(const float* bias, float* c, int64_t ldc, int64_t m, int64_t n, ThreadPool& pool) {
  const VecKernels& v = vec();
  pool.parallel_for(m, [&](int64_t i, int) { v.add(bias, c + i * ldc, n); });
}

void CpuBackend::bias_grad(const BiasGradOp& op) {
  column_reduce(pool_, op.dim, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < op.n; ++i) {
      const float* dy = op.dy + i * op.ld;
      for (int64_t j = c0; j < c1; ++j) op.db[j] += dy[j];
    }
  });
}

}  // namespace rlhf::cpu
