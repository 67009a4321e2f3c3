// The whole native surface of rlhf-native, in one place. This file only
// registers exports; each function lives beside the code it wraps
// (native/*_napi.cc). lib/native.ts declares the matching TypeScript types.
#include <napi.h>

namespace rlhf::napi {
// info_napi.cc
Napi::Value Info(const Napi::CallbackInfo& info);  // () -> {cpu, cuda, backends}
// safetensors_napi.cc
Napi::Object InitSafetensorsFile(Napi::Env env, Napi::Object exports);  // class SafetensorsFile(path)
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info);  // (path, tensors[], metadata|null) -> bytes written
// model_napi.cc
Napi::Object InitModel(Napi::Env env, Napi::Object exports);  // class Model (made by loadModel)
Napi::Value LoadModel(const Napi::CallbackInfo& info);  // (spec) -> Promise<Model>
// ops_napi.cc
Napi::Value RunOp(const Napi::CallbackInfo& info);      // (name, args) -> runs one op, CPU or args.device (tests)
Napi::Value OpKernels(const Napi::CallbackInfo& info);  // () -> {kernels, ops}
// ops_cuda_napi.cc
Napi::Value CudaOps(const Napi::CallbackInfo& info);    // () -> {compiled, ops: [{name, family, f32, bf16}]}
Napi::Value CudaBench(const Napi::CallbackInfo& info);  // (name, params) -> kernel timings on the GPU
// comm_napi.cc (MPI loaded at run time; docs/distributed.md)
Napi::Value CommInit(const Napi::CallbackInfo& info);       // () -> {initialized, rank, size, library, version}
Napi::Value CommWorld(const Napi::CallbackInfo& info);      // () -> the same, without initializing
Napi::Value CommFinalize(const Napi::CallbackInfo& info);   // ()
Napi::Value CommAllReduce(const Napi::CallbackInfo& info);  // (Float32Array | Float64Array, 'sum' | 'max'), in place
Napi::Value CommBroadcast(const Napi::CallbackInfo& info);  // (typedArray, root), in place
Napi::Value CommBarrier(const Napi::CallbackInfo& info);    // ()
}  // namespace rlhf::napi

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace rlhf::napi;
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  InitSafetensorsFile(env, exports);
  exports.Set("writeSafetensors", Napi::Function::New(env, WriteSafetensors, "writeSafetensors"));
  InitModel(env, exports);
  exports.Set("loadModel", Napi::Function::New(env, LoadModel, "loadModel"));
  exports.Set("runOp", Napi::Function::New(env, RunOp, "runOp"));
  exports.Set("opKernels", Napi::Function::New(env, OpKernels, "opKernels"));
  exports.Set("cudaOps", Napi::Function::New(env, CudaOps, "cudaOps"));
  exports.Set("cudaBench", Napi::Function::New(env, CudaBench, "cudaBench"));
  exports.Set("commInit", Napi::Function::New(env, CommInit, "commInit"));
  exports.Set("commWorld", Napi::Function::New(env, CommWorld, "commWorld"));
  exports.Set("commFinalize", Napi::Function::New(env, CommFinalize, "commFinalize"));
  exports.Set("commAllReduce", Napi::Function::New(env, CommAllReduce, "commAllReduce"));
  exports.Set("commBroadcast", Napi::Function::New(env, CommBroadcast, "commBroadcast"));
  exports.Set("commBarrier", Napi::Function::New(env, CommBarrier, "commBarrier"));
  return exports;
}

NODE_API_MODULE(rlhf_native, Init)
