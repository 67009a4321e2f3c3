// One interface for all compute backends. The model calls only this; each
// backend implements every op of op_list.h (a missing one leaves the backend
// abstract and fails to compile) and answers supports(op, dtype) so callers
// can fall back instead of crashing.
#pragma once
#include <cstddef>

#include "op_args.h"
#include "op_list.h"

namespace rlhf {

enum class DType { F32, BF16, F16 };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual bool supports(Op op, DType dtype) const = 0;
  virtual int threads() const = 0;

  // ---- memory the ops read and write: host memory on the CPU, device memory
  // on a GPU. Every pointer in an op's arguments is memory of the backend that
  // runs the op; the model moves data in and out only through these calls, so
  // the same model code runs on any backend.
  virtual bool host_memory() const = 0;  // true: backend pointers are plain host pointers
  // The host <-> backend copies so far, over every model on this backend, for
  // backends that count them (the testing device cpu-guarded): false when
  // this backend does not.
  struct TransferCounts {
    int64_t uploads = 0, upload_bytes = 0, downloads = 0, download_bytes = 0;
  };
  virtual bool transfer_counts(TransferCounts* /*out*/) const { return false; }
  virtual void* alloc(size_t bytes) = 0;  // zero-filled, 64-byte aligned at least; throws E_RESOURCE / E_CUDA
  virtual void release(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;  // complete when it returns
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;           // within the backend's memory
  // `height` rows of `width` bytes, rows `spitch` / `dpitch` bytes apart.
  virtual void copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) = 0;
  virtual void fill_zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;  // every queued op has finished

#define RLHF_OP_VIRTUAL(name, Args, family) virtual void name(const Args& args) = 0;
  RLHF_OPS(RLHF_OP_VIRTUAL)
#undef RLHF_OP_VIRTUAL
};

}  // namespace rlhf
