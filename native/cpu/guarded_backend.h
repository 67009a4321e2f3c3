// "cpu-guarded": the CPU ops on memory the host cannot touch between ops.
// Every allocation comes from one reserved arena that is kept PROT_NONE
// except while an op or a copy runs, so model code that reads or writes
// backend memory anywhere but through an op or upload()/download() faults at
// the first such access: the mistake that on a GPU would read garbage or
// crash later. It stands in for a GPU's memory in the tests and in the GPU
// check's dry run on machines without one; results are the CPU backend's,
// bit for bit. (One arena: opening and closing it is one mprotect each.)
#pragma once
#include <atomic>
#include <map>
#include <mutex>

#include "cpu_backend.h"

namespace rlhf::cpu {

class GuardedBackend final : public Backend {
 public:
  explicit GuardedBackend(CpuBackend& cpu) : cpu_(cpu) {}
  ~GuardedBackend() override;
  const char* name() const override { return "cpu-guarded"; }
  bool supports(Op op, DType dtype) const override { return cpu_.supports(op, dtype); }
  int threads() const override { return cpu_.threads(); }

  bool host_memory() const override { return false; }
  void* alloc(size_t bytes) override;
  void release(void* p) noexcept override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) override;
  void fill_zero(void* dst, size_t bytes) override;
  void synchronize() override {}

  int64_t live_allocations();  // for tests: every buffer released means none left
  bool transfer_counts(TransferCounts* out) const override;

#define RLHF_GUARDED_OP(name, Args, family) \
  void name(const Args& args) override {    \
    Open open(*this);                       \
    cpu_.name(args);                        \
  }
  RLHF_OPS(RLHF_GUARDED_OP)
#undef RLHF_GUARDED_OP

 private:
  // Opens every mapping for the duration of one op or copy (one at a time:
  // calls from several threads are serialised).
  struct Open {
    explicit Open(GuardedBackend& g);
    ~Open();
    GuardedBackend& g;
    std::lock_guard<std::mutex> lock;
  };
  void protect_all(int prot);
  void reserve();  // maps the arena on first use
  CpuBackend& cpu_;
  std::atomic<int64_t> uploads_{0}, upload_bytes_{0}, downloads_{0}, download_bytes_{0};
  std::mutex mu_;
  char* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  std::map<size_t, size_t> free_;  // offset -> length of each free range (coalesced)
  std::map<size_t, size_t> used_;  // offset -> length of each allocation
};

// The process-wide instance over the default engine's CPU backend.
GuardedBackend& guarded_backend();

}  // namespace rlhf::cpu
