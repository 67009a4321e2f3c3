#include "train_step.h"

#include <algorithm>
#include <cmath>

#include "../error.h"
#include "adapter.h"

namespace rlhf::model {

std::vector<TrainableTensor> trainable_tensors(Transformer& t, Adapter* adapter, FullGrads* full) {
  std::vector<TrainableTensor> out;
  const Config& cfg = t.config();
  if (adapter) {
    for (const LoraModule& m : adapter->modules) {
      const int64_t offa = m.a - adapter->params.data(), offb = m.b - adapter->params.data();
      out.push_back({peft_tensor_name(cfg, m, true), m.a, m.da, adapter->m.data() + offa, adapter->v.data() + offa, adapter->r, m.in, false});
      out.push_back({peft_tensor_name(cfg, m, false), m.b, m.db, adapter->m.data() + offb, adapter->v.data() + offb, m.out, adapter->r, false});
    }
    if (adapter->score) {
      const int64_t off = adapter->score - adapter->params.data();
      out.push_back({kAdapterHeadName, adapter->score, adapter->dscore, adapter->m.data() + off, adapter->v.data() + off, adapter->head_rows, cfg.hidden, false});
    }
    return out;
  }
  if (full) {
    Weights& w = t.backend_weights();
    for (const NamedView& v : w.views) {
      const int64_t off = v.ptr - w.slab_base;
      out.push_back({v.name, v.ptr, full->slab.data() + off, full->m.data() + off, full->v.data() + off, v.rows, v.cols, v.transposed});
    }
  }
  return out;
}

StepResult optimizer_step(Backend& be, std::vector<TrainableTensor>& tensors, int64_t* step, const OptimConfig& cfg, Buffer<double>& sumsq_d) {
  if (cfg.optimizer != "adamw" && cfg.optimizer != "sgd") throw Error(code::kArgument, "optimizer must be 'adamw' or 'sgd'");
  StepResult r;
  // The sum of squares accumulates in backend memory; one read back decides
  // whether to step and by how much to clip.
  sumsq_d.zeros(be, 1);
  for (auto& t : tensors) {
    GradNormOp g;
    g.n = t.rows * t.cols, g.grad = t.grad, g.out = sumsq_d.data();
    be.grad_norm(g);
  }
  double sumsq = 0;
  download_n(be, &sumsq, sumsq_d.data(), 1);
  r.grad_norm = std::sqrt(sumsq);
  if (!std::isfinite(r.grad_norm)) {
    r.skipped = true;
    r.step = *step;
    return r;
  }
  if (cfg.max_grad_norm > 0) r.clip_coef = std::min(1.f, static_cast<float>(cfg.max_grad_norm / (r.grad_norm + 1e-6)));
  r.step = ++*step;
  for (auto& t : tensors) {
    const bool decay = std::find(cfg.no_decay.begin(), cfg.no_decay.end(), t.name) == cfg.no_decay.end();
    if (cfg.optimizer == "adamw") {
      AdamWOp op;
      op.n = t.rows * t.cols, op.param = t.param, op.grad = t.grad, op.m = t.m, op.v = t.v;
      op.lr = cfg.lr, op.beta1 = cfg.beta1, op.beta2 = cfg.beta2, op.eps = cfg.eps, op.weight_decay = decay ? cfg.weight_decay : 0.f;
      op.step = r.step, op.grad_scale = r.clip_coef;
      be.adamw(op);
    } else {
      SgdOp op;
      op.n = t.rows * t.cols, op.param = t.param, op.grad = t.grad, op.momentum_buf = cfg.momentum > 0 ? t.m : nullptr;
      op.lr = cfg.lr, op.momentum = cfg.momentum, op.weight_decay = decay ? cfg.weight_decay : 0.f, op.step = r.step;
      op.grad_scale = r.clip_coef;
      be.sgd(op);
    }
  }
  return r;
}

void zero_grads(Adapter* adapter, FullGrads* full) {
  if (adapter) adapter->grads.zeros(*adapter->grads.backend(), adapter->grads.size());
  if (full) full->slab.zeros(*full->slab.backend(), full->slab.size());
}

}  // namespace rlhf::model
