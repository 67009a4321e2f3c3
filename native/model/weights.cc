#include "weights.h"

#include <cstring>
#include <functional>

#include "../error.h"
#include "../ops/math.h"
#include "../safetensors.h"

namespace rlhf::model {

float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class Loader {
 public:
  Loader(const TensorFiles& files) : files_(files) {}

  bool has(const std::string& name) const { return files_.count(name) != 0; }

  // Records a tensor made here rather than read (it is saved like a loaded one).
  void place(const std::string& name, float* dst, int64_t rows, int64_t cols) {
    placed[name] = Placed{dst, rows, cols, false};
    order.push_back(name);
  }

  struct Placed {
    float* dst;
    int64_t rows, cols;
    bool transposed;
  };
  // Where each loaded base tensor went, in the engine's [out, in] layout.
  std::unordered_map<std::string, Placed> placed;
  std::vector<std::string> order;

  // Reads any tensor of the given shape into a new fp32 vector.
  std::vector<float> read(const TensorLocation& loc, int64_t rows, int64_t cols, const std::string& label) {
    std::vector<float> out(static_cast<size_t>(rows * cols));
    TensorFiles one{{label, loc}};
    Loader sub(one);
    sub.load(label, rows, cols, out.data());
    return out;
  }

  // Copies tensor `name` (expected shape [rows, cols], or [rows] when cols == 0)
  // into dst. With `transpose`, the stored tensor is [cols, rows] and is
  // transposed into dst's [rows, cols].
  void load(const std::string& name, int64_t rows, int64_t cols, float* dst, bool transpose = false) {
    auto it = files_.find(name);
    if (it == files_.end()) throw Error(code::kModel, "tensor '" + name + "' is missing from the model's safetensors files");
    const std::string& path = it->second.file;
    st::File& f = file(path);
    const st::TensorInfo* t = f.find(it->second.stored_name);
    if (!t) throw Error(code::kModel, path + ": tensor '" + it->second.stored_name + "' is not in this file (model.safetensors.index.json says it is)");
    std::vector<uint64_t> want;
    if (cols == 0) want = {static_cast<uint64_t>(rows)};
    else if (transpose) want = {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)};
    else want = {static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)};
    if (t->shape != want)
      throw Error(code::kModel, path + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " + shape_str(want));
    const int64_t n = rows * (cols ? cols : 1);
    const uint8_t* src = f.raw(*t);
    auto get = [&](int64_t i) -> float {
      switch (t->dtype) {
        case st::Dtype::F32: {
          float v;
          std::memcpy(&v, src + 4 * i, 4);
          return v;
        }
        case st::Dtype::BF16: {
          uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          return bf16_to_float(h);
        }
        case st::Dtype::F16: {
          uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          return f16_to_float(h);
        }
        default:
          return 0.f;
      }
    };
    if (t->dtype != st::Dtype::F32 && t->dtype != st::Dtype::BF16 && t->dtype != st::Dtype::F16)
      throw Error(code::kUnsupported, path + ": tensor '" + name + "' has dtype " + st::dtype_name(t->dtype) +
                                          "; model weights must be F32, F16 or BF16");
    placed[name] = Placed{dst, rows, cols ? cols : 1, transpose};
    order.push_back(name);
    if (!transpose) {
      if (t->dtype == st::Dtype::F32) std::memcpy(dst, src, sizeof(float) * n);
      else for (int64_t i = 0; i < n; ++i) dst[i] = get(i);
    } else {
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t r = 0; r < rows; ++r) dst[r * cols + c] = get(c * rows + r);
    }
  }

 private:
  st::File& file(const std::string& path) {
    auto it = open_.find(path);
    if (it != open_.end()) return *it->second;
    auto f = std::make_unique<st::File>(path);
    st::File& ref = *f;
    open_.emplace(path, std::move(f));
    return ref;
  }
  const TensorFiles& files_;
  std::unordered_map<std::string, std::unique_ptr<st::File>> open_;
};

}  // namespace

namespace {
// W[rows, cols] += scale * B[rows, r] A[r, cols]
void merge_lora(Loader& ld, const LoraMerge& m) {
  auto it = ld.placed.find(m.target);
  if (it == ld.placed.end()) throw Error(code::kModel, "LoRA target '" + m.target + "' is not a weight of this model");
  const auto& p = it->second;
  st::File fa(m.a.file);
  const st::TensorInfo& ia = fa.info(m.a.stored_name);
  if (ia.shape.size() != 2 || static_cast<int64_t>(ia.shape[1]) != p.cols)
    throw Error(code::kModel, m.a.file + ": LoRA A '" + m.a.stored_name + "' must be [r, " + std::to_string(p.cols) + "]");
  const int64_t r = static_cast<int64_t>(ia.shape[0]);
  std::vector<float> A = ld.read(m.a, r, p.cols, m.a.stored_name);
  std::vector<float> B = ld.read(m.b, p.rows, r, m.b.stored_name);
  for (int64_t i = 0; i < p.rows; ++i) {
    float* w = p.dst + i * p.cols;
    for (int64_t q = 0; q < r; ++q) {
      const float s = m.scale * B[static_cast<size_t>(i * r + q)];
      const float* a = A.data() + q * p.cols;
      for (int64_t j = 0; j < p.cols; ++j) w[j] += s * a[j];
    }
  }
}
}  // namespace

Weights load_weights(const Config& cfg, const TensorFiles& files, const std::vector<LoraMerge>& loras, const ScoreInit& score_init) {
  cfg.validate();
  const int64_t H = cfg.hidden, V = cfg.vocab, F = cfg.intermediate, Q = cfg.q_dim(), KV = cfg.kv_dim();
  const bool gpt2 = cfg.arch == Arch::kGpt2;
  Loader ld(files);
  const std::string& p = cfg.prefix;

  // Lay out the slab: (pointer slot, floats) in order.
  Weights w;
  std::vector<std::pair<float**, int64_t>> plan;
  auto want = [&](float** slot, int64_t floats) { plan.emplace_back(slot, floats); };
  w.layers.resize(static_cast<size_t>(cfg.layers));
  want(&w.embed, V * H);
  if (gpt2) want(&w.pos_embed, cfg.max_positions * H);
  for (auto& L : w.layers) {
    want(&L.norm1_w, H);
    if (gpt2) want(&L.norm1_b, H);
    want(&L.wqkv, cfg.qkv_dim() * H);
    if (cfg.qkv_bias) want(&L.bqkv, cfg.qkv_dim());
    if (cfg.qk_norm) want(&L.q_norm_w, cfg.head_dim), want(&L.k_norm_w, cfg.head_dim);
    want(&L.wo, H * Q);
    if (cfg.o_bias) want(&L.bo, H);
    want(&L.norm2_w, H);
    if (cfg.sandwich_norm) want(&L.post_attn_norm_w, H), want(&L.post_ff_norm_w, H);
    if (gpt2) want(&L.norm2_b, H);
    want(&L.w_in, (gpt2 ? 1 : 2) * F * H);
    if (cfg.mlp_bias) want(&L.b_in, (gpt2 ? 1 : 2) * F);
    want(&L.w_out, H * F);
    if (cfg.mlp_bias) want(&L.b_out, H);
  }
  want(&w.final_norm_w, H);
  if (gpt2) want(&w.final_norm_b, H);
  if (cfg.lm_head && !cfg.tie_embeddings) want(&w.lm_head, V * H);
  if (cfg.num_labels > 0) want(&w.score, cfg.num_labels * H);
  int64_t total = 0;
  for (auto& [slot, n] : plan) total += (n + 15) & ~int64_t(15);  // 64-byte aligned views
  w.slab.reset(new float[static_cast<size_t>(total) + 16]);
  w.slab_floats = total;
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(w.slab.get()) + 63) & ~uintptr_t(63));
  w.slab_base = base;
  for (auto& [slot, n] : plan) {
    *slot = base;
    base += (n + 15) & ~int64_t(15);
  }
  if (cfg.lm_head && cfg.tie_embeddings) w.lm_head = w.embed;

  if (!gpt2) {
    ld.load(p + "embed_tokens.weight", V, H, w.embed);
    for (int64_t l = 0; l < cfg.layers; ++l) {
      LayerWeights& L = w.layers[static_cast<size_t>(l)];
      const std::string lp = p + "layers." + std::to_string(l) + ".";
      ld.load(lp + "input_layernorm.weight", H, 0, L.norm1_w);
      if (cfg.fused_proj) {  // Phi-3: one [q | k | v] matrix, our own layout
        ld.load(lp + "self_attn.qkv_proj.weight", Q + 2 * KV, H, L.wqkv);
      } else {
        ld.load(lp + "self_attn.q_proj.weight", Q, H, L.wqkv);
        ld.load(lp + "self_attn.k_proj.weight", KV, H, L.wqkv + Q * H);
        ld.load(lp + "self_attn.v_proj.weight", KV, H, L.wqkv + (Q + KV) * H);
      }
      if (cfg.qkv_bias) {
        ld.load(lp + "self_attn.q_proj.bias", Q, 0, L.bqkv);
        ld.load(lp + "self_attn.k_proj.bias", KV, 0, L.bqkv + Q);
        ld.load(lp + "self_attn.v_proj.bias", KV, 0, L.bqkv + Q + KV);
      }
      if (cfg.qk_norm) {
        ld.load(lp + "self_attn.q_norm.weight", cfg.head_dim, 0, L.q_norm_w);
        ld.load(lp + "self_attn.k_norm.weight", cfg.head_dim, 0, L.k_norm_w);
      }
      ld.load(lp + "self_attn.o_proj.weight", H, Q, L.wo);
      if (cfg.o_bias) ld.load(lp + "self_attn.o_proj.bias", H, 0, L.bo);
      if (cfg.sandwich_norm) {  // Gemma: norm2 is the pre-MLP norm; post_attention_layernorm norms the attention output
        ld.load(lp + "post_attention_layernorm.weight", H, 0, L.post_attn_norm_w);
        ld.load(lp + "pre_feedforward_layernorm.weight", H, 0, L.norm2_w);
        ld.load(lp + "post_feedforward_layernorm.weight", H, 0, L.post_ff_norm_w);
      } else {
        ld.load(lp + "post_attention_layernorm.weight", H, 0, L.norm2_w);
      }
      if (cfg.fused_proj) {  // Phi-3: one [gate | up] matrix
        ld.load(lp + "mlp.gate_up_proj.weight", 2 * F, H, L.w_in);
      } else {
        ld.load(lp + "mlp.gate_proj.weight", F, H, L.w_in);
        ld.load(lp + "mlp.up_proj.weight", F, H, L.w_in + F * H);
      }
      ld.load(lp + "mlp.down_proj.weight", H, F, L.w_out);
      if (cfg.mlp_bias) {
        ld.load(lp + "mlp.gate_proj.bias", F, 0, L.b_in);
        ld.load(lp + "mlp.up_proj.bias", F, 0, L.b_in + F);
        ld.load(lp + "mlp.down_proj.bias", H, 0, L.b_out);
      }
    }
    ld.load(p + "norm.weight", H, 0, w.final_norm_w);
  } else {
    ld.load(p + "wte.weight", V, H, w.embed);
    ld.load(p + "wpe.weight", cfg.max_positions, H, w.pos_embed);
    for (int64_t l = 0; l < cfg.layers; ++l) {
      LayerWeights& L = w.layers[static_cast<size_t>(l)];
      const std::string lp = p + "h." + std::to_string(l) + ".";
      ld.load(lp + "ln_1.weight", H, 0, L.norm1_w);
      ld.load(lp + "ln_1.bias", H, 0, L.norm1_b);
      ld.load(lp + "attn.c_attn.weight", 3 * H, H, L.wqkv, /*transpose=*/true);
      ld.load(lp + "attn.c_attn.bias", 3 * H, 0, L.bqkv);
      ld.load(lp + "attn.c_proj.weight", H, H, L.wo, true);
      ld.load(lp + "attn.c_proj.bias", H, 0, L.bo);
      ld.load(lp + "ln_2.weight", H, 0, L.norm2_w);
      ld.load(lp + "ln_2.bias", H, 0, L.norm2_b);
      ld.load(lp + "mlp.c_fc.weight", F, H, L.w_in, true);
      ld.load(lp + "mlp.c_fc.bias", F, 0, L.b_in);
      ld.load(lp + "mlp.c_proj.weight", H, F, L.w_out, true);
      ld.load(lp + "mlp.c_proj.bias", H, 0, L.b_out);
    }
    ld.load(p + "ln_f.weight", H, 0, w.final_norm_w);
    ld.load(p + "ln_f.bias", H, 0, w.final_norm_b);
  }
  if (cfg.lm_head && !cfg.tie_embeddings) ld.load("lm_head.weight", V, H, w.lm_head);
  if (cfg.num_labels > 0) {
    if (!ld.has("score.weight") && score_init.enabled) {
      for (int64_t i = 0; i < cfg.num_labels * H; ++i) w.score[i] = score_init.std * math::normal01(score_init.seed, static_cast<uint64_t>(i));
      ld.place("score.weight", w.score, cfg.num_labels, H);
    } else {
      ld.load("score.weight", cfg.num_labels, H, w.score);
    }
  }
  for (const LoraMerge& m : loras) merge_lora(ld, m);
  for (const std::string& name : ld.order) {
    const auto& p = ld.placed.at(name);
    w.views.push_back(NamedView{name, p.dst, p.rows, p.cols, p.transposed});
  }
  w.parameters = 0;
  for (auto& [slot, n] : plan)
    if (!(cfg.lm_head && cfg.tie_embeddings && slot == &w.lm_head)) w.parameters += n;
  return w;
}

void convert_to_bf16(Weights& w, const Config& cfg) {
  if (w.bf16()) return;
  w.views.clear();
  struct Big {
    float** f32;
    uint16_t** bf16;
    int64_t n;
  };
  const int64_t H = cfg.hidden, F = cfg.intermediate;
  const bool gpt2 = cfg.arch == Arch::kGpt2;
  std::vector<Big> big;
  big.push_back({&w.embed, &w.embed16, cfg.vocab * H});
  for (auto& L : w.layers) {
    big.push_back({&L.wqkv, &L.wqkv16, cfg.qkv_dim() * H});
    big.push_back({&L.wo, &L.wo16, H * cfg.q_dim()});
    big.push_back({&L.w_in, &L.w_in16, (gpt2 ? 1 : 2) * F * H});
    big.push_back({&L.w_out, &L.w_out16, H * F});
  }
  const bool tied = w.lm_head == w.embed;
  if (w.lm_head && !tied) big.push_back({&w.lm_head, &w.lm_head16, cfg.vocab * H});
  int64_t total = 0;
  for (auto& b : big) total += (b.n + 31) & ~int64_t(31);
  w.slab16.reset(new uint16_t[static_cast<size_t>(total) + 32]);
  w.slab16_elems = total;
  uint16_t* p = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(w.slab16.get()) + 63) & ~uintptr_t(63));
  w.slab16_base = p;
  for (auto& b : big) {
    const float* src = *b.f32;
    for (int64_t i = 0; i < b.n; ++i) p[i] = st::float_to_bf16(src[i]);
    *b.bf16 = p;
    *b.f32 = nullptr;
    p += (b.n + 31) & ~int64_t(31);
  }
  if (tied) {
    w.lm_head = nullptr;
    w.lm_head16 = w.embed16;
  }
  // Move what stays fp32 into a compact slab and drop the old one.
  std::vector<float**> small;
  if (w.pos_embed) small.push_back(&w.pos_embed);
  for (auto& L : w.layers)
    for (float** f : {&L.norm1_w, &L.norm1_b, &L.bqkv, &L.q_norm_w, &L.k_norm_w, &L.bo, &L.norm2_w, &L.post_attn_norm_w, &L.post_ff_norm_w, &L.norm2_b, &L.b_in, &L.b_out})
      if (*f) small.push_back(f);
  for (float** f : {&w.final_norm_w, &w.final_norm_b, &w.score})
    if (*f) small.push_back(f);
  auto size_of = [&](float** f) -> int64_t {
    if (f == &w.pos_embed) return cfg.max_positions * H;
    if (f == &w.score) return cfg.num_labels * H;
    for (auto& L : w.layers) {
      if (f == &L.bqkv) return cfg.qkv_dim();
      if (f == &L.b_in) return (gpt2 ? 1 : 2) * F;
      if (f == &L.q_norm_w || f == &L.k_norm_w) return cfg.head_dim;
    }
    return H;
  };
  int64_t keep = 0;
  for (float** f : small) keep += (size_of(f) + 15) & ~int64_t(15);
  std::unique_ptr<float[]> slab(new float[static_cast<size_t>(keep) + 16]);
  float* q = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(slab.get()) + 63) & ~uintptr_t(63));
  w.slab_base = q;
  for (float** f : small) {
    const int64_t n = size_of(f);
    std::memcpy(q, *f, sizeof(float) * n);
    *f = q;
    q += (n + 15) & ~int64_t(15);
  }
  w.slab = std::move(slab);
  w.slab_floats = keep;
}

Weights backend_copy(const Weights& w, float* slab, uint16_t* slab16) {
  Weights d;
  auto f = [&](float* p) -> float* {
    if (!p) return nullptr;
    if (p < w.slab_base || p >= w.slab_base + w.slab_floats) throw Error(code::kInternal, "weight outside the slab");
    return slab + (p - w.slab_base);
  };
  auto h = [&](uint16_t* p) -> uint16_t* {
    if (!p) return nullptr;
    if (p < w.slab16_base || p >= w.slab16_base + w.slab16_elems) throw Error(code::kInternal, "bf16 weight outside the slab");
    return slab16 + (p - w.slab16_base);
  };
  d.slab_floats = w.slab_floats;
  d.slab_base = slab;
  d.slab16_elems = w.slab16_elems;
  d.slab16_base = slab16;
  d.parameters = w.parameters;
  d.embed = f(w.embed), d.pos_embed = f(w.pos_embed), d.final_norm_w = f(w.final_norm_w), d.final_norm_b = f(w.final_norm_b);
  d.lm_head = f(w.lm_head), d.score = f(w.score), d.embed16 = h(w.embed16), d.lm_head16 = h(w.lm_head16);
  for (const LayerWeights& L : w.layers) {
    LayerWeights D;
    D.norm1_w = f(L.norm1_w), D.norm1_b = f(L.norm1_b), D.wqkv = f(L.wqkv), D.bqkv = f(L.bqkv), D.q_norm_w = f(L.q_norm_w), D.k_norm_w = f(L.k_norm_w), D.wo = f(L.wo), D.bo = f(L.bo);
    D.norm2_w = f(L.norm2_w), D.norm2_b = f(L.norm2_b), D.post_attn_norm_w = f(L.post_attn_norm_w), D.post_ff_norm_w = f(L.post_ff_norm_w), D.w_in = f(L.w_in), D.b_in = f(L.b_in), D.w_out = f(L.w_out);
    D.b_out = f(L.b_out), D.wqkv16 = h(L.wqkv16), D.wo16 = h(L.wo16), D.w_in16 = h(L.w_in16), D.w_out16 = h(L.w_out16);
    d.layers.push_back(D);
  }
  for (const NamedView& v : w.views) d.views.push_back({v.name, f(v.ptr), v.rows, v.cols, v.transposed});
  return d;
}

}  // namespace rlhf::model
