// What compute backends this build carries and which devices are usable now.
// The CUDA half lives in kernels/cuda_runtime.cu and is compiled only when the
// build found nvcc (RLHF_WITH_CUDA); a CUDA build on a machine with no GPU or
// no driver reports "no device" with the runtime's reason instead of failing.
#pragma once
#include <string>
#include <vector>

namespace rlhf {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  unsigned long long total_mem = 0;
  int sm_count = 0;
};

struct CudaStatus {
  bool compiled = false;           // this binary carries the CUDA backend
  int runtime_version = 0;         // cudart version linked in (e.g. 13000)
  int driver_version = 0;          // 0 when no driver
  std::vector<CudaDeviceInfo> devices;
  int error_code = 0;              // cudaError_t of the failed query, 0 if none
  std::string error;               // why no device, e.g. "cudaErrorInsufficientDriver (35): ..."
  std::vector<std::string> archs;  // SASS/PTX targets compiled in, e.g. "sm_80"
};

CudaStatus cuda_status();  // queried once, cached

}  // namespace rlhf
