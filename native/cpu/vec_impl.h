// Body of the vectorised row kernels, included by vec_avx2.cc and
// vec_avx512.cc after they define `struct V` (vector type and primitives for
// their ISA, including a masked load/store for the tail). Includes no headers:
// everything here is compiled for that ISA only.
//
// exp: Cephes-style, range reduction by ln2 (hi/lo split) and a degree-6
// polynomial; relative error ~2 ulp over [-87.3, 88.7], 0 below.

namespace {

using T = V::T;

inline T vexp(T x) {
  const T hi = V::set1(88.3762626647949f), lo = V::set1(-87.3365478515625f);
  T zero_mask_src = x;
  x = V::min(V::max(x, lo), hi);
  T fx = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  x = V::fnmadd(fx, V::set1(0.693359375f), x);
  x = V::fnmadd(fx, V::set1(-2.12194440e-4f), x);
  T y = V::set1(1.9875691500E-4f);
  y = V::fmadd(y, x, V::set1(1.3981999507E-3f));
  y = V::fmadd(y, x, V::set1(8.3334519073E-3f));
  y = V::fmadd(y, x, V::set1(4.1665795894E-2f));
  y = V::fmadd(y, x, V::set1(1.6666665459E-1f));
  y = V::fmadd(y, x, V::set1(5.0000001201E-1f));
  y = V::fmadd(y, V::mul(x, x), V::add(x, V::set1(1.f)));
  y = V::mul(y, V::pow2i(fx));
  return V::zero_below(y, zero_mask_src, lo);
}

// tanh via exp: tanh(x) = 1 - 2 / (exp(2x) + 1), saturating for |x| large.
inline T vtanh(T x) {
  const T one = V::set1(1.f);
  T e = vexp(V::mul(V::set1(2.f), V::min(x, V::set1(20.f))));
  return V::sub(one, V::div(V::set1(2.f), V::add(e, one)));
}

template <typename F>
inline void for_each_block(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) f(i, V::W);
  if (i < n) f(i, static_cast<int>(n - i));
}

float k_dot(const float* a, const float* b, int64_t n) {
  T acc0 = V::zero(), acc1 = V::zero();
  int64_t i = 0;
  for (; i + 2 * V::W <= n; i += 2 * V::W) {
    acc0 = V::fmadd(V::load(a + i), V::load(b + i), acc0);
    acc1 = V::fmadd(V::load(a + i + V::W), V::load(b + i + V::W), acc1);
  }
  for (; i < n; i += V::W) {
    const int w = n - i < V::W ? static_cast<int>(n - i) : V::W;
    acc0 = V::fmadd(V::load_part(a + i, w), V::load_part(b + i, w), acc0);
  }
  return V::hsum(V::add(acc0, acc1));
}

float k_sum_sq(const float* x, int64_t n) { return k_dot(x, x, n); }

float k_max(const float* x, int64_t n) {
  T m = V::set1(-__builtin_inff());
  for_each_block(n, [&](int64_t i, int w) { m = V::max(m, w == V::W ? V::load(x + i) : V::load_part_fill(x + i, w, -__builtin_inff())); });
  return V::hmax(m);
}

void k_scale(const float* x, float s, float* y, int64_t n) {
  const T vs = V::set1(s);
  for_each_block(n, [&](int64_t i, int w) { V::store_part(y + i, V::mul(V::load_part(x + i, w), vs), w); });
}

void k_scale_mul(const float* x, float s, const float* wt, float* y, int64_t n) {
  const T vs = V::set1(s);
  for_each_block(n, [&](int64_t i, int w) { V::store_part(y + i, V::mul(V::mul(V::load_part(x + i, w), vs), V::load_part(wt + i, w)), w); });
}

void k_norm_affine(const float* x, float mean, float rstd, const float* wt, const float* b, float* y, int64_t n) {
  const T vm = V::set1(mean), vr = V::set1(rstd);
  for_each_block(n, [&](int64_t i, int w) {
    T t = V::mul(V::sub(V::load_part(x + i, w), vm), vr);
    V::store_part(y + i, V::fmadd(t, V::load_part(wt + i, w), V::load_part(b + i, w)), w);
  });
}

void k_axpy(float a, const float* x, float* y, int64_t n) {
  const T va = V::set1(a);
  for_each_block(n, [&](int64_t i, int w) { V::store_part(y + i, V::fmadd(va, V::load_part(x + i, w), V::load_part(y + i, w)), w); });
}

void k_add(const float* x, float* y, int64_t n) {
  for_each_block(n, [&](int64_t i, int w) { V::store_part(y + i, V::add(V::load_part(x + i, w), V::load_part(y + i, w)), w); });
}

float k_exp_shift(const float* x, float shift, float* out, int64_t n) {
  const T vs = V::set1(shift);
  T acc = V::zero();
  for_each_block(n, [&](int64_t i, int w) {
    T e = vexp(V::sub(V::load_part(x + i, w), vs));
    if (w < V::W) e = V::keep_first(e, w);
    V::store_part(out + i, e, w);
    acc = V::add(acc, e);
  });
  return V::hsum(acc);
}

void k_exp_stats(const float* x, float scale, float shift, float* out, float* sum, float* sum_x, int64_t n) {
  const T vsc = V::set1(scale), vs = V::set1(shift);
  T acc = V::zero(), accx = V::zero();
  for_each_block(n, [&](int64_t i, int w) {
    T xs = V::mul(V::load_part(x + i, w), vsc);
    T e = vexp(V::sub(xs, vs));
    if (w < V::W) e = V::keep_first(e, w);
    if (out) V::store_part(out + i, e, w);
    acc = V::add(acc, e);
    accx = V::fmadd(e, xs, accx);
  });
  *sum = V::hsum(acc);
  *sum_x = V::hsum(accx);
}

void k_silu_mul(const float* g, const float* u, float* out, int64_t n) {
  const T one = V::set1(1.f);
  for_each_block(n, [&](int64_t i, int w) {
    T gv = V::load_part(g + i, w);
    T s = V::div(gv, V::add(one, vexp(V::sub(V::zero(), gv))));
    V::store_part(out + i, V::mul(s, V::load_part(u + i, w)), w);
  });
}

// s = sigmoid(g): du = dy g s, dg = dy u s (1 + g (1 - s)) (math::swiglu_grad).
void k_swiglu_grad(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n) {
  const T one = V::set1(1.f);
  for_each_block(n, [&](int64_t i, int w) {
    const T gv = V::load_part(g + i, w), uv = V::load_part(u + i, w), dyv = V::load_part(dy + i, w);
    const T s = V::div(one, V::add(one, vexp(V::sub(V::zero(), gv))));
    const T dys = V::mul(dyv, s);
    V::store_part(du + i, V::mul(dys, gv), w);
    V::store_part(dg + i, V::mul(V::mul(dys, uv), V::fmadd(gv, V::sub(one, s), one)), w);
  });
}

void k_gelu(const float* x, float* out, int64_t n) {
  const T k = V::set1(0.7978845608028654f), c = V::set1(0.044715f), half = V::set1(0.5f), one = V::set1(1.f);
  for_each_block(n, [&](int64_t i, int w) {
    T xv = V::load_part(x + i, w);
    T inner = V::mul(k, V::fmadd(V::mul(c, V::mul(xv, xv)), xv, xv));
    V::store_part(out + i, V::mul(V::mul(half, xv), V::add(one, vtanh(inner))), w);
  });
}

}  // namespace
