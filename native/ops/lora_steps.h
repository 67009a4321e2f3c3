// The LoRA op family's steps that are plain products, written once over the
// Backend interface and shared by both twins (native/cpu/lora.cc,
// kernels/lora.cu): the shrink u = s x_lora A^T, and the whole backward
//   dB += dY^T u;  du = s dY B;  dA += du^T x_lora;  dx (+)= du A.
// Only the forward's base + expand product differs (the CUDA kernel fuses
// it into one tile loop).
#pragma once
#include "backend.h"

namespace rlhf {

inline void lora_shrink(Backend& be, const LoraOp& op) {
  GemmOp shrink;  // u = x_lora A^T, then scaled
  shrink.trans_b = true;
  shrink.m = op.n, shrink.n = op.r, shrink.k = op.in;
  shrink.a = op.x_lora ? op.x_lora : op.x, shrink.lda = op.ldx, shrink.b = op.a, shrink.ldb = op.in, shrink.c = op.u, shrink.ldc = op.r;
  be.gemm(shrink);
  ScaleOp sc;
  sc.n = op.n * op.r, sc.x = op.u, sc.factor = op.scale;
  be.scale(sc);
}

inline void lora_backward_steps(Backend& be, const LoraBackwardOp& op) {
  if (op.n <= 0) return;
  GemmOp gb;  // dB += dY^T u
  gb.trans_a = true;
  gb.m = op.out, gb.n = op.r, gb.k = op.n, gb.a = op.dy, gb.lda = op.lddy, gb.b = op.u, gb.ldb = op.r, gb.c = op.db, gb.ldc = op.r;
  gb.accumulate = true;
  be.gemm(gb);
  GemmOp gu;  // du = s dY B
  gu.m = op.n, gu.n = op.r, gu.k = op.out, gu.a = op.dy, gu.lda = op.lddy, gu.b = op.b, gu.ldb = op.r, gu.c = op.du, gu.ldc = op.r;
  be.gemm(gu);
  ScaleOp sc;
  sc.n = op.n * op.r, sc.x = op.du, sc.factor = op.scale;
  be.scale(sc);
  GemmOp ga;  // dA += du^T x_lora
  ga.trans_a = true;
  ga.m = op.r, ga.n = op.in, ga.k = op.n, ga.a = op.du, ga.lda = op.r, ga.b = op.x_lora, ga.ldb = op.ldx, ga.c = op.da, ga.ldc = op.in;
  ga.accumulate = true;
  be.gemm(ga);
  GemmOp gx;  // dx (+)= du A
  gx.m = op.n, gx.n = op.in, gx.k = op.r, gx.a = op.du, gx.lda = op.r, gx.b = op.a, gx.ldb = op.in, gx.c = op.dx, gx.ldc = op.lddx;
  gx.accumulate = op.accumulate_dx;
  be.gemm(gx);
}

}  // namespace rlhf
