// AVX-512 instantiation of the row kernels (vec_impl.h); tails use mask registers.
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "vec.h"

namespace rlhf::cpu {
namespace vec_avx512 {

struct V {
  using T = __m512;
  static constexpr int W = 16;
  static __mmask16 m(int w) { return static_cast<__mmask16>((1u << w) - 1u); }
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float v) { return _mm512_set1_ps(v); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T load_part(const float* p, int w) { return w == W ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m(w), p); }
  static T load_part_fill(const float* p, int w, float fill) { return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), m(w), p); }
  static void store_part(float* p, T v, int w) {
    if (w == W) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, m(w), v);
  }
  static T keep_first(T v, int w) { return _mm512_maskz_mov_ps(m(w), v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
  static T round(T a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T pow2i(T fx) {
    __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static T zero_below(T y, T x, T lo) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), y); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static float hmax(T v) { return _mm512_reduce_max_ps(v); }
};

#include "vec_impl.h"

}  // namespace vec_avx512

const VecKernels kVecAvx512 = {"avx512",          vec_avx512::k_dot,       vec_avx512::k_sum_sq,     vec_avx512::k_max,
                               vec_avx512::k_scale, vec_avx512::k_scale_mul, vec_avx512::k_norm_affine, vec_avx512::k_axpy,
                               vec_avx512::k_add,   vec_avx512::k_exp_shift, vec_avx512::k_exp_stats, vec_avx512::k_silu_mul,
                               vec_avx512::k_gelu, vec_avx512::k_swiglu_grad, adamw_avx2};  // AdamW is memory-bound: AVX2 streams it as fast

}  // namespace rlhf::cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
