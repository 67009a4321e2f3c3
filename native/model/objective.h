// The training objectives on the model's own backend: one loss call runs the
// loss kernels (ops/op_args.h: sft_loss, pairwise_loss, dpo_loss, kto_loss, ppo_loss,
// with row_dot / row_dot_backward for the per-sequence reductions) over the
// outputs the last training forward left in backend memory (HeadActs: logp,
// entropy, values in the row layout [batch, seq]), writes the gradients of
// those outputs into backend buffers (Transformer::loss_state()) that the
// next backward() takes, and reads back only the scalars: the loss and its
// statistics. A stage runs forward (download: false) -> loss -> backward()
// with no host arrays; per micro-batch only what the host knows goes down
// (masks, reference log-probs, rollout arrays) and a few floats come back.
//
// Evaluation mode (ObjectiveRequest::eval): the same kinds but PPO over the
// outputs the last INFERENCE forward (Transformer::forward; download false or
// not) left in backend memory, with no gradients: the loss kernels get null
// gradient outputs, no row_dot_backward runs, and nothing is left for
// backward() (the gradients an earlier training loss call left stay as they
// were). Held-out evaluation and DPO's reference log-probs: the kind
// kSequenceLogps (evaluation only) returns the per-row masked sums of logp
// (row_dot) instead of scalars.
//
// Layouts of the host inputs: per-token arrays are [batch, seq-1] as the
// forward's logp (position t: the prediction of token t+1; for PPO's critic,
// the value of the prefix ids[..t], TRL's values[context_length - 1 : -1]);
// per-row arrays [batch]; per-pair arrays [batch / 2] (chosen rows first,
// then rejected rows, in one forward).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../ops/op_args.h"
#include "transformer.h"

namespace rlhf::model {

enum class ObjectiveKind { kSft, kPairwise, kDpo, kPpo, kSequenceLogps, kKto };

struct ObjectiveRequest {
  ObjectiveKind kind = ObjectiveKind::kSft;
  // false: over the last training forward's outputs, gradients left for
  // backward(); true: over the last inference forward's, no gradients.
  bool eval = false;
  float grad_scale = 1.f;  // the gradients are of grad_scale * loss (the loss itself is not scaled)

  // sft: the loss mask (empty: the one given to the forward as sftMask) and
  // the denominator (has_denom false: the forward's, else max(1, sum(mask))).
  // With a gradient given to the forward (lmGrad / sftMask) the loss call
  // only measures; without one it leaves dlogp.
  // dpo and sequence logps: the completion tokens of each row (required).
  // ppo: the tokens in the loss (required). In evaluation mode the sft mask
  // is required too (an inference forward keeps none).
  std::vector<float> mask;  // [batch, seq-1]
  float denom = 0.f;
  bool has_denom = false;
  // sft: label smoothing eps in [0, 1] (has_label_smoothing false: the
  // forward's with sftMask, else 0) over the head's mean_logp, and an entropy
  // bonus -ent_coef * (masked mean entropy, the same mask and denominator),
  // whose gradient goes to the entropy output (training, without a gradient
  // given to the forward). dpo reads label_smoothing too.
  bool has_label_smoothing = false;

  // pairwise (reward model): the score of each row is its value at index
  // last[row] (empty: each row's last real token by the forward's attention
  // mask); the margin of each pair or empty.
  std::vector<int32_t> last;  // [batch]
  std::vector<float> margin;  // [batch / 2]
  std::vector<float> target;  // [batch / 2] soft labels P(chosen better), or empty (1)

  // dpo: reference sequence log-prob sums (a separate non-training forward;
  // empty for the reference-free losses, SimPO and ORPO), the loss of the
  // family (DpoLossOp) and SimPO's gamma. The per-token scores of IPO, SimPO
  // and ORPO, or of any loss with length_normalize, divide each row's sums by
  // its completion tokens (the mask's row sum).
  std::vector<float> ref_chosen, ref_rejected;  // [batch / 2]
  float beta = 0.1f, label_smoothing = 0.f, gamma = 0.f;
  PrefLoss pref_loss = PrefLoss::kSigmoid;
  bool length_normalize = false;

  // kto: one row per example; the reference's sums (ref_rows), which rows
  // are desirable (1) or not (0), and the KL reference point (KtoLossOp).
  std::vector<float> ref_rows, desirable;  // [batch]
  float kl = 0.f, desirable_weight = 1.f, undesirable_weight = 1.f;

  // ppo: the policy part needs old_logp and advantages (and the forward's
  // logp), the value part returns and old_values (and the forward's values);
  // a forward with only one of the two runs that part alone.
  std::vector<float> old_logp, advantages, ref_logp, returns, old_values;  // [batch, seq-1]
  float clip_range = 0.2f, clip_range_value = 0.2f, vf_coef = 0.1f, kl_coef = 0.f, ent_coef = 0.f;
  float clip_range_high = -1.f;  // < 0: clip_range
  bool kl_times_ratio = false;    // the KL term times the probability ratio (PpoLossOp)
  KlEstimator kl_estimator = KlEstimator::kK1;
  // ppo's divisor (has_denom: `denom` replaces sum(mask); shared with sft's).
  // sequence: the importance ratio of whole sequences (TRL's RLOO): the
  // policy's masked log-prob sum of each row against old_logp and
  // advantages given per row ([batch]); the surrogate is a mean over rows
  // (or a sum over `denom`), its per-row gradient spread back over each
  // row's masked tokens. No value, KL or entropy part.
  bool sequence = false;
};

// Named scalars, "loss" first; for kSequenceLogps no scalars but the
// per-row sums [batch].
struct ObjectiveResult {
  std::vector<std::pair<std::string, double>> stats;
  std::vector<float> sums;
};

ObjectiveResult run_objective(Transformer& t, const ObjectiveRequest& req);

}  // namespace rlhf::model
