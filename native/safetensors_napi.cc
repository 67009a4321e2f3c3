// JS surface of native/safetensors.h (typed in lib/native.ts):
//   class SafetensorsFile(path): header(), tensorBytes(name), isAligned(name), close()
//   writeSafetensors(path, tensors[], metadata|null) -> file size in bytes
// Both are synchronous: opening only maps and validates the header, and the
// writer is used for small files from JS (checkpoints are written from C++).
#include <napi.h>

#include <cmath>
#include <memory>

#include "napi_util.h"
#include "safetensors.h"

namespace rlhf::napi {
namespace {

// Rethrows the active C++ exception as a JS exception object (for the
// ObjectWrap constructor, which cannot use Guard since it returns no value).
[[noreturn]] void RethrowAsJs(Napi::Env env) {
  try {
    throw;
  } catch (const Error& e) {
    throw MakeJsError(env, e.code(), e.what());
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw MakeJsError(env, code::kResource, kOutOfMemory);
  } catch (const std::length_error&) {
    throw MakeJsError(env, code::kResource, kOutOfMemory);
  } catch (const std::exception& e) {
    throw MakeJsError(env, code::kInternal, e.what());
  }
}

class SafetensorsFileWrap : public Napi::ObjectWrap<SafetensorsFileWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SafetensorsFile",
                       {
                           InstanceMethod<&SafetensorsFileWrap::Header>("header"),
                           InstanceMethod<&SafetensorsFileWrap::TensorBytes>("tensorBytes"),
                           InstanceMethod<&SafetensorsFileWrap::IsAligned>("isAligned"),
                           InstanceMethod<&SafetensorsFileWrap::Close>("close"),
                       });
  }

  explicit SafetensorsFileWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SafetensorsFileWrap>(info) {
    try {
      file_ = std::make_unique<st::File>(ArgString(info, 0, "path"));
    } catch (...) {
      RethrowAsJs(info.Env());
    }
  }

 private:
  // The header stays readable after close(): it is parsed, not mapped.
  Napi::Value Header(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      const st::Header& h = file_->header();
      Napi::Object out = Napi::Object::New(env);
      if (h.metadata) {
        // Defined, not assigned, so a key such as "__proto__" stays an own property.
        Napi::Object m = Napi::Object::New(env);
        for (const auto& [k, v] : *h.metadata)
          m.DefineProperty(Napi::PropertyDescriptor::Value(k, Napi::String::New(env, v), napi_default_jsproperty));
        out.Set("metadata", m);
      } else {
        out.Set("metadata", env.Null());
      }
      Napi::Array tensors = Napi::Array::New(env, h.tensors.size());
      for (size_t i = 0; i < h.tensors.size(); ++i) {
        const st::TensorInfo& t = h.tensors[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", t.name);
        o.Set("dtype", st::dtype_name(t.dtype));
        Napi::Array shape = Napi::Array::New(env, t.shape.size());
        // Dims above 2^53 lose precision as JS numbers; only possible beside a 0 dim.
        for (size_t d = 0; d < t.shape.size(); ++d) shape.Set(d, static_cast<double>(t.shape[d]));
        o.Set("shape", shape);
        Napi::Array offs = Napi::Array::New(env, 2);
        offs.Set(0u, static_cast<double>(t.begin));
        offs.Set(1u, static_cast<double>(t.end));
        o.Set("dataOffsets", offs);
        tensors.Set(i, o);
      }
      out.Set("tensors", tensors);
      out.Set("headerLength", static_cast<double>(h.header_length));
      out.Set("dataStart", static_cast<double>(h.data_start));
      out.Set("fileSize", static_cast<double>(file_->file_size()));
      return out;
    });
  }

  Napi::Value TensorBytes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      const st::TensorInfo& t = file_->info(ArgString(info, 0, "name"));
      return Napi::Buffer<uint8_t>::Copy(env, file_->raw(t), static_cast<size_t>(t.nbytes()));
    });
  }

  Napi::Value IsAligned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      return Napi::Boolean::New(env, file_->is_aligned(file_->info(ArgString(info, 0, "name"))));
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    return Guard(info.Env(), [&]() -> Napi::Value {
      file_->close();
      return info.Env().Undefined();
    });
  }

  std::unique_ptr<st::File> file_;
};

// ---- writeSafetensors argument conversion ----

bool IsAbsent(const Napi::Value& v) { return v.IsUndefined() || v.IsNull(); }

double NumberField(const Napi::Object& o, const char* key, const std::string& where, bool required, double dflt = 0) {
  Napi::Value v = o.Get(key);
  if (IsAbsent(v)) {
    if (required) throw Error(code::kArgument, where + "." + key + " is required");
    return dflt;
  }
  if (!v.IsNumber()) throw Error(code::kArgument, where + "." + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// Non-negative integers exactly representable in a double (<= 2^53 - 1).
uint64_t SafeUint(const Napi::Value& v, const std::string& where) {
  if (!v.IsNumber()) throw Error(code::kArgument, where + " must be a non-negative integer");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(std::isfinite(d) && d >= 0 && d == std::floor(d) && d <= 9007199254740991.0))
    throw Error(code::kArgument, where + " must be a non-negative safe integer, got " + std::to_string(d));
  return static_cast<uint64_t>(d);
}

st::Fill ParseFill(const Napi::Value& v, const std::string& where) {
  if (!v.IsObject()) throw Error(code::kArgument, where + " must be an object with a `kind`");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value kv = o.Get("kind");
  if (!kv.IsString()) throw Error(code::kArgument, where + ".kind must be a string");
  const std::string kind = kv.As<Napi::String>().Utf8Value();
  st::Fill f;
  if (kind == "zeros") {
    f.kind = st::Fill::Kind::kZeros;
  } else if (kind == "ones") {
    f.kind = st::Fill::Kind::kOnes;
  } else if (kind == "const") {
    f.kind = st::Fill::Kind::kConst;
    f.value = NumberField(o, "value", where, true);
  } else if (kind == "normal") {
    f.kind = st::Fill::Kind::kNormal;
    f.mean = NumberField(o, "mean", where, false, 0.0);
    f.stddev = NumberField(o, "std", where, true);
    f.seed = SafeUint(o.Get("seed"), where + ".seed");
  } else if (kind == "uniform") {
    f.kind = st::Fill::Kind::kUniform;
    f.low = NumberField(o, "low", where, true);
    f.high = NumberField(o, "high", where, true);
    f.seed = SafeUint(o.Get("seed"), where + ".seed");
  } else {
    throw Error(code::kArgument, where + ".kind must be one of zeros, ones, const, normal, uniform; got '" + kind + "'");
  }
  return f;
}

// Raw bytes of a Buffer / TypedArray / DataView / ArrayBuffer. The JS object
// stays alive (and unmoved) for the duration of this synchronous call.
void DataBytes(const Napi::Value& v, const std::string& where, const void** ptr, size_t* len) {
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    *ptr = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    *len = ta.ByteLength();
  } else if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    *ptr = static_cast<const uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    *len = dv.ByteLength();
  } else if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    *ptr = ab.Data();
    *len = ab.ByteLength();
  } else {
    throw Error(code::kArgument, where + " must be a Buffer, TypedArray, DataView or ArrayBuffer");
  }
  if (*len == 0) *ptr = nullptr;
}

}  // namespace

Napi::Object InitSafetensorsFile(Napi::Env env, Napi::Object exports) {
  exports.Set("SafetensorsFile", SafetensorsFileWrap::Define(env));
  return exports;
}

Napi::Value WriteSafetensors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    const std::string path = ArgString(info, 0, "path");
    const std::string ctx = "writeSafetensors(" + path + "): ";
    if (info.Length() < 2 || !info[1].IsArray()) throw Error(code::kArgument, ctx + "tensors must be an array");
    Napi::Array arr = info[1].As<Napi::Array>();
    std::vector<st::TensorToWrite> tensors(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      const std::string where = ctx + "tensors[" + std::to_string(i) + "]";
      Napi::Value ev = arr.Get(i);
      if (!ev.IsObject()) throw Error(code::kArgument, where + " must be an object");
      Napi::Object o = ev.As<Napi::Object>();
      st::TensorToWrite& t = tensors[i];
      Napi::Value name = o.Get("name");
      if (!name.IsString()) throw Error(code::kArgument, where + ".name must be a string");
      t.name = name.As<Napi::String>().Utf8Value();
      Napi::Value dtype = o.Get("dtype");
      if (!dtype.IsString() || !st::parse_dtype(dtype.As<Napi::String>().Utf8Value(), &t.dtype))
        throw Error(code::kArgument, where + ".dtype must be a safetensors dtype name such as \"F32\"");
      Napi::Value shape = o.Get("shape");
      if (!shape.IsArray()) throw Error(code::kArgument, where + ".shape must be an array");
      Napi::Array sa = shape.As<Napi::Array>();
      for (uint32_t d = 0; d < sa.Length(); ++d)
        t.shape.push_back(SafeUint(sa.Get(d), where + ".shape[" + std::to_string(d) + "]"));
      Napi::Value data = o.Get("data");
      Napi::Value fill = o.Get("fill");
      if (IsAbsent(data) == IsAbsent(fill))
        throw Error(code::kArgument, where + " (" + t.name + ") needs exactly one of data or fill");
      if (!IsAbsent(data)) DataBytes(data, where + ".data", &t.data, &t.data_len);
      else t.fill = ParseFill(fill, where + ".fill");
    }
    std::optional<st::Metadata> metadata;
    if (info.Length() >= 3 && !IsAbsent(info[2])) {
      if (!info[2].IsObject() || info[2].IsArray())
        throw Error(code::kArgument, ctx + "metadata must be an object of strings, or null");
      Napi::Object m = info[2].As<Napi::Object>();
      // Own enumerable string keys only (Object.keys), not inherited ones.
      napi_value raw_keys;
      NAPI_THROW_IF_FAILED(env,
                           napi_get_all_property_names(env, m, napi_key_own_only,
                                                       static_cast<napi_key_filter>(napi_key_enumerable | napi_key_skip_symbols),
                                                       napi_key_numbers_to_strings, &raw_keys),
                           env.Undefined());
      Napi::Array keys(env, raw_keys);
      metadata.emplace();
      for (uint32_t i = 0; i < keys.Length(); ++i) {
        Napi::Value k = keys.Get(i);
        const std::string key = k.ToString().Utf8Value();
        Napi::Value v = m.Get(k);
        if (!v.IsString()) throw Error(code::kArgument, ctx + "metadata['" + key + "'] must be a string");
        metadata->emplace_back(key, v.As<Napi::String>().Utf8Value());
      }
    }
    return Napi::Number::New(env, static_cast<double>(st::write_file(path, tensors, metadata)));
  });
}

}  // namespace rlhf::napi
