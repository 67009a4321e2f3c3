#include "objective.h"

#include <cmath>

#include "../error.h"

namespace rlhf::model {

namespace {

// The outputs a loss call reads (the training forward's, or in evaluation
// mode the inference forward's) and the scratch it works in.
struct Ctx {
  Backend& be;
  const HeadActs& h;                // logp, entropy, values [rows]
  const std::vector<uint8_t>& amask;  // the forward's attention mask [batch, seq]
  bool has_logp, has_values;
  bool eval;  // no gradients: null gradient outputs, no row_dot_backward
  LossState& s;
  int64_t B, T, N;
  const char* what;
  const char* forward_name() const { return eval ? "forward" : "training forward"; }

  [[noreturn]] void fail(const std::string& msg) const {
    throw Error(code::kArgument, std::string(what) + (eval ? " evaluation: " : " loss: ") + msg);
  }

  // A host array in the caller's [batch, seq-1] layout, into `buf` in the
  // row layout [batch, seq] (0 at each row's last position).
  const float* tokens(Buffer<float>& buf, const std::vector<float>& v, const char* name) const {
    if (static_cast<int64_t>(v.size()) != B * (T - 1))
      fail(std::string("'") + name + "' has " + std::to_string(v.size()) + " elements, expected batch*(seq-1) = " + std::to_string(B * (T - 1)));
    return buf.upload(be, shifted_to_rows(v.data(), B, T));
  }
  const float* pairs(Buffer<float>& buf, const std::vector<float>& v, int64_t P, const char* name) const {
    if (static_cast<int64_t>(v.size()) != P)
      fail(std::string("'") + name + "' has " + std::to_string(v.size()) + " elements, expected one per pair (" + std::to_string(P) + ")");
    return buf.upload(be, v);
  }
  const float* per_row(Buffer<float>& buf, const std::vector<float>& v, const char* name) const {
    if (static_cast<int64_t>(v.size()) != B)
      fail(std::string("'") + name + "' has " + std::to_string(v.size()) + " elements, expected one per row (" + std::to_string(B) + ")");
    return buf.upload(be, v);
  }
  int64_t pair_count() const {
    if (B % 2) fail("the forward has " + std::to_string(B) + " rows; it needs chosen rows then rejected rows (an even count)");
    return B / 2;
  }
  void need_logp() const {
    if (!has_logp) fail(std::string("the ") + forward_name() + " computed no log-probs (logp: false)");
  }
  void need_values() const {
    if (!has_values) fail(std::string("the ") + forward_name() + " computed no values (values: true)");
  }
  void no_forward_grad() const {
    if (h.has_grad) fail("the training forward was given the LM-head gradient (lmGrad / sftMask); run it without one");
  }
  // The per-row masked sums of logp (row_dot with the completion mask) into
  // s.sums; the mask, uploaded, is returned for row_dot_backward.
  const float* logp_sums(const std::vector<float>& m) const {
    if (m.empty()) fail("give the mask of each row's completion tokens");
    const float* mask = tokens(s.mask, m, "mask");
    RowDotOp rd;
    rd.rows = B, rd.cols = T, rd.x = h.logp.data(), rd.w = mask, rd.out = s.sums.ensure(be, B);
    be.row_dot(rd);
    return mask;
  }
  // The per-row gradients dsums spread over each row's tokens by its weights
  // (row_dot_backward) into `dx`, the gradient backward() takes next.
  void broadcast(const float* w, const float* dsums, Buffer<float>& dx, bool& has) const {
    RowDotBackwardOp bd;
    bd.rows = B, bd.cols = T, bd.w = w, bd.dout = dsums, bd.dx = dx.ensure(be, N);
    be.row_dot_backward(bd);
    has = true;
  }
  // The scalars: `count` floats at the start of s.out, in one read back.
  std::vector<float> read(int64_t count) const { return s.out.to_host(count); }
};

ObjectiveResult sft(Ctx& c, const ObjectiveRequest& r) {
  c.need_logp();
  const HeadActs& h = c.h;
  const float* mask = nullptr;
  float denom = r.has_denom ? r.denom : 0.f;
  float eps = r.has_label_smoothing ? r.label_smoothing : 0.f;
  if (!r.mask.empty()) {
    mask = c.tokens(c.s.mask, r.mask, "mask");
  } else if (h.has_sft_mask) {
    mask = h.sft_mask.data();
    if (!r.has_denom) denom = h.sft_denom;
    if (!r.has_label_smoothing) eps = h.sft_label_smoothing;
  } else {
    c.fail(c.eval ? "give the loss mask" : "give the loss mask (or pass it to the training forward as sftMask)");
  }
  if (!(eps >= 0.f && eps <= 1.f)) c.fail("labelSmoothing must be in [0, 1], got " + std::to_string(eps));
  if (!c.eval && h.has_grad && r.grad_scale != 1.f)
    c.fail("the gradient was given to the training forward; gradScale does not apply to it (pass 1 or scale the forward's gradient)");
  if (!c.eval && h.has_grad && r.ent_coef != 0.f)
    c.fail("the gradient was given to the training forward; an entropy bonus (entCoef) needs a forward without one");
  if (!c.eval && h.has_grad && eps != h.sft_label_smoothing)
    c.fail("the training forward made the gradient with label smoothing " + std::to_string(h.sft_label_smoothing) + ", not " + std::to_string(eps));
  SftLossOp op;
  op.n = c.N, op.logp = h.logp.data(), op.mask = mask, op.denom = denom, op.grad_scale = r.grad_scale;
  op.label_smoothing = eps, op.mean_logp = h.mean_logp.data();
  constexpr int64_t K = 1 + SftLossOp::kStatCount;
  float* out = c.s.out.ensure(c.be, 2 * K);  // the NLL's loss and statistics, then the entropy's
  op.loss = out, op.stats = out + 1;
  const bool grad = !c.eval && !h.has_grad;
  if (grad) op.dlogp = c.s.dlogp.ensure(c.be, c.N);
  if (grad && eps != 0.f) op.dmean_logp = c.s.dmean_logp.ensure(c.be, c.N);
  c.be.sft_loss(op);
  if (grad) c.s.has_dlogp = true, c.s.has_dmean_logp = eps != 0.f;
  if (r.ent_coef != 0.f) {
    // The entropy bonus -ent_coef * sum(mask * H) / denom: the same masked
    // mean, taken of the entropy output; its gradient -ent_coef * mask /
    // denom (times grad_scale) is sft_loss's with grad_scale * ent_coef.
    SftLossOp e;
    e.n = c.N, e.logp = h.entropy.data(), e.mask = mask, e.denom = denom, e.grad_scale = r.grad_scale * r.ent_coef;
    e.loss = out + K, e.stats = out + K + 1;
    if (grad) e.dlogp = c.s.dentropy.ensure(c.be, c.N);
    c.be.sft_loss(e);
    if (grad) c.s.has_dentropy = true;
  }
  const std::vector<float> v = c.read(r.ent_coef != 0.f ? 2 * K : K);
  const double nll = v[1 + SftLossOp::kNllSum];
  // The mean entropy: sft_loss of the entropy is -sum(mask * H) / denom.
  const double ent = r.ent_coef != 0.f ? -static_cast<double>(v[K]) : 0.0;
  ObjectiveResult res{{{"loss", v[0] - static_cast<double>(r.ent_coef) * ent}, {"tokens", v[1 + SftLossOp::kTokens]}, {"nllSum", nll}}, {}};
  // The smoothing and entropy figures only when their terms are in the loss.
  if (eps != 0.f) res.stats.emplace_back("smoothSum", v[1 + SftLossOp::kSmoothSum]);
  if (r.ent_coef != 0.f) res.stats.emplace_back("entropy", ent);
  return res;
}

ObjectiveResult pairwise(Ctx& c, const ObjectiveRequest& r) {
  c.need_values();
  const int64_t P = c.pair_count(), B = c.B, T = c.T;
  // One-hot weights at each row's reward token.
  std::vector<float> w(static_cast<size_t>(B * T), 0.f);
  if (!r.last.empty() && static_cast<int64_t>(r.last.size()) != B)
    c.fail("'last' has " + std::to_string(r.last.size()) + " elements, expected one per row (" + std::to_string(B) + ")");
  for (int64_t b = 0; b < B; ++b) {
    int64_t at = -1;
    if (!r.last.empty()) {
      at = r.last[static_cast<size_t>(b)];
      if (at < 0 || at >= T) c.fail("last[" + std::to_string(b) + "] = " + std::to_string(at) + " is outside the row (seq " + std::to_string(T) + ")");
    } else {
      for (int64_t t = T - 1; t >= 0 && at < 0; --t)
        if (c.amask[static_cast<size_t>(b * T + t)]) at = t;
      if (at < 0) c.fail("row " + std::to_string(b) + " has no real token");
    }
    w[static_cast<size_t>(b * T + at)] = 1.f;
  }
  const float* wd = c.s.w.upload(c.be, w);
  float* sums = c.s.sums.ensure(c.be, B);
  float* dsums = c.eval ? nullptr : c.s.dsums.ensure(c.be, B);
  RowDotOp rd;
  rd.rows = B, rd.cols = T, rd.x = c.h.values.data(), rd.w = wd, rd.out = sums;
  c.be.row_dot(rd);
  PairwiseLossOp op;
  op.b = P, op.chosen = sums, op.rejected = sums + P;
  op.margin = r.margin.empty() ? nullptr : c.pairs(c.s.pair_in, r.margin, P, "margin");
  if (!r.target.empty()) {
    for (const float p : r.target)
      if (!(p >= 0.f && p <= 1.f)) c.fail("'target' holds " + std::to_string(p) + ": soft labels are probabilities in [0, 1]");
    op.target = c.pairs(c.s.target, r.target, P, "target");
  }
  op.grad_scale = r.grad_scale;
  float* out = c.s.out.ensure(c.be, 1 + PairwiseLossOp::kStatCount);
  op.loss = out, op.stats = out + 1;
  if (dsums) op.dchosen = dsums, op.drejected = dsums + P;
  c.be.pairwise_loss(op);
  if (dsums) c.broadcast(wd, dsums, c.s.dvalues, c.s.has_dvalues);
  const std::vector<float> v = c.read(1 + PairwiseLossOp::kStatCount);
  const float* st = v.data() + 1;
  return {{{"loss", v[0]},
           {"accuracy", st[PairwiseLossOp::kAccuracy]},
           {"margin", st[PairwiseLossOp::kMarginMean]},
           {"chosen", st[PairwiseLossOp::kChosenMean]},
           {"rejected", st[PairwiseLossOp::kRejectedMean]}}, {}};
}

ObjectiveResult dpo(Ctx& c, const ObjectiveRequest& r) {
  c.need_logp();
  c.no_forward_grad();
  const int64_t P = c.pair_count(), B = c.B, T = c.T;
  const PrefLoss type = r.pref_loss;
  const bool ref_free = type == PrefLoss::kSimpo || type == PrefLoss::kOrpo;
  if (ref_free && (!r.ref_chosen.empty() || !r.ref_rejected.empty()))
    c.fail("SimPO and ORPO use no reference model: give no 'refChosen' / 'refRejected'");
  if (!ref_free && (static_cast<int64_t>(r.ref_chosen.size()) != P || static_cast<int64_t>(r.ref_rejected.size()) != P))
    c.fail("'refChosen' and 'refRejected' need one element per pair (" + std::to_string(P) + ")");
  if (type == PrefLoss::kRobust && !(r.label_smoothing >= 0.f && r.label_smoothing < 0.5f))
    c.fail("the robust loss needs labelSmoothing in [0, 0.5), got " + std::to_string(r.label_smoothing));
  if (!(r.beta > 0.f)) c.fail("beta must be > 0, got " + std::to_string(r.beta));
  constexpr int64_t K = DpoLossOp::kStatCount;
  // out: loss, the statistics, then the 2P sequence sums (read back with them).
  float* out = c.s.out.ensure(c.be, 1 + K + B);
  const float* mask = c.logp_sums(r.mask);
  float* sums = c.s.sums.data();
  float* dsums = c.eval ? nullptr : c.s.dsums.ensure(c.be, B);
  DpoLossOp op;
  op.b = P, op.loss_type = type, op.policy_chosen = sums, op.policy_rejected = sums + P;
  if (!ref_free) {
    std::vector<float> ref(r.ref_chosen);
    ref.insert(ref.end(), r.ref_rejected.begin(), r.ref_rejected.end());
    const float* refd = c.s.pair_in.upload(c.be, ref);
    op.ref_chosen = refd, op.ref_rejected = refd + P;
  }
  if (ref_free || type == PrefLoss::kIpo || r.length_normalize) {
    // Completion lengths from the host mask: each row's count of scored tokens.
    std::vector<float> len(static_cast<size_t>(B), 0.f);
    for (int64_t b = 0; b < B; ++b) {
      double n = 0;
      for (int64_t t = 0; t < T - 1; ++t) n += r.mask[static_cast<size_t>(b * (T - 1) + t)];
      if (!(n > 0)) c.fail("row " + std::to_string(b) + " has no completion token in the mask (a per-token score needs at least one)");
      len[static_cast<size_t>(b)] = static_cast<float>(n);
    }
    const float* lend = c.s.len.upload(c.be, len);
    op.len_chosen = lend, op.len_rejected = lend + P;
  }
  op.beta = r.beta, op.label_smoothing = r.label_smoothing, op.gamma = r.gamma, op.grad_scale = r.grad_scale;
  op.loss = out, op.stats = out + 1;
  if (dsums) op.dpolicy_chosen = dsums, op.dpolicy_rejected = dsums + P;
  c.be.dpo_loss(op);
  if (dsums) c.broadcast(mask, dsums, c.s.dlogp, c.s.has_dlogp);
  c.be.copy(out + 1 + K, sums, sizeof(float) * static_cast<size_t>(B));
  const std::vector<float> v = c.read(1 + K + B);
  const float* st = v.data() + 1;
  double lc = 0, lr = 0;  // mean sequence log-probs, as the stage reports them
  for (int64_t i = 0; i < P; ++i) lc += v[static_cast<size_t>(1 + K + i)], lr += v[static_cast<size_t>(1 + K + P + i)];
  ObjectiveResult res{{{"loss", v[0]},
                       {"accuracy", st[DpoLossOp::kAccuracy]},
                       {"rewardsChosen", st[DpoLossOp::kChosenReward]},
                       {"rewardsRejected", st[DpoLossOp::kRejectedReward]},
                       {"margin", st[DpoLossOp::kMargin]},
                       {"logpsChosen", P ? lc / static_cast<double>(P) : 0.0},
                       {"logpsRejected", P ? lr / static_cast<double>(P) : 0.0},
                       {"pairs", static_cast<double>(P)}}, {}};
  if (type == PrefLoss::kOrpo) res.stats.emplace_back("nll", st[DpoLossOp::kNll]), res.stats.emplace_back("logOdds", st[DpoLossOp::kLogOdds]);
  return res;
}

// KTO over one row per example (chosen and rejected rows need not pair up).
ObjectiveResult kto(Ctx& c, const ObjectiveRequest& r) {
  c.need_logp();
  c.no_forward_grad();
  const int64_t B = c.B;
  if (!(r.beta > 0.f)) c.fail("beta must be > 0, got " + std::to_string(r.beta));
  if (!(r.kl >= 0.f) || !std::isfinite(r.kl)) c.fail("kl must be a finite number >= 0 (the clamped estimate), got " + std::to_string(r.kl));
  for (float d : r.desirable)
    if (d != 0.f && d != 1.f) c.fail("'desirable' must hold 1 (desirable) or 0 (undesirable) per row");
  constexpr int64_t K = KtoLossOp::kStatCount;
  float* out = c.s.out.ensure(c.be, 1 + K);
  const float* mask = c.logp_sums(r.mask);
  float* dsums = c.eval ? nullptr : c.s.dsums.ensure(c.be, B);
  KtoLossOp op;
  op.b = B, op.policy = c.s.sums.data();
  op.ref = c.per_row(c.s.pair_in, r.ref_rows, "refLogps");
  op.desirable = c.per_row(c.s.len, r.desirable, "desirable");
  op.kl = r.kl, op.beta = r.beta, op.desirable_weight = r.desirable_weight, op.undesirable_weight = r.undesirable_weight;
  op.grad_scale = r.grad_scale, op.loss = out, op.stats = out + 1, op.dpolicy = dsums;
  c.be.kto_loss(op);
  if (dsums) c.broadcast(mask, dsums, c.s.dlogp, c.s.has_dlogp);
  const std::vector<float> v = c.read(1 + K);
  const float* st = v.data() + 1;
  return {{{"loss", v[0]},
           {"rewardsChosen", st[KtoLossOp::kChosenReward]},
           {"rewardsRejected", st[KtoLossOp::kRejectedReward]},
           {"logpsChosen", st[KtoLossOp::kChosenLogps]},
           {"logpsRejected", st[KtoLossOp::kRejectedLogps]},
           {"chosen", st[KtoLossOp::kChosenCount]},
           {"rejected", st[KtoLossOp::kRejectedCount]},
           {"kl", r.kl}}, {}};
}

// The sequence-level surrogate (TRL's RLOO): the per-token PPO term over
// rows, with each row's masked log-prob sum as its log-prob; the gradient of
// a row's sum reaches its tokens through row_dot_backward.
ObjectiveResult ppo_sequence(Ctx& c, const ObjectiveRequest& r) {
  c.need_logp();
  c.no_forward_grad();
  if (c.has_values) c.fail("the sequence-level surrogate has no value part (run the forward with values: false)");
  if (!r.ref_logp.empty() || r.ent_coef != 0.f || r.kl_coef != 0.f) c.fail("the sequence-level surrogate takes no 'refLogp', 'klCoef' or 'entCoef'");
  LossState& s = c.s;
  const float* mask = c.logp_sums(r.mask);
  PpoLossOp op;
  op.n = c.B;
  op.logp = s.sums.data();
  op.old_logp = c.per_row(s.old_logp, r.old_logp, "oldLogp");
  op.advantages = c.per_row(s.advantages, r.advantages, "advantages");
  op.clip_range = r.clip_range, op.clip_range_high = r.clip_range_high, op.grad_scale = r.grad_scale;
  op.denom = r.has_denom ? r.denom : 0.0;
  op.dlogp = s.dsums.ensure(c.be, c.B);
  constexpr int64_t K = PpoLossOp::kStatCount;
  float* out = s.out.ensure(c.be, 1 + K);
  op.loss = out, op.stats = out + 1;
  c.be.ppo_loss(op);
  c.broadcast(mask, op.dlogp, s.dlogp, s.has_dlogp);
  const std::vector<float> v = c.read(1 + K);
  const float* st = v.data() + 1;
  return {{{"loss", v[0]},
           {"pgLoss", st[PpoLossOp::kPgLoss]},
           {"approxKl", st[PpoLossOp::kApproxKl]},
           {"clipfrac", st[PpoLossOp::kClipfrac]},
           {"ratio", st[PpoLossOp::kRatioMean]},
           {"sequences", st[PpoLossOp::kTokens]}}, {}};
}

ObjectiveResult ppo(Ctx& c, const ObjectiveRequest& r) {
  if (r.has_denom && !(r.denom > 0.f)) c.fail("'denom' must be > 0");
  if (r.sequence) return ppo_sequence(c, r);
  const bool policy = c.has_logp, critic = c.has_values;
  if (!policy && !critic) c.fail("the training forward computed neither log-probs nor values");
  if (policy) {
    c.no_forward_grad();
    if (r.old_logp.empty() || r.advantages.empty()) c.fail("the policy part (a forward with logp) needs 'oldLogp' and 'advantages'");
  }
  if (critic && (r.returns.empty() || r.old_values.empty()))
    c.fail("the value part (a forward with values) needs 'returns' and 'oldValues'");
  if (r.mask.empty()) c.fail("give the mask of the tokens in the loss");
  const HeadActs& h = c.h;
  LossState& s = c.s;
  PpoLossOp op;
  op.n = c.N;
  op.mask = c.tokens(s.mask, r.mask, "mask");
  if (policy) {
    op.logp = h.logp.data();
    op.old_logp = c.tokens(s.old_logp, r.old_logp, "oldLogp");
    op.advantages = c.tokens(s.advantages, r.advantages, "advantages");
    op.ref_logp = r.ref_logp.empty() ? nullptr : c.tokens(s.ref_logp, r.ref_logp, "refLogp");
    op.entropy = h.entropy.data();
    op.dlogp = s.dlogp.ensure(c.be, c.N);
    op.dentropy = r.ent_coef != 0.f ? s.dentropy.ensure(c.be, c.N) : nullptr;
  } else {  // value loss alone: a zero advantage makes the surrogate 0 (ratio 1)
    const float* z = s.zeros.zeros(c.be, c.N);
    op.logp = op.old_logp = op.advantages = z;
  }
  if (critic) {
    op.values = h.values.data();
    op.returns = c.tokens(s.returns, r.returns, "returns");
    op.old_values = c.tokens(s.old_values, r.old_values, "oldValues");
    op.dvalues = s.dvalues.ensure(c.be, c.N);
  }
  op.clip_range = r.clip_range, op.clip_range_value = r.clip_range_value, op.vf_coef = r.vf_coef;
  op.kl_coef = r.kl_coef, op.kl_estimator = r.kl_estimator, op.ent_coef = r.ent_coef, op.grad_scale = r.grad_scale;
  op.clip_range_high = r.clip_range_high;
  op.kl_times_ratio = r.kl_times_ratio;
  op.denom = r.has_denom ? r.denom : 0.0;
  constexpr int64_t K = PpoLossOp::kStatCount;
  float* out = s.out.ensure(c.be, 1 + K);
  op.loss = out, op.stats = out + 1;
  c.be.ppo_loss(op);
  s.has_dlogp = op.dlogp != nullptr;
  s.has_dentropy = op.dentropy != nullptr;
  s.has_dvalues = op.dvalues != nullptr;
  const std::vector<float> v = c.read(1 + K);
  const float* st = v.data() + 1;
  return {{{"loss", v[0]},
           {"pgLoss", st[PpoLossOp::kPgLoss]},
           {"vfLoss", st[PpoLossOp::kVfLoss]},
           {"kl", st[PpoLossOp::kKl]},
           {"entropy", st[PpoLossOp::kEntropy]},
           {"approxKl", st[PpoLossOp::kApproxKl]},
           {"clipfrac", st[PpoLossOp::kClipfrac]},
           {"vfClipfrac", st[PpoLossOp::kVfClipfrac]},
           {"ratio", st[PpoLossOp::kRatioMean]},
           {"tokens", st[PpoLossOp::kTokens]}}, {}};
}

// Evaluation only: the per-row masked sums of logp, read back.
ObjectiveResult sequence_logps(Ctx& c, const ObjectiveRequest& r) {
  c.need_logp();
  c.logp_sums(r.mask);
  ObjectiveResult out;
  out.sums = c.s.sums.to_host(c.B);
  return out;
}

}  // namespace

ObjectiveResult run_objective(Transformer& t, const ObjectiveRequest& req) {
  static const char* names[] = {"sft", "pairwise", "dpo", "ppo", "sequence logps", "kto"};
  const char* what = names[static_cast<int>(req.kind)];
  if (req.eval) {
    // Over the inference forward's outputs; the loss state's gradients
    // (a training loss call's, for backward()) are neither read nor written,
    // only its scratch.
    if (req.kind == ObjectiveKind::kPpo) throw Error(code::kArgument, std::string(what) + " loss: there is no evaluation mode of PPO's loss");
    const InferenceOutputs& o = t.inference_outputs();
    if (!o.valid)
      throw Error(code::kArgument, std::string(what) +
                                       " evaluation: call the inference forward (model.forward) first; an evaluation reads its outputs, "
                                       "not a training forward's");
    Ctx c{t.backend(), t.inference_head(), o.mask, o.logp, o.values, true, t.loss_state(), o.batch, o.seq, o.batch * o.seq, what};
    switch (req.kind) {
      case ObjectiveKind::kSft: return sft(c, req);
      case ObjectiveKind::kPairwise: return pairwise(c, req);
      case ObjectiveKind::kDpo: return dpo(c, req);
      case ObjectiveKind::kKto: return kto(c, req);
      case ObjectiveKind::kSequenceLogps: return sequence_logps(c, req);
      default: break;
    }
    throw Error(code::kArgument, "evaluation loss: unknown kind");
  }
  if (req.kind == ObjectiveKind::kSequenceLogps) throw Error(code::kArgument, "sequence logps: an evaluation call only (over an inference forward's outputs)");
  if (!t.has_train_outputs()) throw Error(code::kArgument, std::string(what) + " loss: call the training forward first");
  const Acts& a = t.train_acts();
  Ctx c{t.backend(), a.head, a.mask, t.train_logp(), t.train_values(), false, t.loss_state(), a.batch, a.seq, a.rows, what};
  c.s.clear();  // a loss call replaces the gradients of an earlier one
  switch (req.kind) {
    case ObjectiveKind::kSft: return sft(c, req);
    case ObjectiveKind::kPairwise: return pairwise(c, req);
    case ObjectiveKind::kDpo: return dpo(c, req);
    case ObjectiveKind::kKto: return kto(c, req);
    case ObjectiveKind::kPpo: return ppo(c, req);
    default: break;
  }
  throw Error(code::kArgument, "loss: unknown kind");
}

}  // namespace rlhf::model
