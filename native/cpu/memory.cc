// The CPU backend's memory: 64-byte aligned, zero-filled host allocations
// (the SIMD kernels load whole cache lines), copies are memcpy.
#include <cstdlib>
#include <cstring>
#include <string>

#include "../error.h"
#include "cpu_backend.h"

namespace rlhf::cpu {

void* CpuBackend::alloc(size_t bytes) {
  const size_t rounded = (bytes + 63) & ~size_t(63);
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) throw Error(code::kResource, std::string(kOutOfMemory) + " (" + std::to_string(bytes) + " bytes)");
  std::memset(p, 0, rounded);
  return p;
}
void CpuBackend::release(void* p) noexcept { std::free(p); }
void CpuBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes && dst != host_src) std::memmove(dst, host_src, bytes);
}
void CpuBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes && host_dst != src) std::memmove(host_dst, src, bytes);
}
void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) std::memmove(dst, src, bytes);
}
void CpuBackend::copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) {
  for (size_t r = 0; r < height; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
}
void CpuBackend::fill_zero(void* dst, size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
}

}  // namespace rlhf::cpu
