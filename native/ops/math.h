// Per-element math shared by the CPU and CUDA backends. Marked host+device
// under nvcc, so the CPU tests exercise exactly the formulas the GPU kernels
// run; what stays GPU-only is indexing, tiling and reductions.
#pragma once
#include <cmath>
#include <cstdint>

#include "op_args.h"

#if defined(__CUDACC__)
#define RLHF_HD __host__ __device__ __forceinline__
#else
#define RLHF_HD inline
#endif

namespace rlhf::math {

RLHF_HD float silu(float x) { return x / (1.f + expf(-x)); }

// GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
RLHF_HD float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// SwiGLU backward of one element, y = silu(g) u: s = sigmoid(g),
// du = dy g s, dg = dy u s (1 + g (1 - s)).
RLHF_HD void swiglu_grad(float g, float u, float dy, float& dg, float& du) {
  const float s = 1.f / (1.f + expf(-g));
  du = dy * g * s;
  dg = dy * u * s * (1.f + g * (1.f - s));
}

// d gelu_tanh(x) / dx: 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 c x^2),
// th = tanh(k (x + c x^3)).
RLHF_HD float gelu_tanh_grad(float x) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  const float th = tanhf(k * (x + c * x * x * x));
  const float du = k * (1.f + 3.f * c * x * x);
  return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * du;
}

// rotate_half: (x0, x1) are elements j and j + d/2 of one head.
RLHF_HD void rope_rotate(float& x0, float& x1, float cos_a, float sin_a) {
  const float a = x0 * cos_a - x1 * sin_a;
  const float b = x1 * cos_a + x0 * sin_a;
  x0 = a;
  x1 = b;
}

// Running log-sum-exp of a stream of values split into blocks, with the
// softmax-weighted sum of the values themselves (for the entropy):
//   m = max, s = sum exp(x - m), t = sum exp(x - m) * x.
// Merging two partial states is exact; flash attention and the chunked LM
// head both rely on it.
struct OnlineLse {
  float m = -INFINITY, s = 0.f, t = 0.f;
};

RLHF_HD OnlineLse lse_merge(OnlineLse a, OnlineLse b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = a.m > b.m ? a.m : b.m;
  const float ea = expf(a.m - m), eb = expf(b.m - m);
  return OnlineLse{m, a.s * ea + b.s * eb, a.t * ea + b.t * eb};
}

RLHF_HD float lse_value(const OnlineLse& a) { return a.m + logf(a.s); }
// Entropy of softmax(x) = lse - E[x].
RLHF_HD float lse_entropy(const OnlineLse& a) { return lse_value(a) - a.t / a.s; }

// The LM head's per-row outputs beyond logp and entropy, and the gradient of
// one logit (lm_head_logp_backward on both backends).
//
// Mean over the vocabulary of log softmax(x): mean(x) - lse, from the row's
// sum of (scaled) logits. Minus this is label smoothing's term of the
// cross-entropy (sft_loss).
RLHF_HD float mean_logp(float xsum, float inv_vocab, float lse) { return xsum * inv_vocab - lse; }

// d loss / dz_v of one row, p = softmax(z)_v, without the target's +gl (the
// caller adds it at the target column): gl = d loss / d logp, ge = d loss /
// d entropy with shift = entropy - lse, gm = d loss / d mean_logp.
RLHF_HD float lm_head_dz(float p, float z, float gl, float ge, float shift, float gm, float inv_vocab) {
  float d = -gl * p;
  if (ge != 0.f) d -= ge * p * (z + shift);
  if (gm != 0.f) d += gm * (inv_vocab - p);
  return d;
}

// llama3 RoPE scaling of one inverse frequency (transformers'
// _compute_llama3_parameters): long wavelengths are divided by `factor`, short
// ones kept, and the band between is interpolated smoothly.
RLHF_HD float llama3_inv_freq(float inv_freq, float factor, float low_freq_factor, float high_freq_factor,
                              float original_max_positions) {
  const float two_pi = 6.283185307179586f;
  const float low_freq_wavelen = original_max_positions / low_freq_factor;
  const float high_freq_wavelen = original_max_positions / high_freq_factor;
  const float wavelen = two_pi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  const float smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
  return (1.f - smooth) * inv_freq / factor + smooth * inv_freq;
}

// Counter-based RNG (splitmix64 finaliser): the value for (seed, counter) does
// not depend on call order, so sampling is reproducible on any thread count
// and on both backends.
RLHF_HD uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Uniform in [0, 1) with 24 random bits.
RLHF_HD float uniform01(uint64_t seed, uint64_t counter) {
  return static_cast<float>(mix64(seed ^ mix64(counter)) >> 40) * (1.f / 16777216.f);
}
// Standard normal (Box-Muller over counters 2i and 2i+1), for weight init.
RLHF_HD float normal01(uint64_t seed, uint64_t counter) {
  const float u1 = uniform01(seed, 2 * counter) + (1.f / 33554432.f);  // (0, 1): no log(0)
  const float u2 = uniform01(seed, 2 * counter + 1);
  return sqrtf(-2.f * logf(u1)) * cosf(6.283185307179586f * u2);
}


// ------------------------------------------------------------------ losses
// Per-element terms of the loss kernels (op_args.h, docs/losses.md). Each
// returns its term and the term's derivative; the kernels add the masking,
// the 1/count of the means and grad_scale.

// log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): no overflow, no log(0).
RLHF_HD float log_sigmoid(float x) { return fminf(x, 0.f) - log1pf(expf(-fabsf(x))); }

RLHF_HD float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

struct LossTerm {
  float loss;  // the per-element loss
  float grad;  // d loss / d (the element's input named by the function)
};

// Label-smoothed NLL of one target token (sft_loss; torch's
// CrossEntropyLoss(label_smoothing=eps)): (1 - eps)(-logp) + eps(-mean_logp).
// Its gradients, for a token weight c (mask / denom * grad_scale), are
// -(1 - eps) c w.r.t. logp and -eps c w.r.t. mean_logp.
struct SmoothedGrads {
  float logp, mean_logp;
};
RLHF_HD SmoothedGrads smoothed_nll_grads(float c, float eps) { return SmoothedGrads{-(1.f - eps) * c, -eps * c}; }

// Pairwise (Bradley-Terry) reward-model loss of one pair, z = chosen - rejected
// - margin: loss = -log sigmoid(z), grad = d/dz = -sigmoid(-z).
RLHF_HD LossTerm pairwise_term(float z) { return LossTerm{-log_sigmoid(z), -sigmoid(-z)}; }

// The same against a soft label p = P(chosen better):
// loss = -p log sigmoid(z) - (1 - p) log sigmoid(-z), grad = sigmoid(z) - p.
RLHF_HD LossTerm pairwise_soft_term(float z, float p) { return LossTerm{-p * log_sigmoid(z) - (1.f - p) * log_sigmoid(-z), sigmoid(z) - p}; }

// DPO with label smoothing ls, h = policy log-ratio minus reference log-ratio:
// loss = -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h),
// grad = d/dh = beta (ls sigmoid(beta h) - (1 - ls) sigmoid(-beta h)).
RLHF_HD LossTerm dpo_term(float h, float beta, float ls) {
  const float z = beta * h;
  const float loss = -(1.f - ls) * log_sigmoid(z) - ls * log_sigmoid(-z);
  const float grad = beta * (ls * sigmoid(z) - (1.f - ls) * sigmoid(-z));
  return LossTerm{loss, grad};
}

// One pair of the preference family (op_args.h DpoLossOp) from the score
// difference h; grad = d loss / dh. ORPO is not here (pref_orpo_term).
RLHF_HD LossTerm pref_term(PrefLoss type, float h, float beta, float ls, float gamma) {
  const float z = beta * h;
  switch (type) {
    case PrefLoss::kRobust: {
      // d/dz log sigmoid(z) = sigmoid(-z); d/dz log sigmoid(-z) = -sigmoid(z).
      const float inv = 1.f / (1.f - 2.f * ls);
      return LossTerm{(-(1.f - ls) * log_sigmoid(z) + ls * log_sigmoid(-z)) * inv,
                      beta * (-(1.f - ls) * sigmoid(-z) - ls * sigmoid(z)) * inv};
    }
    case PrefLoss::kHinge: return z < 1.f ? LossTerm{1.f - z, -beta} : LossTerm{0.f, 0.f};
    case PrefLoss::kIpo: {
      const float u = h - 0.5f / beta;
      return LossTerm{u * u, 2.f * u};
    }
    case PrefLoss::kSimpo: {
      const float y = z - gamma;  // d y / dh = beta
      return LossTerm{-(1.f - ls) * log_sigmoid(y) - ls * log_sigmoid(-y), beta * (ls * sigmoid(y) - (1.f - ls) * sigmoid(-y))};
    }
    default: return dpo_term(h, beta, ls);
  }
}

// log(1 - e^a) for a < 0 (Maechler's log1mexp: accurate on both sides of -ln 2).
RLHF_HD float log1mexp(float a) { return a > -0.6931472f ? logf(-expm1f(a)) : log1pf(-expf(a)); }

// ORPO's odds-ratio term of one pair from the per-token mean log-probs
// a_c, a_r (< 0): log_odds = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r)),
// loss = -beta log sigmoid(log_odds). d log_odds / d a = 1 / (1 - e^a) =
// -1 / expm1(a) for a_c (and its negative for a_r). Means at 0 (a sequence
// of certainty) are moved just below it, where the odds stay finite.
struct OrpoTerm {
  float loss, dchosen, drejected, log_odds;
};
RLHF_HD OrpoTerm pref_orpo_term(float ac, float ar, float beta) {
  ac = fminf(ac, -1e-6f), ar = fminf(ar, -1e-6f);
  const float lo = (ac - ar) - (log1mexp(ac) - log1mexp(ar));
  const float g = -beta * sigmoid(-lo);  // d loss / d log_odds
  return OrpoTerm{-beta * log_sigmoid(lo), g * (-1.f / expm1f(ac)), g * (1.f / expm1f(ar)), lo};
}

// KTO's term of one example (op_args.h KtoLossOp), r = policy - ref:
// desirable: w (1 - sigmoid(beta (r - kl))), grad = -w beta s (1 - s), s = sigmoid(beta (r - kl));
// undesirable: w (1 - sigmoid(beta (kl - r))), grad = +w beta s (1 - s), s = sigmoid(beta (kl - r)).
RLHF_HD LossTerm kto_term(float r, bool desirable, float kl, float beta, float w) {
  const float y = desirable ? beta * (r - kl) : beta * (kl - r);
  const float s = sigmoid(y);
  const float g = w * beta * s * sigmoid(-y);
  return LossTerm{w * sigmoid(-y), desirable ? -g : g};
}

// PPO clipped surrogate of one token as a loss (Schulman et al. 2017; TRL):
// ratio r = exp(logp - old_logp), loss = max(-A r, -A clip(r, 1 - eps_lo, 1 + eps_hi))
// (eps_lo = eps_hi in PPO; DAPO's "clip-higher" raises eps_hi).
// `clipped` when the clipped branch is strictly larger (then r is outside the
// range and the loss does not depend on logp); otherwise grad = d/dlogp = -A r.
struct PpoPgTerm {
  float loss, grad, ratio;
  bool clipped;
};
RLHF_HD PpoPgTerm ppo_pg_term(float logp, float old_logp, float adv, float eps_lo, float eps_hi) {
  const float r = expf(logp - old_logp);
  const float rc = fminf(fmaxf(r, 1.f - eps_lo), 1.f + eps_hi);
  const float l1 = -adv * r, l2 = -adv * rc;
  if (l2 > l1) return PpoPgTerm{l2, 0.f, r, true};
  return PpoPgTerm{l1, -adv * r, r, false};
}

// PPO clipped value loss of one token (OpenAI baselines ppo2; TRL):
// loss = 0.5 max((v - R)^2, (clip(v, v_old - eps_v, v_old + eps_v) - R)^2),
// grad = d/dv. eps_v <= 0 turns clipping off: 0.5 (v - R)^2.
struct PpoVfTerm {
  float loss, grad;
  bool clipped;
};
RLHF_HD PpoVfTerm ppo_vf_term(float v, float v_old, float ret, float eps_v) {
  const float d1 = v - ret;
  const float l1 = d1 * d1;
  if (!(eps_v > 0.f)) return PpoVfTerm{0.5f * l1, d1, false};
  const float vc = fminf(fmaxf(v, v_old - eps_v), v_old + eps_v);
  const float d2 = vc - ret;
  const float l2 = d2 * d2;
  if (l2 > l1) return PpoVfTerm{0.5f * l2, 0.f, true};
  return PpoVfTerm{0.5f * l1, d1, false};
}

// Per-token estimator of KL(policy || ref), d = logp - ref_logp, and its
// derivative w.r.t. logp. estimator (KlEstimator): 1: k1 = d; 2: k2 = d^2/2;
// 3: k3 = exp(-d) + d - 1, computed as expm1(-d) + d (no cancellation at small d).
RLHF_HD LossTerm kl_term(float logp, float ref_logp, int estimator) {
  const float d = logp - ref_logp;
  if (estimator == 2) return LossTerm{0.5f * d * d, d};
  if (estimator == 3) {
    const float e = expm1f(-d);
    return LossTerm{e + d, -e};
  }
  return LossTerm{d, 1.f};
}

// The KL term weighted by the probability ratio r = exp(logp - old_logp)
// when `times_ratio` (r is differentiable in logp, dr/dlogp = r):
// loss = r kl, grad = r (kl + dkl/dlogp); for k3 the grad is r (logp - ref).
RLHF_HD LossTerm kl_ratio_term(LossTerm kl, float ratio, bool times_ratio) {
  if (!times_ratio) return kl;
  return LossTerm{ratio * kl.loss, ratio * (kl.loss + kl.grad)};
}

// ------------------------------------------------------------------ optimizers

// AdamW's per-step constants, in fp64 on the host as torch does with Python
// floats (both backends call this, so they run the same fp32 update).
struct AdamWConsts {
  float decay, step_size, bc2_sqrt;
};
inline AdamWConsts adamw_consts(float lr, float beta1, float beta2, float weight_decay, int64_t step) {
  const double t = static_cast<double>(step > 1 ? step : 1);
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), t);
  return AdamWConsts{static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay), static_cast<float>(lr / bc1),
                     static_cast<float>(std::sqrt(bc2))};
}

// One element of torch.optim.AdamW: decay = 1 - lr * weight_decay,
// step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t), g already scaled.
RLHF_HD void adamw_update(float& p, float& m, float& v, float g, float decay, float beta1, float beta2, float step_size,
                          float bc2_sqrt, float eps) {
  p *= decay;
  m = beta1 * m + (1.f - beta1) * g;
  v = beta2 * v + (1.f - beta2) * g * g;
  p -= step_size * (m / (sqrtf(v) / bc2_sqrt + eps));
}

// One element of torch.optim.SGD (nesterov off): d = g + wd p; with momentum
// (buf non-null) buf = first ? d : momentum buf + (1 - dampening) d, d = buf;
// p -= lr d.
RLHF_HD void sgd_update(float& p, float* buf, float g, float lr, float wd, float momentum, float dampening, bool first) {
  float d = g;
  if (wd != 0.f) d += wd * p;
  if (buf) {
    *buf = first ? d : momentum * *buf + (1.f - dampening) * d;
    d = *buf;
  }
  p -= lr * d;
}

// torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)), in
// fp32; a NaN norm gives NaN, as torch.clamp does.
RLHF_HD float clip_coef(float max_norm, float norm) {
  const float c = max_norm / (norm + 1e-6f);
  return c > 1.f ? 1.f : c;
}

}  // namespace rlhf::math
