// Embedding lookup (+ learned positions) and its scatter-add backward (twin
// of native/cpu/embedding.cc). The backward adds with atomics: rows repeated
// in ids are summed in an unspecified order (the CPU adds in index order), so
// it is not bitwise deterministic.
#include "elementwise.cuh"

namespace rlhf::cuda {

namespace {
template <typename T>
__global__ void embedding_kernel(EmbeddingOp op, const T* table) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) {
    float v = load_f(table + static_cast<int64_t>(op.ids[i]) * op.dim + j);
    if (op.pos_table) v += op.pos_table[static_cast<int64_t>(op.positions[i]) * op.dim + j];
    op.out[i * op.dim + j] = v;
  }
}

__global__ void embedding_backward_kernel(EmbeddingBackwardOp op) {
  RLHF_COL(j);
  if (j >= op.dim) return;
  RLHF_FOR_ROWS(i, op.n) {
    const float g = op.dout[i * op.dim + j];
    if (op.dtable) atomicAdd(op.dtable + static_cast<int64_t>(op.ids[i]) * op.dim + j, g);
    if (op.dpos_table) atomicAdd(op.dpos_table + static_cast<int64_t>(op.positions[i]) * op.dim + j, g);
  }
}
}  // namespace

void CudaBackend::embedding(const EmbeddingOp& op) {
  if (op.n <= 0 || op.dim <= 0) return;
  if (op.table_bf16)
    embedding_kernel<uint16_t><<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op, op.table_bf16);
  else
    embedding_kernel<float><<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op, op.table);
  RLHF_CUDA_LAUNCHED();
}

void CudaBackend::embedding_backward(const EmbeddingBackwardOp& op) {
  if (op.n <= 0 || op.dim <= 0 || (!op.dtable && !op.dpos_table)) return;
  embedding_backward_kernel<<<rows_grid(op.n, op.dim), 256, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
