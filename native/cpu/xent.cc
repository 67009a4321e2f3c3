// Cross-entropy on materialised logits with its gradient, in place (twin of
// kernels/xent.cu): the middle step of the LM head when the loss gradient is
// known before the forward. Rows in parallel, each a few vectorised passes
// over its vocabulary: scale, max, exp with its sums (stored), dz.
#include <cmath>

#include "../ops/math.h"
#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

void CpuBackend::logits_xent(const LogitsXentOp& op) {
  if (op.n <= 0) return;
  const VecKernels& v = vec();
  const float inv_vocab = 1.f / static_cast<float>(op.vocab);
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    float* z = op.z + i * op.ld;
    const int32_t t = op.targets[i];
    if (t < 0) {
      for (int64_t j = 0; j < op.vocab; ++j) z[j] = 0.f;
      op.logp[i] = 0.f;
      if (op.entropy) op.entropy[i] = 0.f;
      if (op.lse) op.lse[i] = 0.f;
      if (op.mean_logp) op.mean_logp[i] = 0.f;
      return;
    }
    if (op.inv_temperature != 1.f) v.scale(z, op.inv_temperature, z, op.vocab);
    const bool smooth = op.dmean_logp || op.mean_logp;
    const float zsum = smooth ? vec_sum(v, z, op.vocab) : 0.f;  // before z is overwritten
    const float m = v.max(z, op.vocab);
    const float zt = z[t];
    float s = 0.f, sx = 0.f;
    v.exp_stats(z, 1.f, m, z, &s, &sx, op.vocab);  // z <- e = exp(z - m); s = sum e, sx = sum e z
    const float lse = m + std::log(s);
    op.logp[i] = zt - lse;
    if (op.entropy) op.entropy[i] = lse - sx / s;
    if (op.lse) op.lse[i] = lse;
    if (op.mean_logp) op.mean_logp[i] = math::mean_logp(zsum, inv_vocab, lse);
    const float g = op.inv_temperature * op.dlogp[i];
    const float gm = op.dmean_logp ? op.inv_temperature * op.dmean_logp[i] : 0.f;
    if (gm == 0.f) {
      v.scale(z, -g / s, z, op.vocab);  // -g p, p = e / s: one exp per logit
    } else {
      // math::lm_head_dz with ge = 0, vectorised: -(g + gm) p + gm / V
      v.scale(z, -(g + gm) / s, z, op.vocab);
      const float c = gm * inv_vocab;
      for (int64_t j = 0; j < op.vocab; ++j) z[j] += c;
    }
    z[t] += g;  // + g onehot
  });
}

}  // namespace rlhf::cpu
