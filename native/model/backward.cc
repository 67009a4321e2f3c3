// Training: the forward pass that keeps activations, and the backward pass,
// which walks the layers in reverse and calls each op's backward in the
// mirror order of body() (transformer.cc).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../error.h"
#include "../ops/math.h"
#include "transformer.h"

namespace rlhf::model {

const char* proj_peft_name(Proj p) {
  switch (p) {
    case Proj::kQ: return "q_proj";
    case Proj::kK: return "k_proj";
    case Proj::kV: return "v_proj";
    case Proj::kO: return "o_proj";
    case Proj::kGate: return "gate_proj";
    case Proj::kUp: return "up_proj";
    case Proj::kDown: return "down_proj";
    case Proj::kCAttn: return "c_attn";
    case Proj::kAttnCProj: return "c_proj";
    case Proj::kCFc: return "c_fc";
    case Proj::kMlpCProj: return "c_proj";
    case Proj::kQkv: return "qkv_proj";
    case Proj::kGateUp: return "gate_up_proj";
  }
  return "?";
}

void lora_dropout_apply(const float* in, float* out, int64_t rows, int64_t cols, float p, uint64_t key, size_t module) {
  const uint64_t k = math::mix64(key ^ (0x5851f42d4c957f2dull * (module + 1)));
  const float keep_scale = 1.f / (1.f - p);
  for (int64_t i = 0; i < rows * cols; ++i)
    out[i] = math::uniform01(k, static_cast<uint64_t>(i)) >= p ? in[i] * keep_scale : 0.f;
}

ForwardResult Transformer::forward_train(const ForwardRequest& req) {
  if (!adapter_ && !full_) throw Error(code::kArgument, "training forward: nothing is trainable (attach an adapter or enable full training)");
  if (req.want_last_logits) throw Error(code::kArgument, "training forward: lastLogits is not available");
  if ((req.lm_grad || req.sft_mask) && !req.want_logp) throw Error(code::kArgument, "training forward: lmGrad / sftMask need the LM head (logp)");
  if (req.lm_grad && req.sft_mask) throw Error(code::kArgument, "training forward: give lmGrad or sftMask, not both");
  if (!(req.sft_label_smoothing >= 0.f && req.sft_label_smoothing <= 1.f))
    throw Error(code::kArgument, "training forward: the SFT label smoothing must be in [0, 1], got " + std::to_string(req.sft_label_smoothing));
  if (req.sft_label_smoothing != 0.f && !req.sft_mask) throw Error(code::kArgument, "training forward: label smoothing needs sftMask");
  const int64_t B = req.batch, T = req.seq, N = B * T;
  if (B <= 0 || T <= 0) throw Error(code::kArgument, "training forward: empty batch");
  check_ids(req.ids, N, T);
  Acts& a = acts_;
  a.rows = N, a.batch = B, a.seq = T;
  a.ids.assign(req.ids, req.ids + N);
  a.mask.assign(static_cast<size_t>(N), 1);
  if (req.mask) a.mask.assign(req.mask, req.mask + N);
  a.positions.resize(static_cast<size_t>(N));
  positions_from_mask(a.mask.data(), B, T, a.positions.data());
  if (a.layers.size() != static_cast<size_t>(cfg_.layers)) a.layers.resize(static_cast<size_t>(cfg_.layers));
  has_acts_ = false;  // until the heads have run too
  loss_.clear();      // gradients of an earlier forward's outputs are void
  body(N, a.ids.data(), a.positions.data(), a.mask.data(), B, T, nullptr, nullptr, &a);
  train_logp_ = req.want_logp;
  train_values_ = req.want_values;
  inv_temperature_ = req.temperature > 0 ? 1.f / req.temperature : 1.f;
  ForwardResult out;
  const float* score = adapter_ && adapter_->score ? adapter_->score : bw_->score;
  run_heads(req, a.mask.data(), a.xnf.data(), score, a.head, out);
  has_acts_ = true;
  acts_adapter_ = adapter_;
  return out;
}

float* Transformer::grad_of(const float* weight) {
  if (!full_ || !weight) return nullptr;
  return full_->slab.data() + (weight - bw_->slab_base);
}

void Transformer::backward(const float* dlogp_in, const float* dentropy_in, const float* dvalues) {
  if (!has_acts_) throw Error(code::kArgument, "backward: call the training forward first");
  if (acts_adapter_ != adapter_) throw Error(code::kArgument, "backward: the active adapter changed since the training forward");
  Acts& a = acts_;
  const Config& c = cfg_;
  const int64_t N = a.rows, B = a.batch, T = a.seq;
  const int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), QKV = c.qkv_dim(), F = c.intermediate, D = c.head_dim;
  const bool llama = c.arch == Arch::kLlama;
  const int64_t MLP = llama ? 2 * F : F;
  const Weights& w = *bw_;
  float* dxn = bwd_.dxn.zeros(be_, N * H);    // gradient of a norm's output
  float* dres = bwd_.dres.zeros(be_, N * H);  // gradient of the residual stream
  float* dqkv = bwd_.dqkv.zeros(be_, N * QKV);
  float* datt = bwd_.datt.zeros(be_, N * Q);
  float* dmlp = bwd_.dmlp.zeros(be_, N * MLP);
  float* dact = bwd_.dact.zeros(be_, N * F);

  // Gradients a loss call left in backend memory (row layout) stand in for
  // the host arrays not given.
  LossState& ls = loss_;
  auto clash = [](bool host, bool device, const char* what) {
    if (host && device)
      throw Error(code::kArgument, std::string("backward: the loss call already left the gradient of ") + what +
                                       " in backend memory; pass no '" + what + "' array (or make no loss call)");
  };
  clash(dlogp_in, ls.has_dlogp, "dlogp");
  clash(dentropy_in, ls.has_dentropy, "dentropy");
  clash(dvalues, ls.has_dvalues, "dvalues");
  const float* dlogp_d = dlogp_in ? nullptr : ls.has_dlogp ? ls.dlogp.data() : nullptr;
  const float* dentropy_d = dentropy_in ? nullptr : ls.has_dentropy ? ls.dentropy.data() : nullptr;
  const float* dvalues_d = dvalues ? nullptr : ls.has_dvalues ? ls.dvalues.data() : nullptr;
  const float* dmean_d = ls.has_dmean_logp ? ls.dmean_logp.data() : nullptr;  // label smoothing (no host array form)
  const bool any_dlogp = dlogp_in || dlogp_d || dmean_d, any_dentropy = dentropy_in || dentropy_d;

  // Heads: per-row gradients (row b*T+t) into the final hidden state.
  if (a.head.has_grad) {  // the training forward already ran the LM head's backward (lm_grad)
    if (any_dlogp || any_dentropy)
      throw Error(code::kArgument, "backward: the LM-head gradient was given to the training forward (lmGrad); pass no dlogp/dentropy");
    be_.copy(dxn, a.head.dhidden.data(), sizeof(float) * static_cast<size_t>(N * H));
  } else if (train_logp_ && (any_dlogp || any_dentropy)) {
    LmHeadLogpBackwardOp op;
    op.n = N, op.dim = H, op.vocab = c.vocab, op.hidden = a.xnf.data(), op.weight = w.lm_head, op.weight_bf16 = w.lm_head16;
    op.targets = a.head.targets_d.data();
    op.lse = a.head.lse.data(), op.entropy = a.head.entropy.data();
    op.dlogp = dlogp_d ? dlogp_d : dlogp_in ? bwd_.dlogp.upload(be_, shifted_to_rows(dlogp_in, B, T)) : nullptr;
    op.dmean_logp = dmean_d;
    op.dentropy = dentropy_d ? dentropy_d : dentropy_in ? bwd_.dentropy.upload(be_, shifted_to_rows(dentropy_in, B, T)) : nullptr;
    op.inv_temperature = inv_temperature_, op.dhidden = dxn, op.dweight = grad_of(w.lm_head);
    be_.lm_head_logp_backward(op);
  }
  if (train_values_ && (dvalues || dvalues_d)) {
    const bool adapter_head = adapter_ && adapter_->score;
    ValueHeadBackwardOp op;
    op.n = N, op.dim = H, op.hidden = a.xnf.data(), op.weight = adapter_head ? adapter_->score : w.score;
    op.dvalue = dvalues_d ? dvalues_d : bwd_.dvalues.upload(be_, dvalues, N), op.dhidden = dxn;
    op.dweight = adapter_head ? adapter_->dscore : grad_of(w.score);
    be_.value_head_backward(op);
  }
  ls.clear();  // consumed

  auto norm_bwd = [&](const float* x, const float* wgt, const float* sa, const float* sb) {
    if (llama) {
      RmsNormBackwardOp op;
      op.n = N, op.dim = H, op.x = x, op.weight = wgt, op.weight_offset = c.norm_offset, op.rstd = sa, op.dout = dxn, op.dx = dres;
      op.dweight = grad_of(wgt);
      be_.rmsnorm_backward(op);
    } else {
      LayerNormBackwardOp op;
      op.n = N, op.dim = H, op.x = x, op.weight = wgt, op.mean = sb, op.rstd = sa, op.dout = dxn, op.dx = dres;
      op.dweight = grad_of(wgt);
      be_.layernorm_backward(op);
    }
  };
  auto norm_bias_grad = [&](const float* bias) {  // LayerNorm's bias: the column sums of dxn
    if (!bias || !grad_of(bias)) return;
    BiasGradOp op;
    op.n = N, op.dim = H, op.dy = dxn, op.ld = H, op.db = grad_of(bias);
    be_.bias_grad(op);
  };
  // Backward of out = in W^T + bias for a Linear [out_dim, in_dim]:
  // din (+)= dout W; dW += dout^T in; dbias += colsum(dout).
  auto linear_bwd = [&](const float* dout, int64_t ld_dout, const float* in, int64_t in_dim, const float* wgt, const uint16_t* wgt16,
                        const float* bias, int64_t out_dim, float* din, bool accumulate) {
    GemmOp g;
    g.m = N, g.n = in_dim, g.k = out_dim, g.a = dout, g.lda = ld_dout, g.b = wgt, g.b_bf16 = wgt16, g.ldb = in_dim, g.c = din;
    g.ldc = in_dim;
    g.accumulate = accumulate;
    be_.gemm(g);
    if (float* dw = grad_of(wgt)) {
      GemmOp gw;
      gw.trans_a = true;
      gw.m = out_dim, gw.n = in_dim, gw.k = N, gw.a = dout, gw.lda = ld_dout, gw.b = in, gw.ldb = in_dim, gw.c = dw, gw.ldc = in_dim;
      gw.accumulate = true;
      be_.gemm(gw);
    }
    if (float* db = grad_of(bias)) {
      BiasGradOp op;
      op.n = N, op.dim = out_dim, op.dy = dout, op.ld = ld_dout, op.db = db;
      be_.bias_grad(op);
    }
  };
  // LoRA modules of layer l reading `in` (the fused op's backward): with
  // u = s x A^T saved, dB += dY^T u; du = s dY B; dA += du^T x; dx += du A.
  auto lora_bwd = [&](int64_t l, std::initializer_list<Proj> projs, const float* dout, int64_t ld_dout, const float* in, float* din) {
    if (!adapter_) return;
    const int64_t r = adapter_->r;
    float* du = bwd_.du.ensure(be_, N * r);
    const bool dropout = adapter_->dropout > 0.f;
    for (size_t mi = 0; mi < adapter_->modules.size(); ++mi) {
      const LoraModule& m = adapter_->modules[mi];
      if (m.layer != l || std::find(projs.begin(), projs.end(), m.proj) == projs.end()) continue;
      LoraBackwardOp op;
      op.n = N, op.in = m.in, op.out = m.out, op.r = r;
      op.dy = dout + m.col, op.lddy = ld_dout, op.x_lora = in, op.ldx = m.in;
      op.u = a.lora_u[mi].data(), op.a = m.a, op.b = m.b, op.scale = adapter_->scale;
      op.da = m.da, op.db = m.db, op.du = du, op.dx = din, op.lddx = m.in, op.accumulate_dx = true;
      if (dropout) {  // dropout(x), as the forward saw it; the mask (and 1/(1-p)) applies to the input gradient too
        float* xd = bwd_.xd.ensure(be_, N * m.in);
        this->dropout(in, xd, N, m.in, a.dropout_key, mi);
        op.x_lora = xd;
        op.dx = bwd_.dxd.ensure(be_, N * m.in), op.accumulate_dx = false;
      }
      be_.lora_backward(op);
      if (dropout) {
        this->dropout(op.dx, op.dx, N, m.in, a.dropout_key, mi);
        AddOp add;
        add.n = N, add.dim = m.in, add.x = op.dx, add.y = din;
        be_.add(add);
      }
    }
  };

  // Backward of head_norm (transformer.cc): the gradient of the `nh` normed
  // heads at column `col` of dqkv [N, QKV] is gathered [N * nh, D], taken
  // through the RMSNorm and written back in its place.
  auto head_norm_bwd = [&](int64_t col, int64_t nh, const float* wgt, const float* x_in, const float* rstd) {
    const size_t f = sizeof(float), width = static_cast<size_t>(nh * D) * f;
    float* dout = bwd_.dhn_out.ensure(be_, N * nh * D);
    float* din = bwd_.dhn_in.zeros(be_, N * nh * D);
    be_.copy2d(dout, width, dqkv + col, static_cast<size_t>(QKV) * f, width, static_cast<size_t>(N));
    RmsNormBackwardOp op;
    op.n = N * nh, op.dim = D, op.x = x_in, op.weight = wgt, op.weight_offset = c.norm_offset, op.rstd = rstd, op.dout = dout, op.dx = din;
    op.dweight = grad_of(wgt);
    be_.rmsnorm_backward(op);
    be_.copy2d(dqkv + col, static_cast<size_t>(QKV) * f, din, width, width, static_cast<size_t>(N));
  };

  // The rotary tables of the training forward (LongRoPE's choice of factors
  // depends on the longest position; another forward may have changed it).
  int32_t max_pos = 0;
  for (int32_t p : a.positions) max_pos = std::max(max_pos, p);
  ensure_rope(max_pos + 1);

  // Gemma's post norm of a block output x [N, H]: the normed rows joined the
  // residual stream, so their gradient is dres; returns d x (bwd_.dpost).
  auto post_norm_bwd = [&](const float* x, const float* wgt, const float* rstd) -> float* {
    float* dx = bwd_.dpost.zeros(be_, N * H);
    RmsNormBackwardOp op;
    op.n = N, op.dim = H, op.x = x, op.weight = wgt, op.weight_offset = c.norm_offset, op.rstd = rstd, op.dout = dres, op.dx = dx;
    op.dweight = grad_of(wgt);
    be_.rmsnorm_backward(op);
    return dx;
  };

  // Final norm: its input is the residual after the last layer.
  norm_bwd(a.xf.data(), w.final_norm_w, a.statfa.data(), a.statfb.empty() ? nullptr : a.statfb.data());
  norm_bias_grad(w.final_norm_b);

  for (int64_t l = c.layers - 1; l >= 0; --l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    LayerActs& A = a.layers[static_cast<size_t>(l)];
    // MLP: tmp = act W_out^T (+ LoRA) was added to the residual, so d tmp = dres
    // (Gemma: through the post-feedforward norm first).
    const float* dmlp_o = c.sandwich_norm ? post_norm_bwd(A.mlp_o.data(), L.post_ff_norm_w, A.stat_pf.data()) : dres;
    linear_bwd(dmlp_o, H, A.act.data(), F, L.w_out, L.w_out16, L.b_out, H, dact, false);
    lora_bwd(l, {Proj::kDown, Proj::kMlpCProj}, dmlp_o, H, A.act.data(), dact);
    if (llama) {
      SwigluBackwardOp s;
      s.n = N, s.dim = F, s.gate = A.mlp.data(), s.up = A.mlp.data() + F, s.ld_in = 2 * F, s.dout = dact, s.ld_out = F;
      s.dgate = dmlp, s.dup = dmlp + F, s.gelu = c.geglu;
      be_.swiglu_backward(s);
    } else {
      GeluBackwardOp g;
      g.n = N, g.dim = F, g.x = A.mlp.data(), g.ld_in = F, g.dout = dact, g.ld_out = F, g.dx = dmlp;
      be_.gelu_backward(g);
    }
    linear_bwd(dmlp, MLP, A.xn2.data(), H, L.w_in, L.w_in16, L.b_in, MLP, dxn, false);
    lora_bwd(l, {Proj::kGate, Proj::kUp, Proj::kCFc, Proj::kGateUp}, dmlp, MLP, A.xn2.data(), dxn);
    norm_bwd(A.x2.data(), L.norm2_w, A.stat2a.data(), A.stat2b.empty() ? nullptr : A.stat2b.data());
    norm_bias_grad(L.norm2_b);
    // Attention: its output projection was added to the residual (Gemma: through the post-attention norm).
    const float* datt_o = c.sandwich_norm ? post_norm_bwd(A.att_o.data(), L.post_attn_norm_w, A.stat_pa.data()) : dres;
    linear_bwd(datt_o, H, A.att.data(), Q, L.wo, L.wo16, L.bo, H, datt, false);
    lora_bwd(l, {Proj::kO, Proj::kAttnCProj}, datt_o, H, A.att.data(), datt);
    AttentionBackwardOp ab;
    ab.batch = B, ab.seq = T, ab.heads = c.heads, ab.kv_heads = c.kv_heads, ab.head_dim = D;
    ab.scale = c.attention_scale();
    ab.q = A.qkv.data(), ab.k = A.qkv.data() + Q, ab.v = A.qkv.data() + Q + KV, ab.ldq = ab.ldk = ab.ldv = QKV;
    ab.mask = a.mask_d.data(), ab.out = A.att.data(), ab.dout = datt, ab.ldo = Q, ab.lse = A.lse.data();
    ab.dq = dqkv, ab.dk = dqkv + Q, ab.dv = dqkv + Q + KV;
    be_.attention_backward(ab);
    if (llama) {  // undo the rotation of q and k
      RopeOp r;
      r.n = N, r.heads = c.heads + c.kv_heads, r.head_dim = D, r.rotary_dim = c.rot_dim(), r.x = dqkv, r.ld = QKV;
      r.positions = a.positions_d.data(), r.inverse = true;
      r.cos = (c.is_local(l) ? rope_cos_local_ : rope_cos_).data(), r.sin = (c.is_local(l) ? rope_sin_local_ : rope_sin_).data();
      be_.rope(r);
    }
    if (c.qk_norm) {  // through the per-head q/k norms, in place on dqkv
      head_norm_bwd(0, c.heads, L.q_norm_w, A.qn_in.data(), A.qn_rstd.data());
      head_norm_bwd(Q, c.kv_heads, L.k_norm_w, A.kn_in.data(), A.kn_rstd.data());
    }
    linear_bwd(dqkv, QKV, A.xn1.data(), H, L.wqkv, L.wqkv16, L.bqkv, QKV, dxn, false);
    lora_bwd(l, {Proj::kQ, Proj::kK, Proj::kV, Proj::kCAttn, Proj::kQkv}, dqkv, QKV, A.xn1.data(), dxn);
    norm_bwd(A.x1.data(), L.norm1_w, A.stat1a.data(), A.stat1b.empty() ? nullptr : A.stat1b.data());
    norm_bias_grad(L.norm1_b);
  }
  if (full_) {
    EmbeddingBackwardOp e;
    if (c.embed_scale != 1.f) {  // Gemma: x = embed * scale
      ScaleOp s;
      s.n = N * H, s.x = dres, s.factor = c.embed_scale;
      be_.scale(s);
    }
    e.n = N, e.dim = H, e.rows = c.vocab, e.ids = a.ids_d.data(), e.dout = dres, e.dtable = grad_of(w.embed);
    e.positions = llama ? nullptr : a.positions_d.data(), e.dpos_table = llama ? nullptr : grad_of(w.pos_embed);
    be_.embedding_backward(e);
  }
}

}  // namespace rlhf::model
