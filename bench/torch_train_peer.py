#!/usr/bin/python3
"""PyTorch training peer for bench/train.js: one eager training step of a Llama.

The model code is bench/torch_peer.py's eager Llama (safetensors reader,
RMSNorm, RoPE, grouped-query attention, SwiGLU), with its linears routed
through one hook so that LoRA can wrap them, and with autograd on.

One training step (timed with time.perf_counter inside this process):
  forward (logits at every position, HF-style), causal-LM loss
  F.cross_entropy(logits[:, :-1], ids[:, 1:]) (mean over every target token),
  loss.backward(), torch.nn.utils.clip_grad_norm_(params, max_grad_norm),
  torch.optim.AdamW.step(), optimizer.zero_grad(set_to_none=True).

Modes (cmd "load", field "mode"):
  full   every tensor trainable (embedding, norms, projections, LM head), fp32
  lora   PEFT-style LoRA on q,k,v,o,gate,up,down: the base weights are frozen
         (requires_grad False) and each wrapped linear computes
             y = x W^T + s * (x A^T) B^T,   s = alpha / r
         with A [r, in] (Kaiming-uniform, a = sqrt(5), as PEFT) and B [out, r]
         (zeros). "adapter": a PEFT adapter_model.safetensors to take A and B
         from instead (bench/train.js passes ours, so both engines start from
         the same adapter).
  "autocast": "bf16" on "step": the forward runs under
  torch.autocast('cpu', dtype=torch.bfloat16) (weights stay fp32 and are cast
  per call; the logits go to fp32 before the loss); backward outside the
  context, as PyTorch recommends.

--serve: line-delimited JSON commands on stdin, one JSON reply per line on
stdout (hello, load, matmul, step, quit). Logs go to stderr.
--model DIR: standalone, a few steps of each mode with a summary.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_peer import Llama, autocast_ctx, blas_libraries, gemm_rate, read_safetensors  # noqa: E402

LORA_TARGETS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
PEFT_PATH = {'q': 'self_attn.q_proj', 'k': 'self_attn.k_proj', 'v': 'self_attn.v_proj', 'o': 'self_attn.o_proj',
             'gate': 'mlp.gate_proj', 'up': 'mlp.up_proj', 'down': 'mlp.down_proj'}


class TrainLlama(Llama):
    def __init__(self, folder, mode, r=16, alpha=32, adapter=None, seed=0):
        super().__init__(folder)
        self.mode = mode
        self.scale = 0.0
        if mode == 'full':
            params = [self.embed]
            if not self.tied:
                params.append(self.lm_head)
            params.append(self.final_norm)
            for blk in self.blocks:
                params.extend(blk.values())
            for p in params:
                p.requires_grad_(True)
            self.trainable = params
        elif mode == 'lora':
            self.scale = alpha / r
            ad = read_safetensors(adapter) if adapter else None
            g = torch.Generator().manual_seed(seed)
            self.trainable = []
            for li, blk in enumerate(self.blocks):
                for name in LORA_TARGETS:
                    w = blk[name]
                    if ad is not None:
                        base = f'base_model.model.model.layers.{li}.{PEFT_PATH[name]}'
                        a, b = ad[base + '.lora_A.weight'], ad[base + '.lora_B.weight']
                        if tuple(a.shape) != (r, w.shape[1]) or tuple(b.shape) != (w.shape[0], r):
                            raise ValueError(f'{base}: adapter shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit r={r} and {tuple(w.shape)}')
                    else:
                        # PEFT: nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5)); zeros_(lora_B.weight)
                        a = torch.empty(r, w.shape[1])
                        bound = math.sqrt(6.0 / ((1 + 5.0) * w.shape[1]))
                        a.uniform_(-bound, bound, generator=g)
                        b = torch.zeros(w.shape[0], r)
                    a.requires_grad_(True)
                    b.requires_grad_(True)
                    blk['lora_' + name] = (a, b)
                    self.trainable.extend((a, b))
        else:
            raise ValueError(f'mode {mode!r}: full or lora')
        self.trainable_params = sum(p.numel() for p in self.trainable)

    def linear(self, x, blk, name):
        y = F.linear(x, blk[name])
        lora = blk.get('lora_' + name)
        if lora is not None:
            a, b = lora
            y = y + self.scale * F.linear(F.linear(x, a), b)
        return y

    def attention(self, blk, x, pos0, cache, li):
        # torch_peer.Llama.attention (no KV cache here), linears through self.linear.
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        g = H // KV
        q = self.linear(x, blk, 'q').view(B, T, H, hd).transpose(1, 2)
        k = self.linear(x, blk, 'k').view(B, T, KV, hd).transpose(1, 2)
        v = self.linear(x, blk, 'v').view(B, T, KV, hd).transpose(1, 2)
        q, k = self.rope(q, 0, T), self.rope(k, 0, T)
        qg = q.reshape(B, KV, g * T, hd)
        scores = torch.matmul(qg, k.transpose(2, 3)) * (1.0 / math.sqrt(hd))  # [B, KV, g*T, T]
        causal = torch.full((T, T), float('-inf')).triu_(1)
        scores = (scores.view(B, KV, g, T, T) + causal).view(B, KV, g * T, T)
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).reshape(B, H, T, hd).transpose(1, 2).reshape(B, T, H * hd)
        return self.linear(out, blk, 'o')

    def body(self, ids, pos0=0, cache=None):
        x = F.embedding(ids, self.embed)
        for li, blk in enumerate(self.blocks):
            x = x + self.attention(blk, self.rmsnorm(x, blk['ln1']), 0, None, li)
            h = self.rmsnorm(x, blk['ln2'])
            x = x + self.linear(F.silu(self.linear(h, blk, 'gate')) * self.linear(h, blk, 'up'), blk, 'down')
        return self.rmsnorm(x, self.final_norm)

    def loss(self, ids):
        """Causal-LM loss, mean over every target token (HF: logits at every position, then shift)."""
        logits = F.linear(self.body(ids), self.lm_head).float()
        return F.cross_entropy(logits[:, :-1].reshape(-1, self.vocab), ids[:, 1:].reshape(-1))


class Peer:
    def __init__(self):
        self.model = None
        self.opt = None
        self.opt_cfg = None

    def cmd_hello(self, req):
        return {'torch': torch.__version__, 'threads': torch.get_num_threads(),
                'omp_num_threads': os.environ.get('OMP_NUM_THREADS'), 'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
                'blas': blas_libraries()}

    def cmd_load(self, req):
        t = time.perf_counter()
        self.model = None
        self.opt = None
        m = TrainLlama(req['dir'], req['mode'], req.get('r', 16), req.get('alpha', 32), req.get('adapter'), req.get('seed', 0))
        o = req.get('optimizer', {})
        self.opt_cfg = {'max_grad_norm': o.get('max_grad_norm', 1.0)}
        self.opt = torch.optim.AdamW(m.trainable, lr=o.get('lr', 1e-4), betas=(o.get('beta1', 0.9), o.get('beta2', 0.999)),
                                     eps=o.get('eps', 1e-8), weight_decay=o.get('weight_decay', 0.01))
        self.model = m
        return {'load_ms': (time.perf_counter() - t) * 1e3, 'parameters': m.params, 'trainable': m.trainable_params, 'tied': m.tied}

    def cmd_matmul(self, req):
        return {'shapes': [gemm_rate(m, n, k, req.get('min_seconds', 0.25), req.get('samples', 5), req.get('autocast')) for m, n, k in req['shapes']]}

    def cmd_step(self, req):
        ids = torch.tensor(req['ids'], dtype=torch.long)
        m, opt = self.model, self.opt
        t = time.perf_counter()
        with autocast_ctx(req.get('autocast')):
            loss = m.loss(ids)
        t_fwd = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter()
        mg = self.opt_cfg['max_grad_norm']
        norm = torch.nn.utils.clip_grad_norm_(m.trainable, mg) if mg > 0 else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        t_end = time.perf_counter()
        return {'ms': (t_end - t) * 1e3, 'forward_ms': (t_fwd - t) * 1e3, 'backward_ms': (t_bwd - t_fwd) * 1e3,
                'optimizer_ms': (t_end - t_bwd) * 1e3, 'loss': loss.item(), 'grad_norm': None if norm is None else norm.item()}


def serve():
    peer = Peer()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        if req.get('cmd') == 'quit':
            break
        try:
            reply = getattr(peer, 'cmd_' + req['cmd'])(req)
            reply['ok'] = True
        except Exception as e:  # report, keep serving
            reply = {'ok': False, 'error': f'{type(e).__name__}: {e}'}
        sys.stdout.write(json.dumps(reply) + '\n')
        sys.stdout.flush()


def standalone(args):
    import random
    peer = Peer()
    print(json.dumps(peer.cmd_hello({})))
    rng = random.Random(0)
    for mode, ac in (('full', None), ('lora', None), ('lora', 'bf16')):
        if args.modes and (mode if not ac else 'lora-bf16') not in args.modes.split(','):
            continue
        print(json.dumps(peer.cmd_load({'dir': args.model, 'mode': mode})))
        m = peer.model
        ids = [[rng.randrange(m.vocab) for _ in range(args.seq)] for _ in range(args.batch)]
        for _ in range(args.steps):
            r = peer.cmd_step({'ids': ids, 'autocast': ac})
            print(f'{mode}{" bf16 autocast" if ac else ""} {args.batch}x{args.seq}: {r["ms"]:.0f} ms '
                  f'(fwd {r["forward_ms"]:.0f}, bwd {r["backward_ms"]:.0f}, opt {r["optimizer_ms"]:.0f}), '
                  f'{args.batch * args.seq / r["ms"] * 1e3:.0f} tok/s, loss {r["loss"]:.6f}', flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--serve', action='store_true')
    ap.add_argument('--model')
    ap.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS') or 2))
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--modes', help='comma list of full, lora, lora-bf16 (standalone; default all)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.serve:
        serve()
    elif args.model:
        standalone(args)
    else:
        ap.error('give --serve or --model DIR')


if __name__ == '__main__':
    main()
