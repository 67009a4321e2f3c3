#!/usr/bin/env python3
"""Golden whole-model fixtures: tiny random Hugging Face model folders and the
log-probs an independent float64 PyTorch implementation computes for them.

    python3 test/golden/make_golden.py --out test/fixtures/golden

Needs only the Python standard library and torch (Debian's python3-torch,
1.13, for /usr/bin/python3); no transformers / safetensors packages. The
architectures are written here from the published definitions of
transformers' LlamaForCausalLM, Qwen2ForCausalLM, LlamaForSequenceClassification
and GPT2LMHeadModel (modeling_llama.py, modeling_qwen2.py, modeling_gpt2.py,
modeling_rope_utils.py's `llama3` rope scaling); see test/golden/README.md
for the conventions and the fixture schema.

Pipeline for each case: draw seeded random weights -> round them to the
stored dtype -> write config.json and model.safetensors (our own writer,
following the safetensors spec and the reference writer's layout) -> read the
file back with our own reader -> compute everything in float64 from the
weights as read back, so the expected values are exactly those of the files.

Self-checks (the script fails if any does not hold):
  * a second, naive formulation (plain Python floats, explicit loops over
    heads, queries, keys and rotation pairs; no torch) agrees with the batched
    torch implementation on one sequence of every case (to 1e-10);
  * every padded row (right and left padding) gives the same log-probs as the
    same tokens run alone without padding;
  * tied checkpoints carry no lm_head.weight and the model uses the embedding
    as its head; untied ones carry a distinct lm_head.weight that matters;
  * each deliberate bug (RoPE off or in the interleaved layout, llama3 scaling
    ignored, positions not shifted by left padding, padded keys not masked,
    GQA heads grouped the wrong way, exact GELU instead of tanh GELU, ...)
    moves the log-probs by more than the tolerance the consumer is expected
    to use, so the fixtures can catch it (recorded under "sensitivity").
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
import time

try:
    import torch
except ImportError:  # e.g. a pyenv python3 first on PATH: use Debian's, which has python3-torch
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    sys.exit("make_golden.py needs torch: apt-get install -y python3-torch")

torch.set_default_dtype(torch.float64)

TRANSFORMERS_VERSION = "4.46.3"
PAD_TOKEN_ID = 0
BATCH = 3
GREEDY_NEW_TOKENS = 10
# The consumer's f32 engine is expected to match within about 1e-4 on
# log-probs (and values); every deliberate bug must move them by clearly more
# than that. tanh-GELU vs exact GELU differ by at most ~5e-4 per activation,
# so that one only needs to clear the tolerance.
MIN_SENSITIVITY = {"*": 0.05, "gelu_exact": 3e-4}

# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

LLAMA_BASE = dict(
    arch="llama", architecture="LlamaForCausalLM", vocab_size=320, hidden_size=48,
    intermediate_size=88, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    head_dim=None, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
    max_position_embeddings=128, tie_word_embeddings=False, attention_bias=False,
    dtype="F32", seq_len=32, greedy=False,
)

CASES = [
    dict(LLAMA_BASE, name="llama_mha_untied", seed=101, greedy=True,
         about="Llama, multi-head attention (4 q heads = 4 kv heads, head_dim 12), untied lm_head.weight, "
               "intermediate 88 (not a multiple of 16), F32; greedy continuations."),
    dict(LLAMA_BASE, name="llama_gqa_tied", seed=102, vocab_size=320, hidden_size=64, intermediate_size=104,
         num_attention_heads=8, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, tie_word_embeddings=True,
         greedy=True,
         about="Llama, grouped-query attention (8 q heads, 2 kv heads), tied embeddings (no lm_head.weight in "
               "the file), rms_norm_eps 1e-6, head_dim 8 written out although it equals hidden / heads (as "
               "recent transformers versions write it), F32; greedy continuations."),
    dict(LLAMA_BASE, name="qwen2_bias_gqa", seed=103, arch="qwen2", architecture="Qwen2ForCausalLM",
         vocab_size=352, hidden_size=56, intermediate_size=104, num_attention_heads=4, num_key_value_heads=2,
         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
         about="Qwen2: q/k/v projections with bias, o_proj without, GQA (4 q heads, 2 kv heads, head_dim 14), "
               "rope_theta 1e6, tied embeddings, F32."),
    dict(LLAMA_BASE, name="llama3_rope_scaling", seed=104, vocab_size=300, hidden_size=32, intermediate_size=72,
         num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0,
         rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 64, "rope_type": "llama3"},
         max_position_embeddings=256, seq_len=80,
         about="Llama 3.1-style RoPE: rope_theta 500000 and rope_scaling llama3 (factor 8, low 1, high 4, "
               "original max 64; head_dim 16 puts rotation pairs in all three bands: kept, smoothed, divided "
               "by 8), 2 q heads sharing 1 kv head, max_position_embeddings 256, sequences of 80 (past the "
               "original 64), F32."),
    dict(LLAMA_BASE, name="llama_head_dim", seed=105, vocab_size=300, hidden_size=48, intermediate_size=88,
         num_attention_heads=4, num_key_value_heads=2, head_dim=24, attention_bias=True,
         about="Llama with head_dim set explicitly (hidden 48, 4 heads, head_dim 24 instead of 12, so q_proj "
               "is [96, 48], k/v_proj [48, 48] and o_proj [48, 96]), GQA 4/2, attention_bias true (bias on "
               "q, k, v and o), untied, F32."),
    dict(name="gpt2", seed=106, arch="gpt2", architecture="GPT2LMHeadModel", vocab_size=350, hidden_size=48,
         intermediate_size=None, num_hidden_layers=2, num_attention_heads=4, layer_norm_epsilon=1e-5,
         max_position_embeddings=64, dtype="F32", seq_len=32, greedy=False,
         about="GPT-2: wte + wpe, LayerNorm, Conv1D weights stored [in, out], fused c_attn, gelu_new, "
               "lm_head tied to wte, n_inner null (4 * 48 = 192), F32."),
    dict(name="gpt2_n_inner", seed=107, arch="gpt2", architecture="GPT2LMHeadModel", vocab_size=310,
         hidden_size=36, intermediate_size=100, num_hidden_layers=2, num_attention_heads=3,
         layer_norm_epsilon=1e-5, max_position_embeddings=48, dtype="F32", seq_len=40, greedy=False,
         about="GPT-2 with n_inner 100 (not 4 * n_embd), 3 heads of 12, n_positions 48 with sequences of 40, F32."),
    dict(LLAMA_BASE, name="llama_bf16", seed=108, vocab_size=328, hidden_size=40, intermediate_size=96,
         num_attention_heads=5, num_key_value_heads=5, dtype="BF16",
         about="Llama with BF16 weights (torch_dtype bfloat16), 5 heads of 8, untied; expected values are "
               "computed from the bf16 values widened exactly to float64."),
    dict(LLAMA_BASE, name="llama_f16", seed=109, vocab_size=312, hidden_size=48, intermediate_size=80,
         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, dtype="F16",
         about="Llama with F16 weights (torch_dtype float16; small weights land on f16 subnormals), GQA 4/2, "
               "tied; expected values are computed from the f16 values widened exactly to float64."),
    dict(LLAMA_BASE, name="llama_score", seed=110, architecture="LlamaForSequenceClassification",
         vocab_size=304, hidden_size=48, intermediate_size=88, num_attention_heads=4, num_key_value_heads=2,
         about="LlamaForSequenceClassification with num_labels 1 (a reward model as TRL saves it): "
               "score.weight [1, 48], no bias, no lm_head; values[b][t] = final_hidden[b, t] . score.weight "
               "for every position, GQA 4/2, F32."),
]


def head_dim_of(c):
    return c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]


def is_score(c):
    return c["architecture"].endswith("ForSequenceClassification")


def tied(c):
    return c["arch"] == "gpt2" or c["tie_word_embeddings"]


# --------------------------------------------------------------------------
# config.json, as transformers' save_pretrained writes it
# (json.dumps(to_diff_dict(), indent=2, sort_keys=True) + "\n")
# --------------------------------------------------------------------------

TORCH_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def make_config(c):
    v = c["vocab_size"]
    if c["arch"] == "gpt2":
        return {
            "activation_function": "gelu_new", "architectures": [c["architecture"]], "attn_pdrop": 0.1,
            "bos_token_id": v - 1, "embd_pdrop": 0.1, "eos_token_id": v - 1, "initializer_range": 0.02,
            "layer_norm_epsilon": c["layer_norm_epsilon"], "model_type": "gpt2", "n_embd": c["hidden_size"],
            "n_head": c["num_attention_heads"], "n_inner": c["intermediate_size"],
            "n_layer": c["num_hidden_layers"], "n_positions": c["max_position_embeddings"],
            "reorder_and_upcast_attn": False, "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True, "summary_activation": None, "summary_first_dropout": 0.1,
            "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
            "tie_word_embeddings": True, "torch_dtype": TORCH_DTYPE[c["dtype"]],
            "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": v,
        }
    cfg = {
        "architectures": [c["architecture"]], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": c["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"], "max_position_embeddings": c["max_position_embeddings"],
        "model_type": c["arch"], "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"], "num_key_value_heads": c["num_key_value_heads"],
        "rms_norm_eps": c["rms_norm_eps"], "rope_scaling": c["rope_scaling"], "rope_theta": c["rope_theta"],
        "tie_word_embeddings": c["tie_word_embeddings"], "torch_dtype": TORCH_DTYPE[c["dtype"]],
        "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": v,
    }
    if c["arch"] == "llama":
        cfg.update({"attention_bias": c["attention_bias"], "mlp_bias": False, "pretraining_tp": 1})
        if c["head_dim"] is not None:
            cfg["head_dim"] = c["head_dim"]
    else:  # qwen2
        cfg.update({"max_window_layers": c["num_hidden_layers"], "sliding_window": c["max_position_embeddings"],
                    "use_sliding_window": False, "bos_token_id": v - 1, "eos_token_id": v - 1})
    if is_score(c):
        cfg.update({"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "pad_token_id": PAD_TOKEN_ID})
    return cfg


def config_text(cfg):
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------
# Weights: names and shapes as save_pretrained emits them
# --------------------------------------------------------------------------

def tensor_specs(c):
    """[(name, shape, kind)]; kind (matrix / embedding / norm / bias) picks the
    init scale; "embedding" also covers the output heads (lm_head, score)."""
    H, V, I = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    out = []
    if c["arch"] == "gpt2":
        I = I or 4 * H
        t = "transformer."
        out += [(t + "wte.weight", [V, H], "embedding"), (t + "wpe.weight", [c["max_position_embeddings"], H], "embedding")]
        for l in range(c["num_hidden_layers"]):
            p = "%sh.%d." % (t, l)
            # Conv1D: weight [in, out], bias [out].
            out += [(p + "ln_1.weight", [H], "norm"), (p + "ln_1.bias", [H], "bias"),
                    (p + "attn.c_attn.weight", [H, 3 * H], "matrix"), (p + "attn.c_attn.bias", [3 * H], "bias"),
                    (p + "attn.c_proj.weight", [H, H], "matrix"), (p + "attn.c_proj.bias", [H], "bias"),
                    (p + "ln_2.weight", [H], "norm"), (p + "ln_2.bias", [H], "bias"),
                    (p + "mlp.c_fc.weight", [H, I], "matrix"), (p + "mlp.c_fc.bias", [I], "bias"),
                    (p + "mlp.c_proj.weight", [I, H], "matrix"), (p + "mlp.c_proj.bias", [H], "bias")]
        out += [(t + "ln_f.weight", [H], "norm"), (t + "ln_f.bias", [H], "bias")]
        return out  # lm_head.weight is tied to wte and not saved
    d = head_dim_of(c)
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    qkv_bias = c["arch"] == "qwen2" or c["attention_bias"]
    o_bias = c["arch"] == "llama" and c["attention_bias"]
    out.append(("model.embed_tokens.weight", [V, H], "embedding"))
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        out.append((p + "input_layernorm.weight", [H], "norm"))
        for n, rows in (("q", q), ("k", kv), ("v", kv)):
            out.append((p + "self_attn.%s_proj.weight" % n, [rows, H], "matrix"))
            if qkv_bias:
                out.append((p + "self_attn.%s_proj.bias" % n, [rows], "bias"))
        out.append((p + "self_attn.o_proj.weight", [H, q], "matrix"))
        if o_bias:
            out.append((p + "self_attn.o_proj.bias", [H], "bias"))
        out.append((p + "post_attention_layernorm.weight", [H], "norm"))
        out += [(p + "mlp.gate_proj.weight", [I, H], "matrix"), (p + "mlp.up_proj.weight", [I, H], "matrix"),
                (p + "mlp.down_proj.weight", [H, I], "matrix")]
    out.append(("model.norm.weight", [H], "norm"))
    if is_score(c):
        out.append(("score.weight", [1, H], "embedding"))
    elif not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", [V, H], "embedding"))
    return out


TORCH_OF = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def draw_weights(c):
    """Seeded draws, rounded to the stored dtype (see README, "Weights"):
    matrices N(0, 1/fan_in) so activations stay O(1) and attention is far
    from uniform; embeddings, lm_head and score N(0, (2/sqrt(hidden))^2) so
    logits have a spread of about 2; biases N(0, 0.2^2); norm weights 1 + N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(c["seed"])
    H = c["hidden_size"]
    out = {}
    for name, shape, kind in tensor_specs(c):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if kind == "norm":
            x = 1.0 + 0.1 * x
        elif kind == "bias":
            x = 0.2 * x
        elif kind == "embedding":
            x = (2.0 / math.sqrt(H)) * x
        else:  # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
            fan_in = shape[0] if c["arch"] == "gpt2" else shape[1]
            x = x / math.sqrt(fan_in)
        out[name] = x.to(torch.float32).to(TORCH_OF[c["dtype"]])
    return out


# --------------------------------------------------------------------------
# safetensors: our own writer and reader (stdlib + raw bytes)
# --------------------------------------------------------------------------

# The reference crate's Dtype enum order; its writer sorts by dtype descending, then name.
DTYPE_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
               "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
ELEM = {"F32": 4, "BF16": 2, "F16": 2}


def raw_bytes(t):
    """Little-endian bytes of a float32 / bfloat16 / float16 tensor."""
    t = t.contiguous()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes()
    return t.view(torch.int16).numpy().astype("<i2").tobytes()


def write_safetensors(path, tensors, dtype):
    names = sorted(tensors, key=lambda n: (-DTYPE_ORDER.index(dtype), n.encode("utf-8")))
    header, pos, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for n in names:
        b = raw_bytes(tensors[n])
        header[n] = {"dtype": dtype, "shape": list(tensors[n].shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def decode_floats(dtype, raw):
    """Bytes -> list of Python floats, decoded without torch's converters."""
    n = len(raw) // ELEM[dtype]
    if dtype == "F32":
        return list(struct.unpack("<%df" % n, raw))
    if dtype == "F16":
        return list(struct.unpack("<%de" % n, raw))
    bits = struct.unpack("<%dH" % n, raw)  # bf16 = top half of an f32
    return list(struct.unpack("<%df" % n, struct.pack("<%dI" % n, *[b << 16 for b in bits])))


def read_safetensors(path):
    """name -> (dtype, float64 tensor)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    assert header.pop("__metadata__") == {"format": "pt"}
    end = 0
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        assert a == end, "tensors must be contiguous in header order"
        end = b
        vals = decode_floats(info["dtype"], data[a:b])
        out[name] = (info["dtype"], torch.tensor(vals, dtype=torch.float64).reshape(info["shape"]))
    assert end == len(data)
    return out


# --------------------------------------------------------------------------
# The float64 reference (batched torch)
# --------------------------------------------------------------------------

def position_ids(mask, bugs=()):
    """cumsum(attention_mask) - 1, clamped at 0: left padding shifts positions
    so every row's first real token is at position 0."""
    if "positions_arange" in bugs:
        return torch.arange(mask.shape[1]).expand(mask.shape).clone()
    return torch.clamp(torch.cumsum(mask, dim=1) - 1, min=0)


def rope_inv_freq(c, bugs=()):
    d = head_dim_of(c)
    theta = 10000.0 if "theta_default" in bugs else c["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).to(torch.get_default_dtype()) / d))
    s = c["rope_scaling"]
    if s is None or "no_llama3_scaling" in bugs:
        return inv
    assert s["rope_type"] == "llama3"
    factor, lo, hi, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    out = []
    for f in inv.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:            # high frequency: kept
            out.append(f)
        elif wavelen > low_wavelen:           # low frequency: divided by factor
            out.append(f / factor)
        else:                                 # in between: smooth interpolation
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out)


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def attention(q, k, v, allowed):
    """q [B,nh,T,d], k/v [B,nh,T,d], allowed [B,T,T] bool. Query rows with no
    allowed key (left-padding queries) get zero probabilities instead of NaN;
    their outputs are never reported."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    return p @ v


def forward(c, W, ids, mask, bugs=()):
    """Returns {"hidden": final normed hidden [B,T,H], "logits" or "values"}."""
    B, T = ids.shape
    pos = position_ids(mask, bugs)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    allowed = causal[None] if "no_key_mask" in bugs else causal[None] & (mask[:, None, :] == 1)
    allowed = allowed.expand(B, T, T)
    L = c["num_hidden_layers"]
    if c["arch"] == "gpt2":
        H, nh = c["hidden_size"], c["num_attention_heads"]
        d, eps, t = H // nh, c["layer_norm_epsilon"], "transformer."
        x = W[t + "wte.weight"][ids] + W[t + "wpe.weight"][pos]
        split = lambda y: y.view(B, T, nh, d).transpose(1, 2)
        act = (lambda y: 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))) if "gelu_exact" in bugs else gelu_new
        for l in range(L):
            p = "%sh.%d." % (t, l)
            h = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
            qkv = h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
            q, k, v = qkv.split(H, dim=-1)
            o = attention(split(q), split(k), split(v), allowed).transpose(1, 2).reshape(B, T, H)
            x = x + o @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
            h = layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
            m = act(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
            x = x + m @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
        hid = layer_norm(x, W[t + "ln_f.weight"], W[t + "ln_f.bias"], eps)
        return {"hidden": hid, "logits": hid @ W[t + "wte.weight"].T}

    nh, nkv, d, eps = c["num_attention_heads"], c["num_key_value_heads"], head_dim_of(c), c["rms_norm_eps"]
    ang = pos[..., None] * rope_inv_freq(c, bugs)                   # [B,T,d/2]
    cos, sin = torch.cos(ang)[:, None], torch.sin(ang)[:, None]     # [B,1,T,d/2]

    def rope(y):  # y [B,n,T,d]
        if "no_rope" in bugs:
            return y
        if "rope_interleaved" in bugs:  # GPT-J layout: pairs (2i, 2i+1)
            a, b = y[..., 0::2], y[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        c2, s2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        return y * c2 + rotate_half(y) * s2

    def lin(y, name):
        out = y @ W[name + ".weight"].T
        if name + ".bias" not in W or ("no_qkv_bias" in bugs and name[-6:] in ("q_proj", "k_proj", "v_proj")) \
                or ("no_o_bias" in bugs and name.endswith("o_proj")):
            return out
        return out + W[name + ".bias"]

    def rep(y):  # [B,nkv,T,d] -> [B,nh,T,d]: kv head j serves q heads j*r .. j*r+r-1
        r = nh // nkv
        return y.repeat(1, r, 1, 1) if "gqa_tile" in bugs else y.repeat_interleave(r, dim=1)

    x = W["model.embed_tokens.weight"][ids]
    for l in range(L):
        p = "model.layers.%d." % l
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(B, T, nh, d).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, nkv, d).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, nkv, d).transpose(1, 2)
        o = attention(rope(q), rep(rope(k)), rep(v), allowed).transpose(1, 2).reshape(B, T, nh * d)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    hid = rms_norm(x, W["model.norm.weight"], eps)
    if is_score(c):
        return {"hidden": hid, "values": (hid @ W["score.weight"].T)[..., 0]}
    head = W["model.embed_tokens.weight"] if c["tie_word_embeddings"] else W["lm_head.weight"]
    return {"hidden": hid, "logits": hid @ head.T}


def token_stats(logits, ids):
    """logprobs[b,t] = log_softmax(logits[b,t])[ids[b,t+1]], entropy of the same distribution."""
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    got = lp.gather(-1, ids[:, 1:, None])[..., 0]
    ent = -(lp.exp() * lp).sum(-1)
    return got, ent


# --------------------------------------------------------------------------
# The naive formulation: plain Python floats, explicit loops, one sequence
# --------------------------------------------------------------------------

def naive_forward(c, W, ids):
    """Unpadded sequence ids (list), positions 0..n-1. Returns (hidden rows,
    logits rows or values). Shares no code with forward()."""
    M = {k: v.tolist() for k, v in W.items()}
    n = len(ids)

    def matvec(w, x):              # nn.Linear layout: w [out][in]
        return [sum(wi * xi for wi, xi in zip(row, x)) for row in w]

    def vecmat(x, w):              # Conv1D layout: w [in][out]
        out = [0.0] * len(w[0])
        for xi, row in zip(x, w):
            for j, wij in enumerate(row):
                out[j] += xi * wij
        return out

    def add(a, b):
        return [p + q for p, q in zip(a, b)]

    def attend(qs, ks, vs, nh, nkv, d):
        """qs[t][h][:], ks/vs[t][kvh][:] -> out[t] concatenated over heads."""
        out = []
        for t in range(n):
            row = []
            for hh in range(nh):
                kvh = hh // (nh // nkv)
                scores = []
                for s in range(t + 1):
                    scores.append(sum(qs[t][hh][i] * ks[s][kvh][i] for i in range(d)) / math.sqrt(d))
                mx = max(scores)
                e = [math.exp(z - mx) for z in scores]
                tot = sum(e)
                for i in range(d):
                    row.append(sum(e[s] * vs[s][kvh][i] for s in range(t + 1)) / tot)
            out.append(row)
        return out

    if c["arch"] == "gpt2":
        H, nh, eps, t = c["hidden_size"], c["num_attention_heads"], c["layer_norm_epsilon"], "transformer."
        d = H // nh

        def ln(x, w, b):
            mu = sum(x) / len(x)
            var = sum((z - mu) ** 2 for z in x) / len(x)
            return [(z - mu) / math.sqrt(var + eps) * wi + bi for z, wi, bi in zip(x, w, b)]

        def gelu(z):
            return 0.5 * z * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z * z * z)))

        xs = [add(M[t + "wte.weight"][tok], M[t + "wpe.weight"][i]) for i, tok in enumerate(ids)]
        for l in range(c["num_hidden_layers"]):
            p = "%sh.%d." % (t, l)
            qs, ks, vs = [], [], []
            for x in xs:
                qkv = add(vecmat(ln(x, M[p + "ln_1.weight"], M[p + "ln_1.bias"]), M[p + "attn.c_attn.weight"]),
                          M[p + "attn.c_attn.bias"])
                qs.append([qkv[hh * d:(hh + 1) * d] for hh in range(nh)])
                ks.append([qkv[H + hh * d:H + (hh + 1) * d] for hh in range(nh)])
                vs.append([qkv[2 * H + hh * d:2 * H + (hh + 1) * d] for hh in range(nh)])
            att = attend(qs, ks, vs, nh, nh, d)
            xs = [add(x, add(vecmat(a, M[p + "attn.c_proj.weight"]), M[p + "attn.c_proj.bias"])) for x, a in zip(xs, att)]
            new = []
            for x in xs:
                h = ln(x, M[p + "ln_2.weight"], M[p + "ln_2.bias"])
                m = [gelu(z) for z in add(vecmat(h, M[p + "mlp.c_fc.weight"]), M[p + "mlp.c_fc.bias"])]
                new.append(add(x, add(vecmat(m, M[p + "mlp.c_proj.weight"]), M[p + "mlp.c_proj.bias"])))
            xs = new
        hid = [ln(x, M[t + "ln_f.weight"], M[t + "ln_f.bias"]) for x in xs]
        return hid, [matvec(M[t + "wte.weight"], h) for h in hid]

    nh, nkv, d, eps = c["num_attention_heads"], c["num_key_value_heads"], head_dim_of(c), c["rms_norm_eps"]
    half = d // 2

    # Inverse frequencies, llama3 scaling spelled out per pair.
    freqs = []
    for i in range(half):
        f = c["rope_theta"] ** (-(2.0 * i) / d)
        s = c["rope_scaling"]
        if s is not None:
            old = s["original_max_position_embeddings"]
            wl = 2 * math.pi / f
            if wl > old / s["low_freq_factor"]:
                f = f / s["factor"]
            elif wl >= old / s["high_freq_factor"]:
                sm = (old / wl - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
                f = (1 - sm) * f / s["factor"] + sm * f
        freqs.append(f)

    def rot(vec, position):        # rotate pair (i, i + d/2) by position * freq_i
        out = list(vec)
        for i in range(half):
            a, b = vec[i], vec[i + half]
            cs, sn = math.cos(position * freqs[i]), math.sin(position * freqs[i])
            out[i] = a * cs - b * sn
            out[i + half] = b * cs + a * sn
        return out

    def rms(x, w):
        r = 1.0 / math.sqrt(sum(z * z for z in x) / len(x) + eps)
        return [z * r * wi for z, wi in zip(x, w)]

    def proj(name, x):
        y = matvec(M[name + ".weight"], x)
        return add(y, M[name + ".bias"]) if name + ".bias" in M else y

    def silu(z):
        return z / (1 + math.exp(-z))

    xs = [list(M["model.embed_tokens.weight"][tok]) for tok in ids]
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        qs, ks, vs = [], [], []
        for i, x in enumerate(xs):
            h = rms(x, M[p + "input_layernorm.weight"])
            q, k, v = proj(p + "self_attn.q_proj", h), proj(p + "self_attn.k_proj", h), proj(p + "self_attn.v_proj", h)
            qs.append([rot(q[hh * d:(hh + 1) * d], i) for hh in range(nh)])
            ks.append([rot(k[hh * d:(hh + 1) * d], i) for hh in range(nkv)])
            vs.append([v[hh * d:(hh + 1) * d] for hh in range(nkv)])
        att = attend(qs, ks, vs, nh, nkv, d)
        xs = [add(x, proj(p + "self_attn.o_proj", a)) for x, a in zip(xs, att)]
        new = []
        for x in xs:
            h = rms(x, M[p + "post_attention_layernorm.weight"])
            g, u = proj(p + "mlp.gate_proj", h), proj(p + "mlp.up_proj", h)
            new.append(add(x, proj(p + "mlp.down_proj", [silu(a) * b for a, b in zip(g, u)])))
        xs = new
    hid = [rms(x, M["model.norm.weight"]) for x in xs]
    if is_score(c):
        return hid, [sum(a * b for a, b in zip(h, M["score.weight"][0])) for h in hid]
    head = M["model.embed_tokens.weight"] if c["tie_word_embeddings"] else M["lm_head.weight"]
    return hid, [matvec(head, h) for h in hid]


# --------------------------------------------------------------------------
# Inputs, outputs, checks
# --------------------------------------------------------------------------

def make_inputs(c):
    """Row 0 full length; row 1 right-padded; row 2 left-padded (pad id 0)."""
    g = torch.Generator().manual_seed(c["seed"] * 7919)
    T = c["seq_len"]
    lens = [T, T - 7, T - 11]
    ids = torch.full((BATCH, T), PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((BATCH, T), dtype=torch.long)
    for b, n in enumerate(lens):
        toks = torch.randint(1, c["vocab_size"], (n,), generator=g)
        sl = slice(0, n) if b < 2 else slice(T - n, T)
        ids[b, sl], mask[b, sl] = toks, 1
    return ids, mask


def nullify(t, keep):
    return [[float(v) if k else None for v, k in zip(row, krow)] for row, krow in zip(t.tolist(), keep.tolist())]


def dump_json(obj, indent=0):
    """JSON with one line per key and per row: lists of scalars stay on one
    line. Floats are written with repr (shortest round-trip form, 17
    significant digits at most), so float64 values survive exactly."""
    pad = " " * indent
    if isinstance(obj, dict):
        items = ["%s %s: %s" % (pad, json.dumps(k), dump_json(v, indent + 1)) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        return "[\n" + ",\n".join(pad + " " + dump_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False, separators=(", ", ": "))


def max_diff(a, b):
    return float((a - b).abs().max())


def greedy(c, W, prompt):
    toks, chosen_lp, margins = list(prompt), [], []
    for _ in range(GREEDY_NEW_TOKENS):
        ids = torch.tensor([toks])
        logits = forward(c, W, ids, torch.ones_like(ids))["logits"][0, -1]
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        chosen_lp.append(float(torch.log_softmax(logits, -1)[nxt]))
        toks.append(nxt)
    return toks[len(prompt):], chosen_lp, margins


SENSITIVITY_BUGS = {
    # positions_arange is invisible to RoPE models: shifting every position of a
    # row by the same amount leaves q.k unchanged (RoPE is relative).
    "llama": ["no_rope", "rope_interleaved", "no_key_mask"],
    "gpt2": ["positions_arange", "no_key_mask", "gelu_exact"],
}


def run_case(c, out_dir):
    t0 = time.time()
    folder = os.path.join(out_dir, c["name"])
    os.makedirs(folder, exist_ok=True)
    cfg = make_config(c)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config_text(cfg))
    drawn = draw_weights(c)
    st_path = os.path.join(folder, "model.safetensors")
    write_safetensors(st_path, drawn, c["dtype"])

    # Everything below uses the weights as read back from the file.
    loaded = read_safetensors(st_path)
    assert set(loaded) == {n for n, _, _ in tensor_specs(c)}
    assert all(dt == c["dtype"] for dt, _ in loaded.values())
    W = {k: v for k, (_, v) in loaded.items()}
    for k in W:  # our decoder agrees with torch's widening of the stored values
        assert torch.equal(W[k], drawn[k].to(torch.float64)), k

    # Tied / untied handling.
    if tied(c):
        assert "lm_head.weight" not in W
    elif not is_score(c):
        assert not torch.equal(W["lm_head.weight"], W["model.embed_tokens.weight"])

    ids, mask = make_inputs(c)
    res = forward(c, W, ids, mask)
    B, T = ids.shape
    keep_tok = mask == 1
    keep_pair = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    exp = {
        "name": c["name"], "about": c["about"], "architecture": c["architecture"],
        "model_type": cfg["model_type"], "head": "score" if is_score(c) else "lm",
        "weights_dtype": c["dtype"], "tied_embeddings": tied(c), "pad_token_id": PAD_TOKEN_ID,
        "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
        "position_ids": position_ids(mask).tolist(),
    }
    unpadded = []
    hid_norm = res["hidden"].norm(dim=-1)
    exp["last_hidden_norm"] = nullify(hid_norm, keep_tok)
    if is_score(c):
        exp["values"] = nullify(res["values"], keep_tok)
        last = [max(t for t in range(T) if mask[b, t] == 1) for b in range(B)]
        exp["pooled_values"] = [float(res["values"][b, last[b]]) for b in range(B)]
    else:
        lp, ent = token_stats(res["logits"], ids)
        exp["logprobs"] = nullify(lp, keep_pair)
        exp["entropy"] = nullify(ent, keep_pair)
        positions = [0, T - 1]
        exp["logits_probe"] = {"row": 0, "positions": positions,
                               "logits": [res["logits"][0, p].tolist() for p in positions]}

    # Each row alone, unpadded: identical to its padded counterpart.
    for b in range(B):
        sel = keep_tok[b]
        row_ids = ids[b][sel][None]
        alone = forward(c, W, row_ids, torch.ones_like(row_ids))
        entry = {"row": b, "input_ids": row_ids[0].tolist(),
                 "last_hidden_norm": alone["hidden"][0].norm(dim=-1).tolist()}
        assert max_diff(alone["hidden"][0], res["hidden"][b][sel]) < 1e-12, (c["name"], b)
        if is_score(c):
            entry["values"] = alone["values"][0].tolist()
            assert max_diff(alone["values"][0], res["values"][b][sel]) < 1e-12
        else:
            alp, aent = token_stats(alone["logits"], row_ids)
            entry["logprobs"], entry["entropy"] = alp[0].tolist(), aent[0].tolist()
            pad_lp, pad_ent = lp[b][keep_pair[b]], ent[b][keep_pair[b]]
            assert max_diff(alp[0], pad_lp) < 1e-12 and max_diff(aent[0], pad_ent) < 1e-12, (c["name"], b)
        unpadded.append(entry)
    exp["unpadded"] = unpadded

    # Naive loop formulation on row 2's tokens (the left-padded row, run alone).
    toks = unpadded[2]["input_ids"]
    nh_rows, nout = naive_forward(c, W, toks)
    ref = forward(c, W, torch.tensor([toks]), torch.ones(1, len(toks), dtype=torch.long))
    dh = max_diff(torch.tensor(nh_rows), ref["hidden"][0])
    dl = max_diff(torch.tensor(nout), ref["logits"][0] if "logits" in ref else ref["values"][0])
    assert dh < 1e-10 and dl < 1e-10, (c["name"], dh, dl)
    exp["naive_check"] = {"row": 2, "max_abs_diff_hidden": dh, "max_abs_diff_logits": dl}

    # Deliberate bugs must be visible.
    bugs = list(SENSITIVITY_BUGS["gpt2" if c["arch"] == "gpt2" else "llama"])
    if c["arch"] != "gpt2":
        if c["num_key_value_heads"] not in (1, c["num_attention_heads"]):
            bugs.append("gqa_tile")
        if c["rope_scaling"]:
            bugs.append("no_llama3_scaling")
        if c["rope_theta"] != 10000.0:
            bugs.append("theta_default")
        if c["arch"] == "qwen2" or c["attention_bias"]:
            bugs.append("no_qkv_bias")
        if c["arch"] == "llama" and c["attention_bias"]:
            bugs.append("no_o_bias")
    sens = {}
    for bug in bugs:
        out = forward(c, W, ids, mask, (bug,))
        if is_score(c):
            sens[bug] = max_diff(out["values"][keep_tok], res["values"][keep_tok])
        else:
            blp, _ = token_stats(out["logits"], ids)
            sens[bug] = max_diff(blp[keep_pair], lp[keep_pair])
        assert sens[bug] > MIN_SENSITIVITY.get(bug, MIN_SENSITIVITY["*"]), (c["name"], bug, sens[bug])
    # The head: untied models must not use the embedding; tied ones do.
    if c["arch"] != "gpt2" and not is_score(c):
        if tied(c):
            other = dict(W, **{"lm_head.weight": W["model.embed_tokens.weight"].clone()})
            untied = forward(dict(c, tie_word_embeddings=False), other, ids, mask)["logits"]
            assert max_diff(untied, res["logits"]) == 0.0
        else:
            blp, _ = token_stats(forward(dict(c, tie_word_embeddings=True), W, ids, mask)["logits"], ids)
            sens["head_tied_instead_of_untied"] = max_diff(blp[keep_pair], lp[keep_pair])
            assert sens["head_tied_instead_of_untied"] > MIN_SENSITIVITY["*"]
    exp["sensitivity"] = sens

    if c["greedy"]:
        rows = []
        for u in unpadded:
            toks, glp, margins = greedy(c, W, u["input_ids"])
            rows.append({"row": u["row"], "prompt": u["input_ids"], "tokens": toks, "logprobs": glp,
                         "min_margin": min(margins)})
        exp["greedy"] = {"max_new_tokens": GREEDY_NEW_TOKENS, "rows": rows}

    with open(os.path.join(folder, "expected.json"), "w") as f:
        f.write(dump_json(exp) + "\n")
    return {"name": c["name"], "about": c["about"], "architecture": c["architecture"], "dtype": c["dtype"],
            "seconds": round(time.time() - t0, 2), "sensitivity": exp["sensitivity"],
            "greedy_min_margin": min(r["min_margin"] for r in exp["greedy"]["rows"]) if c["greedy"] else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "golden"))
    ap.add_argument("--only", help="comma-separated case names")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible reductions
    only = set(args.only.split(",")) if args.only else None
    if only is None and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out, exist_ok=True)
    summary = []
    for c in CASES:
        if only and c["name"] not in only:
            continue
        s = run_case(c, args.out)
        summary.append(s)
        print("%-22s %5.2fs  min sensitivity %.3g%s" % (
            s["name"], s["seconds"], min(s["sensitivity"].values()),
            "" if s["greedy_min_margin"] is None else "  greedy min margin %.3g" % s["greedy_min_margin"]))
    if only is None:
        index = {"generator": "test/golden/make_golden.py", "command": "python3 test/golden/make_golden.py --out test/fixtures/golden",
                 "cases": [{k: s[k] for k in ("name", "architecture", "dtype", "about")} for s in summary]}
        with open(os.path.join(args.out, "index.json"), "w") as f:
            f.write(dump_json(index) + "\n")


if __name__ == "__main__":
    sys.exit(main())
