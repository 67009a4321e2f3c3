// Rotary position embedding, Hugging Face rotate_half layout, in place (twin
// of native/cpu/rope.cc). One thread per rotated pair; the rotation itself is
// math::rope_rotate, shared with the CPU.
#include "elementwise.cuh"

namespace rlhf::cuda {

namespace {
// x: columns are (head, j) pairs, j < half; y over rows.
__global__ void rope_kernel(RopeOp op, int64_t half, float sign) {
  RLHF_COL(c);
  if (c >= op.heads * half) return;
  const int64_t h = c / half, j = c % half;
  RLHF_FOR_ROWS(i, op.n) {
    const int64_t p = op.positions[i];
    float* x = op.x + i * op.ld + h * op.head_dim;
    float x0 = x[j], x1 = x[j + half];
    math::rope_rotate(x0, x1, op.cos[p * half + j], sign * op.sin[p * half + j]);
    x[j] = x0;
    x[j + half] = x1;
  }
}
}  // namespace

void CudaBackend::rope(const RopeOp& op) {
  const int64_t half = (op.rotary_dim > 0 ? op.rotary_dim : op.head_dim) / 2;
  if (op.n <= 0 || op.heads <= 0 || half <= 0) return;
  rope_kernel<<<rows_grid(op.n, op.heads * half, 128), 128, 0, stream_of(*this)>>>(op, half, op.inverse ? -1.f : 1.f);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
