// JS surface of the transformer: loadModel(spec) -> Promise<Model>;
// model.forward(req) and model.generate(req) -> Promise. Each call copies its
// inputs into a plain C++ baton on the main thread, computes on a worker
// thread without touching JS values, and converts the results back in OnOK.
#include <napi.h>

#include <atomic>
#include <map>
#include <cstring>
#include <memory>
#include <mutex>

#include "engine.h"
#include "model/adapter.h"
#include "model/generate.h"
#include "model/objective.h"
#include "model/train_step.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "mpi_world.h"
#include "napi_util.h"
#include "safetensors.h"

namespace rlhf::napi {

namespace {

double num(const Napi::Object& o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  if (!v.IsNumber()) throw Error(code::kArgument, std::string("'") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
bool flag(const Napi::Object& o, const char* key, bool dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  return v.ToBoolean().Value();
}
int64_t need_int(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw Error(code::kArgument, std::string("model spec: '") + key + "' must be a number");
  return v.As<Napi::Number>().Int64Value();
}

model::Config config_from(const Napi::Object& c) {
  model::Config cfg;
  const std::string arch = c.Get("arch").ToString().Utf8Value();
  if (arch == "llama") cfg.arch = model::Arch::kLlama;
  else if (arch == "gpt2") cfg.arch = model::Arch::kGpt2;
  else throw Error(code::kArgument, "model spec: arch must be 'llama' or 'gpt2', got '" + arch + "'");
  cfg.vocab = need_int(c, "vocab");
  cfg.hidden = need_int(c, "hidden");
  cfg.intermediate = need_int(c, "intermediate");
  cfg.layers = need_int(c, "layers");
  cfg.heads = need_int(c, "heads");
  cfg.kv_heads = need_int(c, "kvHeads");
  cfg.head_dim = need_int(c, "headDim");
  cfg.max_positions = need_int(c, "maxPositions");
  cfg.norm_eps = static_cast<float>(num(c, "normEps", 1e-5));
  cfg.rope_theta = num(c, "ropeTheta", 10000.0);
  const std::string scaling = c.Has("ropeScaling") ? c.Get("ropeScaling").ToString().Utf8Value() : "none";
  if (scaling == "linear") cfg.rope_scaling = model::RopeScaling::kLinear;
  else if (scaling == "llama3") cfg.rope_scaling = model::RopeScaling::kLlama3;
  else if (scaling == "longrope") cfg.rope_scaling = model::RopeScaling::kLongrope;
  else if (scaling != "none") throw Error(code::kUnsupported, "model spec: rope scaling '" + scaling + "' is not supported");
  auto floats = [&](const char* key) {
    std::vector<float> out;
    if (!c.Has(key)) return out;
    Napi::Value v = c.Get(key);
    if (!v.IsArray()) throw Error(code::kArgument, std::string("model spec: '") + key + "' must be an array of numbers");
    Napi::Array a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value e = a.Get(i);
      if (!e.IsNumber()) throw Error(code::kArgument, std::string("model spec: '") + key + "' must be an array of numbers");
      out.push_back(e.As<Napi::Number>().FloatValue());
    }
    return out;
  };
  cfg.rope_short_factor = floats("ropeShortFactor");
  cfg.rope_long_factor = floats("ropeLongFactor");
  cfg.rope_attention_factor = num(c, "ropeAttentionFactor", 1.0);
  cfg.rotary_dim = static_cast<int64_t>(num(c, "rotaryDim", 0));
  cfg.fused_proj = flag(c, "fusedProj", false);
  cfg.embed_scale = static_cast<float>(num(c, "embedScale", 1.0));
  cfg.norm_offset = static_cast<float>(num(c, "normOffset", 0.0));
  cfg.sandwich_norm = flag(c, "sandwichNorm", false);
  cfg.geglu = flag(c, "geglu", false);
  cfg.attn_scale = static_cast<float>(num(c, "attnScale", 0.0));
  cfg.rope_local_theta = num(c, "ropeLocalTheta", 10000.0);
  for (float v : floats("localLayers")) cfg.local_layers.push_back(v != 0.f ? 1 : 0);
  cfg.rope_factor = num(c, "ropeFactor", 1.0);
  cfg.rope_low_freq_factor = num(c, "ropeLowFreqFactor", 1.0);
  cfg.rope_high_freq_factor = num(c, "ropeHighFreqFactor", 4.0);
  cfg.rope_original_max_positions = num(c, "ropeOriginalMaxPositions", 8192.0);
  cfg.qkv_bias = flag(c, "qkvBias", false);
  cfg.o_bias = flag(c, "oBias", false);
  cfg.mlp_bias = flag(c, "mlpBias", false);
  cfg.qk_norm = flag(c, "qkNorm", false);
  cfg.tie_embeddings = flag(c, "tieEmbeddings", false);
  cfg.lm_head = flag(c, "lmHead", true);
  cfg.num_labels = static_cast<int64_t>(num(c, "numLabels", 0));
  cfg.prefix = c.Has("prefix") ? c.Get("prefix").ToString().Utf8Value() : "";
  cfg.weights_bf16 = flag(c, "weightsBf16", false);
  cfg.validate();
  return cfg;
}

struct LoadedModel {
  std::unique_ptr<model::Transformer> transformer;
  // Named LoRA adapters on the one frozen base; at most one is active (the
  // transformer's), none for the plain base (e.g. the PPO reference).
  std::map<std::string, std::unique_ptr<model::Adapter>> adapters;
  model::Adapter* active() const { return transformer->adapter(); }
  std::unique_ptr<model::FullGrads> full;    // full fine-tuning state, if enabled
  std::mutex busy;
};

class Model : public Napi::ObjectWrap<Model> {
 public:
  static Napi::FunctionReference* ctor;
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit Model(const Napi::CallbackInfo& info);
  std::shared_ptr<LoadedModel> model() const {
    if (!model_) throw Error(code::kArgument, "the model was disposed");
    return model_;
  }

 private:
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  // training
  Napi::Value EnableFullTraining(const Napi::CallbackInfo& info);
  Napi::Value CreateAdapter(const Napi::CallbackInfo& info);
  Napi::Value ForwardTrain(const Napi::CallbackInfo& info);
  Napi::Value Backward(const Napi::CallbackInfo& info);
  Napi::Value Loss(const Napi::CallbackInfo& info);
  Napi::Value EvalLoss(const Napi::CallbackInfo& info);
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info);
  Napi::Value AllReduceGrads(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value Trainable(const Napi::CallbackInfo& info);
  Napi::Value ReadTrainable(const Napi::CallbackInfo& info);
  Napi::Value SaveAdapter(const Napi::CallbackInfo& info);
  Napi::Value SaveWeights(const Napi::CallbackInfo& info);
  Napi::Value SetAdapter(const Napi::CallbackInfo& info);
  Napi::Value SaveOptimizerState(const Napi::CallbackInfo& info);
  Napi::Value WriteTrainable(const Napi::CallbackInfo& info);
  Napi::Value SetDropoutCounter(const Napi::CallbackInfo& info);
  Napi::Value LoadOptimizerState(const Napi::CallbackInfo& info);
  std::shared_ptr<LoadedModel> model_;
};
Napi::FunctionReference* Model::ctor = nullptr;

// ---- load
struct LoadBaton {
  model::Config cfg;
  model::TensorFiles files;
  std::vector<model::LoraMerge> loras;
  model::ScoreInit score_init;
  std::string device = "cpu";  // "cpu" | "cuda" | "auto" | "cpu-guarded"
  std::shared_ptr<LoadedModel> out;
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, LoadBaton b) : Napi::AsyncWorker(env), baton_(std::move(b)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      Backend& be = backend_for(baton_.device);  // before the load: an unusable device fails fast
      model::Weights w = model::load_weights(baton_.cfg, baton_.files, baton_.loras, baton_.score_init);
      baton_.out = std::make_shared<LoadedModel>();
      baton_.out->transformer = std::make_unique<model::Transformer>(baton_.cfg, std::move(w), be);
    } catch (const Error& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = code::kResource;
      SetError(std::string(kOutOfMemory) + " (loading the weights)");
    } catch (const std::length_error&) {
      code_ = code::kResource;
      SetError(std::string(kOutOfMemory) + " (loading the weights)");
    } catch (const std::exception& e) {
      code_ = code::kInternal;
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    auto* holder = new std::shared_ptr<LoadedModel>(baton_.out);
    Napi::Object obj = Model::ctor->New({Napi::External<std::shared_ptr<LoadedModel>>::New(
        env, holder, [](Napi::Env, std::shared_ptr<LoadedModel>* p) { delete p; })});
    deferred_.Resolve(obj);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(MakeJsError(Env(), code_, e.Message()).Value()); }

 private:
  LoadBaton baton_;
  Napi::Promise::Deferred deferred_;
  std::string code_ = code::kInternal;
};

// ---- forward
struct ForwardBaton {
  std::shared_ptr<LoadedModel> model;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  model::ForwardRequest req;
  bool train = false;  // keep activations for backward()
  std::vector<float> lm_grad;  // training forward: d loss / d logp [batch, seq-1], or empty
  std::vector<float> sft_mask;  // training forward: SFT's loss mask [batch, seq-1] instead of lm_grad, or empty
  model::ForwardResult out;
};

template <typename Baton, typename Run, typename Done>
class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, Baton b, Run run, Done done)
      : Napi::AsyncWorker(env), baton_(std::move(b)), run_(run), done_(done), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      std::lock_guard<std::mutex> engine_lock(default_engine().compute);
      std::lock_guard<std::mutex> model_lock(baton_.model->busy);
      run_(baton_);
    } catch (const Error& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = code::kResource;
      SetError(kOutOfMemory);
    } catch (const std::length_error&) {
      code_ = code::kResource;
      SetError(kOutOfMemory);
    } catch (const std::exception& e) {
      code_ = code::kInternal;
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(done_(Env(), baton_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(MakeJsError(Env(), code_, e.Message()).Value()); }

 private:
  Baton baton_;
  Run run_;
  Done done_;
  Napi::Promise::Deferred deferred_;
  std::string code_ = code::kInternal;
};

template <typename Baton, typename Run, typename Done>
Napi::Promise queue(Napi::Env env, Baton b, Run run, Done done) {
  auto* w = new Worker<Baton, Run, Done>(env, std::move(b), run, done);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Float32Array to_f32(Napi::Env env, const std::vector<float>& v) {
  Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
  return a;
}

Napi::Value forward_result(Napi::Env env, ForwardBaton& b) {
  Napi::Object r = Napi::Object::New(env);
  // download: false (training forward): the outputs stay in backend memory, for a loss call.
  if (b.req.want_logp && b.req.download) {
    r.Set("logp", to_f32(env, b.out.logp));
    r.Set("entropy", to_f32(env, b.out.entropy));
  }
  if (b.req.want_values && b.req.download) r.Set("values", to_f32(env, b.out.values));
  if (b.req.want_last_logits) r.Set("lastLogits", to_f32(env, b.out.last_logits));
  return r;
}

// ---- generate
struct GenerateBaton {
  std::shared_ptr<LoadedModel> model;
  model::GenerateRequest req;
  model::GenerateResult out;
};

}  // namespace

Napi::Object Model::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function f = DefineClass(env, "Model",
                                 {InstanceMethod("forward", &Model::Forward), InstanceMethod("generate", &Model::Generate),
                                  InstanceMethod("info", &Model::Info), InstanceMethod("dispose", &Model::Dispose),
                                  InstanceMethod("enableFullTraining", &Model::EnableFullTraining),
                                  InstanceMethod("createAdapter", &Model::CreateAdapter),
                                  InstanceMethod("forwardTrain", &Model::ForwardTrain), InstanceMethod("backward", &Model::Backward),
                                  InstanceMethod("loss", &Model::Loss), InstanceMethod("evalLoss", &Model::EvalLoss),
                                  InstanceMethod("zeroGrad", &Model::ZeroGrad),
                                  InstanceMethod("allReduceGrads", &Model::AllReduceGrads), InstanceMethod("step", &Model::Step),
                                  InstanceMethod("trainable", &Model::Trainable),
                                  InstanceMethod("readTrainable", &Model::ReadTrainable),
                                  InstanceMethod("saveAdapter", &Model::SaveAdapter),
                                  InstanceMethod("saveWeights", &Model::SaveWeights),
                                  InstanceMethod("setAdapter", &Model::SetAdapter),
                                  InstanceMethod("saveOptimizerState", &Model::SaveOptimizerState),
                                  InstanceMethod("writeTrainable", &Model::WriteTrainable),
                                  InstanceMethod("setDropoutCounter", &Model::SetDropoutCounter),
                                  InstanceMethod("loadOptimizerState", &Model::LoadOptimizerState)});
  ctor = new Napi::FunctionReference(Napi::Persistent(f));
  exports.Set("Model", f);
  return exports;
}

Model::Model(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Model>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    MakeJsError(info.Env(), code::kArgument, "use loadModel(spec) to create a Model").ThrowAsJavaScriptException();
    return;
  }
  model_ = *info[0].As<Napi::External<std::shared_ptr<LoadedModel>>>().Data();
}

void parse_forward(const Napi::Object& o, ForwardBaton& b) {
  const int64_t batch = static_cast<int64_t>(num(o, "batch", 0)), seq = static_cast<int64_t>(num(o, "seq", 0));
  if (batch <= 0 || seq <= 0) throw Error(code::kArgument, "forward: batch and seq must be positive");
  Napi::Value ids = o.Get("ids");
  if (!ids.IsTypedArray() || ids.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Error(code::kArgument, "forward: 'ids' must be an Int32Array");
  Napi::Int32Array ia = ids.As<Napi::Int32Array>();
  if (static_cast<int64_t>(ia.ElementLength()) != batch * seq)
    throw Error(code::kArgument, "forward: 'ids' has " + std::to_string(ia.ElementLength()) + " elements, expected batch*seq = " +
                                     std::to_string(batch * seq));
  b.ids.assign(ia.Data(), ia.Data() + ia.ElementLength());
  Napi::Value mask = o.Get("mask");
  if (!mask.IsUndefined() && !mask.IsNull()) {
    if (!mask.IsTypedArray() || mask.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Error(code::kArgument, "forward: 'mask' must be a Uint8Array");
    Napi::Uint8Array ma = mask.As<Napi::Uint8Array>();
    if (static_cast<int64_t>(ma.ElementLength()) != batch * seq) throw Error(code::kArgument, "forward: 'mask' must have batch*seq elements");
    b.mask.assign(ma.Data(), ma.Data() + ma.ElementLength());
  }
  b.req.batch = batch;
  b.req.seq = seq;
  b.req.want_logp = flag(o, "logp", true);
  b.req.want_values = flag(o, "values", false);
  b.req.want_last_logits = flag(o, "lastLogits", false);
  b.req.temperature = static_cast<float>(num(o, "temperature", 1.0));
  Napi::Value g = o.Get("lmGrad");
  if (!g.IsUndefined() && !g.IsNull()) {
    if (!g.IsTypedArray() || g.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Error(code::kArgument, "forward: 'lmGrad' must be a Float32Array");
    Napi::Float32Array ga = g.As<Napi::Float32Array>();
    if (static_cast<int64_t>(ga.ElementLength()) != batch * (seq - 1))
      throw Error(code::kArgument, "forward: 'lmGrad' has " + std::to_string(ga.ElementLength()) + " elements, expected batch*(seq-1) = " +
                                       std::to_string(batch * (seq - 1)));
    b.lm_grad.assign(ga.Data(), ga.Data() + ga.ElementLength());
  }
  Napi::Value sm = o.Get("sftMask");
  if (!sm.IsUndefined() && !sm.IsNull()) {
    if (!sm.IsTypedArray() || sm.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Error(code::kArgument, "forward: 'sftMask' must be a Float32Array");
    Napi::Float32Array ma = sm.As<Napi::Float32Array>();
    if (static_cast<int64_t>(ma.ElementLength()) != batch * (seq - 1))
      throw Error(code::kArgument, "forward: 'sftMask' has " + std::to_string(ma.ElementLength()) + " elements, expected batch*(seq-1) = " +
                                       std::to_string(batch * (seq - 1)));
    b.sft_mask.assign(ma.Data(), ma.Data() + ma.ElementLength());
    b.req.sft_denom = static_cast<float>(num(o, "sftDenom", 0));
    b.req.sft_label_smoothing = static_cast<float>(num(o, "sftLabelSmoothing", 0));
  }
  b.req.download = flag(o, "download", true);
}

// forward(req) and forwardTrain(req): the same request and result; the
// training forward also keeps the activations for backward().
Napi::Value queue_forward(const Napi::CallbackInfo& info, std::shared_ptr<LoadedModel> model, bool train) {
  ForwardBaton b;
  b.model = std::move(model);
  parse_forward(ArgObject(info, 0, "request"), b);
  b.train = train;
  if (!train && (!b.lm_grad.empty() || !b.sft_mask.empty()))
    throw Error(code::kArgument, "forward: 'lmGrad' and 'sftMask' are for the training forward only");
  return queue(
      info.Env(), std::move(b),
      [](ForwardBaton& b) {
        b.req.ids = b.ids.data();
        b.req.mask = b.mask.empty() ? nullptr : b.mask.data();
        b.req.lm_grad = b.lm_grad.empty() ? nullptr : b.lm_grad.data();
        b.req.sft_mask = b.sft_mask.empty() ? nullptr : b.sft_mask.data();
        b.out = b.train ? b.model->transformer->forward_train(b.req) : b.model->transformer->forward(b.req);
      },
      forward_result);
}

Napi::Value Model::Forward(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value { return queue_forward(info, model(), false); });
}

Napi::Value Model::ForwardTrain(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value { return queue_forward(info, model(), true); });
}


Napi::Value Model::Generate(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "request");
    GenerateBaton b;
    b.model = model();
    Napi::Value prompts = o.Get("prompts");
    if (!prompts.IsArray()) throw Error(code::kArgument, "generate: 'prompts' must be an array of Int32Array");
    Napi::Array pa = prompts.As<Napi::Array>();
    for (uint32_t i = 0; i < pa.Length(); ++i) {
      Napi::Value p = pa.Get(i);
      if (!p.IsTypedArray() || p.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        throw Error(code::kArgument, "generate: prompts[" + std::to_string(i) + "] must be an Int32Array");
      Napi::Int32Array ia = p.As<Napi::Int32Array>();
      b.req.prompts.emplace_back(ia.Data(), ia.Data() + ia.ElementLength());
    }
    b.req.max_new_tokens = static_cast<int64_t>(num(o, "maxNewTokens", 64));
    b.req.temperature = static_cast<float>(num(o, "temperature", 0));
    b.req.top_k = static_cast<int64_t>(num(o, "topK", 0));
    b.req.top_p = static_cast<float>(num(o, "topP", 1));
    b.req.seed = static_cast<uint64_t>(num(o, "seed", 0));
    if (b.req.top_p <= 0.f || b.req.top_p > 1.f) throw Error(code::kArgument, "generate: topP must be in (0, 1]");
    if (b.req.temperature < 0.f) throw Error(code::kArgument, "generate: temperature must be >= 0");
    Napi::Value eos = o.Get("eosIds");
    if (eos.IsArray()) {
      Napi::Array ea = eos.As<Napi::Array>();
      for (uint32_t i = 0; i < ea.Length(); ++i) b.req.eos_ids.push_back(ea.Get(i).As<Napi::Number>().Int32Value());
    }
    Napi::Value stops = o.Get("stopStrings");
    if (stops.IsArray()) {
      Napi::Array sa = stops.As<Napi::Array>();
      for (uint32_t i = 0; i < sa.Length(); ++i) b.req.stop_strings.push_back(sa.Get(i).ToString().Utf8Value());
    }
    Napi::Value tb = o.Get("tokenBytes");
    if (tb.IsArray()) {
      Napi::Array ta = tb.As<Napi::Array>();
      b.req.token_bytes.reserve(ta.Length());
      for (uint32_t i = 0; i < ta.Length(); ++i) {
        Napi::Value t = ta.Get(i);
        if (t.IsBuffer()) {
          Napi::Buffer<char> buf = t.As<Napi::Buffer<char>>();
          b.req.token_bytes.emplace_back(buf.Data(), buf.Length());
        } else {
          b.req.token_bytes.push_back(t.ToString().Utf8Value());
        }
      }
    }
    return queue(
        info.Env(), std::move(b),
        [](GenerateBaton& b) { b.out = model::generate(*b.model->transformer, b.model->transformer->backend(), b.req); },
        [](Napi::Env env, GenerateBaton& b) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          Napi::Array toks = Napi::Array::New(env), lps = Napi::Array::New(env), fin = Napi::Array::New(env);
          for (size_t i = 0; i < b.out.tokens.size(); ++i) {
            Napi::Int32Array t = Napi::Int32Array::New(env, b.out.tokens[i].size());
            if (!b.out.tokens[i].empty()) std::memcpy(t.Data(), b.out.tokens[i].data(), b.out.tokens[i].size() * 4);
            toks.Set(static_cast<uint32_t>(i), t);
            lps.Set(static_cast<uint32_t>(i), to_f32(env, b.out.logprobs[i]));
            fin.Set(static_cast<uint32_t>(i), b.out.finish[i]);
          }
          r.Set("tokens", toks);
          r.Set("logprobs", lps);
          r.Set("finish", fin);
          return r;
        });
  });
}

Napi::Value Model::Info(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    const model::Config& c = m->transformer->config();
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("parameters", static_cast<double>(m->transformer->weights().parameters));
    r.Set("weightsDtype", m->transformer->weights().bf16() ? "bf16" : "f32");
    r.Set("vocab", static_cast<double>(c.vocab));
    r.Set("hidden", static_cast<double>(c.hidden));
    r.Set("layers", static_cast<double>(c.layers));
    r.Set("hasLmHead", m->transformer->weights().lm_head != nullptr || m->transformer->weights().lm_head16 != nullptr);
    r.Set("hasScoreHead", m->transformer->weights().score != nullptr);
    r.Set("device", m->transformer->backend().name());
    r.Set("threads", m->transformer->backend().threads());
    Backend::TransferCounts tc;
    if (m->transformer->backend().transfer_counts(&tc)) {
      Napi::Object x = Napi::Object::New(info.Env());
      x.Set("uploads", static_cast<double>(tc.uploads));
      x.Set("uploadBytes", static_cast<double>(tc.upload_bytes));
      x.Set("downloads", static_cast<double>(tc.downloads));
      x.Set("downloadBytes", static_cast<double>(tc.download_bytes));
      r.Set("transfers", x);
    }
    return r;
  });
}

Napi::Value Model::Dispose(const Napi::CallbackInfo& info) {
  model_.reset();  // in-flight calls hold their own reference
  return info.Env().Undefined();
}


// ---------------------------------------------------------------- training

Napi::Value Model::EnableFullTraining(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    model::Weights& w = m->transformer->host_weights();
    if (w.bf16()) throw Error(code::kArgument, "full training needs fp32 weights (load with weightsDtype 'f32')");
    if (!m->adapters.empty()) throw Error(code::kArgument, "this model has LoRA adapters; full training uses a model without them");
    Backend& be = m->transformer->backend();
    m->full = std::make_unique<model::FullGrads>();
    m->full->slab.zeros(be, w.slab_floats);
    m->full->m.zeros(be, w.slab_floats);
    m->full->v.zeros(be, w.slab_floats);
    m->transformer->set_full_training(m->full.get());
    return info.Env().Undefined();
  });
}

Napi::Value Model::CreateAdapter(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "spec");
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    if (m->full) throw Error(code::kArgument, "this model is in full training mode");
    const model::Config& cfg = m->transformer->config();
    model::AdapterSpec spec;
    spec.name = o.Has("name") ? o.Get("name").ToString().Utf8Value() : "default";
    spec.r = static_cast<int64_t>(num(o, "r", 8));
    spec.alpha = static_cast<float>(num(o, "alpha", 16));
    spec.rslora = flag(o, "rslora", false);
    spec.dropout = static_cast<float>(num(o, "dropout", 0));
    spec.seed = static_cast<uint64_t>(num(o, "seed", 0));
    // head {rows, std, from: [file, storedName]}: a trainable score head owned by the adapter.
    Napi::Value head = o.Get("head");
    if (head.IsObject()) {
      Napi::Object h = head.As<Napi::Object>();
      spec.head_rows = static_cast<int64_t>(num(h, "rows", 1));
      spec.head_std = static_cast<float>(num(h, "std", 0.02));
      Napi::Value from = h.Get("from");
      if (from.IsArray()) {
        Napi::Array fa = from.As<Napi::Array>();
        spec.head_from = model::TensorLocation{fa.Get(0u).ToString().Utf8Value(), fa.Get(1u).ToString().Utf8Value()};
      }
    }
    Napi::Value mods = o.Get("modules");
    if (!mods.IsArray()) throw Error(code::kArgument, "adapter: 'modules' must be an array of {layer, name, mlp}");
    Napi::Array ma = mods.As<Napi::Array>();
    for (uint32_t i = 0; i < ma.Length(); ++i) {
      Napi::Object e = ma.Get(i).As<Napi::Object>();
      model::Proj p;
      const std::string name = e.Get("name").ToString().Utf8Value();
      if (!model::parse_proj(cfg, name, flag(e, "mlp", false), &p))
        throw Error(code::kArgument, "adapter: '" + name + "' is not a module of this architecture");
      spec.modules.emplace_back(static_cast<int64_t>(num(e, "layer", 0)), p);
      Napi::Value a = e.Get("a"), b = e.Get("b");
      if (a.IsArray() && b.IsArray()) {
        Napi::Array aa = a.As<Napi::Array>(), ba = b.As<Napi::Array>();
        spec.init_from.push_back({model::TensorLocation{aa.Get(0u).ToString().Utf8Value(), aa.Get(1u).ToString().Utf8Value()},
                                  model::TensorLocation{ba.Get(0u).ToString().Utf8Value(), ba.Get(1u).ToString().Utf8Value()}});
      } else if (!spec.init_from.empty()) {
        throw Error(code::kArgument, "adapter: give initial tensors for every module or for none");
      }
    }
    if (m->adapters.count(spec.name)) throw Error(code::kArgument, "adapter '" + spec.name + "' already exists");
    auto adapter = model::make_adapter(cfg, spec, m->transformer->backend());
    model::Adapter* a = adapter.get();
    m->adapters[spec.name] = std::move(adapter);
    m->transformer->set_adapter(a);
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("scale", a->scale);
    r.Set("parameters", static_cast<double>(a->params.size()));
    return r;
  });
}

namespace {
struct BackwardBaton {
  std::shared_ptr<LoadedModel> model;
  std::vector<float> dlogp, dentropy, dvalues;
};
struct StepBaton {
  std::shared_ptr<LoadedModel> model;
  model::OptimConfig cfg;
  model::StepResult out;
};
std::vector<float> opt_f32(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return {};
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Error(code::kArgument, std::string("'") + key + "' must be a Float32Array");
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}
}  // namespace

Napi::Value Model::Backward(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "grads");
    BackwardBaton b;
    b.model = model();
    b.dlogp = opt_f32(o, "dlogp");
    b.dentropy = opt_f32(o, "dentropy");
    b.dvalues = opt_f32(o, "dvalues");
    return queue(
        info.Env(), std::move(b),
        [](BackwardBaton& b) {
          b.model->transformer->backward(b.dlogp.empty() ? nullptr : b.dlogp.data(), b.dentropy.empty() ? nullptr : b.dentropy.data(),
                                         b.dvalues.empty() ? nullptr : b.dvalues.data());
        },
        [](Napi::Env env, BackwardBaton&) -> Napi::Value { return env.Undefined(); });
  });
}

// loss({kind, ...}) -> Promise<{loss, ...statistics}>: the loss kernels on
// the model's backend over the last training forward's outputs
// (model/objective.h); the gradients stay in backend memory for backward().
namespace {
struct LossBaton {
  std::shared_ptr<LoadedModel> model;
  model::ObjectiveRequest req;
  model::ObjectiveResult out;
};

// The request fields of the loss kinds (the kind itself is the caller's).
void parse_objective(const Napi::Object& o, model::ObjectiveRequest& r) {
  r.mask = opt_f32(o, "mask");
  Napi::Value denom = o.Get("denom");
  r.has_denom = !denom.IsUndefined() && !denom.IsNull();
  r.denom = static_cast<float>(num(o, "denom", 0));
  Napi::Value last = o.Get("last");
  if (!last.IsUndefined() && !last.IsNull()) {
    if (!last.IsTypedArray() || last.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Error(code::kArgument, "loss: 'last' must be an Int32Array");
    Napi::Int32Array la = last.As<Napi::Int32Array>();
    r.last.assign(la.Data(), la.Data() + la.ElementLength());
  }
  r.margin = opt_f32(o, "margin");
  r.target = opt_f32(o, "target");
  r.ref_chosen = opt_f32(o, "refChosen");
  r.ref_rejected = opt_f32(o, "refRejected");
  r.beta = static_cast<float>(num(o, "beta", 0.1));
  r.gamma = static_cast<float>(num(o, "gamma", 0));
  Napi::Value lt = o.Get("lossType");
  const std::string type = lt.IsUndefined() || lt.IsNull() ? "sigmoid" : lt.ToString().Utf8Value();
  if (type == "sigmoid") r.pref_loss = PrefLoss::kSigmoid;
  else if (type == "robust") r.pref_loss = PrefLoss::kRobust;
  else if (type == "hinge") r.pref_loss = PrefLoss::kHinge;
  else if (type == "ipo") r.pref_loss = PrefLoss::kIpo;
  else if (type == "simpo") r.pref_loss = PrefLoss::kSimpo;
  else if (type == "orpo") r.pref_loss = PrefLoss::kOrpo;
  else throw Error(code::kArgument, "loss: 'lossType' must be sigmoid, robust, hinge, ipo, simpo or orpo, got '" + type + "'");
  Napi::Value ln = o.Get("lengthNormalize");
  r.length_normalize = ln.IsBoolean() && ln.As<Napi::Boolean>().Value();
  r.ref_rows = opt_f32(o, "refLogps");
  r.desirable = opt_f32(o, "desirable");
  r.kl = static_cast<float>(num(o, "kl", 0));
  r.desirable_weight = static_cast<float>(num(o, "desirableWeight", 1));
  r.undesirable_weight = static_cast<float>(num(o, "undesirableWeight", 1));
  Napi::Value ls = o.Get("labelSmoothing");
  r.has_label_smoothing = !ls.IsUndefined() && !ls.IsNull();
  r.label_smoothing = static_cast<float>(num(o, "labelSmoothing", 0));
}
}  // namespace

Napi::Value Model::Loss(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "request");
    LossBaton b;
    b.model = model();
    model::ObjectiveRequest& r = b.req;
    const std::string kind = o.Get("kind").IsString() ? o.Get("kind").As<Napi::String>().Utf8Value() : "";
    if (kind == "sft") r.kind = model::ObjectiveKind::kSft;
    else if (kind == "pairwise") r.kind = model::ObjectiveKind::kPairwise;
    else if (kind == "dpo") r.kind = model::ObjectiveKind::kDpo;
    else if (kind == "kto") r.kind = model::ObjectiveKind::kKto;
    else if (kind == "ppo") r.kind = model::ObjectiveKind::kPpo;
    else throw Error(code::kArgument, "loss: 'kind' must be 'sft', 'pairwise', 'dpo', 'kto' or 'ppo', got '" + kind + "'");
    r.grad_scale = static_cast<float>(num(o, "gradScale", 1));
    parse_objective(o, r);
    r.old_logp = opt_f32(o, "oldLogp");
    r.advantages = opt_f32(o, "advantages");
    r.ref_logp = opt_f32(o, "refLogp");
    r.returns = opt_f32(o, "returns");
    r.old_values = opt_f32(o, "oldValues");
    r.clip_range = static_cast<float>(num(o, "clipRange", 0.2));
    r.clip_range_value = static_cast<float>(num(o, "clipRangeValue", 0.2));
    r.vf_coef = static_cast<float>(num(o, "vfCoef", 0.1));
    r.kl_coef = static_cast<float>(num(o, "klCoef", 0));
    r.ent_coef = static_cast<float>(num(o, "entCoef", 0));
    r.clip_range_high = static_cast<float>(num(o, "clipRangeHigh", -1));
    Napi::Value ktr = o.Get("klTimesRatio");
    r.kl_times_ratio = ktr.IsBoolean() && ktr.As<Napi::Boolean>().Value();
    Napi::Value seq = o.Get("sequence");
    r.sequence = seq.IsBoolean() && seq.As<Napi::Boolean>().Value();
    Napi::Value est = o.Get("klEstimator");
    const std::string e = est.IsUndefined() || est.IsNull() ? "k1" : est.ToString().Utf8Value();
    if (e == "k1") r.kl_estimator = KlEstimator::kK1;
    else if (e == "k2") r.kl_estimator = KlEstimator::kK2;
    else if (e == "k3") r.kl_estimator = KlEstimator::kK3;
    else throw Error(code::kArgument, "loss: 'klEstimator' must be 'k1', 'k2' or 'k3'");
    return queue(
        info.Env(), std::move(b), [](LossBaton& b) { b.out = model::run_objective(*b.model->transformer, b.req); },
        [](Napi::Env env, LossBaton& b) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          for (const auto& [k, v] : b.out.stats) r.Set(k, v);
          return r;
        });
  });
}

// evalLoss({kind, ...}) -> Promise<{loss, ...statistics}> or, for kind
// 'sequenceLogps', Promise<{sums: Float32Array}>: the loss kernels on the
// model's backend over the last inference forward's outputs, no gradients
// (model/objective.h, evaluation mode).
Napi::Value Model::EvalLoss(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "request");
    LossBaton b;
    b.model = model();
    model::ObjectiveRequest& r = b.req;
    r.eval = true;
    const std::string kind = o.Get("kind").IsString() ? o.Get("kind").As<Napi::String>().Utf8Value() : "";
    if (kind == "sft") r.kind = model::ObjectiveKind::kSft;
    else if (kind == "pairwise") r.kind = model::ObjectiveKind::kPairwise;
    else if (kind == "dpo") r.kind = model::ObjectiveKind::kDpo;
    else if (kind == "kto") r.kind = model::ObjectiveKind::kKto;
    else if (kind == "sequenceLogps") r.kind = model::ObjectiveKind::kSequenceLogps;
    else throw Error(code::kArgument, "evalLoss: 'kind' must be 'sft', 'pairwise', 'dpo', 'kto' or 'sequenceLogps', got '" + kind + "'");
    parse_objective(o, r);
    return queue(
        info.Env(), std::move(b), [](LossBaton& b) { b.out = model::run_objective(*b.model->transformer, b.req); },
        [](Napi::Env env, LossBaton& b) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          if (b.req.kind == model::ObjectiveKind::kSequenceLogps) r.Set("sums", to_f32(env, b.out.sums));
          for (const auto& [k, v] : b.out.stats) r.Set(k, v);
          return r;
        });
  });
}

Napi::Value Model::ZeroGrad(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    model::zero_grads(m->active(), m->full.get());
    return info.Env().Undefined();
  });
}

// allReduceGrads(): sums the active trainable set's gradient slab over the
// MPI world, in place (data-parallel training; docs/distributed.md). One
// collective over the whole slab, between the last backward and step().
Napi::Value Model::AllReduceGrads(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    model::Adapter* a = m->active();
    if (!a && !m->full) throw Error(code::kArgument, "allReduceGrads: nothing is trainable (no active adapter, no full training)");
    Buffer<float>& g = a ? a->grads : m->full->slab;
    Backend& be = *g.backend();
    if (std::string(be.name()) == "cpu") {
      mpi::all_reduce_sum(g.data(), g.size());  // host memory: reduced where it lies
    } else {
      std::vector<float> host = g.to_host();  // device memory goes through the host (NCCL is not built yet)
      mpi::all_reduce_sum(host.data(), static_cast<int64_t>(host.size()));
      be.upload(g.data(), host.data(), sizeof(float) * host.size());
    }
    return info.Env().Undefined();
  });
}

Napi::Value Model::Step(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "options");
    StepBaton b;
    b.model = model();
    if (!b.model->active() && !b.model->full) throw Error(code::kArgument, "step: nothing is trainable (no active adapter, no full training)");
    b.cfg.optimizer = o.Has("optimizer") ? o.Get("optimizer").ToString().Utf8Value() : "adamw";
    b.cfg.lr = static_cast<float>(num(o, "lr", 1e-4));
    b.cfg.beta1 = static_cast<float>(num(o, "beta1", 0.9));
    b.cfg.beta2 = static_cast<float>(num(o, "beta2", 0.999));
    b.cfg.eps = static_cast<float>(num(o, "eps", 1e-8));
    b.cfg.weight_decay = static_cast<float>(num(o, "weightDecay", 0));
    b.cfg.momentum = static_cast<float>(num(o, "momentum", 0));
    b.cfg.max_grad_norm = static_cast<float>(num(o, "maxGradNorm", 0));
    Napi::Value nd = o.Get("noDecay");
    if (nd.IsArray())
      for (uint32_t i = 0; i < nd.As<Napi::Array>().Length(); ++i) b.cfg.no_decay.push_back(nd.As<Napi::Array>().Get(i).ToString().Utf8Value());
    return queue(
        info.Env(), std::move(b),
        [](StepBaton& b) {
          LoadedModel& m = *b.model;
          model::Adapter* a = m.active();
          auto tensors = model::trainable_tensors(*m.transformer, a, a ? nullptr : m.full.get());
          int64_t* step = a ? &a->step : &m.full->step;
          b.out = model::optimizer_step(m.transformer->backend(), tensors, step, b.cfg, a ? a->sumsq : m.full->sumsq);
        },
        [](Napi::Env env, StepBaton& b) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          r.Set("gradNorm", b.out.grad_norm);
          r.Set("clipCoef", b.out.clip_coef);
          r.Set("step", static_cast<double>(b.out.step));
          r.Set("skipped", b.out.skipped);
          return r;
        });
  });
}

Napi::Value Model::Trainable(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    auto tensors = model::trainable_tensors(*m->transformer, m->active(), m->active() ? nullptr : m->full.get());
    Napi::Array out = Napi::Array::New(info.Env(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      Napi::Object e = Napi::Object::New(info.Env());
      e.Set("name", t.name);
      Napi::Array shape = Napi::Array::New(info.Env());
      // Report the Hugging Face layout.
      const int64_t r = t.transposed ? t.cols : t.rows, c = t.transposed ? t.rows : t.cols;
      shape.Set(0u, static_cast<double>(r));
      if (c != 1 || t.transposed) shape.Set(1u, static_cast<double>(c));
      e.Set("shape", shape);
      out.Set(static_cast<uint32_t>(i), e);
    }
    return out;
  });
}

// readTrainable(name, 'value' | 'grad') -> Float32Array in the Hugging Face layout.
Napi::Value Model::ReadTrainable(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string name = ArgString(info, 0, "name");
    const std::string which = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "value";
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    auto tensors = model::trainable_tensors(*m->transformer, m->active(), m->active() ? nullptr : m->full.get());
    for (const auto& t : tensors) {
      if (t.name != name) continue;
      const float* src_b = which == "grad" ? t.grad : which == "m" ? t.m : which == "v" ? t.v : t.param;
      std::vector<float> host(static_cast<size_t>(t.rows * t.cols));
      download_n(m->transformer->backend(), host.data(), src_b, t.rows * t.cols);
      const float* src = host.data();
      Napi::Float32Array out = Napi::Float32Array::New(info.Env(), static_cast<size_t>(t.rows * t.cols));
      if (!t.transposed) {
        std::memcpy(out.Data(), src, sizeof(float) * t.rows * t.cols);
      } else {
        for (int64_t i = 0; i < t.rows; ++i)
          for (int64_t j = 0; j < t.cols; ++j) out.Data()[j * t.rows + i] = src[i * t.cols + j];
      }
      return out;
    }
    throw Error(code::kArgument, "readTrainable: no trainable tensor named '" + name + "'");
  });
}

Napi::Value Model::SaveAdapter(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string path = ArgString(info, 0, "path");
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    if (!m->active()) throw Error(code::kArgument, "saveAdapter: no adapter is active");
    model::save_adapter_weights(m->transformer->config(), *m->active(), path);
    return info.Env().Undefined();
  });
}

// writeTrainable(name, values): overwrite one trainable tensor (Hugging Face layout).
Napi::Value Model::WriteTrainable(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string name = ArgString(info, 0, "name");
    if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Error(code::kArgument, "writeTrainable: values must be a Float32Array");
    Napi::Float32Array v = info[1].As<Napi::Float32Array>();
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    auto tensors = model::trainable_tensors(*m->transformer, m->active(), m->active() ? nullptr : m->full.get());
    for (const auto& t : tensors) {
      if (t.name != name) continue;
      if (static_cast<int64_t>(v.ElementLength()) != t.rows * t.cols) throw Error(code::kArgument, "writeTrainable: wrong size for '" + name + "'");
      std::vector<float> host(v.Data(), v.Data() + v.ElementLength());
      if (t.transposed)
        for (int64_t i = 0; i < t.rows; ++i)
          for (int64_t j = 0; j < t.cols; ++j) host[static_cast<size_t>(i * t.cols + j)] = v.Data()[j * t.rows + i];
      upload_n(m->transformer->backend(), t.param, host.data(), t.rows * t.cols);
      return info.Env().Undefined();
    }
    throw Error(code::kArgument, "writeTrainable: no trainable tensor named '" + name + "'");
  });
}

// setDropoutCounter(n): the next training forward draws its LoRA dropout
// masks as forward number n+1 did (tests: repeat a forward with one mask).
Napi::Value Model::SetDropoutCounter(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    if (!m->active()) throw Error(code::kArgument, "setDropoutCounter: no adapter is active");
    m->active()->forward_count = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
  });
}

// Optimizer state of the active trainable set as safetensors: for every
// trainable tensor T, "T.exp_avg" and "T.exp_avg_sq" (AdamW's m and v, or
// SGD's momentum buffer as exp_avg), with the step count in the metadata.
Napi::Value Model::SaveOptimizerState(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string path = ArgString(info, 0, "path");
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    model::Adapter* a = m->active();
    if (!a && !m->full) throw Error(code::kArgument, "saveOptimizerState: nothing is trainable");
    auto tensors = model::trainable_tensors(*m->transformer, a, a ? nullptr : m->full.get());
    std::vector<st::TensorToWrite> out;
    std::vector<std::vector<float>> host;  // the moments read back from the backend
    host.reserve(2 * tensors.size());
    for (const auto& t : tensors)
      for (int which = 0; which < 2; ++which) {
        host.emplace_back(static_cast<size_t>(t.rows * t.cols));
        download_n(m->transformer->backend(), host.back().data(), which == 0 ? t.m : t.v, t.rows * t.cols);
        st::TensorToWrite w;
        w.name = t.name + (which == 0 ? ".exp_avg" : ".exp_avg_sq");
        w.dtype = st::Dtype::F32;
        w.shape = {static_cast<uint64_t>(t.rows), static_cast<uint64_t>(t.cols)};
        w.data = host.back().data();
        w.data_len = sizeof(float) * static_cast<size_t>(t.rows * t.cols);
        out.push_back(std::move(w));
      }
    const int64_t step = a ? a->step : m->full->step;
    st::write_file(path, out, st::Metadata{{"format", "rlhf-native-optimizer"}, {"step", std::to_string(step)}});
    return info.Env().Undefined();
  });
}

Napi::Value Model::LoadOptimizerState(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string path = ArgString(info, 0, "path");
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    model::Adapter* a = m->active();
    if (!a && !m->full) throw Error(code::kArgument, "loadOptimizerState: nothing is trainable");
    auto tensors = model::trainable_tensors(*m->transformer, a, a ? nullptr : m->full.get());
    st::File f(path);
    int64_t step = -1;
    if (f.header().metadata)
      for (auto& [k, v] : *f.header().metadata)
        if (k == "step") step = std::stoll(v);
    if (step < 0) throw Error(code::kArgument, path + ": not an optimizer state file (no step in __metadata__)");
    for (const auto& t : tensors)
      for (int which = 0; which < 2; ++which) {
        const std::string name = t.name + (which == 0 ? ".exp_avg" : ".exp_avg_sq");
        const st::TensorInfo* ti = f.find(name);
        if (!ti) throw Error(code::kArgument, path + ": missing '" + name + "' (the checkpoint is for another set of trainable tensors)");
        if (ti->dtype != st::Dtype::F32 || ti->nbytes() != sizeof(float) * static_cast<uint64_t>(t.rows * t.cols))
          throw Error(code::kArgument, path + ": '" + name + "' has the wrong dtype or size");
        upload_n(m->transformer->backend(), which == 0 ? t.m : t.v, reinterpret_cast<const float*>(f.raw(*ti)), t.rows * t.cols);
      }
    if (a) a->step = step;
    else m->full->step = step;
    return info.Env().Undefined();
  });
}

// setAdapter(name | null): which adapter forward/generate/training use; null
// runs the frozen base alone (the PPO reference). Returns the adapter names.
Napi::Value Model::SetAdapter(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    if (info.Length() < 1 || info[0].IsNull() || info[0].IsUndefined()) {
      m->transformer->set_adapter(nullptr);
    } else {
      const std::string name = ArgString(info, 0, "name");
      auto it = m->adapters.find(name);
      if (it == m->adapters.end()) throw Error(code::kArgument, "no adapter named '" + name + "'");
      m->transformer->set_adapter(it->second.get());
    }
    Napi::Array names = Napi::Array::New(info.Env());
    uint32_t i = 0;
    for (auto& [n, a] : m->adapters) names.Set(i++, n);
    return names;
  });
}

// saveWeights(path): every base tensor in the Hugging Face layout (F32),
// e.g. after full fine-tuning or to write a merged model.
Napi::Value Model::SaveWeights(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string path = ArgString(info, 0, "path");
    auto m = model();
    std::lock_guard<std::mutex> lock(m->busy);
    m->transformer->weights_to_host();  // full fine-tuning trains the backend's copy
    model::Weights& w = m->transformer->host_weights();
    if (w.views.empty()) throw Error(code::kArgument, "saveWeights: the weights are not kept in fp32 (loaded with weightsDtype 'bf16')");
    std::vector<std::vector<float>> transposed;
    std::vector<st::TensorToWrite> out;
    transposed.reserve(w.views.size());
    for (const model::NamedView& v : w.views) {
      st::TensorToWrite t;
      t.name = v.name;
      t.dtype = st::Dtype::F32;
      const bool vec = v.cols == 1 && !v.transposed;
      if (v.transposed) {
        transposed.emplace_back(static_cast<size_t>(v.rows * v.cols));
        float* dst = transposed.back().data();
        for (int64_t i = 0; i < v.rows; ++i)
          for (int64_t j = 0; j < v.cols; ++j) dst[j * v.rows + i] = v.ptr[i * v.cols + j];
        t.data = dst;
        t.shape = {static_cast<uint64_t>(v.cols), static_cast<uint64_t>(v.rows)};
      } else {
        t.data = v.ptr;
        t.shape = vec ? std::vector<uint64_t>{static_cast<uint64_t>(v.rows)}
                      : std::vector<uint64_t>{static_cast<uint64_t>(v.rows), static_cast<uint64_t>(v.cols)};
      }
      t.data_len = sizeof(float) * static_cast<size_t>(v.rows * v.cols);
      out.push_back(std::move(t));
    }
    st::write_file(path, out, st::Metadata{{"format", "pt"}});
    return info.Env().Undefined();
  });
}

Napi::Object InitModel(Napi::Env env, Napi::Object exports) { return Model::Init(env, exports); }

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object spec = ArgObject(info, 0, "spec");
    LoadBaton b;
    Napi::Value cfg = spec.Get("config");
    if (!cfg.IsObject()) throw Error(code::kArgument, "model spec: 'config' must be an object");
    b.cfg = config_from(cfg.As<Napi::Object>());
    Napi::Value tensors = spec.Get("tensors");
    if (!tensors.IsObject()) throw Error(code::kArgument, "model spec: 'tensors' must map tensor names to [file, storedName]");
    Napi::Object t = tensors.As<Napi::Object>();
    Napi::Array names = t.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      const std::string name = names.Get(i).ToString().Utf8Value();
      Napi::Value loc = t.Get(name);
      if (!loc.IsArray() || loc.As<Napi::Array>().Length() != 2)
        throw Error(code::kArgument, "model spec: tensors['" + name + "'] must be [file, storedName]");
      Napi::Array la = loc.As<Napi::Array>();
      b.files.emplace(name, model::TensorLocation{la.Get(0u).ToString().Utf8Value(), la.Get(1u).ToString().Utf8Value()});
    }
    Napi::Value loras = spec.Get("loras");
    if (loras.IsArray()) {
      Napi::Array la = loras.As<Napi::Array>();
      auto loc = [](Napi::Value v, const std::string& what) {
        if (!v.IsArray() || v.As<Napi::Array>().Length() != 2) throw Error(code::kArgument, "model spec: lora " + what + " must be [file, storedName]");
        Napi::Array a = v.As<Napi::Array>();
        return model::TensorLocation{a.Get(0u).ToString().Utf8Value(), a.Get(1u).ToString().Utf8Value()};
      };
      for (uint32_t i = 0; i < la.Length(); ++i) {
        if (!la.Get(i).IsObject()) throw Error(code::kArgument, "model spec: loras[] must be objects");
        Napi::Object e = la.Get(i).As<Napi::Object>();
        model::LoraMerge m;
        m.target = e.Get("target").ToString().Utf8Value();
        m.a = loc(e.Get("a"), "a");
        m.b = loc(e.Get("b"), "b");
        m.scale = static_cast<float>(num(e, "scale", 1.0));
        b.loras.push_back(std::move(m));
      }
    }
    // scoreInit {std, seed}: make score.weight when the files lack it (a reward model from a causal LM).
    Napi::Value si = spec.Get("scoreInit");
    if (si.IsObject()) {
      Napi::Object so = si.As<Napi::Object>();
      b.score_init.enabled = true;
      b.score_init.std = static_cast<float>(num(so, "std", 0.02));
      b.score_init.seed = static_cast<uint64_t>(num(so, "seed", 0));
      if (!(b.score_init.std >= 0.f)) throw Error(code::kArgument, "model spec: scoreInit.std must be >= 0");
    }
    // device: "cpu" (default), "cuda", "auto" (a GPU when one is usable), or
    // "cpu-guarded" (CPU ops on memory the host cannot touch between them: the
    // GPU check's stand-in on machines without one).
    if (spec.Has("device") && !spec.Get("device").IsUndefined()) b.device = spec.Get("device").ToString().Utf8Value();
    if (b.device != "cpu" && b.device != "cuda" && b.device != "auto" && b.device != "cpu-guarded")
      throw Error(code::kArgument, "model spec: device must be 'cpu', 'cuda', 'auto' or 'cpu-guarded', got '" + b.device + "'");
    auto* w = new LoadWorker(info.Env(), std::move(b));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

}  // namespace rlhf::napi
