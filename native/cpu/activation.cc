// Element-wise activations: SwiGLU (Llama MLP), GELU-tanh (GPT-2), residual add.
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

}  // namespace rlhf::cpu
