// The fused LM head (log-prob of given targets + entropy, never all logits at
// once) and the scalar value head.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../ops/math.h"
#include "cpu_backend.h"
#include "gemm.h"
#include "vec.h"

namespace rlhf::cpu {

namespace {
// Rows per block: each block streams (and packs) the whole LM-head weight
// once, so more rows means fewer passes over it; the block's hidden rows are
// packed once for all its vocabulary chunks. Vocabulary chunk: the unit of the
// log-sum-exp merge (changing it would change the last bits of logp). The
// logits scratch is kRowBlock x kVocabChunk floats (8 MB, in L3).
constexpr int64_t kRowBlock = 1024;
constexpr int64_t kVocabChunk = 2048;

// z[rows, vc] = h W[v0:v0+vc]^T for one block of hidden rows h, whose packed
// form (gemm_pack_a) `hp` serves every chunk.
struct LogitsGemm {
  GemmArgs g;
  LogitsGemm(const float* h, int64_t rows, int64_t dim, ThreadPool& pool) {
    g.trans_b = true;
    g.m = rows, g.k = dim, g.a = h, g.lda = dim, g.ldb = dim;
    float* hp = thread_scratch(3, gemm_packed_a_floats(rows, dim));
    gemm_pack_a(g, hp, pool);
    g.a_packed = hp;
  }
  void run(const float* w, const uint16_t* w16, int64_t v0, int64_t vc, float* z, ThreadPool& pool) {
    g.n = vc, g.c = z, g.ldc = vc;
    g.b = w ? w + v0 * g.k : nullptr;
    g.b16 = w16 ? w16 + v0 * g.k : nullptr;
    gemm_f32(g, pool);
  }
};
}  // namespace

void CpuBackend::lm_head_logp(const LmHeadLogpOp& op) {
  const VecKernels& v = vec();
  const int64_t vc_max = std::min(kVocabChunk, op.vocab);
  float* const logits = thread_scratch(2, std::min(kRowBlock, op.n) * vc_max);  // written by the GEMM before use
  std::vector<math::OnlineLse> state(static_cast<size_t>(std::min(kRowBlock, op.n)));
  std::vector<float> target_logit(state.size());
  std::vector<double> logit_sum(op.mean_logp ? state.size() : 0);  // scaled logits, summed over the chunks

  for (int64_t r0 = 0; r0 < op.n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, op.n - r0);
    std::fill(state.begin(), state.begin() + rows, math::OnlineLse{});
    std::fill(target_logit.begin(), target_logit.begin() + rows, 0.f);
    std::fill(logit_sum.begin(), logit_sum.end(), 0.0);
    LogitsGemm lg(op.hidden + r0 * op.dim, rows, op.dim, pool_);
    for (int64_t v0 = 0; v0 < op.vocab; v0 += kVocabChunk) {
      const int64_t vc = std::min(kVocabChunk, op.vocab - v0);
      lg.run(op.weight, op.weight_bf16, v0, vc, logits, pool_);
      pool_.parallel_for(rows, [&](int64_t r, int) {
        const int32_t target = op.targets[r0 + r];
        if (target < 0) return;
        const float* row = logits + r * vc;
        const float m = v.max(row, vc) * op.inv_temperature;  // inv_temperature > 0
        math::OnlineLse chunk{m, 0.f, 0.f};
        v.exp_stats(row, op.inv_temperature, m, nullptr, &chunk.s, &chunk.t, vc);
        // exp_stats sums exp(x - m) * x; the merge keeps the (m, s, t) form.
        state[r] = math::lse_merge(state[r], chunk);
        if (target >= v0 && target < v0 + vc) target_logit[r] = row[target - v0] * op.inv_temperature;
        if (op.mean_logp) logit_sum[r] += static_cast<double>(vec_sum(v, row, vc)) * op.inv_temperature;
      });
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r0 + r;
      if (op.targets[i] < 0) {
        op.logp[i] = 0.f;
        if (op.entropy) op.entropy[i] = 0.f;
        if (op.lse) op.lse[i] = 0.f;
        if (op.mean_logp) op.mean_logp[i] = 0.f;
        continue;
      }
      const float lse = math::lse_value(state[r]);
      op.logp[i] = target_logit[r] - lse;
      if (op.entropy) op.entropy[i] = math::lse_entropy(state[r]);
      if (op.lse) op.lse[i] = lse;
      if (op.mean_logp) op.mean_logp[i] = math::mean_logp(static_cast<float>(logit_sum[r]), 1.f / static_cast<float>(op.vocab), lse);
    }
  }
}

void CpuBackend::value_head(const ValueHeadOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) { op.value[i] = v.dot(op.hidden + i * op.dim, op.weight, op.dim) + op.bias; });
}

void CpuBackend::lm_head_logp_backward(const LmHeadLogpBackwardOp& op) {
  const VecKernels& v = vec();
  std::vector<std::vector<float>> pbuf(static_cast<size_t>(pool_.size()), std::vector<float>(static_cast<size_t>(kVocabChunk)));
  const int64_t vc_max = std::min(kVocabChunk, op.vocab);
  const float inv_vocab = 1.f / static_cast<float>(op.vocab);
  float* const dz = thread_scratch(2, std::min(kRowBlock, op.n) * vc_max);  // written by the GEMM before use
  for (int64_t r0 = 0; r0 < op.n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, op.n - r0);
    const float* h = op.hidden + r0 * op.dim;
    LogitsGemm lg(h, rows, op.dim, pool_);
    for (int64_t v0 = 0; v0 < op.vocab; v0 += kVocabChunk) {
      const int64_t vc = std::min(kVocabChunk, op.vocab - v0);
      lg.run(op.weight, op.weight_bf16, v0, vc, dz, pool_);  // z chunk = h W_chunk^T (unscaled)
      pool_.parallel_for(rows, [&](int64_t r, int thread) {
        float* z = dz + r * vc;
        const int64_t i = r0 + r;
        const int32_t target = op.targets[i];
        if (target < 0) {
          std::memset(z, 0, sizeof(float) * vc);
          return;
        }
        const float lse = op.lse[i], gl = op.dlogp ? op.dlogp[i] : 0.f;
        const float ge = op.dentropy ? op.dentropy[i] : 0.f;
        const float shift = op.dentropy ? -lse + op.entropy[i] : 0.f;
        const float gm = op.dmean_logp ? op.dmean_logp[i] : 0.f;
        float* p = pbuf[static_cast<size_t>(thread)].data();
        if (op.inv_temperature != 1.f) v.scale(z, op.inv_temperature, z, vc);  // z = inv_t * logits (x * 1 == x: skipped)
        v.exp_shift(z, lse, p, vc);             // p = softmax(z) entries of this chunk
        for (int64_t j = 0; j < vc; ++j)  // chain rule through z = inv_t * h W^T
          z[j] = math::lm_head_dz(p[j], z[j], gl, ge, shift, gm, inv_vocab) * op.inv_temperature;
        if (target >= v0 && target < v0 + vc) z[target - v0] += gl * op.inv_temperature;
      });
      // dhidden += dz W_chunk      ([rows, vc] x [vc, dim])
      GemmOp dh;
      dh.m = rows, dh.n = op.dim, dh.k = vc, dh.a = dz, dh.lda = vc;
      dh.b = op.weight ? op.weight + v0 * op.dim : nullptr;
      dh.b_bf16 = op.weight_bf16 ? op.weight_bf16 + v0 * op.dim : nullptr;
      dh.ldb = op.dim, dh.c = op.dhidden + r0 * op.dim, dh.ldc = op.dim, dh.accumulate = true;
      gemm(dh);
      if (op.dweight) {  // dW_chunk += dz^T h   ([vc, rows] x [rows, dim])
        GemmOp dw;
        dw.trans_a = true;
        dw.m = vc, dw.n = op.dim, dw.k = rows, dw.a = dz, dw.lda = vc, dw.b = h, dw.ldb = op.dim;
        dw.c = op.dweight + v0 * op.dim, dw.ldc = op.dim, dw.accumulate = true;
        gemm(dw);
      }
    }
  }
}
void CpuBackend::value_head_backward(const ValueHeadBackwardOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) { v.axpy(op.dvalue[i], op.weight, op.dhidden + i * op.dim, op.dim); });
  if (op.dweight)
    column_reduce(pool_, op.dim, [&](int64_t c0, int64_t c1) {
      for (int64_t i = 0; i < op.n; ++i)
        for (int64_t j = c0; j < c1; ++j) op.dweight[j] += op.dvalue[i] * op.hidden[i * op.dim + j];
    });
  if (op.dbias) {
    double s = 0;
    for (int64_t i = 0; i < op.n; ++i) s += op.dvalue[i];
    op.dbias[0] += static_cast<float>(s);
  }
}

}  // namespace rlhf::cpu
