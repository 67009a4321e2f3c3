#include "threadpool.h"

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RLHF_PAUSE() _mm_pause()
#else
#define RLHF_PAUSE() ((void)0)
#endif

namespace rlhf::cpu {

namespace {
constexpr int kSpinIterations = 4000;  // tens of microseconds before sleeping
// The caller's spin at the end of a job before it sleeps: a worker that lags
// by less costs no wake-up latency; one that lags by more has usually been
// preempted (for a time slice, milliseconds), and spinning longer only takes
// CPU from the other processes it shares the cores with (16000 measured
// 13% of a contended step in run()/worker_loop, against 7.5% at 4000).
constexpr int kCallerSpinIterations = 4000;
}

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = hardware_threads();
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain(int thread_index) {
  for (;;) {
    int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_) break;
    try {
      fn_(ctx_, i, thread_index);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
      next_.store(n_, std::memory_order_relaxed);  // the remaining tasks are skipped
      break;
    }
  }
}

void ThreadPool::run(int64_t n, TaskFn fn, void* ctx) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    n_ = n;
    fn_ = fn;
    ctx_ = ctx;
    next_.store(0, std::memory_order_relaxed);
    active_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  drain(0);
  // Wait for the workers to leave the job, so its context (on our stack)
  // stays valid. Spin briefly (they usually finish within microseconds),
  // then sleep until the last one leaves. Sleeping rather than yielding in a
  // loop matters on a shared machine: a worker preempted by another process
  // can only move to our core if that core goes idle, and a yielding thread
  // keeps it busy (the step then waits out the other process's time slice).
  for (int spin = 0; active_.load(std::memory_order_acquire) != 0; ++spin) {
    if (spin < kCallerSpinIterations) {
      RLHF_PAUSE();
      continue;
    }
    std::unique_lock<std::mutex> lock(done_mu_);
    done_.wait(lock, [&] { return active_.load(std::memory_order_acquire) == 0; });
    break;
  }
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(error_mu_);
    std::swap(e, error_);
  }
  if (e) std::rethrow_exception(e);
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      RLHF_PAUSE();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen || stop_; });
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with run(): n_/fn_/ctx_ are published
      if (stop_) return;
    }
    drain(index);
    if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // The last worker out wakes the caller if it went to sleep. Notifying
      // under the mutex: the caller checks active_ under it, so the wake-up
      // cannot fall between its check and its wait.
      std::lock_guard<std::mutex> lock(done_mu_);
      done_.notify_one();
    }
  }
}

}  // namespace rlhf::cpu
