// Element-wise activations: SwiGLU (Llama MLP), GELU-tanh (GPT-2), residual add.
#include <cmath>

#include "../ops/math.h"
#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

void CpuBackend::swiglu(const SwigluOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* g = op.gate + i * op.ld_in;
    const float* u = op.up + i * op.ld_in;
    float* y = op.out + i * op.ld_out;
    if (!op.gelu) return v.silu_mul(g, u, y, op.dim);
    for (int64_t j = 0; j < op.dim; ++j) y[j] = math::gelu_tanh(g[j]) * u[j];  // GeGLU
  });
}

void CpuBackend::gelu(const GeluOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) { v.gelu(op.x + i * op.ld_in, op.out + i * op.ld_out, op.dim); });
}

void CpuBackend::add(const AddOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) { v.add(op.x + i * op.dim, op.y + i * op.dim, op.dim); });
}

void CpuBackend::swiglu_backward(const SwigluBackwardOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* g = op.gate + i * op.ld_in;
    const float* u = op.up + i * op.ld_in;
    const float* dy = op.dout + i * op.ld_out;
    float* dg = op.dgate + i * op.ld_in;
    float* du = op.dup + i * op.ld_in;
    if (!op.gelu) return v.swiglu_grad(g, u, dy, dg, du, op.dim);
    for (int64_t j = 0; j < op.dim; ++j) {  // GeGLU: y = gelu(g) u
      const float gj = g[j], dyj = dy[j];
      du[j] = dyj * math::gelu_tanh(gj);
      dg[j] = dyj * u[j] * math::gelu_tanh_grad(gj);
    }
  });
}
void CpuBackend::gelu_backward(const GeluBackwardOp& op) {
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* x = op.x + i * op.ld_in;
    const float* dy = op.dout + i * op.ld_out;
    float* dx = op.dx + i * op.ld_in;
    for (int64_t j = 0; j < op.dim; ++j) dx[j] = dy[j] * math::gelu_tanh_grad(x[j]);
  });
}

}  // namespace rlhf::cpu
