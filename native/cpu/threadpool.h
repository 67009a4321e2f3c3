// A persistent pool of worker threads shared by every CPU op. Work is handed
// out as `parallel_for(n, fn)`: task indices 0..n-1 are claimed from an atomic
// counter by the workers and by the calling thread, so uneven tasks balance
// themselves. Workers spin briefly before sleeping, because ops arrive back to
// back (dozens per layer) and a futex wake costs more than a small op. The
// caller, waiting for the workers at the end of a job, also spins briefly
// and then sleeps (see run()).
//
// One pool per engine (native/engine.h); calls into one pool must not overlap.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace rlhf::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // total threads including the caller; <= 0 means all cores
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(task, thread_index) for task in [0, n). Blocks until all are done.
  // thread_index is in [0, size()) and identifies per-thread scratch space.
  // If a task throws (e.g. std::bad_alloc), the tasks not yet started are
  // skipped and the first exception is rethrown here, on the calling thread,
  // once every worker has left the job: an exception never escapes a worker
  // thread (which would terminate the process).
  template <typename F>
  void parallel_for(int64_t n, F&& fn) {
    if (n <= 0) return;
    if (n == 1 || workers_.empty()) {
      for (int64_t i = 0; i < n; ++i) fn(i, 0);
      return;
    }
    run(n, [](void* ctx, int64_t i, int t) { (*static_cast<F*>(ctx))(i, t); }, &fn);
  }

 private:
  using TaskFn = void (*)(void*, int64_t, int);
  void run(int64_t n, TaskFn fn, void* ctx);
  void worker_loop(int index);
  void drain(int thread_index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> active_{0};  // workers still inside the current job
  std::mutex done_mu_;            // the caller sleeps on done_ once it has spun long enough
  std::condition_variable done_;
  int64_t n_ = 0;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  bool stop_ = false;
  std::mutex error_mu_;
  std::exception_ptr error_;  // the first exception a task threw in the current job
};

}  // namespace rlhf::cpu
