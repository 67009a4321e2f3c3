// Training state of a Transformer: what the forward pass keeps for the
// backward pass (per-layer activations), the trainable parameters (LoRA
// adapter slabs, or the whole base for full fine-tuning) with their gradients
// and optimizer state. llm.c style: every buffer is a named view into a slab,
// zero-grad is one memset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rlhf::model {

// The linear modules LoRA can adapt, by their PEFT names.
enum class Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kCAttn, kAttnCProj, kCFc, kMlpCProj };
const char* proj_peft_name(Proj p);  // "q_proj", ..., "c_attn", "c_proj", "c_fc", "c_proj"

// LoRA dropout: out = in * keep / (1 - p) with keep drawn per element from
// (key, module); applied to a gradient it applies the same mask.
void lora_dropout_apply(const float* in, float* out, int64_t rows, int64_t cols, float p, uint64_t key, size_t module);

// Activations of one layer, saved by the training forward.
struct LayerActs {
  std::vector<float> x1, xn1, stat1a, stat1b;  // residual entering norm1, its output, rstd (and mean for LayerNorm)
  std::vector<float> qkv, att, lse;            // post-RoPE q|k|v, attention output, log-sum-exp [B, heads, T]
  std::vector<float> x2, xn2, stat2a, stat2b;  // the same around norm2
  std::vector<float> mlp, act;                 // MLP pre-activation (gate|up or fc) and activation
};

struct Acts {
  int64_t rows = 0, batch = 0, seq = 0;
  std::vector<int32_t> ids, positions;
  std::vector<uint8_t> mask;
  std::vector<LayerActs> layers;
  std::vector<float> xf, xnf, statfa, statfb;  // final norm input/output and its statistics
  std::vector<int32_t> targets;                // LM-head targets per row (-1 = none)
  std::vector<float> lse, entropy;             // LM head, per row
  // One [rows, r] buffer per LoRA module: scale * (input A^T), kept for the backward.
  std::vector<std::vector<float>> lora_u;
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
  std::vector<float> params, grads, m, v;
  int64_t step = 0;
};

// Gradients of every base weight (full fine-tuning), in the engine's layout.
struct FullGrads {
  std::vector<float> slab;  // same layout and size as Weights::slab
  float* of(const float* weight, const float* weight_slab_base) { return slab.data() + (weight - weight_slab_base); }
  std::vector<float> m, v;  // AdamW moments, same layout
  int64_t step = 0;
};

}  // namespace rlhf::model
