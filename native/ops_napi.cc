// runOp(name, args): runs one op of the CPU backend on caller-provided typed
// arrays, synchronously. It exists so the tests can check every op against a
// float64 reference written in the test; the model never calls ops this way.
// With args.device = 'cuda' the same op runs on the CUDA backend, the arrays
// copied to the device and back (ops_cuda_napi.cc).
#include <napi.h>

#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>

#include "cpu/gemm.h"
#include "cpu/vec.h"
#include "engine.h"
#include "napi_util.h"
#include "op_memory.h"

namespace rlhf::napi {

// ops_cuda_napi.cc: runs `run` on the named device ("cuda", or "cpu-copy":
// the CPU backend on copies of the arrays, the same copy-in/copy-out path).
Napi::Value RunOpOnDevice(Napi::Env env, const std::string& device, const std::string& op, Napi::Object args,
                          const std::function<void(Backend&, ArgMemory*)>& run);

namespace {

struct Fields {
  Napi::Object o;
  std::string op;
  ArgMemory* mem = nullptr;  // null: the backend reads the arrays in place
  void* where(const Napi::TypedArray& a) const {
    uint8_t* base = static_cast<uint8_t*>(a.ArrayBuffer().Data());
    return mem ? mem->map(base, a.ArrayBuffer().ByteLength(), a.ByteOffset()) : base + a.ByteOffset();
  }
  Napi::TypedArray arr(const char* key, napi_typedarray_type type, bool optional) const {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) {
      if (optional) return Napi::TypedArray();
      throw Error(code::kArgument, op + ": '" + key + "' is required");
    }
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
      throw Error(code::kArgument, op + ": '" + key + "' has the wrong typed-array type");
    return v.As<Napi::TypedArray>();
  }
  float* f32(const char* key, bool optional = false) const {
    Napi::TypedArray a = arr(key, napi_float32_array, optional);
    return a.IsEmpty() ? nullptr : static_cast<float*>(where(a));
  }
  int32_t* i32(const char* key, bool optional = false) const {
    Napi::TypedArray a = arr(key, napi_int32_array, optional);
    return a.IsEmpty() ? nullptr : static_cast<int32_t*>(where(a));
  }
  uint8_t* u8(const char* key, bool optional = false) const {
    Napi::TypedArray a = arr(key, napi_uint8_array, optional);
    return a.IsEmpty() ? nullptr : static_cast<uint8_t*>(where(a));
  }
  uint16_t* u16(const char* key, bool optional = false) const {
    Napi::TypedArray a = arr(key, napi_uint16_array, optional);
    return a.IsEmpty() ? nullptr : static_cast<uint16_t*>(where(a));
  }
  int64_t i(const char* key, int64_t dflt = 0) const {
    Napi::Value v = o.Get(key);
    return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : dflt;
  }
  double d(const char* key, double dflt = 0) const {
    Napi::Value v = o.Get(key);
    return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
  }
  bool b(const char* key) const { return o.Get(key).ToBoolean().Value(); }
  bool b(const char* key, bool dflt) const {
    Napi::Value v = o.Get(key);
    return v.IsUndefined() || v.IsNull() ? dflt : v.ToBoolean().Value();
  }
};

using Runner = std::function<void(Backend&, const Fields&)>;

// An fp32 array of at least `count` elements (the loss and optimizer runners
// check lengths, since a short array would be read past its end).
float* f32n(const Fields& f, const char* key, int64_t count, bool optional = false) {
  Napi::TypedArray a = f.arr(key, napi_float32_array, optional);
  if (a.IsEmpty()) return nullptr;
  if (count < 0 || static_cast<int64_t>(a.ElementLength()) < count)
    throw Error(code::kArgument, f.op + ": '" + key + "' has " + std::to_string(a.ElementLength()) + " elements, needs " +
                                     std::to_string(count));
  return static_cast<float*>(f.where(a));
}
double* f64n(const Fields& f, const char* key, int64_t count, bool optional = false) {
  Napi::TypedArray a = f.arr(key, napi_float64_array, optional);
  if (a.IsEmpty()) return nullptr;
  if (static_cast<int64_t>(a.ElementLength()) < count)
    throw Error(code::kArgument, f.op + ": '" + key + "' needs " + std::to_string(count) + " elements");
  return static_cast<double*>(f.where(a));
}

const std::unordered_map<std::string, Runner>& runners() {
  static const std::unordered_map<std::string, Runner> table = {
      {"gemm",
       [](Backend& be, const Fields& f) {
         GemmOp op;
         op.trans_a = f.b("transA"), op.trans_b = f.b("transB"), op.m = f.i("m"), op.n = f.i("n"), op.k = f.i("k");
         op.a = f.f32("a"), op.lda = f.i("lda"), op.b = f.f32("b", true), op.ldb = f.i("ldb"), op.c = f.f32("c"), op.ldc = f.i("ldc");
         op.b_bf16 = f.u16("bBf16", true);
         const bool has_b = f.o.Get("b").IsTypedArray(), has_b16 = f.o.Get("bBf16").IsTypedArray();
         if (has_b == has_b16) throw Error(code::kArgument, "gemm: give exactly one of 'b' and 'bBf16'");
         op.bias = f.f32("bias", true), op.accumulate = f.b("accumulate");
         be.gemm(op);
       }},
      {"lora",
       [](Backend& be, const Fields& f) {
         LoraOp op;
         op.n = f.i("n"), op.in = f.i("in"), op.out = f.i("out"), op.r = f.i("r");
         if (op.n < 0 || op.in <= 0 || op.out <= 0 || op.r <= 0) throw Error(code::kArgument, "lora: n >= 0 and in, out, r > 0");
         op.ldx = f.i("ldx", op.in), op.ldw = f.i("ldw", op.in), op.ldy = f.i("ldy", op.out);
         if (op.ldx < op.in || op.ldw < op.in || op.ldy < op.out) throw Error(code::kArgument, "lora: a leading dimension is smaller than its row");
         const int64_t xs = op.n ? (op.n - 1) * op.ldx + op.in : 0;
         op.x = f32n(f, "x", xs), op.x_lora = f32n(f, "xLora", xs, true);
         op.w = f32n(f, "w", (op.out - 1) * op.ldw + op.in, true), op.w_bf16 = f.u16("wBf16", true);
         if (!op.w == !op.w_bf16) throw Error(code::kArgument, "lora: give exactly one of 'w' and 'wBf16'");
         op.bias = f32n(f, "bias", op.out, true), op.a = f32n(f, "a", op.r * op.in), op.b = f32n(f, "b", op.out * op.r);
         op.scale = static_cast<float>(f.d("scale", 1));
         op.u = f32n(f, "u", op.n * op.r), op.y = f32n(f, "y", op.n ? (op.n - 1) * op.ldy + op.out : 0), op.accumulate = f.b("accumulate");
         be.lora(op);
       }},
      {"lora_backward",
       [](Backend& be, const Fields& f) {
         LoraBackwardOp op;
         op.n = f.i("n"), op.in = f.i("in"), op.out = f.i("out"), op.r = f.i("r");
         if (op.n < 0 || op.in <= 0 || op.out <= 0 || op.r <= 0) throw Error(code::kArgument, "lora_backward: n >= 0 and in, out, r > 0");
         op.lddy = f.i("lddy", op.out), op.ldx = f.i("ldx", op.in), op.lddx = f.i("lddx", op.in);
         if (op.lddy < op.out || op.ldx < op.in || op.lddx < op.in) throw Error(code::kArgument, "lora_backward: a leading dimension is smaller than its row");
         const int64_t rows = op.n ? op.n - 1 : 0;
         op.dy = f32n(f, "dy", rows * op.lddy + op.out), op.x_lora = f32n(f, "xLora", rows * op.ldx + op.in);
         op.u = f32n(f, "u", op.n * op.r), op.a = f32n(f, "a", op.r * op.in), op.b = f32n(f, "b", op.out * op.r);
         op.scale = static_cast<float>(f.d("scale", 1));
         op.da = f32n(f, "da", op.r * op.in), op.db = f32n(f, "db", op.out * op.r), op.du = f32n(f, "du", op.n * op.r);
         op.dx = f32n(f, "dx", rows * op.lddx + op.in), op.accumulate_dx = f.b("accumulateDx", true);
         be.lora_backward(op);
       }},
      {"logits_xent",
       [](Backend& be, const Fields& f) {
         LogitsXentOp op;
         op.n = f.i("n"), op.vocab = f.i("vocab"), op.ld = f.i("ld", op.vocab);
         if (op.n < 0 || op.vocab <= 0 || op.ld < op.vocab) throw Error(code::kArgument, "logits_xent: n >= 0, vocab > 0, ld >= vocab");
         op.z = f32n(f, "z", op.n ? (op.n - 1) * op.ld + op.vocab : 0);
         Napi::TypedArray ta = f.arr("targets", napi_int32_array, false);
         if (static_cast<int64_t>(ta.ElementLength()) < op.n) throw Error(code::kArgument, "logits_xent: 'targets' needs n elements");
         const Napi::Int32Array tv = ta.As<Napi::Int32Array>();  // checked on the caller's array (the op may get a device copy)
         for (int64_t i = 0; i < op.n; ++i)
           if (tv[static_cast<size_t>(i)] >= op.vocab)
             throw Error(code::kArgument, "logits_xent: target " + std::to_string(tv[static_cast<size_t>(i)]) + " is outside the vocabulary");
         op.targets = f.i32("targets");
         op.dlogp = f32n(f, "dlogp", op.n), op.inv_temperature = static_cast<float>(f.d("invTemperature", 1));
         op.logp = f32n(f, "logp", op.n), op.entropy = f32n(f, "entropy", op.n, true), op.lse = f32n(f, "lse", op.n, true);
         op.dmean_logp = f32n(f, "dmeanLogp", op.n, true), op.mean_logp = f32n(f, "meanLogp", op.n, true);
         be.logits_xent(op);
       }},
      {"embedding",
       [](Backend& be, const Fields& f) {
         EmbeddingOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.rows = f.i("rows"), op.ids = f.i32("ids"), op.table = f.f32("table");
         op.positions = f.i32("positions", true), op.pos_table = f.f32("posTable", true), op.out = f.f32("out");
         be.embedding(op);
       }},
      {"rmsnorm",
       [](Backend& be, const Fields& f) {
         RmsNormOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.eps = static_cast<float>(f.d("eps", 1e-5)), op.residual = f.f32("residual");
         op.delta = f.f32("delta", true), op.weight = f.f32("weight"), op.out = f.f32("out"), op.rstd = f.f32("rstd", true);
         op.weight_offset = static_cast<float>(f.d("weightOffset", 0));
         be.rmsnorm(op);
       }},
      {"layernorm",
       [](Backend& be, const Fields& f) {
         LayerNormOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.eps = static_cast<float>(f.d("eps", 1e-5)), op.residual = f.f32("residual");
         op.delta = f.f32("delta", true), op.weight = f.f32("weight"), op.bias = f.f32("bias"), op.out = f.f32("out");
         op.mean = f.f32("mean", true), op.rstd = f.f32("rstd", true);
         be.layernorm(op);
       }},
      {"rope",
       [](Backend& be, const Fields& f) {
         RopeOp op;
         op.n = f.i("n"), op.heads = f.i("heads"), op.head_dim = f.i("headDim"), op.rotary_dim = f.i("rotaryDim"), op.x = f.f32("x"), op.ld = f.i("ld");
         op.positions = f.i32("positions"), op.cos = f.f32("cos"), op.sin = f.f32("sin"), op.inverse = f.b("inverse");
         be.rope(op);
       }},
      {"attention",
       [](Backend& be, const Fields& f) {
         AttentionOp op;
         op.batch = f.i("batch"), op.seq = f.i("seq"), op.heads = f.i("heads"), op.kv_heads = f.i("kvHeads");
         op.head_dim = f.i("headDim"), op.scale = static_cast<float>(f.d("scale", 1)), op.q = f.f32("q"), op.k = f.f32("k");
         op.v = f.f32("v"), op.ldq = f.i("ldq"), op.ldk = f.i("ldk"), op.ldv = f.i("ldv"), op.mask = f.u8("mask", true);
         op.out = f.f32("out"), op.ldo = f.i("ldo"), op.lse = f.f32("lse", true);
         be.attention(op);
       }},
      {"kv_attention",
       [](Backend& be, const Fields& f) {
         KvAttentionOp op;
         op.batch = f.i("batch"), op.heads = f.i("heads"), op.kv_heads = f.i("kvHeads"), op.head_dim = f.i("headDim");
         op.capacity = f.i("capacity"), op.scale = static_cast<float>(f.d("scale", 1)), op.q = f.f32("q"), op.ldq = f.i("ldq");
         op.k_cache = f.f32("kCache"), op.v_cache = f.f32("vCache"), op.length = f.i32("length");
         op.cache_mask = f.u8("cacheMask", true), op.out = f.f32("out"), op.ldo = f.i("ldo");
         be.kv_attention(op);
       }},
      {"swiglu",
       [](Backend& be, const Fields& f) {
         SwigluOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.gate = f.f32("gate"), op.up = f.f32("up"), op.ld_in = f.i("ldIn");
         op.out = f.f32("out"), op.ld_out = f.i("ldOut"), op.gelu = f.b("gelu");
         be.swiglu(op);
       }},
      {"gelu",
       [](Backend& be, const Fields& f) {
         GeluOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.x = f.f32("x"), op.ld_in = f.i("ldIn"), op.out = f.f32("out"), op.ld_out = f.i("ldOut");
         be.gelu(op);
       }},
      {"add",
       [](Backend& be, const Fields& f) {
         AddOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.x = f.f32("x"), op.y = f.f32("y");
         be.add(op);
       }},
      {"lm_head_logp",
       [](Backend& be, const Fields& f) {
         LmHeadLogpOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.vocab = f.i("vocab"), op.hidden = f.f32("hidden"), op.weight = f.f32("weight");
         op.targets = f.i32("targets"), op.logp = f.f32("logp"), op.entropy = f.f32("entropy", true), op.lse = f.f32("lse", true);
         op.mean_logp = f.f32("meanLogp", true);
         op.inv_temperature = static_cast<float>(f.d("invTemperature", 1));
         be.lm_head_logp(op);
       }},
      {"value_head",
       [](Backend& be, const Fields& f) {
         ValueHeadOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.hidden = f.f32("hidden"), op.weight = f.f32("weight");
         op.bias = static_cast<float>(f.d("bias", 0)), op.value = f.f32("value");
         be.value_head(op);
       }},
      {"sample",
       [](Backend& be, const Fields& f) {
         SampleOp op;
         op.n = f.i("n"), op.vocab = f.i("vocab"), op.logits = f.f32("logits"), op.ld = f.i("ld");
         op.temperature = static_cast<float>(f.d("temperature", 1)), op.top_k = f.i("topK"), op.top_p = static_cast<float>(f.d("topP", 1));
         Napi::TypedArray seeds = f.arr("seeds", napi_biguint64_array, false);
         op.seeds = static_cast<const uint64_t*>(f.where(seeds));
         op.step = static_cast<uint64_t>(f.i("step")), op.out = f.i32("out"), op.out_logp = f.f32("outLogp", true);
         be.sample(op);
       }},
      {"sft_loss",
       [](Backend& be, const Fields& f) {
         SftLossOp op;
         op.n = f.i("n");
         op.logp = f32n(f, "logp", op.n), op.mask = f32n(f, "mask", op.n, true);
         op.denom = static_cast<float>(f.d("denom", 0)), op.grad_scale = static_cast<float>(f.d("gradScale", 1));
         op.label_smoothing = static_cast<float>(f.d("labelSmoothing", 0));
         const bool smooth = op.label_smoothing != 0.f;
         op.mean_logp = f32n(f, "meanLogp", op.n, !smooth);
         op.loss = f32n(f, "loss", 1), op.dlogp = f32n(f, "dlogp", op.n, true), op.dmean_logp = f32n(f, "dmeanLogp", op.n, true);
         op.stats = f32n(f, "stats", smooth ? SftLossOp::kStatCount : SftLossOp::kSmoothSum, true);
         be.sft_loss(op);
       }},
      {"pairwise_loss",
       [](Backend& be, const Fields& f) {
         PairwiseLossOp op;
         op.b = f.i("b");
         op.chosen = f32n(f, "chosen", op.b), op.rejected = f32n(f, "rejected", op.b), op.margin = f32n(f, "margin", op.b, true);
         op.target = f32n(f, "target", op.b, true);
         op.grad_scale = static_cast<float>(f.d("gradScale", 1)), op.loss = f32n(f, "loss", 1);
         op.dchosen = f32n(f, "dchosen", op.b, true), op.drejected = f32n(f, "drejected", op.b, true);
         op.stats = f32n(f, "stats", PairwiseLossOp::kStatCount, true);
         be.pairwise_loss(op);
       }},
      {"ppo_loss",
       [](Backend& be, const Fields& f) {
         PpoLossOp op;
         const int64_t n = op.n = f.i("n");
         op.logp = f32n(f, "logp", n), op.old_logp = f32n(f, "oldLogp", n), op.advantages = f32n(f, "advantages", n);
         op.returns = f32n(f, "returns", n, true), op.values = f32n(f, "values", n, true);
         op.old_values = f32n(f, "oldValues", n, true), op.ref_logp = f32n(f, "refLogp", n, true);
         op.entropy = f32n(f, "entropy", n, true), op.mask = f32n(f, "mask", n, true);
         if ((op.values != nullptr) != (op.returns != nullptr) || (op.values != nullptr) != (op.old_values != nullptr))
           throw Error(code::kArgument, "ppo_loss: 'values', 'oldValues' and 'returns' go together");
         op.clip_range = static_cast<float>(f.d("clipRange", 0.2)), op.clip_range_value = static_cast<float>(f.d("clipRangeValue", 0.2));
         op.vf_coef = static_cast<float>(f.d("vfCoef", 0.1)), op.kl_coef = static_cast<float>(f.d("klCoef", 0));
         op.ent_coef = static_cast<float>(f.d("entCoef", 0)), op.grad_scale = static_cast<float>(f.d("gradScale", 1));
         op.clip_range_high = static_cast<float>(f.d("clipRangeHigh", -1)), op.denom = f.d("denom", 0);
         op.kl_times_ratio = f.b("klTimesRatio", false);  // a boolean, as the loss API takes it (or 0/1)
         Napi::Value est = f.o.Get("klEstimator");
         const std::string e = est.IsString() ? est.As<Napi::String>().Utf8Value() : est.IsNumber() ? "k" + std::to_string(f.i("klEstimator")) : "k1";
         if (e == "k1") op.kl_estimator = KlEstimator::kK1;
         else if (e == "k2") op.kl_estimator = KlEstimator::kK2;
         else if (e == "k3") op.kl_estimator = KlEstimator::kK3;
         else throw Error(code::kArgument, "ppo_loss: 'klEstimator' must be k1, k2 or k3");
         op.loss = f32n(f, "loss", 1), op.dlogp = f32n(f, "dlogp", n, true), op.dvalues = f32n(f, "dvalues", n, true);
         op.dentropy = f32n(f, "dentropy", n, true), op.stats = f32n(f, "stats", PpoLossOp::kStatCount, true);
         be.ppo_loss(op);
       }},
      {"dpo_loss",
       [](Backend& be, const Fields& f) {
         DpoLossOp op;
         const int64_t b = op.b = f.i("b");
         const int32_t type = static_cast<int32_t>(f.d("lossType", 0));  // PrefLoss's order
         if (type < 0 || type > static_cast<int32_t>(PrefLoss::kOrpo)) throw Error(code::kArgument, "dpo_loss: 'lossType' must be 0..5 (sigmoid robust hinge ipo simpo orpo)");
         op.loss_type = static_cast<PrefLoss>(type);
         op.policy_chosen = f32n(f, "policyChosen", b), op.policy_rejected = f32n(f, "policyRejected", b);
         op.ref_chosen = f32n(f, "refChosen", b, true), op.ref_rejected = f32n(f, "refRejected", b, true);
         op.len_chosen = f32n(f, "lenChosen", b, true), op.len_rejected = f32n(f, "lenRejected", b, true);
         if (op.loss_type == PrefLoss::kOrpo && !op.len_chosen) throw Error(code::kArgument, "dpo_loss: ORPO needs 'lenChosen'");
         op.gamma = static_cast<float>(f.d("gamma", 0));
         op.beta = static_cast<float>(f.d("beta", 0.1)), op.label_smoothing = static_cast<float>(f.d("labelSmoothing", 0));
         op.grad_scale = static_cast<float>(f.d("gradScale", 1)), op.loss = f32n(f, "loss", 1);
         op.dpolicy_chosen = f32n(f, "dpolicyChosen", b, true), op.dpolicy_rejected = f32n(f, "dpolicyRejected", b, true);
         op.stats = f32n(f, "stats", DpoLossOp::kStatCount, true);
         be.dpo_loss(op);
       }},
      {"kto_loss",
       [](Backend& be, const Fields& f) {
         KtoLossOp op;
         const int64_t b = op.b = f.i("b");
         op.policy = f32n(f, "policy", b), op.ref = f32n(f, "ref", b), op.desirable = f32n(f, "desirable", b);
         op.kl = static_cast<float>(f.d("kl", 0)), op.beta = static_cast<float>(f.d("beta", 0.1));
         op.desirable_weight = static_cast<float>(f.d("desirableWeight", 1)), op.undesirable_weight = static_cast<float>(f.d("undesirableWeight", 1));
         op.grad_scale = static_cast<float>(f.d("gradScale", 1)), op.loss = f32n(f, "loss", 1);
         op.dpolicy = f32n(f, "dpolicy", b, true), op.stats = f32n(f, "stats", KtoLossOp::kStatCount, true);
         be.kto_loss(op);
       }},
      {"row_dot",
       [](Backend& be, const Fields& f) {
         RowDotOp op;
         op.rows = f.i("rows"), op.cols = f.i("cols");
         if (op.rows < 0 || op.cols < 0) throw Error(code::kArgument, "row_dot: rows and cols must be >= 0");
         op.x = f32n(f, "x", op.rows * op.cols), op.w = f32n(f, "w", op.rows * op.cols), op.out = f32n(f, "out", op.rows);
         be.row_dot(op);
       }},
      {"row_dot_backward",
       [](Backend& be, const Fields& f) {
         RowDotBackwardOp op;
         op.rows = f.i("rows"), op.cols = f.i("cols");
         if (op.rows < 0 || op.cols < 0) throw Error(code::kArgument, "row_dot_backward: rows and cols must be >= 0");
         op.w = f32n(f, "w", op.rows * op.cols), op.dout = f32n(f, "dout", op.rows), op.dx = f32n(f, "dx", op.rows * op.cols);
         be.row_dot_backward(op);
       }},
      {"adamw",
       [](Backend& be, const Fields& f) {
         AdamWOp op;
         const int64_t n = op.n = f.i("n");
         op.param = f32n(f, "param", n), op.grad = f32n(f, "grad", n), op.m = f32n(f, "m", n), op.v = f32n(f, "v", n);
         op.lr = static_cast<float>(f.d("lr", 1e-3)), op.beta1 = static_cast<float>(f.d("beta1", 0.9));
         op.beta2 = static_cast<float>(f.d("beta2", 0.999)), op.eps = static_cast<float>(f.d("eps", 1e-8));
         op.weight_decay = static_cast<float>(f.d("weightDecay", 1e-2)), op.step = f.i("step", 1);
         op.grad_scale = static_cast<float>(f.d("gradScale", 1));
         if (op.step < 1) throw Error(code::kArgument, "adamw: 'step' counts from 1");
         be.adamw(op);
       }},
      {"sgd",
       [](Backend& be, const Fields& f) {
         SgdOp op;
         const int64_t n = op.n = f.i("n");
         op.param = f32n(f, "param", n), op.grad = f32n(f, "grad", n);
         op.lr = static_cast<float>(f.d("lr", 1e-3)), op.momentum = static_cast<float>(f.d("momentum", 0));
         op.dampening = static_cast<float>(f.d("dampening", 0)), op.weight_decay = static_cast<float>(f.d("weightDecay", 0));
         op.momentum_buf = f32n(f, "momentumBuf", n, op.momentum == 0.f);
         op.step = f.i("step", 1), op.grad_scale = static_cast<float>(f.d("gradScale", 1));
         be.sgd(op);
       }},
      {"grad_norm",
       [](Backend& be, const Fields& f) {
         GradNormOp op;
         op.n = f.i("n"), op.grad = f32n(f, "grad", op.n), op.out = f64n(f, "out", 1);
         be.grad_norm(op);
       }},
      {"scale",
       [](Backend& be, const Fields& f) {
         ScaleOp op;
         op.n = f.i("n"), op.x = f32n(f, "x", op.n), op.factor = static_cast<float>(f.d("factor", 1));
         op.sumsq = f64n(f, "sumsq", 1, true), op.max_norm = static_cast<float>(f.d("maxNorm", 1));
         be.scale(op);
       }},
      {"bias_grad",
       [](Backend& be, const Fields& f) {
         BiasGradOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.dy = f.f32("dy"), op.ld = f.i("ld", f.i("dim")), op.db = f.f32("db");
         be.bias_grad(op);
       }},
      {"embedding_backward",
       [](Backend& be, const Fields& f) {
         EmbeddingBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.rows = f.i("rows"), op.ids = f.i32("ids"), op.dout = f.f32("dout");
         op.dtable = f.f32("dtable", true), op.positions = f.i32("positions", true), op.dpos_table = f.f32("dposTable", true);
         be.embedding_backward(op);
       }},
      {"rmsnorm_backward",
       [](Backend& be, const Fields& f) {
         RmsNormBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.x = f.f32("x"), op.weight = f.f32("weight"), op.rstd = f.f32("rstd");
         op.dout = f.f32("dout"), op.dx = f.f32("dx"), op.dweight = f.f32("dweight", true);
         op.weight_offset = static_cast<float>(f.d("weightOffset", 0));
         be.rmsnorm_backward(op);
       }},
      {"layernorm_backward",
       [](Backend& be, const Fields& f) {
         LayerNormBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.x = f.f32("x"), op.weight = f.f32("weight"), op.mean = f.f32("mean");
         op.rstd = f.f32("rstd"), op.dout = f.f32("dout"), op.dx = f.f32("dx"), op.dweight = f.f32("dweight", true);
         op.dbias = f.f32("dbias", true);
         be.layernorm_backward(op);
       }},
      {"attention_backward",
       [](Backend& be, const Fields& f) {
         AttentionBackwardOp op;
         op.batch = f.i("batch"), op.seq = f.i("seq"), op.heads = f.i("heads"), op.kv_heads = f.i("kvHeads");
         op.head_dim = f.i("headDim"), op.scale = static_cast<float>(f.d("scale", 1)), op.q = f.f32("q"), op.k = f.f32("k");
         op.v = f.f32("v"), op.ldq = f.i("ldq"), op.ldk = f.i("ldk"), op.ldv = f.i("ldv"), op.mask = f.u8("mask", true);
         op.out = f.f32("out"), op.dout = f.f32("dout"), op.ldo = f.i("ldo"), op.lse = f.f32("lse");
         op.dq = f.f32("dq"), op.dk = f.f32("dk"), op.dv = f.f32("dv");
         be.attention_backward(op);
       }},
      {"swiglu_backward",
       [](Backend& be, const Fields& f) {
         SwigluBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.gate = f.f32("gate"), op.up = f.f32("up"), op.ld_in = f.i("ldIn");
         op.dout = f.f32("dout"), op.ld_out = f.i("ldOut"), op.dgate = f.f32("dgate"), op.dup = f.f32("dup"), op.gelu = f.b("gelu");
         be.swiglu_backward(op);
       }},
      {"gelu_backward",
       [](Backend& be, const Fields& f) {
         GeluBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.x = f.f32("x"), op.ld_in = f.i("ldIn"), op.dout = f.f32("dout");
         op.ld_out = f.i("ldOut"), op.dx = f.f32("dx");
         be.gelu_backward(op);
       }},
      {"lm_head_logp_backward",
       [](Backend& be, const Fields& f) {
         LmHeadLogpBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.vocab = f.i("vocab"), op.hidden = f.f32("hidden");
         op.weight = f.f32("weight", true), op.weight_bf16 = f.u16("weightBf16", true), op.targets = f.i32("targets");
         op.lse = f.f32("lse"), op.entropy = f.f32("entropy", true), op.dlogp = f.f32("dlogp"), op.dentropy = f.f32("dentropy", true);
         op.dmean_logp = f.f32("dmeanLogp", true);
         op.inv_temperature = static_cast<float>(f.d("invTemperature", 1)), op.dhidden = f.f32("dhidden");
         op.dweight = f.f32("dweight", true);
         if (f.o.Get("weight").IsTypedArray() == f.o.Get("weightBf16").IsTypedArray())
           throw Error(code::kArgument, "lm_head_logp_backward: give exactly one of 'weight' and 'weightBf16'");
         if (op.dentropy && !op.entropy) throw Error(code::kArgument, "lm_head_logp_backward: 'dentropy' needs 'entropy'");
         be.lm_head_logp_backward(op);
       }},
      {"value_head_backward",
       [](Backend& be, const Fields& f) {
         ValueHeadBackwardOp op;
         op.n = f.i("n"), op.dim = f.i("dim"), op.hidden = f.f32("hidden"), op.weight = f.f32("weight"), op.dvalue = f.f32("dvalue");
         op.dhidden = f.f32("dhidden"), op.dweight = f.f32("dweight", true), op.dbias = f.f32("dbias", true);
         be.value_head_backward(op);
       }},
  };
  return table;
}

}  // namespace

Napi::Value RunOp(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), [&]() -> Napi::Value {
    const std::string name = ArgString(info, 0, "name");
    Fields f{ArgObject(info, 1, "args"), name};
    auto it = runners().find(name);
    if (it == runners().end()) throw Error(code::kArgument, "runOp: unknown op '" + name + "'");
    Napi::Value device = f.o.Get("device");
    if (!device.IsUndefined() && !(device.IsString() && device.As<Napi::String>().Utf8Value() == "cpu")) {
      if (!device.IsString()) throw Error(code::kArgument, "runOp: 'device' must be a string");
      std::lock_guard<std::mutex> lock(default_engine().compute);
      return RunOpOnDevice(info.Env(), device.As<Napi::String>().Utf8Value(), name, f.o, [&](Backend& be, ArgMemory* mem) {
        Fields g = f;
        g.mem = mem;
        it->second(be, g);
      });
    }
    // Optional kernel choice for tests ("scalar", "avx2", "avx512", "auto").
    Napi::Value isa = f.o.Get("isa");
    Engine& e = default_engine();
    std::lock_guard<std::mutex> lock(e.compute);
    const std::string want = isa.IsString() ? isa.As<Napi::String>().Utf8Value() : "auto";
    if (!cpu::gemm_force_kernel(want.c_str()) || !cpu::vec_force(want.c_str())) {
      cpu::gemm_force_kernel("auto");
      cpu::vec_force("auto");
      throw Error(code::kUnsupported, "runOp: this CPU cannot run the '" + want + "' kernels");
    }
    try {
      it->second(e.cpu, f);
    } catch (...) {
      cpu::gemm_force_kernel("auto");
      cpu::vec_force("auto");
      throw;
    }
    cpu::gemm_force_kernel("auto");
    cpu::vec_force("auto");
    return info.Env().Undefined();
  });
}

// Kernels this CPU can run, for the tests to loop over.
Napi::Value OpKernels(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t i = 0;
  for (const char* k : {"scalar", "avx2", "avx512"})
    if (cpu::gemm_force_kernel(k)) out.Set(i++, k);
  cpu::gemm_force_kernel("auto");
  Napi::Array ops = Napi::Array::New(info.Env());
  for (int j = 0; j < kOpCount; ++j) ops.Set(static_cast<uint32_t>(j), kOpNames[j]);
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("kernels", out);
  r.Set("ops", ops);
  return r;
}

}  // namespace rlhf::napi
