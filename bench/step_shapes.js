#!/usr/bin/env node
// @ts-check
/**
 * Our kernels alone on the shapes one training step of a config calls (no
 * peer): every GEMM of the forward and backward (fused qkv and gate|up, the
 * LoRA rank-r products), the LM head's forward and backward, and AdamW over
 * the step's parameter count. For iterating on the kernels: a row's time here
 * times its count per step says where a step's time goes, in seconds, without
 * the full bench/train.js run. Medians of --repeats samples.
 *
 *   node bench/step_shapes.js [--config M] [--repeats 5] [--only gemm,lora,lm_head,adamw] [--json]
 *   node bench/step_shapes.js --addons old.node,build/Release/rlhf_native.node [--stat min --sample-ms 20 --repeats 15]
 *
 * --addons: two builds of the addon in one process, their samples alternating
 * (A, B, A, B, ...) so that load from other processes hits both alike; prints
 * both medians and B's speed-up over A.
 */
'use strict';

const { CONFIGS, median, now, requireDist } = require('./common');

function parseArgs(argv) {
  const o = { config: 'M', repeats: 5, stat: 'median', sampleMs: 60, only: ['gemm', 'lora', 'attention', 'lm_head', 'adamw'], json: false, tokens: 1024, r: 16, addons: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--config') o.config = argv[++i];
    else if (a === '--repeats') o.repeats = Number(argv[++i]);
    else if (a === '--only') o.only = argv[++i].split(',');
    else if (a === '--json') o.json = true;
    else if (a === '--addons') o.addons = argv[++i].split(',');
    else if (a === '--stat') o.stat = argv[++i];  // median | min (min: the least disturbed sample on a shared machine)
    else if (a === '--sample-ms') o.sampleMs = Number(argv[++i]);
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

function rand(n, seed) {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = (s / 4294967296 - 0.5) * 0.1;
  }
  return x;
}

/** Median (or min) ms of each of fns over `repeats` samples (each >= ~sampleMs of calls), the fns alternating. */
function time(fns, repeats, sampleMs, stat) {
  const calls = fns.map((fn) => {
    fn();
    const t0 = now();
    fn();
    return Math.max(1, Math.round(sampleMs / Math.max(now() - t0, 1e-3)));
  });
  const samples = fns.map(() => /** @type {number[]} */ ([]));
  for (let r = 0; r < repeats; r++)
    fns.forEach((fn, i) => {
      const t0 = now();
      for (let c = 0; c < calls[i]; c++) fn();
      samples[i].push((now() - t0) / calls[i]);
    });
  return samples.map((x) => (stat === 'min' ? Math.min(...x) : median(x)));
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const c = CONFIGS[o.config];
  if (!c) throw new Error(`unknown config ${o.config}`);
  const addons = o.addons.length
    ? o.addons.map((file) => {
        const m = { exports: {} };
        process.dlopen(m, require('node:path').resolve(file));
        return /** @type {any} */ (m.exports);
      })
    : [requireDist('lib/native.js').native()];
  const N = o.tokens, H = c.hidden, hd = H / c.heads, Q = c.heads * hd, KV = c.kvHeads * hd, QKV = Q + 2 * KV, F = c.ffn, r = o.r;
  const rows = [];
  // op(addon) runs the work once on that addon; one line per row, one column per addon.
  const row = (name, per, op, flops) => {
    const ms = time(addons.map((ad) => () => op(ad)), o.repeats, o.sampleMs, o.stat);
    const x = { name, per, ms, gflops: flops ? ms.map((t) => flops / t / 1e6) : null, step_ms: ms.map((t) => t * per) };
    rows.push(x);
    const cols = ms.map((t, i) => `${t.toFixed(2).padStart(9)} ms${flops ? ` ${(/** @type {number[]} */ (x.gflops)[i]).toFixed(1).padStart(6)} GF/s` : ''} step ${x.step_ms[i].toFixed(0).padStart(4)}`);
    const ratio = ms.length === 2 ? `  B/A speed ${(ms[0] / ms[1]).toFixed(3)}` : '';
    process.stderr.write(`${name.padEnd(40)} x${String(per).padEnd(3)}${cols.join(' |')}${ratio}\n`);
  };
  const buf = new Map();
  const get = (n, seed) => {
    const key = `${n}:${seed}`;
    if (!buf.has(key)) buf.set(key, rand(n, seed));
    return /** @type {Float32Array} */ (buf.get(key));
  };
  // One GEMM as the model calls it: [m,k] x [k,n] with the given transposes.
  const gemm = (name, per, m, n, k, { transA = false, transB = false, accumulate = false } = {}) => {
    const a = get(m * k, 1), b = get(n * k, 2), cc = new Float32Array(m * n);
    const args = { m, n, k, a, lda: transA ? m : k, b, ldb: transB ? k : n, transA, transB, c: cc, ldc: n, accumulate };
    row(`${name} ${m}x${n}x${k}${transA ? ' tA' : ''}${transB ? ' tB' : ''}`, per, (ad) => ad.runOp('gemm', args), 2 * m * n * k);
  };
  const L = c.layers;
  if (o.only.includes('gemm')) {
    // forward: y = x W^T; backward: dx = dy W, dW += dy^T x
    for (const [what, out, inn] of [['qkv', QKV, H], ['o', H, Q], ['gate|up', 2 * F, H], ['down', H, F]]) {
      gemm(`fwd ${what}`, L, N, out, inn, { transB: true });
      gemm(`dx ${what}`, L, N, inn, out, { accumulate: what === 'down' ? false : false });
      gemm(`dW ${what}`, L, out, inn, N, { transA: true, accumulate: true });
    }
  }
  if (o.only.includes('lora')) {
    const mods = [['q', Q, H], ['k', KV, H], ['v', KV, H], ['o', H, Q], ['gate', F, H], ['up', F, H], ['down', H, F]];
    for (const [what, out, inn] of mods) {
      gemm(`lora u=xA^T ${what}`, L, N, r, inn, { transB: true });
      gemm(`lora y+=uB^T ${what}`, L, N, out, r, { transB: true, accumulate: true });
      gemm(`lora dB+=dy^T u ${what}`, L, out, r, N, { transA: true, accumulate: true });
      gemm(`lora du=dy B ${what}`, L, N, r, out);
      gemm(`lora dA+=du^T x ${what}`, L, r, inn, N, { transA: true, accumulate: true });
      gemm(`lora dx+=du A ${what}`, L, N, inn, r, { accumulate: true });
    }
  }
  if (o.only.includes('attention')) {
    // causal GQA over B = N / 256 sequences of 256; FLOPs: the score and value products over the causal half
    const T = 256, B = N / T, KVH = c.kvHeads * hd;
    const q = get(N * Q, 21), k = get(N * KVH, 22), vv = get(N * KVH, 23), dout = get(N * Q, 24);
    const out = new Float32Array(N * Q), lse = new Float32Array(B * c.heads * T);
    const dq = new Float32Array(N * Q), dk = new Float32Array(N * KVH), dv = new Float32Array(N * KVH);
    const base = { batch: B, seq: T, heads: c.heads, kvHeads: c.kvHeads, headDim: hd, scale: 1 / Math.sqrt(hd), q, k, v: vv, ldq: Q, ldk: KVH, ldv: KVH, ldo: Q };
    const fl = 2 * B * c.heads * T * T * hd;  // QK^T and PV, causal half each
    row(`attention fwd ${B}x${T} h${c.heads}/${c.kvHeads} d${hd}`, L, (ad) => ad.runOp('attention', { ...base, out, lse }), fl);
    row(`attention bwd`, L, (ad) => ad.runOp('attention_backward', { ...base, out, dout, lse, dq, dk, dv }), 2.5 * fl);
  }
  if (o.only.includes('lm_head')) {
    const V = c.vocab, w = get(V * H, 3), h = get(N * H, 4);
    const targets = new Int32Array(N).map((_, i) => (i * 7919) % V);
    const logp = new Float32Array(N), entropy = new Float32Array(N), lse = new Float32Array(N);
    const fwd = (ad) => ad.runOp('lm_head_logp', { n: N, dim: H, vocab: V, hidden: h, weight: w, targets, logp, entropy, lse });
    row(`lm_head_logp ${N}x${V}x${H}`, 1, fwd, 2 * N * V * H);
    const dlogp = new Float32Array(N).fill(-1 / N), dh = new Float32Array(N * H), dw = new Float32Array(V * H);
    const bwd = (dweight) => (ad) => ad.runOp('lm_head_logp_backward', { n: N, dim: H, vocab: V, hidden: h, weight: w, targets, lse, dlogp, dhidden: dh, ...(dweight ? { dweight: dw } : {}) });
    row(`lm_head_logp_backward (dh only, LoRA)`, 1, bwd(false), 4 * N * V * H);
    row(`lm_head_logp_backward (dh, dW: full)`, 1, bwd(true), 6 * N * V * H);
  }
  if (o.only.includes('adamw')) {
    const n = L * (H * QKV + H * Q + 3 * H * F) + 2 * c.vocab * H;  // full fine-tuning's parameters
    const p = get(n, 5).slice(), g = get(n, 6), m = new Float32Array(n), v = new Float32Array(n);
    let step = 0;
    const op = (ad) => ad.runOp('adamw', { n, param: p, grad: g, m, v, lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: ++step });
    row(`adamw n=${n}`, 1, op, 0);
  }
  if (o.json) for (const x of rows) process.stdout.write(JSON.stringify(x) + '\n');
}

main();
