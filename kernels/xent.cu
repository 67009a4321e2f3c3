// Cross-entropy on materialised logits with its gradient, in place (twin of
// native/cpu/xent.cc): one block per row, three passes over the row (max;
// sum exp and sum exp * z; dz), fp32 with block reductions in a fixed order.
#include "common.cuh"

namespace rlhf::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) xent_kernel(LogitsXentOp op) {
  __shared__ float sh[32];
  const int64_t i = blockIdx.x;
  float* z = op.z + i * op.ld;
  const int32_t t = op.targets[i];
  if (t < 0) {
    for (int64_t j = threadIdx.x; j < op.vocab; j += blockDim.x) z[j] = 0.f;
    if (threadIdx.x == 0) {
      op.logp[i] = 0.f;
      if (op.entropy) op.entropy[i] = 0.f;
      if (op.lse) op.lse[i] = 0.f;
      if (op.mean_logp) op.mean_logp[i] = 0.f;
    }
    return;
  }
  const float it = op.inv_temperature;
  const bool smooth = op.dmean_logp || op.mean_logp;
  float m = -INFINITY, zs = 0.f;
  for (int64_t j = threadIdx.x; j < op.vocab; j += blockDim.x) {
    m = fmaxf(m, z[j] * it);
    if (smooth) zs += z[j] * it;
  }
  m = block_max(m, sh);
  if (smooth) zs = block_sum(zs, sh);
  float s = 0.f, sx = 0.f;
  for (int64_t j = threadIdx.x; j < op.vocab; j += blockDim.x) {
    const float zt = z[j] * it, e = expf(zt - m);
    s += e;
    sx += e * zt;
  }
  s = block_sum(s, sh);
  sx = block_sum(sx, sh);
  const float lse = m + logf(s);
  const float zt_target = z[t] * it;  // read before any thread overwrites the row
  __syncthreads();
  const float g = it * op.dlogp[i];
  const float gm = op.dmean_logp ? it * op.dmean_logp[i] : 0.f;
  const float inv_v = 1.f / static_cast<float>(op.vocab);
  for (int64_t j = threadIdx.x; j < op.vocab; j += blockDim.x) {
    const float p = expf(z[j] * it - lse);
    z[j] = (j == t ? g : 0.f) + math::lm_head_dz(p, 0.f, g, 0.f, 0.f, gm, inv_v);
  }
  if (threadIdx.x == 0) {
    op.logp[i] = zt_target - lse;
    if (op.entropy) op.entropy[i] = lse - sx / s;
    if (op.lse) op.lse[i] = lse;
    if (op.mean_logp) op.mean_logp[i] = math::mean_logp(zs, inv_v, lse);
  }
}

}  // namespace

void CudaBackend::logits_xent(const LogitsXentOp& op) {
  if (op.n <= 0) return;
  if (op.n > 2147483647LL) throw Error(code::kUnsupported, "logits_xent: too many rows for one launch");
  xent_kernel<<<static_cast<unsigned>(op.n), kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
