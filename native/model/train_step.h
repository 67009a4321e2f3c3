// The trainable tensors of a model (a LoRA adapter, or every base weight)
// by name, and one optimizer step over them: global-norm clipping, then
// AdamW or SGD per tensor (so decay can be switched off per tensor).
#pragma once
#include <string>
#include <vector>

#include "../ops/backend.h"
#include "train.h"
#include "transformer.h"

namespace rlhf::model {

struct TrainableTensor {
  std::string name;       // PEFT name (adapter) or Hugging Face name (full)
  float* param = nullptr;
  float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t rows = 0, cols = 0;
  bool transposed = false;  // stored as the transpose of the Hugging Face layout (GPT-2 Conv1D)
};

std::vector<TrainableTensor> trainable_tensors(Transformer& t, Adapter* adapter, FullGrads* full);

struct OptimConfig {
  std::string optimizer = "adamw";  // "adamw" | "sgd"
  float lr = 1e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f, momentum = 0.f;
  float max_grad_norm = 0.f;          // <= 0: no clipping
  std::vector<std::string> no_decay;  // tensor names exempt from weight decay
};

struct StepResult {
  double grad_norm = 0;  // before clipping
  float clip_coef = 1.f;
  int64_t step = 0;
  bool skipped = false;  // the gradient norm was NaN or infinite: nothing was updated
};

// A gradient whose global norm is NaN or infinite is never applied: the
// parameters, moments and step count stay as they were and the result says
// `skipped` (the caller decides whether to skip the step or stop the run).
// `sumsq` is the trainable set's one-element scratch in backend memory (kept
// with it, so a step allocates nothing).
StepResult optimizer_step(Backend& be, std::vector<TrainableTensor>& tensors, int64_t* step, const OptimConfig& cfg, Buffer<double>& sumsq);
void zero_grads(Adapter* adapter, FullGrads* full);

}  // namespace rlhf::model
