// The CUDA backend object: device, stream, scratch memory, supports(), and the
// process-wide instance. The ops themselves live in kernels/<family>.cu.
#include <mutex>

#include "../native/device.h"
#include "common.cuh"
#include "cuda_ops_status.h"

namespace rlhf::cuda {

namespace {
constexpr bool kSupported[] = {
#define RLHF_CUDA_STATUS(name, Args, family) status::name,
    RLHF_OPS(RLHF_CUDA_STATUS)
#undef RLHF_CUDA_STATUS
};
static_assert(sizeof(kSupported) / sizeof(kSupported[0]) == static_cast<size_t>(kOpCount),
              "every op of the op list needs its entry in kernels/cuda_ops_status.h");
}  // namespace

bool op_supported(Op op, DType dtype) {
  const int i = static_cast<int>(op);
  if (i < 0 || i >= kOpCount || !kSupported[i]) return false;
  if (dtype == DType::F32) return true;
  if (dtype == DType::BF16) return status::bf16_weights(kOpNames[i]);
  return false;
}

bool CudaBackend::supports(Op op, DType dtype) const { return op_supported(op, dtype); }

CudaBackend::CudaBackend(int device) : device_(device) {
  RLHF_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp p;
  RLHF_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  sm_count_ = p.multiProcessorCount;
  cc_major_ = p.major;
  smem_optin_ = p.sharedMemPerBlockOptin;
  if (p.major < 8)
    throw Error(code::kCuda, std::string("the CUDA backend needs compute capability 8.0 or newer (bf16 tensor cores); ") + p.name +
                                 " is " + std::to_string(p.major) + "." + std::to_string(p.minor));
  cudaStream_t s;
  RLHF_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  for (auto& e : events_) {
    cudaEvent_t ev;
    RLHF_CUDA_CHECK(cudaEventCreate(&ev));
    e = ev;
  }
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (ws_) cudaFree(ws_);
  for (auto e : events_)
    if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void CudaBackend::synchronize() { RLHF_CUDA_CHECK(cudaStreamSynchronize(stream_of(*this))); }

void* CudaBackend::alloc(size_t bytes) {
  void* p = nullptr;
  RLHF_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 16));
  RLHF_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes ? bytes : 16, stream_of(*this)));
  return p;
}
void CudaBackend::release(void* p) noexcept {
  if (p) cudaFree(p);
}
void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  if (bytes) RLHF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(*this)));
}
void CudaBackend::download(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  RLHF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(*this)));
  RLHF_CUDA_CHECK(cudaStreamSynchronize(stream_of(*this)));
}
void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) RLHF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(*this)));
}
void CudaBackend::copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) {
  if (width && height)
    RLHF_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDeviceToDevice, stream_of(*this)));
}
void CudaBackend::memset(void* dst, int value, size_t bytes) {
  if (bytes) RLHF_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream_of(*this)));
}

void* CudaBackend::workspace(size_t bytes) {
  bytes = (bytes + 255) & ~size_t(255);
  if (bytes > ws_bytes_) {
    if (ws_) {
      synchronize();  // earlier kernels may still read the old scratch
      RLHF_CUDA_CHECK(cudaFree(ws_));
      ws_ = nullptr;
      ws_bytes_ = 0;
    }
    const size_t grow = bytes + bytes / 4;
    RLHF_CUDA_CHECK(cudaMalloc(&ws_, grow));
    ws_bytes_ = grow;
  }
  return ws_;
}

void CudaBackend::event_record(int which) {
  RLHF_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[which & 1]), stream_of(*this)));
}
float CudaBackend::event_elapsed_ms() {
  RLHF_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[1])));
  float ms = 0;
  RLHF_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(events_[0]), static_cast<cudaEvent_t>(events_[1])));
  return ms;
}

namespace {
// Box-Muller on the shared counter-based RNG: fills are reproducible.
__device__ __forceinline__ float normal_at(uint64_t seed, int64_t i) {
  const float u1 = math::uniform01(seed, 2 * static_cast<uint64_t>(i)) + (1.f / 33554432.f);
  const float u2 = math::uniform01(seed, 2 * static_cast<uint64_t>(i) + 1);
  return sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
}
__global__ void fill_normal_kernel(float* x, int64_t n, uint64_t seed, float sd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = sd * normal_at(seed, i);
}
__global__ void fill_normal_bf16_kernel(uint16_t* x, int64_t n, uint64_t seed, float sd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = f32_to_bf16_bits(sd * normal_at(seed, i));
}
}  // namespace

void CudaBackend::fill_normal(float* x, int64_t n, uint64_t seed, float stddev) {
  if (n <= 0) return;
  fill_normal_kernel<<<blocks_for(n, 256, 4096), 256, 0, stream_of(*this)>>>(x, n, seed, stddev);
  RLHF_CUDA_LAUNCHED();
}
void CudaBackend::fill_normal_bf16(uint16_t* x, int64_t n, uint64_t seed, float stddev) {
  if (n <= 0) return;
  fill_normal_bf16_kernel<<<blocks_for(n, 256, 4096), 256, 0, stream_of(*this)>>>(x, n, seed, stddev);
  RLHF_CUDA_LAUNCHED();
}

CudaBackend& backend() {
  // Never destroyed: at process exit the CUDA runtime may already be gone.
  static std::mutex mu;
  static CudaBackend* instance = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (!instance) {
    const CudaStatus st = cuda_status();
    if (!st.compiled) throw Error(code::kCuda, st.error);
    if (st.devices.empty())
      throw Error(code::kCuda, "no usable CUDA device: " + (st.error.empty() ? std::string("the CUDA runtime found no device") : st.error));
    instance = new CudaBackend(st.devices[0].index);
  }
  return *instance;
}

}  // namespace rlhf::cuda
