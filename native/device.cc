#include "device.h"

#include <mutex>

namespace rlhf {

#ifdef RLHF_WITH_CUDA
CudaStatus cuda_query();  // kernels/cuda_runtime.cu
#endif

CudaStatus cuda_status() {
  static std::once_flag once;
  static CudaStatus status;
  std::call_once(once, [] {
#ifdef RLHF_WITH_CUDA
    status = cuda_query();
#else
    status.compiled = false;
    status.error = "this build of the addon has no CUDA backend (nvcc was not found when it was built)";
#endif
  });
  return status;
}

}  // namespace rlhf
