// AdamW's element update (math::adamw_update) eight lanes at a time. It must
// give the scalar version's bits on every element (the optimizer tests check
// equality across ISAs, and resumed runs must match uninterrupted ones), so
// it performs the same correctly rounded IEEE operations in the same order:
// separate multiplies and adds, never fused (contraction is off for this
// file: GCC would otherwise fuse the intrinsics' generic vector mul + add
// into FMAs), and sqrt / div, which are exact-rounded in both.
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#pragma clang fp contract(off)
#else
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=off")
#endif
#include <immintrin.h>

#include "vec.h"

namespace rlhf::cpu {

void adamw_avx2(float* p, float* m, float* v, const float* g, int64_t n, const AdamWRow& k) {
  const __m256 gs = _mm256_set1_ps(k.grad_scale), decay = _mm256_set1_ps(k.decay);
  const __m256 b1 = _mm256_set1_ps(k.beta1), b2 = _mm256_set1_ps(k.beta2);
  const __m256 one_b1 = _mm256_set1_ps(1.f - k.beta1), one_b2 = _mm256_set1_ps(1.f - k.beta2);
  const __m256 step = _mm256_set1_ps(k.step_size), bc2 = _mm256_set1_ps(k.bc2_sqrt), eps = _mm256_set1_ps(k.eps);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), gs);
    // p *= decay; m = beta1 m + (1 - beta1) g; v = beta2 v + ((1 - beta2) g) g
    const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(one_b1, gi));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(one_b2, gi), gi));
    // p -= step_size * (m / (sqrt(v) / bc2_sqrt + eps))
    const __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    _mm256_storeu_ps(p + i, _mm256_sub_ps(pi, _mm256_mul_ps(step, _mm256_div_ps(mi, den))));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  for (; i < n; ++i) {  // the same operations, one lane
    const float gi = g[i] * k.grad_scale;
    p[i] *= k.decay;
    m[i] = k.beta1 * m[i] + (1.f - k.beta1) * gi;
    v[i] = k.beta2 * v[i] + (1.f - k.beta2) * gi * gi;
    p[i] -= k.step_size * (m[i] / (_mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v[i]))) / k.bc2_sqrt + k.eps));
  }
}

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // __x86_64__
