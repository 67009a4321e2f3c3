// LoRA-adapted linear (twin of native/cpu/lora.cc), W + s B A never formed.
// Forward: u = s x_lora A^T on the GEMM (n x r, small), then ONE kernel for
// y = x W^T + u B^T (+ bias) (+ y): each block runs the tensor-core tile
// over K = in with (x, W), then over K = r with (u, B) into the same
// accumulators, so the adapter's product is added in registers instead of in
// a second pass over y. Backward: the four small products of LoraBackwardOp
// on the GEMM, and the scale kernel for s.
#include "elementwise.cuh"
#include "gemm_tile.cuh"

namespace rlhf::cuda {

void gemm_f32_bf16w(CudaBackend& be, const GemmOp& op);  // gemm.cu

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
  GemmOp shrink;  // u = x_lora A^T
  shrink.trans_b = true;
  shrink.m = op.n, shrink.n = op.r, shrink.k = op.in;
  shrink.a = op.x_lora ? op.x_lora : op.x, shrink.lda = op.ldx, shrink.b = op.a, shrink.ldb = op.in, shrink.c = op.u, shrink.ldc = op.r;
  gemm_f32_bf16w(*this, shrink);
  ScaleOp sc;
  sc.n = op.n * op.r, sc.x = op.u, sc.factor = op.scale;
  scale(sc);
  if (op.w_bf16) launch_lora(*this, op, op.w_bf16);
  else launch_lora(*this, op, op.w);
}

void CudaBackend::lora_backward(const LoraBackwardOp& op) {
  if (op.n <= 0) return;
  GemmOp gb;  // dB += dY^T u
  gb.trans_a = true;
  gb.m = op.out, gb.n = op.r, gb.k = op.n, gb.a = op.dy, gb.lda = op.lddy, gb.b = op.u, gb.ldb = op.r, gb.c = op.db, gb.ldc = op.r;
  gb.accumulate = true;
  gemm_f32_bf16w(*this, gb);
  GemmOp gu;  // du = s dY B
  gu.m = op.n, gu.n = op.r, gu.k = op.out, gu.a = op.dy, gu.lda = op.lddy, gu.b = op.b, gu.ldb = op.r, gu.c = op.du, gu.ldc = op.r;
  gemm_f32_bf16w(*this, gu);
  ScaleOp sc;
  sc.n = op.n * op.r, sc.x = op.du, sc.factor = op.scale;
  scale(sc);
  GemmOp ga;  // dA += du^T x_lora
  ga.trans_a = true;
  ga.m = op.r, ga.n = op.in, ga.k = op.n, ga.a = op.du, ga.lda = op.r, ga.b = op.x_lora, ga.ldb = op.ldx, ga.c = op.da, ga.ldc = op.in;
  ga.accumulate = true;
  gemm_f32_bf16w(*this, ga);
  GemmOp gx;  // dx (+)= du A
  gx.m = op.n, gx.n = op.in, gx.k = op.r, gx.a = op.du, gx.lda = op.r, gx.b = op.a, gx.ldb = op.in, gx.c = op.dx, gx.ldc = op.lddx;
  gx.accumulate = op.accumulate_dx;
  gemm_f32_bf16w(*this, gx);
}

}  // namespace rlhf::cuda
