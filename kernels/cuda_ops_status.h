// Which ops of the op table (native/ops/op_list.h) the CUDA backend runs, one
// constant per op. cuda_backend.cu builds its supports() table from the op
// list's X-macro over these names, so an op added to the list without an
// entry here fails to compile the CUDA backend (and the override of the new
// op, declared from the same list, must then be defined in kernels/<family>.cu).
// Plain C++: native/ops_cuda_napi.cc reads it in builds without CUDA too.
#pragma once

namespace rlhf::cuda::status {

// true: kernels/<family>.cu implements the op on device pointers (fp32 tensors).
inline constexpr bool gemm = true;
inline constexpr bool bias_grad = true;
inline constexpr bool lora = true;
inline constexpr bool lora_backward = true;
inline constexpr bool logits_xent = true;
inline constexpr bool embedding = true;
inline constexpr bool embedding_backward = true;
inline constexpr bool rmsnorm = true;
inline constexpr bool layernorm = true;
inline constexpr bool rmsnorm_backward = true;
inline constexpr bool layernorm_backward = true;
inline constexpr bool rope = true;
inline constexpr bool attention = true;
inline constexpr bool kv_attention = true;
inline constexpr bool attention_backward = true;
inline constexpr bool swiglu = true;
inline constexpr bool gelu = true;
inline constexpr bool add = true;
inline constexpr bool swiglu_backward = true;
inline constexpr bool gelu_backward = true;
inline constexpr bool lm_head_logp = true;
inline constexpr bool value_head = true;
inline constexpr bool lm_head_logp_backward = true;
inline constexpr bool value_head_backward = true;
inline constexpr bool sample = true;
inline constexpr bool sft_loss = true;
inline constexpr bool pairwise_loss = true;
inline constexpr bool ppo_loss = true;
inline constexpr bool dpo_loss = true;
inline constexpr bool kto_loss = true;
inline constexpr bool row_dot = true;
inline constexpr bool row_dot_backward = true;
inline constexpr bool adamw = true;
inline constexpr bool sgd = true;
inline constexpr bool grad_norm = true;
inline constexpr bool scale = true;

// Ops that also take bfloat16 weights (GemmOp::b_bf16, EmbeddingOp::table_bf16,
// LmHead*Op::weight_bf16): supports(op, DType::BF16).
inline constexpr bool bf16_weights(const char* op) {
  const char* names[] = {"gemm", "lora", "embedding", "lm_head_logp", "lm_head_logp_backward"};
  for (const char* n : names) {
    const char *a = n, *b = op;
    while (*a && *a == *b) ++a, ++b;
    if (*a == *b) return true;
  }
  return false;
}

}  // namespace rlhf::cuda::status
