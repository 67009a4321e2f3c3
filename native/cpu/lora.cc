// LoRA-adapted linear (twin of kernels/lora.cu): PEFT's y = x W^T + b +
// s (x A^T) B^T as three products on the GEMM of gemm.cc, so W + s B A is
// never formed and the adapter's extra work is 2 n r (in + out) flops; its
// backward is four more products for dA, dB and the input gradient's LoRA
// share.
#include "cpu_backend.h"

namespace rlhf::cpu {

void CpuBackend::lora(const LoraOp& op) {
  if (op.n <= 0) return;
  GemmOp shrink;  // u = x_lora A^T, then scaled
  shrink.trans_b = true;
  shrink.m = op.n, shrink.n = op.r, shrink.k = op.in;
  shrink.a = op.x_lora ? op.x_lora : op.x, shrink.lda = op.ldx, shrink.b = op.a, shrink.ldb = op.in, shrink.c = op.u, shrink.ldc = op.r;
  gemm(shrink);
  ScaleOp sc;
  sc.n = op.n * op.r, sc.x = op.u, sc.factor = op.scale;
  scale(sc);
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

void CpuBackend::lora_backward(const LoraBackwardOp& op) {
  if (op.n <= 0) return;
  GemmOp gb;  // dB += dY^T u
  gb.trans_a = true;
  gb.m = op.out, gb.n = op.r, gb.k = op.n, gb.a = op.dy, gb.lda = op.lddy, gb.b = op.u, gb.ldb = op.r, gb.c = op.db, gb.ldc = op.r;
  gb.accumulate = true;
  gemm(gb);
  GemmOp gu;  // du = s dY B
  gu.m = op.n, gu.n = op.r, gu.k = op.out, gu.a = op.dy, gu.lda = op.lddy, gu.b = op.b, gu.ldb = op.r, gu.c = op.du, gu.ldc = op.r;
  gemm(gu);
  ScaleOp sc;
  sc.n = op.n * op.r, sc.x = op.du, sc.factor = op.scale;
  scale(sc);
  GemmOp ga;  // dA += du^T x_lora
  ga.trans_a = true;
  ga.m = op.r, ga.n = op.in, ga.k = op.n, ga.a = op.du, ga.lda = op.r, ga.b = op.x_lora, ga.ldb = op.ldx, ga.c = op.da, ga.ldc = op.in;
  ga.accumulate = true;
  gemm(ga);
  GemmOp gx;  // dx (+)= du A
  gx.m = op.n, gx.n = op.in, gx.k = op.r, gx.a = op.du, gx.lda = op.r, gx.b = op.a, gx.ldb = op.in, gx.c = op.dx, gx.ldc = op.lddx;
  gx.accumulate = op.accumulate_dx;
  gemm(gx);
}

}  // namespace rlhf::cpu
