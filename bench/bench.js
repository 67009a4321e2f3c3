#!/usr/bin/env node
// @ts-check
/**
 * The benchmark table (`rlhf-native bench`, `npm run bench`): tokens/sec and
 * MFU of every stage's per-step work and of each fused kernel alone, side by
 * side with an eager PyTorch peer (bench/torch_bench_peer.py) on the same
 * model folders, shapes and thread count, the two engines' repeats
 * alternating in one run.
 *
 *   npm run build && node bench/bench.js [--config S] [--only NAMES] [--json] [--smoke]
 *
 * bench/README.md has the workloads, the FLOP counting and every flag.
 */
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { CONFIGS, median, now, randomIds, requireDist, gitCommit, prepareFolder, Peer, ourGemmRate } = require('./common');

// ---------------------------------------------------------------------------
// workloads

const STAGES = ['forward', 'decode_b1', 'decode_b8', 'sft_full', 'sft_lora', 'rm_step', 'ppo_rollout', 'ppo_update'];
const KERNELS = ['gemm', 'attention_fwd', 'attention_bwd', 'lm_head_fwd', 'lm_head_bwd', 'ppo_loss', 'adamw'];
const ALL = [...STAGES, ...KERNELS];
const GROUPS = {
  stages: STAGES,
  kernels: KERNELS,
  decode: ['decode_b1', 'decode_b8'],
  sft: ['sft_full', 'sft_lora'],
  rm: ['rm_step'],
  ppo: ['ppo_rollout', 'ppo_update'],
  attention: ['attention_fwd', 'attention_bwd'],
  lm_head: ['lm_head_fwd', 'lm_head_bwd'],
};

/** A tiny Llama for --smoke: seconds, not a measurement. */
const TINY = { hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 176, vocab: 512, maxPositions: 128 };

const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/** Shapes of every workload: the default table, and the smoke mode's. */
function shapesFor(smoke) {
  if (smoke)
    return {
      forward: { batch: 2, seq: 32 }, decode: { prompt: 8, newTokens: 8 }, sft: { batch: 2, seq: 32 }, rm: { pairs: 2, seq: 32 },
      ppo: { batch: 2, prompt: 8, newTokens: 8 }, attention: { batch: 2, seq: 32 }, lmHead: { rows: 64 }, ppoLoss: { n: 4096 },
      adamw: { n: 65536 }, gemmRows: 64, squares: [64], kernelSampleMs: 0, lora: { r: 4, alpha: 8 },
    };
  return {
    forward: { batch: 4, seq: 256 }, decode: { prompt: 32, newTokens: 128 }, sft: { batch: 4, seq: 256 }, rm: { pairs: 4, seq: 128 },
    ppo: { batch: 8, prompt: 32, newTokens: 64 }, attention: { batch: 4, seq: 256 }, lmHead: { rows: 1024 }, ppoLoss: { n: 1 << 20 },
    adamw: { n: 1 << 22 }, gemmRows: 1024, squares: [1024], kernelSampleMs: 100, lora: { r: 16, alpha: 32 },
  };
}

const SFT_OPT = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1 };
const PPO_OPT = { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 };
const PPO = { temperature: 0.7, klCoef: 0.05, gamma: 1, lam: 0.95, cliprange: 0.2, cliprangeValue: 0.2, vfCoef: 0.1 };
const peerOpt = (o) => ({ lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weightDecay, max_grad_norm: o.maxGradNorm });

// ---------------------------------------------------------------------------
// arguments

class BenchError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const USAGE = `usage: rlhf-native bench [options]   (or: node bench/bench.js [options])
  --device cpu|cuda      where our engine runs (default cpu)
  --config LIST          S, M, L, tiny or a JSON file (our spec or a Hugging Face config.json);
                         comma-separated for several (default S; --smoke: tiny)
  --only NAMES           comma-separated workloads or groups (default: all). Workloads:
                           ${STAGES.join(', ')},
                           ${KERNELS.join(', ')}
                         groups: ${Object.keys(GROUPS).join(', ')}
  --json                 one JSON object per line on stdout (the table goes to stderr)
  --smoke                seconds-long check that everything runs: tiny config and shapes, 1 repeat,
                         no warm-up, no peer (not a measurement)
  --repeats N            timed repeats per engine of each stage workload (default 3)
  --kernel-repeats N     timed samples per engine of each kernel (default 5)
  --warmup N             untimed runs per engine before the timed ones (default 1)
  --threads N            threads for both engines (default RLHF_NUM_THREADS or all usable cores)
  --no-peer, --peer      ours only (no PyTorch), or with the peer (the default, except with --smoke)
  --python PATH          python with torch for the peer (default TORCH_PEER_PYTHON or /usr/bin/python3)
  --blas-dir DIR         folder of the OpenMP OpenBLAS for the peer (default TORCH_PEER_BLAS_DIR or the
                         libopenblas0-openmp package's folder)
  --peer-wait-policy P   the peer's OMP_WAIT_POLICY: PASSIVE (default), ACTIVE or default (unset)
  --out DIR              cache of model folders and adapters (default bench/out)
  --list                 print the workload names and exit`;

function parseArgs(argv) {
  const o = {
    device: 'cpu', configs: /** @type {string[] | null} */ (null), only: /** @type {string | null} */ (null), json: false, smoke: false,
    repeats: /** @type {number | null} */ (null), kernelRepeats: /** @type {number | null} */ (null), warmup: /** @type {number | null} */ (null),
    threads: 0, peer: true, python: process.env.TORCH_PEER_PYTHON || '/usr/bin/python3', blasDir: process.env.TORCH_PEER_BLAS_DIR || '',
    waitPolicy: 'PASSIVE', out: path.join(__dirname, 'out'), list: false, peerGiven: false,
  };
  const int = (v, name, min) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new BenchError('E_ARGUMENT', `${name} wants an integer >= ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let inline = null;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      inline = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    const val = () => {
      if (inline !== null) return inline;
      if (i + 1 >= argv.length) throw new BenchError('E_ARGUMENT', `${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--device': {
        const d = val().toLowerCase();
        if (!['cpu', 'cuda', 'auto'].includes(d)) throw new BenchError('E_ARGUMENT', `--device wants cpu or cuda, got ${d}`);
        o.device = d;
        break;
      }
      case '--config': o.configs = val().split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--only': o.only = val(); break;
      case '--json': o.json = true; break;
      case '--smoke': o.smoke = true; break;
      case '--repeats': o.repeats = int(val(), a, 1); break;
      case '--kernel-repeats': o.kernelRepeats = int(val(), a, 1); break;
      case '--warmup': o.warmup = int(val(), a, 0); break;
      case '--threads': o.threads = int(val(), a, 0); break;
      case '--no-peer': o.peer = false; o.peerGiven = true; break;
      case '--peer': o.peer = true; o.peerGiven = true; break;
      case '--python': o.python = val(); break;
      case '--blas-dir': o.blasDir = val(); break;
      case '--peer-wait-policy': {
        const v = val().toUpperCase();
        if (!['PASSIVE', 'ACTIVE', 'DEFAULT'].includes(v)) throw new BenchError('E_ARGUMENT', '--peer-wait-policy wants PASSIVE, ACTIVE or default');
        o.waitPolicy = v === 'DEFAULT' ? '' : v;
        break;
      }
      case '--out': o.out = path.resolve(val()); break;
      case '--list': o.list = true; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new BenchError('E_ARGUMENT', `unknown option ${argv[i]} (rlhf-native bench --help lists them)`);
    }
  }
  if (o.smoke) {
    o.configs ??= ['tiny'];
    o.repeats ??= 1;
    o.kernelRepeats ??= 1;
    o.warmup ??= 0;
    if (!o.peerGiven) o.peer = false;
  }
  o.configs ??= ['S'];
  o.repeats ??= 3;
  o.kernelRepeats ??= 5;
  o.warmup ??= 1;
  return { ...o, names: selectNames(o.only) };
}

function selectNames(spec) {
  if (!spec) return ALL;
  const want = new Set();
  for (const item of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const key = item.toLowerCase().replace(/-/g, '_');
    const hits = GROUPS[key] ?? (ALL.includes(key) ? [key] : null);
    if (!hits) throw new BenchError('E_ARGUMENT', `--only: unknown workload '${item}' (workloads: ${ALL.join(', ')}; groups: ${Object.keys(GROUPS).join(', ')})`);
    for (const h of hits) want.add(h);
  }
  return ALL.filter((n) => want.has(n));
}

/** A named config: S, M, L, tiny, or a JSON file (our keys or a Hugging Face config.json's). */
function resolveConfig(spec) {
  const up = spec.toUpperCase();
  if (up in CONFIGS) return { name: up, c: CONFIGS[up] };
  if (spec.toLowerCase() === 'tiny') return { name: 'tiny', c: TINY };
  if (!fs.existsSync(spec)) throw new BenchError('E_ARGUMENT', `--config ${spec}: not ${Object.keys(CONFIGS).join(', ')} or tiny, and no such file`);
  let j;
  try {
    j = JSON.parse(fs.readFileSync(spec, 'utf8'));
  } catch (e) {
    throw new BenchError('E_ARGUMENT', `--config ${spec}: not JSON (${e instanceof Error ? e.message : e})`);
  }
  const pick = (ours, hf, dflt) => {
    const v = j[ours] ?? j[hf] ?? dflt;
    if (!Number.isInteger(v) || v <= 0) throw new BenchError('E_ARGUMENT', `--config ${spec}: '${ours}' (or '${hf}') must be a positive integer`);
    return v;
  };
  const heads = pick('heads', 'num_attention_heads');
  const c = {
    hidden: pick('hidden', 'hidden_size'), layers: pick('layers', 'num_hidden_layers'), heads, kvHeads: pick('kvHeads', 'num_key_value_heads', heads),
    ffn: pick('ffn', 'intermediate_size'), vocab: pick('vocab', 'vocab_size'), maxPositions: pick('maxPositions', 'max_position_embeddings', 1024),
  };
  if (c.hidden % c.heads || c.heads % c.kvHeads || (c.hidden / c.heads) % 2)
    throw new BenchError('E_ARGUMENT', `--config ${spec}: hidden must split into heads of even size and heads into kv heads`);
  return { name: path.basename(spec).replace(/\.json$/i, ''), c };
}

// ---------------------------------------------------------------------------
// FLOPs (bench/README.md, "FLOP counting")

/**
 * body: every non-embedding parameter except the LM head; head: the LM head
 * (vocab x hidden); lora: rank-r adapters on the seven projections.
 */
function modelCounts(c, r) {
  const hd = c.hidden / c.heads;
  const q = c.heads * hd, kv = c.kvHeads * hd;
  const perLayer = c.hidden * q + 2 * c.hidden * kv + q * c.hidden + 3 * c.hidden * c.ffn + 2 * c.hidden;
  const loraPerLayer = r * (c.hidden + q + 2 * (c.hidden + kv) + q + c.hidden + 2 * (c.hidden + c.ffn) + c.ffn + c.hidden);
  return { body: c.layers * perLayer + c.hidden, head: c.vocab * c.hidden, lora: c.layers * loraPerLayer, layers: c.layers, attnDim: q };
}
/** Forward attention FLOPs of one query attending ctx keys (QK^T and PV, 2 per multiply-add). */
const attnQuery = (m, ctx) => 4 * m.layers * m.attnDim * ctx;
/** ... of a causal sequence of T tokens (token t attends t+1 keys). */
const attnSeq = (m, T) => attnQuery(m, (T * (T + 1)) / 2);
/** Inference over rows x T tokens with `params` matrix parameters in play. */
const inferFlops = (m, rows, T, params) => rows * T * 2 * params + rows * attnSeq(m, T);
/** Training: 2 (forward) + 2 (input gradient) per frozen parameter, + 2 (weight gradient) per trained one; attention 3x its forward. */
const trainFlops = (m, rows, T, frozen, trained) => rows * T * (4 * frozen + 6 * trained) + 3 * rows * attnSeq(m, T);
/** generate: prefill of P tokens (LM head on the last one), then N-1 one-token steps. */
function decodeFlops(m, B, P, N, body, head) {
  let f = B * P * 2 * body + B * 2 * head + B * attnSeq(m, P);
  for (let s = 1; s < N; s++) f += B * (2 * (body + head) + attnQuery(m, P + s));
  return f;
}

// ---------------------------------------------------------------------------
// timing

function summary(ms) {
  if (!ms.length) return null;
  return { median_ms: median(ms), min_ms: Math.min(...ms), max_ms: Math.max(...ms), repeats: ms.length, runs_ms: ms.map((x) => +x.toFixed(3)) };
}
const errText = (e) => (e && e.message ? e.message : String(e));

/**
 * Warm-up, then `repeats` timed runs of each engine, alternating (the order
 * reverses every repeat) so that a noisy neighbour hurts all alike. Each fn
 * returns {ms, ...}; the first result of each is kept (checks). An engine
 * that throws is dropped from the rest of the workload with its error.
 * @param {{key:string, fn: null | (() => Promise<any>)}[]} engines
 */
async function alternate(engines, warmup, repeats) {
  const live = engines.filter((e) => e.fn);
  /** @type {Record<string, {runs:number[], first:any, error:string|null}>} */
  const res = {};
  for (const e of live) res[e.key] = { runs: [], first: null, error: null };
  const call = async (e, timed) => {
    const r = res[e.key];
    if (r.error) return;
    try {
      const out = await e.fn();
      if (!r.first) r.first = out;
      if (timed) r.runs.push(out.ms);
    } catch (err) {
      r.error = errText(err);
    }
  };
  const load = [os.loadavg()[0]];
  for (let i = 0; i < warmup; i++) for (const e of live) await call(e, false);
  for (let k = 0; k < repeats; k++) for (const e of k % 2 ? [...live].reverse() : live) await call(e, true);
  load.push(os.loadavg()[0]);
  const out = { load };
  for (const e of engines) {
    const r = res[e.key];
    out[e.key] = r ? { s: summary(r.runs), first: r.first, error: r.error } : null;
  }
  return out;
}

/** Calls fn `iters` times; ms per call. */
async function perCall(fn, iters) {
  const t = now();
  for (let i = 0; i < iters; i++) await fn();
  return { ms: (now() - t) / iters };
}
const itersFor = (ms, target) => (target <= 0 ? 1 : Math.max(1, Math.min(500, Math.round(target / Math.max(ms, 1e-3)))));

// ---------------------------------------------------------------------------
// deterministic data

function fill(len, seed, scale = 1, offset = 0) {
  const a = new Float32Array(len);
  let s = (seed * 2654435761 + 7) >>> 0;
  for (let i = 0; i < len; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = offset + (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return a;
}
const maxAbsDiff = (a, b) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

// ---------------------------------------------------------------------------
// unfused baselines of the kernels: the same math as a plain sequence of our
// GEMM (runOp 'gemm') and plain JavaScript loops, with full intermediates

const gemm = (addon, a) => addon.runOp('gemm', a);

/** Causal softmax of one head's scores [T, T] in place (row i keeps keys 0..i). */
function causalSoftmax(s, T, scale) {
  for (let i = 0; i < T; i++) {
    const row = i * T;
    let mx = -Infinity;
    for (let j = 0; j <= i; j++) mx = Math.max(mx, s[row + j] * scale);
    let sum = 0;
    for (let j = 0; j <= i; j++) {
      const e = Math.exp(s[row + j] * scale - mx);
      s[row + j] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let j = 0; j <= i; j++) s[row + j] *= inv;
    for (let j = i + 1; j < T; j++) s[row + j] = 0;
  }
}

function unfusedAttentionForward(addon, x, scores) {
  const { B, T, H, KV, hd, q, k, v, out, scale } = x;
  const g = H / KV, ldq = H * hd, ldk = KV * hd;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / g);
      gemm(addon, { m: T, n: T, k: hd, a: q.subarray(b * T * ldq + h * hd), lda: ldq, b: k.subarray(b * T * ldk + kh * hd), ldb: ldk, transB: true, c: scores, ldc: T });
      causalSoftmax(scores, T, scale);
      gemm(addon, { m: T, n: hd, k: T, a: scores, lda: T, b: v.subarray(b * T * ldk + kh * hd), ldb: ldk, c: out.subarray(b * T * ldq + h * hd), ldc: ldq });
    }
}

function unfusedAttentionBackward(addon, x, scratch) {
  const { B, T, H, KV, hd, q, k, v, out, dout, dq, dk, dv, scale } = x;
  const { p, dp } = scratch;
  const g = H / KV, ldq = H * hd, ldk = KV * hd;
  dk.fill(0);
  dv.fill(0);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / g);
      const qh = q.subarray(b * T * ldq + h * hd), kk = k.subarray(b * T * ldk + kh * hd), vv = v.subarray(b * T * ldk + kh * hd);
      const oh = out.subarray(b * T * ldq + h * hd), doh = dout.subarray(b * T * ldq + h * hd);
      gemm(addon, { m: T, n: T, k: hd, a: qh, lda: ldq, b: kk, ldb: ldk, transB: true, c: p, ldc: T });
      causalSoftmax(p, T, scale);
      // dV += P^T dO; dP = dO V^T
      gemm(addon, { m: T, n: hd, k: T, a: p, lda: T, transA: true, b: doh, ldb: ldq, c: dv.subarray(b * T * ldk + kh * hd), ldc: ldk, accumulate: true });
      gemm(addon, { m: T, n: T, k: hd, a: doh, lda: ldq, b: vv, ldb: ldk, transB: true, c: dp, ldc: T });
      // dS = P * (dP - rowsum(dO * O)) * scale
      for (let i = 0; i < T; i++) {
        let d = 0;
        for (let c = 0; c < hd; c++) d += doh[i * ldq + c] * oh[i * ldq + c];
        for (let j = 0; j < T; j++) dp[i * T + j] = p[i * T + j] * (dp[i * T + j] - d) * scale;
      }
      // dQ = dS K; dK += dS^T Q
      gemm(addon, { m: T, n: hd, k: T, a: dp, lda: T, b: kk, ldb: ldk, c: dq.subarray(b * T * ldq + h * hd), ldc: ldq });
      gemm(addon, { m: T, n: hd, k: T, a: dp, lda: T, transA: true, b: qh, ldb: ldq, c: dk.subarray(b * T * ldk + kh * hd), ldc: ldk, accumulate: true });
    }
}

/** Full logits [n, V] with our GEMM, then log-softmax, gather and entropy in JavaScript. */
function unfusedLmHeadForward(addon, x, logits, logp, entropy, lse) {
  const { n, d, V, h, w, targets } = x;
  gemm(addon, { m: n, n: V, k: d, a: h, lda: d, b: w, ldb: d, transB: true, c: logits, ldc: V });
  for (let i = 0; i < n; i++) {
    const row = i * V;
    let mx = -Infinity;
    for (let j = 0; j < V; j++) mx = Math.max(mx, logits[row + j]);
    let sum = 0, sz = 0;
    for (let j = 0; j < V; j++) {
      const e = Math.exp(logits[row + j] - mx);
      sum += e;
      sz += e * logits[row + j];
    }
    const l = mx + Math.log(sum);
    lse[i] = l;
    logp[i] = logits[row + targets[i]] - l;
    entropy[i] = l - sz / sum;
  }
}

/** Logits again (GEMM), dz = dlogp (onehot - softmax) in JavaScript, dh = dz W and dW += dz^T h (GEMMs). */
function unfusedLmHeadBackward(addon, x, logits, lse, dlogp, dh, dw) {
  const { n, d, V, h, w, targets } = x;
  gemm(addon, { m: n, n: V, k: d, a: h, lda: d, b: w, ldb: d, transB: true, c: logits, ldc: V });
  for (let i = 0; i < n; i++) {
    const row = i * V, g = dlogp[i], l = lse[i];
    for (let j = 0; j < V; j++) logits[row + j] = -g * Math.exp(logits[row + j] - l);
    logits[row + targets[i]] += g;
  }
  gemm(addon, { m: n, n: d, k: V, a: logits, lda: V, b: w, ldb: d, c: dh, ldc: d, accumulate: true });
  gemm(addon, { m: V, n: d, k: n, a: logits, lda: V, transA: true, b: h, ldb: d, c: dw, ldc: d, accumulate: true });
}

/** ppo_loss's math (no mask, no KL term, ent_coef 0) as one plain JavaScript loop; float64 sums. */
function unfusedPpoLoss(x, dlogp, dvalues) {
  const { n, logp, oldLogp, adv, values, oldValues, returns, entropy, cr, crv, vfCoef } = x;
  let pg = 0, vf = 0, ent = 0, akl = 0, clip = 0, vclip = 0, rsum = 0;
  const inv = 1 / n;
  for (let i = 0; i < n; i++) {
    const lr = logp[i] - oldLogp[i], r = Math.exp(lr), a = adv[i];
    const rc = Math.min(Math.max(r, 1 - cr), 1 + cr);
    const p1 = -a * r, p2 = -a * rc;
    if (p2 > p1) {
      pg += p2;
      clip++;
      dlogp[i] = 0;
    } else {
      pg += p1;
      dlogp[i] = p1 * inv;
    }
    const v = values[i], ov = oldValues[i], R = returns[i];
    const dvc = Math.min(Math.max(v - ov, -crv), crv), vc = ov + dvc;
    const l1 = (v - R) * (v - R), l2 = (vc - R) * (vc - R);
    if (l2 > l1) {
      vf += l2;
      vclip++;
      dvalues[i] = dvc === v - ov ? vfCoef * (vc - R) * inv : 0;
    } else {
      vf += l1;
      dvalues[i] = vfCoef * (v - R) * inv;
    }
    ent += entropy[i];
    akl += 0.5 * lr * lr;
    rsum += r;
  }
  const pgm = pg * inv, vfm = 0.5 * vf * inv;
  return { loss: pgm + vfCoef * vfm, stats: [pgm, vfm, 0, ent * inv, akl * inv, clip * inv, vclip * inv, rsum * inv, n] };
}

/** torch.optim.AdamW's step on flat arrays, one plain JavaScript loop. */
function unfusedAdamw(x, step) {
  const { n, p, g, m, v, lr, b1, b2, eps, wd } = x;
  const c1 = 1 - b1 ** step, c2 = Math.sqrt(1 - b2 ** step), decay = 1 - lr * wd, lrc = lr / c1;
  for (let i = 0; i < n; i++) {
    const gi = g[i];
    const mi = (m[i] = b1 * m[i] + (1 - b1) * gi);
    const vi = (v[i] = b2 * v[i] + (1 - b2) * gi * gi);
    p[i] = p[i] * decay - (lrc * mi) / (Math.sqrt(vi) / c2 + eps);
  }
}

// ---------------------------------------------------------------------------
// formatting

const f1 = (x) => (x == null ? '-' : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const pct = (x) => (x == null ? '-' : (100 * x).toFixed(1) + '%');
const e1 = (x) => (x == null ? '-' : x === 0 ? '0' : x.toExponential(1));
const msCell = (s) => (s == null ? '-' : `${f1(s.median_ms)} [${f1(s.min_ms)}-${f1(s.max_ms)}]`);

/** A row's headline rate: tokens/s for stages, GFLOP/s for the compute kernels, M elements/s for the memory-bound ones. */
function rateCell(r, side) {
  const x = side === 'ours' ? r : r[side];
  if (!x) return '-';
  if (r.unit === 'GFLOP/s') return x.gflops == null ? '-' : `${f1(x.gflops)} GFLOP/s`;
  if (r.unit === 'Mtok/s') return x.tokens_per_sec == null ? '-' : `${f1(x.tokens_per_sec / 1e6)} Mtok/s`;
  if (r.unit === 'Mparam/s') return x.elements_per_sec == null ? '-' : `${f1(x.elements_per_sec / 1e6)} Mparam/s`;
  return x.tokens_per_sec == null ? '-' : `${f1(x.tokens_per_sec)} tok/s`;
}

// ---------------------------------------------------------------------------
// main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.list) {
    for (const n of ALL) console.log(n);
    return;
  }
  const threads = opts.threads || Number(process.env.RLHF_NUM_THREADS) || os.availableParallelism();
  process.env.RLHF_NUM_THREADS = String(threads); // read when the addon creates its engine
  process.env.PYTHONDONTWRITEBYTECODE = '1'; // the peer imports torch_peer.py: no __pycache__ in bench/
  const configs = opts.configs.map(resolveConfig);
  const lib = requireDist('lib/index.js');
  const { native } = requireDist('lib/native.js');
  const addon = native();
  const info = addon.info();
  const t0 = now();

  const emit = (obj) => {
    if (opts.json) process.stdout.write(JSON.stringify(obj) + '\n');
  };
  const out = opts.json ? (s) => process.stderr.write(s + '\n') : (s) => process.stdout.write(s + '\n');
  const log = (s) => process.stderr.write(`[bench] ${s}\n`);

  // --device cuda: a clear error without a GPU; with one, every workload says the CUDA backend cannot run it yet.
  let device = 'cpu';
  if (opts.device !== 'cpu') {
    const ri = lib.runtimeInfo();
    if (ri.cuda.devices.length > 0) device = 'cuda';
    else if (opts.device === 'cuda')
      throw new BenchError('E_CUDA', `--device cuda: no CUDA device is usable here: ${(ri.cuda.reason ?? 'none found').replace(/; running on the CPU$/, '')} (use --device cpu)`);
  }
  const cpuModel = os.cpus()[0]?.model?.trim() || 'unknown CPU';
  const deviceText =
    device === 'cuda'
      ? `cuda: ${info.cuda.devices.map((d) => d.name).join(', ')}`
      : `cpu: ${cpuModel}, ${os.availableParallelism()} usable cores, ${threads} threads, ${info.cpu.simd}`;
  const meta = {
    name: 'meta', date: new Date().toISOString(), commit: gitCommit(), node: process.version, device, device_text: deviceText, threads,
    smoke: opts.smoke, workloads: opts.names, configs: configs.map((x) => x.name),
    host: { cpus: os.cpus().length, mem_gib: +(os.totalmem() / 2 ** 30).toFixed(1), loadavg: os.loadavg().map((x) => +x.toFixed(2)) },
    torch: null, torch_blas: null, torch_threads: null, torch_omp_wait_policy: null,
  };
  const sh = shapesFor(opts.smoke);
  /** @type {any[]} */
  const rows = [];
  const notes = [];

  if (device === 'cuda') {
    emit(meta);
    for (const { name: cfgName } of configs)
      for (const n of opts.names) {
        const row = { name: n, kind: STAGES.includes(n) ? 'stage' : 'kernel', device, config: cfgName, error: 'this table compares with a CPU PyTorch peer; on a GPU run scripts/gpu-check.sh (whole model and kernels beside PyTorch on the same card)', tokens_per_sec: null, gflops: null, mfu: null, median_ms: null, min_ms: null, max_ms: null, peer: null, ratio: null };
        rows.push(row);
        emit(row);
      }
    emit({ name: 'done', seconds: (now() - t0) / 1e3 });
    out(`device ${deviceText}`);
    for (const r of rows) out(`${r.config} ${r.name}: ${r.error}`);
    return;
  }

  // -- the peer
  let peer = null, peerInfo = null, peerWhy = null;
  if (opts.peer) {
    const probe = spawnSync(opts.python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 120_000 });
    if (probe.error || probe.status !== 0) {
      const why = probe.error ? probe.error.message : (probe.stderr || '').trim().split('\n').pop();
      peerWhy = `PyTorch is not available to ${opts.python} (${why}): measuring ours alone`;
    } else {
      peer = new Peer(opts, threads, 'torch_bench_peer.py');
      try {
        peerInfo = await peer.request({ cmd: 'hello' });
      } catch (e) {
        peerWhy = `the PyTorch peer did not start (${errText(e)}): measuring ours alone`;
        peer.close();
        peer = null;
      }
    }
  } else {
    peerWhy = opts.smoke && !opts.peerGiven ? 'smoke mode: no peer' : '--no-peer: ours alone';
  }
  if (peerWhy) log(peerWhy);
  if (peerInfo) {
    meta.torch = peerInfo.torch;
    meta.torch_blas = peerInfo.blas;
    meta.torch_threads = peerInfo.threads;
    meta.torch_omp_wait_policy = peerInfo.omp_wait_policy || 'default';
    log(`torch ${peerInfo.torch}, ${peerInfo.threads} threads, BLAS: ${peerInfo.blas.join(', ') || 'none mapped'}`);
  }
  emit(meta);

  // -- the peer check: its 2048^3 fp32 matmul against ours, before any ratio is trusted
  let trust = null;
  if (peer) {
    const s = 2048;
    const ours = ourGemmRate(addon, s, s, s, 0.5, 3);
    const theirs = (await peer.request({ cmd: 'matmul', shapes: [[s, s, s]], min_seconds: 0.5, samples: 3 })).shapes[0];
    const openmp = peerInfo.blas.some((p) => /openblas-openmp|libopenblasp-/.test(p));
    const fraction = theirs.gflops / ours.gflops;
    const reasons = [];
    if (!openmp) reasons.push(`the peer did not map the OpenMP OpenBLAS (${peerInfo.blas.join(', ') || 'no BLAS library'}; install libopenblas0-openmp or pass --blas-dir)`);
    if (fraction < 0.4) reasons.push(`its 2048^3 matmul runs at ${(100 * fraction).toFixed(0)}% of ours (< 40%: not the BLAS it should be, or starved of cores)`);
    if (peerInfo.threads !== threads) reasons.push(`it runs ${peerInfo.threads} threads, ours ${threads}`);
    trust = { ok: reasons.length === 0, reasons, torch_gflops: theirs.gflops, ours_gflops: ours.gflops, openmp_openblas: openmp, blas: peerInfo.blas };
    const line = `peer check: torch.mm 2048^3 fp32 ${theirs.gflops.toFixed(1)} GFLOP/s, ours ${ours.gflops.toFixed(1)} GFLOP/s, ${peerInfo.threads} threads, ` +
      `${openmp ? 'OpenMP OpenBLAS' : 'not the OpenMP OpenBLAS'}: ${trust.ok ? 'ratios trusted' : 'ratios NOT trusted: ' + reasons.join('; ')}`;
    log(line);
    trust.line = line;
    emit({ name: 'peer_check', device, m: s, n: s, k: s, torch: theirs, ours, ...trust, line: undefined });
  }

  const peaks = [];
  try {
    for (const { name: cfgName, c } of configs) {
      const W = opts.names;
      const lora = sh.lora;
      const counts = modelCounts(c, lora.r);
      const hd = c.hidden / c.heads;
      const maxT = Math.max(sh.forward.seq, sh.decode.prompt + sh.decode.newTokens, sh.sft.seq, sh.rm.seq, sh.ppo.prompt + sh.ppo.newTokens);
      if (maxT > c.maxPositions) throw new BenchError('E_ARGUMENT', `config ${cfgName}: the workloads need ${maxT} positions, the config has ${c.maxPositions}`);
      const needModel = W.some((n) => STAGES.includes(n));
      const dir = needModel ? prepareFolder(lib, cfgName, c, opts.out) : null;
      log(`${cfgName}: hidden ${c.hidden}, ${c.layers} layers, ${c.heads} heads, ${c.kvHeads} kv heads, ffn ${c.ffn}, vocab ${c.vocab}; ` +
        `body ${(counts.body / 1e6).toFixed(2)}M, LM head ${(counts.head / 1e6).toFixed(2)}M, LoRA r${lora.r} ${(counts.lora / 1e6).toFixed(3)}M parameters`);

      // -- matmul: our GEMM (runOp 'gemm', C = A B^T as a linear layer calls it) and torch.mm, shape by shape
      const M = sh.gemmRows;
      const shapes = [];
      for (const s of sh.squares) shapes.push([s, s, s, 'square']);
      shapes.push([M, c.hidden, c.hidden, 'q/o proj'], [M, c.ffn, c.hidden, 'gate/up proj'], [M, c.hidden, c.ffn, 'down proj'], [M, c.vocab, c.hidden, 'lm head']);
      const gemmRows = [];
      for (const [i, [m, n, k, what]] of shapes.entries()) {
        const minS = opts.smoke ? 0.01 : 0.25;
        const get = {
          ours: async () => ourGemmRate(addon, m, n, k, minS, opts.smoke ? 1 : 5),
          peer: peer ? async () => (await peer.request({ cmd: 'matmul', shapes: [[m, n, k]], min_seconds: minS, samples: 5 })).shapes[0] : null,
        };
        const r = {};
        for (const key of i % 2 ? ['peer', 'ours'] : ['ours', 'peer']) if (get[key]) r[key] = await get[key]();
        gemmRows.push({ m, n, k, what, ours: r.ours, peer: r.peer ?? null });
      }
      const peakOf = (key) => Math.max(0, ...gemmRows.map((g) => (g[key] ? g[key].gflops : 0)));
      const peak = { config: cfgName, ours: peakOf('ours'), torch: peakOf('peer') };
      log(`fp32 GEMM peak (best shape): ours ${peak.ours.toFixed(1)}, torch ${peer ? peak.torch.toFixed(1) : '-'} GFLOP/s`);

      /** Rows of this config; MFU is filled in once the second peak pass is in. */
      const pending = [];
      const row = (base) => pending.push(base);

      for (const g of gemmRows) {
        if (!W.includes('gemm')) break;
        const flops = 2 * g.m * g.n * g.k;
        const asMs = (x) => ({ median_ms: flops / x.gflops / 1e6, min_ms: flops / x.max_gflops / 1e6, max_ms: flops / x.min_gflops / 1e6, repeats: x.samples, iters: x.iters });
        row({
          name: 'gemm', kind: 'kernel', workload: `gemm ${g.m}x${g.n}x${g.k} (${g.what})`, shape: { m: g.m, n: g.n, k: g.k, what: g.what }, unit: 'GFLOP/s', flops, tokens: null,
          ours: { s: asMs(g.ours), gflops: g.ours.gflops }, peer: g.peer ? { s: asMs(g.peer), gflops: g.peer.gflops } : null,
          unfused: null, check: null, load: [os.loadavg()[0], os.loadavg()[0]],
          note: 'ours runOp(gemm) C = A B^T; torch.mm(x, w.t())',
        });
      }

      // -- the stage workloads
      const peerSetup = async (req) => {
        if (!peer) return null;
        try {
          await peer.request({ cmd: 'setup', dir, ...req });
          return (want) => peer.request({ cmd: 'run', iters: 1, want });
        } catch (e) {
          return { error: errText(e) };
        }
      };
      /**
       * Runs one workload: ours (and the unfused baseline, and the peer) alternating.
       * @param {any} w {name, workload, unit, tokens, flops, ours, peer, unfused, check, warmup, repeats, note, extra}
       */
      const runWorkload = async (w) => {
        log(`${cfgName} ${w.workload} ...`);
        const peerFn = w.peer && typeof w.peer === 'function' ? w.peer : null;
        const res = await alternate(
          [{ key: 'ours', fn: w.ours }, { key: 'unfused', fn: w.unfused ?? null }, { key: 'peer', fn: peerFn }],
          w.warmup ?? opts.warmup, w.repeats ?? opts.repeats,
        );
        const peerErr = w.peer && !peerFn ? w.peer.error : res.peer?.error;
        let check = null;
        try {
          check = w.check ? w.check(res) : null;
        } catch (e) {
          check = { error: errText(e) };
        }
        row({
          name: w.name, kind: STAGES.includes(w.name) ? 'stage' : 'kernel', workload: w.workload, shape: w.shape, unit: w.unit, flops: w.flops, tokens: w.tokens, elements: w.elements ?? null, bytes: w.bytes ?? null,
          ours: res.ours.s ? { s: res.ours.s } : { error: res.ours.error }, peer: res.peer?.s ? { s: res.peer.s } : peerErr ? { error: peerErr } : null,
          unfused: res.unfused?.s ? { s: res.unfused.s, what: w.unfusedWhat } : null, check, load: res.load, note: w.note, extra: w.extra,
        });
        const o = res.ours.s, p = res.peer?.s;
        log(`${cfgName} ${w.name}: ours ${o ? f1(o.median_ms) + ' ms' : 'failed: ' + res.ours.error}` + (p ? `, torch ${f1(p.median_ms)} ms` : peerErr ? `, torch failed: ${peerErr}` : '') +
          (res.unfused?.s ? `, unfused ${f1(res.unfused.s.median_ms)} ms` : ''));
      };
      const safe = async (label, fn) => {
        try {
          await fn();
        } catch (e) {
          log(`${cfgName} ${label}: ${errText(e)}`);
          row({ name: label, kind: STAGES.includes(label) ? 'stage' : 'kernel', workload: label, unit: null, flops: null, tokens: null, ours: { error: errText(e) }, peer: null, unfused: null, check: null, load: [os.loadavg()[0], os.loadavg()[0]] });
        }
      };

      const { loadModel } = requireDist('lib/engine/model.js');
      const adaptersDir = path.join(opts.out, 'adapters');
      const cfgKey = `${cfgName}-h${c.hidden}-l${c.layers}-kv${c.kvHeads}-f${c.ffn}-v${c.vocab}-r${lora.r}`;

      // forward and decode: one fp32 model
      if (W.includes('forward') || W.includes('decode_b1') || W.includes('decode_b8')) {
        const model = await loadModel(dir, { device: 'cpu' });
        try {
          if (W.includes('forward'))
            await safe('forward', async () => {
              const { batch: B, seq: T } = sh.forward;
              const ids = randomIds(B, T, c.vocab, 1);
              const typed = ids.map((r) => Int32Array.from(r));
              let oursMean = null;
              const run = await peerSetup({ workload: 'forward', ids });
              await runWorkload({
                name: 'forward', workload: `forward b${B}x${T}`, shape: { batch: B, seq: T }, unit: 'tok/s', tokens: B * T, flops: inferFlops(counts, B, T, counts.body + counts.head),
                note: 'log p(next token) and entropy at every position',
                ours: async () => {
                  const t = now();
                  const f = await model.forward({ inputIds: typed });
                  const ms = now() - t;
                  if (oursMean == null) {
                    let s = 0, n = 0;
                    for (const r of f.logp) for (const x of r) (s += x), n++;
                    oursMean = s / n;
                  }
                  return { ms };
                },
                peer: typeof run === 'function' ? async () => run({ mean_logp: true }) : run,
                check: (res) => {
                  const p = res.peer?.first;
                  if (!p || oursMean == null) return null;
                  const d = Math.abs(oursMean - p.mean_logp);
                  return { what: 'mean log-prob, ours vs torch', ours: oursMean, torch: p.mean_logp, abs_diff: d, ok: d < 1e-4, text: `dlogp ${e1(d)}` };
                },
              });
            });
          for (const B of [1, 8]) {
            const name = `decode_b${B}`;
            if (!W.includes(name)) continue;
            await safe(name, async () => {
              const { prompt: P, newTokens: N } = sh.decode;
              const prompts = randomIds(B, P, c.vocab, 100 + B);
              let oursTokens = null;
              const run = await peerSetup({ workload: 'decode', prompts, new_tokens: N });
              await runWorkload({
                name, workload: `decode b${B} ${P}+${N}`, shape: { batch: B, prompt: P, new_tokens: N }, unit: 'tok/s', tokens: B * N, flops: decodeFlops(counts, B, P, N, counts.body, counts.head),
                note: 'greedy generate with the KV cache, no EOS',
                ours: async () => {
                  const t = now();
                  const g = await model.generate({ prompts, maxNewTokens: N, temperature: 0, eosIds: [] });
                  const ms = now() - t;
                  if (g.tokens.some((x) => x.length !== N)) throw new Error(`generate stopped after ${g.tokens[0].length} of ${N} tokens`);
                  oursTokens ??= g.tokens.map((x) => Array.from(x));
                  return { ms };
                },
                peer: typeof run === 'function' ? async () => run({ tokens: true }) : run,
                check: (res) => {
                  const p = res.peer?.first;
                  if (!p || !oursTokens) return null;
                  let same = 0, total = 0;
                  oursTokens.forEach((r, b) => r.forEach((t, j) => ((same += t === p.tokens[b][j] ? 1 : 0), total++)));
                  return { what: 'greedy tokens equal, ours vs torch', fraction: same / total, ok: same === total, text: `${(100 * same / total).toFixed(0)}% same tokens` };
                },
              });
            });
          }
        } finally {
          model.dispose();
        }
      }

      // SFT steps: full fine-tuning and LoRA (as bench/train.js: batch x seq, causal-LM loss over every token, AdamW, clip 1)
      for (const mode of ['full', 'lora']) {
        const name = `sft_${mode}`;
        if (!W.includes(name)) continue;
        await safe(name, async () => {
          const { batch: B, seq: T } = sh.sft;
          const model = await loadModel(dir, { device: 'cpu' });
          try {
            const tr = model.trainer();
            let adapter = null;
            if (mode === 'lora') {
              tr.createLora({ name: 'sft', r: lora.r, alpha: lora.alpha, targets: LORA_TARGETS, seed: 0 });
              const adir = path.join(adaptersDir, `bench-sft-${cfgKey}`);
              await tr.saveLora(adir);
              adapter = path.join(adir, 'adapter_model.safetensors');
            } else tr.enableFullTraining();
            const ids = randomIds(B, T, c.vocab, 7);
            const typed = ids.map((r) => Int32Array.from(r));
            const n = B * (T - 1);
            const step = async () => {
              const t = now();
              // As the SFT stage runs it: the loss gradient (-1/n per token) given to the forward.
              const lmGrad = new Float32Array(n);
              addon.runOp('sft_loss', { n, logp: new Float32Array(n), loss: new Float32Array(1), dlogp: lmGrad });
              const f = await tr.forward({ inputIds: typed, lmGrad });
              const loss = new Float32Array(1);
              addon.runOp('sft_loss', { n, logp: f.flat.logp, loss });
              await tr.backward({});
              await tr.step({ optimizer: 'adamw', ...SFT_OPT });
              await tr.zeroGrad();
              return { ms: now() - t, loss: loss[0] };
            };
            const run = await peerSetup({ workload: name, ids, r: lora.r, alpha: lora.alpha, adapter, optimizer: peerOpt(SFT_OPT) });
            await runWorkload({
              name, workload: `SFT step ${mode === 'full' ? 'full' : `LoRA r${lora.r}`} b${B}x${T}`, shape: { batch: B, seq: T, ...(mode === 'lora' ? lora : {}) }, unit: 'tok/s', tokens: B * T,
              flops: mode === 'full' ? trainFlops(counts, B, T, 0, counts.body + counts.head) : trainFlops(counts, B, T, counts.body + counts.head, counts.lora),
              note: 'forward with the loss gradient (the LM-head backward in the same pass), sft_loss (mean NLL over every target token), backward, clip 1.0 + AdamW, zero grad',
              ours: step,
              peer: typeof run === 'function' ? async () => run({}) : run,
              check: (res) => lossCheck(res.ours?.first, res.peer?.first),
            });
          } finally {
            model.dispose();
          }
        });
      }

      // reward-model step: LoRA + score head, pairwise loss over the score at each row's last token
      if (W.includes('rm_step'))
        await safe('rm_step', async () => {
          const { pairs, seq: T } = sh.rm;
          const model = await loadModel(dir, { device: 'cpu' });
          try {
            const tr = model.trainer();
            tr.createLora({ name: 'reward', r: lora.r, alpha: lora.alpha, targets: LORA_TARGETS, seed: 0, head: { std: 0.02 } });
            const adir = path.join(adaptersDir, `bench-rm-${cfgKey}`);
            await tr.saveLora(adir);
            const chosen = randomIds(pairs, T, c.vocab, 11), rejected = randomIds(pairs, T, c.vocab, 12);
            const rowsIds = [...chosen, ...rejected].map((r) => Int32Array.from(r));
            const step = async () => {
              const t = now();
              const f = await tr.forward({ inputIds: rowsIds, values: true, logp: false });
              const v = f.flat.values;
              const rc = new Float32Array(pairs), rr = new Float32Array(pairs);
              for (let i = 0; i < pairs; i++) (rc[i] = v[i * T + T - 1]), (rr[i] = v[(pairs + i) * T + T - 1]);
              const loss = new Float32Array(1), dc = new Float32Array(pairs), dr = new Float32Array(pairs);
              addon.runOp('pairwise_loss', { b: pairs, chosen: rc, rejected: rr, gradScale: 1, loss, dchosen: dc, drejected: dr });
              const dvalues = new Float32Array(2 * pairs * T);
              for (let i = 0; i < pairs; i++) (dvalues[i * T + T - 1] = dc[i]), (dvalues[(pairs + i) * T + T - 1] = dr[i]);
              await tr.backward({ dvalues });
              await tr.step({ optimizer: 'adamw', ...SFT_OPT });
              await tr.zeroGrad();
              return { ms: now() - t, loss: loss[0] };
            };
            const run = await peerSetup({ workload: 'rm_step', chosen, rejected, r: lora.r, alpha: lora.alpha, adapter: path.join(adir, 'adapter_model.safetensors'), optimizer: peerOpt(SFT_OPT) });
            await runWorkload({
              name: 'rm_step', workload: `RM step LoRA r${lora.r} + head, ${pairs} pairs x ${T}`, shape: { pairs, seq: T, ...lora }, unit: 'tok/s', tokens: 2 * pairs * T,
              flops: trainFlops(counts, 2 * pairs, T, counts.body, counts.lora),
              note: 'forward (score head, no LM head), pairwise_loss at the last tokens, backward, clip 1.0 + AdamW, zero grad',
              ours: step,
              peer: typeof run === 'function' ? async () => run({}) : run,
              check: (res) => lossCheck(res.ours?.first, res.peer?.first),
            });
          } finally {
            model.dispose();
          }
        });

      // PPO: policy, critic (value head) and reward model (score head) adapters on one base; the reference is the base
      if (W.includes('ppo_rollout') || W.includes('ppo_update'))
        await safe('ppo_rollout', async () => {
          const { batch: B, prompt: P, newTokens: N } = sh.ppo;
          const model = await loadModel(dir, { device: 'cpu' });
          try {
            const tr = model.trainer();
            tr.createLora({ name: 'critic', r: lora.r, alpha: lora.alpha, targets: LORA_TARGETS, seed: 1, head: { std: 0.02 } });
            tr.createLora({ name: 'reward', r: lora.r, alpha: lora.alpha, targets: LORA_TARGETS, seed: 2, head: { std: 0.02 } });
            tr.createLora({ name: 'policy', r: lora.r, alpha: lora.alpha, targets: LORA_TARGETS, seed: 3 });
            const prompts = randomIds(B, P, c.vocab, 21);
            let rollouts = null, seed = 0;
            const lo = P - 1;
            const rollout = async () => {
              const t = now();
              tr.useAdapter('policy');
              const g = await model.generate({ prompts, maxNewTokens: N, temperature: PPO.temperature, seed: seed++, eosIds: [] });
              if (g.tokens.some((x) => x.length !== N)) throw new Error(`generate stopped after ${g.tokens[0].length} of ${N} tokens`);
              const seqs = prompts.map((p, b) => [...p, ...g.tokens[b]]);
              const logpOf = async () => (await model.forward({ inputIds: seqs, logp: true, temperature: PPO.temperature })).logp.map((r) => r.slice(lo, lo + N));
              const oldLogp = await logpOf();
              tr.useAdapter(null);
              const refLogp = await logpOf();
              tr.useAdapter('critic');
              const oldValues = (await model.forward({ inputIds: seqs, logp: false, values: true })).values.map((r) => r.slice(lo, lo + N));
              tr.useAdapter('reward');
              const scores = (await model.forward({ inputIds: seqs, logp: false, values: true })).values.map((r) => r[r.length - 1]);
              tr.useAdapter('policy');
              const kl = oldLogp.map((lp, b) => lib.klPerToken(lp, refLogp[b], 'k1'));
              const rewards = lib.shapeRewards(kl, scores, PPO.klCoef);
              const ga = lib.gae(rewards, oldValues.map((v) => Float64Array.from(v)), PPO.gamma, PPO.lam);
              const adv = lib.maskedWhiten(ga.advantages, true);
              rollouts = prompts.map((p, b) => ({
                prompt: { line: b + 1, text: '', ids: p }, response: Array.from(g.tokens[b]), eos: false, score: scores[b], parts: {},
                oldLogp: oldLogp[b], refLogp: refLogp[b], oldValues: oldValues[b], advantages: Float32Array.from(adv[b]), returns: Float32Array.from(ga.returns[b]),
                klSum: kl[b].reduce((s, x) => s + x, 0),
              }));
              return { ms: now() - t };
            };
            const upd = { cliprange: PPO.cliprange, cliprangeValue: PPO.cliprangeValue, vfCoef: PPO.vfCoef, entCoef: 0, temperature: PPO.temperature, microBatchSize: B };
            const update = async () => {
              const t = now();
              await lib.criticGradients(tr, rollouts, upd);
              await tr.step({ optimizer: 'adamw', ...PPO_OPT });
              const p = await lib.policyGradients(tr, rollouts, upd);
              await tr.step({ optimizer: 'adamw', ...PPO_OPT });
              return { ms: now() - t, pg_loss: p.pgLoss };
            };
            const T = P + N;
            const ppoReq = {
              prompts, r: lora.r, alpha: lora.alpha, optimizer: peerOpt(PPO_OPT),
              ppo: { new_tokens: N, temperature: PPO.temperature, kl_coef: PPO.klCoef, gamma: PPO.gamma, lam: PPO.lam, cliprange: PPO.cliprange, cliprange_value: PPO.cliprangeValue, vf_coef: PPO.vfCoef },
            };
            const shape = { batch: B, prompt: P, new_tokens: N, ...lora };
            if (W.includes('ppo_rollout')) {
              const run = await peerSetup({ workload: 'ppo_rollout', ...ppoReq });
              const body = counts.body, head = counts.head, lr = counts.lora;
              await runWorkload({
                name: 'ppo_rollout', workload: `PPO rollout b${B} ${P}+${N}`, shape, unit: 'tok/s', tokens: B * N,
                flops: decodeFlops(counts, B, P, N, body + lr, head) + inferFlops(counts, B, T, body + lr + head) + inferFlops(counts, B, T, body + head) + 2 * inferFlops(counts, B, T, body + lr),
                note: 'sampling (T 0.7) with the policy adapter; log-probs of policy and reference, critic values, reward-model score; KL-shaped rewards, GAE, whitening',
                ours: rollout,
                peer: typeof run === 'function' ? async () => run({}) : run,
              });
            } else await rollout();
            if (W.includes('ppo_update')) {
              const run = await peerSetup({ workload: 'ppo_update', ...ppoReq });
              await runWorkload({
                name: 'ppo_update', workload: `PPO update minibatch b${B} ${P}+${N}`, shape, unit: 'tok/s', tokens: B * T,
                flops: trainFlops(counts, B, T, counts.body, counts.lora) + trainFlops(counts, B, T, counts.body + counts.head, counts.lora),
                note: 'critic: forward (values), clipped value loss, backward, clip + AdamW; policy: forward (log-probs), clipped surrogate, backward, clip + AdamW',
                ours: update,
                peer: typeof run === 'function' ? async () => run({}) : run,
              });
            }
          } finally {
            model.dispose();
          }
        });

      // -- the kernels alone
      const target = sh.kernelSampleMs;
      /**
       * A kernel workload: one untimed call of each engine sets how many calls make a sample of
       * ~target ms (and is its first warm-up), then the usual alternation, ms per call.
       */
      const kernel = async (w) => {
        const engines = [['ours', w.ours], ['unfused', w.unfused], ['peer', null]];
        const fns = {};
        for (const [key, fn] of engines) {
          if (!fn) continue;
          const t = now();
          await fn();
          const iters = itersFor(now() - t, target);
          fns[key] = () => perCall(fn, iters);
          fns[key + 'Iters'] = iters;
        }
        let peerRun = null;
        if (peer) {
          try {
            await peer.request({ cmd: 'setup', ...w.peerReq });
            const first = await peer.request({ cmd: 'run', iters: 1 });
            const iters = itersFor(first.ms, target);
            peerRun = () => peer.request({ cmd: 'run', iters });
            fns.peerIters = iters;
          } catch (e) {
            peerRun = { error: errText(e) };
          }
        }
        // The calibration call above was each engine's first warm-up run.
        await runWorkload({ ...w, ours: fns.ours, unfused: fns.unfused ?? null, peer: peerRun, warmup: Math.max(0, opts.warmup - 1), repeats: opts.kernelRepeats, extra: { iters: { ours: fns.oursIters, unfused: fns.unfusedIters ?? null, torch: fns.peerIters ?? null } } });
      };

      if (W.includes('attention_fwd') || W.includes('attention_bwd')) {
        const { batch: B, seq: T } = sh.attention;
        const H = c.heads, KV = c.kvHeads;
        const x = {
          B, T, H, KV, hd, scale: 1 / Math.sqrt(hd),
          q: fill(B * T * H * hd, 31), k: fill(B * T * KV * hd, 32), v: fill(B * T * KV * hd, 33), out: new Float32Array(B * T * H * hd),
          dout: fill(B * T * H * hd, 34), dq: new Float32Array(B * T * H * hd), dk: new Float32Array(B * T * KV * hd), dv: new Float32Array(B * T * KV * hd),
        };
        const lse = new Float32Array(B * H * T);
        const base = { batch: B, seq: T, heads: H, kvHeads: KV, headDim: hd, scale: x.scale, q: x.q, k: x.k, v: x.v, ldq: H * hd, ldk: KV * hd, ldv: KV * hd, ldo: H * hd };
        const fwd = () => addon.runOp('attention', { ...base, out: x.out, lse });
        const fl = B * H * 4 * hd * ((T * (T + 1)) / 2);
        const peerReq = { workload: 'attention_fwd', batch: B, seq: T, heads: H, kv_heads: KV, head_dim: hd };
        const shape = { batch: B, seq: T, heads: H, kv_heads: KV, head_dim: hd };
        if (W.includes('attention_fwd'))
          await safe('attention_fwd', async () => {
            const scores = new Float32Array(T * T), uout = new Float32Array(x.out.length);
            await kernel({
              name: 'attention_fwd', workload: `attention fwd b${B}x${T} h${H}/${KV}x${hd}`, shape, unit: 'GFLOP/s', tokens: B * T, flops: fl, peerReq,
              note: 'causal GQA attention, log-sum-exp kept for the backward',
              ours: async () => fwd(),
              unfused: async () => unfusedAttentionForward(addon, { ...x, out: uout }, scores),
              unfusedWhat: 'per head: GEMM QK^T, causal softmax in JS, GEMM PV (full T x T scores)',
              check: () => {
                fwd();
                unfusedAttentionForward(addon, { ...x, out: uout }, scores);
                const d = maxAbsDiff(x.out, uout);
                return { what: 'max |out fused - unfused|', max_abs_diff: d, ok: d < 1e-4, text: `max dout ${e1(d)}` };
              },
            });
          });
        if (W.includes('attention_bwd'))
          await safe('attention_bwd', async () => {
            fwd();
            const bwd = () => addon.runOp('attention_backward', { ...base, out: x.out, dout: x.dout, lse, dq: x.dq, dk: x.dk, dv: x.dv });
            const u = { ...x, dq: new Float32Array(x.dq.length), dk: new Float32Array(x.dk.length), dv: new Float32Array(x.dv.length) };
            const scratch = { p: new Float32Array(T * T), dp: new Float32Array(T * T) };
            await kernel({
              name: 'attention_bwd', workload: `attention bwd b${B}x${T} h${H}/${KV}x${hd}`, shape, unit: 'GFLOP/s', tokens: B * T, flops: 2 * fl, peerReq: { ...peerReq, workload: 'attention_bwd' },
              note: 'dq, dk, dv from the saved log-sum-exp (softmax recomputed)',
              ours: async () => bwd(),
              unfused: async () => unfusedAttentionBackward(addon, u, scratch),
              unfusedWhat: 'per head: GEMM scores, softmax in JS, GEMMs dV, dP, dQ, dK, dS in JS',
              check: () => {
                bwd();
                unfusedAttentionBackward(addon, u, scratch);
                const d = Math.max(maxAbsDiff(x.dq, u.dq), maxAbsDiff(x.dk, u.dk), maxAbsDiff(x.dv, u.dv));
                return { what: 'max |d(q,k,v) fused - unfused|', max_abs_diff: d, ok: d < 1e-3, text: `max dgrad ${e1(d)}` };
              },
            });
          });
      }

      if (W.includes('lm_head_fwd') || W.includes('lm_head_bwd')) {
        const n = sh.lmHead.rows, d = c.hidden, V = c.vocab;
        const x = { n, d, V, h: fill(n * d, 41), w: fill(V * d, 42, 0.05), targets: Int32Array.from({ length: n }, (_, i) => (i * 7919 + 13) % V) };
        const logp = new Float32Array(n), entropy = new Float32Array(n), lse = new Float32Array(n);
        const fwd = () => addon.runOp('lm_head_logp', { n, dim: d, vocab: V, hidden: x.h, weight: x.w, targets: x.targets, logp, entropy, lse });
        const logits = new Float32Array(n * V);
        const ulogp = new Float32Array(n), uent = new Float32Array(n), ulse = new Float32Array(n);
        const shape = { rows: n, dim: d, vocab: V };
        if (W.includes('lm_head_fwd'))
          await safe('lm_head_fwd', async () => {
            await kernel({
              name: 'lm_head_fwd', workload: `LM-head logp fwd ${n}x${d} -> ${V}`, shape, unit: 'GFLOP/s', tokens: n, flops: 2 * n * V * d,
              peerReq: { workload: 'lm_head_fwd', n, dim: d, vocab: V },
              note: 'fused chunked lm_head_logp: log p(target) and entropy, online log-sum-exp, no [n, V] logits kept',
              ours: async () => fwd(),
              unfused: async () => unfusedLmHeadForward(addon, x, logits, ulogp, uent, ulse),
              unfusedWhat: 'GEMM of the full [n, V] logits, then log-softmax, gather and entropy in JS',
              check: () => {
                fwd();
                unfusedLmHeadForward(addon, x, logits, ulogp, uent, ulse);
                const dd = Math.max(maxAbsDiff(logp, ulogp), maxAbsDiff(entropy, uent));
                return { what: 'max |logp, entropy fused - unfused|', max_abs_diff: dd, ok: dd < 1e-3, text: `max dlogp ${e1(dd)}` };
              },
            });
          });
        if (W.includes('lm_head_bwd'))
          await safe('lm_head_bwd', async () => {
            fwd();
            const dlogp = fill(n, 43);
            const dh = new Float32Array(n * d), dw = new Float32Array(V * d), udh = new Float32Array(n * d), udw = new Float32Array(V * d);
            const bwd = () => addon.runOp('lm_head_logp_backward', { n, dim: d, vocab: V, hidden: x.h, weight: x.w, targets: x.targets, lse, dlogp, dhidden: dh, dweight: dw });
            await kernel({
              name: 'lm_head_bwd', workload: `LM-head logp bwd ${n}x${d} -> ${V}`, shape, unit: 'GFLOP/s', tokens: n, flops: 4 * n * V * d,
              peerReq: { workload: 'lm_head_bwd', n, dim: d, vocab: V },
              note: 'fused chunked lm_head_logp_backward: logits recomputed chunk by chunk, dhidden and dweight',
              ours: async () => bwd(),
              unfused: async () => unfusedLmHeadBackward(addon, x, logits, lse, dlogp, udh, udw),
              unfusedWhat: 'GEMM of the full logits, dz = dlogp (onehot - softmax) in JS, GEMMs dh = dz W and dW = dz^T h',
              check: () => {
                dh.fill(0), dw.fill(0), udh.fill(0), udw.fill(0);
                bwd();
                unfusedLmHeadBackward(addon, x, logits, lse, dlogp, udh, udw);
                const dd = Math.max(maxAbsDiff(dh, udh), maxAbsDiff(dw, udw));
                return { what: 'max |dhidden, dweight fused - unfused|', max_abs_diff: dd, ok: dd < 1e-3, text: `max dgrad ${e1(dd)}` };
              },
            });
          });
      }

      if (W.includes('ppo_loss'))
        await safe('ppo_loss', async () => {
          const n = sh.ppoLoss.n;
          const oldLogp = fill(n, 51, 2.5, -2.5);
          const logp = Float32Array.from(oldLogp, (v, i) => v + 0.1 * Math.sin(i));
          const x = { n, logp, oldLogp, adv: fill(n, 52), values: fill(n, 53), oldValues: fill(n, 54), returns: fill(n, 55), entropy: fill(n, 56, 1.5, 1.5), cr: 0.2, crv: 0.2, vfCoef: 0.1 };
          const loss = new Float32Array(1), dlogp = new Float32Array(n), dvalues = new Float32Array(n), stats = new Float32Array(9);
          const ud = new Float32Array(n), uv = new Float32Array(n);
          const op = () =>
            addon.runOp('ppo_loss', {
              n, logp, oldLogp, advantages: x.adv, values: x.values, oldValues: x.oldValues, returns: x.returns, entropy: x.entropy,
              clipRange: x.cr, clipRangeValue: x.crv, vfCoef: x.vfCoef, klCoef: 0, entCoef: 0, loss, dlogp, dvalues, stats,
            });
          await kernel({
            name: 'ppo_loss', workload: `ppo_loss n=${n}`, shape: { n }, unit: 'Mtok/s', tokens: n, flops: null, elements: n,
            peerReq: { workload: 'ppo_loss', n },
            note: 'clipped surrogate + clipped value loss + statistics, gradients w.r.t. logp and values',
            ours: async () => op(),
            unfused: async () => unfusedPpoLoss(x, ud, uv),
            unfusedWhat: 'the same math as one plain JS loop',
            check: () => {
              op();
              const u = unfusedPpoLoss(x, ud, uv);
              const dl = Math.abs(loss[0] - u.loss) / Math.max(1e-6, Math.abs(u.loss));
              const dg = Math.max(maxAbsDiff(dlogp, ud), maxAbsDiff(dvalues, uv));
              return { what: 'loss rel diff and max |gradient| diff, fused vs JS', loss_rel_diff: dl, max_grad_diff: dg, ok: dl < 1e-4 && dg < 1e-9, text: `loss rel ${e1(dl)}, dgrad ${e1(dg)}` };
            },
          });
        });

      if (W.includes('adamw'))
        await safe('adamw', async () => {
          const n = sh.adamw.n;
          const mk = () => ({ n, p: fill(n, 61), g: fill(n, 62, 1e-3), m: new Float32Array(n), v: new Float32Array(n), lr: 1e-4, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.01 });
          const a = mk(), u = mk();
          let step = 1, ustep = 1;
          const op = (s) => addon.runOp('adamw', { n, param: a.p, grad: a.g, m: a.m, v: a.v, lr: a.lr, beta1: a.b1, beta2: a.b2, eps: a.eps, weightDecay: a.wd, step: s });
          // check first, from the same state: one step each
          op(step++);
          unfusedAdamw(u, ustep++);
          const dd = maxAbsDiff(a.p, u.p);
          await kernel({
            name: 'adamw', workload: `adamw n=${n}`, shape: { n }, unit: 'Mparam/s', tokens: null, flops: null, elements: n, bytes: 28 * n,
            peerReq: { workload: 'adamw', n },
            note: 'one torch.optim.AdamW step on a flat fp32 tensor (param, grad, m, v)',
            ours: async () => op(step++),
            unfused: async () => unfusedAdamw(u, ustep++),
            unfusedWhat: 'the same update as one plain JS loop',
            check: () => ({ what: 'max |param fused - JS| after one step from the same state', max_abs_diff: dd, ok: dd < 1e-6, text: `dparam ${e1(dd)}` }),
          });
        });

      // -- a second peak pass on each engine's best shape (one pass can catch a busy moment), then MFU
      const best = (key) => gemmRows.filter((g) => g[key]).sort((p, q) => q[key].gflops - p[key].gflops)[0];
      const bo = best('ours'), bp = peer ? best('peer') : null;
      const minS = opts.smoke ? 0.01 : 0.25;
      if (bo) peak.ours = Math.max(peak.ours, ourGemmRate(addon, bo.m, bo.n, bo.k, minS, opts.smoke ? 1 : 5).gflops);
      if (bp) peak.torch = Math.max(peak.torch, (await peer.request({ cmd: 'matmul', shapes: [[bp.m, bp.n, bp.k]], min_seconds: minS, samples: 5 })).shapes[0].gflops);
      const denom = Math.max(peak.ours, peak.torch);
      const source = peak.torch > peak.ours ? 'torch.mm (OpenBLAS)' : 'our GEMM';
      peaks.push({ ...peak, peak: denom, source });
      emit({ name: 'peak', device, config: cfgName, ours_gflops: peak.ours, torch_gflops: peer ? peak.torch : null, peak_gflops: denom, source });
      log(`${cfgName}: MFU denominator ${denom.toFixed(1)} GFLOP/s (${source})`);

      for (const p of pending) {
        const side = (x) => {
          if (!x) return null;
          if (x.error) return { error: x.error };
          const sec = x.s.median_ms / 1e3;
          const gflops = x.gflops ?? (p.flops ? p.flops / sec / 1e9 : null);
          return {
            tokens_per_sec: p.tokens ? p.tokens / sec : null, elements_per_sec: p.elements ? p.elements / sec : null, gb_per_sec: p.bytes ? p.bytes / sec / 1e9 : null,
            gflops, mfu: gflops != null && denom > 0 ? gflops / denom : null, ...x.s,
          };
        };
        const o = side(p.ours), pe = side(p.peer), un = side(p.unfused);
        const ok = (x) => x && !x.error;
        const r = {
          name: p.name, kind: p.kind, device, config: cfgName, workload: p.workload, shape: p.shape ?? null, unit: p.unit,
          tokens: p.tokens ?? null, flops: p.flops ?? null,
          tokens_per_sec: ok(o) ? o.tokens_per_sec : null, gflops: ok(o) ? o.gflops : null, mfu: ok(o) ? o.mfu : null,
          elements_per_sec: ok(o) ? o.elements_per_sec : null, gb_per_sec: ok(o) ? o.gb_per_sec : null,
          median_ms: ok(o) ? o.median_ms : null, min_ms: ok(o) ? o.min_ms : null, max_ms: ok(o) ? o.max_ms : null, repeats: ok(o) ? o.repeats : null, runs_ms: ok(o) ? o.runs_ms : null,
          error: o && o.error ? o.error : undefined,
          peer: pe ? { engine: `torch ${meta.torch} eager fp32`, ...pe } : null,
          ratio: ok(o) && ok(pe) ? pe.median_ms / o.median_ms : null,
          ratio_trusted: ok(o) && ok(pe) ? !!(trust && trust.ok) : null,
          unfused: un ? { what: p.unfused.what, ...un } : null,
          fused_speedup: ok(o) && ok(un) ? un.median_ms / o.median_ms : null,
          check: p.check, peak_gflops: denom, peak_source: source, note: p.note ?? null, ...(p.extra ?? {}),
          loadavg_1min: p.load.map((v) => +v.toFixed(2)),
        };
        rows.push(r);
        emit(r);
      }
    }
  } finally {
    if (peer) peer.close();
  }
  const totalS = (now() - t0) / 1e3;
  emit({ name: 'done', seconds: totalS });

  // -- the table
  out('');
  out(`date ${meta.date}  commit ${meta.commit}  node ${meta.node}${meta.torch ? `  torch ${meta.torch}` : ''}${opts.smoke ? '  SMOKE (tiny shapes, not a measurement)' : ''}`);
  out(`device ${deviceText}; load avg at start ${meta.host.loadavg.join(' ')}`);
  if (peerInfo) out(`torch BLAS: ${peerInfo.blas.join(', ') || 'none mapped'}; torch threads ${peerInfo.threads}, OMP_WAIT_POLICY ${meta.torch_omp_wait_policy}`);
  if (trust) out(trust.line);
  if (peerWhy) out(peerWhy);
  for (const p of peaks)
    out(`fp32 matmul peak ${p.config}: ours ${p.ours.toFixed(1)}, torch ${p.torch ? p.torch.toFixed(1) : '-'} GFLOP/s -> MFU denominator ${p.peak.toFixed(1)} GFLOP/s (${p.source})`);
  out('');
  const head = ['config', 'workload', 'ours', 'torch', 'ours/torch', 'MFU ours', 'MFU torch', 'ours ms med [min-max]', 'torch ms med [min-max]', 'unfused ms med (fused speedup)', 'load', 'check'];
  out('| ' + head.join(' | ') + ' |');
  out('|' + head.map(() => '---').join('|') + '|');
  for (const r of rows) {
    const ratio = r.ratio == null ? '-' : r.ratio.toFixed(2) + (r.ratio_trusted ? '' : '?');
    const unf = r.unfused ? (r.unfused.error ? 'failed' : `${f1(r.unfused.median_ms)} (${r.fused_speedup.toFixed(1)}x)`) : '-';
    const chk = r.check == null ? '-' : r.check.error ? `error: ${r.check.error}` : `${r.check.text}${r.check.ok === false ? ' FAIL' : ''}`;
    out('| ' + [
      r.config, r.workload, r.error ? 'failed*' : rateCell(r, 'ours'), r.peer?.error ? 'failed*' : rateCell(r, 'peer'), ratio,
      pct(r.mfu), pct(r.peer?.mfu), r.error ? '-' : msCell(r), r.peer && !r.peer.error ? msCell(r.peer) : '-', unf,
      r.loadavg_1min.map((x) => x.toFixed(1)).join('→'), chk,
    ].join(' | ') + ' |');
  }
  out('');
  out('ours/torch: throughput ratio (torch median time / ours), engines alternating run by run; "?" = the peer check above did not pass.');
  out('MFU: counted FLOPs / median time / the MFU denominator; FLOPs per token: 2N inferred, 6N trained (4N frozen + 6 x LoRA parameters for LoRA), ' +
    'N = non-embedding parameters incl. the LM head (the score head counts 0, the LM head only where it runs), plus causal attention (3x its forward when trained). bench/README.md has the details.');
  out('unfused: the same math as a plain sequence (our GEMM through runOp + plain JS loops with full intermediates; kernels only); fused speedup = unfused / ours time.');
  out('load: the 1-minute load average before and after the workload (other processes share the cores).');
  for (const r of rows) {
    if (r.error) out(`* ${r.config} ${r.name}: ours failed: ${r.error}`);
    if (r.peer?.error) out(`* ${r.config} ${r.name}: torch failed: ${r.peer.error}`);
  }
  out(`repeats: stages ${opts.repeats}, kernels ${opts.kernelRepeats} (after ${opts.warmup} warm-up); total ${totalS.toFixed(0)} s`);
  const bad = rows.filter((r) => r.check && r.check.ok === false);
  if (bad.length) out(`NOTE: checks failed for ${bad.map((r) => `${r.config} ${r.name}`).join(', ')}`);
}

/** First-step losses of both engines (same weights, same ids, same adapter): relative difference. */
function lossCheck(o, p) {
  if (!o || !p || o.loss == null || p.loss == null) return null;
  const rel = Math.abs(o.loss - p.loss) / Math.max(1e-12, Math.abs(p.loss));
  return { what: 'first-step loss, ours vs torch', ours: o.loss, torch: p.loss, rel_diff: rel, ok: rel < 1e-4, text: `loss rel ${e1(rel)}` };
}

main().catch((e) => {
  if (e instanceof BenchError) {
    process.stderr.write(`rlhf-native: error ${e.code}: ${e.message.replace(/\s*\n\s*/g, '; ')}\n`);
    process.exit(1);
  }
  console.error(e && e.stack ? e.stack : e);
  process.exit(70);
});
