// Device discovery for the CUDA backend. Any failure of the runtime (no driver,
// no device, driver too old) is reported as data, never thrown: the engine then
// runs on the CPU and `rlhf-native info` says why.
#include <cuda_runtime.h>

#include <string>

#include "../native/device.h"

#ifndef RLHF_CUDA_ARCHS
#define RLHF_CUDA_ARCHS ""
#endif

namespace rlhf {

namespace {
std::string describe(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + " (" + std::to_string(static_cast<int>(e)) + "): " + cudaGetErrorString(e);
}

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ';' || c == ',' || c == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}
}  // namespace

CudaStatus cuda_query() {
  CudaStatus st;
  st.compiled = true;
  st.archs = split_archs(RLHF_CUDA_ARCHS);
  cudaRuntimeGetVersion(&st.runtime_version);
  if (cudaDriverGetVersion(&st.driver_version) != cudaSuccess) st.driver_version = 0;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    st.error_code = static_cast<int>(e);
    st.error = describe(e);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return st;
  }
  if (count == 0) {
    st.error = "the CUDA runtime found no device";
    return st;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    CudaDeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    d.total_mem = p.totalGlobalMem;
    d.sm_count = p.multiProcessorCount;
    st.devices.push_back(d);
  }
  return st;
}

}  // namespace rlhf
