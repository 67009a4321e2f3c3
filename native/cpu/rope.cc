// Rotary position embedding, Hugging Face rotate_half layout, in place.
#include "../ops/math.h"
#include "cpu_backend.h"

namespace rlhf::cpu {

void CpuBackend::rope(const RopeOp& op) {
  const int64_t half = (op.rotary_dim > 0 ? op.rotary_dim : op.head_dim) / 2;
  const float sign = op.inverse ? -1.f : 1.f;
  pool_.parallel_for(op.n, [&](int64_t i, int) {
    const float* cs = op.cos + static_cast<int64_t>(op.positions[i]) * half;
    const float* sn = op.sin + static_cast<int64_t>(op.positions[i]) * half;
    float* row = op.x + i * op.ld;
    for (int64_t h = 0; h < op.heads; ++h) {
      float* x = row + h * op.head_dim;
      for (int64_t j = 0; j < half; ++j) math::rope_rotate(x[j], x[j + half], cs[j], sign * sn[j]);
    }
  });
}

}  // namespace rlhf::cpu
