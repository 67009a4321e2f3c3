// The device half of runOp (ops_napi.cc) and the CUDA helpers for tests and
// benchmarks:
//   runOp(name, {...args, device: 'cuda', repeat?}) copies every typed array
//     it reads to the device (one copy per ArrayBuffer), runs the op on the
//     CUDA backend, copies the arrays back and returns {device, ms} (ms: mean
//     kernel time of `repeat` extra runs, timed with events, when repeat > 0).
//     device: 'cpu-copy' runs the CPU backend through the same copy-in /
//     copy-out path (what the GPU check script does on a machine without GPU).
//   cudaOps() -> {compiled, ops: [{name, family, f32, bf16}]}: the op table and
//     what the CUDA backend covers (answered without a device).
//   cudaBench(name, params) -> timings of the fused kernels on device-resident
//     random data (no host copies): gemm_bf16, gemm_f32, attention, lm_head, ppo_loss.
// Without a usable GPU every CUDA entry point throws E_CUDA with the reason.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "../kernels/cuda_ops_status.h"
#include "device.h"
#include "engine.h"
#include "napi_util.h"
#include "op_memory.h"
#include "ops/op_list.h"

#ifdef RLHF_WITH_CUDA
#include "../kernels/cuda_backend.h"
#endif

namespace rlhf::napi {

namespace {

int op_index(const std::string& name) {
  for (int i = 0; i < kOpCount; ++i)
    if (name == kOpNames[i]) return i;
  return -1;
}

constexpr const char* kOpFamilies[] = {
#define RLHF_OP_FAMILY(name, args, family) #family,
    RLHF_OPS(RLHF_OP_FAMILY)
#undef RLHF_OP_FAMILY
};

// Host copies: the CPU backend through the copy-in/copy-out path.
class HostCopyMemory final : public ArgMemory {
 public:
  void* map(void* base, size_t length, size_t offset) override {
    auto it = copies_.find(base);
    if (it == copies_.end()) {
      Copy c{base, std::vector<uint8_t>(length + 1)};
      if (length) std::memcpy(c.bytes.data(), base, length);
      it = copies_.emplace(base, std::move(c)).first;
    }
    return it->second.bytes.data() + offset;
  }
  void copy_back() {
    for (auto& [base, c] : copies_)
      if (c.bytes.size() > 1) std::memcpy(c.host, c.bytes.data(), c.bytes.size() - 1);
  }

 private:
  struct Copy {
    void* host;
    std::vector<uint8_t> bytes;
  };
  std::unordered_map<void*, Copy> copies_;
};

#ifndef RLHF_WITH_CUDA
[[noreturn]] void no_cuda() {
  const CudaStatus st = cuda_status();
  if (!st.compiled) throw Error(code::kCuda, st.error);
  throw Error(code::kCuda, "no usable CUDA device: " + (st.error.empty() ? std::string("the CUDA runtime found no device") : st.error));
}
#endif

#ifdef RLHF_WITH_CUDA
class DeviceMemory final : public ArgMemory {
 public:
  explicit DeviceMemory(cuda::CudaBackend& be) : be_(be) {}
  ~DeviceMemory() override {
    for (auto& [base, c] : copies_) be_.release(c.dev);
  }
  void* map(void* base, size_t length, size_t offset) override {
    auto it = copies_.find(base);
    if (it == copies_.end()) {
      Copy c{base, length, be_.alloc(length)};
      it = copies_.emplace(base, c).first;  // owned from here on (freed by the destructor)
      be_.upload(c.dev, base, length);
    }
    return static_cast<uint8_t*>(it->second.dev) + offset;
  }
  void copy_back() {
    for (auto& [base, c] : copies_) be_.download(c.host, c.dev, c.length);
    be_.synchronize();
  }

 private:
  struct Copy {
    void* host;
    size_t length;
    void* dev;
  };
  cuda::CudaBackend& be_;
  std::unordered_map<void*, Copy> copies_;
};

// Device buffers for the benchmarks, freed together.
struct Buffers {
  explicit Buffers(cuda::CudaBackend& b) : be(b) {}
  ~Buffers() {
    for (void* p : ptrs) be.release(p);
  }
  template <typename T>
  T* get(int64_t count) {
    ptrs.push_back(be.alloc(sizeof(T) * static_cast<size_t>(count > 0 ? count : 1)));
    return static_cast<T*>(ptrs.back());
  }
  cuda::CudaBackend& be;
  std::vector<void*> ptrs;
};
#endif

[[maybe_unused]] int64_t num(Napi::Object o, const char* key, int64_t dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : dflt;
}

}  // namespace

Napi::Value RunOpOnDevice(Napi::Env env, const std::string& device, const std::string& op, Napi::Object args,
                          const std::function<void(Backend&, ArgMemory*)>& run) {
  const int idx = op_index(op);
  if (idx < 0) throw Error(code::kArgument, "runOp: unknown op '" + op + "'");
  Napi::Object r = Napi::Object::New(env);
  r.Set("device", device);
  if (device == "cpu-copy") {
    HostCopyMemory mem;
    run(default_engine().cpu, &mem);
    mem.copy_back();
    return r;
  }
  if (device != "cuda") throw Error(code::kArgument, "runOp: 'device' must be 'cpu', 'cpu-copy' or 'cuda', got '" + device + "'");
#ifdef RLHF_WITH_CUDA
  cuda::CudaBackend& be = cuda::backend();
  if (!be.supports(static_cast<Op>(idx), DType::F32))
    throw Error(code::kUnsupported, "runOp: the CUDA backend has no kernel for '" + op + "'");
  const int64_t repeat = num(args, "repeat", 0);
  DeviceMemory mem(be);
  run(be, &mem);
  if (repeat > 0) {
    be.event_record(0);
    for (int64_t i = 0; i < repeat; ++i) run(be, &mem);
    be.event_record(1);
    r.Set("ms", be.event_elapsed_ms() / static_cast<double>(repeat));
  }
  mem.copy_back();
  return r;
#else
  (void)args;
  (void)run;
  no_cuda();
#endif
}

Napi::Value CudaOps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    Napi::Object r = Napi::Object::New(env);
    r.Set("compiled", cuda_status().compiled);
    Napi::Array ops = Napi::Array::New(env, kOpCount);
    static constexpr bool kStatus[] = {
#define RLHF_OP_STATUS(name, args, family) cuda::status::name,
        RLHF_OPS(RLHF_OP_STATUS)
#undef RLHF_OP_STATUS
    };
    static_assert(sizeof(kStatus) / sizeof(kStatus[0]) == static_cast<size_t>(kOpCount), "one status per op");
    for (int i = 0; i < kOpCount; ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", kOpNames[i]);
      o.Set("family", kOpFamilies[i]);
      o.Set("f32", kStatus[i]);
      o.Set("bf16", kStatus[i] && cuda::status::bf16_weights(kOpNames[i]));
      ops.Set(static_cast<uint32_t>(i), o);
    }
    r.Set("ops", ops);
    return r;
  });
}

Napi::Value CudaBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    const std::string name = ArgString(info, 0, "name");
    Napi::Object p = ArgObject(info, 1, "params");
#ifndef RLHF_WITH_CUDA
    (void)p;
    no_cuda();
#else
    std::lock_guard<std::mutex> lock(default_engine().compute);
    cuda::CudaBackend& be = cuda::backend();
    const int64_t repeat = std::max<int64_t>(1, num(p, "repeat", 10));
    Buffers buf(be);
    auto time = [&](const std::function<void()>& fn) {
      fn();  // warm-up (and first-launch setup)
      be.synchronize();
      be.event_record(0);
      for (int64_t i = 0; i < repeat; ++i) fn();
      be.event_record(1);
      return be.event_elapsed_ms() / static_cast<double>(repeat);
    };
    Napi::Object r = Napi::Object::New(env);
    r.Set("device", "cuda");
    if (name == "gemm_bf16" || name == "gemm_f32") {
      const int64_t m = num(p, "m", 4096), n = num(p, "n", 4096), k = num(p, "k", 4096);
      float* c = buf.get<float>(m * n);
      double ms;
      if (name == "gemm_bf16") {
        uint16_t* a = buf.get<uint16_t>(m * k);
        uint16_t* b = buf.get<uint16_t>(n * k);
        be.fill_normal_bf16(a, m * k, 1, 1.f);
        be.fill_normal_bf16(b, n * k, 2, 1.f);
        ms = time([&] { be.gemm_bf16(m, n, k, a, b, c); });
      } else {
        float* a = buf.get<float>(m * k);
        float* b = buf.get<float>(n * k);
        be.fill_normal(a, m * k, 1, 1.f);
        be.fill_normal(b, n * k, 2, 1.f);
        GemmOp g;
        g.trans_b = true, g.m = m, g.n = n, g.k = k, g.a = a, g.lda = k, g.b = b, g.ldb = k, g.c = c, g.ldc = n;
        ms = time([&] { be.gemm(g); });
      }
      r.Set("ms", ms);
      r.Set("tflops", 2.0 * m * n * k / (ms * 1e9));
    } else if (name == "attention") {
      const int64_t B = num(p, "batch", 4), T = num(p, "seq", 2048), H = num(p, "heads", 32), KVH = num(p, "kvHeads", H);
      const int64_t D = num(p, "headDim", 128);
      const int64_t qn = B * T * H * D, kn = B * T * KVH * D;
      AttentionOp a;
      a.batch = B, a.seq = T, a.heads = H, a.kv_heads = KVH, a.head_dim = D, a.scale = 1.f / std::sqrt(static_cast<float>(D));
      float* q = buf.get<float>(qn);
      float* k = buf.get<float>(kn);
      float* v = buf.get<float>(kn);
      float* o = buf.get<float>(qn);
      float* lse = buf.get<float>(B * H * T);
      be.fill_normal(q, qn, 1, 1.f), be.fill_normal(k, kn, 2, 1.f), be.fill_normal(v, kn, 3, 1.f);
      a.q = q, a.k = k, a.v = v, a.ldq = H * D, a.ldk = KVH * D, a.ldv = KVH * D, a.out = o, a.ldo = H * D, a.lse = lse;
      const double fwd = time([&] { be.attention(a); });
      AttentionBackwardOp g;
      g.batch = B, g.seq = T, g.heads = H, g.kv_heads = KVH, g.head_dim = D, g.scale = a.scale;
      g.q = q, g.k = k, g.v = v, g.ldq = a.ldq, g.ldk = a.ldk, g.ldv = a.ldv, g.out = o, g.ldo = a.ldo, g.lse = lse;
      float* dout = buf.get<float>(qn);
      be.fill_normal(dout, qn, 4, 1.f);
      g.dout = dout, g.dq = buf.get<float>(qn), g.dk = buf.get<float>(kn), g.dv = buf.get<float>(kn);
      const double bwd = time([&] { be.attention_backward(g); });
      const double flops = 4.0 * B * H * D * (static_cast<double>(T) * (T + 1) / 2);  // causal: QK^T and PV
      r.Set("fwdMs", fwd), r.Set("bwdMs", bwd);
      r.Set("fwdTflops", flops / (fwd * 1e9)), r.Set("bwdTflops", 2.5 * flops / (bwd * 1e9));
    } else if (name == "lm_head") {
      const int64_t n = num(p, "n", 4096), dim = num(p, "dim", 2048), vocab = num(p, "vocab", 32000);
      float* h = buf.get<float>(n * dim);
      be.fill_normal(h, n * dim, 1, 1.f);
      LmHeadLogpOp f;
      f.n = n, f.dim = dim, f.vocab = vocab, f.hidden = h;
      if (p.Get("bf16").ToBoolean().Value()) {
        uint16_t* w = buf.get<uint16_t>(vocab * dim);
        be.fill_normal_bf16(w, vocab * dim, 2, 0.02f);
        f.weight_bf16 = w;
      } else {
        float* w = buf.get<float>(vocab * dim);
        be.fill_normal(w, vocab * dim, 2, 0.02f);
        f.weight = w;
      }
      std::vector<int32_t> t(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % vocab);
      int32_t* targets = buf.get<int32_t>(n);
      be.upload(targets, t.data(), sizeof(int32_t) * n);
      f.targets = targets, f.logp = buf.get<float>(n), f.entropy = buf.get<float>(n), f.lse = buf.get<float>(n);
      const double fwd = time([&] { be.lm_head_logp(f); });
      LmHeadLogpBackwardOp g;
      g.n = n, g.dim = dim, g.vocab = vocab, g.hidden = h, g.weight = f.weight, g.weight_bf16 = f.weight_bf16, g.targets = targets;
      g.lse = f.lse, g.entropy = f.entropy, g.dlogp = f.logp, g.dhidden = buf.get<float>(n * dim);
      const double bwd = time([&] { be.lm_head_logp_backward(g); });
      const double flops = 2.0 * n * dim * vocab;
      r.Set("fwdMs", fwd), r.Set("bwdMs", bwd);
      r.Set("fwdTflops", flops / (fwd * 1e9)), r.Set("bwdTflops", 2 * flops / (bwd * 1e9));
    } else if (name == "ppo_loss") {
      const int64_t n = num(p, "n", 1 << 20);
      PpoLossOp o;
      o.n = n;
      float* x = buf.get<float>(8 * n);
      be.fill_normal(x, 8 * n, 5, 0.1f);
      o.logp = x, o.old_logp = x + n, o.advantages = x + 2 * n, o.returns = x + 3 * n, o.values = x + 4 * n;
      o.old_values = x + 5 * n, o.ref_logp = x + 6 * n, o.entropy = x + 7 * n, o.kl_coef = 0.05f, o.ent_coef = 0.01f;
      float* out = buf.get<float>(3 * n + 16);
      o.dlogp = out, o.dvalues = out + n, o.dentropy = out + 2 * n, o.loss = out + 3 * n, o.stats = out + 3 * n + 1;
      const double ms = time([&] { be.ppo_loss(o); });
      r.Set("ms", ms);
      r.Set("gbps", (8.0 + 3.0) * 4 * n / (ms * 1e6));
    } else {
      throw Error(code::kArgument, "cudaBench: unknown benchmark '" + name + "'");
    }
    be.synchronize();
    return r;
#endif
  });
}

}  // namespace rlhf::napi
