// The transformer, written once against the op table (ops/backend.h):
// Llama family (RMSNorm, RoPE, GQA, SwiGLU) and GPT-2 (LayerNorm, learned
// positions, GELU). Forward over a padded batch yields per-token
// log-probabilities of the next token, entropies and score-head values;
// prefill/decode with a KV cache serve generation.
#pragma once
#include <cstdint>
#include <vector>

#include "../ops/backend.h"
#include "../ops/buffer.h"
#include "config.h"
#include "train.h"
#include "weights.h"

namespace rlhf::model {

struct ForwardRequest {
  int64_t batch = 0, seq = 0;
  const int32_t* ids = nullptr;     // [batch, seq]
  const uint8_t* mask = nullptr;    // [batch, seq] attention mask (1 = token), or null
  bool want_logp = true;            // LM head: logp/entropy of ids[t+1] given ids[..t]
  bool want_values = false;         // score head on every position
  bool want_last_logits = false;    // full logits at each row's last real token
  float temperature = 1.f;          // logits divided by this before log-softmax
  // Training forward only: d loss / d logp [batch, seq-1], known before the
  // forward (SFT: -mask / tokens). The LM head then computes its gradient in
  // the same pass over each block of logits, and backward() takes no dlogp.
  const float* lm_grad = nullptr;
  // Training forward only, instead of lm_grad: SFT's loss mask [batch, seq-1]
  // and denominator (<= 0: max(1, sum(mask))). The gradient -mask / denom is
  // made on the backend (sft_loss) and used as lm_grad is; the mask is kept
  // for the loss call (objective.h), which then needs none.
  const float* sft_mask = nullptr;
  float sft_denom = 0.f;
  // With sft_mask: label smoothing eps of the SFT loss (SftLossOp), 0 = none.
  float sft_label_smoothing = 0.f;
  // false: the outputs stay in backend memory only (a loss call reads them
  // there: the training loss over a training forward's, the evaluation loss
  // over an inference forward's); the result holds no arrays.
  bool download = true;
};

struct ForwardResult {
  std::vector<float> logp;     // [batch, seq-1], 0 where the target or query is padding
  std::vector<float> entropy;  // [batch, seq-1]
  std::vector<float> values;   // [batch, seq] (score head, label 0)
  std::vector<float> last_logits;  // [batch, vocab]
};

// KV cache for generation: per layer [batch, kv_heads, capacity, head_dim]
// in backend memory; the bookkeeping lives on the host and is mirrored for
// the decode op.
struct KvCache {
  int64_t batch = 0, capacity = 0;
  std::vector<Buffer<float>> k, v;  // [layers]
  std::vector<uint8_t> mask;        // [batch, capacity] 1 = real token
  std::vector<int32_t> length;      // [batch] slots used
  std::vector<int32_t> next_pos;    // [batch] position id of the next token
  Buffer<uint8_t> mask_d;           // backend copies of mask and length
  Buffer<int32_t> length_d;
};

// What the last inference forward left in backend memory (its heads' logp,
// entropy, values: HeadActs in the row layout [batch, seq]) and what an
// evaluation loss call (objective.h, ObjectiveRequest::eval) needs to read
// them: the shape, the host attention mask (all ones when the forward had
// none; the pairwise loss's "last real token" rule) and which outputs the
// forward computed.
struct InferenceOutputs {
  bool valid = false;  // an inference forward completed
  int64_t batch = 0, seq = 0;
  std::vector<uint8_t> mask;  // [batch, seq]
  bool logp = false, values = false;
};

class Transformer {
 public:
  Transformer(Config cfg, Weights w, Backend& be);
  const Config& config() const { return cfg_; }
  const Weights& weights() const { return w_; }

  ForwardResult forward(const ForwardRequest& req);
  // The last inference forward's outputs (head_, backend memory) and their
  // description, for an evaluation loss call; a later forward() replaces
  // them (a training forward, generation and backward() leave them alone).
  const InferenceOutputs& inference_outputs() const { return infer_; }
  const HeadActs& inference_head() const { return head_; }

  Backend& backend() const { return be_; }

  // Runs the (left-padded) prompts through the model, fills the cache and
  // returns the last position's logits [batch, vocab] in backend memory
  // (valid until the next call).
  const float* prefill(const int32_t* ids, const uint8_t* mask, int64_t batch, int64_t seq, int64_t capacity, KvCache& cache);
  // One token per sequence at its next position; logits [batch, vocab] as prefill.
  const float* decode(const int32_t* tokens, KvCache& cache);

  // ---- training (backward.cc)
  // The forward pass with every activation kept for backward(); results laid
  // out as forward() returns them.
  ForwardResult forward_train(const ForwardRequest& req);
  // Gradients of the last forward_train's outputs (same layouts: dlogp and
  // dentropy [batch, seq-1], dvalues [batch, seq]; each may be null) flow back
  // into the trainable set: the active adapter, or every base weight. An
  // output given no host array takes the gradient a loss call left in
  // backend memory (loss_state()), if any; giving both is an error.
  void backward(const float* dlogp, const float* dentropy, const float* dvalues);
  // The last training forward's outputs in backend memory (row layout
  // [batch, seq]: acts.head.logp/entropy/values), for the loss kernels
  // (objective.h), and where those leave their gradients for backward().
  bool has_train_outputs() const { return has_acts_; }
  const Acts& train_acts() const { return acts_; }
  bool train_logp() const { return train_logp_; }
  bool train_values() const { return train_values_; }
  LossState& loss_state() { return loss_; }
  void set_adapter(Adapter* a) { adapter_ = a; }
  Adapter* adapter() const { return adapter_; }
  void set_full_training(FullGrads* g) { full_ = g; }
  // The host weights (loaded, owned) and the weights the ops read: the same
  // object on the CPU, a copy in device memory with the same layout otherwise.
  Weights& host_weights() { return w_; }
  Weights& backend_weights() { return *bw_; }
  const float* weight_slab() const { return bw_->slab_base; }
  // Copies trained weights (full fine-tuning) back into host_weights(); a
  // no-op when the backend's memory is host memory.
  void weights_to_host();

 private:
  struct Buffers {
    Buffer<float> x, xn, qkv, att, mlp, act, tmp, lora_u, dropped, logits, xent, hn_in, hn_out, post;
    Buffer<int32_t> ids, positions;
    Buffer<uint8_t> mask;
    void ensure(Backend& be, const Config& c, int64_t rows);
  };
  // Runs all layers over `rows` tokens; leaves the final-normed hidden in buf_.xn
  // (acts->xnf when training). ids, positions, mask and slots are host arrays.
  // With a cache, writes each token's k/v at (b, slot[row]) and attends over the cache.
  void body(int64_t rows, const int32_t* ids, const int32_t* positions, const uint8_t* mask, int64_t batch, int64_t seq,
            KvCache* cache, const int32_t* slots, Acts* acts = nullptr);
  void ensure_rope(int64_t max_pos);
  // Writes layer l's k and v rows of qkv [rows, qkv_dim] into the cache at (row's sequence, slots[row]).
  void store_kv(KvCache& cache, int64_t l, const float* qkv, int64_t rows, int64_t seq, const int32_t* slots);
  void logits_rows(const float* hidden, int64_t rows, int64_t ld_rows, float* out);
  void check_ids(const int32_t* ids, int64_t n, int64_t seq) const;  // E_ARGUMENT for an id outside the vocabulary
  // LM head (logp/entropy of the next token; per-row targets, entropy and
  // lse are kept in `head` for the backward pass), last-token logits and
  // score head over the final hidden rows of a [batch, seq] request.
  void run_heads(const ForwardRequest& req, const uint8_t* mask, const float* hidden, const float* score, HeadActs& head,
                 ForwardResult& out);
  // The LM head with its gradient in one pass (req.lm_grad): per block of
  // rows, logits = h W^T, logits_xent (logp, entropy, lse and dz in place),
  // dh = dz W, dW += dz^T h; dh is kept in head.dhidden for backward().
  void lm_head_with_grad(const ForwardRequest& req, const float* hidden, HeadActs& head);
  // LoRA dropout on backend memory (through the host where the backend has
  // no dropout op).
  void dropout(const float* in, float* out, int64_t rows, int64_t cols, uint64_t key, size_t module);

  Config cfg_;
  Weights w_;                 // host (owning)
  Weights device_w_;          // backend copy (views into device_slab_), when the backend is not the host
  Weights* bw_ = nullptr;     // what the ops read: &w_ or &device_w_
  Buffer<float> device_slab_;
  Buffer<uint16_t> device_slab16_;
  Backend& be_;
  Buffers buf_;
  HeadActs head_;             // the heads of the last inference forward
  InferenceOutputs infer_;    // ... and what an evaluation loss call needs to read them
  Adapter* adapter_ = nullptr;  // active LoRA adapter (null: base only)
  FullGrads* full_ = nullptr;   // full fine-tuning gradients (null: base frozen)
  Acts acts_;                   // activations of the last training forward
  LossState loss_;              // gradients a loss call left for backward(), and its scratch
  bool has_acts_ = false, train_logp_ = false, train_values_ = false;
  Adapter* acts_adapter_ = nullptr;  // the adapter active when acts_ were recorded
  float inv_temperature_ = 1.f;
  struct BackwardBuffers {
    Buffer<float> dxn, dres, dqkv, datt, dmlp, dact, du, xd, dxd, dlogp, dentropy, dvalues, dhn_out, dhn_in, dpost;
  } bwd_;
  float* grad_of(const float* weight);  // gradient view of a base weight (full training), else null
  Buffer<float> rope_cos_, rope_sin_;
  Buffer<float> rope_cos_local_, rope_sin_local_;  // Gemma 3's sliding-window layers (their own base)
  int64_t rope_rows_ = 0;
  bool rope_long_ = false;  // the tables hold LongRoPE's long factors
};

// The LM head's per-token arrays in the caller's layout [batch, seq-1] (row
// b*(T-1)+t: the prediction of token t+1) and in the engine's row layout
// [batch, seq] (row b*T+t, 0 at each sequence's last position). A null
// `shifted` gives zeros.
std::vector<float> shifted_to_rows(const float* shifted, int64_t batch, int64_t seq);
std::vector<float> rows_to_shifted(const std::vector<float>& rows, int64_t batch, int64_t seq);

// position_ids = cumsum(mask) - 1, clamped at 0: a left-padded sequence gets
// the same positions (and so the same outputs) as the unpadded one.
void positions_from_mask(const uint8_t* mask, int64_t batch, int64_t seq, int32_t* out);

}  // namespace rlhf::model
