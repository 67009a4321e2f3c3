// The frozen base weights in fp32, in one slab, with named views. Loaded from
// safetensors (F32/F16/BF16 converted once). Layouts chosen for the GEMMs:
//   - every projection is [out, in] (Linear's layout; GPT-2's Conv1D [in, out]
//     is transposed on load),
//   - q, k, v are concatenated into one [q_dim + 2 kv_dim, hidden] matrix and
//     gate, up into one [2 intermediate, hidden] matrix, so each is one GEMM.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.h"

namespace rlhf::model {

struct LayerWeights {
  float* norm1_w = nullptr;  // [hidden]   input_layernorm / ln_1
  float* norm1_b = nullptr;  // [hidden]   GPT-2 only
  float* wqkv = nullptr;     // [qkv_dim, hidden]
  float* bqkv = nullptr;     // [qkv_dim]  or null
  float* q_norm_w = nullptr; // [head_dim] Qwen3 per-head q RMSNorm, or null
  float* k_norm_w = nullptr; // [head_dim] ... and k
  float* wo = nullptr;       // [hidden, q_dim]
  float* bo = nullptr;       // [hidden]   or null
  float* norm2_w = nullptr;  // [hidden]   post_attention_layernorm / ln_2
  float* norm2_b = nullptr;
  float* post_attn_norm_w = nullptr;  // [hidden] Gemma: post_attention_layernorm (on the attention output)
  float* post_ff_norm_w = nullptr;    // [hidden] Gemma: post_feedforward_layernorm (on the MLP output)
  float* w_in = nullptr;     // Llama: [2*inter, hidden] (gate rows then up rows); GPT-2: [inter, hidden] (c_fc)
  float* b_in = nullptr;     // [2*inter] / [inter] or null
  float* w_out = nullptr;    // [hidden, inter]  down_proj / c_proj
  float* b_out = nullptr;    // [hidden] or null
  // bfloat16 copies of the four matrices when the frozen weights are kept in
  // bf16 (then the fp32 pointers above are null).
  uint16_t* wqkv16 = nullptr;
  uint16_t* wo16 = nullptr;
  uint16_t* w_in16 = nullptr;
  uint16_t* w_out16 = nullptr;
};

// Where a Hugging Face tensor lives in the engine's fp32 slab: `rows` x `cols`
// starting at ptr (a slice of a fused matrix for q/k/v and gate/up); for
// GPT-2's Conv1D the file's [in, out] is the transpose of what is stored.
struct NamedView {
  std::string name;
  float* ptr = nullptr;
  int64_t rows = 0, cols = 0;
  bool transposed = false;
};

struct Weights {
  std::unique_ptr<float[]> slab;
  std::vector<NamedView> views;  // every loaded tensor (cleared when converted to bf16)
  int64_t slab_floats = 0;
  float* embed = nullptr;       // [vocab, hidden]
  float* pos_embed = nullptr;   // [max_positions, hidden] (GPT-2)
  std::vector<LayerWeights> layers;
  float* final_norm_w = nullptr;
  float* final_norm_b = nullptr;
  float* lm_head = nullptr;     // [vocab, hidden]; == embed when tied
  float* score = nullptr;       // [num_labels, hidden] or null
  // bf16 storage (see LayerWeights): embed16/lm_head16 replace embed/lm_head.
  std::unique_ptr<uint16_t[]> slab16;
  int64_t slab16_elems = 0;
  uint16_t* embed16 = nullptr;
  uint16_t* lm_head16 = nullptr;
  // Where the tensors start within slab / slab16 (64-byte aligned); every
  // pointer above lies in [slab_base, slab_base + slab_floats) or the bf16 twin.
  float* slab_base = nullptr;
  uint16_t* slab16_base = nullptr;
  bool bf16() const { return slab16_base != nullptr; }
  int64_t parameters = 0;  // elements of all loaded tensors
};

// Keeps the big matrices (embeddings, projections, LM head) in bfloat16,
// rounded to nearest even, and frees their fp32 copies; norms, biases and
// the score head stay fp32. Halves the bytes every GEMM streams.
void convert_to_bf16(Weights& w, const Config& cfg);

// Where each tensor lives: canonical name (as transformers saves it, e.g.
// "transformer.h.0.ln_1.weight") -> {safetensors file path, name stored in
// that file} (old GPT-2 files store names without "transformer.").
struct TensorLocation {
  std::string file, stored_name;
};
using TensorFiles = std::unordered_map<std::string, TensorLocation>;

// A LoRA pair merged into one base weight at load: W[out, in] += scale * B A,
// A = [r, in] and B = [out, r] as PEFT stores them (also for GPT-2's Conv1D,
// whose weight the engine keeps transposed to [out, in]).
struct LoraMerge {
  std::string target;  // canonical base tensor name, e.g. model.layers.0.self_attn.q_proj.weight
  TensorLocation a, b;
  float scale = 1.f;
};

// A score head the checkpoint does not have (a reward model or critic made
// from a causal LM): score.weight ~ N(0, std^2), as transformers initialises
// a fresh *ForSequenceClassification head (initializer_range, 0.02).
struct ScoreInit {
  bool enabled = false;
  float std = 0.02f;
  uint64_t seed = 0;
};

// Loads and converts. Throws E_MODEL naming the tensor for a missing tensor or
// a wrong shape, E_UNSUPPORTED for a dtype other than F32/F16/BF16.
Weights load_weights(const Config& cfg, const TensorFiles& files, const std::vector<LoraMerge>& loras = {}, const ScoreInit& score_init = {});

// The same weights at another address (a backend's copy of slab_base /
// slab16_base, same layout): every pointer and view moved there, nothing owned.
Weights backend_copy(const Weights& w, float* slab, uint16_t* slab16);

float bf16_to_float(uint16_t h);
float f16_to_float(uint16_t h);

}  // namespace rlhf::model
