#include "engine.h"

#include <cstdlib>

#include "cpu/cpu_features.h"
#include "cpu/guarded_backend.h"
#include "device.h"
#include "error.h"
#ifdef RLHF_WITH_CUDA
#include "../kernels/cuda_backend.h"
#endif

namespace rlhf {

Engine& default_engine() {
  // Never destroyed: worker threads must not be joined during static
  // destruction at process exit, when Node may already be tearing down.
  static Engine* engine = [] {
    const char* env = std::getenv("RLHF_NUM_THREADS");
    const int n = env ? std::atoi(env) : 0;
    return new Engine(n > 0 ? n : cpu::hardware_threads());
  }();
  return *engine;
}

Backend& backend_for(const std::string& device) {
  if (device == "cpu") return default_engine().cpu;
  if (device == "cpu-guarded") return cpu::guarded_backend();
  const bool gpu = !cuda_status().devices.empty();
  if (device == "auto" && !gpu) return default_engine().cpu;
  if (device != "cuda" && device != "auto") throw Error(code::kArgument, "unknown device '" + device + "' (cpu, cuda, auto)");
#ifdef RLHF_WITH_CUDA
  return cuda::backend();  // throws E_CUDA with the runtime's reason when there is no usable device
#else
  throw Error(code::kUnsupported, "device 'cuda': this build of the addon has no CUDA backend (it was built without nvcc)");
#endif
}

}  // namespace rlhf
