// LoRA-adapted linear (twin of native/cpu/lora.cc), W + s B A never formed.
// Forward: u = s x_lora A^T on the GEMM (n x r, small), then ONE kernel for
// y = x W^T + u B^T (+ bias) (+ y): each block runs the tensor-core tile
// over K = in with (x, W), then over K = r with (u, B) into the same
// accumulators, so the adapter's product is added in registers instead of in
// a second pass over y. The shrink and the backward (four small products and
// a scale) are the ops composed in native/ops/lora_steps.h, shared with the
// CPU twin.
#include "../native/ops/lora_steps.h"
#include "elementwise.cuh"
#include "gemm_tile.cuh"

namespace rlhf::cuda {

namespace {

struct LoraStore {
  float* y;
  int64_t ldy, m, n;
  const float* bias;
  bool accumulate;
};

template <typename TW>
__global__ void __launch_bounds__(tile::kThreads) lora_kernel(tile::Operand<float> X, tile::Operand<TW> W, int64_t in,
                                                              tile::Operand<float> U, tile::Operand<float> B, int64_t r, LoraStore out) {
  __shared__ __align__(16) tile::Smem sm;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * tile::BM, n0 = static_cast<int64_t>(blockIdx.x) * tile::BN;
  float acc[tile::MI][tile::NI][4];
  tile::block_product(X, W, in, m0, n0, sm, acc);          // x W^T
  tile::block_product(U, B, r, m0, n0, sm, acc, false);    // + u B^T, same tile
  tile::store_tile(acc, m0, n0, out.y, out.ldy, out.m, out.n, out.bias, out.accumulate);
}

template <typename TW>
void launch_lora(CudaBackend& be, const LoraOp& op, const TW* w) {
  const int64_t gm = (op.n + tile::BM - 1) / tile::BM, gn = (op.out + tile::BN - 1) / tile::BN;
  if (gm > 65535) throw Error(code::kUnsupported, "lora: n = " + std::to_string(op.n) + " is larger than the grid allows");
  const auto X = tile::operand_a(op.x, op.ldx, false, op.n);
  const auto Wop = tile::operand_b(w, op.ldw, true, op.out);
  const auto U = tile::operand_a(static_cast<const float*>(op.u), op.r, false, op.n);
  const auto Bop = tile::operand_b(op.b, op.r, true, op.out);
  lora_kernel<TW><<<dim3(static_cast<unsigned>(gn), static_cast<unsigned>(gm)), tile::kThreads, 0, stream_of(be)>>>(
      X, Wop, op.in, U, Bop, op.r, LoraStore{op.y, op.ldy, op.n, op.out, op.bias, op.accumulate});
  RLHF_CUDA_LAUNCHED();
}

}  // namespace

void CudaBackend::lora(const LoraOp& op) {
  if (op.n <= 0 || op.out <= 0) return;
  lora_shrink(*this, op);  // u = s x_lora A^T (gemm + scale ops)
  if (op.w_bf16) launch_lora(*this, op, op.w_bf16);
  else launch_lora(*this, op, op.w);
}

void CudaBackend::lora_backward(const LoraBackwardOp& op) { lora_backward_steps(*this, op); }

}  // namespace rlhf::cuda
