// The compute engine a model runs on: a thread pool and the backends over it.
// One default engine per process serves every model; compute calls take its
// lock, so concurrent Promises from several models run one after another
// instead of fighting over the same cores.
#pragma once
#include <memory>
#include <mutex>

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

}  // namespace rlhf
