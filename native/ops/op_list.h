// The op table: every computation the model performs goes through one of
// these ops, each implemented by every backend (native/cpu/<family>.cc and
// kernels/<family>.cu, same family name). The list is an X-macro so that the
// enum, the name table and the Backend's pure virtual methods all come from
// one place: a backend that lacks an op cannot be instantiated (abstract
// class), and a name table out of step with the enum fails the static_assert.
//
//   X(method_name, ArgsStruct, family)
#pragma once

#define RLHF_OPS(X)                                                                       \
  X(gemm, GemmOp, gemm)                   /* C = op(A) op(B) (+ bias) (+ C)          */ \
  X(bias_grad, BiasGradOp, gemm)          /* db += column sums of dY                 */ \
  X(lora, LoraOp, lora)                   /* x W^T + s (x A^T) B^T, W + sBA never formed */ \
  X(lora_backward, LoraBackwardOp, lora)  /* dA, dB and the adapter's share of dx    */ \
  X(embedding, EmbeddingOp, embedding)    /* rows of a table (+ learned positions)   */ \
  X(embedding_backward, EmbeddingBackwardOp, embedding) /* scatter-add into rows   */ \
  X(rmsnorm, RmsNormOp, norm)             /* fused residual add + RMSNorm            */ \
  X(layernorm, LayerNormOp, norm)         /* fused residual add + LayerNorm          */ \
  X(rmsnorm_backward, RmsNormBackwardOp, norm)                                       \
  X(layernorm_backward, LayerNormBackwardOp, norm)                                   \
  X(rope, RopeOp, rope)                   /* rotary embedding, rotate_half layout    */ \
  X(attention, AttentionOp, attention)    /* causal GQA attention with padding mask  */ \
  X(kv_attention, KvAttentionOp, attention) /* one new token against a KV cache      */ \
  X(attention_backward, AttentionBackwardOp, attention) /* from the saved lse        */ \
  X(swiglu, SwigluOp, activation)         /* silu(gate) * up                         */ \
  X(gelu, GeluOp, activation)             /* GELU, tanh approximation                */ \
  X(add, AddOp, activation)               /* y += x                                  */ \
  X(swiglu_backward, SwigluBackwardOp, activation)                                   \
  X(gelu_backward, GeluBackwardOp, activation)                                       \
  X(lm_head_logp, LmHeadLogpOp, lm_head)  /* chunked logits -> logp(target), entropy */ \
  X(value_head, ValueHeadOp, lm_head)     /* scalar head per position                */ \
  X(lm_head_logp_backward, LmHeadLogpBackwardOp, lm_head) /* chunked, recomputes logits */ \
  X(value_head_backward, ValueHeadBackwardOp, lm_head)                              \
  X(logits_xent, LogitsXentOp, xent)      /* log-softmax CE on logits + dz, in place */ \
  X(sample, SampleOp, sample)             /* greedy / temperature / top-k / top-p    */ \
  X(sft_loss, SftLossOp, loss)            /* masked mean NLL of per-token logp       */ \
  X(pairwise_loss, PairwiseLossOp, loss)  /* reward model: -log sigmoid(rc - rr - m) */ \
  X(ppo_loss, PpoLossOp, loss)            /* clipped surrogate + value + KL + entropy*/ \
  X(dpo_loss, DpoLossOp, loss)            /* DPO family: sigmoid ipo hinge simpo orpo */ \
  X(kto_loss, KtoLossOp, loss)            /* KTO: unpaired, KL reference point       */ \
  X(row_dot, RowDotOp, loss)              /* out[r] = sum_c w[r,c] x[r,c] (fp64 sum) */ \
  X(row_dot_backward, RowDotBackwardOp, loss) /* dx[r,c] = w[r,c] dout[r]             */ \
  X(adamw, AdamWOp, optim)                /* torch.optim.AdamW step, in place        */ \
  X(sgd, SgdOp, optim)                    /* torch.optim.SGD step (momentum, decay)  */ \
  X(grad_norm, GradNormOp, optim)         /* out += sum of squares (fp64 accumulate) */ \
  X(scale, ScaleOp, optim)                /* x *= factor, or the grad-clip factor    */

namespace rlhf {

enum class Op {
#define RLHF_OP_ENUM(name, args, family) name,
  RLHF_OPS(RLHF_OP_ENUM)
#undef RLHF_OP_ENUM
      kCount
};

inline constexpr const char* kOpNames[] = {
#define RLHF_OP_NAME(name, args, family) #name,
    RLHF_OPS(RLHF_OP_NAME)
#undef RLHF_OP_NAME
};
static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == static_cast<size_t>(Op::kCount),
              "every op needs a name");

inline constexpr int kOpCount = static_cast<int>(Op::kCount);

}  // namespace rlhf
