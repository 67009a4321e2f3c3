// Creating LoRA adapters on a model and naming their tensors as PEFT does.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../ops/backend.h"
#include "config.h"
#include "train.h"
#include "weights.h"

namespace rlhf::model {

struct AdapterSpec {
  std::string name = "default";
  int64_t r = 8;
  float alpha = 16.f;
  bool rslora = false;
  float dropout = 0.f;                            // PEFT lora_dropout
  std::vector<std::pair<int64_t, Proj>> modules;  // (layer, projection)
  uint64_t seed = 0;
  // Optional initial values per module (same order): PEFT lora_A / lora_B tensors.
  std::vector<std::pair<TensorLocation, TensorLocation>> init_from;
  // Optional trainable score head [head_rows, hidden] (reward model, critic):
  // copied from head_from when its file is set, else N(0, head_std^2).
  int64_t head_rows = 0;
  float head_std = 0.02f;
  TensorLocation head_from;
};

// PEFT saves a sequence-classification head (modules_to_save) under this name.
inline const char* kAdapterHeadName = "base_model.model.score.weight";

// Parses a PEFT module name ("q_proj", ..., "c_proj" with its parent for GPT-2).
bool parse_proj(const Config& cfg, const std::string& name, bool mlp_parent, Proj* out);

// Allocates the adapter's slabs and initialises it: from init_from, or as
// PEFT does (A ~ U(-1/sqrt(in), 1/sqrt(in)), Kaiming-uniform with a = sqrt(5);
// B = 0). Throws E_ARGUMENT for a module the architecture does not have.
// The slabs live in `be`'s memory.
std::unique_ptr<Adapter> make_adapter(const Config& cfg, const AdapterSpec& spec, Backend& be);

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" and the like.
std::string peft_tensor_name(const Config& cfg, const LoraModule& m, bool is_a);

// Writes the adapter's A/B tensors (and its score head) to a safetensors file in PEFT's layout.
void save_adapter_weights(const Config& cfg, const Adapter& a, const std::string& path);

}  // namespace rlhf::model
