// Training state of a Transformer: what the forward pass keeps for the
// backward pass (per-layer activations), the trainable parameters (LoRA
// adapter slabs, or the whole base for full fine-tuning) with their gradients
// and optimizer state. llm.c style: every buffer is a named view into a slab,
// zero-grad is one memset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../ops/buffer.h"

namespace rlhf::model {

// The linear modules LoRA can adapt, by their PEFT names.
enum class Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kCAttn, kAttnCProj, kCFc, kMlpCProj, kQkv, kGateUp };
const char* proj_peft_name(Proj p);  // "q_proj", ..., "c_attn", "c_proj", "c_fc", "c_proj", "qkv_proj", "gate_up_proj"

// LoRA dropout: out = in * keep / (1 - p) with keep drawn per element from
// (key, module); applied to a gradient it applies the same mask. Host arrays.
void lora_dropout_apply(const float* in, float* out, int64_t rows, int64_t cols, float p, uint64_t key, size_t module);

// Activations of one layer, saved by the training forward (backend memory).
struct LayerActs {
  Buffer<float> x1, xn1, stat1a, stat1b;  // residual entering norm1, its output, rstd (and mean for LayerNorm)
  Buffer<float> qkv, att, lse;            // post-RoPE q|k|v, attention output, log-sum-exp [B, heads, T]
  Buffer<float> qn_in, kn_in, qn_rstd, kn_rstd;  // q/k norm (Qwen3): q [rows, heads, D], k [rows, kv_heads, D] before it, rstd per head
  Buffer<float> x2, xn2, stat2a, stat2b;  // the same around norm2
  Buffer<float> mlp, act;                 // MLP pre-activation (gate|up or fc) and activation
  Buffer<float> att_o, stat_pa, mlp_o, stat_pf;  // Gemma: o_proj and down_proj outputs before their post norms, rstd
};

// What the LM head reads and leaves per row of a [batch, seq] request; the
// training forward keeps it for the backward pass.
struct HeadActs {
  std::vector<int32_t> targets;  // host: the next token of each row, -1 = none
  Buffer<int32_t> targets_d;     // [rows] the same in backend memory
  Buffer<float> logp, entropy, lse, values;  // [rows]
  Buffer<float> mean_logp;  // [rows] mean over the vocabulary of log p (label smoothing)
  Buffer<float> dlogp;    // [rows] the loss gradient given to the forward (lm_grad)
  Buffer<float> dhidden;  // [rows, hidden] the LM head's gradient into the final hidden (lm_grad)
  bool has_grad = false;  // dhidden holds the LM head's gradient of this forward
  // The SFT loss mask given to the training forward instead of lm_grad
  // (ForwardRequest::sft_mask), in the row layout, kept for the loss call.
  Buffer<float> sft_mask;  // [rows]
  float sft_denom = 0.f;
  float sft_label_smoothing = 0.f;
  bool has_sft_mask = false;
  Buffer<float> dmean_logp;  // [rows] the label-smoothing gradient given to the forward (sft_mask)
};

// What a loss call (objective.cc) leaves in backend memory for the next
// backward(): gradients of the last training forward's outputs in the row
// layout, and the scratch the loss kernels work in. A training forward clears
// the gradients; backward() consumes them.
struct LossState {
  Buffer<float> dlogp, dentropy, dvalues, dmean_logp;  // [rows]
  bool has_dlogp = false, has_dentropy = false, has_dvalues = false, has_dmean_logp = false;
  void clear() { has_dlogp = has_dentropy = has_dvalues = has_dmean_logp = false; }
  // scratch: per-token inputs [rows], per-row sums and their gradients, the
  // scalars read back (loss, statistics, ...)
  Buffer<float> mask, w, old_logp, advantages, ref_logp, returns, old_values, zeros;
  Buffer<float> sums, dsums, pair_in, len, target, out;
};

struct Acts {
  int64_t rows = 0, batch = 0, seq = 0;
  std::vector<int32_t> ids, positions;  // host copies of the request
  std::vector<uint8_t> mask;
  Buffer<int32_t> ids_d, positions_d;   // [rows] backend copies the ops read
  Buffer<uint8_t> mask_d;
  std::vector<LayerActs> layers;
  Buffer<float> xf, xnf, statfa, statfb;  // final norm input/output and its statistics
  HeadActs head;
  // One [rows, r] buffer per LoRA module: scale * (input A^T), kept for the backward.
  std::vector<Buffer<float>> lora_u;
  uint64_t dropout_key = 0;  // LoRA dropout masks of this forward
};

struct LoraModule {
  int64_t layer = 0;
  Proj proj = Proj::kQ;
  int64_t in = 0, out = 0;  // A is [r, in], B is [out, r]
  int64_t col = 0;          // first column of this module's output within the fused matrix (qkv, gate|up)
  float* a = nullptr;
  float* b = nullptr;
  float* da = nullptr;
  float* db = nullptr;
};

// A LoRA adapter (PEFT semantics: y = x W^T + scale (x A^T) B^T), with an
// optional trainable score head. Parameters, gradients and AdamW moments are
// four slabs of the same layout.
struct Adapter {
  std::string name;
  int64_t r = 8;
  float alpha = 16.f;
  bool rslora = false;
  float scale = 2.f;
  std::vector<LoraModule> modules;
  float* score = nullptr;  // [head_rows, hidden] or null
  float* dscore = nullptr;
  int64_t head_rows = 0;
  // PEFT lora_dropout on the adapter's input, training forward only. The mask
  // is a pure function of (seed, forward count, module, element), so the
  // backward pass regenerates it instead of storing it.
  float dropout = 0.f;
  uint64_t dropout_seed = 0;
  uint64_t forward_count = 0;
  Buffer<float> params, grads, m, v;  // backend memory, one layout
  Buffer<double> sumsq;               // the optimizer step's gradient-norm scratch
  int64_t step = 0;
};

// Gradients of every base weight (full fine-tuning), in the layout of the
// backend's weight slab (Transformer::weight_slab()), and the AdamW moments.
struct FullGrads {
  Buffer<float> slab, m, v;
  Buffer<double> sumsq;  // the optimizer step's gradient-norm scratch
  int64_t step = 0;
};

}  // namespace rlhf::model
