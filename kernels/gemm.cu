// GEMM (twin of native/cpu/gemm.cc): C = op(A) op(B) (+ bias) (+ C) on bf16
// tensor cores with fp32 accumulation (gemm_tile.cuh), fp32 or bf16 operands
// in any transpose, and the bias gradient as a deterministic column sum.
#include "elementwise.cuh"
#include "gemm_tile.cuh"

namespace rlhf::cuda {

namespace {

struct StoreArgs {
  float* c;
  int64_t ldc, m, n;
  const float* bias;
  bool accumulate;
};

template <typename TA, typename TB>
__global__ void __launch_bounds__(tile::kThreads) gemm_kernel(tile::Operand<TA> A, tile::Operand<TB> B, int64_t K, StoreArgs out) {
  __shared__ __align__(16) tile::Smem sm;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * tile::BM, n0 = static_cast<int64_t>(blockIdx.x) * tile::BN;
  float acc[tile::MI][tile::NI][4];
  tile::block_product(A, B, K, m0, n0, sm, acc);
  tile::store_tile(acc, m0, n0, out.c, out.ldc, out.m, out.n, out.bias, out.accumulate);
}

template <typename TA, typename TB>
void launch_gemm(CudaBackend& be, const tile::Operand<TA>& A, const tile::Operand<TB>& B, int64_t m, int64_t n, int64_t k,
                 const StoreArgs& out) {
  const int64_t gm = (m + tile::BM - 1) / tile::BM, gn = (n + tile::BN - 1) / tile::BN;
  if (gm > 65535) throw Error(code::kUnsupported, "gemm: m = " + std::to_string(m) + " is larger than the grid allows");
  gemm_kernel<TA, TB><<<dim3(static_cast<unsigned>(gn), static_cast<unsigned>(gm)), tile::kThreads, 0, stream_of(be)>>>(A, B, k, out);
  RLHF_CUDA_LAUNCHED();
}

struct BiasCols {
  const float* dy;
  int64_t ld;
  __device__ void operator()(int64_t i, int64_t j, float (&v)[1]) const { v[0] = dy[i * ld + j]; }
};

}  // namespace

// Used by lm_head.cu as well: the same product with fp32 A and fp32/bf16 B.
void gemm_f32_bf16w(CudaBackend& be, const GemmOp& op) {
  if (op.m <= 0 || op.n <= 0) return;
  const StoreArgs out{op.c, op.ldc, op.m, op.n, op.bias, op.accumulate};
  const auto A = tile::operand_a(op.a, op.lda, op.trans_a, op.m);
  if (op.b_bf16)
    launch_gemm(be, A, tile::operand_b(op.b_bf16, op.ldb, op.trans_b, op.n), op.m, op.n, op.k, out);
  else
    launch_gemm(be, A, tile::operand_b(op.b, op.ldb, op.trans_b, op.n), op.m, op.n, op.k, out);
}

void CudaBackend::gemm(const GemmOp& op) { gemm_f32_bf16w(*this, op); }

void CudaBackend::bias_grad(const BiasGradOp& op) {
  colsum<1>(*this, op.n, op.dim, BiasCols{op.dy, op.ld}, op.db);
}

void CudaBackend::gemm_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, const uint16_t* b, float* c) {
  if (m <= 0 || n <= 0) return;
  launch_gemm(*this, tile::operand_a(a, k, false, m), tile::operand_b(b, k, true, n), m, n, k, StoreArgs{c, n, m, n, nullptr, false});
}

}  // namespace rlhf::cuda
