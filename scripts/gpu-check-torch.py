#!/usr/bin/env python3
# PyTorch peer of scripts/gpu-check.js: the benchmark shapes of the fused
# CUDA kernels, timed with CUDA events on the same card. Prints one JSON line:
# {"version", "device", "results": {...}}. Exits non-zero (with a reason on
# stderr) when torch or a CUDA device is missing.
import json
import sys

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    print(f"no torch: {e}", file=sys.stderr)
    sys.exit(3)
if not torch.cuda.is_available():
    print("torch has no CUDA device", file=sys.stderr)
    sys.exit(3)

dev = torch.device("cuda")
torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = False


def timed(fn, repeat):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(repeat):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / repeat


res = {}
m = n = k = 4096
A = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
B = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
ms = timed(lambda: torch.matmul(A, B.t()), 20)
res["matmul_bf16_ms"] = ms
res["matmul_bf16_tflops"] = 2 * m * n * k / (ms * 1e9)
del A, B

for (bsz, t, h, kvh, d) in [(4, 2048, 32, 8, 128), (8, 1024, 16, 16, 64)]:
    key = f"sdpa_b{bsz}_t{t}_h{h}_{kvh}_d{d}"
    q = torch.randn(bsz, h, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    kk = torch.randn(bsz, kvh, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(bsz, kvh, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)

    def fwd():
        k2, v2 = kk, v
        if kvh != h:
            k2 = kk.repeat_interleave(h // kvh, dim=1)
            v2 = v.repeat_interleave(h // kvh, dim=1)
        return F.scaled_dot_product_attention(q, k2, v2, is_causal=True)

    res[key + "_fwd_ms"] = timed(fwd, 5)
    out = fwd()
    g = torch.randn_like(out)
    res[key + "_bwd_ms"] = timed(lambda: torch.autograd.grad(fwd(), (q, kk, v), g), 5) - res[key + "_fwd_ms"]
    del q, kk, v, out, g

nr, dim, vocab = 4096, 2048, 32000
hid = torch.randn(nr, dim, device=dev, requires_grad=True)
tgt = (torch.arange(nr, device=dev) * 7919) % vocab
for dt, name in [(torch.float32, "lm_head_f32"), (torch.bfloat16, "lm_head_bf16")]:
    W = (torch.randn(vocab, dim, device=dev) * 0.02).to(dt)

    def head():
        logits = (hid.to(dt) @ W.t()).float()
        lp = torch.log_softmax(logits, dim=-1)
        return lp.gather(1, tgt[:, None]).squeeze(1)

    with torch.no_grad():
        res[name + "_fwd_ms"] = timed(head, 5)
    res[name + "_bwd_ms"] = timed(lambda: torch.autograd.grad(head().sum(), hid), 5) - res[name + "_fwd_ms"]
    del W

N = 1 << 20
x = torch.randn(8, N, device=dev) * 0.1
lp = x[0].clone().requires_grad_(True)
vals = x[4].clone().requires_grad_(True)


def ppo():
    ratio = torch.exp(lp - x[1])
    pg = torch.max(-x[2] * ratio, -x[2] * ratio.clamp(0.8, 1.2)).mean()
    vc = torch.max(torch.min(vals, x[5] + 0.2), x[5] - 0.2)
    vf = 0.5 * torch.max((vals - x[3]) ** 2, (vc - x[3]) ** 2).mean()
    kl = (lp - x[6]).mean()
    loss = pg + 0.1 * vf + 0.05 * kl - 0.01 * x[7].mean()
    return torch.autograd.grad(loss, (lp, vals))


res["ppo_loss_ms"] = timed(ppo, 20)
print(json.dumps({"version": torch.__version__, "device": torch.cuda.get_device_name(0), "results": res}))
