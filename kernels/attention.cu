// Attention (twin of native/cpu/attention.cc): causal grouped-query
// attention with a padding mask, flash style, and its backward from the saved
// log-sum-exp; and single-token attention over a KV cache (decode).
//
// Forward: one block per (sequence, head, 64 query rows). Key/value tiles are
// staged in shared memory; each query row is owned by 4 adjacent lanes, which
// compute its scores for the tile, update the row's running max and sum
// (online softmax, the merge of math::lse_merge) with two shuffles, rescale
// their share of the output row and accumulate P V. Tiles wholly above the
// diagonal are skipped. Head dims up to 128 (kernels for <= 64 and <= 128,
// shorter heads zero-padded). fp32 throughout (SIMT FMA), so the CUDA results
// match the CPU's to fp32 rounding.
//
// Backward (the FlashAttention-2 split): Delta = rowsum(dO * O) first; then a
// dK/dV kernel per (sequence, kv head, 64 keys) that walks the query tiles of
// every head of its group (so dK and dV are written once, no atomics) and a
// dQ kernel per (sequence, head, 64 queries) that walks the key tiles; both
// recompute P = exp(S - lse). Deterministic.
#include <algorithm>

#include "common.cuh"

namespace rlhf::cuda {

namespace {

constexpr int kThreads = 256;  // 64 rows x 4 lanes
constexpr int kRows = 64;

template <int DM>
struct Cfg {
  static constexpr int LD = DM + 1;          // shared-memory row stride (floats)
  static constexpr int BK = DM > 64 ? 32 : 64;  // keys per tile (forward / dQ)
  static constexpr int KPT = BK / 4;         // keys per lane per tile
  static constexpr int DPT = DM / 4;         // output columns per lane
  static constexpr int BQ2 = 32;             // queries per tile in the dK/dV kernel
  static constexpr int QPT = BQ2 / 4;
};

struct AttnShape {
  int64_t B, T, H, KVH, D, group;
  float scale;
};

// Loads rows [r0, r0 + rows) of a [T, ...] operand slice (row stride ld,
// columns col0.. col0+D) into s[rows][LD], zero-filling past T and past D.
template <int DM>
__device__ __forceinline__ void load_rows(float* s, const float* x, int64_t ld, int64_t r0, int rows, int64_t T, int64_t D) {
  for (int e = threadIdx.x; e < rows * DM; e += blockDim.x) {
    const int r = e / DM, d = e % DM;
    const int64_t t = r0 + r;
    s[r * (DM + 1) + d] = (t < T && d < D) ? x[t * ld + d] : 0.f;
  }
}

__device__ __forceinline__ bool key_visible(const uint8_t* mask, int64_t s, int64_t t, int64_t T) {
  return s <= t && s < T && (!mask || mask[s]);
}

// ------------------------------------------------------------------ forward
template <int DM>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(AttentionOp op, AttnShape sh) {
  using C = Cfg<DM>;
  extern __shared__ float smem[];
  float* Qs = smem;                    // [64][LD]
  float* Ks = Qs + kRows * C::LD;      // [BK][LD]
  float* Vs = Ks + C::BK * C::LD;      // [BK][LD]
  float* Ps = Vs + C::BK * C::LD;      // [64][BK + 1]
  const int64_t qtiles = (sh.T + kRows - 1) / kRows;
  const int64_t qt = blockIdx.x % qtiles, bh = blockIdx.x / qtiles;
  const int64_t b = bh / sh.H, h = bh % sh.H, kvh = h / sh.group;
  const int64_t q0 = qt * kRows;
  const int row = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const int64_t t = q0 + row;
  const uint8_t* mask = op.mask ? op.mask + b * sh.T : nullptr;
  const float* qb = op.q + b * sh.T * op.ldq + h * sh.D;
  const float* kb = op.k + b * sh.T * op.ldk + kvh * sh.D;
  const float* vb = op.v + b * sh.T * op.ldv + kvh * sh.D;
  load_rows<DM>(Qs, qb, op.ldq, q0, kRows, sh.T, sh.D);

  float o[C::DPT];
#pragma unroll
  for (int j = 0; j < C::DPT; ++j) o[j] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int64_t last_key = std::min<int64_t>(sh.T, q0 + kRows) - 1;
  for (int64_t k0 = 0; k0 <= last_key; k0 += C::BK) {
    __syncthreads();  // previous tile fully used
    load_rows<DM>(Ks, kb, op.ldk, k0, C::BK, sh.T, sh.D);
    load_rows<DM>(Vs, vb, op.ldv, k0, C::BK, sh.T, sh.D);
    __syncthreads();
    float s[C::KPT];
#pragma unroll
    for (int j = 0; j < C::KPT; ++j) s[j] = 0.f;
    const float* qrow = Qs + row * C::LD;
#pragma unroll 4
    for (int d = 0; d < DM; ++d) {
      const float qd = qrow[d];
#pragma unroll
      for (int j = 0; j < C::KPT; ++j) s[j] += qd * Ks[(sub + 4 * j) * C::LD + d];
    }
    float tmax = -INFINITY;
#pragma unroll
    for (int j = 0; j < C::KPT; ++j) {
      const int64_t key = k0 + sub + 4 * j;
      s[j] = (t < sh.T && key_visible(mask, key, t, sh.T)) ? s[j] * sh.scale : -INFINITY;
      tmax = fmaxf(tmax, s[j]);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float mnew = fmaxf(m, tmax);
    // Online softmax: rescale what is there by exp(m - mnew) (0 when m = -inf).
    const float alpha = mnew == -INFINITY ? 1.f : expf(m - mnew);
    float psum = 0.f;
#pragma unroll
    for (int j = 0; j < C::KPT; ++j) {
      const float p = s[j] == -INFINITY ? 0.f : expf(s[j] - mnew);
      psum += p;
      Ps[row * (C::BK + 1) + sub + 4 * j] = p;
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    l = l * alpha + psum;
    m = mnew;
#pragma unroll
    for (int j = 0; j < C::DPT; ++j) o[j] *= alpha;
    __syncwarp();  // the row's 4 lanes are in one warp: their P entries are visible
    const float* prow = Ps + row * (C::BK + 1);
#pragma unroll 4
    for (int kk = 0; kk < C::BK; ++kk) {
      const float p = prow[kk];
      const float* vrow = Vs + kk * C::LD + sub;
#pragma unroll
      for (int j = 0; j < C::DPT; ++j) o[j] += p * vrow[4 * j];
    }
  }
  if (t >= sh.T) return;
  const bool valid = (!mask || mask[t]) && l > 0.f;
  float* out = op.out + (b * sh.T + t) * op.ldo + h * sh.D;
  const float inv = valid ? 1.f / l : 0.f;
#pragma unroll
  for (int j = 0; j < C::DPT; ++j) {
    const int d = sub + 4 * j;
    if (d < sh.D) out[d] = o[j] * inv;
  }
  if (op.lse && sub == 0) op.lse[(b * sh.H + h) * sh.T + t] = valid ? m + logf(l) : -INFINITY;
}

// ------------------------------------------------------------------ backward
// Delta[b, h, t] = sum_d dO * O (0 for padded queries).
__global__ void attention_delta_kernel(AttentionBackwardOp op, AttnShape sh, float* delta) {
  const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int64_t rows = sh.B * sh.H * sh.T;
  for (int64_t r = blockIdx.x * int64_t(warps) + (threadIdx.x >> 5); r < rows; r += int64_t(gridDim.x) * warps) {
    const int64_t t = r % sh.T, bh = r / sh.T, b = bh / sh.H, h = bh % sh.H;
    const float* o = op.out + (b * sh.T + t) * op.ldo + h * sh.D;
    const float* dout = op.dout + (b * sh.T + t) * op.ldo + h * sh.D;
    float s = 0.f;
    for (int64_t d = lane; d < sh.D; d += 32) s += o[d] * dout[d];
    s = warp_sum(s);
    if (lane == 0) delta[r] = s;
  }
}

// dQ = scale * sum_s dS[t, s] K[s],  dS = P (dO.V - Delta),  P = exp(scale q.k - lse)
template <int DM>
__global__ void __launch_bounds__(kThreads) attention_dq_kernel(AttentionBackwardOp op, AttnShape sh, const float* delta) {
  using C = Cfg<DM>;
  extern __shared__ float smem[];
  float* Qs = smem;                     // [64][LD]
  float* dOs = Qs + kRows * C::LD;      // [64][LD]
  float* Ks = dOs + kRows * C::LD;      // [BK][LD]
  float* Vs = Ks + C::BK * C::LD;       // [BK][LD]
  float* Ss = Vs + C::BK * C::LD;       // [64][BK + 1]  dS
  const int64_t qtiles = (sh.T + kRows - 1) / kRows;
  const int64_t qt = blockIdx.x % qtiles, bh = blockIdx.x / qtiles;
  const int64_t b = bh / sh.H, h = bh % sh.H, kvh = h / sh.group;
  const int64_t q0 = qt * kRows;
  const int row = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const int64_t t = q0 + row;
  const uint8_t* mask = op.mask ? op.mask + b * sh.T : nullptr;
  load_rows<DM>(Qs, op.q + b * sh.T * op.ldq + h * sh.D, op.ldq, q0, kRows, sh.T, sh.D);
  load_rows<DM>(dOs, op.dout + b * sh.T * op.ldo + h * sh.D, op.ldo, q0, kRows, sh.T, sh.D);
  const float* kb = op.k + b * sh.T * op.ldk + kvh * sh.D;
  const float* vb = op.v + b * sh.T * op.ldv + kvh * sh.D;
  const bool qvalid = t < sh.T && (!mask || mask[t]);
  const float lse = qvalid ? op.lse[(b * sh.H + h) * sh.T + t] : 0.f;
  const float dlt = qvalid ? delta[(b * sh.H + h) * sh.T + t] : 0.f;
  float dq[C::DPT];
#pragma unroll
  for (int j = 0; j < C::DPT; ++j) dq[j] = 0.f;
  const int64_t last_key = std::min<int64_t>(sh.T, q0 + kRows) - 1;
  for (int64_t k0 = 0; k0 <= last_key; k0 += C::BK) {
    __syncthreads();
    load_rows<DM>(Ks, kb, op.ldk, k0, C::BK, sh.T, sh.D);
    load_rows<DM>(Vs, vb, op.ldv, k0, C::BK, sh.T, sh.D);
    __syncthreads();
    float s[C::KPT], dp[C::KPT];
#pragma unroll
    for (int j = 0; j < C::KPT; ++j) s[j] = 0.f, dp[j] = 0.f;
    const float* qrow = Qs + row * C::LD;
    const float* dorow = dOs + row * C::LD;
#pragma unroll 4
    for (int d = 0; d < DM; ++d) {
      const float qd = qrow[d], gd = dorow[d];
#pragma unroll
      for (int j = 0; j < C::KPT; ++j) {
        s[j] += qd * Ks[(sub + 4 * j) * C::LD + d];
        dp[j] += gd * Vs[(sub + 4 * j) * C::LD + d];
      }
    }
#pragma unroll
    for (int j = 0; j < C::KPT; ++j) {
      const int64_t key = k0 + sub + 4 * j;
      const float p = (qvalid && key_visible(mask, key, t, sh.T)) ? expf(s[j] * sh.scale - lse) : 0.f;
      Ss[row * (C::BK + 1) + sub + 4 * j] = p * (dp[j] - dlt);
    }
    __syncwarp();
    const float* srow = Ss + row * (C::BK + 1);
#pragma unroll 4
    for (int kk = 0; kk < C::BK; ++kk) {
      const float ds = srow[kk];
      const float* krow = Ks + kk * C::LD + sub;
#pragma unroll
      for (int j = 0; j < C::DPT; ++j) dq[j] += ds * krow[4 * j];
    }
  }
  if (t >= sh.T) return;
  float* out = op.dq + (b * sh.T + t) * op.ldq + h * sh.D;
#pragma unroll
  for (int j = 0; j < C::DPT; ++j) {
    const int d = sub + 4 * j;
    if (d < sh.D) out[d] = dq[j] * sh.scale;
  }
}

// dV[s] = sum_t P[t, s] dO[t],  dK[s] = scale sum_t dS[t, s] Q[t], over every
// head of the kv head's group; one block per (sequence, kv head, 64 keys).
template <int DM>
__global__ void __launch_bounds__(kThreads) attention_dkv_kernel(AttentionBackwardOp op, AttnShape sh, const float* delta) {
  using C = Cfg<DM>;
  extern __shared__ float smem[];
  float* Ks = smem;                      // [64][LD]
  float* Vs = Ks + kRows * C::LD;        // [64][LD]
  float* Qs = Vs + kRows * C::LD;        // [BQ2][LD]
  float* dOs = Qs + C::BQ2 * C::LD;      // [BQ2][LD]
  float* Ps = dOs + C::BQ2 * C::LD;      // [64][BQ2 + 1]
  float* dSs = Ps + kRows * (C::BQ2 + 1);  // [64][BQ2 + 1]
  float* lse_s = dSs + kRows * (C::BQ2 + 1);  // [BQ2]
  float* dlt_s = lse_s + C::BQ2;              // [BQ2]
  const int64_t ktiles = (sh.T + kRows - 1) / kRows;
  const int64_t kt = blockIdx.x % ktiles, bk = blockIdx.x / ktiles;
  const int64_t b = bk / sh.KVH, kvh = bk % sh.KVH;
  const int64_t s0 = kt * kRows;
  const int row = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const int64_t s = s0 + row;  // this lane group's key
  const uint8_t* mask = op.mask ? op.mask + b * sh.T : nullptr;
  load_rows<DM>(Ks, op.k + b * sh.T * op.ldk + kvh * sh.D, op.ldk, s0, kRows, sh.T, sh.D);
  load_rows<DM>(Vs, op.v + b * sh.T * op.ldv + kvh * sh.D, op.ldv, s0, kRows, sh.T, sh.D);
  float dk[C::DPT], dv[C::DPT];
#pragma unroll
  for (int j = 0; j < C::DPT; ++j) dk[j] = 0.f, dv[j] = 0.f;
  for (int64_t h = kvh * sh.group; h < (kvh + 1) * sh.group; ++h) {
    const float* qb = op.q + b * sh.T * op.ldq + h * sh.D;
    const float* dob = op.dout + b * sh.T * op.ldo + h * sh.D;
    for (int64_t q0 = s0 / C::BQ2 * C::BQ2; q0 < sh.T; q0 += C::BQ2) {
      __syncthreads();
      load_rows<DM>(Qs, qb, op.ldq, q0, C::BQ2, sh.T, sh.D);
      load_rows<DM>(dOs, dob, op.ldo, q0, C::BQ2, sh.T, sh.D);
      if (threadIdx.x < C::BQ2) {
        const int64_t t = q0 + threadIdx.x;
        const bool qv = t < sh.T && (!mask || mask[t]);
        lse_s[threadIdx.x] = qv ? op.lse[(b * sh.H + h) * sh.T + t] : INFINITY;  // +inf: P = 0
        dlt_s[threadIdx.x] = qv ? delta[(b * sh.H + h) * sh.T + t] : 0.f;
      }
      __syncthreads();
      float sc[C::QPT], dp[C::QPT];
#pragma unroll
      for (int j = 0; j < C::QPT; ++j) sc[j] = 0.f, dp[j] = 0.f;
      const float* krow = Ks + row * C::LD;
      const float* vrow = Vs + row * C::LD;
#pragma unroll 4
      for (int d = 0; d < DM; ++d) {
        const float kd = krow[d], vd = vrow[d];
#pragma unroll
        for (int j = 0; j < C::QPT; ++j) {
          sc[j] += kd * Qs[(sub + 4 * j) * C::LD + d];
          dp[j] += vd * dOs[(sub + 4 * j) * C::LD + d];
        }
      }
#pragma unroll
      for (int j = 0; j < C::QPT; ++j) {
        const int qq = sub + 4 * j;
        const int64_t t = q0 + qq;
        const float l = lse_s[qq];
        const bool vis = t < sh.T && l != INFINITY && key_visible(mask, s, t, sh.T);
        const float p = vis ? expf(sc[j] * sh.scale - l) : 0.f;
        Ps[row * (C::BQ2 + 1) + qq] = p;
        dSs[row * (C::BQ2 + 1) + qq] = p * (dp[j] - dlt_s[qq]);
      }
      __syncwarp();
      const float* prow = Ps + row * (C::BQ2 + 1);
      const float* dsrow = dSs + row * (C::BQ2 + 1);
#pragma unroll 4
      for (int qq = 0; qq < C::BQ2; ++qq) {
        const float p = prow[qq], ds = dsrow[qq];
        const float* qr = Qs + qq * C::LD + sub;
        const float* gr = dOs + qq * C::LD + sub;
#pragma unroll
        for (int j = 0; j < C::DPT; ++j) {
          dv[j] += p * gr[4 * j];
          dk[j] += ds * qr[4 * j];
        }
      }
    }
  }
  if (s >= sh.T) return;
  float* dko = op.dk + (b * sh.T + s) * op.ldk + kvh * sh.D;
  float* dvo = op.dv + (b * sh.T + s) * op.ldv + kvh * sh.D;
#pragma unroll
  for (int j = 0; j < C::DPT; ++j) {
    const int d = sub + 4 * j;
    if (d < sh.D) dko[d] = dk[j] * sh.scale, dvo[d] = dv[j];
  }
}

// ------------------------------------------------------------------ decode
constexpr int kDecodeWarps = 8;

__global__ void __launch_bounds__(kDecodeWarps * 32) kv_attention_kernel(KvAttentionOp op, int64_t group) {
  __shared__ float wm[kDecodeWarps], wl[kDecodeWarps];
  __shared__ float wacc[kDecodeWarps][128];
  const int64_t b = blockIdx.x / op.heads, h = blockIdx.x % op.heads, kvh = h / group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t D = op.head_dim, len = op.length[b];
  const float* q = op.q + b * op.ldq + h * D;
  const int64_t base = (b * op.kv_heads + kvh) * op.capacity * D;
  const float* kc = op.k_cache + base;
  const float* vc = op.v_cache + base;
  const uint8_t* cm = op.cache_mask ? op.cache_mask + b * op.capacity : nullptr;
  float qv[4], acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 4; ++i) qv[i] = lane + 32 * i < D ? q[lane + 32 * i] : 0.f;
  float m = -INFINITY, l = 0.f;
  for (int64_t s = warp; s < len; s += kDecodeWarps) {
    if (cm && !cm[s]) continue;
    const float* kr = kc + s * D;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (lane + 32 * i < D) dot += qv[i] * kr[lane + 32 * i];
    const float sc = warp_sum(dot) * op.scale;
    const float mnew = fmaxf(m, sc);
    const float alpha = m == -INFINITY ? 0.f : expf(m - mnew), p = expf(sc - mnew);
    l = l * alpha + p;
    const float* vr = vc + s * D;
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] = acc[i] * alpha + (lane + 32 * i < D ? p * vr[lane + 32 * i] : 0.f);
    m = mnew;
  }
  if (lane == 0) wm[warp] = m, wl[warp] = l;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (lane + 32 * i < 128) wacc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, wm[w]);
  float L = 0.f;
  for (int w = 0; w < kDecodeWarps; ++w)
    if (wm[w] != -INFINITY) L += wl[w] * expf(wm[w] - M);
  float* out = op.out + b * op.ldo + h * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < kDecodeWarps; ++w)
      if (wm[w] != -INFINITY) o += wacc[w][d] * expf(wm[w] - M);
    out[d] = L > 0.f ? o / L : 0.f;
  }
}

// ------------------------------------------------------------------ host
AttnShape shape_of(int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, const char* op) {
  if (D > 128) throw Error(code::kUnsupported, std::string(op) + ": the CUDA kernels take head_dim <= 128, got " + std::to_string(D));
  if (KVH <= 0 || H % KVH != 0) throw Error(code::kArgument, std::string(op) + ": heads must be a multiple of kv_heads");
  return AttnShape{B, T, H, KVH, D, H / KVH, scale};
}

template <typename K>
void set_smem(K kernel, size_t bytes, const CudaBackend& be, const char* op) {
  if (bytes > be.smem_optin()) throw Error(code::kUnsupported, std::string(op) + ": needs more shared memory than this GPU has");
  RLHF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <int DM>
void attention_fwd(CudaBackend& be, const AttentionOp& op, const AttnShape& sh) {
  using C = Cfg<DM>;
  const size_t bytes = sizeof(float) * (kRows * C::LD + 2 * C::BK * C::LD + kRows * (C::BK + 1));
  set_smem(attention_fwd_kernel<DM>, bytes, be, "attention");
  const int64_t blocks = sh.B * sh.H * ((sh.T + kRows - 1) / kRows);
  attention_fwd_kernel<DM><<<static_cast<unsigned>(blocks), kThreads, bytes, stream_of(be)>>>(op, sh);
  RLHF_CUDA_LAUNCHED();
}

template <int DM>
void attention_bwd(CudaBackend& be, const AttentionBackwardOp& op, const AttnShape& sh, const float* delta) {
  using C = Cfg<DM>;
  const size_t dq_bytes = sizeof(float) * (2 * kRows * C::LD + 2 * C::BK * C::LD + kRows * (C::BK + 1));
  set_smem(attention_dq_kernel<DM>, dq_bytes, be, "attention_backward");
  const int64_t qblocks = sh.B * sh.H * ((sh.T + kRows - 1) / kRows);
  attention_dq_kernel<DM><<<static_cast<unsigned>(qblocks), kThreads, dq_bytes, stream_of(be)>>>(op, sh, delta);
  RLHF_CUDA_LAUNCHED();
  const size_t kv_bytes = sizeof(float) * (2 * kRows * C::LD + 2 * C::BQ2 * C::LD + 2 * kRows * (C::BQ2 + 1) + 2 * C::BQ2);
  set_smem(attention_dkv_kernel<DM>, kv_bytes, be, "attention_backward");
  const int64_t kblocks = sh.B * sh.KVH * ((sh.T + kRows - 1) / kRows);
  attention_dkv_kernel<DM><<<static_cast<unsigned>(kblocks), kThreads, kv_bytes, stream_of(be)>>>(op, sh, delta);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace

void CudaBackend::attention(const AttentionOp& op) {
  if (op.batch <= 0 || op.seq <= 0 || op.heads <= 0) return;
  const AttnShape sh = shape_of(op.batch, op.seq, op.heads, op.kv_heads, op.head_dim, op.scale, "attention");
  if (sh.D <= 64) attention_fwd<64>(*this, op, sh);
  else attention_fwd<128>(*this, op, sh);
}

void CudaBackend::attention_backward(const AttentionBackwardOp& op) {
  if (op.batch <= 0 || op.seq <= 0 || op.heads <= 0) return;
  const AttnShape sh = shape_of(op.batch, op.seq, op.heads, op.kv_heads, op.head_dim, op.scale, "attention_backward");
  const int64_t rows = sh.B * sh.H * sh.T;
  float* delta = static_cast<float*>(workspace(sizeof(float) * rows));
  attention_delta_kernel<<<blocks_for(rows, 8, 8 * sm_count_), 256, 0, stream_of(*this)>>>(op, sh, delta);
  RLHF_CUDA_LAUNCHED();
  if (sh.D <= 64) attention_bwd<64>(*this, op, sh, delta);
  else attention_bwd<128>(*this, op, sh, delta);
}

void CudaBackend::kv_attention(const KvAttentionOp& op) {
  if (op.batch <= 0 || op.heads <= 0) return;
  const AttnShape sh = shape_of(op.batch, 1, op.heads, op.kv_heads, op.head_dim, op.scale, "kv_attention");
  kv_attention_kernel<<<static_cast<unsigned>(op.batch * op.heads), kDecodeWarps * 32, 0, stream_of(*this)>>>(op, sh.group);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
