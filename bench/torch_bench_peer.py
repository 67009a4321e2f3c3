#!/usr/bin/python3
"""PyTorch peer of bench/bench.js: every workload of the benchmark table, eager.

The model is bench/torch_peer.py's plain eager Llama (stdlib safetensors
reader, RMSNorm, RoPE, grouped-query attention without copying K/V, SwiGLU,
preallocated KV cache), with every linear routed through one hook so that
named LoRA adapters (PEFT's formula y = x W^T + s (x A^T) B^T, s = alpha / r)
can be switched on and off on one frozen base, as our engine does: several
adapters, one active, None = the base alone. An adapter may own a score head
(a [1, hidden] linear on the final hidden state: reward model or critic).

Protocol (--serve): one JSON command per line on stdin, one JSON reply per
line on stdout; logs go to stderr.
  hello                      torch version, threads, the BLAS libraries mapped
  matmul {shapes}            fp32 x @ w.T GFLOP/s (torch_peer.gemm_rate)
  setup {workload, dir, ...} builds the workload's state (model, adapters,
                             optimizers, random tensors); replies with its size
  run {iters, want}          runs the workload `iters` times, returns the mean
                             milliseconds per run (time.perf_counter inside
                             this process) and what `want` asks for (losses,
                             tokens, log-probs) from the last run
  quit

Workloads (names as in bench/bench.js):
  forward            log p(next token) and entropy at every position
  decode             greedy generation with the KV cache (torch_peer's generate)
  sft_full, sft_lora causal-LM loss over every token, backward, clip, AdamW
  rm_step            LoRA + score head; reward = head at the last token of
                     each row; loss mean(-log sigmoid(chosen - rejected))
  ppo_rollout        sampling with the policy adapter (temperature, no EOS),
                     then the policy's and the reference's log-probs, the
                     critic's values and the reward model's score over prompt
                     + response, KL-shaped rewards, GAE, whitened advantages
  ppo_update         one minibatch: critic forward / clipped value loss /
                     backward / clip / AdamW, then policy forward / clipped
                     surrogate / backward / clip / AdamW (TRL's order of work)
  attention_fwd      causal GQA attention (matmul, mask, softmax, matmul)
  attention_bwd      its autograd backward (the forward is run untimed)
  lm_head_fwd        logits = h W^T, log-softmax, gather, entropy
  lm_head_bwd        autograd backward of the gathered log-probs (dh and dW)
  ppo_loss           the PPO loss of ppo_loss's math (clipped surrogate,
                     clipped value loss, statistics) with its backward
  adamw              torch.optim.AdamW.step() on one flat tensor
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
from torch_peer import Llama, blas_libraries, gemm_rate, read_safetensors  # noqa: E402

TARGETS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
PEFT_PATH = {'q': 'self_attn.q_proj', 'k': 'self_attn.k_proj', 'v': 'self_attn.v_proj', 'o': 'self_attn.o_proj',
             'gate': 'mlp.gate_proj', 'up': 'mlp.up_proj', 'down': 'mlp.down_proj'}
HEAD_TENSOR = 'base_model.model.score.weight'


class BenchLlama(Llama):
    def __init__(self, folder):
        super().__init__(folder)
        self.adapters = {}
        self.active = None

    # -- training setups

    def full_training(self):
        params = [self.embed] + ([] if self.tied else [self.lm_head]) + [self.final_norm]
        for blk in self.blocks:
            params.extend(blk.values())
        for p in params:
            p.requires_grad_(True)
        return params

    def add_lora(self, name, r, alpha, head=False, adapter_file=None, seed=0):
        """A LoRA adapter on every projection (A Kaiming-uniform, B zero, as PEFT),
        or A, B (and the head) read from a PEFT adapter file."""
        saved = read_safetensors(adapter_file) if adapter_file else None
        g = torch.Generator().manual_seed(seed)
        layers, params = [], []
        for li, blk in enumerate(self.blocks):
            mods = {}
            for t in TARGETS:
                w = blk[t]
                if saved is not None:
                    base = f'base_model.model.model.layers.{li}.{PEFT_PATH[t]}'
                    a, b = saved[base + '.lora_A.weight'].clone(), saved[base + '.lora_B.weight'].clone()
                    if tuple(a.shape) != (r, w.shape[1]) or tuple(b.shape) != (w.shape[0], r):
                        raise ValueError(f'{base}: shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit r={r} and {tuple(w.shape)}')
                else:
                    a = torch.empty(r, w.shape[1])
                    bound = math.sqrt(6.0 / ((1 + 5.0) * w.shape[1]))  # kaiming_uniform_(a=sqrt(5))
                    a.uniform_(-bound, bound, generator=g)
                    b = torch.zeros(w.shape[0], r)
                a.requires_grad_(True)
                b.requires_grad_(True)
                mods[t] = (a, b)
                params.extend((a, b))
            layers.append(mods)
        hw = None
        if head:
            if saved is not None and HEAD_TENSOR in saved:
                hw = saved[HEAD_TENSOR].clone().reshape(1, self.dim)
            else:
                hw = torch.randn(1, self.dim, generator=g) * 0.02
            hw.requires_grad_(True)
            params.append(hw)
        self.adapters[name] = {'scale': alpha / r, 'layers': layers, 'head': hw, 'params': params}
        self.active = name
        return params

    def use(self, name):
        if name is not None and name not in self.adapters:
            raise ValueError(f'no adapter {name!r}')
        self.active = name

    # -- the forward, linears through the active adapter

    def linear(self, x, blk, li, name):
        y = F.linear(x, blk[name])
        ad = self.adapters.get(self.active) if self.active is not None else None
        if ad is not None:
            a, b = ad['layers'][li][name]
            y = y + ad['scale'] * F.linear(F.linear(x, a), b)
        return y

    def attention(self, blk, x, pos0, cache, li):
        # torch_peer.Llama.attention with the linears through self.linear.
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        g = H // KV
        q = self.linear(x, blk, li, 'q').view(B, T, H, hd).transpose(1, 2)
        k = self.linear(x, blk, li, 'k').view(B, T, KV, hd).transpose(1, 2)
        v = self.linear(x, blk, li, 'v').view(B, T, KV, hd).transpose(1, 2)
        q, k = self.rope(q, pos0, T), self.rope(k, pos0, T)
        if cache is not None:
            kc, vc = cache[li]
            kc[:, :, pos0:pos0 + T] = k
            vc[:, :, pos0:pos0 + T] = v
            k, v = kc[:, :, :pos0 + T], vc[:, :, :pos0 + T]
        S = k.shape[2]
        qg = q.reshape(B, KV, g * T, hd)
        scores = torch.matmul(qg, k.transpose(2, 3)) * (1.0 / math.sqrt(hd))
        if T > 1:
            causal = torch.full((T, S), float('-inf')).triu_(pos0 + 1)
            scores = (scores.view(B, KV, g, T, S) + causal).view(B, KV, g * T, S)
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).reshape(B, H, T, hd).transpose(1, 2).reshape(B, T, H * hd)
        return self.linear(out, blk, li, 'o')

    def body(self, ids, pos0=0, cache=None):
        x = F.embedding(ids, self.embed)
        for li, blk in enumerate(self.blocks):
            x = x + self.attention(blk, self.rmsnorm(x, blk['ln1']), pos0, cache, li)
            h = self.rmsnorm(x, blk['ln2'])
            x = x + self.linear(F.silu(self.linear(h, blk, li, 'gate')) * self.linear(h, blk, li, 'up'), blk, li, 'down')
        return self.rmsnorm(x, self.final_norm)

    def values(self, h):
        """The active adapter's score head at every position: [B, T]."""
        hw = self.adapters[self.active]['head']
        return F.linear(h, hw).squeeze(-1)

    def logp_entropy(self, h, ids, temperature=1.0):
        """HF-style: logits at every position, then drop the last; log p(next) and entropy [B, T-1]."""
        logits = F.linear(h, self.lm_head)[:, :-1]
        if temperature != 1.0:
            logits = logits / temperature
        lp_all = torch.log_softmax(logits, dim=-1)
        logp = lp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        entropy = -(lp_all.exp() * lp_all).sum(-1)
        return logp, entropy

    def sample(self, prompt, new_tokens, temperature, gen):
        """Sampling from softmax(logits / temperature) with the KV cache, no EOS; tokens and their log-probs [B, new]."""
        B, Tp = prompt.shape
        cache = self.new_cache(B, Tp + new_tokens)
        h = self.body(prompt, 0, cache)[:, -1]
        toks, lps = [], []
        for step in range(new_tokens):
            lp = torch.log_softmax(F.linear(h, self.lm_head) / temperature, dim=-1)
            tok = torch.multinomial(lp.exp(), 1, generator=gen).squeeze(1)
            toks.append(tok)
            lps.append(lp.gather(-1, tok.unsqueeze(-1)).squeeze(-1))
            if step + 1 == new_tokens:
                break
            h = self.body(tok.unsqueeze(1), Tp + step, cache)[:, -1]
        return torch.stack(toks, 1), torch.stack(lps, 1)


def make_optimizer(params, o):
    return torch.optim.AdamW(params, lr=o.get('lr', 1e-4), betas=(o.get('beta1', 0.9), o.get('beta2', 0.999)),
                             eps=o.get('eps', 1e-8), weight_decay=o.get('weight_decay', 0.01))


def optimizer_step(params, opt, max_grad_norm):
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
    opt.step()
    opt.zero_grad(set_to_none=True)
    return None if norm is None else norm.item()


def randn(shape, g, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


class Peer:
    def __init__(self):
        self.model = None
        self.work = None  # run(want) -> (ms, extra) of the workload set up last
        self.ppo = None  # the PPO state, shared by ppo_rollout and ppo_update

    def cmd_hello(self, req):
        return {'torch': torch.__version__, 'threads': torch.get_num_threads(),
                'omp_num_threads': os.environ.get('OMP_NUM_THREADS'), 'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
                'blas': blas_libraries()}

    def cmd_matmul(self, req):
        return {'shapes': [gemm_rate(m, n, k, req.get('min_seconds', 0.25), req.get('samples', 5)) for m, n, k in req['shapes']]}

    def cmd_setup(self, req):
        self.model = None
        self.work = None
        w = req['workload']
        if w not in ('ppo_rollout', 'ppo_update'):
            self.ppo = None
        fn = getattr(self, 'setup_' + w, None)
        if fn is None:
            raise ValueError(f'unknown workload {w!r}')
        t = time.perf_counter()
        info = fn(req) or {}
        info['setup_ms'] = (time.perf_counter() - t) * 1e3
        return info

    def cmd_run(self, req):
        if self.work is None:
            raise ValueError('run before setup')
        iters = max(1, int(req.get('iters', 1)))
        want = req.get('want') or {}
        total = 0.0
        extra = {}
        for i in range(iters):
            ms, extra = self.work(want if i == iters - 1 else {})
            total += ms
        return {'ms': total / iters, **extra}

    # ---------------------------------------------------------------- stages

    def load(self, req):
        self.model = BenchLlama(req['dir'])
        return self.model

    def setup_forward(self, req):
        m = self.load(req)
        ids = torch.tensor(req['ids'], dtype=torch.long)

        def run(want):
            with torch.inference_mode():
                t = time.perf_counter()
                logp, _ = m.logp_entropy(m.body(ids), ids)
                ms = (time.perf_counter() - t) * 1e3
            out = {}
            if want.get('mean_logp'):
                out['mean_logp'] = logp.double().mean().item()
            return ms, out
        self.work = run
        return {'parameters': m.params}

    def setup_decode(self, req):
        m = self.load(req)
        prompts = torch.tensor(req['prompts'], dtype=torch.long)
        n = req['new_tokens']

        def run(want):
            with torch.inference_mode():
                t = time.perf_counter()
                toks, _ = m.generate(prompts, n)
                ms = (time.perf_counter() - t) * 1e3
            return ms, ({'tokens': toks.tolist()} if want.get('tokens') else {})
        self.work = run
        return {'parameters': m.params}

    def setup_sft(self, req, full):
        m = self.load(req)
        params = m.full_training() if full else m.add_lora('sft', req['r'], req['alpha'], adapter_file=req.get('adapter'))
        o = req.get('optimizer', {})
        opt = make_optimizer(params, o)
        mg = o.get('max_grad_norm', 1.0)
        ids = torch.tensor(req['ids'], dtype=torch.long)

        def run(want):
            t = time.perf_counter()
            logits = F.linear(m.body(ids), m.lm_head)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, m.vocab), ids[:, 1:].reshape(-1))
            loss.backward()
            optimizer_step(params, opt, mg)
            ms = (time.perf_counter() - t) * 1e3
            return ms, {'loss': loss.item()}
        self.work = run
        return {'trainable': sum(p.numel() for p in params)}

    def setup_sft_full(self, req):
        return self.setup_sft(req, True)

    def setup_sft_lora(self, req):
        return self.setup_sft(req, False)

    def setup_rm_step(self, req):
        m = self.load(req)
        params = m.add_lora('reward', req['r'], req['alpha'], head=True, adapter_file=req.get('adapter'))
        o = req.get('optimizer', {})
        opt = make_optimizer(params, o)
        mg = o.get('max_grad_norm', 1.0)
        rows = torch.tensor(req['chosen'] + req['rejected'], dtype=torch.long)
        n = len(req['chosen'])

        def run(want):
            t = time.perf_counter()
            r = m.values(m.body(rows))[:, -1]  # the score at each row's last token (no padding)
            loss = -F.logsigmoid(r[:n] - r[n:]).mean()
            loss.backward()
            optimizer_step(params, opt, mg)
            ms = (time.perf_counter() - t) * 1e3
            return ms, {'loss': loss.item()}
        self.work = run
        return {'trainable': sum(p.numel() for p in params)}

    def setup_ppo(self, req):
        # ppo_update right after ppo_rollout on the same request keeps the model, adapters and last batch.
        key = json.dumps([req['dir'], req['prompts'], req['r'], req['alpha'], req['ppo'], req.get('optimizer')])
        if getattr(self, 'ppo', None) is not None and self.ppo['key'] == key:
            return {'trainable': self.ppo['trainable'], 'reused': True}
        self.ppo = None
        m = self.load(req)
        p = req['ppo']
        r, alpha = req['r'], req['alpha']
        critic = m.add_lora('critic', r, alpha, head=True, seed=1)
        m.add_lora('reward', r, alpha, head=True, seed=2)
        for t in m.adapters['reward']['params']:
            t.requires_grad_(False)  # frozen
        policy = m.add_lora('policy', r, alpha, seed=3)
        o = req.get('optimizer', {})
        self.ppo = {
            'm': m, 'p': p, 'critic': critic, 'policy': policy, 'copt': make_optimizer(critic, o), 'popt': make_optimizer(policy, o),
            'max_grad_norm': o.get('max_grad_norm', 1.0), 'prompts': torch.tensor(req['prompts'], dtype=torch.long),
            'gen': torch.Generator().manual_seed(0), 'batch': None, 'key': key,
            'trainable': sum(t.numel() for t in policy) + sum(t.numel() for t in critic),
        }
        return {'trainable': self.ppo['trainable']}

    def ppo_rollout(self):
        s = self.ppo
        m, p, prompts = s['m'], s['p'], s['prompts']
        P, N, temp = prompts.shape[1], p['new_tokens'], p['temperature']
        with torch.no_grad():
            m.use('policy')
            toks, _ = m.sample(prompts, N, temp, s['gen'])
            seqs = torch.cat([prompts, toks], 1)
            lo, hi = P - 1, P - 1 + N  # position P-1+j predicts response token j
            old_logp = m.logp_entropy(m.body(seqs), seqs, temp)[0][:, lo:hi]
            m.use(None)
            ref_logp = m.logp_entropy(m.body(seqs), seqs, temp)[0][:, lo:hi]
            m.use('critic')
            old_values = m.values(m.body(seqs))[:, lo:hi]
            m.use('reward')
            score = m.values(m.body(seqs))[:, -1]
            # rewards: -kl_coef * (logp - ref_logp) per token, + the score at the last token; GAE; whitened advantages
            rewards = -p['kl_coef'] * (old_logp - ref_logp)
            rewards[:, -1] += score
            adv = torch.zeros_like(rewards)
            last = torch.zeros(rewards.shape[0])
            for t in range(N - 1, -1, -1):
                nv = old_values[:, t + 1] if t + 1 < N else torch.zeros(rewards.shape[0])
                delta = rewards[:, t] + p['gamma'] * nv - old_values[:, t]
                last = delta + p['gamma'] * p['lam'] * last
                adv[:, t] = last
            returns = adv + old_values
            adv = (adv - adv.mean()) / torch.sqrt(adv.var() + 1e-8)
        s['batch'] = {'seqs': seqs, 'old_logp': old_logp, 'old_values': old_values, 'adv': adv, 'returns': returns, 'lo': lo, 'hi': hi}

    def ppo_update(self):
        s = self.ppo
        m, p, b = s['m'], s['p'], s['batch']
        seqs, lo, hi, cr, crv = b['seqs'], b['lo'], b['hi'], p['cliprange'], p['cliprange_value']
        # critic: clipped value loss
        m.use('critic')
        v = m.values(m.body(seqs))[:, lo:hi]
        vc = b['old_values'] + (v - b['old_values']).clamp(-crv, crv)
        vf = 0.5 * torch.max((v - b['returns']) ** 2, (vc - b['returns']) ** 2).mean()
        (p['vf_coef'] * vf).backward()
        optimizer_step(s['critic'], s['copt'], s['max_grad_norm'])
        # policy: clipped surrogate
        m.use('policy')
        logits = F.linear(m.body(seqs), m.lm_head)[:, lo:hi] / p['temperature']
        lp_all = torch.log_softmax(logits, dim=-1)
        logp = lp_all.gather(-1, seqs[:, lo + 1:hi + 1].unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - b['old_logp'])
        pg = torch.max(-b['adv'] * ratio, -b['adv'] * ratio.clamp(1 - cr, 1 + cr)).mean()
        with torch.no_grad():
            entropy = -(lp_all.exp() * lp_all).sum(-1).mean()  # statistic, as TRL logs it
        pg.backward()
        optimizer_step(s['policy'], s['popt'], s['max_grad_norm'])
        return pg.item(), entropy.item()

    def setup_ppo_rollout(self, req):
        info = self.setup_ppo(req)

        def run(want):
            t = time.perf_counter()
            self.ppo_rollout()
            return (time.perf_counter() - t) * 1e3, {}
        self.work = run
        return info

    def setup_ppo_update(self, req):
        info = self.setup_ppo(req)
        if self.ppo['batch'] is None:
            self.ppo_rollout()

        def run(want):
            t = time.perf_counter()
            pg, _ = self.ppo_update()
            return (time.perf_counter() - t) * 1e3, {'pg_loss': pg}
        self.work = run
        return info

    # ---------------------------------------------------------------- kernels

    def setup_attention(self, req, backward):
        B, T, H, KV, hd = req['batch'], req['seq'], req['heads'], req['kv_heads'], req['head_dim']
        g = torch.Generator().manual_seed(0)
        q = randn((B, H, T, hd), g)
        k = randn((B, KV, T, hd), g)
        v = randn((B, KV, T, hd), g)
        causal = torch.full((T, T), float('-inf')).triu_(1)
        scale = 1.0 / math.sqrt(hd)
        grp = H // KV

        def attend(q, k, v):
            s = torch.matmul(q.reshape(B, KV, grp * T, hd), k.transpose(2, 3)) * scale
            s = (s.view(B, KV, grp, T, T) + causal).view(B, KV, grp * T, T)
            return torch.matmul(torch.softmax(s, dim=-1), v).view(B, H, T, hd)

        if not backward:
            def run(want):
                with torch.no_grad():
                    t = time.perf_counter()
                    attend(q, k, v)
                    return (time.perf_counter() - t) * 1e3, {}
        else:
            for x in (q, k, v):
                x.requires_grad_(True)
            dout = randn((B, H, T, hd), g)

            def run(want):
                for x in (q, k, v):
                    x.grad = None
                out = attend(q, k, v)  # untimed: the backward alone is measured
                t = time.perf_counter()
                out.backward(dout)
                return (time.perf_counter() - t) * 1e3, {}
        self.work = run
        return {}

    def setup_attention_fwd(self, req):
        return self.setup_attention(req, False)

    def setup_attention_bwd(self, req):
        return self.setup_attention(req, True)

    def setup_lm_head(self, req, backward):
        n, d, V = req['n'], req['dim'], req['vocab']
        g = torch.Generator().manual_seed(0)
        h = randn((n, d), g)
        w = randn((V, d), g, 0.02)
        targets = torch.randint(0, V, (n,), generator=g)

        if not backward:
            def run(want):
                with torch.no_grad():
                    t = time.perf_counter()
                    lp = torch.log_softmax(F.linear(h, w), dim=-1)
                    lp.gather(-1, targets.unsqueeze(-1))
                    -(lp.exp() * lp).sum(-1)
                    return (time.perf_counter() - t) * 1e3, {}
        else:
            h.requires_grad_(True)
            w.requires_grad_(True)
            dlogp = randn((n,), g)

            def run(want):
                h.grad = None
                w.grad = None
                lp = torch.log_softmax(F.linear(h, w), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # untimed
                t = time.perf_counter()
                lp.backward(dlogp)
                return (time.perf_counter() - t) * 1e3, {}
        self.work = run
        return {}

    def setup_lm_head_fwd(self, req):
        return self.setup_lm_head(req, False)

    def setup_lm_head_bwd(self, req):
        return self.setup_lm_head(req, True)

    def setup_ppo_loss(self, req):
        n = req['n']
        g = torch.Generator().manual_seed(0)
        old_logp = -torch.rand(n, generator=g) * 5
        logp = (old_logp + randn((n,), g, 0.1)).requires_grad_(True)
        adv = randn((n,), g)
        old_values = randn((n,), g)
        values = (old_values + randn((n,), g, 0.3)).requires_grad_(True)
        returns = randn((n,), g)
        entropy = torch.rand(n, generator=g) * 3
        cr, crv, vf_coef = 0.2, 0.2, 0.1

        def run(want):
            logp.grad = None
            values.grad = None
            t = time.perf_counter()
            log_ratio = logp - old_logp
            ratio = torch.exp(log_ratio)
            pg1, pg2 = -adv * ratio, -adv * ratio.clamp(1 - cr, 1 + cr)
            pg = torch.max(pg1, pg2).mean()
            vc = old_values + (values - old_values).clamp(-crv, crv)
            l1, l2 = (values - returns) ** 2, (vc - returns) ** 2
            vf = 0.5 * torch.max(l1, l2).mean()
            loss = pg + vf_coef * vf
            loss.backward()
            with torch.no_grad():  # the op's statistics
                stats = [entropy.mean(), 0.5 * (log_ratio ** 2).mean(), (pg2 > pg1).float().mean(), (l2 > l1).float().mean(), ratio.mean()]
                [s.item() for s in stats]
            return (time.perf_counter() - t) * 1e3, {}
        self.work = run
        return {}

    def setup_adamw(self, req):
        n = req['n']
        g = torch.Generator().manual_seed(0)
        p = randn((n,), g).requires_grad_(True)
        p.grad = randn((n,), g, 1e-3)
        opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

        def run(want):
            t = time.perf_counter()
            opt.step()
            return (time.perf_counter() - t) * 1e3, {}
        self.work = run
        return {}


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--serve', action='store_true', help='serve commands on stdin (bench/bench.js starts it so)')
    ap.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS') or 2))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.serve:
        ap.error('this script is driven by bench/bench.js: give --serve')
    serve()


if __name__ == '__main__':
    main()
