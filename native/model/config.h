// The model's shape as the engine needs it. lib/ parses config.json (all
// the Hugging Face spellings, validation, error messages) and hands the
// normalised values to native code, which re-checks only what could make it
// read out of bounds.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rlhf::model {

enum class Arch { kLlama, kGpt2 };
enum class RopeScaling { kNone, kLinear, kLlama3, kLongrope };

struct Config {
  Arch arch = Arch::kLlama;
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0, max_positions = 0;
  float norm_eps = 1e-5f;
  // RoPE (Llama family)
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::kNone;
  double rope_factor = 1.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  double rope_original_max_positions = 8192.0;
  // Partial rotary (Phi-3 partial_rotary_factor): the first rotary_dim of each head rotate; 0 = head_dim.
  int64_t rotary_dim = 0;
  // LongRoPE (Phi-3): per-frequency divisors [rot_dim/2] for positions up to
  // rope_original_max_positions (short) and past it (long), and the factor
  // cos and sin are multiplied by.
  std::vector<float> rope_short_factor, rope_long_factor;
  double rope_attention_factor = 1.0;
  bool qkv_bias = false;  // Qwen2, attention_bias
  bool o_bias = false;    // attention_bias (Llama), GPT-2
  bool mlp_bias = false;
  bool fused_proj = false;  // Phi-3: q|k|v saved as one qkv_proj and gate|up as one gate_up_proj (tensors and LoRA modules)
  bool qk_norm = false;   // Qwen3: RMSNorm over each q and k head (weights [head_dim]) before RoPE
  bool tie_embeddings = false;
  bool lm_head = true;      // *ForCausalLM
  int64_t num_labels = 0;   // *ForSequenceClassification: score head rows
  std::string prefix;       // tensor-name prefix of the body: "model." / "transformer." / ""
  bool weights_bf16 = false; // keep the frozen matrices in bfloat16 (fp32 compute)

  int64_t q_dim() const { return heads * head_dim; }
  int64_t kv_dim() const { return kv_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  void validate() const;  // throws rlhf::Error(E_CONFIG-like E_ARGUMENT) on impossible shapes
  int64_t rot_dim() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
  // [rot_dim/2], scaling applied; long_context picks LongRoPE's long factors.
  std::vector<float> inv_freq(bool long_context = false) const;
};

}  // namespace rlhf::model
