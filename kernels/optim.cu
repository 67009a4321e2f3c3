// Optimizer ops (twin of native/cpu/optim.cc): AdamW and SGD steps in place,
// the fp64 sum of squares for gradient clipping (fixed partition, combined in
// order: deterministic) and the scale op, whose clip factor is computed on the
// device from grad_norm's output. Per-element math from ops/math.h.
#include "elementwise.cuh"

namespace rlhf::cuda {

namespace {

#define RLHF_FOR_ELEMS(i, n) for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void adamw_kernel(AdamWOp op, math::AdamWConsts k) {
  RLHF_FOR_ELEMS(i, op.n) {
    float p = op.param[i], m = op.m[i], v = op.v[i];
    math::adamw_update(p, m, v, op.grad[i] * op.grad_scale, k.decay, op.beta1, op.beta2, k.step_size, k.bc2_sqrt, op.eps);
    op.param[i] = p, op.m[i] = m, op.v[i] = v;
  }
}

__global__ void sgd_kernel(SgdOp op, float* buf, bool first) {
  RLHF_FOR_ELEMS(i, op.n) {
    float p = op.param[i];
    math::sgd_update(p, buf ? buf + i : nullptr, op.grad[i] * op.grad_scale, op.lr, op.weight_decay, op.momentum, op.dampening, first);
    op.param[i] = p;
  }
}

constexpr int kNormThreads = 256;
constexpr int kNormBlocksMax = 1024;

__global__ void sumsq_partial_kernel(const float* x, int64_t n, double* part) {
  __shared__ double sh[32];
  double a = 0;
  RLHF_FOR_ELEMS(i, n) {
    const double v = x[i];
    a += v * v;
  }
  a = block_sum(a, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = a;
}

__global__ void sumsq_finish_kernel(const double* part, int parts, double* out) {
  __shared__ double sh[32];
  double a = 0;
  for (int p = threadIdx.x; p < parts; p += blockDim.x) a += part[p];
  a = block_sum(a, sh);
  if (threadIdx.x == 0) out[0] += a;
}

__global__ void scale_kernel(float* x, int64_t n, float factor, const double* sumsq, float max_norm) {
  const float f = sumsq ? math::clip_coef(max_norm, static_cast<float>(sqrt(sumsq[0]))) : factor;
  if (f == 1.f) return;  // x * 1 == x
  RLHF_FOR_ELEMS(i, n) x[i] *= f;
}

}  // namespace

void CudaBackend::adamw(const AdamWOp& op) {
  if (op.n <= 0) return;
  const math::AdamWConsts k = math::adamw_consts(op.lr, op.beta1, op.beta2, op.weight_decay, op.step);
  adamw_kernel<<<blocks_for(op.n, 256, 8 * sm_count_), 256, 0, stream_of(*this)>>>(op, k);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::sgd(const SgdOp& op) {
  if (op.n <= 0) return;
  float* buf = op.momentum != 0.f ? op.momentum_buf : nullptr;
  sgd_kernel<<<blocks_for(op.n, 256, 8 * sm_count_), 256, 0, stream_of(*this)>>>(op, buf, op.step <= 1);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::grad_norm(const GradNormOp& op) {
  if (op.n <= 0) return;
  // The number of blocks depends on n only, so the sum is reproducible.
  const int parts = static_cast<int>(blocks_for(op.n, kNormThreads * 8, kNormBlocksMax));
  double* part = static_cast<double*>(workspace(sizeof(double) * parts));
  sumsq_partial_kernel<<<parts, kNormThreads, 0, stream_of(*this)>>>(op.grad, op.n, part);
  RLHF_CUDA_LAUNCHED();
  sumsq_finish_kernel<<<1, kNormThreads, 0, stream_of(*this)>>>(part, parts, op.out);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::scale(const ScaleOp& op) {
  if (op.n <= 0) return;
  if (!op.sumsq && op.factor == 1.f) return;
  scale_kernel<<<blocks_for(op.n, 256, 8 * sm_count_), 256, 0, stream_of(*this)>>>(op.x, op.n, op.factor, op.sumsq, op.max_norm);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
