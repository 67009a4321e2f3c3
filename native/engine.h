// The compute engine a model runs on: a thread pool and the backends over it.
// One default engine per process serves every model; compute calls take its
// lock, so concurrent Promises from several models run one after another
// instead of fighting over the same cores.
#pragma once
#include <memory>
#include <mutex>
#include <string>

#include "cpu/cpu_backend.h"
#include "cpu/threadpool.h"

namespace rlhf {

struct Engine {
  explicit Engine(int threads) : pool(threads), cpu(pool) {}
  cpu::ThreadPool pool;
  cpu::CpuBackend cpu;
  std::mutex compute;  // held for the duration of one forward/generate call
};

Engine& default_engine();  // created on first use, sized from RLHF_NUM_THREADS or the usable cores

// The backend a model runs on, by its device name: "cpu"; "cuda" (E_UNSUPPORTED
// in a build without the CUDA backend, E_CUDA with the runtime's reason when
// no GPU is usable); "auto" (cuda when a GPU is usable, else cpu);
// "cpu-guarded" (the CPU ops on guarded memory, see cpu/guarded_backend.h).
Backend& backend_for(const std::string& device);

}  // namespace rlhf
