#include "adapter.h"

#include <cmath>
#include <cstring>

#include "../error.h"
#include "../ops/math.h"
#include "../safetensors.h"

namespace rlhf::model {

namespace {

struct ModuleShape {
  int64_t in, out, col;
};

ModuleShape shape_of(const Config& c, Proj p) {
  const int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate;
  switch (p) {
    case Proj::kQ: return {H, Q, 0};
    case Proj::kK: return {H, KV, Q};
    case Proj::kV: return {H, KV, Q + KV};
    case Proj::kO: return {Q, H, 0};
    case Proj::kGate: return {H, F, 0};
    case Proj::kUp: return {H, F, F};
    case Proj::kDown: return {F, H, 0};
    case Proj::kCAttn: return {H, 3 * H, 0};
    case Proj::kAttnCProj: return {H, H, 0};
    case Proj::kCFc: return {H, F, 0};
    case Proj::kMlpCProj: return {F, H, 0};
    case Proj::kQkv: return {H, Q + 2 * KV, 0};
    case Proj::kGateUp: return {H, 2 * F, 0};
  }
  return {0, 0, 0};
}

bool is_gpt2_proj(Proj p) { return p == Proj::kCAttn || p == Proj::kAttnCProj || p == Proj::kCFc || p == Proj::kMlpCProj; }

std::string module_path(const Config& c, const LoraModule& m) {
  const std::string l = std::to_string(m.layer);
  switch (m.proj) {
    case Proj::kQ: case Proj::kK: case Proj::kV: case Proj::kO: case Proj::kQkv:
      return "model.layers." + l + ".self_attn." + proj_peft_name(m.proj);
    case Proj::kGate: case Proj::kUp: case Proj::kDown: case Proj::kGateUp:
      return "model.layers." + l + ".mlp." + proj_peft_name(m.proj);
    case Proj::kCAttn: case Proj::kAttnCProj:
      return "transformer.h." + l + ".attn." + proj_peft_name(m.proj);
    case Proj::kCFc: case Proj::kMlpCProj:
      return "transformer.h." + l + ".mlp." + proj_peft_name(m.proj);
  }
  (void)c;
  return "?";
}

}  // namespace

bool parse_proj(const Config& cfg, const std::string& name, bool mlp_parent, Proj* out) {
  const bool gpt2 = cfg.arch == Arch::kGpt2;
  static const std::pair<const char*, Proj> llama[] = {{"q_proj", Proj::kQ},       {"k_proj", Proj::kK},   {"v_proj", Proj::kV},
                                                       {"o_proj", Proj::kO},       {"gate_proj", Proj::kGate},
                                                       {"up_proj", Proj::kUp},     {"down_proj", Proj::kDown}};
  if (cfg.fused_proj) {  // Phi-3: the fused modules, o_proj and down_proj
    static const std::pair<const char*, Proj> phi3[] = {
        {"qkv_proj", Proj::kQkv}, {"o_proj", Proj::kO}, {"gate_up_proj", Proj::kGateUp}, {"down_proj", Proj::kDown}};
    for (auto& [n, p] : phi3)
      if (name == n) return *out = p, true;
    return false;
  }
  if (!gpt2) {
    for (auto& [n, p] : llama)
      if (name == n) return *out = p, true;
    return false;
  }
  if (name == "c_attn") return *out = Proj::kCAttn, true;
  if (name == "c_fc") return *out = Proj::kCFc, true;
  if (name == "c_proj") return *out = mlp_parent ? Proj::kMlpCProj : Proj::kAttnCProj, true;
  return false;
}

std::string peft_tensor_name(const Config& cfg, const LoraModule& m, bool is_a) {
  return "base_model.model." + module_path(cfg, m) + (is_a ? ".lora_A.weight" : ".lora_B.weight");
}

std::unique_ptr<Adapter> make_adapter(const Config& cfg, const AdapterSpec& spec, Backend& be) {
  if (spec.r <= 0) throw Error(code::kArgument, "adapter: r must be positive");
  if (spec.modules.empty() && spec.head_rows <= 0) throw Error(code::kArgument, "adapter: no target modules");
  if (spec.head_rows < 0) throw Error(code::kArgument, "adapter: head rows must be >= 0");
  auto a = std::make_unique<Adapter>();
  a->name = spec.name;
  a->r = spec.r;
  a->alpha = spec.alpha;
  a->rslora = spec.rslora;
  if (spec.dropout < 0.f || spec.dropout >= 1.f) throw Error(code::kArgument, "adapter: lora_dropout must be in [0, 1)");
  a->dropout = spec.dropout;
  a->dropout_seed = math::mix64(spec.seed + 0x1234567ull);
  a->scale = spec.rslora ? spec.alpha / std::sqrt(static_cast<float>(spec.r)) : spec.alpha / static_cast<float>(spec.r);
  int64_t total = 0;
  for (auto& [layer, proj] : spec.modules) {
    if (layer < 0 || layer >= cfg.layers) throw Error(code::kArgument, "adapter: layer " + std::to_string(layer) + " does not exist");
    if (is_gpt2_proj(proj) != (cfg.arch == Arch::kGpt2))
      throw Error(code::kArgument, std::string("adapter: module '") + proj_peft_name(proj) + "' does not exist in this architecture");
    const bool fused_only = proj == Proj::kQkv || proj == Proj::kGateUp;
    const bool split_only = proj == Proj::kQ || proj == Proj::kK || proj == Proj::kV || proj == Proj::kGate || proj == Proj::kUp;
    if ((fused_only && !cfg.fused_proj) || (split_only && cfg.fused_proj))
      throw Error(code::kArgument, std::string("adapter: module '") + proj_peft_name(proj) + "' does not exist in this architecture");
    const ModuleShape s = shape_of(cfg, proj);
    LoraModule m;
    m.layer = layer, m.proj = proj, m.in = s.in, m.out = s.out, m.col = s.col;
    a->modules.push_back(m);
    total += spec.r * (s.in + s.out);
  }
  const int64_t head_floats = spec.head_rows * cfg.hidden;
  total += head_floats;
  // Initialised on the host, then moved to the backend's slabs.
  std::vector<float> host(static_cast<size_t>(total), 0.f);
  int64_t off = 0;
  for (size_t i = 0; i < a->modules.size(); ++i) {
    LoraModule& m = a->modules[i];
    m.a = host.data() + off;
    off += spec.r * m.in;
    m.b = host.data() + off;
    off += spec.r * m.out;
    if (i < spec.init_from.size()) {
      for (int which = 0; which < 2; ++which) {
        const TensorLocation& loc = which == 0 ? spec.init_from[i].first : spec.init_from[i].second;
        st::File f(loc.file);
        const st::TensorInfo& t = f.info(loc.stored_name);
        const std::vector<uint64_t> want = which == 0 ? std::vector<uint64_t>{static_cast<uint64_t>(spec.r), static_cast<uint64_t>(m.in)}
                                                      : std::vector<uint64_t>{static_cast<uint64_t>(m.out), static_cast<uint64_t>(spec.r)};
        if (t.shape != want || t.dtype != st::Dtype::F32)
          throw Error(code::kModel, loc.file + ": '" + loc.stored_name + "' must be F32 of shape [" + std::to_string(want[0]) + ", " +
                                        std::to_string(want[1]) + "] for r = " + std::to_string(spec.r));
        std::memcpy(which == 0 ? m.a : m.b, f.raw(t), t.nbytes());
      }
    } else {
      // PEFT: kaiming_uniform_(A, a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)); B = 0.
      const float bound = 1.f / std::sqrt(static_cast<float>(m.in));
      const uint64_t seed = math::mix64(spec.seed * 0x9e3779b97f4a7c15ull + i);
      for (int64_t j = 0; j < spec.r * m.in; ++j) m.a[j] = (2.f * math::uniform01(seed, static_cast<uint64_t>(j)) - 1.f) * bound;
    }
  }
  if (head_floats > 0) {
    a->head_rows = spec.head_rows;
    a->score = host.data() + off;
    if (!spec.head_from.file.empty()) {
      st::File f(spec.head_from.file);
      const st::TensorInfo& t = f.info(spec.head_from.stored_name);
      const std::vector<uint64_t> want{static_cast<uint64_t>(spec.head_rows), static_cast<uint64_t>(cfg.hidden)};
      if (t.shape != want || (t.dtype != st::Dtype::F32 && t.dtype != st::Dtype::BF16 && t.dtype != st::Dtype::F16))
        throw Error(code::kModel, spec.head_from.file + ": '" + spec.head_from.stored_name + "' must be a float tensor of shape [" +
                                      std::to_string(want[0]) + ", " + std::to_string(want[1]) + "] for a score head");
      const uint8_t* src = f.raw(t);
      for (int64_t i = 0; i < head_floats; ++i) {
        if (t.dtype == st::Dtype::F32) std::memcpy(a->score + i, src + 4 * i, 4);
        else {
          uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          a->score[i] = t.dtype == st::Dtype::BF16 ? bf16_to_float(h) : f16_to_float(h);
        }
      }
    } else {
      const uint64_t seed = math::mix64(spec.seed * 0x9e3779b97f4a7c15ull + 0xabcdefull);
      for (int64_t i = 0; i < head_floats; ++i) a->score[i] = spec.head_std * math::normal01(seed, static_cast<uint64_t>(i));
    }
  }
  float* params = a->params.upload(be, host);
  float* grads = a->grads.zeros(be, total);
  a->m.zeros(be, total);
  a->v.zeros(be, total);
  auto on_backend = [&](float*& p, float*& dp) {
    if (!p) return;
    const int64_t at = p - host.data();
    p = params + at, dp = grads + at;
  };
  for (LoraModule& m : a->modules) {
    on_backend(m.a, m.da);
    on_backend(m.b, m.db);
  }
  on_backend(a->score, a->dscore);
  return a;
}

void save_adapter_weights(const Config& cfg, const Adapter& a, const std::string& path) {
  const std::vector<float> host = a.params.to_host();
  auto at = [&](const float* p) { return host.data() + (p - a.params.data()); };
  std::vector<st::TensorToWrite> out;
  for (const LoraModule& m : a.modules) {
    st::TensorToWrite ta;
    ta.name = peft_tensor_name(cfg, m, true);
    ta.dtype = st::Dtype::F32;
    ta.shape = {static_cast<uint64_t>(a.r), static_cast<uint64_t>(m.in)};
    ta.data = at(m.a);
    ta.data_len = sizeof(float) * static_cast<size_t>(a.r * m.in);
    out.push_back(ta);
    st::TensorToWrite tb;
    tb.name = peft_tensor_name(cfg, m, false);
    tb.dtype = st::Dtype::F32;
    tb.shape = {static_cast<uint64_t>(m.out), static_cast<uint64_t>(a.r)};
    tb.data = at(m.b);
    tb.data_len = sizeof(float) * static_cast<size_t>(a.r * m.out);
    out.push_back(tb);
  }
  if (a.score) {
    st::TensorToWrite th;
    th.name = kAdapterHeadName;
    th.dtype = st::Dtype::F32;
    th.shape = {static_cast<uint64_t>(a.head_rows), static_cast<uint64_t>(cfg.hidden)};
    th.data = at(a.score);
    th.data_len = sizeof(float) * static_cast<size_t>(a.head_rows * cfg.hidden);
    out.push_back(th);
  }
  st::write_file(path, out, st::Metadata{{"format", "pt"}});
}

}  // namespace rlhf::model
