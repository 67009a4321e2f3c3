// Loss kernels (twin of native/cpu/loss.cc): SFT, pairwise reward-model, PPO,
// the DPO family and KTO, and the per-row reductions that feed them (row_dot: one block per
// row, fp64 sum; row_dot_backward: one thread per element). Each loss is ONE
// kernel launch of one block that computes the loss, the
// gradients (times grad_scale) and the statistics together: the masked means
// need the mask sum before any gradient can be written, which a single block
// gets with one extra pass over the mask and no grid-wide synchronisation.
// Per-element terms are ops/math.h's (shared with the CPU); sums are fp64 in
// a fixed order (thread t takes elements t, t + 1024, ...; a fixed reduction
// tree), so results are deterministic. A loss reads a few arrays of n floats:
// one block streams even a million tokens in tens of microseconds.
#include <algorithm>

#include "common.cuh"

namespace rlhf::cuda {

namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ float weight(const float* mask, int64_t i) { return mask ? mask[i] : 1.f; }
__device__ __forceinline__ double mean_divisor(double count) { return count > 0 ? count : 1.0; }

__global__ void __launch_bounds__(kThreads) sft_loss_kernel(SftLossOp op) {
  __shared__ double sh[32 * 3];
  const float eps = op.label_smoothing;
  const bool smooth = eps != 0.f;  // eps 0 reads no mean_logp (as native/cpu/loss.cc)
  double acc[3] = {0, 0, 0};  // sum(mask), -sum(mask * logp), -sum(mask * mean_logp)
  for (int64_t i = threadIdx.x; i < op.n; i += blockDim.x) {
    const float w = weight(op.mask, i);
    if (w == 0.f) continue;
    acc[0] += w;
    acc[1] -= static_cast<double>(w) * op.logp[i];
    if (smooth) acc[2] -= static_cast<double>(w) * op.mean_logp[i];
  }
  block_sum_n<3>(acc, sh);
  const double denom = op.denom > 0.f ? static_cast<double>(op.denom) : mean_divisor(acc[0]);
  const double total = smooth ? (1.0 - eps) * acc[1] + static_cast<double>(eps) * acc[2] : acc[1];
  if (op.dlogp) {
    const float g = static_cast<float>(-static_cast<double>(op.grad_scale) / denom);
    for (int64_t i = threadIdx.x; i < op.n; i += blockDim.x) {
      const float w = weight(op.mask, i);
      if (!smooth) {
        op.dlogp[i] = w != 0.f ? w * g : 0.f;
        continue;
      }
      const math::SmoothedGrads d = math::smoothed_nll_grads(w != 0.f ? -w * g : 0.f, eps);
      op.dlogp[i] = w != 0.f ? d.logp : 0.f;
      if (op.dmean_logp) op.dmean_logp[i] = w != 0.f ? d.mean_logp : 0.f;
    }
  }
  if (threadIdx.x == 0) {
    op.loss[0] = static_cast<float>(total / denom);
    if (op.stats) {
      op.stats[SftLossOp::kTokens] = static_cast<float>(acc[0]);
      op.stats[SftLossOp::kNllSum] = static_cast<float>(acc[1]);
      if (smooth) op.stats[SftLossOp::kSmoothSum] = static_cast<float>(acc[2]);
    }
  }
}

__global__ void __launch_bounds__(kThreads) pairwise_loss_kernel(PairwiseLossOp op) {
  __shared__ double sh[32 * 5];
  const double inv_b = op.b > 0 ? 1.0 / static_cast<double>(op.b) : 0.0;
  const float g = static_cast<float>(op.grad_scale * inv_b);
  double acc[5] = {0, 0, 0, 0, 0};  // loss, correct, chosen - rejected, chosen, rejected
  for (int64_t i = threadIdx.x; i < op.b; i += blockDim.x) {
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
  block_sum_n<5>(acc, sh);
  if (threadIdx.x == 0) {
    op.loss[0] = static_cast<float>(acc[0] * inv_b);
    if (op.stats) {
      op.stats[PairwiseLossOp::kAccuracy] = static_cast<float>(acc[1] * inv_b);
      op.stats[PairwiseLossOp::kMarginMean] = static_cast<float>(acc[2] * inv_b);
      op.stats[PairwiseLossOp::kChosenMean] = static_cast<float>(acc[3] * inv_b);
      op.stats[PairwiseLossOp::kRejectedMean] = static_cast<float>(acc[4] * inv_b);
    }
  }
}

// PPO forward + backward fused: pass 1 sums the mask (the masked means'
// divisor), pass 2 computes every per-token term, writes dlogp / dvalues /
// dentropy and accumulates the loss parts and statistics.
__global__ void __launch_bounds__(kThreads) ppo_loss_kernel(PpoLossOp op) {
  __shared__ double sh[32 * 8];
  const bool has_values = op.values && op.old_values && op.returns;
  const int estimator = static_cast<int>(op.kl_estimator);
  double cnt[1] = {0};
  if (op.mask)
    for (int64_t i = threadIdx.x; i < op.n; i += blockDim.x) cnt[0] += op.mask[i];
  else
    cnt[0] = threadIdx.x == 0 ? static_cast<double>(op.n) : 0.0;
  block_sum_n<1>(cnt, sh);
  const double count = cnt[0];
  const double inv = 1.0 / (op.denom > 0 ? op.denom : mean_divisor(count));
  const float g = static_cast<float>(op.grad_scale * inv);
  const float eps_hi = op.clip_range_high < 0.f ? op.clip_range : op.clip_range_high;
  enum { kPg, kVf, kKl, kEnt, kApproxKl, kClip, kVfClip, kRatio, kAcc };
  double acc[kAcc] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = threadIdx.x; i < op.n; i += blockDim.x) {
    const float w = weight(op.mask, i);
    if (w == 0.f) {
      if (op.dlogp) op.dlogp[i] = 0.f;
      if (op.dvalues) op.dvalues[i] = 0.f;
      if (op.dentropy) op.dentropy[i] = 0.f;
      continue;
    }
    const double wd = w;
    const float gw = g * w;
    const float lp = op.logp[i], olp = op.old_logp[i];
    const math::PpoPgTerm pg = math::ppo_pg_term(lp, olp, op.advantages[i], op.clip_range, eps_hi);
    acc[kPg] += wd * pg.loss;
    acc[kRatio] += wd * pg.ratio;
    acc[kClip] += pg.clipped ? wd : 0.0;
    const float dlr = lp - olp;
    acc[kApproxKl] += wd * (0.5f * dlr * dlr);
    float dlogp = pg.grad;
    if (op.ref_logp) {
      const math::LossTerm kl = math::kl_ratio_term(math::kl_term(lp, op.ref_logp[i], estimator), pg.ratio, op.kl_times_ratio);
      acc[kKl] += wd * kl.loss;
      dlogp += op.kl_coef * kl.grad;
    }
    if (op.dlogp) op.dlogp[i] = gw * dlogp;
    if (has_values) {
      const math::PpoVfTerm vf = math::ppo_vf_term(op.values[i], op.old_values[i], op.returns[i], op.clip_range_value);
      acc[kVf] += wd * vf.loss;
      acc[kVfClip] += vf.clipped ? wd : 0.0;
      if (op.dvalues) op.dvalues[i] = gw * (op.vf_coef * vf.grad);
    } else if (op.dvalues) {
      op.dvalues[i] = 0.f;
    }
    if (op.entropy) acc[kEnt] += wd * op.entropy[i];
    if (op.dentropy) op.dentropy[i] = op.entropy ? gw * -op.ent_coef : 0.f;
  }
  block_sum_n<kAcc>(acc, sh);
  if (threadIdx.x == 0) {
    const double pg = acc[kPg] * inv, vf = acc[kVf] * inv, kl = acc[kKl] * inv, ent = acc[kEnt] * inv;
    op.loss[0] = static_cast<float>(pg + static_cast<double>(op.vf_coef) * vf + static_cast<double>(op.kl_coef) * kl -
                                    static_cast<double>(op.ent_coef) * ent);
    if (op.stats) {
      float* st = op.stats;
      st[PpoLossOp::kPgLoss] = static_cast<float>(pg);
      st[PpoLossOp::kVfLoss] = static_cast<float>(vf);
      st[PpoLossOp::kKl] = static_cast<float>(kl);
      st[PpoLossOp::kEntropy] = static_cast<float>(ent);
      st[PpoLossOp::kApproxKl] = static_cast<float>(acc[kApproxKl] * inv);
      st[PpoLossOp::kClipfrac] = static_cast<float>(acc[kClip] * inv);
      st[PpoLossOp::kVfClipfrac] = static_cast<float>(acc[kVfClip] * inv);
      st[PpoLossOp::kRatioMean] = static_cast<float>(acc[kRatio] * inv);
      st[PpoLossOp::kTokens] = static_cast<float>(count);
    }
  }
}

__global__ void __launch_bounds__(kThreads) dpo_loss_kernel(DpoLossOp op) {
  __shared__ double sh[32 * 6];
  const double inv_b = op.b > 0 ? 1.0 / static_cast<double>(op.b) : 0.0;
  const float g = static_cast<float>(op.grad_scale * inv_b);
  const bool orpo = op.loss_type == PrefLoss::kOrpo;
  // ORPO's NLL divisor (the batch's chosen completion tokens) first: every
  // thread has it after the block sum.
  double tokens[1] = {0};
  if (orpo)
    for (int64_t i = threadIdx.x; i < op.b; i += blockDim.x) tokens[0] += op.len_chosen[i];
  block_sum_n<1>(tokens, sh);
  const double chosen_tokens = tokens[0] > 0 ? tokens[0] : 1.0;
  const float g_nll = orpo ? static_cast<float>(-op.grad_scale / chosen_tokens) : 0.f;
  // loss, correct, chosen reward, rejected reward, chosen sums, log odds
  double acc[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t i = threadIdx.x; i < op.b; i += blockDim.x) {
    const float lc = op.len_chosen ? op.len_chosen[i] : 1.f, lr = op.len_rejected ? op.len_rejected[i] : 1.f;
    const float pc = op.policy_chosen[i], pr = op.policy_rejected[i];
    const float sc = (op.ref_chosen ? pc - op.ref_chosen[i] : pc) / lc;
    const float sr = (op.ref_rejected ? pr - op.ref_rejected[i] : pr) / lr;
    float dc, dr;
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
  block_sum_n<6>(acc, sh);
  if (threadIdx.x == 0) {
    const double nll = orpo ? -acc[4] / chosen_tokens : 0.0;
    op.loss[0] = static_cast<float>(acc[0] * inv_b + nll);
    if (op.stats) {
      op.stats[DpoLossOp::kAccuracy] = static_cast<float>(acc[1] * inv_b);
      op.stats[DpoLossOp::kChosenReward] = static_cast<float>(acc[2] * inv_b);
      op.stats[DpoLossOp::kRejectedReward] = static_cast<float>(acc[3] * inv_b);
      op.stats[DpoLossOp::kMargin] = static_cast<float>((acc[2] - acc[3]) * inv_b);
      op.stats[DpoLossOp::kNll] = static_cast<float>(nll);
      op.stats[DpoLossOp::kLogOdds] = static_cast<float>(acc[5] * inv_b);
    }
  }
}

__global__ void __launch_bounds__(kThreads) kto_loss_kernel(KtoLossOp op) {
  __shared__ double sh[32 * 7];
  const double inv_b = op.b > 0 ? 1.0 / static_cast<double>(op.b) : 0.0;
  const float g = static_cast<float>(op.grad_scale * inv_b);
  // loss, chosen / rejected reward, chosen / rejected logps, chosen / rejected count
  double acc[7] = {0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = threadIdx.x; i < op.b; i += blockDim.x) {
    const bool want = op.desirable[i] != 0.f;
    const float r = op.policy[i] - op.ref[i];
    const math::LossTerm t = math::kto_term(r, want, op.kl, op.beta, want ? op.desirable_weight : op.undesirable_weight);
    acc[0] += t.loss;
    acc[want ? 1 : 2] += static_cast<double>(op.beta) * r;
    acc[want ? 3 : 4] += op.policy[i];
    acc[want ? 5 : 6] += 1.0;
    if (op.dpolicy) op.dpolicy[i] = t.grad * g;
  }
  block_sum_n<7>(acc, sh);
  if (threadIdx.x == 0) {
    op.loss[0] = static_cast<float>(acc[0] * inv_b);
    if (op.stats) {
      const double nc = acc[5] > 0 ? acc[5] : 1.0, nr = acc[6] > 0 ? acc[6] : 1.0;
      op.stats[KtoLossOp::kChosenReward] = static_cast<float>(acc[1] / nc);
      op.stats[KtoLossOp::kRejectedReward] = static_cast<float>(acc[2] / nr);
      op.stats[KtoLossOp::kChosenLogps] = static_cast<float>(acc[3] / nc);
      op.stats[KtoLossOp::kRejectedLogps] = static_cast<float>(acc[4] / nr);
      op.stats[KtoLossOp::kChosenCount] = static_cast<float>(acc[5]);
      op.stats[KtoLossOp::kRejectedCount] = static_cast<float>(acc[6]);
    }
  }
}

// out[r] = sum_c w[r,c] x[r,c]: block r, thread t takes columns t, t + 256,
// ... in fp64; the block's fixed reduction tree sums them.
constexpr int kRowThreads = 256;
__global__ void __launch_bounds__(kRowThreads) row_dot_kernel(RowDotOp op) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const float* x = op.x + r * op.cols;
  const float* w = op.w + r * op.cols;
  double acc[1] = {0};
  for (int64_t c = threadIdx.x; c < op.cols; c += blockDim.x) {
    const float wc = w[c];
    if (wc != 0.f) acc[0] += static_cast<double>(wc) * x[c];
  }
  block_sum_n<1>(acc, sh);
  if (threadIdx.x == 0) op.out[r] = static_cast<float>(acc[0]);
}

__global__ void row_dot_backward_kernel(RowDotBackwardOp op) {
  const int64_t n = op.rows * op.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float wi = op.w[i];
    op.dx[i] = wi != 0.f ? wi * op.dout[i / op.cols] : 0.f;
  }
}

}  // namespace

void CudaBackend::row_dot(const RowDotOp& op) {
  if (op.rows <= 0) return;
  row_dot_kernel<<<static_cast<unsigned>(op.rows), kRowThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::row_dot_backward(const RowDotBackwardOp& op) {
  const int64_t n = op.rows * op.cols;
  if (n <= 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
  row_dot_backward_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::sft_loss(const SftLossOp& op) {
  sft_loss_kernel<<<1, kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::pairwise_loss(const PairwiseLossOp& op) {
  pairwise_loss_kernel<<<1, kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::ppo_loss(const PpoLossOp& op) {
  ppo_loss_kernel<<<1, kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::dpo_loss(const DpoLossOp& op) {
  dpo_loss_kernel<<<1, kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::kto_loss(const KtoLossOp& op) {
  kto_loss_kernel<<<1, kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
