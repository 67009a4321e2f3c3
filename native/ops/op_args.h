// Argument structs of the op table (op_list.h). Plain data: pointers are in the
// backend's memory (host for CPU, device for CUDA), all tensors row-major and
// fp32 unless noted. Shapes are written as comments beside each pointer.
// Backward variants join this file with the training engine.
#pragma once
#include <cstdint>

namespace rlhf {

// C[m,n] = sum_k op(A)[m,k] op(B)[k,n] (+ bias[n]) (+ C[m,n] when accumulate).
// op(A) = A [m,k] (lda) or, trans_a, A^T of a stored [k,m]; op(B) = B [k,n]
// (ldb) or, trans_b, B^T of a stored [n,k] — a Linear weight, so y = x W^T is
// {trans_b = true}.
struct GemmOp {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  // Frozen weights kept in bfloat16: when set, B is read from here instead of
  // `b` (same layout), widened to fp32 on the fly; accumulation stays fp32.
  const uint16_t* b_bf16 = nullptr;
  float* c = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;  // [n] or null
  bool accumulate = false;
};

// out[i,:] = table[ids[i],:] (+ pos_table[positions[i],:]). ids are checked
// by the caller against `rows`.
struct EmbeddingOp {
  int64_t n = 0, dim = 0, rows = 0;
  const int32_t* ids = nullptr;        // [n]
  const float* table = nullptr;        // [rows, dim]
  const uint16_t* table_bf16 = nullptr;// [rows, dim] instead of table, when weights are bf16
  const int32_t* positions = nullptr;  // [n] or null (no learned positions)
  const float* pos_table = nullptr;    // [max_pos, dim] or null
  float* out = nullptr;                // [n, dim]
};

// Fused residual add + RMSNorm (Llama):
//   if delta: residual += delta          (residual stream update)
//   out = residual * rsqrt(mean(residual^2) + eps) * weight
// rstd (optional) keeps 1/rms per row for the backward pass.
struct RmsNormOp {
  int64_t n = 0, dim = 0;
  float eps = 1e-5f;
  float* residual = nullptr;     // [n, dim], updated in place when delta is set
  const float* delta = nullptr;  // [n, dim] or null
  const float* weight = nullptr; // [dim]
  float* out = nullptr;          // [n, dim]
  float* rstd = nullptr;         // [n] or null
};

// Fused residual add + LayerNorm (GPT-2): out = (x - mean) * rstd * weight + bias.
struct LayerNormOp {
  int64_t n = 0, dim = 0;
  float eps = 1e-5f;
  float* residual = nullptr;
  const float* delta = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  float* mean = nullptr;  // [n] or null
  float* rstd = nullptr;  // [n] or null
};

// Rotary embedding in the Hugging Face rotate_half layout, in place: for each
// head, pairs (j, j + d/2) rotate by the angle positions[i] * inv_freq[j],
// read from cos/sin tables the model fills once (rows = positions). The first
// `heads` heads of each row are rotated (q heads then k heads when both live
// in one fused qkv row).
struct RopeOp {
  int64_t n = 0;                      // rows (tokens)
  int64_t heads = 0, head_dim = 0;    // heads to rotate per row, each head_dim wide
  float* x = nullptr;                 // row i, head h at x + i*ld + h*head_dim
  int64_t ld = 0;
  const int32_t* positions = nullptr; // [n]
  const float* cos = nullptr;         // [max_pos, head_dim/2]
  const float* sin = nullptr;         // [max_pos, head_dim/2]
  bool inverse = false;               // rotate by -angle (the backward pass)
};

// Causal self-attention over a padded batch, grouped-query:
//   out[b,t,h] = softmax_s( q[b,t,h].k[b,s,h/group] * scale ) v[b,s,h/group]
// over s <= t with mask[b,s] != 0. Query rows whose own mask is 0 get zeros.
struct AttentionOp {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  const float* q = nullptr;  // [batch*seq, ...] head h at q + row*ldq + h*head_dim
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ldq = 0, ldk = 0, ldv = 0;
  const uint8_t* mask = nullptr;  // [batch, seq] or null (all valid)
  float* out = nullptr;           // [batch*seq, heads*head_dim] (ldo)
  int64_t ldo = 0;
  float* lse = nullptr;           // [batch, heads, seq] log-sum-exp, or null
};

// Attention of one new query token per sequence against a KV cache:
// cache layout [batch, kv_heads, capacity, head_dim]; positions < length[b]
// with cache_mask[b, s] != 0 are attended (the new token is already stored).
struct KvAttentionOp {
  int64_t batch = 0, heads = 0, kv_heads = 0, head_dim = 0, capacity = 0;
  float scale = 1.f;
  const float* q = nullptr;  // [batch, ...] head h at q + b*ldq + h*head_dim
  int64_t ldq = 0;
  const float* k_cache = nullptr;
  const float* v_cache = nullptr;
  const int32_t* length = nullptr;     // [batch]
  const uint8_t* cache_mask = nullptr; // [batch, capacity] or null
  float* out = nullptr;                // [batch, heads*head_dim] (ldo)
  int64_t ldo = 0;
};

// out[i,j] = silu(gate[i,j]) * up[i,j], gate/up the two halves of one fused
// [n, 2*dim] row (gate first) or separate buffers.
struct SwigluOp {
  int64_t n = 0, dim = 0;
  const float* gate = nullptr;
  const float* up = nullptr;
  int64_t ld_in = 0;   // row stride of gate/up
  float* out = nullptr;
  int64_t ld_out = 0;
};

// x = gelu_tanh(x) in place (GPT-2's gelu_new), or out = gelu(x).
struct GeluOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;
  int64_t ld_in = 0;
  float* out = nullptr;
  int64_t ld_out = 0;
};

// y[i,:] += x[i,:]
struct AddOp {
  int64_t n = 0, dim = 0;
  const float* x = nullptr;
  float* y = nullptr;
};

// The fused LM head. For each row i with targets[i] >= 0:
//   logits = hidden[i] W^T (W = [vocab, dim]), logp[i] = logits[t] - lse,
//   entropy[i] = lse - sum softmax(logits) * logits,
// computed over vocabulary chunks with an online log-sum-exp, so at most
// chunk_rows x chunk_vocab logits exist at once. Rows with target < 0 get 0.
struct LmHeadLogpOp {
  int64_t n = 0, dim = 0, vocab = 0;
  const float* hidden = nullptr;   // [n, dim]
  const float* weight = nullptr;   // [vocab, dim]
  const uint16_t* weight_bf16 = nullptr;  // [vocab, dim] instead of weight (bf16 frozen weights)
  const int32_t* targets = nullptr;// [n]
  float* logp = nullptr;           // [n]
  float* entropy = nullptr;        // [n] or null
  float* lse = nullptr;            // [n] or null (kept for the backward pass)
  float inv_temperature = 1.f;     // logits are scaled by this first
};

// value[i] = hidden[i] . w (+ bias)
struct ValueHeadOp {
  int64_t n = 0, dim = 0;
  const float* hidden = nullptr;  // [n, dim]
  const float* weight = nullptr;  // [dim]
  float bias = 0.f;
  float* value = nullptr;         // [n]
};

// Picks one token per row of logits [n, vocab]: greedy when temperature == 0,
// else softmax(logits / temperature) restricted to the top_k (0 = all) most
// likely tokens and then to the smallest set whose mass reaches top_p,
// sampled with the row's counter-based RNG (seed, step) so results do not
// depend on thread scheduling.
struct SampleOp {
  int64_t n = 0, vocab = 0;
  const float* logits = nullptr;  // [n, vocab]
  int64_t ld = 0;
  float temperature = 1.f;
  int64_t top_k = 0;
  float top_p = 1.f;
  const uint64_t* seeds = nullptr;  // [n]
  uint64_t step = 0;
  int32_t* out = nullptr;           // [n]
  float* out_logp = nullptr;        // [n] or null: log-prob of the pick under the (tempered) full softmax
};

}  // namespace rlhf
