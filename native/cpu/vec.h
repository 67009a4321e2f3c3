// Vectorised row kernels used by the element-wise and reduction ops of the
// CPU backend. One implementation (vec_impl.h) is compiled per instruction
// set (vec_avx2.cc, vec_avx512.cc) next to a plain one (vec_scalar.cc), and
// the best the CPU supports is picked at run time.
#pragma once
#include <cstdint>

namespace rlhf::cpu {

// One AdamW step's constants (math::adamw_consts) and the gradient scale.
struct AdamWRow {
  float grad_scale, decay, beta1, beta2, step_size, bc2_sqrt, eps;
};

struct VecKernels {
  const char* name;
  float (*dot)(const float* a, const float* b, int64_t n);
  float (*sum_sq)(const float* x, int64_t n);
  float (*max)(const float* x, int64_t n);
  // y = x * s (elementwise with scalar), y may alias x
  void (*scale)(const float* x, float s, float* y, int64_t n);
  // y = x * s * w (RMSNorm's last step)
  void (*scale_mul)(const float* x, float s, const float* w, float* y, int64_t n);
  // y = (x - mean) * rstd * w + b (LayerNorm's last step)
  void (*norm_affine)(const float* x, float mean, float rstd, const float* w, const float* b, float* y, int64_t n);
  // y += a * x
  void (*axpy)(float a, const float* x, float* y, int64_t n);
  // y += x
  void (*add)(const float* x, float* y, int64_t n);
  // out = exp(x - shift); returns the sum of out
  float (*exp_shift)(const float* x, float shift, float* out, int64_t n);
  // sum exp(x*scale - shift) and sum exp(x*scale - shift) * x*scale; with out
  // non-null, also stores out = exp(x*scale - shift) (out may alias x)
  void (*exp_stats)(const float* x, float scale, float shift, float* out, float* sum, float* sum_x, int64_t n);
  // out = silu(g) * u
  void (*silu_mul)(const float* g, const float* u, float* out, int64_t n);
  // out = gelu_tanh(x)
  void (*gelu)(const float* x, float* out, int64_t n);
  // SwiGLU's backward for y = silu(g) * u: dg = dy u silu'(g), du = dy silu(g)
  void (*swiglu_grad)(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n);
  // AdamW on n elements (math::adamw_update each, gradient times grad_scale);
  // every ISA gives the scalar version's bits.
  void (*adamw)(float* p, float* m, float* v, const float* g, int64_t n, const AdamWRow& k);
};

#if defined(__x86_64__)
void adamw_avx2(float* p, float* m, float* v, const float* g, int64_t n, const AdamWRow& k);  // vec_adamw_avx2.cc
#endif

// sum(x) as dots with a block of ones (the kernels have no plain sum; the
// LM head's mean logit, for label smoothing).
inline float vec_sum(const VecKernels& v, const float* x, int64_t n) {
  constexpr int64_t kOnes = 1024;
  static const struct Ones {
    float x[kOnes];
    Ones() {
      for (float& e : x) e = 1.f;
    }
  } ones;
  float s = 0.f;
  for (int64_t i = 0; i < n; i += kOnes) s += v.dot(x + i, ones.x, n - i < kOnes ? n - i : kOnes);
  return s;
}

const VecKernels& vec();  // the best for this CPU
bool vec_force(const char* name);  // testing hook: "scalar" | "avx2" | "avx512" | "auto"

extern const VecKernels kVecScalar;
#if defined(__x86_64__)
extern const VecKernels kVecAvx2;
extern const VecKernels kVecAvx512;
#endif

}  // namespace rlhf::cpu
