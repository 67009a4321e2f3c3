// RMSNorm and LayerNorm, each fused with the residual add that precedes it,
// so the residual stream is read once and written once per norm.
#include <cmath>

#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

void CpuBackend::rmsnorm(const RmsNormOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    float* x = op.residual + i * op.dim;
    if (op.delta) v.add(op.delta + i * op.dim, x, op.dim);
    const float ms = v.sum_sq(x, op.dim) / static_cast<float>(op.dim);
    const float rstd = 1.f / std::sqrt(ms + op.eps);
    if (op.rstd) op.rstd[i] = rstd;
    v.scale_mul(x, rstd, op.weight, op.out + i * op.dim, op.dim);
  });
}

void CpuBackend::layernorm(const LayerNormOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    float* x = op.residual + i * op.dim;
    if (op.delta) v.add(op.delta + i * op.dim, x, op.dim);
    // Two passes (mean, then centred variance): the one-pass formula loses
    // precision when |mean| >> std.
    float sum = 0;
    for (int64_t j = 0; j < op.dim; ++j) sum += x[j];
    const float mean = sum / static_cast<float>(op.dim);
    float var = 0;
    for (int64_t j = 0; j < op.dim; ++j) var += (x[j] - mean) * (x[j] - mean);
    const float rstd = 1.f / std::sqrt(var / static_cast<float>(op.dim) + op.eps);
    if (op.mean) op.mean[i] = mean;
    if (op.rstd) op.rstd[i] = rstd;
    v.norm_affine(x, mean, rstd, op.weight, op.bias, op.out + i * op.dim, op.dim);
  });
}

}  // namespace rlhf::cpu
