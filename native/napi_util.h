// Small helpers shared by the *_napi.cc files: converting rlhf::Error (and any
// other C++ exception) into a JS Error with a `code` property, and argument
// checks that name the offending argument.
#pragma once
#include <napi.h>

#include <string>

#include "error.h"

namespace rlhf {

// Builds a JS Error with `code` set. Called on the main thread only.
inline Napi::Error MakeJsError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, code));
  err.Value().Set("native", Napi::Boolean::New(env, true));
  return err;
}

// Wraps a body so that every C++ exception becomes a JS exception with a code.
// Usage: return Guard(info.Env(), [&] { ... return Napi::Value; });
template <typename F>
Napi::Value Guard(Napi::Env env, F&& body) {
  try {
    return body();
  } catch (const Error& e) {
    MakeJsError(env, e.code(), e.what()).ThrowAsJavaScriptException();
  } catch (const Napi::Error& e) {
    throw;  // already a JS exception
  } catch (const std::bad_alloc&) {
    MakeJsError(env, code::kResource, kOutOfMemory).ThrowAsJavaScriptException();
  } catch (const std::length_error&) {
    MakeJsError(env, code::kResource, kOutOfMemory).ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    MakeJsError(env, code::kInternal, e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

inline std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString())
    throw Error(code::kArgument, std::string("argument '") + name + "' must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

inline Napi::Object ArgObject(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsObject())
    throw Error(code::kArgument, std::string("argument '") + name + "' must be an object");
  return info[i].As<Napi::Object>();
}

}  // namespace rlhf
