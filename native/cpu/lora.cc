// LoRA-adapted linear (twin of kernels/lora.cu): PEFT's y = x W^T + b +
// s (x A^T) B^T as two products on the GEMM of gemm.cc, the shrink
// u = s x A^T and the base with u and B as r extra K terms, so W + s B A is
// never formed and the adapter's extra work is 2 n r (in + out) flops; its
// backward is four more products for dA, dB and the input gradient's LoRA
// share.
#include "../ops/lora_steps.h"
#include "cpu_backend.h"
#include "gemm.h"

namespace rlhf::cpu {

void CpuBackend::lora(const LoraOp& op) {
  if (op.n <= 0) return;
  lora_shrink(*this, op);
  // y (+)= x W^T + u B^T in one product: u and B extend K by r, so the expand
  // joins the base's last K slab and y is written once (a separate y += u B^T
  // would pass over all of y again for 2 r flops per element).
  GemmArgs g;
  g.trans_b = true;
  g.m = op.n, g.n = op.out, g.k = op.in;
  g.a = op.x, g.lda = op.ldx, g.b = op.w, g.b16 = op.w_bf16, g.ldb = op.ldw, g.c = op.y, g.ldc = op.ldy;
  g.accumulate = op.accumulate;
  g.a_ext = op.u, g.lda_ext = op.r, g.b_ext = op.b, g.ldb_ext = op.r, g.k_ext = op.r;
  gemm_f32(g, pool_);
  if (op.bias) add_bias_rows(op.bias, op.y, op.ldy, op.n, op.out, pool_);
}

void CpuBackend::lora_backward(const LoraBackwardOp& op) { lora_backward_steps(*this, op); }

}  // namespace rlhf::cpu
