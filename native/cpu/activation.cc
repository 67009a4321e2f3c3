// Element-wise activations: SwiGLU (Llama MLP), GELU-tanh (GPT-2), residual add.
#include <cmath>

#include "cpu_backend.h"
#include "vec.h"

namespace rlhf::cpu {

void CpuBackend::swiglu(const SwigluOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    v.silu_mul(op.gate + i * op.ld_in, op.up + i * op.ld_in, op.out + i * op.ld_out, op.dim);
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
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* g = op.gate + i * op.ld_in;
    const float* u = op.up + i * op.ld_in;
    const float* dy = op.dout + i * op.ld_out;
    float* dg = op.dgate + i * op.ld_in;
    float* du = op.dup + i * op.ld_in;
    for (int64_t j = 0; j < op.dim; ++j) {
      const float s = 1.f / (1.f + std::exp(-g[j]));
      du[j] = dy[j] * g[j] * s;
      dg[j] = dy[j] * u[j] * s * (1.f + g[j] * (1.f - s));
    }
  });
}
void CpuBackend::gelu_backward(const GeluBackwardOp& op) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* x = op.x + i * op.ld_in;
    const float* dy = op.dout + i * op.ld_out;
    float* dx = op.dx + i * op.ld_in;
    for (int64_t j = 0; j < op.dim; ++j) {
      const float xv = x[j], u = k * (xv + c * xv * xv * xv), th = std::tanh(u);
      const float du = k * (1.f + 3.f * c * xv * xv);
      dx[j] = dy[j] * (0.5f * (1.f + th) + 0.5f * xv * (1.f - th * th) * du);
    }
  });
}

}  // namespace rlhf::cpu
