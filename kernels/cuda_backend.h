// The CUDA backend: every op of the op table (native/ops/op_list.h) as custom
// kernels on device pointers, one kernels/<family>.cu per op family, twin of
// native/cpu/<family>.cc. fp32 tensors in and out, as the op table defines
// them; matrix products run on bf16 tensor cores (mma.sync m16n8k16) with fp32
// accumulation, element-wise math in fp32 through the shared functions of
// native/ops/math.h. Reductions that the CPU makes deterministic are
// deterministic here too (fixed partitions combined in order), except the
// scatter-adds of embedding_backward (atomics).
//
// Plain C++ header (no CUDA types), so the N-API code can hold the backend.
// Every CUDA failure is thrown as rlhf::Error with code E_CUDA.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../native/ops/backend.h"

namespace rlhf::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }
  bool supports(Op op, DType dtype) const override;
  int threads() const override { return sm_count_; }  // streaming multiprocessors

#define RLHF_OP_OVERRIDE(name, Args, family) void name(const Args& args) override;
  RLHF_OPS(RLHF_OP_OVERRIDE)
#undef RLHF_OP_OVERRIDE

  // ---- memory and stream (all ops and copies run on one stream, in order)
  bool host_memory() const override { return false; }
  void* stream() const { return stream_; }
  void synchronize() override;
  void* alloc(size_t bytes) override;  // cudaMalloc + zero fill, throws E_CUDA
  void release(void* p) noexcept override;
  void upload(void* dst, const void* src, size_t bytes) override;    // host -> device, on the stream
  void download(void* dst, const void* src, size_t bytes) override;  // device -> host; synchronises the stream
  void copy(void* dst, const void* src, size_t bytes) override;      // device -> device, on the stream
  void copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) override;
  void fill_zero(void* dst, size_t bytes) override { memset(dst, 0, bytes); }
  void memset(void* dst, int value, size_t bytes);
  // Grow-only scratch owned by the backend; valid until the next call that
  // asks for more. Ops carve their temporaries out of it.
  void* workspace(size_t bytes);
  int device() const { return device_; }
  int sm_count() const { return sm_count_; }
  int cc_major() const { return cc_major_; }

  // ---- benchmarks (not ops): event-timed loops on the backend's stream
  void event_record(int which);            // which = 0 (start) or 1 (stop)
  float event_elapsed_ms();                // stop - start, after synchronizing
  // C = A B^T, all bf16 in, fp32 accumulate, bf16 or fp32 out (the GEMM the
  // model runs with bf16 activations and weights).
  void gemm_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, const uint16_t* b, float* c);
  void fill_normal(float* x, int64_t n, uint64_t seed, float stddev);
  void fill_normal_bf16(uint16_t* x, int64_t n, uint64_t seed, float stddev);

 private:
  int device_ = 0;
  int sm_count_ = 1;
  int cc_major_ = 0;
  size_t smem_optin_ = 48 * 1024;
  void* stream_ = nullptr;
  void* events_[2] = {nullptr, nullptr};
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;

 public:
  size_t smem_optin() const { return smem_optin_; }
};

// The process-wide backend on device 0, created on first use. Throws E_CUDA
// (with the runtime's reason) when there is no usable device.
CudaBackend& backend();

// supports() without a device: what the kernels cover (op, dtype).
bool op_supported(Op op, DType dtype);

}  // namespace rlhf::cuda
