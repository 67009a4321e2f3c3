"""Reference side of test/model-hf-peers.test.ts: random small models made
and saved by transformers, and what transformers (+ peft) computes on them in
float64. One JSON request on stdin, one JSON answer on stdout.

Requests (field "op"):
  make      {dir, model_type, config, seed, copy?, score?}  -> {architecture, parameters}
            a *ForCausalLM of that config with random weights (1-D weights
            such as norms moved off their constant init), saved with
            save_pretrained; files in `copy` (tokenizer files) copied in.
            With score: an AutoModelForSequenceClassification (num_labels 1).
  score     {dir, rows}  -> {scores}
            the sequence classifier's output for each row, the rows
            right-padded with pad_token_id (it finds each row's last token).
  logp      {dir, adapter?, ids, mask}  -> {logp}
            log p(ids[t+1] | ids[..t]) [B][T-1] in float64 (0 where the query
            or the target is padding), run by transformers on the rows
            right-padded: what the engine's batch padded on either side must
            reproduce.
  lora_grad {dir, adapter, ids, mask, loss_mask}  -> {loss, grads}
            the adapter loaded trainable by peft, SFT's masked mean NLL over
            loss_mask [B][T-1], its gradient w.r.t. every LoRA weight (names
            as saved: base_model.model.<module>.lora_A.weight).
  full_grad {dir, ids, mask, loss_mask}  -> {loss, grads}
            the same loss with every base weight trainable: its gradient
            w.r.t. each parameter (names as saved; tied weights once).
  greedy    {dir, prompts, n}  -> {tokens}
            n greedy tokens per prompt (each alone) through the model's
            forward with transformers' KV cache, no end-of-sequence stop.
  batch     {requests: [...]}  -> [answers]: several requests in one process
            (the libraries are imported once).
"""
import json
import shutil
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def load(d, adapter=None, trainable=False):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    if not trainable:
        model.eval()
    return model


def token_logp(model, ids, mask):
    # The real tokens of each row (one contiguous run, padded on the left or
    # the right) right-padded again, so that no query row is all padding
    # (transformers gives NaN there, and 0 * NaN would reach the real rows):
    # left padding must give what right padding gives. The batch's longest
    # row still decides LongRoPE's factors, as it does for transformers.
    real = [[i for i, v in enumerate(m) if v] for m in mask]
    T = max(len(r) for r in real)
    x = torch.zeros(len(ids), T, dtype=torch.long)
    am = torch.zeros(len(ids), T, dtype=torch.long)
    for b, r in enumerate(real):
        x[b, : len(r)] = torch.tensor([ids[b][i] for i in r], dtype=torch.long)
        am[b, : len(r)] = 1
    pos = torch.arange(T).expand(len(ids), T)
    logits = model(input_ids=x, attention_mask=am, position_ids=pos).logits.double()
    lp = logits.log_softmax(-1)[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    rows = []
    for b, r in enumerate(real):
        out = torch.zeros(len(ids[b]) - 1, dtype=torch.float64)
        if len(r) > 1:
            # position t of the padded row predicts t + 1: real[k] predicts real[k + 1]
            out = out.index_put((torch.tensor(r[:-1]),), lp[b, : len(r) - 1])
        rows.append(out)
    return torch.stack(rows)


def make(req):
    torch.manual_seed(req["seed"])
    cfg = AutoConfig.for_model(req["model_type"], **req["config"])
    if req.get("score"):
        from transformers import AutoModelForSequenceClassification

        cfg.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    model = model.float()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(req["dir"])
    for f in req.get("copy", []):
        shutil.copy(f, req["dir"])
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def logp(req):
    with torch.no_grad():
        return {"logp": token_logp(load(req["dir"], req.get("adapter")), req["ids"], req["mask"]).tolist()}


def lora_grad(req):
    model = load(req["dir"], req["adapter"], trainable=True)
    lp = token_logp(model, req["ids"], req["mask"])
    lm = torch.tensor(req["loss_mask"], dtype=torch.float64)
    loss = -(lp * lm).sum() / lm.sum()
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name.replace(".default.", ".")] = p.grad.flatten().tolist()
    return {"loss": loss.item(), "grads": grads}


def full_grad(req):
    model = load(req["dir"], trainable=True)
    lp = token_logp(model, req["ids"], req["mask"])
    lm = torch.tensor(req["loss_mask"], dtype=torch.float64)
    loss = -(lp * lm).sum() / lm.sum()
    loss.backward()
    return {"loss": loss.item(), "grads": {n: p.grad.flatten().tolist() for n, p in model.named_parameters()}}


def score(req):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(req["dir"], dtype=torch.float64, attn_implementation="eager").eval()
    pad = model.config.pad_token_id
    T = max(len(r) for r in req["rows"])
    x = torch.tensor([r + [pad] * (T - len(r)) for r in req["rows"]], dtype=torch.long)
    am = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in req["rows"]], dtype=torch.long)
    with torch.no_grad():
        return {"scores": model(input_ids=x, attention_mask=am).logits[:, 0].tolist()}


def greedy(req):
    # The model's forward with transformers' own KV cache, one token at a
    # time (not generate(): for Phi-3 it drops the cache where LongRoPE
    # switches to the long factors, which is not the model's cached forward).
    model = load(req["dir"])
    out = []
    with torch.no_grad():
        for p in req["prompts"]:
            o = model(input_ids=torch.tensor([p], dtype=torch.long), use_cache=True)
            toks = []
            for i in range(req["n"]):
                toks.append(int(o.logits[0, -1].argmax()))
                pos = torch.tensor([[len(p) + i]], dtype=torch.long)
                o = model(input_ids=torch.tensor([[toks[-1]]]), position_ids=pos, past_key_values=o.past_key_values, use_cache=True)
            out.append(toks)
    return {"tokens": out}


def batch(req):
    return [OPS[r["op"]](r) for r in req["requests"]]


OPS = {"make": make, "logp": logp, "lora_grad": lora_grad, "greedy": greedy, "full_grad": full_grad, "score": score, "batch": batch}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(OPS[request["op"]](request), sys.stdout)
