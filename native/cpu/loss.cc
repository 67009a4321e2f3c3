// Loss kernels: SFT (masked NLL), pairwise reward-model loss, PPO (clipped
// surrogate + clipped value loss + KL + entropy) and DPO, and the per-row
// reductions that feed them from the model's row layout (row_dot: a reward
// model's score at each row's last token, DPO's sequence log-prob sums) with
// their backward (the per-sequence gradient broadcast back). Each loss writes the
// scalar loss, the gradients w.r.t. the arrays the model produced (per-token
// logp, values, entropy; per-sequence scores or log-prob sums) times
// grad_scale, and its statistics. The per-element math is in ops/math.h, shared
// with kernels/loss.cu; docs/losses.md gives the formulas and their sources.
//
// Reductions: fixed chunks of kChunk elements (independent of the thread
// count), each summed in fp64, combined in chunk order, so every result is
// deterministic.
#include <algorithm>
#include <array>
#include <vector>

#include "../ops/math.h"
#include "cpu_backend.h"

namespace rlhf::cpu {

namespace {

constexpr int64_t kChunk = 4096;

// fn(begin, end, acc) accumulates elements [begin, end) into acc (K doubles,
// zeroed); the chunks run in parallel and are summed in order.
template <int K, typename F>
std::array<double, K> chunked_sum(ThreadPool& pool, int64_t n, F&& fn) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::array<double, K>> part(static_cast<size_t>(chunks));
  pool.parallel_for(chunks, [&](int64_t c, int) {
    std::array<double, K> acc{};
    fn(c * kChunk, std::min(n, (c + 1) * kChunk), acc);
    part[static_cast<size_t>(c)] = acc;
  });
  std::array<double, K> total{};
  for (const auto& p : part)
    for (int k = 0; k < K; ++k) total[k] += p[k];
  return total;
}

inline float weight(const float* mask, int64_t i) { return mask ? mask[i] : 1.f; }

double mask_sum(ThreadPool& pool, const float* mask, int64_t n) {
  if (!mask) return static_cast<double>(n);
  return chunked_sum<1>(pool, n, [&](int64_t b, int64_t e, std::array<double, 1>& acc) {
    for (int64_t i = b; i < e; ++i) acc[0] += mask[i];
  })[0];
}

// The divisor of a masked mean: the mask sum, or 1 when nothing is masked in.
inline double mean_divisor(double count) { return count > 0 ? count : 1.0; }

}  // namespace

void CpuBackend::sft_loss(const SftLossOp& op) {
  const int64_t n = op.n;
  const float* mask = op.mask;
  const float eps = op.label_smoothing;
  const bool smooth = eps != 0.f;  // eps 0 reads no mean_logp and gives the plain NLL's bits
  // acc: [0] sum(mask), [1] -sum(mask * logp), [2] -sum(mask * mean_logp)
  const auto s = chunked_sum<3>(pool_, n, [&](int64_t b, int64_t e, std::array<double, 3>& acc) {
    for (int64_t i = b; i < e; ++i) {
      const float w = weight(mask, i);
      if (w == 0.f) continue;
      acc[0] += w;
      acc[1] -= static_cast<double>(w) * op.logp[i];
      if (smooth) acc[2] -= static_cast<double>(w) * op.mean_logp[i];
    }
  });
  const double denom = op.denom > 0.f ? static_cast<double>(op.denom) : mean_divisor(s[0]);
  const double total = smooth ? (1.0 - eps) * s[1] + static_cast<double>(eps) * s[2] : s[1];
  op.loss[0] = static_cast<float>(total / denom);
  if (op.dlogp) {
    const float g = static_cast<float>(-static_cast<double>(op.grad_scale) / denom);
    pool_.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c, int) {
      const int64_t e = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < e; ++i) {
        const float w = weight(mask, i);
        if (!smooth) {
          op.dlogp[i] = w != 0.f ? w * g : 0.f;
          continue;
        }
        const math::SmoothedGrads d = math::smoothed_nll_grads(w != 0.f ? -w * g : 0.f, eps);
        op.dlogp[i] = w != 0.f ? d.logp : 0.f;
        if (op.dmean_logp) op.dmean_logp[i] = w != 0.f ? d.mean_logp : 0.f;
      }
    });
  }
  if (op.stats) {
    op.stats[SftLossOp::kTokens] = static_cast<float>(s[0]);
    op.stats[SftLossOp::kNllSum] = static_cast<float>(s[1]);
    if (smooth) op.stats[SftLossOp::kSmoothSum] = static_cast<float>(s[2]);
  }
}

void CpuBackend::pairwise_loss(const PairwiseLossOp& op) {
  const int64_t b = op.b;
  const double inv_b = b > 0 ? 1.0 / static_cast<double>(b) : 0.0;
  const float g = static_cast<float>(op.grad_scale * inv_b);
  // acc: [0] loss, [1] correct, [2] chosen - rejected, [3] chosen, [4] rejected
  const auto s = chunked_sum<5>(pool_, b, [&](int64_t lo, int64_t hi, std::array<double, 5>& acc) {
    for (int64_t i = lo; i < hi; ++i) {
      const float c = op.chosen[i], r = op.rejected[i];
      const float z = c - r - (op.margin ? op.margin[i] : 0.f);
      const math::LossTerm t = op.target ? math::pairwise_soft_term(z, op.target[i]) : math::pairwise_term(z);
      acc[0] += t.loss;
      acc[1] += c > r ? 1.0 : 0.0;
      acc[2] += static_cast<double>(c) - r;
      acc[3] += c;
      acc[4] += r;
      if (op.dchosen) op.dchosen[i] = t.grad * g;
      if (op.drejected) op.drejected[i] = -t.grad * g;
    }
  });
  op.loss[0] = static_cast<float>(s[0] * inv_b);
  if (op.stats) {
    op.stats[PairwiseLossOp::kAccuracy] = static_cast<float>(s[1] * inv_b);
    op.stats[PairwiseLossOp::kMarginMean] = static_cast<float>(s[2] * inv_b);
    op.stats[PairwiseLossOp::kChosenMean] = static_cast<float>(s[3] * inv_b);
    op.stats[PairwiseLossOp::kRejectedMean] = static_cast<float>(s[4] * inv_b);
  }
}

void CpuBackend::ppo_loss(const PpoLossOp& op) {
  const int64_t n = op.n;
  const float* mask = op.mask;
  const bool has_values = op.values && op.old_values && op.returns;
  const int estimator = static_cast<int>(op.kl_estimator);
  const double count = mask_sum(pool_, mask, n);
  const double inv = 1.0 / (op.denom > 0 ? op.denom : mean_divisor(count));
  const float g = static_cast<float>(op.grad_scale * inv);
  const float eps_hi = op.clip_range_high < 0.f ? op.clip_range : op.clip_range_high;
  enum { kPg, kVf, kKl, kEnt, kApproxKl, kClip, kVfClip, kRatio, kAcc };
  const auto s = chunked_sum<kAcc>(pool_, n, [&](int64_t b, int64_t e, std::array<double, kAcc>& acc) {
    // Local accumulators (kept in registers), stored to acc once per chunk.
    double a_pg = 0, a_vf = 0, a_kl = 0, a_ent = 0, a_akl = 0, a_clip = 0, a_vclip = 0, a_ratio = 0;
    const float *logp = op.logp, *old_logp = op.old_logp, *adv = op.advantages, *ref = op.ref_logp, *ent = op.entropy;
    float *dlogp_out = op.dlogp, *dvalues_out = op.dvalues, *dentropy_out = op.dentropy;
    const float kl_coef = op.kl_coef, vf_coef = op.vf_coef, ent_coef = op.ent_coef, eps = op.clip_range;
    for (int64_t i = b; i < e; ++i) {
      const float w = weight(mask, i);
      if (w == 0.f) {
        if (dlogp_out) dlogp_out[i] = 0.f;
        if (dvalues_out) dvalues_out[i] = 0.f;
        if (dentropy_out) dentropy_out[i] = 0.f;
        continue;
      }
      const double wd = w;
      const float gw = g * w;
      const math::PpoPgTerm pg = math::ppo_pg_term(logp[i], old_logp[i], adv[i], eps, eps_hi);
      a_pg += wd * pg.loss;
      a_ratio += wd * pg.ratio;
      a_clip += pg.clipped ? wd : 0.0;
      const float dlr = logp[i] - old_logp[i];
      a_akl += wd * (0.5f * dlr * dlr);
      float dlogp = pg.grad;
      if (ref) {
        const math::LossTerm kl = math::kl_ratio_term(math::kl_term(logp[i], ref[i], estimator), pg.ratio, op.kl_times_ratio);
        a_kl += wd * kl.loss;
        dlogp += kl_coef * kl.grad;
      }
      if (dlogp_out) dlogp_out[i] = gw * dlogp;
      if (has_values) {
        const math::PpoVfTerm vf = math::ppo_vf_term(op.values[i], op.old_values[i], op.returns[i], op.clip_range_value);
        a_vf += wd * vf.loss;
        a_vclip += vf.clipped ? wd : 0.0;
        if (dvalues_out) dvalues_out[i] = gw * (vf_coef * vf.grad);
      } else if (dvalues_out) {
        dvalues_out[i] = 0.f;
      }
      if (ent) a_ent += wd * ent[i];
      if (dentropy_out) dentropy_out[i] = ent ? gw * -ent_coef : 0.f;
    }
    acc[kPg] = a_pg, acc[kVf] = a_vf, acc[kKl] = a_kl, acc[kEnt] = a_ent, acc[kApproxKl] = a_akl;
    acc[kClip] = a_clip, acc[kVfClip] = a_vclip, acc[kRatio] = a_ratio;
  });
  const double pg = s[kPg] * inv, vf = s[kVf] * inv, kl = s[kKl] * inv, ent = s[kEnt] * inv;
  op.loss[0] = static_cast<float>(pg + static_cast<double>(op.vf_coef) * vf + static_cast<double>(op.kl_coef) * kl -
                                  static_cast<double>(op.ent_coef) * ent);
  if (op.stats) {
    float* st = op.stats;
    st[PpoLossOp::kPgLoss] = static_cast<float>(pg);
    st[PpoLossOp::kVfLoss] = static_cast<float>(vf);
    st[PpoLossOp::kKl] = static_cast<float>(kl);
    st[PpoLossOp::kEntropy] = static_cast<float>(ent);
    st[PpoLossOp::kApproxKl] = static_cast<float>(s[kApproxKl] * inv);
    st[PpoLossOp::kClipfrac] = static_cast<float>(s[kClip] * inv);
    st[PpoLossOp::kVfClipfrac] = static_cast<float>(s[kVfClip] * inv);
    st[PpoLossOp::kRatioMean] = static_cast<float>(s[kRatio] * inv);
    st[PpoLossOp::kTokens] = static_cast<float>(count);
  }
}

void CpuBackend::dpo_loss(const DpoLossOp& op) {
  const int64_t b = op.b;
  const double inv_b = b > 0 ? 1.0 / static_cast<double>(b) : 0.0;
  const float g = static_cast<float>(op.grad_scale * inv_b);
  const bool orpo = op.loss_type == PrefLoss::kOrpo;
  // ORPO's NLL is a token mean over the batch's chosen completions: its
  // divisor is needed before any gradient is written.
  double chosen_tokens = 0;
  if (orpo)
    for (int64_t i = 0; i < b; ++i) chosen_tokens += op.len_chosen[i];
  const float g_nll = orpo ? static_cast<float>(-op.grad_scale / (chosen_tokens > 0 ? chosen_tokens : 1.0)) : 0.f;
  // acc: [0] per-pair loss, [1] correct, [2] chosen reward, [3] rejected
  // reward, [4] chosen policy sums (ORPO's NLL), [5] log odds
  const auto s = chunked_sum<6>(pool_, b, [&](int64_t lo, int64_t hi, std::array<double, 6>& acc) {
    for (int64_t i = lo; i < hi; ++i) {
      const float lc = op.len_chosen ? op.len_chosen[i] : 1.f, lr = op.len_rejected ? op.len_rejected[i] : 1.f;
      const float pc = op.policy_chosen[i], pr = op.policy_rejected[i];
      // Policy minus reference first: the two are close, so these
      // differences are exact or nearly so in fp32.
      const float sc = (op.ref_chosen ? pc - op.ref_chosen[i] : pc) / lc;
      const float sr = (op.ref_rejected ? pr - op.ref_rejected[i] : pr) / lr;
      float dc, dr;  // d pair loss / d s_c, d s_r
      if (orpo) {
        const math::OrpoTerm t = math::pref_orpo_term(sc, sr, op.beta);
        acc[0] += t.loss, acc[4] += pc, acc[5] += t.log_odds;
        dc = t.dchosen, dr = t.drejected;
      } else {
        const math::LossTerm t = math::pref_term(op.loss_type, sc - sr, op.beta, op.label_smoothing, op.gamma);
        acc[0] += t.loss;
        dc = t.grad, dr = -t.grad;
      }
      const double cr = static_cast<double>(op.beta) * sc, rj = static_cast<double>(op.beta) * sr;
      acc[1] += cr > rj ? 1.0 : 0.0;
      acc[2] += cr;
      acc[3] += rj;
      if (op.dpolicy_chosen) op.dpolicy_chosen[i] = dc / lc * g + g_nll;
      if (op.dpolicy_rejected) op.dpolicy_rejected[i] = dr / lr * g;
    }
  });
  const double nll = orpo ? -s[4] / (chosen_tokens > 0 ? chosen_tokens : 1.0) : 0.0;
  op.loss[0] = static_cast<float>(s[0] * inv_b + nll);
  if (op.stats) {
    op.stats[DpoLossOp::kAccuracy] = static_cast<float>(s[1] * inv_b);
    op.stats[DpoLossOp::kChosenReward] = static_cast<float>(s[2] * inv_b);
    op.stats[DpoLossOp::kRejectedReward] = static_cast<float>(s[3] * inv_b);
    op.stats[DpoLossOp::kMargin] = static_cast<float>((s[2] - s[3]) * inv_b);
    op.stats[DpoLossOp::kNll] = static_cast<float>(nll);
    op.stats[DpoLossOp::kLogOdds] = static_cast<float>(s[5] * inv_b);
  }
}

void CpuBackend::kto_loss(const KtoLossOp& op) {
  const int64_t b = op.b;
  const double inv_b = b > 0 ? 1.0 / static_cast<double>(b) : 0.0;
  const float g = static_cast<float>(op.grad_scale * inv_b);
  // acc: loss, chosen reward, rejected reward, chosen logps, rejected logps, counts
  const auto s = chunked_sum<7>(pool_, b, [&](int64_t lo, int64_t hi, std::array<double, 7>& acc) {
    for (int64_t i = lo; i < hi; ++i) {
      const bool want = op.desirable[i] != 0.f;
      const float r = op.policy[i] - op.ref[i];
      const math::LossTerm t = math::kto_term(r, want, op.kl, op.beta, want ? op.desirable_weight : op.undesirable_weight);
      acc[0] += t.loss;
      acc[want ? 1 : 2] += static_cast<double>(op.beta) * r;
      acc[want ? 3 : 4] += op.policy[i];
      acc[want ? 5 : 6] += 1.0;
      if (op.dpolicy) op.dpolicy[i] = t.grad * g;
    }
  });
  op.loss[0] = static_cast<float>(s[0] * inv_b);
  if (op.stats) {
    const double nc = s[5] > 0 ? s[5] : 1.0, nr = s[6] > 0 ? s[6] : 1.0;
    op.stats[KtoLossOp::kChosenReward] = static_cast<float>(s[1] / nc);
    op.stats[KtoLossOp::kRejectedReward] = static_cast<float>(s[2] / nr);
    op.stats[KtoLossOp::kChosenLogps] = static_cast<float>(s[3] / nc);
    op.stats[KtoLossOp::kRejectedLogps] = static_cast<float>(s[4] / nr);
    op.stats[KtoLossOp::kChosenCount] = static_cast<float>(s[5]);
    op.stats[KtoLossOp::kRejectedCount] = static_cast<float>(s[6]);
  }
}

// One row per task; each row summed in fp64 in column order (no chunks: a
// row is one sequence, and the order must not depend on the thread count).
void CpuBackend::row_dot(const RowDotOp& op) {
  const int64_t cols = op.cols;
  pool_.parallel_for(op.rows, [&](int64_t r, int) {
    const float* x = op.x + r * cols;
    const float* w = op.w + r * cols;
    double acc = 0;
    for (int64_t c = 0; c < cols; ++c)
      if (w[c] != 0.f) acc += static_cast<double>(w[c]) * x[c];
    op.out[r] = static_cast<float>(acc);
  });
}

void CpuBackend::row_dot_backward(const RowDotBackwardOp& op) {
  const int64_t cols = op.cols;
  pool_.parallel_for(op.rows, [&](int64_t r, int) {
    const float* w = op.w + r * cols;
    float* dx = op.dx + r * cols;
    const float d = op.dout[r];
    for (int64_t c = 0; c < cols; ++c) dx[c] = w[c] != 0.f ? w[c] * d : 0.f;
  });
}

}  // namespace rlhf::cpu
