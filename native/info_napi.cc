// `info()`: what this build carries and what it can see on this machine.
#include <napi.h>

#include "cpu/cpu_features.h"
#include "device.h"
#include "napi_util.h"

namespace rlhf::napi {

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    Napi::Object out = Napi::Object::New(env);

    Napi::Object cpu = Napi::Object::New(env);
    const cpu::Features& f = cpu::features();
    cpu.Set("simd", cpu::simd_level());
    cpu.Set("threads", cpu::hardware_threads());
    cpu.Set("avx2", f.avx2 && f.fma);
    cpu.Set("avx512", f.avx512f && f.avx512bw && f.avx512vl);
    cpu.Set("avx512_bf16", f.avx512_bf16);
    out.Set("cpu", cpu);

    const CudaStatus cs = cuda_status();
    Napi::Object cuda = Napi::Object::New(env);
    cuda.Set("compiled", cs.compiled);
    cuda.Set("runtimeVersion", cs.runtime_version);
    cuda.Set("driverVersion", cs.driver_version);
    Napi::Array archs = Napi::Array::New(env, cs.archs.size());
    for (size_t i = 0; i < cs.archs.size(); ++i) archs.Set(i, cs.archs[i]);
    cuda.Set("archs", archs);
    Napi::Array devs = Napi::Array::New(env, cs.devices.size());
    for (size_t i = 0; i < cs.devices.size(); ++i) {
      const CudaDeviceInfo& d = cs.devices[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("index", d.index);
      o.Set("name", d.name);
      o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
      o.Set("totalMemory", static_cast<double>(d.total_mem));
      o.Set("smCount", d.sm_count);
      devs.Set(i, o);
    }
    cuda.Set("devices", devs);
    if (!cs.error.empty()) cuda.Set("error", cs.error);
    if (cs.error_code) cuda.Set("errorCode", cs.error_code);
    out.Set("cuda", cuda);

    Napi::Array backends = Napi::Array::New(env);
    backends.Set(0u, "cpu");
    if (cs.compiled) backends.Set(1u, "cuda");
    out.Set("backends", backends);
#ifdef RLHF_BUILD_SYSTEM
    out.Set("buildSystem", RLHF_BUILD_SYSTEM);
#endif
    out.Set("compiler", __VERSION__);
#ifdef RLHF_SANITIZE
    out.Set("sanitize", true);  // an AddressSanitizer + UBSan test build
#endif
    return out;
  });
}

}  // namespace rlhf::napi
