// The fused LM head and the value head (twin of native/cpu/lm_head.cc).
//
// lm_head_logp never materialises the [n, vocab] logits: a block owns 128
// rows and walks a range of 128-wide vocabulary tiles; each tile's logits
// come out of the tensor-core product (gemm_tile.cuh) straight into registers
// and are folded into a per-row online log-sum-exp state (m, s, t) with
// math::lse_merge, first across the 4 lanes of an mma row, then across the 4
// warps that share the rows, then into the block's running state. Blocks over
// different vocabulary ranges (enough to fill the GPU) leave one partial state
// per row; a second small kernel merges them in order and writes logp, entropy
// and lse. The target's logit is picked up by whichever block sees it.
//
// The backward recomputes logits chunk by chunk (rows x vocabulary chunk),
// turns them into dz in the product's epilogue, and runs two more products
// (dhidden += dz W, dW += dz^T h) per chunk, as the CPU does.
#include "elementwise.cuh"
#include "gemm_tile.cuh"

namespace rlhf::cuda {

void gemm_f32_bf16w(CudaBackend& be, const GemmOp& op);  // gemm.cu

namespace {

struct LseParts {  // partial states, [splits][n] each; u: sums of the scaled logits (mean_logp)
  float *m, *s, *t, *u;
};

struct RowRed {  // per-warp-column partials of one vocabulary tile
  float m[4][tile::BM], s[4][tile::BM], t[4][tile::BM], u[4][tile::BM];
};

__device__ __forceinline__ math::OnlineLse shfl_xor_lse(const math::OnlineLse& a, int mask) {
  return math::OnlineLse{__shfl_xor_sync(0xffffffffu, a.m, mask), __shfl_xor_sync(0xffffffffu, a.s, mask),
                         __shfl_xor_sync(0xffffffffu, a.t, mask)};
}

template <typename TB>
__global__ void __launch_bounds__(tile::kThreads)
    lm_head_fwd_kernel(tile::Operand<float> H, tile::Operand<TB> W, int64_t dim, int64_t n, int64_t vocab, const int32_t* targets,
                       float inv_t, int64_t tiles_per_split, LseParts part, float* target_logit) {
  __shared__ __align__(16) union {
    tile::Smem sm;
    RowRed red;
  } u;
  __shared__ float run_m[tile::BM], run_s[tile::BM], run_t[tile::BM], run_u[tile::BM];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * tile::BM;
  const int split = blockIdx.y;
  const int64_t vt_count = (vocab + tile::BN - 1) / tile::BN;
  const int64_t vt0 = split * tiles_per_split, vt1 = min(vt_count, vt0 + tiles_per_split);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, c = lane & 3;
  if (threadIdx.x < tile::BM) run_m[threadIdx.x] = -INFINITY, run_s[threadIdx.x] = 0.f, run_t[threadIdx.x] = 0.f, run_u[threadIdx.x] = 0.f;
  // Targets of this thread's 8 rows.
  int32_t tgt[tile::MI][2];
#pragma unroll
  for (int mi = 0; mi < tile::MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = m0 + wm * 64 + mi * 16 + g + 8 * h;
      tgt[mi][h] = row < n ? targets[row] : -1;
    }
  for (int64_t vt = vt0; vt < vt1; ++vt) {
    const int64_t n0 = vt * tile::BN;
    float acc[tile::MI][tile::NI][4];
    tile::block_product(H, W, dim, m0, n0, u.sm, acc);  // ends with __syncthreads: u.red is free
#pragma unroll
    for (int mi = 0; mi < tile::MI; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY, us = 0.f;
#pragma unroll
        for (int ni = 0; ni < tile::NI; ++ni)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t col = n0 + wn * 32 + ni * 8 + 2 * c + e;
            const float z = acc[mi][ni][h * 2 + e] * inv_t;
            if (col < vocab) {
              mx = fmaxf(mx, z);
              us += z;
              if (col == tgt[mi][h]) target_logit[m0 + wm * 64 + mi * 16 + g + 8 * h] = z;
            }
          }
        math::OnlineLse st{mx, 0.f, 0.f};
        if (mx != -INFINITY) {
#pragma unroll
          for (int ni = 0; ni < tile::NI; ++ni)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int64_t col = n0 + wn * 32 + ni * 8 + 2 * c + e;
              if (col < vocab) {
                const float z = acc[mi][ni][h * 2 + e] * inv_t;
                const float p = expf(z - mx);
                st.s += p;
                st.t += p * z;
              }
            }
        }
        st = math::lse_merge(st, shfl_xor_lse(st, 1));
        st = math::lse_merge(st, shfl_xor_lse(st, 2));
        us += __shfl_xor_sync(0xffffffffu, us, 1);
        us += __shfl_xor_sync(0xffffffffu, us, 2);
        if (c == 0) {
          const int r = wm * 64 + mi * 16 + g + 8 * h;
          u.red.m[wn][r] = st.m, u.red.s[wn][r] = st.s, u.red.t[wn][r] = st.t, u.red.u[wn][r] = us;
        }
      }
    __syncthreads();
    if (threadIdx.x < tile::BM) {
      const int r = threadIdx.x;
      math::OnlineLse run{run_m[r], run_s[r], run_t[r]};
#pragma unroll
      for (int w = 0; w < 4; ++w) run = math::lse_merge(run, math::OnlineLse{u.red.m[w][r], u.red.s[w][r], u.red.t[w][r]});
      run_m[r] = run.m, run_s[r] = run.s, run_t[r] = run.t;
      run_u[r] += u.red.u[0][r] + u.red.u[1][r] + u.red.u[2][r] + u.red.u[3][r];
    }
    __syncthreads();  // u.red is read before the next product reuses the memory
  }
  if (threadIdx.x < tile::BM && m0 + threadIdx.x < n) {
    const int64_t i = static_cast<int64_t>(split) * n + m0 + threadIdx.x;
    part.m[i] = run_m[threadIdx.x], part.s[i] = run_s[threadIdx.x], part.t[i] = run_t[threadIdx.x], part.u[i] = run_u[threadIdx.x];
  }
}

__global__ void lm_head_finish_kernel(LmHeadLogpOp op, LseParts part, int splits, const float* target_logit) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < op.n; i += int64_t(gridDim.x) * blockDim.x) {
    if (op.targets[i] < 0) {
      op.logp[i] = 0.f;
      if (op.entropy) op.entropy[i] = 0.f;
      if (op.lse) op.lse[i] = 0.f;
      if (op.mean_logp) op.mean_logp[i] = 0.f;
      continue;
    }
    math::OnlineLse st;
    float us = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t k = static_cast<int64_t>(s) * op.n + i;
      st = math::lse_merge(st, math::OnlineLse{part.m[k], part.s[k], part.t[k]});
      us += part.u[k];
    }
    const float lse = math::lse_value(st);
    op.logp[i] = target_logit[i] - lse;
    if (op.entropy) op.entropy[i] = math::lse_entropy(st);
    if (op.lse) op.lse[i] = lse;
    if (op.mean_logp) op.mean_logp[i] = math::mean_logp(us, 1.f / static_cast<float>(op.vocab), lse);
  }
}

// dz of one [rows, vc] chunk (vocabulary v0..), from recomputed logits:
//   dz = inv_t (dlogp (onehot - p) - dentropy p (z - lse + H) + dmean_logp (1/V - p))
// (math::lm_head_dz).
struct DzArgs {
  float* dz;  // [rows, vc]
  int64_t rows, vc, v0;
  const int32_t* targets;
  const float *lse, *entropy, *dlogp, *dentropy, *dmean_logp;
  float inv_t, inv_vocab;
};

template <typename TB>
__global__ void __launch_bounds__(tile::kThreads) lm_head_dz_kernel(tile::Operand<float> H, tile::Operand<TB> W, int64_t dim, DzArgs a) {
  __shared__ __align__(16) tile::Smem sm;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * tile::BM, n0 = static_cast<int64_t>(blockIdx.x) * tile::BN;
  float acc[tile::MI][tile::NI][4];
  tile::block_product(H, W, dim, m0, n0, sm, acc);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int mi = 0; mi < tile::MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = m0 + wm * 64 + mi * 16 + g + 8 * h;
      if (i >= a.rows) continue;
      const int32_t target = a.targets[i];
      const float lse = a.lse[i], gl = a.dlogp ? a.dlogp[i] : 0.f;
      const float ge = a.dentropy ? a.dentropy[i] : 0.f;
      const float shift = a.dentropy ? -lse + a.entropy[i] : 0.f;
      const float gm = a.dmean_logp ? a.dmean_logp[i] : 0.f;
      float* out = a.dz + i * a.vc;
#pragma unroll
      for (int ni = 0; ni < tile::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t j = n0 + wn * 32 + ni * 8 + 2 * c + e;
          if (j >= a.vc) continue;
          if (target < 0) {
            out[j] = 0.f;
            continue;
          }
          const float z = acc[mi][ni][h * 2 + e] * a.inv_t;
          const float p = expf(z - lse);
          float d = math::lm_head_dz(p, z, gl, ge, shift, gm, a.inv_vocab);
          d *= a.inv_t;
          if (a.v0 + j == target) d += gl * a.inv_t;
          out[j] = d;
        }
    }
}

__global__ void value_head_kernel(ValueHeadOp op) {
  const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  for (int64_t i = blockIdx.x * int64_t(warps) + (threadIdx.x >> 5); i < op.n; i += int64_t(gridDim.x) * warps) {
    const float* h = op.hidden + i * op.dim;
    float s = 0.f;
    for (int64_t j = lane; j < op.dim; j += 32) s += h[j] * op.weight[j];
    s = warp_sum(s);
    if (lane == 0) op.value[i] = s + op.bias;
  }
}

__global__ void value_head_dhidden_kernel(ValueHeadBackwardOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) op.dhidden[i * op.dim + j] += op.dvalue[i] * op.weight[j];
}

__global__ void sum_into_kernel(const float* x, int64_t n, float* out) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) out[0] += static_cast<float>(s);
}

struct ValueDweight {
  const float *dvalue, *hidden;
  int64_t dim;
  __device__ void operator()(int64_t i, int64_t j, float (&v)[1]) const { v[0] = dvalue[i] * hidden[i * dim + j]; }
};

template <typename TB>
void lm_head_forward(CudaBackend& be, const LmHeadLogpOp& op, const TB* w) {
  const int64_t rt = (op.n + tile::BM - 1) / tile::BM, vt = (op.vocab + tile::BN - 1) / tile::BN;
  // Enough vocabulary splits to give every SM two blocks.
  int64_t splits = std::min<int64_t>(vt, std::max<int64_t>(1, (2 * be.sm_count() + rt - 1) / rt));
  const int64_t tps = (vt + splits - 1) / splits;
  splits = (vt + tps - 1) / tps;
  if (rt > (1LL << 31) - 1 || splits > 65535) throw Error(code::kUnsupported, "lm_head_logp: too many rows");
  float* ws = static_cast<float*>(be.workspace(sizeof(float) * (4 * splits + 1) * op.n));
  LseParts part{ws, ws + splits * op.n, ws + 2 * splits * op.n, ws + 3 * splits * op.n};
  float* tl = ws + 4 * splits * op.n;
  const auto H = tile::operand_a(op.hidden, op.dim, false, op.n);
  const auto W = tile::operand_b(w, op.dim, true, op.vocab);
  lm_head_fwd_kernel<TB><<<dim3(static_cast<unsigned>(rt), static_cast<unsigned>(splits)), tile::kThreads, 0, stream_of(be)>>>(
      H, W, op.dim, op.n, op.vocab, op.targets, op.inv_temperature, tps, part, tl);
  RLHF_CUDA_LAUNCHED();
  lm_head_finish_kernel<<<blocks_for(op.n, 256, 4096), 256, 0, stream_of(be)>>>(op, part, static_cast<int>(splits), tl);
  RLHF_CUDA_LAUNCHED();
}

// Rows x vocabulary chunk of the backward: dz scratch of kRows x kVocab floats.
constexpr int64_t kRows = 2048, kVocab = 8192;

template <typename TB>
void lm_head_backward(CudaBackend& be, const LmHeadLogpBackwardOp& op, const TB* w) {
  const int64_t rows_max = std::min(kRows, op.n), vc_max = std::min(kVocab, op.vocab);
  float* dz = static_cast<float*>(be.workspace(sizeof(float) * rows_max * vc_max));
  for (int64_t r0 = 0; r0 < op.n; r0 += kRows) {
    const int64_t rows = std::min(kRows, op.n - r0);
    const float* h = op.hidden + r0 * op.dim;
    const auto H = tile::operand_a(h, op.dim, false, rows);
    for (int64_t v0 = 0; v0 < op.vocab; v0 += kVocab) {
      const int64_t vc = std::min(kVocab, op.vocab - v0);
      const TB* wc = w + v0 * op.dim;
      DzArgs a{dz, rows, vc, v0, op.targets + r0, op.lse + r0, op.entropy ? op.entropy + r0 : nullptr, op.dlogp ? op.dlogp + r0 : nullptr,
               op.dentropy ? op.dentropy + r0 : nullptr, op.dmean_logp ? op.dmean_logp + r0 : nullptr, op.inv_temperature,
               1.f / static_cast<float>(op.vocab)};
      const dim3 grid(static_cast<unsigned>((vc + tile::BN - 1) / tile::BN), static_cast<unsigned>((rows + tile::BM - 1) / tile::BM));
      lm_head_dz_kernel<TB><<<grid, tile::kThreads, 0, stream_of(be)>>>(H, tile::operand_b(wc, op.dim, true, vc), op.dim, a);
      RLHF_CUDA_LAUNCHED();
      GemmOp dh;  // dhidden += dz W_chunk   ([rows, vc] x [vc, dim])
      dh.m = rows, dh.n = op.dim, dh.k = vc, dh.a = dz, dh.lda = vc, dh.ldb = op.dim;
      if constexpr (sizeof(TB) == 2) dh.b_bf16 = reinterpret_cast<const uint16_t*>(wc);
      else dh.b = reinterpret_cast<const float*>(wc);
      dh.c = op.dhidden + r0 * op.dim, dh.ldc = op.dim, dh.accumulate = true;
      gemm_f32_bf16w(be, dh);
      if (op.dweight) {  // dW_chunk += dz^T h   ([vc, rows] x [rows, dim])
        GemmOp dw;
        dw.trans_a = true;
        dw.m = vc, dw.n = op.dim, dw.k = rows, dw.a = dz, dw.lda = vc, dw.b = h, dw.ldb = op.dim;
        dw.c = op.dweight + v0 * op.dim, dw.ldc = op.dim, dw.accumulate = true;
        gemm_f32_bf16w(be, dw);
      }
    }
  }
}

}  // namespace

void CudaBackend::lm_head_logp(const LmHeadLogpOp& op) {
  if (op.n <= 0) return;
  if (op.vocab <= 0) throw Error(code::kArgument, "lm_head_logp: vocab must be positive");
  if (op.weight_bf16) lm_head_forward(*this, op, op.weight_bf16);
  else lm_head_forward(*this, op, op.weight);
}

void CudaBackend::lm_head_logp_backward(const LmHeadLogpBackwardOp& op) {
  if (op.n <= 0 || op.vocab <= 0) return;
  if (op.weight_bf16) lm_head_backward(*this, op, op.weight_bf16);
  else lm_head_backward(*this, op, op.weight);
}

void CudaBackend::value_head(const ValueHeadOp& op) {
  if (op.n <= 0) return;
  value_head_kernel<<<blocks_for(op.n, 8, 8 * sm_count_), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::value_head_backward(const ValueHeadBackwardOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  value_head_dhidden_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
  if (op.dweight) colsum<1>(*this, op.n, op.dim, ValueDweight{op.dvalue, op.hidden, op.dim}, op.dweight);
  if (op.dbias) {
    sum_into_kernel<<<1, 256, 0, stream_of(*this)>>>(op.dvalue, op.n, op.dbias);
    RLHF_CUDA_LAUNCHED();
  }
}

}  // namespace rlhf::cuda
