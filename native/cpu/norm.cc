// RMSNorm and LayerNorm, each fused with the residual add that precedes it,
// so the residual stream is read once and written once per norm.
#include <cmath>

#include <algorithm>

#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

namespace {
// sum over j < n of term(j), in 8 independent partial sums combined at the
// end: one running sum would chain every add behind the previous one (4+
// cycles each, 2000+ cycles for a 512-wide row); independent lanes let the
// compiler vectorise the loop. The order is fixed, so the result is too.
template <typename Acc = double, typename F>
Acc lane_sum(int64_t n, F&& term) {
  constexpr int kLanes = 8;
  Acc lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += term(j + l);
  for (int l = 0; j < n; ++j, ++l) lane[l] += term(j);
  Acc s = 0;
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}
}  // namespace

void CpuBackend::rmsnorm(const RmsNormOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    float* x = op.residual + i * op.dim;
    if (op.delta) v.add(op.delta + i * op.dim, x, op.dim);
    const float ms = v.sum_sq(x, op.dim) / static_cast<float>(op.dim);
    const float rstd = 1.f / std::sqrt(ms + op.eps);
    if (op.rstd) op.rstd[i] = rstd;
    if (op.weight_offset == 0.f) return v.scale_mul(x, rstd, op.weight, op.out + i * op.dim, op.dim);
    float* out = op.out + i * op.dim;
    for (int64_t j = 0; j < op.dim; ++j) out[j] = x[j] * rstd * (op.weight_offset + op.weight[j]);
  });
}

void CpuBackend::layernorm(const LayerNormOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    float* x = op.residual + i * op.dim;
    if (op.delta) v.add(op.delta + i * op.dim, x, op.dim);
    // Two passes (mean, then centred variance): the one-pass formula loses
    // precision when |mean| >> std.
    const float mean = lane_sum<float>(op.dim, [&](int64_t j) { return x[j]; }) / static_cast<float>(op.dim);
    const float var = lane_sum<float>(op.dim, [&](int64_t j) { return (x[j] - mean) * (x[j] - mean); });
    const float rstd = 1.f / std::sqrt(var / static_cast<float>(op.dim) + op.eps);
    if (op.mean) op.mean[i] = mean;
    if (op.rstd) op.rstd[i] = rstd;
    v.norm_affine(x, mean, rstd, op.weight, op.bias, op.out + i * op.dim, op.dim);
  });
}

void CpuBackend::rmsnorm_backward(const RmsNormBackwardOp& op) {
  // y = x r w, r = (mean(x^2) + eps)^-1/2:
  //   dx = r (w dy) - x r^3 / dim * sum(w dy x)
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* x = op.x + i * op.dim;
    const float* dy = op.dout + i * op.dim;
    float* dx = op.dx + i * op.dim;
    const float r = op.rstd[i];
    const float* w = op.weight;
    const float off = op.weight_offset;
    const double dot = lane_sum(op.dim, [&](int64_t j) { return static_cast<double>(off + w[j]) * dy[j] * x[j]; });
    const float c = static_cast<float>(dot) * r * r * r / static_cast<float>(op.dim);
    for (int64_t j = 0; j < op.dim; ++j) dx[j] += r * (off + w[j]) * dy[j] - c * x[j];
  });
  if (op.dweight)
    column_reduce(pool_, op.dim, [&](int64_t c0, int64_t c1) {
      for (int64_t i = 0; i < op.n; ++i) {
        const float* x = op.x + i * op.dim;
        const float* dy = op.dout + i * op.dim;
        const float r = op.rstd[i];
        for (int64_t j = c0; j < c1; ++j) op.dweight[j] += dy[j] * x[j] * r;
      }
    });
}
void CpuBackend::layernorm_backward(const LayerNormBackwardOp& op) {
  // xhat = (x - mean) r, y = xhat w + b:
  //   dx = r (g - mean(g) - xhat mean(g xhat)), g = dy w
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* x = op.x + i * op.dim;
    const float* dy = op.dout + i * op.dim;
    float* dx = op.dx + i * op.dim;
    const float mu = op.mean[i], r = op.rstd[i];
    const float* w = op.weight;
    const double sg = lane_sum(op.dim, [&](int64_t j) { return static_cast<double>(dy[j]) * w[j]; });
    const double sgx = lane_sum(op.dim, [&](int64_t j) { return static_cast<double>(dy[j]) * w[j] * (x[j] - mu) * r; });
    const float mg = static_cast<float>(sg / op.dim), mgx = static_cast<float>(sgx / op.dim);
    for (int64_t j = 0; j < op.dim; ++j) {
      const float xhat = (x[j] - mu) * r;
      dx[j] += r * (dy[j] * op.weight[j] - mg - xhat * mgx);
    }
  });
  if (op.dweight || op.dbias)
    column_reduce(pool_, op.dim, [&](int64_t c0, int64_t c1) {
      for (int64_t i = 0; i < op.n; ++i) {
        const float* x = op.x + i * op.dim;
        const float* dy = op.dout + i * op.dim;
        const float mu = op.mean[i], r = op.rstd[i];
        for (int64_t j = c0; j < c1; ++j) {
          if (op.dweight) op.dweight[j] += dy[j] * (x[j] - mu) * r;
          if (op.dbias) op.dbias[j] += dy[j];
        }
      }
    });
}

}  // namespace rlhf::cpu
