#!/usr/bin/python3
"""PyTorch peer for bench/forward.js: a plain eager Llama over the same model folder.

An independent, straightforward fp32 implementation in the style of Hugging
Face's modeling_llama (RMSNorm, RoPE with rotate_half, grouped-query
attention, SwiGLU MLP, tied or untied LM head). No transformers, no numpy: a
tiny stdlib safetensors reader (F32 only) loads config.json + model.safetensors.

Workloads (each timed with time.perf_counter inside this process):
  matmul   fp32 x @ w.T (the layout of a linear layer) on given shapes -> GFLOP/s
           ("autocast": "bf16": the same under bf16 autocast)
  forward  batch x seq ids -> logits at every position, log-softmax, gather of
           the next token, entropy (what our engine's forward returns)
  decode   greedy generation with a preallocated KV cache: one prefill of the
           prompt (LM head on the last position only), then one step per new
           token computing only the new position's logits; the log-prob of the
           picked token is gathered, as our generate returns it.
  forward and decode take "autocast": "bf16": the same code run under
  torch.autocast('cpu', dtype=torch.bfloat16) (how a PyTorch user gets bf16 on
  the CPU: the weights stay fp32 and are cast per call, linears/matmuls run in
  bf16, everything else follows autocast's op lists); the logits are cast to
  fp32 before the log-softmax / gather / entropy / argmax in both modes.

Two modes:
  --serve            line-delimited JSON commands on stdin, one JSON reply per
                     line on stdout (bench/forward.js drives it, interleaving
                     its repeats with ours). Logs go to stderr.
  --model DIR [...]  standalone: run the workloads once and print a summary
                     (--autocast bf16: forward and decode under bf16 autocast).

Thread count: OMP_NUM_THREADS and torch.set_num_threads(--threads, default 2).
The driver puts the OpenMP build of OpenBLAS first on LD_LIBRARY_PATH; `hello`
reports which BLAS library this process actually mapped.
"""
import argparse
import contextlib
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------
# safetensors (F32 only)

def read_safetensors(path):
    with open(path, 'rb') as f:
        data = f.read()
    (hlen,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + hlen].decode('utf-8'))
    start = 8 + hlen
    buf = bytearray(data)  # writable, so torch.frombuffer does not warn
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        if info['dtype'] != 'F32':
            raise SystemExit(f'torch_peer: {name} is {info["dtype"]}; this reader handles F32 only')
        b, e = info['data_offsets']
        n = (e - b) // 4
        t = torch.frombuffer(buf, dtype=torch.float32, count=n, offset=start + b) if n else torch.empty(0)
        out[name] = t.reshape(info['shape']).clone()
    return out


# ---------------------------------------------------------------------------
# model

class Llama:
    def __init__(self, folder):
        with open(os.path.join(folder, 'config.json')) as f:
            c = json.load(f)
        self.vocab = c['vocab_size']
        self.dim = c['hidden_size']
        self.layers = c['num_hidden_layers']
        self.heads = c['num_attention_heads']
        self.kv_heads = c.get('num_key_value_heads') or self.heads
        self.head_dim = c.get('head_dim') or self.dim // self.heads
        self.eps = c.get('rms_norm_eps', 1e-6)
        self.theta = c.get('rope_theta', 10000.0)
        self.max_pos = c.get('max_position_embeddings', 2048)
        scaling = c.get('rope_scaling')
        if scaling and (scaling.get('rope_type') or scaling.get('type')) not in (None, 'default'):
            raise SystemExit('torch_peer: rope scaling is not implemented here')
        if c.get('attention_bias') or c.get('mlp_bias') or c.get('model_type') == 'qwen2':
            raise SystemExit('torch_peer: biases (qwen2 / attention_bias / mlp_bias) are not implemented here')
        w = read_safetensors(os.path.join(folder, 'model.safetensors'))
        self.embed = w['model.embed_tokens.weight']
        self.lm_head = w['lm_head.weight'] if 'lm_head.weight' in w else self.embed
        self.tied = 'lm_head.weight' not in w
        self.final_norm = w['model.norm.weight']
        self.blocks = []
        for i in range(self.layers):
            p = f'model.layers.{i}.'
            self.blocks.append({k: w[p + n] for k, n in [
                ('ln1', 'input_layernorm.weight'), ('ln2', 'post_attention_layernorm.weight'),
                ('q', 'self_attn.q_proj.weight'), ('k', 'self_attn.k_proj.weight'),
                ('v', 'self_attn.v_proj.weight'), ('o', 'self_attn.o_proj.weight'),
                ('gate', 'mlp.gate_proj.weight'), ('up', 'mlp.up_proj.weight'), ('down', 'mlp.down_proj.weight')]})
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        freqs = torch.outer(torch.arange(self.max_pos, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.params = sum(t.numel() for t in w.values())

    def rmsnorm(self, x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + self.eps))

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def rope(self, x, pos0, T):
        cos = self.cos[pos0:pos0 + T]  # [T, hd], broadcast over [B, heads, T, hd]
        sin = self.sin[pos0:pos0 + T]
        return x * cos + self.rotate_half(x) * sin

    def attention(self, blk, x, pos0, cache, li):
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        g = H // KV
        q = F.linear(x, blk['q']).view(B, T, H, hd).transpose(1, 2)
        k = F.linear(x, blk['k']).view(B, T, KV, hd).transpose(1, 2)
        v = F.linear(x, blk['v']).view(B, T, KV, hd).transpose(1, 2)
        q, k = self.rope(q, pos0, T), self.rope(k, pos0, T)
        if cache is not None:
            kc, vc = cache[li]
            kc[:, :, pos0:pos0 + T] = k
            vc[:, :, pos0:pos0 + T] = v
            k, v = kc[:, :, :pos0 + T], vc[:, :, :pos0 + T]
        S = k.shape[2]
        # Grouped-query attention without copying K/V per head: query heads
        # kv*g .. kv*g+g-1 share KV head kv (as HF's repeat_kv lays them out).
        qg = q.reshape(B, KV, g * T, hd)
        scores = torch.matmul(qg, k.transpose(2, 3)) * (1.0 / math.sqrt(hd))  # [B, KV, g*T, S]
        if T > 1:
            causal = torch.full((T, S), float('-inf')).triu_(pos0 + 1)
            scores = (scores.view(B, KV, g, T, S) + causal).view(B, KV, g * T, S)
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).view(B, H, T, hd).transpose(1, 2).reshape(B, T, H * hd)
        return F.linear(out, blk['o'])

    def body(self, ids, pos0=0, cache=None):
        x = F.embedding(ids, self.embed)
        for li, blk in enumerate(self.blocks):
            x = x + self.attention(blk, self.rmsnorm(x, blk['ln1']), pos0, cache, li)
            h = self.rmsnorm(x, blk['ln2'])
            x = x + F.linear(F.silu(F.linear(h, blk['gate'])) * F.linear(h, blk['up']), blk['down'])
        return self.rmsnorm(x, self.final_norm)

    def score(self, ids):
        """Per-token log p(ids[t+1] | ids[..t]) and entropy, [B, T-1] each."""
        # .float(): under bf16 autocast F.linear returns bf16 logits; the
        # log-softmax, gather and entropy run in fp32 (a no-op in fp32 mode).
        logits = F.linear(self.body(ids), self.lm_head)[:, :-1].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def new_cache(self, B, capacity):
        shape = (B, self.kv_heads, capacity, self.head_dim)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(self.layers)]

    def generate(self, prompt, new_tokens):
        """Greedy; prompt [B, Tp] (all rows the same length). Returns tokens [B, new], logp [B, new]."""
        B, Tp = prompt.shape
        cache = self.new_cache(B, Tp + new_tokens)
        h = self.body(prompt, 0, cache)[:, -1]
        logits = F.linear(h, self.lm_head).float()  # fp32 log-softmax / argmax under autocast too
        toks, lps = [], []
        for step in range(new_tokens):
            lp = torch.log_softmax(logits, dim=-1)
            tok = torch.argmax(logits, dim=-1)
            toks.append(tok)
            lps.append(lp.gather(-1, tok.unsqueeze(-1)).squeeze(-1))
            if step + 1 == new_tokens:
                break
            h = self.body(tok.unsqueeze(1), Tp + step, cache)[:, -1]
            logits = F.linear(h, self.lm_head).float()
        return torch.stack(toks, 1), torch.stack(lps, 1)


# ---------------------------------------------------------------------------
# measurements

def blas_libraries():
    libs = set()
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                p = line.split()[-1]
                if 'blas' in os.path.basename(p).lower() or 'lapack' in os.path.basename(p).lower():
                    libs.add(p)
    except OSError:
        pass
    return sorted(libs)


def autocast_ctx(mode):
    """torch.autocast('cpu', dtype=torch.bfloat16) for mode 'bf16', else a no-op context."""
    if not mode:
        return contextlib.nullcontext()
    if mode != 'bf16':
        raise ValueError(f'autocast {mode!r}: only bf16 is supported')
    return torch.autocast('cpu', dtype=torch.bfloat16)


def gemm_rate(m, n, k, min_seconds=0.25, samples=5, autocast=None):
    """Median GFLOP/s of x[m,k] @ w[n,k].T over `samples` timed batches (fp32 tensors;
    with autocast='bf16' the product runs under bf16 autocast, the cast included)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    if autocast:
        ctx = autocast_ctx(autocast)

        def run():
            with ctx:
                return torch.mm(x, w.t())
    else:
        out = torch.empty(m, n)

        def run():
            return torch.mm(x, w.t(), out=out)
    run()
    t = time.perf_counter()
    run()
    one = max(time.perf_counter() - t, 1e-6)
    if one > 0.2:
        samples = min(samples, 3)
    iters = max(1, int(min_seconds / samples / one))
    rates = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(iters):
            run()
        dt = (time.perf_counter() - t) / iters
        rates.append(2.0 * m * n * k / dt / 1e9)
    rates.sort()
    return {'m': m, 'n': n, 'k': k, 'gflops': rates[len(rates) // 2], 'min_gflops': rates[0], 'max_gflops': rates[-1], 'samples': samples, 'iters': iters}


class Peer:
    def __init__(self):
        self.model = None

    def cmd_hello(self, req):
        return {'torch': torch.__version__, 'threads': torch.get_num_threads(),
                'omp_num_threads': os.environ.get('OMP_NUM_THREADS'), 'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
                'blas': blas_libraries(), 'config': torch.__config__.show().strip().splitlines()[:8]}

    def cmd_load(self, req):
        t = time.perf_counter()
        self.model = Llama(req['dir'])
        return {'load_ms': (time.perf_counter() - t) * 1e3, 'parameters': self.model.params, 'tied': self.model.tied}

    def cmd_matmul(self, req):
        return {'shapes': [gemm_rate(m, n, k, req.get('min_seconds', 0.25), req.get('samples', 5), req.get('autocast')) for m, n, k in req['shapes']]}

    def cmd_forward(self, req):
        ids = torch.tensor(req['ids'], dtype=torch.long)
        with torch.inference_mode(), autocast_ctx(req.get('autocast')):
            t = time.perf_counter()
            logp, ent = self.model.score(ids)
            ms = (time.perf_counter() - t) * 1e3
        out = {'ms': ms, 'mean_logp': logp.double().mean().item(), 'mean_entropy': ent.double().mean().item()}
        if req.get('return_logp'):
            out['logp'] = logp.reshape(-1).tolist()
        return out

    def cmd_decode(self, req):
        prompt = torch.tensor(req['prompts'], dtype=torch.long)
        with torch.inference_mode(), autocast_ctx(req.get('autocast')):
            t = time.perf_counter()
            toks, lps = self.model.generate(prompt, req['new_tokens'])
            ms = (time.perf_counter() - t) * 1e3
        out = {'ms': ms, 'mean_logp': lps.double().mean().item()}
        if req.get('return_tokens'):
            out['tokens'] = toks.tolist()
        return out


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
    print(json.dumps(peer.cmd_load({'dir': args.model})))
    m = peer.model
    print(json.dumps(peer.cmd_matmul({'shapes': [[1024, 1024, 1024], [args.batch * args.seq, m.dim, m.dim]]})))
    rng = random.Random(0)
    ids = [[rng.randrange(m.vocab) for _ in range(args.seq)] for _ in range(args.batch)]
    ac = args.autocast
    tag = ' (bf16 autocast)' if ac else ''
    for _ in range(3):
        r = peer.cmd_forward({'ids': ids, 'autocast': ac})
        print(f'forward{tag} {args.batch}x{args.seq}: {r["ms"]:.1f} ms, {args.batch * args.seq / r["ms"] * 1e3:.0f} tok/s, mean logp {r["mean_logp"]:.6f}')
    for b in (1, 8):
        prompts = [[rng.randrange(m.vocab) for _ in range(32)] for _ in range(b)]
        r = peer.cmd_decode({'prompts': prompts, 'new_tokens': args.new_tokens, 'autocast': ac})
        print(f'decode{tag} b{b} 32+{args.new_tokens}: {r["ms"]:.1f} ms, {b * args.new_tokens / r["ms"] * 1e3:.1f} tok/s')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--serve', action='store_true')
    ap.add_argument('--model')
    ap.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS') or 2))
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--new-tokens', type=int, default=128)
    ap.add_argument('--autocast', choices=['bf16'], help='run forward/decode under torch.autocast(cpu, bfloat16)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.serve:
        serve()
    elif args.model:
        standalone(args)
    else:
        ap.error('give --serve or --model DIR')


if __name__ == '__main__':
    main()
