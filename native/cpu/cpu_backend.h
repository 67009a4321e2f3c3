// The CPU backend: every op of the op table, fp32, SIMD chosen at run time,
// parallel over a persistent thread pool. Each op family lives in its own
// file (gemm.cc, embedding.cc, norm.cc, rope.cc, attention.cc,
// activation.cc, lm_head.cc, sample.cc), mirrored by kernels/<family>.cu.
#pragma once
#include <memory>

#include "../ops/backend.h"
#include "threadpool.h"

namespace rlhf::cpu {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(ThreadPool& pool) : pool_(pool) {}
  const char* name() const override { return "cpu"; }
  bool supports(Op op, DType dtype) const override;
  int threads() const override { return pool_.size(); }
  ThreadPool& pool() { return pool_; }

  // Memory is host memory (memory.cc): backend pointers are host pointers.
  bool host_memory() const override { return true; }
  void* alloc(size_t bytes) override;
  void release(void* p) noexcept override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) override;
  void fill_zero(void* dst, size_t bytes) override;
  void synchronize() override {}

#define RLHF_OP_OVERRIDE(name, Args, family) void name(const Args& args) override;
  RLHF_OPS(RLHF_OP_OVERRIDE)
#undef RLHF_OP_OVERRIDE

 private:
  ThreadPool& pool_;
};

// Splits [0, n) into about `parts` contiguous ranges for parallel_for.
inline int64_t chunk_size(int64_t n, int64_t parts, int64_t min_chunk = 1) {
  int64_t c = (n + parts - 1) / (parts > 0 ? parts : 1);
  return c < min_chunk ? min_chunk : c;
}

// Runs add_cols(c0, c1) over column ranges of a [dim] accumulator in
// parallel: each task owns its columns and walks all rows in order, so the
// sum is deterministic and race-free (weight/bias gradients, scatter-adds).
template <typename F>
void column_reduce(ThreadPool& pool, int64_t dim, F&& add_cols) {
  const int64_t parts = static_cast<int64_t>(pool.size()) * 4;
  int64_t cols = (dim + parts - 1) / parts;
  if (cols < 64) cols = 64;
  pool.parallel_for((dim + cols - 1) / cols, [&](int64_t t, int) {
    const int64_t c0 = t * cols, c1 = c0 + cols < dim ? c0 + cols : dim;
    add_cols(c0, c1);
  });
}

}  // namespace rlhf::cpu
