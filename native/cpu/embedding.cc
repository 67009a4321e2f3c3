// Embedding lookup (+ learned positions for GPT-2).
#include <cstring>

#include <algorithm>

#include "cpu_backend.h"
#include "gemm_kernels.h"
#include "vec.h"

namespace rlhf::cpu {

void CpuBackend::embedding(const EmbeddingOp& op) {
  const VecKernels& v = vec();
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    float* out = op.out + i * op.dim;
    if (op.table_bf16) {
      const uint16_t* src = op.table_bf16 + static_cast<int64_t>(op.ids[i]) * op.dim;
      for (int64_t j = 0; j < op.dim; ++j) out[j] = bf16_to_f32(src[j]);
    } else {
      std::memcpy(out, op.table + static_cast<int64_t>(op.ids[i]) * op.dim, sizeof(float) * op.dim);
    }
    if (op.pos_table) v.add(op.pos_table + static_cast<int64_t>(op.positions[i]) * op.dim, out, op.dim);
  });
}

void CpuBackend::embedding_backward(const EmbeddingBackwardOp& op) {
  // Rows of dtable may repeat in ids: split by columns so no two tasks touch
  // the same element; rows are added in index order (deterministic).
  column_reduce(pool_, op.dim, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < op.n; ++i) {
      const float* g = op.dout + i * op.dim;
      if (op.dtable) {
        float* d = op.dtable + static_cast<int64_t>(op.ids[i]) * op.dim;
        for (int64_t j = c0; j < c1; ++j) d[j] += g[j];
      }
      if (op.dpos_table) {
        float* d = op.dpos_table + static_cast<int64_t>(op.positions[i]) * op.dim;
        for (int64_t j = c0; j < c1; ++j) d[j] += g[j];
      }
    }
  });
}

}  // namespace rlhf::cpu
