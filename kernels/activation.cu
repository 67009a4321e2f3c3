// Element-wise activations (twin of native/cpu/activation.cc): SwiGLU,
// GELU-tanh, residual add and their backward passes. The per-element math is
// ops/math.h's, shared with the CPU.
#include "elementwise.cuh"

namespace rlhf::cuda {

namespace {

__global__ void swiglu_kernel(SwigluOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) {
    const float g = op.gate[i * op.ld_in + j];
    op.out[i * op.ld_out + j] = (op.gelu ? math::gelu_tanh(g) : math::silu(g)) * op.up[i * op.ld_in + j];  // GeGLU or SwiGLU
  }
}

__global__ void gelu_kernel(GeluOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) op.out[i * op.ld_out + j] = math::gelu_tanh(op.x[i * op.ld_in + j]);
}

__global__ void add_kernel(AddOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) op.y[i * op.dim + j] += op.x[i * op.dim + j];
}

__global__ void swiglu_backward_kernel(SwigluBackwardOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) {
    const int64_t in = i * op.ld_in + j;
    if (!op.gelu) {
      math::swiglu_grad(op.gate[in], op.up[in], op.dout[i * op.ld_out + j], op.dgate[in], op.dup[in]);
    } else {  // GeGLU: y = gelu(g) u
      const float g = op.gate[in], dy = op.dout[i * op.ld_out + j];
      op.dup[in] = dy * math::gelu_tanh(g);
      op.dgate[in] = dy * op.up[in] * math::gelu_tanh_grad(g);
    }
  }
}

__global__ void gelu_backward_kernel(GeluBackwardOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) op.dx[i * op.ld_in + j] = op.dout[i * op.ld_out + j] * math::gelu_tanh_grad(op.x[i * op.ld_in + j]);
}

}  // namespace

void CudaBackend::swiglu(const SwigluOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  swiglu_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::gelu(const GeluOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  gelu_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::add(const AddOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  add_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::swiglu_backward(const SwigluBackwardOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  swiglu_backward_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::gelu_backward(const GeluBackwardOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  gelu_backward_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
