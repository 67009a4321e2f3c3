// Token sampling (twin of native/cpu/sample.cc): greedy, or temperature ->
// top-k -> top-p, one block per row, reproducible with the shared
// counter-based RNG (math::uniform01).
//
// The CPU sorts the candidates by (logit descending, index ascending) and
// walks the sorted list. Here nothing is sorted: every token has a 64-bit key
// (orderable logit bits, then the complement of its index) whose descending
// order is exactly that list, and each question the CPU answers by walking the
// list ("which key is the k-th?", "where does the mass reach top_p?", "where
// does the cumulative mass pass u?") is a search for the largest key x with
// F(x) = sum of weights of keys >= x passing a threshold: F falls as x rises,
// so x is built bit by bit from the top, each bit one block-wide reduction
// over the row (weights 1 for top-k, exp(logit/T - max) in fp64 otherwise).
// The index half of the key is searched only when the logit value is tied.
#include "common.cuh"

namespace rlhf::cuda {

namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ uint32_t ordered(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t key_of(float f, int64_t i) {
  return (static_cast<uint64_t>(ordered(f)) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}

struct Row {
  const float* x;
  int64_t V;
  float inv_t, m;  // m = max logit * inv_t
};

// F(x) = sum over keys >= max(x, lo) of the weight (1 or p).
__device__ double mass_from(const Row& r, uint64_t x, bool counts, double* sh) {
  double a = 0;
  for (int64_t i = threadIdx.x; i < r.V; i += blockDim.x) {
    const float l = r.x[i];
    if (key_of(l, i) >= x) a += counts ? 1.0 : exp(static_cast<double>(l) * r.inv_t - r.m);
  }
  return block_sum(a, sh);
}

// Largest key x >= lo with F(x) > target (strict) or >= target; F(lo) must pass.
__device__ uint64_t search(const Row& r, uint64_t lo, bool counts, double target, bool strict, double* sh, unsigned long long* shk) {
  uint64_t prefix = 0;
  for (int bit = 63; bit >= 0; --bit) {
    const uint64_t x = prefix | (1ull << bit);
    const double F = mass_from(r, x > lo ? x : lo, counts, sh);
    if (strict ? F > target : F >= target) prefix = x;
    if (bit == 32) {
      // The logit half is known: if one token has that logit (among keys >= lo), it is the answer.
      const uint32_t hi = static_cast<uint32_t>(prefix >> 32);
      double cnt = 0;
      uint64_t best = 0;
      for (int64_t i = threadIdx.x; i < r.V; i += blockDim.x) {
        const uint64_t k = key_of(r.x[i], i);
        if (static_cast<uint32_t>(k >> 32) == hi && k >= lo) cnt += 1, best = k > best ? k : best;
      }
      cnt = block_sum(cnt, sh);
      if (cnt == 1.0) {
        __syncthreads();
        if (threadIdx.x == 0) *shk = 0;
        __syncthreads();
        if (best) atomicMax(shk, static_cast<unsigned long long>(best));
        __syncthreads();
        const uint64_t k = *shk;
        __syncthreads();
        return k;
      }
    }
  }
  return prefix > lo ? prefix : lo;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SampleOp op) {
  __shared__ double sh[32];
  __shared__ float shf[32];
  __shared__ unsigned long long shk;
  const int64_t rowi = blockIdx.x;
  const float* x = op.logits + rowi * op.ld;
  const int64_t V = op.vocab;
  // Greedy pick (and the maximum): the largest key is the first index of the max.
  unsigned long long best = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const uint64_t k = key_of(x[i], i);
    best = k > best ? k : best;
  }
  if (threadIdx.x == 0) shk = 0;
  __syncthreads();
  atomicMax(&shk, best);
  __syncthreads();
  const uint64_t top = shk;
  const int64_t argmax = 0xffffffffu - static_cast<uint32_t>(top & 0xffffffffu);
  const float maxv = x[argmax];
  const float inv_t = op.temperature > 0.f ? 1.f / op.temperature : 1.f;
  int64_t pick = argmax;
  if (op.temperature > 0.f) {
    const Row r{x, V, inv_t, maxv * inv_t};
    uint64_t lo = 0;
    if (op.top_k > 0 && op.top_k < V) lo = search(r, 0, true, static_cast<double>(op.top_k), false, sh, &shk);
    double total = mass_from(r, lo, false, sh);
    if (op.top_p < 1.f) {
      lo = search(r, lo, false, static_cast<double>(op.top_p) * total, false, sh, &shk);
      total = mass_from(r, lo, false, sh);
    }
    const double u = static_cast<double>(math::uniform01(op.seeds[rowi], op.step)) * total;
    uint64_t k;
    if (total > u) {
      k = search(r, lo, false, u, true, sh, &shk);
    } else {
      k = lo;  // rounding left u at the end: the last candidate, as the CPU
      if (k == 0) {  // no cut: the smallest key of the row
        unsigned long long mn = ~0ull;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
          const uint64_t kk = key_of(x[i], i);
          mn = kk < mn ? kk : mn;
        }
        __syncthreads();
        if (threadIdx.x == 0) shk = ~0ull;
        __syncthreads();
        atomicMin(&shk, mn);
        __syncthreads();
        k = shk;
      }
    }
    pick = 0xffffffffu - static_cast<uint32_t>(k & 0xffffffffu);
  }
  if (op.out_logp) {
    const float m = maxv * inv_t;
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += expf(x[i] * inv_t - m);
    s = block_sum(s, shf);
    if (threadIdx.x == 0) op.out_logp[rowi] = x[pick] * inv_t - (m + logf(s));
  }
  if (threadIdx.x == 0) op.out[rowi] = static_cast<int32_t>(pick);
}

}  // namespace

void CudaBackend::sample(const SampleOp& op) {
  if (op.n <= 0) return;
  if (op.vocab <= 0 || op.vocab > 0xffffffffLL) throw Error(code::kArgument, "sample: vocab out of range");
  sample_kernel<<<static_cast<unsigned>(op.n), kThreads, 0, stream_of(*this)>>>(op);
  RLHF_CUDA_LAUNCHED();
}

}  // namespace rlhf::cuda
