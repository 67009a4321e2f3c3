#include "engine.h"

#include <cstdlib>

#include "cpu/cpu_features.h"

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

}  // namespace rlhf
