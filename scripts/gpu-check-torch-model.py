#!/usr/bin/env python3
"""PyTorch peer of scripts/gpu-check-model.js on the same card: the same
model folder and token ids through transformers (LlamaForCausalLM, SDPA
attention) and peft, bf16 on CUDA, as a TRL/peft user would run them.

  forward    bf16 weights, no grad: logits, log-softmax, gather (mean NLL)
  decode     greedy generate, new tokens per second
  lora_step  peft LoRA r 16 (alpha 32, all seven projections), adapters in
             fp32 on a bf16 base, bf16 autocast; cross-entropy, backward,
             AdamW (fused)
  full_step  fp32 weights, bf16 autocast, cross-entropy, backward, clip 1,
             AdamW (fused)

Usage: gpu-check-torch-model.py MODEL_DIR IDS_JSON. Prints one JSON line.
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def timed(repeats, fn):
    fn()  # warm-up
    torch.cuda.synchronize()
    ms, last = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = fn()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms), last


def main():
    model_dir, ids_file = sys.argv[1], sys.argv[2]
    spec = json.load(open(ids_file))
    import transformers
    from transformers import LlamaForCausalLM
    dev = torch.device('cuda')
    ids = torch.tensor(spec['ids'], dtype=torch.long, device=dev)
    prompts = torch.tensor(spec['prompts'], dtype=torch.long, device=dev)
    repeats, new_tokens = spec['repeats'], spec['newTokens']
    tokens = ids.numel()
    out = {'torch': torch.__version__, 'transformers': transformers.__version__, 'device': torch.cuda.get_device_name(0), 'rows': []}

    def row(name, n, fn):
        try:
            ms, last = timed(repeats, fn)
            r = {'name': name, 'tokens': n, 'ms': ms, 'tokens_per_sec': n * 1000 / ms}
            if last is not None:
                r['loss'] = float(last)
            out['rows'].append(r)
        except Exception as e:  # one failing workload must not hide the others
            out['rows'].append({'name': name, 'error': f'{type(e).__name__}: {e}'})
        torch.cuda.empty_cache()

    def ce(logits, x):
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    m = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, attn_implementation='sdpa').to(dev).eval()

    def forward():
        with torch.no_grad():
            return ce(m(ids).logits, ids).item()
    row('forward', tokens, forward)

    def decode():
        with torch.no_grad():
            m.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
    row('decode', prompts.shape[0] * new_tokens, decode)

    try:
        from peft import LoraConfig, get_peft_model
        out['peft'] = __import__('peft').__version__
        pm = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
            'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']))
        params = [p for p in pm.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        pm.train()

        def lora_step():
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = ce(pm(ids).logits, ids)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()
        row('lora_step', tokens, lora_step)
        del pm, opt, params
    except ImportError as e:
        out['rows'].append({'name': 'lora_step', 'error': f'peft not available: {e}'})
    del m
    torch.cuda.empty_cache()

    full = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation='sdpa').to(dev).train()
    fopt = torch.optim.AdamW(full.parameters(), lr=1e-5, fused=True)

    def full_step():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = ce(full(ids).logits, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(full.parameters(), 1.0)
        fopt.step()
        fopt.zero_grad(set_to_none=True)
        return loss.item()
    row('full_step', tokens, full_step)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
