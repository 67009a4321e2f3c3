// Embedding lookup (+ learned positions for GPT-2).
#include <cstring>

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

}  // namespace rlhf::cpu
