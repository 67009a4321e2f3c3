// Causal grouped-query attention with a padding mask, and its decode-time
// twin over a KV cache. One task per (sequence, head); each query row makes
// its scores with dot products over the keys it may see, takes a stable
// softmax (max-shifted exp) and accumulates the values.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_backend.h"
#include "gemm.h"
#include "vec.h"

namespace rlhf::cpu {

namespace {

// One query row against keys/values rows [0, n_keys): out = softmax(scores) V.
// Returns the log-sum-exp of the scaled scores (-inf if no key is visible).
float attend_row(const VecKernels& v, const float* q, int64_t d, float scale, const float* k, int64_t ldk, const float* vals,
                 int64_t ldv, int64_t n_keys, const uint8_t* key_mask, float* scores, float* out) {
  int64_t visible = 0;
  for (int64_t s = 0; s < n_keys; ++s) {
    if (key_mask && !key_mask[s]) {
      scores[s] = -INFINITY;
      continue;
    }
    scores[s] = v.dot(q, k + s * ldk, d) * scale;
    ++visible;
  }
  std::memset(out, 0, sizeof(float) * d);
  if (visible == 0) return -INFINITY;
  const float m = v.max(scores, n_keys);
  const float sum = v.exp_shift(scores, m, scores, n_keys);  // exp(-inf - m) = 0 for masked keys
  const float inv = 1.f / sum;
  for (int64_t s = 0; s < n_keys; ++s)
    if (scores[s] != 0.f) v.axpy(scores[s] * inv, vals + s * ldv, out, d);
  return m + std::log(sum);
}

// Row t of the scores, keys [0, keys): scaled where key s may be seen (s <= t
// and not padding), -inf elsewhere. Without a padding mask that is a
// vectorised scale of the first t + 1 and a fill (the same products).
void causal_scale_row(const VecKernels& v, float* row, int64_t t, int64_t keys, const uint8_t* mask, float scale) {
  if (!mask) {
    const int64_t seen = std::min(keys, t + 1);
    v.scale(row, scale, row, seen);
    std::fill(row + seen, row + keys, -INFINITY);
    return;
  }
  for (int64_t s = 0; s < keys; ++s) row[s] = (s > t || !mask[s]) ? -INFINITY : row[s] * scale;
}

}  // namespace

// Prefill/training attention, blocked: for a block of kQueryBlock query rows
// of one (sequence, head), S = Q_blk K^T over the keys they may see and
// O_blk = P V are small GEMMs on the calling thread, so the inner loops run on
// the GEMM micro-kernels instead of length-head_dim dot products.
constexpr int64_t kQueryBlock = 64;

void CpuBackend::attention(const AttentionOp& op) {
  const VecKernels& v = vec();
  const int64_t group = op.heads / op.kv_heads, T = op.seq, D = op.head_dim;
  const int64_t qblocks = (T + kQueryBlock - 1) / kQueryBlock;
  std::vector<std::vector<float>> scratch(pool_.size(), std::vector<float>(static_cast<size_t>(kQueryBlock * T)));
  pool_.parallel_for(op.batch * op.heads * qblocks, [&](int64_t task, int thread) {
    const int64_t qb = task % qblocks, bh = task / qblocks;
    const int64_t b = bh / op.heads, h = bh % op.heads, kvh = h / group;
    const int64_t t0 = qb * kQueryBlock, t1 = std::min(T, t0 + kQueryBlock), rows = t1 - t0, keys = t1;
    float* S = scratch[static_cast<size_t>(thread)].data();  // [rows, keys]
    const uint8_t* mask = op.mask ? op.mask + b * T : nullptr;
    const float* kb = op.k + b * T * op.ldk + kvh * D;
    const float* vb = op.v + b * T * op.ldv + kvh * D;
    GemmArgs qk;
    qk.trans_b = true;
    qk.m = rows, qk.n = keys, qk.k = D;
    qk.a = op.q + (b * T + t0) * op.ldq + h * D, qk.lda = op.ldq;
    qk.b = kb, qk.ldb = op.ldk, qk.c = S, qk.ldc = keys;
    gemm_f32_serial(qk);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = t0 + r;
      float* srow = S + r * keys;
      float* lse_out = op.lse ? op.lse + (b * op.heads + h) * T + t : nullptr;
      if (mask && !mask[t]) {  // padded query: no output
        std::fill(srow, srow + keys, 0.f);
        if (lse_out) *lse_out = -INFINITY;
        continue;
      }
      causal_scale_row(v, srow, t, keys, mask, op.scale);
      const float m = v.max(srow, t + 1);
      const float sum = v.exp_shift(srow, m, srow, keys);  // masked keys -> 0
      v.scale(srow, 1.f / sum, srow, keys);
      if (lse_out) *lse_out = m + std::log(sum);
    }
    GemmArgs pv;  // O = P V, written straight into this head's columns of out
    pv.m = rows, pv.n = D, pv.k = keys;
    pv.a = S, pv.lda = keys, pv.b = vb, pv.ldb = op.ldv, pv.c = op.out + (b * T + t0) * op.ldo + h * D, pv.ldc = op.ldo;
    gemm_f32_serial(pv);
  });
}

void CpuBackend::kv_attention(const KvAttentionOp& op) {
  const VecKernels& v = vec();
  const int64_t group = op.heads / op.kv_heads;
  std::vector<std::vector<float>> scratch(pool_.size(), std::vector<float>(op.capacity));
  pool_.parallel_for(op.batch * op.heads, [&](int64_t task, int thread) {
    const int64_t b = task / op.heads, h = task % op.heads, kvh = h / group;
    const int64_t base = (b * op.kv_heads + kvh) * op.capacity * op.head_dim;
    attend_row(v, op.q + b * op.ldq + h * op.head_dim, op.head_dim, op.scale, op.k_cache + base, op.head_dim,
               op.v_cache + base, op.head_dim, op.length[b], op.cache_mask ? op.cache_mask + b * op.capacity : nullptr,
               scratch[thread].data(), op.out + b * op.ldo + h * op.head_dim);
  });
}

void CpuBackend::attention_backward(const AttentionBackwardOp& op) {
  // Blocked like the forward: per (sequence, kv head) task, for each head of
  // the group and each block of queries, recompute P = exp(S - lse) from the
  // saved log-sum-exp, then with small GEMMs
  //   dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
  //   dQ = scale dS K,  dK += scale dS^T Q,  dV += P^T dO.
  // The task owns dk/dv of its kv head, so no two tasks write the same row.
  const VecKernels& v = vec();
  const int64_t group = op.heads / op.kv_heads, D = op.head_dim, T = op.seq;
  const size_t per_thread = static_cast<size_t>(2 * kQueryBlock * T + 2 * T * D + kQueryBlock);
  std::vector<std::vector<float>> scratch(static_cast<size_t>(pool_.size()), std::vector<float>(per_thread));
  pool_.parallel_for(op.batch * op.kv_heads, [&](int64_t task, int thread) {
    const int64_t b = task / op.kv_heads, kvh = task % op.kv_heads;
    float* P = scratch[static_cast<size_t>(thread)].data();  // [rows, keys]
    float* dP = P + kQueryBlock * T;                          // [rows, keys]
    float* dK = dP + kQueryBlock * T;                         // [T, D] accumulated over the group
    float* dV = dK + T * D;                                   // [T, D]
    float* Dt = dV + T * D;                                   // [rows]
    std::fill(dK, dK + 2 * T * D, 0.f);
    const uint8_t* mask = op.mask ? op.mask + b * T : nullptr;
    const float* kb = op.k + b * T * op.ldk + kvh * D;
    const float* vb = op.v + b * T * op.ldv + kvh * D;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      for (int64_t t0 = 0; t0 < T; t0 += kQueryBlock) {
        const int64_t t1 = std::min(T, t0 + kQueryBlock), rows = t1 - t0, keys = t1;
        const float* qb = op.q + (b * T + t0) * op.ldq + h * D;
        const float* ob = op.out + (b * T + t0) * op.ldo + h * D;
        const float* dob = op.dout + (b * T + t0) * op.ldo + h * D;
        GemmArgs qk;  // S = Q K^T
        qk.trans_b = true;
        qk.m = rows, qk.n = keys, qk.k = D, qk.a = qb, qk.lda = op.ldq, qk.b = kb, qk.ldb = op.ldk, qk.c = P, qk.ldc = keys;
        gemm_f32_serial(qk);
        GemmArgs dpv;  // dP = dO V^T
        dpv.trans_b = true;
        dpv.m = rows, dpv.n = keys, dpv.k = D, dpv.a = dob, dpv.lda = op.ldo, dpv.b = vb, dpv.ldb = op.ldv, dpv.c = dP, dpv.ldc = keys;
        gemm_f32_serial(dpv);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t t = t0 + r;
          float* p = P + r * keys;
          float* dp = dP + r * keys;
          if (mask && !mask[t]) {  // padded query: no gradient anywhere
            std::fill(p, p + keys, 0.f);
            std::fill(dp, dp + keys, 0.f);
            continue;
          }
          const float lse = op.lse[(b * op.heads + h) * T + t];
          causal_scale_row(v, p, t, keys, mask, op.scale);
          v.exp_shift(p, lse, p, keys);  // P = exp(S - lse); masked -> 0
          Dt[r] = v.dot(dob + r * op.ldo, ob + r * op.ldo, D);
          for (int64_t s = 0; s < keys; ++s) dp[s] = p[s] * (dp[s] - Dt[r]) * op.scale;  // dS, with the scale folded in
        }
        GemmArgs gq;  // dQ = dS K, written straight into this head's columns of dq
        gq.m = rows, gq.n = D, gq.k = keys, gq.a = dP, gq.lda = keys, gq.b = kb, gq.ldb = op.ldk;
        gq.c = op.dq + (b * T + t0) * op.ldq + h * D, gq.ldc = op.ldq;
        gemm_f32_serial(gq);
        GemmArgs gk;  // dK += dS^T Q
        gk.trans_a = true;
        gk.m = keys, gk.n = D, gk.k = rows, gk.a = dP, gk.lda = keys, gk.b = qb, gk.ldb = op.ldq, gk.c = dK, gk.ldc = D;
        gk.accumulate = true;
        gemm_f32_serial(gk);
        GemmArgs gv;  // dV += P^T dO
        gv.trans_a = true;
        gv.m = keys, gv.n = D, gv.k = rows, gv.a = P, gv.lda = keys, gv.b = dob, gv.ldb = op.ldo, gv.c = dV, gv.ldc = D;
        gv.accumulate = true;
        gemm_f32_serial(gv);
      }
    }
    for (int64_t s = 0; s < T; ++s) {
      std::memcpy(op.dk + (b * T + s) * op.ldk + kvh * D, dK + s * D, sizeof(float) * D);
      std::memcpy(op.dv + (b * T + s) * op.ldv + kvh * D, dV + s * D, sizeof(float) * D);
    }
  });
}

}  // namespace rlhf::cpu
