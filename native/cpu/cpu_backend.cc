#include "cpu_backend.h"

namespace rlhf::cpu {

// fp32 everywhere on the CPU; bf16 weights are converted at load time.
bool CpuBackend::supports(Op op, DType dtype) const {
  (void)op;
  return dtype == DType::F32;
}

}  // namespace rlhf::cpu
