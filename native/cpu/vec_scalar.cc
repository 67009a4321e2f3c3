// Plain C++ row kernels: the fallback on CPUs without AVX2, and the reference
// the SIMD versions are tested against.
#include <algorithm>
#include <cmath>
#include <string>

#include "../ops/math.h"
#include "cpu_features.h"
#include "vec.h"

namespace rlhf::cpu {
namespace {
float s_dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
float s_sum_sq(const float* x, int64_t n) { return s_dot(x, x, n); }
float s_max(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}
void s_scale(const float* x, float s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s;
}
void s_scale_mul(const float* x, float s, const float* w, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s * w[i];
}
void s_norm_affine(const float* x, float mean, float rstd, const float* w, const float* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}
void s_axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
void s_add(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}
float s_exp_shift(const float* x, float shift, float* out, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += (out[i] = std::exp(x[i] - shift));
  return s;
}
void s_exp_stats(const float* x, float scale, float shift, float* out, float* sum, float* sum_x, int64_t n) {
  float s = 0, sx = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float xs = x[i] * scale, e = std::exp(xs - shift);
    if (out) out[i] = e;
    s += e;
    sx += e * xs;
  }
  *sum = s;
  *sum_x = sx;
}
void s_silu_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = math::silu(g[i]) * u[i];
}
void s_gelu(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = math::gelu_tanh(x[i]);
}
void s_swiglu_grad(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) math::swiglu_grad(g[i], u[i], dy[i], dg[i], du[i]);
}
void s_adamw(float* p, float* m, float* v, const float* g, int64_t n, const AdamWRow& k) {
  for (int64_t i = 0; i < n; ++i)
    math::adamw_update(p[i], m[i], v[i], g[i] * k.grad_scale, k.decay, k.beta1, k.beta2, k.step_size, k.bc2_sqrt, k.eps);
}
}  // namespace

const VecKernels kVecScalar = {"scalar", s_dot, s_sum_sq, s_max, s_scale, s_scale_mul, s_norm_affine, s_axpy,
                               s_add, s_exp_shift, s_exp_stats, s_silu_mul, s_gelu, s_swiglu_grad, s_adamw};

namespace {
const VecKernels* detect() {
#if defined(__x86_64__)
  const Features& f = features();
  if (f.avx512f && f.avx512bw && f.avx512vl) return &kVecAvx512;
  if (f.avx2 && f.fma) return &kVecAvx2;
#endif
  return &kVecScalar;
}
const VecKernels* g_vec = nullptr;
}  // namespace

const VecKernels& vec() {
  if (!g_vec) g_vec = detect();
  return *g_vec;
}

bool vec_force(const char* name) {
  const std::string n = name ? name : "";
  const VecKernels* k = nullptr;
  if (n == "scalar") k = &kVecScalar;
  if (n == "auto") k = detect();
#if defined(__x86_64__)
  const Features& f = features();
  if (n == "avx2" && f.avx2 && f.fma) k = &kVecAvx2;
  if (n == "avx512" && f.avx512f && f.avx512bw && f.avx512vl) k = &kVecAvx512;
#endif
  if (!k) return false;
  g_vec = k;
  return true;
}

}  // namespace rlhf::cpu
