// How runOp (ops_napi.cc) hands the caller's typed arrays to a backend that
// does not read host memory. Arrays are mapped per ArrayBuffer, so views of
// one buffer (a fused gate|up row passed as two subarrays) stay views of one
// copy; ops_cuda_napi.cc copies them to the device and back.
#pragma once
#include <cstddef>

namespace rlhf::napi {

class ArgMemory {
 public:
  virtual ~ArgMemory() = default;
  // The backend's address of byte `offset` of the ArrayBuffer [base, base + length).
  virtual void* map(void* base, size_t length, size_t offset) = 0;
};

}  // namespace rlhf::napi
