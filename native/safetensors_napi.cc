// placeholder until the safetensors module lands
#include <napi.h>
#include "napi_util.h"
namespace rlhf::napi {
Napi::Object InitSafetensorsFile(Napi::Env env, Napi::Object exports) { return exports; }
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value { throw Error(code::kUnsupported, "not yet"); });
}
}
