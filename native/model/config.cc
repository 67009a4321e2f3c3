#include "config.h"

#include <cmath>

#include "../error.h"
#include "../ops/math.h"

namespace rlhf::model {

void Config::validate() const {
  auto bad = [](const std::string& what) { throw Error(code::kArgument, "model config: " + what); };
  if (vocab <= 0 || hidden <= 0 || intermediate <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0)
    bad("sizes must be positive");
  if (heads % kv_heads != 0) bad("num_attention_heads must be a multiple of num_key_value_heads");
  if (arch == Arch::kLlama && head_dim % 2 != 0) bad("head_dim must be even for rotary embeddings");
  if (qk_norm && arch != Arch::kLlama) bad("q/k norm needs the Llama-family block");
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) bad("rotary dim must be even and at most head_dim");
  if (rope_scaling == RopeScaling::kLongrope &&
      (rope_short_factor.size() != static_cast<size_t>(rot_dim() / 2) || rope_long_factor.size() != static_cast<size_t>(rot_dim() / 2)))
    bad("longrope short_factor and long_factor need rotary_dim/2 entries each");
  if (!local_layers.empty() && local_layers.size() != static_cast<size_t>(layers)) bad("layer types need one entry per layer");
  if (head_dim > 1024) bad("head_dim above 1024 is not supported");
  if (max_positions <= 0) bad("max_position_embeddings must be positive");
  if (!lm_head && num_labels <= 0) bad("a model needs an LM head or a score head");
}

float Config::attention_scale() const { return attn_scale > 0.f ? attn_scale : 1.f / std::sqrt(static_cast<float>(head_dim)); }

std::vector<float> Config::inv_freq_local() const {
  const int64_t dim = rot_dim();
  std::vector<float> out(static_cast<size_t>(dim / 2));
  for (int64_t j = 0; j < dim / 2; ++j)
    out[static_cast<size_t>(j)] = static_cast<float>(1.0 / std::pow(rope_local_theta, static_cast<double>(2 * j) / static_cast<double>(dim)));
  return out;
}

std::vector<float> Config::inv_freq(bool long_context) const {
  const int64_t dim = rot_dim();
  std::vector<float> out(static_cast<size_t>(dim / 2));
  for (int64_t j = 0; j < dim / 2; ++j) {
    double f = 1.0 / std::pow(rope_theta, static_cast<double>(2 * j) / static_cast<double>(dim));
    if (rope_scaling == RopeScaling::kLinear) f /= rope_factor;
    if (rope_scaling == RopeScaling::kLongrope)
      f /= static_cast<double>((long_context ? rope_long_factor : rope_short_factor)[static_cast<size_t>(j)]);
    if (rope_scaling == RopeScaling::kLlama3)
      f = math::llama3_inv_freq(static_cast<float>(f), static_cast<float>(rope_factor), static_cast<float>(rope_low_freq_factor),
                                static_cast<float>(rope_high_freq_factor), static_cast<float>(rope_original_max_positions));
    out[static_cast<size_t>(j)] = static_cast<float>(f);
  }
  return out;
}

}  // namespace rlhf::model
