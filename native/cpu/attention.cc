// Causal grouped-query attention with a padding mask, and its decode-time
// twin over a KV cache. One task per (sequence, head); each query row makes
// its scores with dot products over the keys it may see, takes a stable
// softmax (max-shifted exp) and accumulates the values.
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_backend.h"
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

}  // namespace

void CpuBackend::attention(const AttentionOp& op) {
  const VecKernels& v = vec();
  const int64_t group = op.heads / op.kv_heads;
  std::vector<std::vector<float>> scratch(pool_.size(), std::vector<float>(op.seq));
  pool_.parallel_for(op.batch * op.heads, [&](int64_t task, int thread) {
    const int64_t b = task / op.heads, h = task % op.heads, kvh = h / group;
    float* scores = scratch[thread].data();
    const uint8_t* mask = op.mask ? op.mask + b * op.seq : nullptr;
    const float* kb = op.k + b * op.seq * op.ldk + kvh * op.head_dim;
    const float* vb = op.v + b * op.seq * op.ldv + kvh * op.head_dim;
    for (int64_t t = 0; t < op.seq; ++t) {
      const int64_t row = b * op.seq + t;
      float* out = op.out + row * op.ldo + h * op.head_dim;
      float lse = -INFINITY;
      if (mask && !mask[t]) {
        std::memset(out, 0, sizeof(float) * op.head_dim);
      } else {
        lse = attend_row(v, op.q + row * op.ldq + h * op.head_dim, op.head_dim, op.scale, kb, op.ldk, vb, op.ldv, t + 1, mask,
                         scores, out);
      }
      if (op.lse) op.lse[(b * op.heads + h) * op.seq + t] = lse;
    }
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

}  // namespace rlhf::cpu
