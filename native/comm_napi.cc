// The `comm` surface: the MPI world (native/mpi_world.h) for data-parallel
// training. Every call is synchronous and made from the JS thread only.
#include <napi.h>

#include "mpi_world.h"
#include "napi_util.h"

namespace rlhf::napi {

namespace {

Napi::Object WorldObject(Napi::Env env, const mpi::WorldInfo& w) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("initialized", w.initialized);
  o.Set("rank", w.rank);
  o.Set("size", w.size);
  o.Set("library", w.library);
  o.Set("version", w.version);
  return o;
}

}  // namespace

// commInit() -> {initialized, rank, size, library, version}
Napi::Value CommInit(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value { return WorldObject(info.Env(), mpi::init()); });
}

// commWorld() -> the same, without initializing
Napi::Value CommWorld(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value { return WorldObject(info.Env(), mpi::world()); });
}

Napi::Value CommFinalize(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    mpi::finalize();
    return info.Env().Undefined();
  });
}

// commAllReduce(Float32Array | Float64Array, 'sum' | 'max'): in place on every rank.
Napi::Value CommAllReduce(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw Error(code::kArgument, "commAllReduce: argument 'data' must be a Float32Array or Float64Array");
    const std::string op = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "sum";
    if (op != "sum" && op != "max") throw Error(code::kArgument, "commAllReduce: op must be 'sum' or 'max'");
    Napi::TypedArray t = info[0].As<Napi::TypedArray>();
    if (t.TypedArrayType() == napi_float32_array) {
      if (op != "sum") throw Error(code::kArgument, "commAllReduce: 'max' takes a Float64Array");
      mpi::all_reduce_sum(t.As<Napi::Float32Array>().Data(), static_cast<int64_t>(t.ElementLength()));
    } else if (t.TypedArrayType() == napi_float64_array) {
      double* p = t.As<Napi::Float64Array>().Data();
      if (op == "sum") mpi::all_reduce_sum(p, static_cast<int64_t>(t.ElementLength()));
      else mpi::all_reduce_max(p, static_cast<int64_t>(t.ElementLength()));
    } else {
      throw Error(code::kArgument, "commAllReduce: argument 'data' must be a Float32Array or Float64Array");
    }
    return info.Env().Undefined();
  });
}

// commBroadcast(typedArray, root): root's bytes into every rank's array (same length everywhere).
Napi::Value CommBroadcast(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber()) throw Error(code::kArgument, "commBroadcast: arguments must be (typedArray, root)");
    Napi::TypedArray t = info[0].As<Napi::TypedArray>();
    uint8_t* base = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    mpi::broadcast(base, static_cast<int64_t>(t.ByteLength()), info[1].As<Napi::Number>().Int32Value());
    return info.Env().Undefined();
  });
}

Napi::Value CommBarrier(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    mpi::barrier();
    return info.Env().Undefined();
  });
}

}  // namespace rlhf::napi
