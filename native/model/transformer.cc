#include "transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../error.h"
#include "../ops/math.h"

namespace rlhf::model {

void positions_from_mask(const uint8_t* mask, int64_t batch, int64_t seq, int32_t* out) {
  for (int64_t b = 0; b < batch; ++b) {
    int32_t count = 0;
    for (int64_t t = 0; t < seq; ++t) {
      if (!mask || mask[b * seq + t]) ++count;
      out[b * seq + t] = count > 0 ? count - 1 : 0;
    }
  }
}

std::vector<float> shifted_to_rows(const float* shifted, int64_t B, int64_t T) {
  std::vector<float> rows(static_cast<size_t>(B * T), 0.f);
  if (shifted)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t) rows[static_cast<size_t>(b * T + t)] = shifted[b * (T - 1) + t];
  return rows;
}

std::vector<float> rows_to_shifted(const std::vector<float>& rows, int64_t B, int64_t T) {
  std::vector<float> shifted(static_cast<size_t>(B * (T - 1)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) shifted[static_cast<size_t>(b * (T - 1) + t)] = rows[static_cast<size_t>(b * T + t)];
  return shifted;
}

void Transformer::Buffers::ensure(Backend& be, const Config& c, int64_t rows) {
  const int64_t mlp_cols = c.arch == Arch::kLlama ? 2 * c.intermediate : c.intermediate;
  x.ensure(be, rows * c.hidden);
  xn.ensure(be, rows * c.hidden);
  qkv.ensure(be, rows * c.qkv_dim());
  att.ensure(be, rows * c.q_dim());
  mlp.ensure(be, rows * mlp_cols);
  act.ensure(be, rows * c.intermediate);
  tmp.ensure(be, rows * c.hidden);
}

Transformer::Transformer(Config cfg, Weights w, Backend& be) : cfg_(std::move(cfg)), w_(std::move(w)), be_(be) {
  cfg_.validate();
  if (cfg_.weights_bf16) convert_to_bf16(w_, cfg_);
  bw_ = &w_;
  if (!be_.host_memory()) {  // one copy of the slabs in the backend's memory, same layout
    float* slab = device_slab_.upload(be_, w_.slab_base, w_.slab_floats);
    uint16_t* slab16 = w_.slab16_base ? device_slab16_.upload(be_, w_.slab16_base, w_.slab16_elems) : nullptr;
    device_w_ = backend_copy(w_, slab, slab16);
    bw_ = &device_w_;
  }
}

void Transformer::weights_to_host() {
  if (bw_ == &w_) return;
  download_n(be_, w_.slab_base, device_slab_.data(), w_.slab_floats);
}

void Transformer::dropout(const float* in, float* out, int64_t rows, int64_t cols, uint64_t key, size_t module) {
  if (be_.host_memory()) return lora_dropout_apply(in, out, rows, cols, adapter_->dropout, key, module);
  std::vector<float> h(static_cast<size_t>(rows * cols));  // no dropout op yet: through the host
  download_n(be_, h.data(), in, rows * cols);
  lora_dropout_apply(h.data(), h.data(), rows, cols, adapter_->dropout, key, module);
  upload_n(be_, out, h.data(), rows * cols);
}

void Transformer::ensure_rope(int64_t max_pos) {
  if (cfg_.arch != Arch::kLlama) return;
  // LongRoPE takes its long factors for a call whose positions reach past the
  // original context (max position + 1 > original_max_position_embeddings),
  // as transformers decides per forward; the tables follow that choice.
  const bool long_ctx = cfg_.rope_scaling == RopeScaling::kLongrope && static_cast<double>(max_pos) > cfg_.rope_original_max_positions;
  if (max_pos <= rope_rows_ && long_ctx == rope_long_) return;
  const int64_t half = cfg_.rot_dim() / 2;
  const int64_t rows = std::max<int64_t>(max_pos, std::min<int64_t>(cfg_.max_positions, 2 * rope_rows_));
  const std::vector<float> inv = cfg_.inv_freq(long_ctx);
  const float mscale = static_cast<float>(cfg_.rope_attention_factor);  // LongRoPE's attention factor (1 otherwise)
  std::vector<float> cos_t(static_cast<size_t>(rows * half)), sin_t(static_cast<size_t>(rows * half));
  // Angles as Hugging Face forms them: float32 inv_freq times the position,
  // in float32, then cos/sin of that float.
  for (int64_t p = 0; p < rows; ++p)
    for (int64_t j = 0; j < half; ++j) {
      const float a = static_cast<float>(p) * inv[static_cast<size_t>(j)];
      cos_t[static_cast<size_t>(p * half + j)] = std::cos(a) * mscale;
      sin_t[static_cast<size_t>(p * half + j)] = std::sin(a) * mscale;
    }
  rope_cos_.upload(be_, cos_t);
  rope_sin_.upload(be_, sin_t);
  if (!cfg_.local_layers.empty()) {  // Gemma 3's sliding-window layers: default RoPE on their own base
    const std::vector<float> loc = cfg_.inv_freq_local();
    for (int64_t p = 0; p < rows; ++p)
      for (int64_t j = 0; j < half; ++j) {
        const float a = static_cast<float>(p) * loc[static_cast<size_t>(j)];
        cos_t[static_cast<size_t>(p * half + j)] = std::cos(a);
        sin_t[static_cast<size_t>(p * half + j)] = std::sin(a);
      }
    rope_cos_local_.upload(be_, cos_t);
    rope_sin_local_.upload(be_, sin_t);
  }
  rope_rows_ = rows;
  rope_long_ = long_ctx;
}

void Transformer::body(int64_t rows, const int32_t* ids, const int32_t* positions, const uint8_t* mask, int64_t batch,
                       int64_t seq, KvCache* cache, const int32_t* slots, Acts* acts) {
  const Config& c = cfg_;
  const int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), QKV = c.qkv_dim(), F = c.intermediate, D = c.head_dim;
  const bool llama = c.arch == Arch::kLlama;
  const int64_t MLP = llama ? 2 * F : F;
  const bool decoding = cache && seq == 1 && cache->length.size() == static_cast<size_t>(batch) && slots;
  const Weights& w = *bw_;
  buf_.ensure(be_, c, rows);
  float* x = buf_.x.data();
  float* tmp = buf_.tmp.data();
  const std::vector<LoraModule>* lora = adapter_ ? &adapter_->modules : nullptr;
  if (acts && lora && acts->lora_u.size() != lora->size()) {
    acts->lora_u.clear();
    acts->lora_u.resize(lora->size());
  }
  const bool dropout = acts && adapter_ && adapter_->dropout > 0.f;
  if (dropout) acts->dropout_key = math::mix64(adapter_->dropout_seed ^ math::mix64(++adapter_->forward_count));
  // The request's ids, positions and mask in backend memory (kept with the
  // activations when training: the backward pass reads them).
  const int32_t* ids_d = (acts ? acts->ids_d : buf_.ids).upload(be_, ids, rows);
  const int32_t* pos_d = (acts ? acts->positions_d : buf_.positions).upload(be_, positions, rows);
  const uint8_t* mask_d = mask ? (acts ? acts->mask_d : buf_.mask).upload(be_, mask, batch * seq) : nullptr;

  int32_t max_pos = 0;
  for (int64_t i = 0; i < rows; ++i) max_pos = std::max(max_pos, positions[i]);
  if (max_pos >= c.max_positions && !llama)
    throw Error(code::kArgument, "position " + std::to_string(max_pos) + " is past the model's n_positions (" +
                                     std::to_string(c.max_positions) + ")");
  ensure_rope(max_pos + 1);

  EmbeddingOp emb;
  emb.n = rows;
  emb.dim = H;
  emb.rows = c.vocab;
  emb.ids = ids_d;
  emb.table = w.embed;
  emb.table_bf16 = w.embed16;
  emb.positions = llama ? nullptr : pos_d;
  emb.pos_table = llama ? nullptr : w.pos_embed;
  emb.out = x;
  be_.embedding(emb);
  if (c.embed_scale != 1.f) {  // Gemma: x = embed * sqrt(hidden)
    ScaleOp s;
    s.n = rows * H, s.x = x, s.factor = c.embed_scale;
    be_.scale(s);
  }

  // Where this layer's activations go: shared scratch for inference, the
  // layer's own buffers when training (the backward pass needs them all).
  auto grow = [&](Buffer<float>& v, int64_t n) -> float* { return v.ensure(be_, n); };
  auto norm = [&](const float* delta, const float* wgt, const float* bias, float* out, float* stat_a, float* stat_b) {
    if (llama) {
      RmsNormOp op;
      op.n = rows, op.dim = H, op.eps = c.norm_eps, op.residual = x, op.delta = delta, op.weight = wgt, op.out = out;
      op.weight_offset = c.norm_offset, op.rstd = stat_a;
      be_.rmsnorm(op);
    } else {
      LayerNormOp op;
      op.n = rows, op.dim = H, op.eps = c.norm_eps, op.residual = x, op.delta = delta, op.weight = wgt, op.bias = bias, op.out = out;
      op.rstd = stat_a, op.mean = stat_b;
      be_.layernorm(op);
    }
  };
  auto linear = [&](const float* in, int64_t in_dim, const float* wgt, const uint16_t* wgt16, const float* bias, int64_t out_dim,
                    float* out) {
    GemmOp g;
    g.trans_b = true;
    g.m = rows, g.n = out_dim, g.k = in_dim;
    g.a = in, g.lda = in_dim, g.b = wgt, g.b_bf16 = wgt16, g.ldb = in_dim, g.c = out, g.ldc = out_dim, g.bias = bias;
    be_.gemm(g);
  };
  // out[:, :out_dim] = in W^T + bias for a base linear, with the active
  // adapter's modules of layer l on it: each module's column slice through
  // the fused LoRA op (u = s x A^T kept for the backward), the columns no
  // module covers through the plain GEMM.
  auto adapted_linear = [&](int64_t l, std::initializer_list<Proj> projs, const float* in, int64_t in_dim, const float* wgt,
                            const uint16_t* wgt16, const float* bias, int64_t out_dim, float* out) {
    std::vector<size_t> mods;
    if (lora)
      for (size_t mi = 0; mi < lora->size(); ++mi) {
        const LoraModule& m = (*lora)[mi];
        if (m.layer == l && std::find(projs.begin(), projs.end(), m.proj) != projs.end()) mods.push_back(mi);
      }
    if (mods.empty()) return linear(in, in_dim, wgt, wgt16, bias, out_dim, out);
    std::sort(mods.begin(), mods.end(), [&](size_t a, size_t b) { return (*lora)[a].col < (*lora)[b].col; });
    auto base_cols = [&](int64_t c0, int64_t c1) {
      if (c1 <= c0) return;
      GemmOp g;
      g.trans_b = true;
      g.m = rows, g.n = c1 - c0, g.k = in_dim, g.a = in, g.lda = in_dim;
      g.b = wgt ? wgt + c0 * in_dim : nullptr, g.b_bf16 = wgt16 ? wgt16 + c0 * in_dim : nullptr, g.ldb = in_dim;
      g.c = out + c0, g.ldc = out_dim, g.bias = bias ? bias + c0 : nullptr;
      be_.gemm(g);
    };
    int64_t col = 0;
    for (size_t mi : mods) {
      const LoraModule& m = (*lora)[mi];
      base_cols(col, m.col);
      LoraOp op;
      op.n = rows, op.in = in_dim, op.out = m.out, op.r = adapter_->r;
      op.x = in, op.ldx = in_dim;
      if (dropout) {  // the adapter reads dropout(x); the base reads x
        float* dropped = grow(buf_.dropped, rows * in_dim);
        this->dropout(in, dropped, rows, in_dim, acts->dropout_key, mi);
        op.x_lora = dropped;
      }
      op.w = wgt ? wgt + m.col * in_dim : nullptr, op.w_bf16 = wgt16 ? wgt16 + m.col * in_dim : nullptr, op.ldw = in_dim;
      op.bias = bias ? bias + m.col : nullptr, op.a = m.a, op.b = m.b, op.scale = adapter_->scale;
      op.u = grow(acts ? acts->lora_u[mi] : buf_.lora_u, rows * adapter_->r);
      op.y = out + m.col, op.ldy = out_dim;
      be_.lora(op);
      col = m.col + m.out;
    }
    base_cols(col, out_dim);
  };

  // RMSNorm of the `nh` heads at column `col` of every qkv row [rows, QKV],
  // in place: the heads are gathered into in [rows * nh, D] (kept when
  // training), normed into out [rows * nh, D] and scattered back.
  auto head_norm = [&](float* qkv, int64_t col, int64_t nh, const float* wgt, Buffer<float>* keep_in, Buffer<float>* keep_rstd) {
    const size_t f = sizeof(float), width = static_cast<size_t>(nh * D) * f;
    float* in = grow(keep_in ? *keep_in : buf_.hn_in, rows * nh * D);
    float* out = grow(buf_.hn_out, rows * nh * D);
    be_.copy2d(in, width, qkv + col, static_cast<size_t>(QKV) * f, width, static_cast<size_t>(rows));
    RmsNormOp op;
    op.n = rows * nh, op.dim = D, op.eps = c.norm_eps, op.residual = in, op.weight = wgt, op.weight_offset = c.norm_offset, op.out = out;
    op.rstd = keep_rstd ? grow(*keep_rstd, rows * nh) : nullptr;
    be_.rmsnorm(op);
    be_.copy2d(qkv + col, static_cast<size_t>(QKV) * f, out, width, width, static_cast<size_t>(rows));
  };

  // Gemma's norm of a block output (in [rows, H]) before it joins the
  // residual stream; returns where the normed rows are.
  auto post_norm = [&](const float* in, const float* wgt, Buffer<float>* keep_rstd) -> float* {
    float* out = grow(buf_.post, rows * H);
    RmsNormOp op;
    op.n = rows, op.dim = H, op.eps = c.norm_eps, op.residual = const_cast<float*>(in), op.weight = wgt, op.weight_offset = c.norm_offset;
    op.out = out, op.rstd = keep_rstd ? grow(*keep_rstd, rows) : nullptr;
    be_.rmsnorm(op);
    return out;
  };
  const float* delta = nullptr;  // what the next norm adds to the residual stream first (the last block's output)

  for (int64_t l = 0; l < c.layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    LayerActs* A = acts ? &acts->layers[static_cast<size_t>(l)] : nullptr;
    float* xn1 = A ? grow(A->xn1, rows * H) : buf_.xn.data();
    float* qkv = A ? grow(A->qkv, rows * QKV) : buf_.qkv.data();
    float* att = A ? grow(A->att, rows * Q) : buf_.att.data();
    float* xn2 = A ? grow(A->xn2, rows * H) : buf_.xn.data();
    float* mlp = A ? grow(A->mlp, rows * MLP) : buf_.mlp.data();
    float* act = A ? grow(A->act, rows * F) : buf_.act.data();
    float* s1a = A ? grow(A->stat1a, rows) : nullptr;
    float* s1b = A && !llama ? grow(A->stat1b, rows) : nullptr;
    float* s2a = A ? grow(A->stat2a, rows) : nullptr;
    float* s2b = A && !llama ? grow(A->stat2b, rows) : nullptr;

    norm(delta, L.norm1_w, L.norm1_b, xn1, s1a, s1b);  // x += mlp_out(l-1); xn1 = norm(x)
    if (A) be_.copy(grow(A->x1, rows * H), x, sizeof(float) * rows * H);
    adapted_linear(l, {Proj::kQ, Proj::kK, Proj::kV, Proj::kCAttn, Proj::kQkv}, xn1, H, L.wqkv, L.wqkv16, L.bqkv, QKV, qkv);  // [rows, Q + 2 KV]
    if (c.qk_norm) {  // Qwen3: each q head and each k head RMS-normed with its own [D] weight
      head_norm(qkv, 0, c.heads, L.q_norm_w, A ? &A->qn_in : nullptr, A ? &A->qn_rstd : nullptr);
      head_norm(qkv, Q, c.kv_heads, L.k_norm_w, A ? &A->kn_in : nullptr, A ? &A->kn_rstd : nullptr);
    }
    if (llama) {
      RopeOp r;
      r.n = rows, r.heads = c.heads + c.kv_heads, r.head_dim = D, r.rotary_dim = c.rot_dim(), r.x = qkv, r.ld = QKV;
      r.positions = pos_d, r.cos = (c.is_local(l) ? rope_cos_local_ : rope_cos_).data(), r.sin = (c.is_local(l) ? rope_sin_local_ : rope_sin_).data();
      be_.rope(r);
    }
    if (cache) store_kv(*cache, l, qkv, rows, seq, slots);
    if (decoding) {
      KvAttentionOp a;
      a.batch = batch, a.heads = c.heads, a.kv_heads = c.kv_heads, a.head_dim = D, a.capacity = cache->capacity;
      a.scale = c.attention_scale();
      a.q = qkv, a.ldq = QKV, a.k_cache = cache->k[static_cast<size_t>(l)].data(), a.v_cache = cache->v[static_cast<size_t>(l)].data();
      a.length = cache->length_d.data(), a.cache_mask = cache->mask_d.data(), a.out = att, a.ldo = Q;
      be_.kv_attention(a);
    } else {
      AttentionOp a;
      a.batch = batch, a.seq = seq, a.heads = c.heads, a.kv_heads = c.kv_heads, a.head_dim = D;
      a.scale = c.attention_scale();
      a.q = qkv, a.k = qkv + Q, a.v = qkv + Q + KV, a.ldq = a.ldk = a.ldv = QKV;
      a.mask = mask_d, a.out = att, a.ldo = Q;
      a.lse = A ? grow(A->lse, batch * c.heads * seq) : nullptr;
      be_.attention(a);
    }
    float* att_o = A && c.sandwich_norm ? grow(A->att_o, rows * H) : tmp;
    adapted_linear(l, {Proj::kO, Proj::kAttnCProj}, att, Q, L.wo, L.wo16, L.bo, H, att_o);  // attention output
    delta = c.sandwich_norm ? post_norm(att_o, L.post_attn_norm_w, A ? &A->stat_pa : nullptr) : att_o;
    norm(delta, L.norm2_w, L.norm2_b, xn2, s2a, s2b);                           // x += attn; xn2 = norm(x)
    if (A) be_.copy(grow(A->x2, rows * H), x, sizeof(float) * rows * H);
    adapted_linear(l, {Proj::kGate, Proj::kUp, Proj::kCFc, Proj::kGateUp}, xn2, H, L.w_in, L.w_in16, L.b_in, MLP, mlp);  // [gate | up] or c_fc
    if (llama) {
      SwigluOp s;
      s.n = rows, s.dim = F, s.gate = mlp, s.up = mlp + F, s.ld_in = 2 * F, s.out = act, s.ld_out = F, s.gelu = c.geglu;
      be_.swiglu(s);
    } else {
      GeluOp g;
      g.n = rows, g.dim = F, g.x = mlp, g.ld_in = F, g.out = act, g.ld_out = F;
      be_.gelu(g);
    }
    float* mlp_o = A && c.sandwich_norm ? grow(A->mlp_o, rows * H) : tmp;
    adapted_linear(l, {Proj::kDown, Proj::kMlpCProj}, act, F, L.w_out, L.w_out16, L.b_out, H, mlp_o);  // MLP output
    delta = c.sandwich_norm ? post_norm(mlp_o, L.post_ff_norm_w, A ? &A->stat_pf : nullptr) : mlp_o;
  }
  float* xnf = acts ? grow(acts->xnf, rows * H) : buf_.xn.data();
  norm(delta, w.final_norm_w, w.final_norm_b, xnf, acts ? grow(acts->statfa, rows) : nullptr,
       acts && !llama ? grow(acts->statfb, rows) : nullptr);                  // final hidden
  if (acts) be_.copy(grow(acts->xf, rows * H), x, sizeof(float) * rows * H);
}

void Transformer::store_kv(KvCache& cache, int64_t l, const float* qkv, int64_t rows, int64_t seq, const int32_t* slots) {
  const Config& c = cfg_;
  const int64_t D = c.head_dim, Q = c.q_dim(), KV = c.kv_dim(), QKV = c.qkv_dim(), cap = cache.capacity;
  const size_t f = sizeof(float);
  float* kc = cache.k[static_cast<size_t>(l)].data();
  float* vc = cache.v[static_cast<size_t>(l)].data();
  // k of head h of row i goes to kc[((b * kv_heads + h) * capacity + slot) * D]. Where a
  // sequence's slots are consecutive (prefill), one strided copy per (sequence, head);
  // otherwise one per row over its heads.
  bool runs = true;
  for (int64_t i = 0; i < rows && runs; ++i) runs = slots[i] == slots[(i / seq) * seq] + i % seq;
  for (const int which : {0, 1}) {
    float* cache_base = which == 0 ? kc : vc;
    const float* src_base = qkv + Q + which * KV;
    if (runs) {
      for (int64_t b = 0; b < rows / seq; ++b)
        for (int64_t h = 0; h < c.kv_heads; ++h)
          be_.copy2d(cache_base + ((b * c.kv_heads + h) * cap + slots[b * seq]) * D, D * f, src_base + b * seq * QKV + h * D, QKV * f,
                     D * f, static_cast<size_t>(seq));
    } else {
      for (int64_t i = 0; i < rows; ++i)
        be_.copy2d(cache_base + ((i / seq) * c.kv_heads * cap + slots[i]) * D, cap * D * f, src_base + i * QKV, D * f, D * f,
                   static_cast<size_t>(c.kv_heads));
    }
  }
}

void Transformer::check_ids(const int32_t* ids, int64_t n, int64_t seq) const {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= cfg_.vocab)
      throw Error(code::kArgument, "token id " + std::to_string(ids[i]) + " at batch row " + std::to_string(i / seq) + ", position " +
                                       std::to_string(i % seq) + " is outside the vocabulary (size " + std::to_string(cfg_.vocab) + ")");
}

void Transformer::run_heads(const ForwardRequest& req, const uint8_t* mask, const float* hidden, const float* score, HeadActs& head,
                            ForwardResult& out) {
  const Weights& w = *bw_;
  const int64_t B = req.batch, T = req.seq, N = B * T;
  const bool has_lm = w.lm_head || w.lm_head16;
  head.targets.assign(static_cast<size_t>(N), -1);
  // Reset whatever the forward runs: a forward without the LM head must not
  // leave an earlier forward's fused LM-head gradient for backward().
  head.has_grad = false;
  head.has_sft_mask = false;
  if (req.want_logp) {
    if (!has_lm) throw Error(code::kArgument, "this model has no LM head (it is a sequence classifier)");
    // Row (b, t) predicts ids[b, t+1]; padded queries/targets and each
    // sequence's last row get -1 (no target).
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t)
        if (!mask || (mask[b * T + t] && mask[b * T + t + 1])) head.targets[static_cast<size_t>(b * T + t)] = req.ids[b * T + t + 1];
    head.targets_d.upload(be_, head.targets);
    head.logp.ensure(be_, N), head.entropy.ensure(be_, N), head.lse.ensure(be_, N), head.mean_logp.ensure(be_, N);
    if (req.lm_grad || req.sft_mask) {
      lm_head_with_grad(req, hidden, head);
    } else {
      LmHeadLogpOp op;
      op.n = N, op.dim = cfg_.hidden, op.vocab = cfg_.vocab, op.hidden = hidden, op.weight = w.lm_head, op.weight_bf16 = w.lm_head16;
      op.targets = head.targets_d.data();
      op.logp = head.logp.data(), op.entropy = head.entropy.data(), op.lse = head.lse.data(), op.mean_logp = head.mean_logp.data();
      op.inv_temperature = req.temperature > 0 ? 1.f / req.temperature : 1.f;
      be_.lm_head_logp(op);
    }
    if (req.download) {
      out.logp = rows_to_shifted(head.logp.to_host(N), B, T);
      out.entropy = rows_to_shifted(head.entropy.to_host(N), B, T);
    }
  }
  if (req.want_last_logits) {
    if (!has_lm) throw Error(code::kArgument, "this model has no LM head");
    float* logits = buf_.logits.ensure(be_, B * cfg_.vocab);
    for (int64_t b = 0; b < B; ++b) {
      int64_t last = T - 1;
      while (last > 0 && mask && !mask[b * T + last]) --last;
      logits_rows(hidden + (b * T + last) * cfg_.hidden, 1, cfg_.hidden, logits + b * cfg_.vocab);
    }
    out.last_logits = buf_.logits.to_host(B * cfg_.vocab);
  }
  if (req.want_values) {
    if (!score) throw Error(code::kArgument, "this model has no score head");
    ValueHeadOp op;
    op.n = N, op.dim = cfg_.hidden, op.hidden = hidden, op.weight = score, op.value = head.values.ensure(be_, N);
    be_.value_head(op);
    if (req.download) out.values = head.values.to_host(N);
  }
}

void Transformer::lm_head_with_grad(const ForwardRequest& req, const float* hidden, HeadActs& head) {
  const Weights& w = *bw_;
  const int64_t B = req.batch, T = req.seq, N = B * T, H = cfg_.hidden, V = cfg_.vocab;
  const float* dl_d = nullptr;
  const float* dm_d = nullptr;  // label smoothing's gradient w.r.t. mean_logp
  head.sft_label_smoothing = 0.f;
  if (req.sft_mask) {
    // SFT's gradient -mask / denom, made on the backend by the sft_loss op
    // (its loss output, of a zero logp, is not used); the mask stays for the
    // loss call.
    head.sft_mask.upload(be_, shifted_to_rows(req.sft_mask, B, T));
    head.sft_denom = req.sft_denom;
    head.sft_label_smoothing = req.sft_label_smoothing;
    head.has_sft_mask = true;
    SftLossOp op;
    op.n = N, op.logp = loss_.zeros.zeros(be_, N), op.mask = head.sft_mask.data(), op.denom = req.sft_denom;
    op.label_smoothing = req.sft_label_smoothing, op.mean_logp = op.logp;
    op.loss = loss_.out.ensure(be_, 1), op.dlogp = head.dlogp.ensure(be_, N);
    if (req.sft_label_smoothing != 0.f) op.dmean_logp = head.dmean_logp.ensure(be_, N);
    be_.sft_loss(op);
    dl_d = head.dlogp.data();
    dm_d = op.dmean_logp;
  } else {
    dl_d = head.dlogp.upload(be_, shifted_to_rows(req.lm_grad, B, T));
  }
  float* dh = head.dhidden.ensure(be_, N * H);
  float* dw = grad_of(w.lm_head);  // full fine-tuning (fp32 weights); null otherwise
  // Row blocks of at most 16M logits (64 MB), equal in size.
  const int64_t budget = int64_t(1) << 24;
  const int64_t blocks = std::max<int64_t>(1, (N * V + budget - 1) / budget);
  const int64_t R = (N + blocks - 1) / blocks;
  float* z = buf_.xent.ensure(be_, R * V);
  const float inv_t = req.temperature > 0 ? 1.f / req.temperature : 1.f;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    GemmOp g;  // z = h W^T
    g.trans_b = true;
    g.m = rows, g.n = V, g.k = H, g.a = hidden + r0 * H, g.lda = H, g.b = w.lm_head, g.b_bf16 = w.lm_head16, g.ldb = H, g.c = z, g.ldc = V;
    be_.gemm(g);
    LogitsXentOp x;
    x.n = rows, x.vocab = V, x.ld = V, x.z = z, x.targets = head.targets_d.data() + r0, x.dlogp = dl_d + r0, x.inv_temperature = inv_t;
    x.logp = head.logp.data() + r0, x.entropy = head.entropy.data() + r0, x.lse = head.lse.data() + r0;
    x.mean_logp = head.mean_logp.data() + r0, x.dmean_logp = dm_d ? dm_d + r0 : nullptr;
    be_.logits_xent(x);
    GemmOp gh;  // dh = dz W
    gh.m = rows, gh.n = H, gh.k = V, gh.a = z, gh.lda = V, gh.b = w.lm_head, gh.b_bf16 = w.lm_head16, gh.ldb = H;
    gh.c = dh + r0 * H, gh.ldc = H;
    be_.gemm(gh);
    if (dw) {  // dW += dz^T h
      GemmOp gw;
      gw.trans_a = true;
      gw.m = V, gw.n = H, gw.k = rows, gw.a = z, gw.lda = V, gw.b = hidden + r0 * H, gw.ldb = H, gw.c = dw, gw.ldc = H, gw.accumulate = true;
      be_.gemm(gw);
    }
  }
  head.has_grad = true;
}

ForwardResult Transformer::forward(const ForwardRequest& req) {
  const int64_t B = req.batch, T = req.seq, N = B * T;
  if (B <= 0 || T <= 0) throw Error(code::kArgument, "forward: empty batch");
  if (req.lm_grad || req.sft_mask) throw Error(code::kArgument, "forward: lmGrad and sftMask are for the training forward only");
  check_ids(req.ids, N, T);
  infer_.valid = false;  // until the heads have run
  std::vector<int32_t> pos(static_cast<size_t>(N));
  positions_from_mask(req.mask, B, T, pos.data());
  body(N, req.ids, pos.data(), req.mask, B, T, nullptr, nullptr);
  ForwardResult out;
  const float* score = adapter_ && adapter_->score ? adapter_->score : bw_->score;
  run_heads(req, req.mask, buf_.xn.data(), score, head_, out);
  infer_.batch = B, infer_.seq = T;
  if (req.mask) infer_.mask.assign(req.mask, req.mask + N);
  else infer_.mask.assign(static_cast<size_t>(N), 1);
  infer_.logp = req.want_logp;
  infer_.values = req.want_values;
  infer_.valid = true;
  return out;
}

void Transformer::logits_rows(const float* hidden, int64_t rows, int64_t ld_rows, float* out) {
  GemmOp g;
  g.trans_b = true;
  g.m = rows, g.n = cfg_.vocab, g.k = cfg_.hidden;
  g.a = hidden, g.lda = ld_rows, g.b = bw_->lm_head, g.b_bf16 = bw_->lm_head16, g.ldb = cfg_.hidden, g.c = out, g.ldc = cfg_.vocab;
  be_.gemm(g);
}

const float* Transformer::prefill(const int32_t* ids, const uint8_t* mask, int64_t B, int64_t T, int64_t capacity, KvCache& cache) {
  if (!bw_->lm_head && !bw_->lm_head16) throw Error(code::kArgument, "this model has no LM head and cannot generate");
  const int64_t N = B * T;
  check_ids(ids, N, T);
  cache.batch = B;
  cache.capacity = capacity;
  const int64_t per_layer = B * cfg_.kv_heads * capacity * cfg_.head_dim;
  cache.k.resize(static_cast<size_t>(cfg_.layers));
  cache.v.resize(static_cast<size_t>(cfg_.layers));
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    cache.k[static_cast<size_t>(l)].zeros(be_, per_layer);
    cache.v[static_cast<size_t>(l)].zeros(be_, per_layer);
  }
  cache.mask.assign(static_cast<size_t>(B * capacity), 0);
  cache.length.assign(static_cast<size_t>(B), static_cast<int32_t>(T));
  cache.next_pos.assign(static_cast<size_t>(B), 0);
  std::vector<int32_t> pos(static_cast<size_t>(N)), slots(static_cast<size_t>(N));
  positions_from_mask(mask, B, T, pos.data());
  for (int64_t b = 0; b < B; ++b) {
    int32_t real = 0;
    for (int64_t t = 0; t < T; ++t) {
      slots[static_cast<size_t>(b * T + t)] = static_cast<int32_t>(t);
      const bool m = !mask || mask[b * T + t];
      cache.mask[static_cast<size_t>(b * capacity + t)] = m;
      real += m;
    }
    cache.next_pos[static_cast<size_t>(b)] = real;
  }
  cache.mask_d.upload(be_, cache.mask);
  cache.length_d.upload(be_, cache.length);
  body(N, ids, pos.data(), mask, B, T, &cache, slots.data());
  float* logits = buf_.logits.ensure(be_, B * cfg_.vocab);
  // Last position of each (left-padded) row.
  for (int64_t b = 0; b < B; ++b) logits_rows(buf_.xn.data() + (b * T + T - 1) * cfg_.hidden, 1, cfg_.hidden, logits + b * cfg_.vocab);
  return logits;
}

const float* Transformer::decode(const int32_t* tokens, KvCache& cache) {
  const int64_t B = cache.batch;
  std::vector<int32_t> pos(static_cast<size_t>(B)), slots(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    if (tokens[b] < 0 || tokens[b] >= cfg_.vocab) throw Error(code::kArgument, "decode: token id outside the vocabulary");
    if (cache.length[static_cast<size_t>(b)] >= cache.capacity) throw Error(code::kArgument, "decode: KV cache is full");
  }
  for (int64_t b = 0; b < B; ++b) {
    pos[static_cast<size_t>(b)] = cache.next_pos[static_cast<size_t>(b)]++;
    slots[static_cast<size_t>(b)] = cache.length[static_cast<size_t>(b)]++;
    cache.mask[static_cast<size_t>(b * cache.capacity + slots[static_cast<size_t>(b)])] = 1;
  }
  cache.mask_d.upload(be_, cache.mask);
  cache.length_d.upload(be_, cache.length);
  body(B, tokens, pos.data(), nullptr, B, 1, &cache, slots.data());
  float* logits = buf_.logits.ensure(be_, B * cfg_.vocab);
  logits_rows(buf_.xn.data(), B, cfg_.hidden, logits);
  return logits;
}

}  // namespace rlhf::model
