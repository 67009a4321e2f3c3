#!/usr/bin/env node
// @ts-check
/**
 * Forward / decode benchmark of our engine, side by side with a plain eager
 * PyTorch Llama (bench/torch_peer.py) on the same model folder, in one run,
 * with MFU against fp32 matmul peaks measured in the same run.
 *
 *   npm run build && node bench/forward.js [--config S,M] [--json] [--repeats 5] [--decode-repeats 3]
 *
 * See bench/README.md for the workloads, the FLOP convention and every flag.
 */
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const { CONFIGS, median, now, randomIds, toBf16, requireDist, gitCommit, findBlasDir, prepareFolder, Peer, ourGemmRate, gemmShapes } = require('./common');

// ---------------------------------------------------------------------------
// arguments

const USAGE = `usage: node bench/forward.js [options]
  --config S,M          configs to run (S, M; default both)
  --json                one JSON object per line on stdout (the table goes to stderr)
  --repeats N           timed forward repeats per engine (default 5)
  --decode-repeats N    timed decode repeats per engine and batch size (default 3)
  --warmup N            untimed runs per engine and workload (default 1)
  --threads N           threads for both engines (default RLHF_NUM_THREADS or all usable cores)
  --no-peer             ours only (no PyTorch)
  --peer-wait-policy P  OMP_WAIT_POLICY for the peer: PASSIVE (default), ACTIVE, or default (leave unset)
  --python PATH         python with torch for the peer (default TORCH_PEER_PYTHON or /usr/bin/python3)
  --blas-dir DIR        folder with the OpenMP OpenBLAS libblas.so.3 (default TORCH_PEER_BLAS_DIR or
                        the libopenblas0-openmp package's folder)
  --out DIR             cache folder for the model folders (default bench/out)
  --forward BxT         forward shape (default 4x256)
  --decode B1,B2        decode batch sizes (default 1,8)
  --prompt N            decode prompt length (default 32)
  --new-tokens N        decode new tokens (default 128)
  --bf16, --no-bf16     also run "forward bf16": ours with weightsDtype 'bf16' vs the peer under
                        torch.autocast('cpu', bfloat16) (default on)
  --bf16-decode, --no-bf16-decode
                        also run "decode bf16" rows at the --decode batch sizes (default off: the peer's
                        bf16 autocast decode takes minutes on a CPU without AVX-512)`;

function parseArgs(argv) {
  const o = {
    configs: ['S', 'M'], json: false, repeats: 5, decodeRepeats: 3, warmup: 1, threads: 0, peer: true,
    python: process.env.TORCH_PEER_PYTHON || '/usr/bin/python3', waitPolicy: 'PASSIVE', blasDir: process.env.TORCH_PEER_BLAS_DIR || '',
    out: path.join(__dirname, 'out'), fwdBatch: 4, fwdSeq: 256, decodeBatches: [1, 8], prompt: 32, newTokens: 128,
    bf16: true, bf16Decode: false,
  };
  const int = (v, name) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--config': o.configs = val().split(',').map((s) => s.trim().toUpperCase()).filter(Boolean); break;
      case '--json': o.json = true; break;
      case '--repeats': o.repeats = Math.max(1, int(val(), a)); break;
      case '--decode-repeats': o.decodeRepeats = Math.max(1, int(val(), a)); break;
      case '--warmup': o.warmup = int(val(), a); break;
      case '--threads': o.threads = int(val(), a); break;
      case '--no-peer': o.peer = false; break;
      case '--python': o.python = val(); break;
      case '--peer-wait-policy': {
        const v = val().toUpperCase();
        if (!['PASSIVE', 'ACTIVE', 'DEFAULT'].includes(v)) throw new Error('--peer-wait-policy wants PASSIVE, ACTIVE or default');
        o.waitPolicy = v === 'DEFAULT' ? '' : v;
        break;
      }
      case '--blas-dir': o.blasDir = val(); break;
      case '--out': o.out = path.resolve(val()); break;
      case '--forward': {
        const m = /^(\d+)x(\d+)$/.exec(val());
        if (!m) throw new Error('--forward wants BxT, e.g. 4x256');
        o.fwdBatch = Number(m[1]);
        o.fwdSeq = Number(m[2]);
        break;
      }
      case '--decode': o.decodeBatches = val().split(',').map((s) => int(s, a)).filter((n) => n > 0); break;
      case '--prompt': o.prompt = Math.max(1, int(val(), a)); break;
      case '--new-tokens': o.newTokens = Math.max(1, int(val(), a)); break;
      case '--bf16': o.bf16 = true; break;
      case '--no-bf16': o.bf16 = false; break;
      case '--bf16-decode': o.bf16Decode = true; break;
      case '--no-bf16-decode': o.bf16Decode = false; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  for (const c of o.configs) if (!(c in CONFIGS)) throw new Error(`unknown config ${c}; configs: ${Object.keys(CONFIGS).join(', ')}`);
  return o;
}

// ---------------------------------------------------------------------------
// configs: Llama-shaped, untied LM head, random N(0, 0.02) weights

/** @type {Record<string, {hidden:number, layers:number, heads:number, kvHeads:number, ffn:number, vocab:number, maxPositions:number}>} */

// ---------------------------------------------------------------------------
// small helpers

const log = (...a) => console.error('[bench]', ...a);

/** Deterministic token ids (a 32-bit LCG), identical for both engines. */

/** fp32 -> bf16 bits, round to nearest even (finite inputs), as the engine's weight conversion does. */

/** Per-token log-probs [B][T-1] -> one flat Float64Array, row-major (the peer's order). */
const flatLogp = (rows) => Float64Array.from(rows.flatMap((r) => Array.from(r)));
const meanOf = (a) => a.reduce((s, x) => s + x, 0) / a.length;
const maxAbsDiff = (a, b) => {
  if (a.length !== b.length) throw new Error(`log-prob lengths differ: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};
/** Fraction of equal greedy tokens and the first divergence per row ([B][N] each). */
function tokenAgreement(a, b, N) {
  let same = 0, total = 0;
  const firstDiff = [];
  for (let r = 0; r < a.length; r++) {
    let fd = -1;
    for (let t = 0; t < N; t++) {
      total++;
      if (a[r][t] === b[r][t]) same++;
      else if (fd < 0) fd = t;
    }
    firstDiff.push(fd);
  }
  return { fraction: same / total, firstDiff };
}




// ---------------------------------------------------------------------------
// FLOPs (see bench/README.md)

/**
 * @param {{hidden:number, layers:number, heads:number, kvHeads:number, ffn:number, vocab:number}} c
 * `body`: every non-embedding parameter except the LM head (attention and MLP
 * matrices, norms); `head`: the LM head (vocab x hidden, counted even when tied).
 */
function modelCounts(c) {
  const hd = c.hidden / c.heads;
  const q = c.heads * hd;
  const kv = c.kvHeads * hd;
  const perLayer = c.hidden * q + 2 * c.hidden * kv + q * c.hidden + 3 * c.hidden * c.ffn + 2 * c.hidden;
  const body = c.layers * perLayer + c.hidden;
  return { body, head: c.vocab * c.hidden, embedding: c.vocab * c.hidden, attnDim: q, layers: c.layers };
}

/** Attention FLOPs of one query attending `ctx` keys: QK^T and PV, 2 FLOPs per MAC. */
const attnFlops = (m, ctx) => 4 * m.layers * m.attnDim * ctx;

/** Forward of B x T, LM head on all T positions; causal attention, position t attends t+1 keys. */
function forwardFlops(m, B, T) {
  return B * T * 2 * (m.body + m.head) + B * attnFlops(m, (T * (T + 1)) / 2);
}

/** generate: prefill of the prompt (LM head on its last position only), then newTokens-1 one-token steps. */
function decodeFlops(m, B, Tp, newTokens) {
  let f = B * Tp * 2 * m.body + B * 2 * m.head + B * attnFlops(m, (Tp * (Tp + 1)) / 2);
  for (let s = 1; s < newTokens; s++) f += B * (2 * (m.body + m.head) + attnFlops(m, Tp + s));
  return f;
}

// ---------------------------------------------------------------------------
// model folders (cached under bench/out/models)


// ---------------------------------------------------------------------------
// the PyTorch peer: a long-lived process, one JSON command per line


// ---------------------------------------------------------------------------
// matmul peaks

/**
 * Our GEMM through the op table (runOp 'gemm', C = A B^T as a linear layer calls it). Median GFLOP/s.
 * bf16: B (the weight) is given as bf16 bits (`bBf16`), as a model loaded with weightsDtype 'bf16' calls it.
 */


// ---------------------------------------------------------------------------
// timing

function summary(msList) {
  return { median_ms: median(msList), min_ms: Math.min(...msList), max_ms: Math.max(...msList), repeats: msList.length, runs_ms: msList };
}

/**
 * Warm-up, then `repeats` timed runs of each engine, interleaved (the order
 * flips every repeat) so that a noisy neighbour hurts both alike.
 */
async function interleaved(repeats, warmup, ours, peer) {
  const o = [], p = [];
  const load = [os.loadavg()[0]];
  for (let i = 0; i < warmup; i++) {
    await ours();
    if (peer) await peer();
  }
  for (let r = 0; r < repeats; r++) {
    if (r % 2 === 0 || !peer) {
      o.push(await ours());
      if (peer) p.push(await peer());
    } else {
      p.push(await peer());
      o.push(await ours());
    }
  }
  load.push(os.loadavg()[0]);
  return { ours: summary(o), peer: peer ? summary(p) : null, load };
}

// ---------------------------------------------------------------------------
// main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const threads = opts.threads || Number(process.env.RLHF_NUM_THREADS) || os.availableParallelism();
  process.env.RLHF_NUM_THREADS = String(threads); // read when the addon creates its engine
  const lib = requireDist('lib/index.js');
  const { loadModel } = requireDist('lib/engine/model.js');
  const { native } = requireDist('lib/native.js');
  const addon = native();
  const info = addon.info();
  const cpuModel = os.cpus()[0]?.model?.trim() || 'unknown CPU';
  const device = `cpu: ${cpuModel}, ${os.availableParallelism()} usable cores, ${threads} threads, ${info.cpu.simd}`;
  const meta = {
    date: new Date().toISOString(),
    commit: gitCommit(),
    node: process.version,
    device,
    threads,
    host: { cpus: os.cpus().length, mem_gib: +(os.totalmem() / 2 ** 30).toFixed(1), loadavg: os.loadavg().map((x) => +x.toFixed(2)) },
  };
  const emit = (obj) => {
    if (opts.json) process.stdout.write(JSON.stringify(obj) + '\n');
  };
  const out = opts.json ? (s) => process.stderr.write(s + '\n') : (s) => process.stdout.write(s + '\n');

  let peer = null;
  let peerInfo = null;
  if (opts.peer) {
    peer = new Peer(opts, threads);
    peerInfo = await peer.request({ cmd: 'hello' });
    const openmpBlas = peerInfo.blas.some((p) => /openblas-openmp|libopenblasp-/.test(p));
    peerInfo.openmp_openblas = openmpBlas;
    log(`torch ${peerInfo.torch}, ${peerInfo.threads} threads, BLAS: ${peerInfo.blas.join(', ') || 'none mapped'}`);
    if (!openmpBlas)
      log(`WARNING: the peer did not load the OpenMP OpenBLAS (LD_LIBRARY_PATH=${peer.blasDir || '(not set)'}); its numbers are not comparable. Install libopenblas0-openmp or pass --blas-dir.`);
    if (peerInfo.threads !== threads) log(`WARNING: the peer runs ${peerInfo.threads} threads, ours ${threads}`);
  }
  meta.torch = peerInfo ? peerInfo.torch : null;
  meta.torch_blas = peerInfo ? peerInfo.blas : null;
  meta.torch_threads = peerInfo ? peerInfo.threads : null;
  meta.torch_omp_wait_policy = peerInfo ? peerInfo.omp_wait_policy || 'default' : null;
  emit({ name: 'meta', ...meta });

  const rows = [];
  const peaks = [];
  const t0 = now();
  try {
    for (const name of opts.configs) {
      const c = CONFIGS[name];
      if (opts.fwdSeq > c.maxPositions || opts.prompt + opts.newTokens > c.maxPositions)
        throw new Error(`config ${name}: sequences longer than max positions ${c.maxPositions}`);
      const dir = prepareFolder(lib, name, c, opts.out);
      const counts = modelCounts(c);
      const model = await loadModel(dir, { device: 'cpu' });
      const mi = model.info();
      if (mi.threads !== threads) log(`WARNING: our engine runs ${mi.threads} threads, asked for ${threads}`);
      if (peer) await peer.request({ cmd: 'load', dir });
      const cfgDesc = `${name}: dim ${c.hidden}, ${c.layers} layers, ${c.heads} heads, ${c.kvHeads} kv, ffn ${c.ffn}, vocab ${c.vocab}, ${(mi.parameters / 1e6).toFixed(1)}M params`;
      log(cfgDesc);

      // -- matmul peaks (same run, same shapes for both)
      const shapes = gemmShapes(c, opts.fwdBatch * opts.fwdSeq);
      const oursGemm = shapes.map((s) => ({ ...ourGemmRate(addon, s.m, s.n, s.k), what: s.what }));
      const peerGemm = peer ? (await peer.request({ cmd: 'matmul', shapes: shapes.map((s) => [s.m, s.n, s.k]) })).shapes.map((r, i) => ({ ...r, what: shapes[i].what })) : null;
      const oursPeak = Math.max(...oursGemm.map((r) => r.gflops));
      const peerPeak = peerGemm ? Math.max(...peerGemm.map((r) => r.gflops)) : 0;
      const ceiling = Math.max(oursPeak, peerPeak);
      const ceilingSource = peerPeak > oursPeak ? 'torch.mm (OpenBLAS)' : 'our GEMM';
      // -- bf16-weight matmul (informational: the MFU denominator stays the fp32 peak)
      let bf16Gemm = null;
      if (opts.bf16) {
        const [m, n, k] = [1024, 1024, 1024];
        const ours16 = { ...ourGemmRate(addon, m, n, k, 0.25, 5, true), what: 'square' };
        const peer16 = peer ? { ...(await peer.request({ cmd: 'matmul', shapes: [[m, n, k]], autocast: 'bf16' })).shapes[0], what: 'square' } : null;
        bf16Gemm = { ours: ours16, torch: peer16 };
        emit({ name: 'matmul', engine: 'ours', dtype: 'bf16 weights', device, config: name, peak_gflops: ours16.gflops, shapes: [ours16] });
        if (peer16) emit({ name: 'matmul', engine: 'torch', dtype: 'bf16 autocast', device, config: name, peak_gflops: peer16.gflops, shapes: [peer16], blas: peerInfo.blas });
        log(`bf16 GEMM ${m}x${n}x${k}: ours (bf16 B) ${ours16.gflops.toFixed(1)} GFLOP/s, torch (autocast) ${peer16 ? peer16.gflops.toFixed(1) : '-'} GFLOP/s`);
      }
      peaks.push({ config: name, oursPeak, peerPeak, ceiling, ceilingSource, oursGemm, peerGemm, bf16Gemm });
      emit({ name: 'matmul', engine: 'ours', dtype: 'f32', device, config: name, peak_gflops: oursPeak, shapes: oursGemm });
      if (peerGemm) emit({ name: 'matmul', engine: 'torch', dtype: 'f32', device, config: name, peak_gflops: peerPeak, shapes: peerGemm, blas: peerInfo.blas });
      log(`fp32 GEMM peak: ours ${oursPeak.toFixed(1)} GFLOP/s, torch ${peer ? peerPeak.toFixed(1) : '-'} GFLOP/s; MFU ceiling ${ceiling.toFixed(1)} (${ceilingSource})`);

      // dtype 'bf16': ours with weightsDtype 'bf16', the peer under bf16 autocast; same fp32 MFU denominator.
      const record = (workload, extra, tokens, flops, r, check, dtype = 'f32') => {
        const rate = (s) => (s ? { tokens_per_sec: tokens / (s.median_ms / 1e3), mfu: flops / (s.median_ms / 1e3) / (ceiling * 1e9) } : null);
        const o = rate(r.ours), p = rate(r.peer);
        const row = {
          name: workload.split(' ')[0], workload, device, config: name, ...extra, weights_dtype: dtype, tokens, flops,
          tokens_per_sec: o.tokens_per_sec, mfu: o.mfu, mfu_own_peak: flops / (r.ours.median_ms / 1e3) / (oursPeak * 1e9),
          median_ms: r.ours.median_ms, min_ms: r.ours.min_ms, max_ms: r.ours.max_ms, repeats: r.ours.repeats, runs_ms: r.ours.runs_ms,
          peak_gflops: ceiling, peak_source: ceilingSource, ours_gemm_peak_gflops: oursPeak,
          peer: p
            ? { engine: `torch ${peerInfo.torch} eager ${dtype === 'bf16' ? 'fp32 weights, bf16 autocast' : 'fp32'}`, tokens_per_sec: p.tokens_per_sec, mfu: p.mfu, mfu_own_peak: flops / (r.peer.median_ms / 1e3) / (peerPeak * 1e9),
                median_ms: r.peer.median_ms, min_ms: r.peer.min_ms, max_ms: r.peer.max_ms, repeats: r.peer.repeats, runs_ms: r.peer.runs_ms, gemm_peak_gflops: peerPeak }
            : null,
          ratio: p ? o.tokens_per_sec / p.tokens_per_sec : null,
          check,
          loadavg_1min: r.load.map((x) => +x.toFixed(2)),
        };
        rows.push(row);
        emit(row);
        log(`${name} ${workload}: ours ${o.tokens_per_sec.toFixed(1)} tok/s` + (p ? `, torch ${p.tokens_per_sec.toFixed(1)} tok/s, ratio ${row.ratio.toFixed(2)}` : ''));
      };

      // The bf16-weights model (loaded only when a bf16 row runs).
      let model16 = null;
      const bf16Model = async () => {
        if (!model16) {
          model16 = await loadModel(dir, { device: 'cpu', weightsDtype: 'bf16' });
          const wd = model16.info().weightsDtype;
          if (wd !== 'bf16') throw new Error(`loadModel(..., { weightsDtype: 'bf16' }) gave weightsDtype ${wd}`);
        }
        return model16;
      };

      // -- forward: B x T, per-token log-probs (+ entropy) of the next tokens
      {
        const B = opts.fwdBatch, T = opts.fwdSeq;
        const ids = randomIds(B, T, c.vocab, 1);
        const idsTyped = ids.map((r) => Int32Array.from(r));
        let check = null;
        // fp32 log-probs of both engines, kept as the reference of the bf16 row.
        let oursF32 = null, torchF32 = null;
        const checkRun = !!peer || opts.bf16;
        if (checkRun) {
          oursF32 = flatLogp((await model.forward({ inputIds: idsTyped })).logp);
          if (peer) {
            const p = await peer.request({ cmd: 'forward', ids, return_logp: true });
            torchF32 = Float64Array.from(p.logp);
            const meanOurs = meanOf(oursF32);
            const maxDiff = maxAbsDiff(oursF32, torchF32);
            check = { mean_logp_ours: meanOurs, mean_logp_torch: p.mean_logp, abs_diff: Math.abs(meanOurs - p.mean_logp), max_token_abs_diff: maxDiff, ok: Math.abs(meanOurs - p.mean_logp) < 1e-4 };
            log(`forward check: mean logp ours ${meanOurs.toFixed(6)}, torch ${p.mean_logp.toFixed(6)}, |diff| ${check.abs_diff.toExponential(2)}, max per-token |diff| ${maxDiff.toExponential(2)}${check.ok ? '' : '  <-- DISAGREE'}`);
          }
        }
        // The check run above is the first warm-up of both engines.
        const r = await interleaved(
          opts.repeats, checkRun ? Math.max(0, opts.warmup - 1) : opts.warmup,
          async () => { const t = now(); await model.forward({ inputIds: idsTyped }); return now() - t; },
          peer && (async () => (await peer.request({ cmd: 'forward', ids })).ms),
        );
        record(`forward b${B}x${T}`, { batch: B, seq: T }, B * T, forwardFlops(counts, B, T), r, check);

        // -- forward bf16: ours with bf16 weights vs the peer under bf16 autocast. Their
        // roundings differ, so each is checked against its own engine's fp32 log-probs.
        if (opts.bf16) {
          const m16 = await bf16Model();
          const ours16 = flatLogp((await m16.forward({ inputIds: idsTyped })).logp);
          const p16 = peer ? await peer.request({ cmd: 'forward', ids, return_logp: true, autocast: 'bf16' }) : null;
          const torch16 = p16 ? Float64Array.from(p16.logp) : null;
          const tol = 0.05;
          const c16 = {
            tolerance: tol,
            max_abs_dlogp_ours: maxAbsDiff(ours16, oursF32),
            max_abs_dlogp_torch: torch16 ? maxAbsDiff(torch16, torchF32) : null,
            mean_logp_ours_bf16: meanOf(ours16), mean_logp_ours_f32: meanOf(oursF32),
            mean_logp_torch_bf16: torch16 ? meanOf(torch16) : null, mean_logp_torch_f32: torchF32 ? meanOf(torchF32) : null,
            max_abs_dlogp_ours_vs_torch_bf16: torch16 ? maxAbsDiff(ours16, torch16) : null,
          };
          c16.ok = c16.max_abs_dlogp_ours < tol && (c16.max_abs_dlogp_torch == null || c16.max_abs_dlogp_torch < tol);
          log(`forward bf16 check (max per-token |logp(bf16) - logp(fp32)| of the same engine, < ${tol}): ours ${c16.max_abs_dlogp_ours.toExponential(2)}` +
            (torch16 ? `, torch ${c16.max_abs_dlogp_torch.toExponential(2)}; mean logp bf16 ours ${c16.mean_logp_ours_bf16.toFixed(6)}, torch ${c16.mean_logp_torch_bf16.toFixed(6)}` : '') +
            (c16.ok ? '' : '  <-- TOO FAR'));
          const r16 = await interleaved(
            opts.repeats, Math.max(0, opts.warmup - 1),
            async () => { const t = now(); await m16.forward({ inputIds: idsTyped }); return now() - t; },
            peer && (async () => (await peer.request({ cmd: 'forward', ids, autocast: 'bf16' })).ms),
          );
          record(`forward bf16 b${B}x${T}`, { batch: B, seq: T }, B * T, forwardFlops(counts, B, T), r16, c16, 'bf16');
        }
      }

      // -- decode: greedy, KV cache, prompt P, N new tokens, no EOS
      const P = opts.prompt, N = opts.newTokens;
      const decodeIn = (B) => randomIds(B, P, c.vocab, 100 + B);
      const f32Tokens = new Map(); // B -> { ours, torch }: the fp32 greedy tokens, reference of the bf16 rows
      for (const B of opts.decodeBatches) {
        const prompts = decodeIn(B);
        const gen = () => model.generate({ prompts, maxNewTokens: N, temperature: 0, eosIds: [] });
        let check = null;
        const checkRun = !!peer || opts.bf16Decode;
        if (checkRun) {
          const o = await gen();
          const p = peer ? await peer.request({ cmd: 'decode', prompts, new_tokens: N, return_tokens: true }) : null;
          f32Tokens.set(B, { ours: o.tokens, torch: p ? p.tokens : null });
          if (p) {
            const a = tokenAgreement(o.tokens, p.tokens, N);
            const short = o.tokens.some((t) => t.length !== N);
            check = { tokens_equal: a.fraction, first_divergence: a.firstDiff, ours_length_ok: !short, ok: a.fraction === 1 && !short };
            log(`decode b${B} check: ${(100 * a.fraction).toFixed(1)}% greedy tokens identical` + (a.fraction === 1 ? '' : `, first divergence per row ${JSON.stringify(a.firstDiff)}`));
          }
        }
        const r = await interleaved(
          opts.decodeRepeats, checkRun ? Math.max(0, opts.warmup - 1) : opts.warmup,
          async () => {
            const t = now();
            const g = await gen();
            const ms = now() - t;
            if (g.tokens[0].length !== N) throw new Error(`generate stopped after ${g.tokens[0].length} tokens (${g.finish[0]})`);
            return ms;
          },
          peer && (async () => (await peer.request({ cmd: 'decode', prompts, new_tokens: N })).ms),
        );
        record(`decode b${B} ${P}+${N}`, { batch: B, prompt: P, new_tokens: N }, B * N, decodeFlops(counts, B, P, N), r, check);
      }

      // -- decode bf16 (opt-in): ours with bf16 weights vs the peer under bf16 autocast. Greedy
      // tokens of random-weight models have tiny logit margins, so the check is informational:
      // each engine's agreement with its own fp32 greedy tokens.
      if (opts.bf16Decode) {
        const m16 = await bf16Model();
        for (const B of opts.decodeBatches) {
          const prompts = decodeIn(B);
          const gen = () => m16.generate({ prompts, maxNewTokens: N, temperature: 0, eosIds: [] });
          const o = await gen();
          const p = peer ? await peer.request({ cmd: 'decode', prompts, new_tokens: N, return_tokens: true, autocast: 'bf16' }) : null;
          const ref = f32Tokens.get(B);
          const ao = tokenAgreement(o.tokens, ref.ours, N);
          const at = p ? tokenAgreement(p.tokens, ref.torch, N) : null;
          const short = o.tokens.some((t) => t.length !== N);
          const check = {
            ours_same_as_f32: ao.fraction, ours_first_divergence: ao.firstDiff,
            torch_same_as_f32: at ? at.fraction : null, torch_first_divergence: at ? at.firstDiff : null,
            ours_length_ok: !short, ok: short ? false : null, // null: informational
          };
          log(`decode bf16 b${B} check (greedy tokens equal to the same engine's fp32 tokens): ours ${(100 * ao.fraction).toFixed(1)}%` + (at ? `, torch ${(100 * at.fraction).toFixed(1)}%` : ''));
          const r = await interleaved(
            opts.decodeRepeats, Math.max(0, opts.warmup - 1),
            async () => {
              const t = now();
              const g = await gen();
              const ms = now() - t;
              if (g.tokens[0].length !== N) throw new Error(`generate stopped after ${g.tokens[0].length} tokens (${g.finish[0]})`);
              return ms;
            },
            peer && (async () => (await peer.request({ cmd: 'decode', prompts, new_tokens: N, autocast: 'bf16' })).ms),
          );
          record(`decode bf16 b${B} ${P}+${N}`, { batch: B, prompt: P, new_tokens: N }, B * N, decodeFlops(counts, B, P, N), r, check, 'bf16');
        }
      }
      if (model16) model16.dispose();
      model.dispose();
    }
  } finally {
    if (peer) peer.close();
  }
  const totalS = (now() - t0) / 1e3;
  emit({ name: 'done', seconds: totalS });

  // -- table
  const f1 = (x) => (x == null ? '-' : x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const pct = (x) => (x == null ? '-' : (100 * x).toFixed(1) + '%');
  const ms = (s) => (s == null ? '-' : `${s.median_ms.toFixed(0)} [${s.min_ms.toFixed(0)}-${s.max_ms.toFixed(0)}]`);
  out('');
  out(`date ${meta.date}  commit ${meta.commit}  node ${meta.node}${meta.torch ? `  torch ${meta.torch}` : ''}`);
  out(`device ${device}; load avg at start ${meta.host.loadavg.join(' ')}`);
  if (peerInfo) out(`torch BLAS: ${peerInfo.blas.join(', ')}${peerInfo.openmp_openblas ? '' : '  (NOT the OpenMP OpenBLAS)'}; torch threads ${peerInfo.threads}, OMP_WAIT_POLICY ${meta.torch_omp_wait_policy}`);
  for (const p of peaks)
    out(`fp32 matmul peak ${p.config}: ours ${p.oursPeak.toFixed(1)} GFLOP/s, torch ${p.peerPeak ? p.peerPeak.toFixed(1) : '-'} GFLOP/s -> MFU denominator ${p.ceiling.toFixed(1)} GFLOP/s (${p.ceilingSource})`);
  for (const p of peaks)
    if (p.bf16Gemm)
      out(`bf16 matmul 1024^3 ${p.config} (informational): ours (bf16 weights) ${p.bf16Gemm.ours.gflops.toFixed(1)} GFLOP/s, torch (bf16 autocast) ${p.bf16Gemm.torch ? p.bf16Gemm.torch.gflops.toFixed(1) : '-'} GFLOP/s`);
  out('');
  const head = ['config', 'workload', 'ours tok/s', 'torch tok/s', 'ours/torch', 'MFU ours', 'MFU torch', 'ours ms med [min-max]', 'torch ms med [min-max]', 'load', 'check'];
  const e1 = (x) => (x == null ? '-' : x.toExponential(1));
  const checkCell = (r) => {
    const k = r.check;
    if (k == null) return '-';
    if (r.name === 'forward' && r.weights_dtype === 'bf16')
      return `max dlogp vs fp32: ours ${e1(k.max_abs_dlogp_ours)}, torch ${e1(k.max_abs_dlogp_torch)}${k.ok ? '' : ' FAIL'}`;
    if (r.name === 'forward') return `dlogp ${e1(k.abs_diff)}`;
    if (r.weights_dtype === 'bf16')
      return `same as fp32: ours ${(100 * k.ours_same_as_f32).toFixed(0)}%, torch ${k.torch_same_as_f32 == null ? '-' : (100 * k.torch_same_as_f32).toFixed(0) + '%'}`;
    return `${(100 * k.tokens_equal).toFixed(0)}% same`;
  };
  const body = rows.map((r) => [
    r.config, r.workload, f1(r.tokens_per_sec), f1(r.peer?.tokens_per_sec), r.ratio == null ? '-' : r.ratio.toFixed(2),
    pct(r.mfu), pct(r.peer?.mfu), ms(r), ms(r.peer), r.loadavg_1min.map((x) => x.toFixed(1)).join('→'),
    checkCell(r),
  ]);
  out('| ' + head.join(' | ') + ' |');
  out('|' + head.map(() => '---').join('|') + '|');
  for (const b of body) out('| ' + b.join(' | ') + ' |');
  out('');
  out('load: the 1-minute load average before and after the workload\'s timed runs (other processes share the cores).');
  if (rows.some((r) => r.weights_dtype === 'bf16'))
    out("bf16 rows: ours loadModel(dir, { weightsDtype: 'bf16' }) (fp32 compute), torch the same fp32 model under torch.autocast('cpu', bfloat16); " +
      'MFU against the same fp32 matmul peak as the fp32 rows; check: each engine\'s max per-token |logp(bf16) - logp(fp32)| (forward, must be < 0.05) ' +
      'or share of greedy tokens equal to its own fp32 run (decode, informational).');
  out(`repeats: forward ${opts.repeats}, decode ${opts.decodeRepeats} (after ${opts.warmup} warm-up), interleaved ours/torch; total ${totalS.toFixed(0)} s`);
  const bad = rows.filter((r) => r.check && r.check.ok === false);
  if (bad.length) out(`NOTE: checks failed for ${bad.map((r) => `${r.config} ${r.workload}`).join(', ')}`);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
