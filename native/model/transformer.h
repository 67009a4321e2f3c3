// The transformer, written once against the op table (ops/backend.h):
// Llama family (RMSNorm, RoPE, GQA, SwiGLU) and GPT-2 (LayerNorm, learned
// positions, GELU). Forward over a padded batch yields per-token
// log-probabilities of the next token, entropies and score-head values;
// prefill/decode with a KV cache serve generation.
#pragma once
#include <cstdint>
#include <vector>

#include "../ops/backend.h"
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
};

struct ForwardResult {
  std::vector<float> logp;     // [batch, seq-1], 0 where the target or query is padding
  std::vector<float> entropy;  // [batch, seq-1]
  std::vector<float> values;   // [batch, seq] (score head, label 0)
  std::vector<float> last_logits;  // [batch, vocab]
};

// KV cache for generation: per layer [batch, kv_heads, capacity, head_dim].
struct KvCache {
  int64_t batch = 0, capacity = 0;
  std::vector<std::vector<float>> k, v;  // [layers]
  std::vector<uint8_t> mask;             // [batch, capacity] 1 = real token
  std::vector<int32_t> length;           // [batch] slots used
  std::vector<int32_t> next_pos;         // [batch] position id of the next token
};

class Transformer {
 public:
  Transformer(Config cfg, Weights w, Backend& be);
  const Config& config() const { return cfg_; }
  const Weights& weights() const { return w_; }

  ForwardResult forward(const ForwardRequest& req);

  // Runs the (left-padded) prompts through the model, fills the cache and
  // returns the last position's logits [batch, vocab].
  std::vector<float> prefill(const int32_t* ids, const uint8_t* mask, int64_t batch, int64_t seq, int64_t capacity, KvCache& cache);
  // One token per sequence at its next position; returns logits [batch, vocab].
  std::vector<float> decode(const int32_t* tokens, KvCache& cache);

  // ---- training (backward.cc)
  // The forward pass with every activation kept for backward(); results laid
  // out as forward() returns them.
  ForwardResult forward_train(const ForwardRequest& req);
  // Gradients of the last forward_train's outputs (same layouts: dlogp and
  // dentropy [batch, seq-1], dvalues [batch, seq]; each may be null) flow back
  // into the trainable set: the active adapter, or every base weight.
  void backward(const float* dlogp, const float* dentropy, const float* dvalues);
  void set_adapter(Adapter* a) { adapter_ = a; }
  Adapter* adapter() const { return adapter_; }
  void set_full_training(FullGrads* g) { full_ = g; }
  Weights& mutable_weights() { return w_; }

 private:
  struct Buffers {
    std::vector<float> x, xn, qkv, att, mlp, act, tmp;
    void ensure(const Config& c, int64_t rows);
  };
  // Runs all layers over `rows` tokens; leaves the final-normed hidden in buf_.xn.
  // With a cache, writes each token's k/v at (b, slot[row]) and attends over the cache.
  void body(int64_t rows, const int32_t* ids, const int32_t* positions, const uint8_t* mask, int64_t batch, int64_t seq,
            KvCache* cache, const int32_t* slots, Acts* acts = nullptr);
  void ensure_rope(int64_t max_pos);
  void logits_rows(const float* hidden, int64_t rows, int64_t ld_rows, float* out);
  void check_ids(const int32_t* ids, int64_t n, int64_t seq) const;  // E_ARGUMENT for an id outside the vocabulary
  // LM head (logp/entropy of the next token; per-row targets, entropy and
  // lse are returned for the backward pass), last-token logits and score head
  // over the final hidden rows of a [batch, seq] request.
  void run_heads(const ForwardRequest& req, const uint8_t* mask, const float* hidden, const float* score,
                 std::vector<int32_t>& targets, std::vector<float>& entropy, std::vector<float>& lse, ForwardResult& out);

  Config cfg_;
  Weights w_;
  Backend& be_;
  Buffers buf_;
  Adapter* adapter_ = nullptr;  // active LoRA adapter (null: base only)
  FullGrads* full_ = nullptr;   // full fine-tuning gradients (null: base frozen)
  Acts acts_;                   // activations of the last training forward
  bool has_acts_ = false, train_logp_ = false, train_values_ = false;
  Adapter* acts_adapter_ = nullptr;  // the adapter active when acts_ were recorded
  float inv_temperature_ = 1.f;
  struct BackwardBuffers {
    std::vector<float> dxn, dres, dqkv, datt, dmlp, dact;
  } bwd_;
  float* grad_of(const float* weight);  // gradient view of a base weight (full training), else null
  std::vector<float> rope_cos_, rope_sin_;
  int64_t rope_rows_ = 0;
};

// position_ids = cumsum(mask) - 1, clamped at 0: a left-padded sequence gets
// the same positions (and so the same outputs) as the unpadded one.
void positions_from_mask(const uint8_t* mask, int64_t batch, int64_t seq, int32_t* out);

}  // namespace rlhf::model
