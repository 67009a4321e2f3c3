// LoRA-adapted linear (twin of kernels/lora.cu): PEFT's y = x W^T + b +
// s (x A^T) B^T as three products on the GEMM of gemm.cc, so W + s B A is
// never formed and the adapter's extra work is 2 n r (in + out) flops; its
// backward is four more products for dA, dB and the input gradient's LoRA
// share.
#include "../ops/lora_steps.h"
#include "cpu_backend.h"

namespace rlhf::cpu {

void CpuBackend::lora(const LoraOp& op) {
  if (op.n <= 0) return;
  lora_shrink(*this, op);
  GemmOp base;  // y (+)= x W^T + bias
  base.trans_b = true;
  base.m = op.n, base.n = op.out, base.k = op.in;
  base.a = op.x, base.lda = op.ldx, base.b = op.w, base.b_bf16 = op.w_bf16, base.ldb = op.ldw, base.c = op.y, base.ldc = op.ldy;
  base.bias = op.bias, base.accumulate = op.accumulate;
  gemm(base);
  GemmOp expand;  // y += u B^T
  expand.trans_b = true;
  expand.m = op.n, expand.n = op.out, expand.k = op.r;
  expand.a = op.u, expand.lda = op.r, expand.b = op.b, expand.ldb = op.r, expand.c = op.y, expand.ldc = op.ldy, expand.accumulate = true;
  gemm(expand);
}

void CpuBackend::lora_backward(const LoraBackwardOp& op) { lora_backward_steps(*this, op); }

}  // namespace rlhf::cpu
