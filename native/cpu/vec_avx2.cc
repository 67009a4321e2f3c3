// AVX2 + FMA instantiation of the row kernels (vec_impl.h).
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>

#include "vec.h"

namespace rlhf::cpu {
namespace vec_avx2 {

struct V {
  using T = __m256;
  static constexpr int W = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float v) { return _mm256_set1_ps(v); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static __m256i tail_mask(int w) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static T load_part(const float* p, int w) { return w == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask(w)); }
  static T load_part_fill(const float* p, int w, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, tail_mask(w)), _mm256_castsi256_ps(tail_mask(w)));
  }
  static void store_part(float* p, T v, int w) {
    if (w == W) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, tail_mask(w), v);
  }
  static T keep_first(T v, int w) { return _mm256_and_ps(v, _mm256_castsi256_ps(tail_mask(w))); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
  static T round(T a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T pow2i(T fx) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static T zero_below(T y, T x, T lo) { return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y); }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(T v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

#include "vec_impl.h"

}  // namespace vec_avx2

const VecKernels kVecAvx2 = {"avx2",          vec_avx2::k_dot,       vec_avx2::k_sum_sq,    vec_avx2::k_max,
                             vec_avx2::k_scale, vec_avx2::k_scale_mul, vec_avx2::k_norm_affine, vec_avx2::k_axpy,
                             vec_avx2::k_add,   vec_avx2::k_exp_shift, vec_avx2::k_exp_stats, vec_avx2::k_silu_mul,
                             vec_avx2::k_gelu, vec_avx2::k_swiglu_grad, adamw_avx2};

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
