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
  bool qk_norm = false;
  // Gemma 3: embeddings times embed_scale (sqrt(hidden) as the checkpoint's
  // dtype rounds it), RMSNorm scale (norm_offset + w) = (1 + w), a norm on
  // each block output before the residual add (post_attention_layernorm,
  // post_feedforward_layernorm), GeGLU, attention scale
  // query_pre_attn_scalar^-1/2, and sliding-window layers with their own
  // RoPE base (default RoPE).
  float embed_scale = 1.f;
  float norm_offset = 0.f;
  bool sandwich_norm = false;
  bool geglu = false;
  float attn_scale = 0.f;              // 0: 1/sqrt(head_dim)
  std::vector<uint8_t> local_layers;   // [layers] 1 = sliding-window layer (local RoPE), or empty
  double rope_local_theta = 10000.0;
  bool is_local(int64_t l) const { return !local_layers.empty() && local_layers[static_cast<size_t>(l)]; }
  float attention_scale() const;   // Qwen3: RMSNorm over each q and k head (weights [head_dim]) before RoPE
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
  std::vector<float> inv_freq_local() const;  // [rot_dim/2] of the local layers: rope_local_theta, no scaling
};

}  // namespace rlhf::model
