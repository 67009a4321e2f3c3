"""Reference side of test/model-hf-peers.test.ts: random small models made
and saved by transformers, and what transformers (+ peft) computes on them in
float64. One JSON request on stdin, one JSON answer on stdout.

Requests (field "op"):
  make      {dir, model_type, config, seed, copy?}  -> {architecture, parameters}
            a *ForCausalLM of that config with random weights (1-D weights
            such as norms moved off their constant init), saved with
            save_pretrained; files in `copy` (tokenizer files) copied in.
  logp      {dir, adapter?, ids, mask}  -> {logp}
            log p(ids[t+1] | ids[..t]) [B][T-1] in float64 (0 where the query
            or the target is padding), each row run alone without its padding:
            what the engine's padded batch (left or right) must reproduce.
  lora_grad {dir, adapter, ids, mask, loss_mask}  -> {loss, grads}
            the adapter loaded trainable by peft, SFT's masked mean NLL over
            loss_mask [B][T-1], its gradient w.r.t. every LoRA weight (names
            as saved: base_model.model.<module>.lora_A.weight).
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
    # Each row alone, without its padding (the real tokens are one contiguous
    # run, padded on the left or the right): what a padded batch must equal.
    rows = []
    for row, m in zip(ids, mask):
        real = [i for i, v in enumerate(m) if v]
        out = torch.zeros(len(row) - 1, dtype=torch.float64)
        if len(real) > 1:
            x = torch.tensor([[row[i] for i in real]], dtype=torch.long)
            logits = model(input_ids=x).logits.double()[0]
            lp = logits.log_softmax(-1)[:-1].gather(-1, x[0, 1:, None])[:, 0]
            # position t of the padded row predicts t + 1: real[k] predicts real[k + 1]
            out = out.index_put((torch.tensor(real[:-1]),), lp)
        rows.append(out)
    return torch.stack(rows)


def make(req):
    torch.manual_seed(req["seed"])
    cfg = AutoConfig.for_model(req["model_type"], **req["config"])
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


def batch(req):
    return [OPS[r["op"]](r) for r in req["requests"]]


OPS = {"make": make, "logp": logp, "lora_grad": lora_grad, "batch": batch}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(OPS[request["op"]](request), sys.stdout)
