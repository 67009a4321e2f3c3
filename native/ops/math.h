// Per-element math shared by the CPU and CUDA backends. Marked host+device
// under nvcc, so the CPU tests exercise exactly the formulas the GPU kernels
// run; what stays GPU-only is indexing, tiling and reductions.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RLHF_HD __host__ __device__ __forceinline__
#else
#define RLHF_HD inline
#endif

namespace rlhf::math {

RLHF_HD float silu(float x) { return x / (1.f + expf(-x)); }

// GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
RLHF_HD float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// rotate_half: (x0, x1) are elements j and j + d/2 of one head.
RLHF_HD void rope_rotate(float& x0, float& x1, float cos_a, float sin_a) {
  const float a = x0 * cos_a - x1 * sin_a;
  const float b = x1 * cos_a + x0 * sin_a;
  x0 = a;
  x1 = b;
}

// Running log-sum-exp of a stream of values split into blocks, with the
// softmax-weighted sum of the values themselves (for the entropy):
//   m = max, s = sum exp(x - m), t = sum exp(x - m) * x.
// Merging two partial states is exact; flash attention and the chunked LM
// head both rely on it.
struct OnlineLse {
  float m = -INFINITY, s = 0.f, t = 0.f;
};

RLHF_HD OnlineLse lse_merge(OnlineLse a, OnlineLse b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = a.m > b.m ? a.m : b.m;
  const float ea = expf(a.m - m), eb = expf(b.m - m);
  return OnlineLse{m, a.s * ea + b.s * eb, a.t * ea + b.t * eb};
}

RLHF_HD float lse_value(const OnlineLse& a) { return a.m + logf(a.s); }
// Entropy of softmax(x) = lse - E[x].
RLHF_HD float lse_entropy(const OnlineLse& a) { return lse_value(a) - a.t / a.s; }

// llama3 RoPE scaling of one inverse frequency (transformers'
// _compute_llama3_parameters): long wavelengths are divided by `factor`, short
// ones kept, and the band between is interpolated smoothly.
RLHF_HD float llama3_inv_freq(float inv_freq, float factor, float low_freq_factor, float high_freq_factor,
                              float original_max_positions) {
  const float two_pi = 6.283185307179586f;
  const float low_freq_wavelen = original_max_positions / low_freq_factor;
  const float high_freq_wavelen = original_max_positions / high_freq_factor;
  const float wavelen = two_pi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  const float smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
  return (1.f - smooth) * inv_freq / factor + smooth * inv_freq;
}

// Counter-based RNG (splitmix64 finaliser): the value for (seed, counter) does
// not depend on call order, so sampling is reproducible on any thread count
// and on both backends.
RLHF_HD uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Uniform in [0, 1) with 24 random bits.
RLHF_HD float uniform01(uint64_t seed, uint64_t counter) {
  return static_cast<float>(mix64(seed ^ mix64(counter)) >> 40) * (1.f / 16777216.f);
}

}  // namespace rlhf::math
