// Argument structs of the op table (op_list.h). Plain data: pointers are in the
// backend's memory (host for CPU, device for CUDA), all tensors row-major and
// fp32 unless noted. Shapes are written as comments beside each pointer.
// Backward variants join this file with the training engine.
#pragma once
#include <cstdint>

namespace rlhf {

// C[m,n] = sum_k op(A)[m,k] op(B)[k,n] (+ bias[n]) (+ C[m,n] when accumulate).
// op(A) = A [m,k] (lda) or, trans_a, A^T of a stored [k,m]; op(B) = B [k,n]
// (ldb) or, trans_b, B^T of a stored [n,k] — a Linear weight, so y = x W^T is
// {trans_b = true}.
struct GemmOp {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  // Frozen weights kept in bfloat16: when set, B is read from here instead of
  // `b` (same layout), widened to fp32 on the fly; accumulation stays fp32.
  const uint16_t* b_bf16 = nullptr;
  float* c = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;  // [n] or null
  bool accumulate = false;
};

// A LoRA-adapted linear over one output slice, PEFT's formula without ever
// forming W + s B A:
//   u = s (x_lora A^T)                                   [n, r], kept for the backward
//   y = (y if accumulate) + x W^T (+ bias) + u B^T        [n, out]
// x_lora is the adapter's input: x, or x after LoRA dropout (null: x).
// W is the [out, in] slice of the base weight (rows `ldw` apart; fp32 or the
// frozen bf16 copy), A [r, in] and B [out, r] as PEFT stores them.
struct LoraOp {
  int64_t n = 0, in = 0, out = 0, r = 0;
  const float* x = nullptr;       // [n, in], rows ldx apart
  int64_t ldx = 0;
  const float* x_lora = nullptr;  // [n, in] (ldx) or null
  const float* w = nullptr;       // [out, in], rows ldw apart
  const uint16_t* w_bf16 = nullptr;
  int64_t ldw = 0;
  const float* bias = nullptr;    // [out] or null
  const float* a = nullptr;       // [r, in]
  const float* b = nullptr;       // [out, r]
  float scale = 1.f;
  float* u = nullptr;             // [n, r]
  float* y = nullptr;             // [n, out], rows ldy apart
  int64_t ldy = 0;
  bool accumulate = false;
};

// Backward of LoraOp into the adapter (the base weight is frozen; the base
// path's share of the input gradient, dY W, is the caller's product over the
// whole fused weight):
//   dB += dY^T u;  du = s dY B;  dA += du^T x_lora;  dx (+)= du A
// du is caller-provided scratch [n, r].
struct LoraBackwardOp {
  int64_t n = 0, in = 0, out = 0, r = 0;
  const float* dy = nullptr;      // [n, out], rows lddy apart
  int64_t lddy = 0;
  const float* x_lora = nullptr;  // [n, in], rows ldx apart (the forward's adapter input)
  int64_t ldx = 0;
  const float* u = nullptr;       // [n, r] from the forward
  const float* a = nullptr;       // [r, in]
  const float* b = nullptr;       // [out, r]
  float scale = 1.f;
  float* da = nullptr;            // [r, in], accumulated
  float* db = nullptr;            // [out, r], accumulated
  float* du = nullptr;            // [n, r] scratch
  float* dx = nullptr;            // [n, in], rows lddx apart
  int64_t lddx = 0;
  bool accumulate_dx = true;
};

// out[i,:] = table[ids[i],:] (+ pos_table[positions[i],:]). ids are checked
// by the caller against `rows`.
struct EmbeddingOp {
  int64_t n = 0, dim = 0, rows = 0;
  const int32_t* ids = nullptr;        // [n]
  const float* table = nullptr;        // [rows, dim]
  const uint16_t* table_bf16 = nullptr;// [rows, dim] instead of table, when weights are bf16
  const int32_t* positions = nullptr;  // [n] or null (no learned positions)
  const float* pos_table = nullptr;    // [max_pos, dim] or null
  float* out = nullptr;                // [n, dim]
};

// Fused residual add + RMSNorm (Llama):
//   if delta: residual += delta          (residual stream update)
//   out = residual * rsqrt(mean(residual^2) + eps) * weight
// rstd (optional) keeps 1/rms per row for the backward pass.
struct RmsNormOp {
  int64_t n = 0, dim = 0;
  float eps = 1e-5f;
  float* residual = nullptr;     // [n, dim], updated in place when delta is set
  const float* delta = nullptr;  // [n, dim] or null
  const float* weight = nullptr; // [dim]
  float weight_offset = 0.f;     // Gemma: the scale is (weight_offset + weight), 1 + w
  float* out = nullptr;          // [n, dim]
  float* rstd = nullptr;         // [n] or null
};

// Fused residual add + LayerNorm (GPT-2): out = (x - mean) * rstd * weight + bias.
struct LayerNormOp {
  int64_t n = 0, dim = 0;
  float eps = 1e-5f;
  float* residual = nullptr;
  const float* delta = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  float* mean = nullptr;  // [n] or null
  float* rstd = nullptr;  // [n] or null
};

// Rotary embedding in the Hugging Face rotate_half layout, in place: for each
// head, pairs (j, j + d/2) rotate by the angle positions[i] * inv_freq[j],
// read from cos/sin tables the model fills once (rows = positions). The first
// `heads` heads of each row are rotated (q heads then k heads when both live
// in one fused qkv row).
struct RopeOp {
  int64_t n = 0;                      // rows (tokens)
  int64_t heads = 0, head_dim = 0;    // heads to rotate per row, each head_dim wide
  int64_t rotary_dim = 0;             // partial rotary (Phi-3): only the first rotary_dim of each head rotate, pairs (j, j + rotary_dim/2); 0 = head_dim
  float* x = nullptr;                 // row i, head h at x + i*ld + h*head_dim
  int64_t ld = 0;
  const int32_t* positions = nullptr; // [n]
  const float* cos = nullptr;         // [max_pos, rotary_dim/2]
  const float* sin = nullptr;         // [max_pos, rotary_dim/2]
  bool inverse = false;               // rotate by -angle (the backward pass)
};

// Causal self-attention over a padded batch, grouped-query:
//   out[b,t,h] = softmax_s( q[b,t,h].k[b,s,h/group] * scale ) v[b,s,h/group]
// over s <= t with mask[b,s] != 0. Query rows whose own mask is 0 get zeros.
struct AttentionOp {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  const float* q = nullptr;  // [batch*seq, ...] head h at q + row*ldq + h*head_dim
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ldq = 0, ldk = 0, ldv = 0;
  const uint8_t* mask = nullptr;  // [batch, seq] or null (all valid)
  float* out = nullptr;           // [batch*seq, heads*head_dim] (ldo)
  int64_t ldo = 0;
  float* lse = nullptr;           // [batch, heads, seq] log-sum-exp, or null
};

// Attention of one new query token per sequence against a KV cache:
// cache layout [batch, kv_heads, capacity, head_dim]; positions < length[b]
// with cache_mask[b, s] != 0 are attended (the new token is already stored).
struct KvAttentionOp {
  int64_t batch = 0, heads = 0, kv_heads = 0, head_dim = 0, capacity = 0;
  float scale = 1.f;
  const float* q = nullptr;  // [batch, ...] head h at q + b*ldq + h*head_dim
  int64_t ldq = 0;
  const float* k_cache = nullptr;
  const float* v_cache = nullptr;
  const int32_t* length = nullptr;     // [batch]
  const uint8_t* cache_mask = nullptr; // [batch, capacity] or null
  float* out = nullptr;                // [batch, heads*head_dim] (ldo)
  int64_t ldo = 0;
};

// out[i,j] = silu(gate[i,j]) * up[i,j], gate/up the two halves of one fused
// [n, 2*dim] row (gate first) or separate buffers.
struct SwigluOp {
  int64_t n = 0, dim = 0;
  const float* gate = nullptr;
  const float* up = nullptr;
  int64_t ld_in = 0;   // row stride of gate/up
  float* out = nullptr;
  int64_t ld_out = 0;
  bool gelu = false;   // GeGLU (Gemma): gelu_tanh(gate) * up instead of silu(gate) * up
};

// x = gelu_tanh(x) in place (GPT-2's gelu_new), or out = gelu(x).
struct GeluOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;
  int64_t ld_in = 0;
  float* out = nullptr;
  int64_t ld_out = 0;
};

// y[i,:] += x[i,:]
struct AddOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;
  float* y = nullptr;
};

// The fused LM head. For each row i with targets[i] >= 0:
//   logits = hidden[i] W^T (W = [vocab, dim]), logp[i] = logits[t] - lse,
//   entropy[i] = lse - sum softmax(logits) * logits,
// computed over vocabulary chunks with an online log-sum-exp, so at most
// chunk_rows x chunk_vocab logits exist at once. Rows with target < 0 get 0.
// mean_logp[i] = (1/vocab) sum_v log softmax(logits)_v = mean(logits) - lse:
// minus the label-smoothing term of the cross-entropy (sft_loss).
struct LmHeadLogpOp {
  int64_t n = 0, dim = 0, vocab = 0;
  const float* hidden = nullptr;   // [n, dim]
  const float* weight = nullptr;   // [vocab, dim]
  const uint16_t* weight_bf16 = nullptr;  // [vocab, dim] instead of weight (bf16 frozen weights)
  const int32_t* targets = nullptr;// [n]
  float* logp = nullptr;           // [n]
  float* entropy = nullptr;        // [n] or null
  float* lse = nullptr;            // [n] or null (kept for the backward pass)
  float* mean_logp = nullptr;      // [n] or null
  float inv_temperature = 1.f;     // logits are scaled by this first
};

// Log-softmax cross-entropy on materialised logits, and its gradient, in
// place. For each row i of z [n, vocab] (rows ld apart), zt = z * inv_temperature:
//   lse[i] = logsumexp(zt), logp[i] = zt[target] - lse, entropy[i] = lse - sum p zt,
//   z <- dz = inv_temperature * dlogp[i] * (onehot(target) - p),   p = softmax(zt)
// With dmean_logp (label smoothing), mean_logp[i] = mean(zt) - lse and
//   dz += inv_temperature * dmean_logp[i] * (1/vocab - p).
// Rows with target < 0 get logp = entropy = mean_logp = 0 and dz = 0. With the loss
// gradient known before the forward (SFT: -mask / tokens), the LM head is
// then logits -> this op -> dz W and dz^T h, once per row block, instead of a
// forward and a backward that recomputes the logits.
struct LogitsXentOp {
  int64_t n = 0, vocab = 0, ld = 0;
  float* z = nullptr;               // [n, ld]: logits in, dz out
  const int32_t* targets = nullptr; // [n]
  const float* dlogp = nullptr;     // [n]
  float inv_temperature = 1.f;
  float* logp = nullptr;            // [n]
  float* entropy = nullptr;         // [n] or null
  float* lse = nullptr;             // [n] or null
  const float* dmean_logp = nullptr;  // [n] or null (no smoothing term)
  float* mean_logp = nullptr;       // [n] or null
};

// value[i] = hidden[i] . w (+ bias)
struct ValueHeadOp {
  int64_t n = 0, dim = 0;
  const float* hidden = nullptr;  // [n, dim]
  const float* weight = nullptr;  // [dim]
  float bias = 0.f;
  float* value = nullptr;         // [n]
};

// Picks one token per row of logits [n, vocab]: greedy when temperature == 0,
// else softmax(logits / temperature) restricted to the top_k (0 = all) most
// likely tokens and then to the smallest set whose mass reaches top_p,
// sampled with the row's counter-based RNG (seed, step) so results do not
// depend on thread scheduling.
struct SampleOp {
  int64_t n = 0, vocab = 0;
  const float* logits = nullptr;  // [n, vocab]
  int64_t ld = 0;
  float temperature = 1.f;
  int64_t top_k = 0;
  float top_p = 1.f;
  const uint64_t* seeds = nullptr;  // [n]
  uint64_t step = 0;
  int32_t* out = nullptr;           // [n]
  float* out_logp = nullptr;        // [n] or null: log-prob of the pick under the (tempered) full softmax
};


// ------------------------------------------------------------------ losses
// The loss kernels (docs/losses.md has every formula and its source). Each
// writes the scalar loss to loss[0] and, for every non-null gradient pointer,
// grad_scale * d(loss)/d(input) (overwritten, not accumulated); the loss
// itself is not scaled. Masks are fp32 weights, 0 or 1 per token (null: all
// ones); "masked mean" divides by the mask sum, or by 1 when that is 0 (for
// 0/1 masks: max(1, sum(mask))). Tokens with mask 0 are skipped, so padding
// may hold anything (even NaN), and their gradients are +0. Statistics (optional, null to skip) go to `stats` at the slots of the op's
// Stat enum. Reductions run over fixed chunks combined in order in float64,
// so results do not depend on the thread count.

// Supervised finetuning (and rejection-sampling SFT): masked mean negative
// log-likelihood, loss = -sum(mask * logp) / denom, denom = max(1, sum(mask))
// or, when the caller passes denom > 0, that value (token-weighted gradient
// accumulation: the caller passes the mask sum of all micro-batches).
//   dlogp = -mask / denom * grad_scale
//
// With label_smoothing eps > 0 (torch's CrossEntropyLoss(label_smoothing),
// transformers' label_smoothing_factor) each token's term is
//   (1 - eps) (-logp_i) + eps (-mean_logp_i),  mean_logp = (1/V) sum_v log p_v
// (the LM head's mean_logp output), and the gradients are
//   dlogp_i = -(1 - eps) mask_i / denom * grad_scale,
//   dmean_logp_i = -eps mask_i / denom * grad_scale.
struct SftLossOp {
  // sum(mask), -sum(mask * logp), -sum(mask * mean_logp) (written only with
  // label_smoothing != 0: a caller without smoothing may pass 2 slots)
  enum Stat : int { kTokens, kNllSum, kSmoothSum, kStatCount };
  int64_t n = 0;
  const float* logp = nullptr;  // [n]
  const float* mask = nullptr;  // [n] or null
  float denom = 0.f;            // > 0: normaliser instead of max(1, sum(mask))
  float grad_scale = 1.f;
  float label_smoothing = 0.f;  // eps in [0, 1]; > 0 needs mean_logp
  const float* mean_logp = nullptr;  // [n], read with label_smoothing > 0
  float* loss = nullptr;        // [1]
  float* dlogp = nullptr;       // [n] or null
  float* dmean_logp = nullptr;  // [n] or null (written with dlogp when label_smoothing > 0)
  float* stats = nullptr;       // [kStatCount] or null
};

// Reward model (InstructGPT; Llama 2 margin): z = chosen - rejected - margin,
// loss = mean_b(-log sigmoid(z)).
//   dchosen = -sigmoid(-z) / b * grad_scale, drejected = -dchosen
struct PairwiseLossOp {
  // accuracy: fraction with chosen > rejected; means over the batch of
  // chosen - rejected (no margin), chosen, rejected.
  enum Stat : int { kAccuracy, kMarginMean, kChosenMean, kRejectedMean, kStatCount };
  int64_t b = 0;
  const float* chosen = nullptr;    // [b] scores
  const float* rejected = nullptr;  // [b]
  const float* margin = nullptr;    // [b] or null (0)
  // Soft labels (RLAIF): P(chosen better) per pair; the loss is the
  // cross-entropy -p log sigmoid(z) - (1 - p) log sigmoid(-z). null: p = 1.
  const float* target = nullptr;    // [b] or null
  float grad_scale = 1.f;
  float* loss = nullptr;            // [1]
  float* dchosen = nullptr;         // [b] or null
  float* drejected = nullptr;       // [b] or null
  float* stats = nullptr;           // [kStatCount] or null
};

// KL estimators of KL(policy || ref) per token, d = logp - ref_logp
// (Schulman, "Approximating KL divergence"): k1 = d, k2 = d^2 / 2,
// k3 = exp(-d) + d - 1.
enum class KlEstimator : int32_t { kK1 = 1, kK2 = 2, kK3 = 3 };

// PPO (TRL / OpenAI baselines conventions), per token over n tokens:
//   ratio = exp(logp - old_logp)
//   pg   = masked mean max(-A ratio, -A clip(ratio, 1 - clip_range, 1 + clip_range))
//   vf   = 0.5 masked mean max((v - R)^2, (clip(v, v_old - cv, v_old + cv) - R)^2)
//          (cv = clip_range_value; <= 0 turns value clipping off: 0.5 (v - R)^2)
//   kl   = masked mean k(logp, ref_logp)         (0 when ref_logp is null)
//   ent  = masked mean entropy                   (0 when entropy is null)
//   loss = pg + vf_coef vf + kl_coef kl - ent_coef ent
// values/old_values/returns are null together (no value loss: vf = 0).
// Gradients w.r.t. logp (through the ratio and the KL term), values and
// entropy, each times grad_scale.
struct PpoLossOp {
  // approx_kl = 0.5 masked mean (logp - old_logp)^2; clipfrac: fraction of
  // masked tokens where the clipped policy branch is strictly larger (active);
  // vf_clipfrac likewise for the value loss; tokens = sum(mask).
  enum Stat : int { kPgLoss, kVfLoss, kKl, kEntropy, kApproxKl, kClipfrac, kVfClipfrac, kRatioMean, kTokens, kStatCount };
  int64_t n = 0;
  const float* logp = nullptr;        // [n] policy, current
  const float* old_logp = nullptr;    // [n] policy at rollout time
  const float* advantages = nullptr;  // [n]
  const float* returns = nullptr;     // [n] or null
  const float* values = nullptr;      // [n] critic, current, or null
  const float* old_values = nullptr;  // [n] critic at rollout time, or null
  const float* ref_logp = nullptr;    // [n] reference model, or null
  const float* entropy = nullptr;     // [n] or null
  const float* mask = nullptr;        // [n] or null
  float clip_range = 0.2f;         // the ratio's lower bound is 1 - clip_range
  float clip_range_high = -1.f;    // its upper bound 1 + clip_range_high; < 0: clip_range (symmetric)
  float clip_range_value = 0.2f;
  float vf_coef = 0.1f;
  float kl_coef = 0.f;
  // The KL term times the probability ratio (TRL's use_bias_correction_kl, from
  // DeepSeek-V3.2): the gradient of r * kl is then the unbiased reverse-KL one.
  bool kl_times_ratio = false;
  // The masked means' divisor: > 0 replaces sum(mask) (a minibatch's total
  // split over micro-batches, or Dr. GRPO's constant).
  double denom = 0.0;
  KlEstimator kl_estimator = KlEstimator::kK1;
  float ent_coef = 0.f;
  float grad_scale = 1.f;
  float* loss = nullptr;     // [1]
  float* dlogp = nullptr;    // [n] or null
  float* dvalues = nullptr;  // [n] or null
  float* dentropy = nullptr; // [n] or null
  float* stats = nullptr;    // [kStatCount] or null
};

// The preference-optimisation family over b pairs of sequence log-prob sums
// (docs/losses.md). Each side's score is its policy log-prob minus the
// reference's, divided by its completion length when `len_*` is given:
//   s_c = (policy_chosen - ref_chosen) / len_chosen,  s_r likewise
// (ref null: reference-free, 0; len null: no division), h = s_c - s_r, and
// per pair, with z = beta h:
//   kSigmoid  DPO (Rafailov et al. 2023) and, with ls > 0, conservative DPO:
//             -(1 - ls) log sigmoid(z) - ls log sigmoid(-z)
//   kRobust   robust DPO (Chowdhury et al. 2024), unbiased under flip rate ls:
//             (-(1 - ls) log sigmoid(z) + ls log sigmoid(-z)) / (1 - 2 ls)
//   kHinge    SLiC (Zhao et al. 2023): max(0, 1 - z)
//   kIpo      IPO (Azar et al. 2023, eq. 17; per-token scores as TRL):
//             (h - 1 / (2 beta))^2
//   kSimpo    SimPO (Meng et al. 2024; reference-free, per-token scores):
//             the sigmoid form of z = beta h - gamma
//   kOrpo     ORPO (Hong et al. 2024; reference-free, per-token scores,
//             beta is the paper's lambda): the chosen completions' NLL
//             -sum(policy_chosen) / sum(len_chosen) once per batch, plus
//             -beta log sigmoid(log_odds) per pair, where
//             log_odds = (s_c - s_r) - (log(1 - e^s_c) - log(1 - e^s_r)).
// loss = mean over pairs (plus ORPO's NLL). Gradients w.r.t. the policy sums.
enum class PrefLoss : int32_t { kSigmoid, kRobust, kHinge, kIpo, kSimpo, kOrpo };

struct DpoLossOp {
  // rewards: chosen = beta s_c, rejected = beta s_r; accuracy = fraction with
  // chosen reward > rejected; margin = mean of chosen - rejected reward;
  // nll: ORPO's NLL term (0 for the others); log_odds: ORPO's mean log odds.
  enum Stat : int { kAccuracy, kChosenReward, kRejectedReward, kMargin, kNll, kLogOdds, kStatCount };
  int64_t b = 0;
  PrefLoss loss_type = PrefLoss::kSigmoid;
  const float* policy_chosen = nullptr;    // [b]
  const float* policy_rejected = nullptr;  // [b]
  const float* ref_chosen = nullptr;       // [b] or null (reference-free)
  const float* ref_rejected = nullptr;     // [b] or null
  const float* len_chosen = nullptr;       // [b] completion tokens (> 0), or null
  const float* len_rejected = nullptr;     // [b] or null
  float beta = 0.1f;
  float label_smoothing = 0.f;
  float gamma = 0.f;  // SimPO's target reward margin
  float grad_scale = 1.f;
  float* loss = nullptr;              // [1]
  float* dpolicy_chosen = nullptr;    // [b] or null
  float* dpolicy_rejected = nullptr;  // [b] or null
  float* stats = nullptr;             // [kStatCount] or null
};

// KTO (Ethayarajh et al. 2024, eq. 7; TRL's KTOTrainer), over b unpaired
// examples of sequence log-prob sums, r = policy - ref:
//   desirable:    w_d (1 - sigmoid(beta (r - kl)))
//   undesirable:  w_u (1 - sigmoid(beta (kl - r)))
// loss = mean over the b examples. kl is the reference point z_0: the batch
// estimate of KL(policy || ref) from mismatched pairs, clamped at 0 and
// treated as a constant (no gradient), computed by the caller.
struct KtoLossOp {
  // rewards: beta r, averaged over the desirable / undesirable examples;
  // logps: the policy sums likewise; counts of each.
  enum Stat : int { kChosenReward, kRejectedReward, kChosenLogps, kRejectedLogps, kChosenCount, kRejectedCount, kStatCount };
  int64_t b = 0;
  const float* policy = nullptr;     // [b]
  const float* ref = nullptr;        // [b]
  const float* desirable = nullptr;  // [b] 1 desirable, 0 undesirable
  float kl = 0.f;
  float beta = 0.1f;
  float desirable_weight = 1.f, undesirable_weight = 1.f;
  float grad_scale = 1.f;
  float* loss = nullptr;     // [1]
  float* dpolicy = nullptr;  // [b] or null
  float* stats = nullptr;    // [kStatCount] or null
};

// Per-row weighted sums, the loss kernels' per-sequence reductions over the
// model's row layout [rows, cols] (a forward's [batch, seq]):
//   out[r] = sum_c w[r, c] x[r, c]
// summed in fp64 in column order, rounded once to fp32. With w a 0/1 mask
// over a row's completion tokens it is DPO's sequence log-prob sum; with w
// one-hot at each row's last token, a reward model's score of the row.
// Columns with w == 0 are skipped, so x there may hold anything (even NaN).
struct RowDotOp {
  int64_t rows = 0, cols = 0;
  const float* x = nullptr;  // [rows, cols]
  const float* w = nullptr;  // [rows, cols]
  float* out = nullptr;      // [rows]
};

// Backward of RowDotOp: dx[r, c] = w[r, c] * dout[r], written (not
// accumulated); +0 where w == 0.
struct RowDotBackwardOp {
  int64_t rows = 0, cols = 0;
  const float* w = nullptr;     // [rows, cols]
  const float* dout = nullptr;  // [rows]
  float* dx = nullptr;          // [rows, cols]
};

// ------------------------------------------------------------------ optimizers
// One step of torch.optim.AdamW (amsgrad off) on a flat fp32 array, in place:
//   g = grad * grad_scale
//   p *= 1 - lr * weight_decay
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// step counts from 1 (the step being taken).
struct AdamWOp {
  int64_t n = 0;
  float* param = nullptr;       // [n]
  const float* grad = nullptr;  // [n]
  float* m = nullptr;           // [n] first moment
  float* v = nullptr;           // [n] second moment
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 1e-2f;
  int64_t step = 1;
  float grad_scale = 1.f;
};

// One step of torch.optim.SGD (nesterov off, maximize off), in place:
//   d = grad * grad_scale + weight_decay * p
//   with momentum: buf = d at step 1, else momentum buf + (1 - dampening) d; d = buf
//   p -= lr d
struct SgdOp {
  int64_t n = 0;
  float* param = nullptr;       // [n]
  const float* grad = nullptr;  // [n]
  float* momentum_buf = nullptr;// [n], or null when momentum == 0
  float lr = 1e-3f, momentum = 0.f, dampening = 0.f, weight_decay = 0.f;
  int64_t step = 1;
  float grad_scale = 1.f;
};

// out[0] += sum(grad^2). Squares of fp32 values are exact in fp64 and are
// summed in fp64 over fixed chunks combined in order, so the result is
// deterministic and good to ~1e-15 relative. The caller sums over tensors
// (same `out`) and takes the square root.
struct GradNormOp {
  int64_t n = 0;
  const float* grad = nullptr;  // [n]
  double* out = nullptr;        // [1], accumulated
};

// x *= factor; or, when sumsq is set (grad_norm's output), by the gradient
// clipping factor computed from it on the device, as torch's
// clip_grad_norm_: min(1, max_norm / (sqrt(*sumsq) + 1e-6)).
struct ScaleOp {
  int64_t n = 0;
  float* x = nullptr;             // [n]
  float factor = 1.f;
  const double* sumsq = nullptr;  // [1] or null
  float max_norm = 1.f;
};

// ---------------------------------------------------------------- backward
// db[j] += sum_i dy[i, j]  (the bias gradient of a Linear / Conv1D)
struct BiasGradOp {
  int64_t n = 0, dim = 0;
  const float* dy = nullptr;  // [n, dim] with row stride ld
  int64_t ld = 0;
  float* db = nullptr;        // [dim], accumulated
};

// dtable[ids[i], :] += dout[i, :]  (and dpos_table[positions[i], :] += dout[i, :]).
struct EmbeddingBackwardOp {
  int64_t n = 0, dim = 0, rows = 0;
  const int32_t* ids = nullptr;        // [n]
  const float* dout = nullptr;         // [n, dim]
  float* dtable = nullptr;             // [rows, dim], accumulated; null = frozen
  const int32_t* positions = nullptr;  // [n] or null
  float* dpos_table = nullptr;         // [max_pos, dim], accumulated, or null
};

// RMSNorm backward. x is the normalised input (the residual stream after the
// fused add), rstd the forward's 1/rms. dx is accumulated (it is the gradient
// of the residual stream, which also flows straight through the add).
struct RmsNormBackwardOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;       // [n, dim]
  const float* weight = nullptr;  // [dim]
  float weight_offset = 0.f;      // as RmsNormOp
  const float* rstd = nullptr;    // [n]
  const float* dout = nullptr;    // [n, dim]
  float* dx = nullptr;            // [n, dim], accumulated
  float* dweight = nullptr;       // [dim], accumulated, or null (frozen)
};

struct LayerNormBackwardOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;
  const float* weight = nullptr;
  const float* mean = nullptr;  // [n]
  const float* rstd = nullptr;  // [n]
  const float* dout = nullptr;
  float* dx = nullptr;          // accumulated
  float* dweight = nullptr;     // accumulated or null
  float* dbias = nullptr;       // accumulated or null
};

// Attention backward from the saved log-sum-exp (softmax recomputed):
// dq, dk, dv are written (not accumulated); layouts as AttentionOp.
struct AttentionBackwardOp {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ldq = 0, ldk = 0, ldv = 0;
  const uint8_t* mask = nullptr;
  const float* out = nullptr;   // forward output
  const float* dout = nullptr;  // same layout as out
  int64_t ldo = 0;
  const float* lse = nullptr;   // [batch, heads, seq]
  float* dq = nullptr;          // same layout as q (ldq)
  float* dk = nullptr;          // same layout as k (ldk)
  float* dv = nullptr;          // same layout as v (ldv)
};

struct SwigluBackwardOp {
  int64_t n = 0, dim = 0;
  const float* gate = nullptr;
  const float* up = nullptr;
  int64_t ld_in = 0;
  const float* dout = nullptr;
  int64_t ld_out = 0;
  float* dgate = nullptr;  // written, stride ld_in
  float* dup = nullptr;
  bool gelu = false;       // as SwigluOp
};

struct GeluBackwardOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;
  int64_t ld_in = 0;
  const float* dout = nullptr;
  int64_t ld_out = 0;
  float* dx = nullptr;  // written, stride ld_in
};

// Backward of lm_head_logp: with z = inv_temperature * hidden W^T,
//   d logp_i / dz_v   = [v = target_i] - p_v
//   d entropy_i / dz_v = -p_v (z_v - lse_i + entropy_i)
//   d mean_logp_i / dz_v = 1/vocab - p_v
// so dz = dlogp * (onehot - p) - dentropy * p * (z - lse + H)
// + dmean_logp * (1/vocab - p) (math::lm_head_dz), recomputed chunk by
// chunk; dhidden = inv_t dz W, dweight += inv_t dz^T hidden.
struct LmHeadLogpBackwardOp {
  int64_t n = 0, dim = 0, vocab = 0;
  const float* hidden = nullptr;
  const float* weight = nullptr;
  const uint16_t* weight_bf16 = nullptr;
  const int32_t* targets = nullptr;   // [n], < 0 = no gradient
  const float* lse = nullptr;         // [n] from the forward
  const float* entropy = nullptr;     // [n] from the forward (needed with dentropy)
  const float* dlogp = nullptr;       // [n]
  const float* dentropy = nullptr;    // [n] or null
  const float* dmean_logp = nullptr;  // [n] or null
  float inv_temperature = 1.f;
  float* dhidden = nullptr;           // [n, dim], accumulated
  float* dweight = nullptr;           // [vocab, dim], accumulated, or null (frozen)
};

struct ValueHeadBackwardOp {
  int64_t n = 0, dim = 0;
  const float* hidden = nullptr;
  const float* weight = nullptr;
  const float* dvalue = nullptr;  // [n]
  float* dhidden = nullptr;       // accumulated
  float* dweight = nullptr;       // [dim] accumulated, or null
  float* dbias = nullptr;         // [1] accumulated, or null
};

}  // namespace rlhf
