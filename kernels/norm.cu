// RMSNorm and LayerNorm fused with the residual add, and their backward
// passes (twin of native/cpu/norm.cc). One block per row; the weight
// gradients are deterministic column sums (elementwise.cuh).
#include "elementwise.cuh"

namespace rlhf::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_kernel(RmsNormOp op) {
  __shared__ float sh[32];
  for (int64_t i = blockIdx.x; i < op.n; i += gridDim.x) {
    float* x = op.residual + i * op.dim;
    const float* d = op.delta ? op.delta + i * op.dim : nullptr;
    float ss = 0.f;
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) {
      float v = x[j];
      if (d) x[j] = v = v + d[j];
      ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float rstd = 1.f / sqrtf(ss / static_cast<float>(op.dim) + op.eps);
    if (op.rstd && threadIdx.x == 0) op.rstd[i] = rstd;
    float* out = op.out + i * op.dim;
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) out[j] = x[j] * rstd * (op.weight_offset + op.weight[j]);
  }
}

__global__ void layernorm_kernel(LayerNormOp op) {
  __shared__ float sh[32];
  for (int64_t i = blockIdx.x; i < op.n; i += gridDim.x) {
    float* x = op.residual + i * op.dim;
    const float* d = op.delta ? op.delta + i * op.dim : nullptr;
    float s = 0.f;
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) {
      float v = x[j];
      if (d) x[j] = v = v + d[j];
      s += v;
    }
    const float mean = block_sum(s, sh) / static_cast<float>(op.dim);
    float var = 0.f;  // two passes, as the CPU: centred variance
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) {
      const float c = x[j] - mean;
      var += c * c;
    }
    var = block_sum(var, sh);
    const float rstd = 1.f / sqrtf(var / static_cast<float>(op.dim) + op.eps);
    if (threadIdx.x == 0) {
      if (op.mean) op.mean[i] = mean;
      if (op.rstd) op.rstd[i] = rstd;
    }
    float* out = op.out + i * op.dim;
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) out[j] = (x[j] - mean) * rstd * op.weight[j] + op.bias[j];
  }
}

// dx += r (w dy) - x r^3 / dim * sum(w dy x)
__global__ void rmsnorm_backward_kernel(RmsNormBackwardOp op) {
  __shared__ double sh[32];
  for (int64_t i = blockIdx.x; i < op.n; i += gridDim.x) {
    const float* x = op.x + i * op.dim;
    const float* dy = op.dout + i * op.dim;
    float* dx = op.dx + i * op.dim;
    const float r = op.rstd[i];
    double dot = 0;
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) dot += static_cast<double>(op.weight_offset + op.weight[j]) * dy[j] * x[j];
    dot = block_sum(dot, sh);
    const float c = static_cast<float>(dot) * r * r * r / static_cast<float>(op.dim);
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) dx[j] += r * (op.weight_offset + op.weight[j]) * dy[j] - c * x[j];
  }
}

// dx += r (g - mean(g) - xhat mean(g xhat)), g = dy w
__global__ void layernorm_backward_kernel(LayerNormBackwardOp op) {
  __shared__ double sh[64];
  for (int64_t i = blockIdx.x; i < op.n; i += gridDim.x) {
    const float* x = op.x + i * op.dim;
    const float* dy = op.dout + i * op.dim;
    float* dx = op.dx + i * op.dim;
    const float mu = op.mean[i], r = op.rstd[i];
    double acc[2] = {0, 0};
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) {
      const double g = static_cast<double>(dy[j]) * op.weight[j];
      acc[0] += g;
      acc[1] += g * (x[j] - mu) * r;
    }
    block_sum_n<2>(acc, sh);
    const float mg = static_cast<float>(acc[0] / op.dim), mgx = static_cast<float>(acc[1] / op.dim);
    for (int64_t j = threadIdx.x; j < op.dim; j += blockDim.x) {
      const float xhat = (x[j] - mu) * r;
      dx[j] += r * (dy[j] * op.weight[j] - mg - xhat * mgx);
    }
  }
}

struct RmsDweight {
  const float *x, *dy, *rstd;
  int64_t dim;
  __device__ void operator()(int64_t i, int64_t j, float (&v)[1]) const { v[0] = dy[i * dim + j] * x[i * dim + j] * rstd[i]; }
};
struct LnDweightDbias {
  const float *x, *dy, *mean, *rstd;
  int64_t dim;
  __device__ void operator()(int64_t i, int64_t j, float (&v)[2]) const {
    const float g = dy[i * dim + j];
    v[0] = g * (x[i * dim + j] - mean[i]) * rstd[i];
    v[1] = g;
  }
};

unsigned row_blocks(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(n, 1), 1 << 20)); }

}  // namespace

void CudaBackend::rmsnorm(const RmsNormOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  rmsnorm_kernel<<<row_blocks(op.n), kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::layernorm(const LayerNormOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  layernorm_kernel<<<row_blocks(op.n), kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::rmsnorm_backward(const RmsNormBackwardOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  rmsnorm_backward_kernel<<<row_blocks(op.n), kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
  if (op.dweight) colsum<1>(*this, op.n, op.dim, RmsDweight{op.x, op.dout, op.rstd, op.dim}, op.dweight);
}
void CudaBackend::layernorm_backward(const LayerNormBackwardOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  layernorm_backward_kernel<<<row_blocks(op.n), kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
  if (op.dweight || op.dbias)
    colsum<2>(*this, op.n, op.dim, LnDweightDbias{op.x, op.dout, op.mean, op.rstd, op.dim}, op.dweight, op.dbias);
}

}  // namespace rlhf::cuda
