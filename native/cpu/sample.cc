// Token sampling: greedy, or temperature -> top-k -> top-p (the order
// Hugging Face's generate applies its warpers), one row per sequence.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../ops/math.h"
#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

namespace {
int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t j = 1; j < n; ++j)
    if (x[j] > x[best]) best = j;  // first index wins ties, as torch.argmax
  return static_cast<int32_t>(best);
}
}  // namespace

void CpuBackend::sample(const SampleOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* logits = op.logits + i * op.ld;
    const float inv_t = op.temperature > 0.f ? 1.f / op.temperature : 1.f;
    int32_t pick;
    if (op.temperature <= 0.f) {
      pick = argmax(logits, op.vocab);
    } else {
      // Candidates sorted by logit, descending; top-k cuts the list, top-p
      // keeps the shortest prefix whose probability mass reaches top_p.
      std::vector<int32_t> idx(static_cast<size_t>(op.vocab));
      std::iota(idx.begin(), idx.end(), 0);
      int64_t keep = op.vocab;
      auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
      if (op.top_k > 0 && op.top_k < keep) {
        std::partial_sort(idx.begin(), idx.begin() + op.top_k, idx.end(), by_logit);
        keep = op.top_k;
      } else {
        std::sort(idx.begin(), idx.end(), by_logit);
      }
      const float m = logits[idx[0]] * inv_t;
      std::vector<double> p(static_cast<size_t>(keep));
      double total = 0;
      for (int64_t j = 0; j < keep; ++j) total += (p[j] = std::exp(static_cast<double>(logits[idx[j]]) * inv_t - m));
      if (op.top_p < 1.f) {
        double mass = 0;
        int64_t j = 0;
        for (; j < keep; ++j) {
          mass += p[j] / total;
          if (mass >= op.top_p) break;
        }
        keep = std::min(keep, j + 1);
        total = 0;
        for (int64_t q = 0; q < keep; ++q) total += p[q];
      }
      const double u = math::uniform01(op.seeds[i], op.step) * total;
      double c = 0;
      pick = idx[keep - 1];
      for (int64_t j = 0; j < keep; ++j) {
        c += p[j];
        if (u < c) {
          pick = idx[j];
          break;
        }
      }
    }
    if (op.out_logp) {
      const float m = v.max(logits, op.vocab) * inv_t;
      float s, sx;
      v.exp_stats(logits, inv_t, m, nullptr, &s, &sx, op.vocab);
      op.out_logp[i] = logits[pick] * inv_t - (m + std::log(s));
    }
    op.out[i] = pick;
  });
}

}  // namespace rlhf::cpu
