#!/usr/bin/env python3
"""Golden fixtures for ONE training step (SFT loss, backward, optimizer step):
full fine-tuning and PEFT-style LoRA, SGD and AdamW, made by an independent
float64 PyTorch reference (autograd for the backward pass).

    python3 test/golden/make_train_golden.py --out test/fixtures/train-golden

Needs torch and the standard library only (Debian's python3-torch for
/usr/bin/python3; the script re-runs itself there if the first python3 on PATH
lacks torch). The model definitions (Llama, Qwen2, GPT-2 forward passes), the
weight draws, config.json and the safetensors writer/reader come from
make_golden.py (rung 2); this script adds LoRA, the causal-LM loss exactly as
transformers computes it, gradient accumulation, gradient clipping and the
torch.optim SGD / AdamW updates. See test/golden/TRAIN.md for the cases, the
conventions and the schema.

Self-checks (the script fails if any does not hold):
  * the loss equals transformers' formulation, F.cross_entropy over
    logits[:, :-1] and labels[:, 1:] with ignore_index=-100 (to 1e-13);
  * autograd gradients agree with central finite differences in float64 for
    two elements of every trainable tensor (its largest-gradient element and
    a seeded random one);
  * our hand-written SGD / AdamW / clipping equal torch.optim.SGD,
    torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ run on copies;
  * token-weighted gradient accumulation over micro-batches equals the
    single-batch step (to 1e-13) and the other convention differs visibly;
  * replacing the token ids at padded slots changes nothing;
  * every tensor file reads back bit-identical;
  * each deliberate bug (per-sequence loss mean, no label shift, no bias
    correction, L2 instead of decoupled decay, LoRA scaling ignored, ...)
    moves the result by more than 10x what running the same reference in
    float32 moves it (recorded under "sensitivity" and "f32_deviation").
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
except ImportError:  # a python3 without torch first on PATH: use Debian's
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    sys.exit("make_train_golden.py needs torch: apt-get install -y python3-torch")

sys.dont_write_bytecode = True  # no __pycache__ beside make_golden.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402  (sets the default dtype to float64)

F = torch.nn.functional
IGNORE = -100

# --------------------------------------------------------------------------
# Models (written once, shared by the cases)
# --------------------------------------------------------------------------

MODELS = {
    "llama": dict(mg.LLAMA_BASE, name="llama", seed=201, vocab_size=300, hidden_size=32, intermediate_size=72,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                  about="Llama, GQA 4 q heads / 2 kv heads (head_dim 8), hidden 32, intermediate 72 (not a "
                        "multiple of 16), vocab 300, untied lm_head.weight, 2 layers, F32."),
    "gpt2": dict(name="gpt2", seed=202, arch="gpt2", architecture="GPT2LMHeadModel", vocab_size=300, hidden_size=32,
                 intermediate_size=None, num_hidden_layers=2, num_attention_heads=4, layer_norm_epsilon=1e-5,
                 max_position_embeddings=64, dtype="F32",
                 about="GPT-2, hidden 32, 4 heads, n_inner null (128), n_positions 64, vocab 300, lm_head tied to "
                       "wte, Conv1D weights [in, out], 2 layers, F32."),
    "qwen2": dict(mg.LLAMA_BASE, name="qwen2", seed=203, arch="qwen2", architecture="Qwen2ForCausalLM",
                  vocab_size=320, hidden_size=32, intermediate_size=88, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                  about="Qwen2, q/k/v bias (o_proj none), GQA 4/2 (head_dim 8), hidden 32, intermediate 88, vocab "
                        "320, rope_theta 1e6, tied embeddings, 2 layers, F32."),
}

LLAMA_ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAMW = dict(type="adamw", lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01)

CASES = [
    dict(name="llama_full_sgd", model="llama", mode="full", optimizer=dict(type="sgd", lr=0.5), store="all",
         about="Llama full fine-tuning (every tensor trainable, incl. embeddings, norms and the untied lm_head), "
               "SGD lr 0.5 without momentum, no clipping."),
    dict(name="llama_full_adamw", model="llama", mode="full", optimizer=dict(ADAMW, no_decay="none"), store="all",
         about="Llama full fine-tuning, AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01 on every "
               "tensor (plain torch.optim.AdamW(model.parameters())), no clipping."),
    dict(name="llama_lora_adamw_all7", model="llama", mode="lora", optimizer=dict(ADAMW), store="all",
         lora=dict(r=4, lora_alpha=8, use_rslora=False, target_modules=LLAMA_ALL7, seed=301),
         about="Llama LoRA r 4, alpha 8 (scaling 2) on all seven projections of both layers, AdamW lr 1e-3 "
               "wd 0.01."),
    dict(name="llama_lora_sgd_qv_clip", model="llama", mode="lora", optimizer=dict(type="sgd", lr=0.5),
         max_grad_norm=1.0, store="all",
         lora=dict(r=2, lora_alpha=6, use_rslora=False, target_modules=["q_proj", "v_proj"], seed=302),
         about="Llama LoRA r 2, alpha 6 (scaling 3) on q_proj and v_proj only, SGD lr 0.5, gradient clipping "
               "to max_norm 1.0 (the Trainer default; active: the pre-clip norm is 1.375)."),
    dict(name="llama_lora_sgd_accum", model="llama", mode="lora", optimizer=dict(type="sgd", lr=0.5), store="all",
         lora=dict(r=4, lora_alpha=8, use_rslora=False, target_modules=LLAMA_ALL7, seed=301),
         micro_batches=[[0, 1], [2]],
         about="Gradient accumulation: the batch of llama_lora_adamw_all7 (same adapter) split into micro-batches "
               "rows [0, 1] and [2] (26 and 12 target tokens), SGD lr 0.5. Primary result: the token-weighted "
               "mean over the whole accumulated batch (= the single-batch step); also recorded: the mean of the "
               "per-micro-batch mean losses."),
    dict(name="gpt2_lora_adamw", model="gpt2", mode="lora", optimizer=dict(ADAMW), store="all",
         lora=dict(r=4, lora_alpha=16, use_rslora=False, target_modules=["c_attn", "c_proj", "c_fc"], seed=303),
         about="GPT-2 LoRA r 4, alpha 16 (scaling 4) on c_attn, c_proj and c_fc (\"c_proj\" matches both "
               "attn.c_proj and mlp.c_proj), Conv1D layers (fan_in_fan_out true), AdamW lr 1e-3 wd 0.01."),
    dict(name="gpt2_full_adamw", model="gpt2", mode="full", optimizer=dict(ADAMW, no_decay="hf_trainer"),
         store=["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                "transformer.h.0.ln_1.bias", "transformer.h.1.attn.c_attn.bias", "transformer.h.1.attn.c_proj.weight",
                "transformer.ln_f.weight"],
         about="GPT-2 full fine-tuning, AdamW lr 1e-3 wd 0.01 with transformers Trainer's grouping (no decay on "
               "biases and LayerNorm weights), tied wte gets both the embedding and the head gradient. Stores a "
               "few tensors in full, sums for the rest."),
    dict(name="qwen2_lora_adamw_rslora", model="qwen2", mode="lora", optimizer=dict(ADAMW), store="all",
         lora=dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "down_proj"], seed=304),
         about="Qwen2 LoRA r 8, alpha 16, use_rslora true (scaling 16/sqrt(8) = 5.657, not 2) on q/k/v (which "
               "have frozen biases), o_proj and down_proj, AdamW lr 1e-3 wd 0.01."),
]

# Batch layout: 3 rows of T = 20; row 1 right-padded. labels = input ids on
# the completion, -100 on the prompt and the padding (labels[:, 0] is always
# -100, see TRAIN.md on num_items_in_batch).
SEQ_LEN = 20
ROW_LENS = [20, 14, 20]
PROMPT_LENS = [5, 3, 8]

# --------------------------------------------------------------------------
# Tensor files: stdlib safetensors writer / reader for F32 and F64
# --------------------------------------------------------------------------

FMT = {"F32": ("<f4", 4), "F64": ("<f8", 8)}


def write_st(path, tensors, dtype):
    """tensors: name -> float tensor; written as dtype (F32 or F64), names
    sorted byte-wise, __metadata__ {"format": "pt"}, header padded to 8."""
    header, pos, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for n in sorted(tensors, key=lambda s: s.encode("utf-8")):
        t = tensors[n].detach().to(torch.float64).contiguous()
        b = t.numpy().astype(FMT[dtype][0]).tobytes()
        header[n] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_st(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    assert header.pop("__metadata__") == {"format": "pt"}
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        code = {"F32": "f", "F64": "d"}[info["dtype"]]
        k = (b - a) // FMT[info["dtype"]][1]
        vals = struct.unpack("<%d%s" % (k, code), data[a:b])
        out[name] = torch.tensor(vals, dtype=torch.float64).reshape(info["shape"])
    return out


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

def make_batch(mc):
    g = torch.Generator().manual_seed(mc["seed"] * 7919)
    B, T = len(ROW_LENS), SEQ_LEN
    ids = torch.full((B, T), mg.PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for b, (n, p) in enumerate(zip(ROW_LENS, PROMPT_LENS)):
        toks = torch.randint(1, mc["vocab_size"], (n,), generator=g)
        ids[b, :n], mask[b, :n] = toks, 1
        labels[b, p:n] = toks[p:]
    assert bool((labels[:, 0] == IGNORE).all())
    return ids, mask, labels


# --------------------------------------------------------------------------
# LoRA (PEFT's Linear / Conv1D wrapper, dropout 0)
# --------------------------------------------------------------------------

def is_conv1d(mc):
    return mc["arch"] == "gpt2"


def lora_modules(mc, targets):
    """Module paths PEFT's target_modules list matches: the last name
    component equals a target (PEFT matches `name == t or name.endswith('.' + t)`)."""
    out = []
    for name, shape, kind in mg.tensor_specs(mc):
        if kind != "matrix" or not name.endswith(".weight"):
            continue
        mod = name[:-len(".weight")]
        if mod.split(".")[-1] in targets:
            out.append(mod)
    return out


def lora_scaling(lc):
    return lc["lora_alpha"] / (math.sqrt(lc["r"]) if lc["use_rslora"] else lc["r"])


def in_out(mc, shape):
    """nn.Linear weight [out, in]; GPT-2 Conv1D weight [in, out]."""
    return (shape[0], shape[1]) if is_conv1d(mc) else (shape[1], shape[0])


def draw_lora(mc, lc, W):
    """A [r, in] ~ U(-1/sqrt(in), 1/sqrt(in)) (the bound of PEFT's
    kaiming_uniform_(a=sqrt(5)) init), B [out, r] ~ N(0, 0.02^2) (PEFT inits
    B = 0; nonzero here so that A gets a gradient too). Rounded to f32."""
    g = torch.Generator().manual_seed(lc["seed"])
    out = {}
    for mod in lora_modules(mc, lc["target_modules"]):
        fin, fout = in_out(mc, list(W[mod + ".weight"].shape))
        a = (torch.rand(lc["r"], fin, generator=g) * 2 - 1) / math.sqrt(fin)
        b = 0.02 * torch.randn(fout, lc["r"], generator=g)
        out["base_model.model.%s.lora_A.weight" % mod] = a.to(torch.float32).to(torch.float64)
        out["base_model.model.%s.lora_B.weight" % mod] = b.to(torch.float32).to(torch.float64)
    return out


def adapter_config(mc, lc, base_path):
    """adapter_config.json as PEFT's save_pretrained writes it (sorted keys,
    indent 2). PEFT sets fan_in_fan_out true itself when it wraps a Conv1D."""
    return {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": base_path, "bias": "none",
        "fan_in_fan_out": is_conv1d(mc), "inference_mode": True, "init_lora_weights": True,
        "layer_replication": None, "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
        "lora_alpha": lc["lora_alpha"], "lora_dropout": 0.0, "megatron_config": None, "megatron_core": "megatron.core",
        "modules_to_save": None, "peft_type": "LORA", "r": lc["r"], "rank_pattern": {}, "revision": None,
        "target_modules": sorted(lc["target_modules"]), "task_type": "CAUSAL_LM", "use_dora": False,
        "use_rslora": lc["use_rslora"],
    }


# --------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------

def token_nll(logits, labels, bugs=()):
    """-log p(labels[b, t+1] | ids[b, ..t]) and the validity mask, [B, T-1]."""
    if "no_label_shift" in bugs:
        lg, tgt = logits, labels
    else:
        lg, tgt = logits[:, :-1], labels[:, 1:]
    lp = torch.log_softmax(lg, dim=-1)
    valid = tgt != IGNORE
    nll = -lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    return nll * valid, valid


def loss_from(nll, valid, denom, bugs=()):
    if "loss_per_sequence_mean" in bugs:
        return (nll.sum(1) / valid.sum(1)).mean()
    return nll.sum() / denom


# --------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------

class TiedSplit(dict):
    """GPT-2's forward reads wte twice (embedding first, head last); this
    hands the head a detached copy, i.e. the bug of dropping the head's
    contribution to the tied gradient."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.reads = 0

    def __getitem__(self, key):
        v = dict.__getitem__(self, key)
        if key == "transformer.wte.weight":
            self.reads += 1
            if self.reads > 1:
                return v.detach()
        return v


def effective_weights(case, mc, base, tv, bugs=()):
    """Weights the forward uses: base tensors, trainable ones replaced by the
    leaves in tv; LoRA targets W + scaling * (B A) (transposed for Conv1D,
    where PEFT's get_delta_weight applies transpose(B @ A, fan_in_fan_out)):
    x W^T + scaling * (x A^T) B^T, merged, which autograd differentiates to
    the same dA, dB as the unmerged form."""
    W = dict(base)
    if case["mode"] == "full":
        W.update(tv)
    else:
        lc = case["lora"]
        s = 1.0 if "lora_scaling_ignored" in bugs else \
            (lc["lora_alpha"] / lc["r"] if "rslora_ignored" in bugs else lora_scaling(lc))
        for mod in lora_modules(mc, lc["target_modules"]):
            a = tv["base_model.model.%s.lora_A.weight" % mod]
            b = tv["base_model.model.%s.lora_B.weight" % mod]
            delta = s * (b @ a)                     # [out, in]
            if is_conv1d(mc):
                square = delta.shape[0] == delta.shape[1]
                if not ("fan_in_fan_out_ignored" in bugs and square):
                    delta = delta.T                 # stored layout [in, out]
            W[mod + ".weight"] = base[mod + ".weight"] + delta
    if "tied_grad_embedding_only" in bugs:
        W = TiedSplit(W)
    return W


def zero_grad_slices(case, mc):
    """Trainable elements whose gradient is exactly zero in exact arithmetic:
    a key bias adds q . b_k to every score of a query row, and softmax is
    invariant to a per-row shift, so d loss / d b_k = 0. Autograd leaves
    rounding noise there (1e-18 in float64, 1e-9 in float32), which AdamW's
    first step, about lr * g / (|g| + eps), turns into an arbitrary update
    in (-lr, lr). The reference sets these gradients to exactly 0; tests
    must not compare the AdamW update of these elements (see TRAIN.md).
    [(tensor name, flat start, flat end)]"""
    if case["mode"] != "full":
        return []
    out = []
    for name, shape, kind in mg.tensor_specs(mc):
        if mc["arch"] == "gpt2" and name.endswith("attn.c_attn.bias"):
            H = mc["hidden_size"]
            out.append((name, H, 2 * H))
        elif name.endswith("self_attn.k_proj.bias"):
            out.append((name, 0, shape[0]))
    return out


def micro_batches(case):
    return case.get("micro_batches") or [list(range(len(ROW_LENS)))]


def forward_loss(case, mc, base, tv, ids, mask, labels, rows, denom, bugs=()):
    W = effective_weights(case, mc, base, tv, bugs)
    r = torch.tensor(rows)
    logits = mg.forward(mc, W, ids[r], mask[r])["logits"]
    nll, valid = token_nll(logits, labels[r], bugs)
    return loss_from(nll, valid, denom, bugs), nll, valid, logits


def decay_mask(case, names):
    opt = case["optimizer"]
    if opt["type"] != "adamw":
        return {}
    if opt.get("no_decay") == "hf_trainer":  # Trainer.get_decay_parameter_names: no biases, no norm weights
        nd = {n for n in names if n.endswith(".bias") or ".ln_" in n or "norm" in n}
    else:
        nd = set()
    return {n: n not in nd for n in names}


def train_step(case, mc, base, init, ids, mask, labels, dtype=torch.float64, bugs=()):
    """Forward + backward over the micro-batches, clipping, one optimizer
    step. Returns loss, per-micro-batch losses, raw grads, norm, clip
    coefficient, updated tensors (all as float64 tensors / floats)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        base_d = {k: v.to(dtype) for k, v in base.items()}
        tv = {k: v.to(dtype).clone().requires_grad_(True) for k, v in init.items()}
        mbs = micro_batches(case)
        total = int((labels[:, 1:] != IGNORE).sum())
        accum = "mean_of_micro_means" if "accum_mean_of_micro_means" in bugs else "token_weighted"
        micro, loss_total = [], 0.0
        for rows in mbs:
            n_mb = int((labels[rows][:, 1:] != IGNORE).sum())
            denom = total if accum == "token_weighted" else n_mb * len(mbs)
            loss, nll, valid, logits = forward_loss(case, mc, base_d, tv, ids, mask, labels, rows, denom, bugs)
            loss.backward()
            own_mean = float(nll.sum() / valid.sum())
            micro.append({"rows": rows, "num_target_tokens": n_mb, "loss": own_mean})
            loss_total += float(loss)
        grads = {k: v.grad.detach().clone() if v.grad is not None else torch.zeros_like(v) for k, v in tv.items()}
        if "grad_scaled_x2" in bugs:
            grads = {k: 2 * g for k, g in grads.items()}
        if dtype == torch.float64:
            for k, a, b in zero_grad_slices(case, mc):
                flat = grads[k].view(-1)
                assert float(flat[a:b].abs().max()) < 1e-14 * float(grads[k].abs().max()), (k, flat[a:b])
                flat[a:b] = 0.0
        norm = math.sqrt(sum(float((g.to(torch.float64) ** 2).sum()) for g in grads.values()))
        max_norm = case.get("max_grad_norm")
        coef = 1.0
        if max_norm is not None and "clip_ignored" not in bugs:
            coef = min(1.0, max_norm / (norm + 1e-6))   # torch.nn.utils.clip_grad_norm_
        opt = case["optimizer"]
        dm = decay_mask(case, list(tv))
        if "decay_everything" in bugs:
            dm = {k: True for k in dm}
        upd = {}
        with torch.no_grad():
            for k, p in tv.items():
                g = grads[k] * coef if coef != 1.0 else grads[k]
                if opt["type"] == "sgd":
                    upd[k] = p - opt["lr"] * g
                    continue
                lr, (b1, b2), eps, wd = opt["lr"], opt["betas"], opt["eps"], opt["weight_decay"]
                wd = wd if dm[k] else 0.0
                q = p.clone()
                if "adamw_coupled_l2" in bugs:
                    g = g + wd * p
                else:
                    q = q * (1 - lr * wd)               # decoupled decay, applied first (torch.optim.AdamW)
                m = (1 - b1) * g                        # exp_avg after step 1
                v = (1 - b2) * g * g                    # exp_avg_sq after step 1
                bc1, bc2 = 1 - b1 ** 1, 1 - b2 ** 1
                if "adamw_no_bias_correction" in bugs:
                    bc1 = bc2 = 1.0
                if "adamw_eps_inside_sqrt" in bugs:
                    denom = torch.sqrt(v / bc2 + eps)
                else:
                    denom = torch.sqrt(v) / math.sqrt(bc2) + eps
                upd[k] = q - (lr / bc1) * m / denom
        to64 = lambda d: {k: v.detach().to(torch.float64) for k, v in d.items()}
        return {"loss": loss_total, "micro": micro, "grads": to64(grads), "grad_norm": norm, "clip_coef": coef,
                "updated": to64(upd), "num_target_tokens": total}
    finally:
        torch.set_default_dtype(prev)


def check_against_torch_optim(case, init, res):
    """Our optimizer arithmetic vs torch.optim / clip_grad_norm_ on copies."""
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    for k, p in params.items():
        p.grad = res["grads"][k].clone()
    if case.get("max_grad_norm") is not None:
        tn = float(torch.nn.utils.clip_grad_norm_(list(params.values()), case["max_grad_norm"]))
        assert abs(tn - res["grad_norm"]) <= 1e-12 * res["grad_norm"], (tn, res["grad_norm"])
    opt = case["optimizer"]
    if opt["type"] == "sgd":
        o = torch.optim.SGD(list(params.values()), lr=opt["lr"])
    else:
        dm = decay_mask(case, list(params))
        groups = [{"params": [params[k] for k in params if dm[k]], "weight_decay": opt["weight_decay"]},
                  {"params": [params[k] for k in params if not dm[k]], "weight_decay": 0.0}]
        o = torch.optim.AdamW([g for g in groups if g["params"]], lr=opt["lr"], betas=tuple(opt["betas"]),
                              eps=opt["eps"], foreach=False)
    o.step()
    worst = max(float((params[k].detach() - res["updated"][k]).abs().max()) for k in params)
    assert worst <= 1e-15, (case["name"], worst)
    return worst


def fd_check(case, mc, base, init, ids, mask, labels, grads, seed):
    """Central differences (h = 1e-5, float64) of the single-batch loss for
    two elements per trainable tensor."""
    g = torch.Generator().manual_seed(seed)
    rows = list(range(len(ROW_LENS)))
    total = int((labels[:, 1:] != IGNORE).sum())

    def loss_at(tv):
        with torch.no_grad():
            return float(forward_loss(case, mc, base, tv, ids, mask, labels, rows, total)[0])

    worst, checked, h = 0.0, 0, 1e-5
    for k in sorted(init):
        flat = grads[k].reshape(-1)
        picks = {int(flat.abs().argmax()), int(torch.randint(0, flat.numel(), (1,), generator=g))}
        for i in sorted(picks):
            vals = []
            for sgn in (1, -1):
                tv = dict(init)
                t = init[k].clone().reshape(-1)
                t[i] += sgn * h
                tv[k] = t.reshape(init[k].shape)
                vals.append(loss_at(tv))
            fd = (vals[0] - vals[1]) / (2 * h)
            err = abs(fd - float(flat[i]))
            assert err <= 1e-8 + 1e-6 * abs(fd), (case["name"], k, i, fd, float(flat[i]))
            worst = max(worst, err)
            checked += 1
    return {"elements": checked, "step": h, "max_abs_err": worst}


def max_abs(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def compare(ref, other, skip=()):
    """max |difference| of the loss, of every grad element relative to that
    tensor's largest |grad|, and of every updated element; the elements in
    skip (zero_grad_slices) are left out."""
    def masked(d, k):
        d = d.clone().view(-1)
        for name, a, b in skip:
            if name == k:
                d[a:b] = 0.0
        return float(d.abs().max())
    gd = max(masked(ref["grads"][k] - other["grads"][k], k) / max(float(ref["grads"][k].abs().max()), 1e-30)
             for k in ref["grads"])
    ud = max(masked(ref["updated"][k] - other["updated"][k], k) for k in ref["updated"])
    return {"loss": abs(ref["loss"] - other["loss"]), "grad_rel": gd, "updated": ud}


def tstats(t):
    return {"sum": float(t.sum()), "sumsq": float((t * t).sum()), "max_abs": float(t.abs().max())}


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def write_model(out, mc):
    folder = os.path.join(out, "models", mc["name"])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(mg.config_text(mg.make_config(mc)))
    path = os.path.join(folder, "model.safetensors")
    drawn = mg.draw_weights(mc)
    mg.write_safetensors(path, drawn, "F32")
    W = {k: v for k, (_, v) in mg.read_safetensors(path).items()}
    for k in W:
        assert torch.equal(W[k], drawn[k].to(torch.float64)), k
    return W


def bugs_for(case, mc):
    bugs = ["loss_per_sequence_mean", "no_label_shift"]
    opt = case["optimizer"]
    if opt["type"] == "adamw":
        bugs += ["adamw_no_bias_correction", "adamw_coupled_l2", "adamw_eps_inside_sqrt"]
        if opt.get("no_decay") == "hf_trainer":
            bugs.append("decay_everything")
    if case.get("max_grad_norm") is not None:
        bugs.append("clip_ignored")
    if case["mode"] == "lora":
        bugs.append("lora_scaling_ignored")
        if case["lora"]["use_rslora"]:
            bugs.append("rslora_ignored")
        if is_conv1d(mc):
            bugs.append("fan_in_fan_out_ignored")
    if case["mode"] == "full" and mc["arch"] == "gpt2":
        bugs.append("tied_grad_embedding_only")
    if len(micro_batches(case)) > 1:
        bugs.append("accum_mean_of_micro_means")
    return bugs


def nullify(t, keep):
    return [[float(v) if k else None for v, k in zip(row, krow)] for row, krow in zip(t.tolist(), keep.tolist())]


def run_case(case, out, models):
    t0 = time.time()
    mc = MODELS[case["model"]]
    base = models[case["model"]]
    folder = os.path.join(out, "cases", case["name"])
    os.makedirs(folder, exist_ok=True)
    ids, mask, labels = make_batch(mc)
    model_rel = "../../models/" + mc["name"]

    if case["mode"] == "full":
        init = {k: v.clone() for k, v in base.items()}
    else:
        lc = case["lora"]
        init = draw_lora(mc, lc, base)
        ad = os.path.join(folder, "adapter")
        os.makedirs(ad, exist_ok=True)
        with open(os.path.join(ad, "adapter_config.json"), "w") as f:
            f.write(json.dumps(adapter_config(mc, lc, "../" + model_rel), indent=2, sort_keys=True) + "\n")
        write_st(os.path.join(ad, "adapter_model.safetensors"), init, "F32")
        back = read_st(os.path.join(ad, "adapter_model.safetensors"))
        assert set(back) == set(init) and all(torch.equal(back[k], init[k]) for k in init)
    frozen = base

    res = train_step(case, mc, frozen, init, ids, mask, labels)
    exp_keys = sorted(init, key=lambda s: s.encode("utf-8"))

    # 1. loss = transformers' causal-LM loss (shift, ignore_index -100, mean over tokens)
    with torch.no_grad():
        rows = list(range(len(ROW_LENS)))
        loss1, nll, valid, logits = forward_loss(case, mc, frozen, init, ids, mask, labels, rows,
                                                 res["num_target_tokens"])
        V = logits.shape[-1]
        ce = float(F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE))
    assert abs(ce - float(loss1)) < 1e-13 and abs(res["loss"] - ce) < 1e-13, (case["name"], ce, res["loss"])
    lp_target = nullify(-nll, valid)

    # 1b. the merged LoRA weight reproduces PEFT's unmerged forward
    #     base(x) + lora_B(lora_A(x)) * scaling on random inputs, per module
    lora_check = None
    if case["mode"] == "lora":
        g = torch.Generator().manual_seed(7)
        We = effective_weights(case, mc, frozen, init)
        s_ = lora_scaling(case["lora"])
        lora_check = 0.0
        for mod in lora_modules(mc, case["lora"]["target_modules"]):
            a = init["base_model.model.%s.lora_A.weight" % mod]
            b = init["base_model.model.%s.lora_B.weight" % mod]
            x = torch.randn(5, a.shape[1], generator=g)
            W0, W1 = frozen[mod + ".weight"], We[mod + ".weight"]
            base_out = x @ W0 if is_conv1d(mc) else x @ W0.T      # Conv1D: x W + b; Linear: x W^T + b
            merged = x @ W1 if is_conv1d(mc) else x @ W1.T
            unmerged = base_out + (x @ a.T) @ b.T * s_
            lora_check = max(lora_check, float((merged - unmerged).abs().max()))
        assert lora_check < 1e-13, lora_check

    # 2. finite differences
    fd = fd_check(case, mc, frozen, init, ids, mask, labels, res["grads"], seed=len(case["name"]))
    # 3. torch.optim
    opt_diff = check_against_torch_optim(case, init, res)
    if case.get("max_grad_norm") is not None:
        assert res["clip_coef"] < 0.9, ("clip must be active", res["grad_norm"])
    # 4. accumulation: token-weighted == single batch; other convention differs
    extra = {}
    if len(micro_batches(case)) > 1:
        single = train_step(dict(case, micro_batches=None), mc, frozen, init, ids, mask, labels)
        assert max_abs(single["grads"], res["grads"]) < 1e-13 and abs(single["loss"] - res["loss"]) < 1e-13
        other = train_step(case, mc, frozen, init, ids, mask, labels, bugs=("accum_mean_of_micro_means",))
        extra["mean_of_micro_means"] = other
    # 5. pad ids do not matter
    g = torch.Generator().manual_seed(99)
    ids2 = ids.clone()
    ids2[mask == 0] = torch.randint(1, mc["vocab_size"], (int((mask == 0).sum()),), generator=g)
    alt = train_step(case, mc, frozen, init, ids2, mask, labels)
    assert abs(alt["loss"] - res["loss"]) < 1e-13 and max_abs(alt["grads"], res["grads"]) < 1e-13

    # f32 deviation and sensitivity
    f32 = train_step(case, mc, frozen, init, ids, mask, labels, dtype=torch.float32)
    skip = zero_grad_slices(case, mc)
    dev = compare(res, f32, skip)
    sens = {}
    for bug in bugs_for(case, mc):
        bad = train_step(case, mc, frozen, init, ids, mask, labels, bugs=(bug,))
        c = compare(res, bad, skip)
        sens[bug] = c
        visible = c["loss"] > 10 * dev["loss"] + 1e-12 or c["updated"] > 10 * dev["updated"]
        assert visible, (case["name"], bug, c, dev)

    # files
    store = exp_keys if case["store"] == "all" else [k for k in exp_keys if k in case["store"]]
    assert case["store"] == "all" or len(store) == len(case["store"])

    def write_pair(suffix, r):
        write_st(os.path.join(folder, "grads%s.safetensors" % suffix), {k: r["grads"][k] for k in store}, "F64")
        write_st(os.path.join(folder, "updated%s.safetensors" % suffix), {k: r["updated"][k] for k in store}, "F64")
        for nm, src in (("grads", "grads"), ("updated", "updated")):
            back = read_st(os.path.join(folder, "%s%s.safetensors" % (nm, suffix)))
            assert all(torch.equal(back[k], r[src][k]) for k in store)
        return {"grads": "grads%s.safetensors" % suffix, "updated": "updated%s.safetensors" % suffix}

    def tensor_table(r):
        rows_ = []
        for k in exp_keys:
            d = r["updated"][k] - init[k]
            rows_.append({"name": k, "shape": list(init[k].shape), "stored": k in store,
                          "grad": tstats(r["grads"][k]), "update": tstats(d), "updated": tstats(r["updated"][k])})
        return rows_

    files = write_pair("", res)
    opt = dict(case["optimizer"])
    if opt["type"] == "adamw":
        dm = decay_mask(case, exp_keys)
        opt["no_decay"] = [k for k in exp_keys if not dm[k]]
    exp = {
        "name": case["name"], "about": case["about"], "model": model_rel, "model_type": mc.get("arch"),
        "architecture": mc["architecture"], "mode": case["mode"],
        "trainable": exp_keys,
        "optimizer": opt, "max_grad_norm": case.get("max_grad_norm"),
        "pad_token_id": mg.PAD_TOKEN_ID,
        "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist(),
        "position_ids": mg.position_ids(mask).tolist(),
        "num_target_tokens": res["num_target_tokens"],
        "micro_batches": res["micro"] if len(micro_batches(case)) > 1 else None,
        "loss": res["loss"], "grad_norm": res["grad_norm"], "clip_coef": res["clip_coef"],
        "target_logprobs": lp_target,
        "files": files,
        "zero_gradient": [{"tensor": k, "start": a, "end": b} for k, a, b in skip],
        "tensors": tensor_table(res),
    }
    if case["mode"] == "lora":
        lc = case["lora"]
        exp["lora"] = {"adapter": "adapter", "r": lc["r"], "lora_alpha": lc["lora_alpha"],
                       "use_rslora": lc["use_rslora"], "scaling": lora_scaling(lc),
                       "target_modules": sorted(lc["target_modules"]), "fan_in_fan_out": is_conv1d(mc),
                       "modules": lora_modules(mc, lc["target_modules"])}
    if "mean_of_micro_means" in extra:
        o = extra["mean_of_micro_means"]
        exp["accumulation"] = {
            "chosen": "token_weighted",
            "token_weighted": {"loss": res["loss"], "grad_norm": res["grad_norm"], "files": files},
            "mean_of_micro_means": {"loss": o["loss"], "grad_norm": o["grad_norm"],
                                    "files": write_pair("_mean_of_micro_means", o), "tensors": tensor_table(o)},
        }
    exp["checks"] = {"cross_entropy_loss": ce, "lora_merged_vs_unmerged_max_abs_diff": lora_check,
                     "finite_differences": fd, "torch_optim_max_abs_diff": opt_diff,
                     "pad_ids_changed_max_abs_diff": max_abs(alt["grads"], res["grads"])}
    exp["f32_deviation"] = dev
    exp["sensitivity"] = sens
    if case["optimizer"]["type"] == "adamw":
        # A blind spot, recorded so nobody relies on it: AdamW's first step is
        # about lr * sign(g), so a gradient off by a constant factor hardly
        # moves the update. Compare the gradients themselves.
        bad = train_step(case, mc, frozen, init, ids, mask, labels, bugs=("grad_scaled_x2",))
        c = compare(res, bad, skip)
        thr = 1e-3 * case["optimizer"]["lr"]
        moved = sum(int(((bad["updated"][k] - res["updated"][k]).abs() > thr).sum()) for k in exp_keys)
        n_el = sum(init[k].numel() for k in exp_keys)
        assert moved < 0.02 * n_el, (moved, n_el)
        exp["blind_spots"] = {"grad_scaled_x2": {"grad_rel": c["grad_rel"], "updated": c["updated"],
                                                 "elements_moved_over_1e-3_lr": moved, "elements": n_el}}
    with open(os.path.join(folder, "expected.json"), "w") as f:
        f.write(mg.dump_json(exp) + "\n")
    return {"name": case["name"], "model": mc["name"], "mode": case["mode"], "optimizer": case["optimizer"]["type"],
            "about": case["about"], "seconds": round(time.time() - t0, 2), "loss": res["loss"],
            "grad_norm": res["grad_norm"], "f32": dev,
            "min_sens": min(max(s["loss"] / max(dev["loss"], 1e-300), s["updated"] / dev["updated"])
                            for s in sens.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                                                  "train-golden"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible reductions
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    models = {name: write_model(args.out, mc) for name, mc in MODELS.items()}
    summary = []
    for case in CASES:
        s = run_case(case, args.out, models)
        summary.append(s)
        print("%-26s %5.2fs  loss %.6f  |g| %.4g  f32 dev: loss %.1e grad(rel) %.1e updated %.1e  min sens/dev %.3g" % (
            s["name"], s["seconds"], s["loss"], s["grad_norm"], s["f32"]["loss"], s["f32"]["grad_rel"],
            s["f32"]["updated"], s["min_sens"]))
    index = {"generator": "test/golden/make_train_golden.py",
             "command": "python3 test/golden/make_train_golden.py --out test/fixtures/train-golden",
             "models": [{"name": mc["name"], "folder": "models/" + mc["name"], "architecture": mc["architecture"],
                         "about": mc["about"]} for mc in MODELS.values()],
             "cases": [{k: s[k] for k in ("name", "model", "mode", "optimizer", "about")} for s in summary]}
    with open(os.path.join(args.out, "index.json"), "w") as f:
        f.write(mg.dump_json(index) + "\n")


if __name__ == "__main__":
    sys.exit(main())
