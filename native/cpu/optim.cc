// Optimizer ops: AdamW and SGD steps (torch.optim semantics), in place on flat
// fp32 arrays, and the two halves of gradient clipping: grad_norm (sum of
// squares in fp64) and scale (multiply by a factor, or by torch's clip factor
// computed from grad_norm's output). Per-element math in ops/math.h, shared
// with kernels/optim.cu.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../ops/math.h"
#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

namespace {

// Element-wise ops split into chunks of this many elements; grad_norm's
// partial sums use the same fixed chunks, so its result does not depend on
// the thread count.
constexpr int64_t kChunk = 1 << 15;

inline int64_t chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Sum of squares of x[0, n) in fp64. A float's square is exact in fp64; four
// interleaved accumulators (fixed order) keep the dependency chain short.
double sum_squares(const float* x, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
  }
  for (; i < n; ++i) {
    const double v = x[i];
    a0 += v * v;
  }
  return (a0 + a1) + (a2 + a3);
}

}  // namespace

void CpuBackend::adamw(const AdamWOp& op) {
  // Bias corrections and the step size in fp64 on the host, as torch does
  // with Python floats; the element update itself is fp32.
  const math::AdamWConsts k = math::adamw_consts(op.lr, op.beta1, op.beta2, op.weight_decay, op.step);
  const int64_t n = op.n;
  const AdamWRow row{op.grad_scale, k.decay, op.beta1, op.beta2, k.step_size, k.bc2_sqrt, op.eps};
  const VecKernels& vk = vec();  // vectorised where the CPU allows, the same bits as the scalar update
  pool_.parallel_for(chunks(n), [&](int64_t c, int) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    vk.adamw(op.param + b, op.m + b, op.v + b, op.grad + b, e - b, row);
  });
}

void CpuBackend::sgd(const SgdOp& op) {
  const int64_t n = op.n;
  const bool first = op.step <= 1;
  float* buf = op.momentum != 0.f ? op.momentum_buf : nullptr;
  const float gs = op.grad_scale;
  pool_.parallel_for(chunks(n), [&](int64_t c, int) {
    const int64_t e = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < e; ++i)
      math::sgd_update(op.param[i], buf ? buf + i : nullptr, op.grad[i] * gs, op.lr, op.weight_decay, op.momentum,
                       op.dampening, first);
  });
}

void CpuBackend::grad_norm(const GradNormOp& op) {
  const int64_t n = op.n, nc = chunks(n);
  std::vector<double> part(static_cast<size_t>(nc));
  pool_.parallel_for(nc, [&](int64_t c, int) {
    const int64_t b = c * kChunk;
    part[static_cast<size_t>(c)] = sum_squares(op.grad + b, std::min(n, b + kChunk) - b);
  });
  double s = 0;
  for (double p : part) s += p;
  op.out[0] += s;
}

void CpuBackend::scale(const ScaleOp& op) {
  const float f = op.sumsq ? math::clip_coef(op.max_norm, static_cast<float>(std::sqrt(op.sumsq[0]))) : op.factor;
  if (f == 1.f) return;  // x * 1 == x
  const int64_t n = op.n;
  pool_.parallel_for(chunks(n), [&](int64_t c, int) {
    const int64_t e = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < e; ++i) op.x[i] *= f;
  });
}

}  // namespace rlhf::cpu
