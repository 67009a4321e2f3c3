#!/usr/bin/env node
// @ts-check
/**
 * Training-step benchmark of our engine, side by side with an eager PyTorch
 * Llama with autograd (bench/torch_train_peer.py) on the same model folder and
 * the same token ids, in one run, with MFU against fp32 matmul peaks measured
 * in the same run.
 *
 *   npm run build && node bench/train.js [--config S,M] [--json] [--repeats 5]
 *
 * One step = forward + causal-LM loss over every token + backward + AdamW
 * (global-norm clipping 1.0) + zero grad. Rows: full fine-tuning (fp32), LoRA
 * r=16 alpha=32 on q,k,v,o,gate,up,down (fp32 base), and LoRA with a bf16
 * base (ours: weightsDtype 'bf16'; torch: the fp32 model under bf16 autocast).
 * See bench/README.md ("Training step") for the conventions.
 */
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const { CONFIGS, median, now, randomIds, toBf16, requireDist, gitCommit, findBlasDir, prepareFolder, Peer, ourGemmRate, gemmShapes } = require('./common');

// ---------------------------------------------------------------------------
// arguments

const MODES = ['full', 'lora', 'lora-bf16'];

const USAGE = `usage: node bench/train.js [options]
  --config S,M            configs to run (S, M; default both)
  --json                  one JSON object per line on stdout (the table goes to stderr)
  --modes LIST            rows to run: full, lora, lora-bf16 (default all three)
  --repeats N             timed steps per engine and row (default 5)
  --warmup N              untimed steps per engine and row, the first one is the correctness check (default 1)
  --bf16-peer-repeats N   timed steps of the peer's bf16-autocast LoRA row (default 1: ~45 s a step on S,
                          ~2 min on M on a CPU without AVX-512; its first step is timed, no warm-up)
  --shape BxT             batch x tokens per step (default 4x256)
  --r N, --alpha N        LoRA rank and alpha (default 16, 32)
  --lr X                  AdamW learning rate (default 1e-4; betas 0.9/0.999, eps 1e-8, weight decay 0.01)
  --max-grad-norm X       global-norm clipping in both engines (default 1; 0 = off)
  --threads N             threads for both engines (default RLHF_NUM_THREADS or all usable cores)
  --no-peer               ours only (no PyTorch)
  --two-pass              our step without the loss gradient in the forward (forward, then a backward that
                          recomputes the LM head's logits): the path before lmGrad, for comparison
  --peer-wait-policy P    OMP_WAIT_POLICY for the peer: PASSIVE (default), ACTIVE, or default (leave unset)
  --python PATH           python with torch for the peer (default TORCH_PEER_PYTHON or /usr/bin/python3)
  --blas-dir DIR          folder with the OpenMP OpenBLAS libblas.so.3 (default TORCH_PEER_BLAS_DIR or
                          the libopenblas0-openmp package's folder)
  --out DIR               cache folder for model folders and adapters (default bench/out)`;

function parseArgs(argv) {
  const o = {
    configs: ['S', 'M'], json: false, modes: [...MODES], repeats: 5, warmup: 1, bf16PeerRepeats: 1, batch: 4, seq: 256,
    r: 16, alpha: 32, lr: 1e-4, maxGradNorm: 1, threads: 0, peer: true, twoPass: false,
    python: process.env.TORCH_PEER_PYTHON || '/usr/bin/python3', waitPolicy: 'PASSIVE', blasDir: process.env.TORCH_PEER_BLAS_DIR || '',
    out: path.join(__dirname, 'out'),
  };
  const int = (v, name) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${v}`);
    return n;
  };
  const num = (v, name) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`);
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
      case '--modes': o.modes = val().split(',').map((s) => s.trim().toLowerCase()).filter(Boolean); break;
      case '--repeats': o.repeats = Math.max(1, int(val(), a)); break;
      case '--warmup': o.warmup = int(val(), a); break;
      case '--bf16-peer-repeats': o.bf16PeerRepeats = Math.max(1, int(val(), a)); break;
      case '--shape': {
        const m = /^(\d+)x(\d+)$/.exec(val());
        if (!m) throw new Error('--shape wants BxT, e.g. 4x256');
        o.batch = Number(m[1]);
        o.seq = Number(m[2]);
        break;
      }
      case '--r': o.r = Math.max(1, int(val(), a)); break;
      case '--alpha': o.alpha = num(val(), a); break;
      case '--lr': o.lr = num(val(), a); break;
      case '--max-grad-norm': o.maxGradNorm = num(val(), a); break;
      case '--threads': o.threads = int(val(), a); break;
      case '--no-peer': o.peer = false; break;
      case '--two-pass': o.twoPass = true; break;
      case '--python': o.python = val(); break;
      case '--peer-wait-policy': {
        const v = val().toUpperCase();
        if (!['PASSIVE', 'ACTIVE', 'DEFAULT'].includes(v)) throw new Error('--peer-wait-policy wants PASSIVE, ACTIVE or default');
        o.waitPolicy = v === 'DEFAULT' ? '' : v;
        break;
      }
      case '--blas-dir': o.blasDir = val(); break;
      case '--out': o.out = path.resolve(val()); break;
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  for (const c of o.configs) if (!(c in CONFIGS)) throw new Error(`unknown config ${c}; configs: ${Object.keys(CONFIGS).join(', ')}`);
  for (const m of o.modes) if (!MODES.includes(m)) throw new Error(`unknown mode ${m}; modes: ${MODES.join(', ')}`);
  if (o.batch < 1 || o.seq < 2) throw new Error('--shape needs B >= 1 and T >= 2');
  return o;
}

// ---------------------------------------------------------------------------
// configs: the forward bench's (bench/forward.js), Llama-shaped, untied LM head

/** @type {Record<string, {hidden:number, layers:number, heads:number, kvHeads:number, ffn:number, vocab:number, maxPositions:number}>} */

const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

// ---------------------------------------------------------------------------
// small helpers (as in bench/forward.js)

const log = (...a) => console.error('[bench:train]', ...a);

/** Deterministic token ids (a 32-bit LCG, bench/forward.js's), identical for both engines. */




// ---------------------------------------------------------------------------
// parameter counts and training FLOPs (see bench/README.md, "Training step")

/**
 * `body`: every non-embedding parameter except the LM head (attention and MLP
 * matrices, norms); `head`: the LM head; `lora`: LoRA parameters of rank r on
 * the seven projections (r * (in + out) each).
 */
function modelCounts(c, r) {
  const hd = c.hidden / c.heads;
  const q = c.heads * hd;
  const kv = c.kvHeads * hd;
  const perLayer = c.hidden * q + 2 * c.hidden * kv + q * c.hidden + 3 * c.hidden * c.ffn + 2 * c.hidden;
  const body = c.layers * perLayer + c.hidden;
  const loraPerLayer = r * ((c.hidden + q) + 2 * (c.hidden + kv) + (q + c.hidden) + 2 * (c.hidden + c.ffn) + (c.ffn + c.hidden));
  return { body, head: c.vocab * c.hidden, embedding: c.vocab * c.hidden, lora: c.layers * loraPerLayer, layers: c.layers, attnDim: q };
}

/**
 * Training FLOPs of one step of `batch` sequences of `seq` tokens, bench.js's convention:
 * full: 6 * (body + head) per token (forward 2, input gradient 2, weight gradient 2);
 * LoRA: 4 * (body + head) (forward + input-gradient GEMMs of the frozen weights) + 6 * lora;
 * both plus causal attention 3x its forward (QK^T and PV: 4 * layers * heads * head_dim
 * per query-key pair, T(T+1)/2 pairs per sequence; the backward's four products are
 * twice the forward's two).
 */
function trainFlops(m, mode, batch, seq) {
  const tokens = batch * seq;
  const attention = 3 * batch * 4 * m.layers * m.attnDim * ((seq * (seq + 1)) / 2);
  return (mode === 'full' ? tokens * 6 * (m.body + m.head) : tokens * (4 * (m.body + m.head) + 6 * m.lora)) + attention;
}

// ---------------------------------------------------------------------------
// model folders (bench/forward.js's, cached under bench/out/models)


// ---------------------------------------------------------------------------
// the PyTorch peer: a long-lived process, one JSON command per line


// ---------------------------------------------------------------------------
// matmul peaks (bench/forward.js's: same shapes, same method)

/** Our GEMM through the op table (runOp 'gemm', C = A B^T as a linear layer calls it). Median GFLOP/s. */


// ---------------------------------------------------------------------------
// timing

function summary(runs) {
  if (!runs.length) return null;
  const ms = runs.map((r) => r.ms);
  const med = (k) => median(runs.map((r) => r[k]));
  return {
    median_ms: median(ms), min_ms: Math.min(...ms), max_ms: Math.max(...ms), repeats: ms.length, runs_ms: ms,
    phases_median_ms: { forward: med('forward_ms'), backward: med('backward_ms'), optimizer: med('optimizer_ms') },
  };
}

/**
 * Each engine's first step is its correctness-check step (its loss is kept);
 * it is a warm-up when `warmup` >= 1, else the first timed step. `oursPre`:
 * ours' first step, already run by the caller. Then the timed steps,
 * interleaved (the order flips every repeat) so a noisy neighbour hurts both.
 * An engine given as null is skipped.
 * @param {{ours: null | (() => Promise<any>), oursPre: any, peer: null | (() => Promise<any>), oursWarmup:number, oursRepeats:number, peerWarmup:number, peerRepeats:number}} w
 */
async function interleaved(w) {
  const o = [], p = [];
  const first = { ours: w.oursPre || null, peer: null };
  const load = [os.loadavg()[0]];
  let oursWarmup = w.oursWarmup, oursRepeats = w.oursRepeats;
  if (w.ours && w.oursPre) {
    if (oursWarmup > 0) oursWarmup--;
    else {
      o.push(w.oursPre);
      oursRepeats--;
    }
  }
  const runOurs = async (timed) => {
    const r = await w.ours();
    if (!first.ours) first.ours = r;
    if (timed) o.push(r);
  };
  const runPeer = async (timed) => {
    const r = await w.peer();
    if (!first.peer) first.peer = r;
    if (timed) p.push(r);
  };
  const nw = Math.max(w.ours ? oursWarmup : 0, w.peer ? w.peerWarmup : 0);
  for (let i = 0; i < nw; i++) {
    if (w.ours && i < oursWarmup) await runOurs(false);
    if (w.peer && i < w.peerWarmup) await runPeer(false);
  }
  const reps = Math.max(w.ours ? oursRepeats : 0, w.peer ? w.peerRepeats : 0);
  for (let r = 0; r < reps; r++) {
    const doOurs = w.ours && r < oursRepeats, doPeer = w.peer && r < w.peerRepeats;
    if (r % 2 === 0) {
      if (doOurs) await runOurs(true);
      if (doPeer) await runPeer(true);
    } else {
      if (doPeer) await runPeer(true);
      if (doOurs) await runOurs(true);
    }
  }
  load.push(os.loadavg()[0]);
  const last = { ours: o.length ? o[o.length - 1] : null, peer: p.length ? p[p.length - 1] : null };
  return { ours: summary(o), peer: summary(p), first, last, load };
}

// ---------------------------------------------------------------------------
// main

const ROW_LABEL = {
  full: 'full FT (fp32)',
  lora: 'LoRA r16 (fp32 base)',
  'lora-bf16': 'LoRA r16, base bf16',
};

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
  const bf16Note = info.cpu.avx512_bf16
    ? 'this CPU has AVX512_BF16'
    : `this CPU has no AVX512_BF16 (${info.cpu.avx512 ? 'AVX-512 without BF16' : 'AVX2 only'}): our bf16 weights are widened to fp32 in the kernels (fp32 FMAs), ` +
      'and torch 1.13 autocast gets no bf16 GEMM from oneDNN (reference bf16 GEMM)';
  const meta = {
    date: new Date().toISOString(),
    commit: gitCommit(),
    node: process.version,
    device,
    threads,
    cpu_avx512_bf16: !!info.cpu.avx512_bf16,
    host: { cpus: os.cpus().length, mem_gib: +(os.totalmem() / 2 ** 30).toFixed(1), loadavg: os.loadavg().map((x) => +x.toFixed(2)) },
    step: { batch: opts.batch, seq: opts.seq, loss: 'causal LM, mean over every target token', optimizer: 'adamw', lr: opts.lr, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01, max_grad_norm: opts.maxGradNorm, lora: { r: opts.r, alpha: opts.alpha, targets: LORA_TARGETS } },
  };
  const emit = (obj) => {
    if (opts.json) process.stdout.write(JSON.stringify(obj) + '\n');
  };
  const out = opts.json ? (s) => process.stderr.write(s + '\n') : (s) => process.stdout.write(s + '\n');

  let peer = null;
  let peerInfo = null;
  if (opts.peer) {
    peer = new Peer(opts, threads, 'torch_train_peer.py');
    peerInfo = await peer.request({ cmd: 'hello' });
    peerInfo.openmp_openblas = peerInfo.blas.some((p) => /openblas-openmp|libopenblasp-/.test(p));
    log(`torch ${peerInfo.torch}, ${peerInfo.threads} threads, BLAS: ${peerInfo.blas.join(', ') || 'none mapped'}`);
    if (!peerInfo.openmp_openblas)
      log(`WARNING: the peer did not load the OpenMP OpenBLAS (LD_LIBRARY_PATH=${peer.blasDir || '(not set)'}); its numbers are not comparable. Install libopenblas0-openmp or pass --blas-dir.`);
    if (peerInfo.threads !== threads) log(`WARNING: the peer runs ${peerInfo.threads} threads, ours ${threads}`);
  }
  meta.torch = peerInfo ? peerInfo.torch : null;
  meta.torch_blas = peerInfo ? peerInfo.blas : null;
  meta.torch_threads = peerInfo ? peerInfo.threads : null;
  meta.torch_omp_wait_policy = peerInfo ? peerInfo.omp_wait_policy || 'default' : null;
  emit({ name: 'meta', ...meta });

  const stepOpts = { optimizer: 'adamw', lr: opts.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: opts.maxGradNorm };
  const peerOpt = { lr: opts.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: opts.maxGradNorm };
  const B = opts.batch, T = opts.seq, tokens = B * T;

  const rows = [];
  const peaks = [];
  const t0 = now();
  try {
    for (const name of opts.configs) {
      const c = CONFIGS[name];
      if (T > c.maxPositions) throw new Error(`config ${name}: ${T} tokens is longer than max positions ${c.maxPositions}`);
      const dir = prepareFolder(lib, name, c, opts.out);
      const counts = modelCounts(c, opts.r);
      log(`${name}: dim ${c.hidden}, ${c.layers} layers, ${c.heads} heads, ${c.kvHeads} kv, ffn ${c.ffn}, vocab ${c.vocab}; ` +
        `body ${(counts.body / 1e6).toFixed(2)}M, head ${(counts.head / 1e6).toFixed(2)}M, embedding ${(counts.embedding / 1e6).toFixed(2)}M, LoRA r${opts.r} ${(counts.lora / 1e6).toFixed(3)}M`);

      // -- matmul peaks (same run, same shapes for both), measured before and after the config's rows:
      // on a shared machine one pass can catch a busy moment, and an MFU denominator that is too low
      // overstates MFU. Each engine's peak is its best shape of either pass.
      const shapes = gemmShapes(c, tokens);
      const measurePeaks = async (pass) => {
        const oursGemm = shapes.map((s) => ({ ...ourGemmRate(addon, s.m, s.n, s.k), what: s.what, pass }));
        const peerGemm = peer ? (await peer.request({ cmd: 'matmul', shapes: shapes.map((s) => [s.m, s.n, s.k]) })).shapes.map((r, i) => ({ ...r, what: shapes[i].what, pass })) : null;
        const oursPeak = Math.max(...oursGemm.map((r) => r.gflops));
        const peerPeak = peerGemm ? Math.max(...peerGemm.map((r) => r.gflops)) : 0;
        log(`fp32 GEMM peak (${pass} the rows): ours ${oursPeak.toFixed(1)} GFLOP/s, torch ${peer ? peerPeak.toFixed(1) : '-'} GFLOP/s`);
        return { oursGemm, peerGemm, oursPeak, peerPeak };
      };
      const pk1 = await measurePeaks('before');
      const pending = []; // the config's rows, finished once the second peak pass is in

      const ids = randomIds(B, T, c.vocab, 7);
      const idsTyped = ids.map((r) => Int32Array.from(r));
      const n = B * (T - 1);
      const adapterDir = path.join(opts.out, 'adapters', `train-${name}-r${opts.r}-a${opts.alpha}`);
      const adapterFile = path.join(adapterDir, 'adapter_model.safetensors');
      const fp32Loss = {}; // mode -> { ours, torch }: first-step losses, the reference of the bf16 row

      for (const mode of opts.modes) {
        const bf16 = mode === 'lora-bf16';
        const lora = mode !== 'full';
        // ours
        let model = null, tr = null, oursError = null, oursTrainable = null;
        try {
          model = await loadModel(dir, { device: 'cpu', weightsDtype: bf16 ? 'bf16' : 'f32' });
          const mi = model.info();
          if (mi.threads !== threads) log(`WARNING: our engine runs ${mi.threads} threads, asked for ${threads}`);
          if (bf16 && mi.weightsDtype !== 'bf16') throw new Error(`loadModel(..., { weightsDtype: 'bf16' }) gave weightsDtype ${mi.weightsDtype}`);
          tr = model.trainer();
          if (lora) {
            const a = tr.createLora({ r: opts.r, alpha: opts.alpha, targets: LORA_TARGETS, seed: 0 });
            if (a.parameters !== counts.lora) log(`WARNING: our adapter has ${a.parameters} parameters, expected ${counts.lora}`);
            // The peer starts from the same adapter (A from our seed, B zero), so both engines' losses and gradient norms compare.
            if (!bf16 || !fs.existsSync(adapterFile)) await tr.saveLora(adapterDir);
          } else {
            tr.enableFullTraining();
          }
          oursTrainable = tr.trainable().reduce((s, t) => s + t.shape.reduce((x, y) => x * y, 1), 0);
        } catch (e) {
          oursError = e && e.message ? e.message : String(e);
        }
        // the peer
        let peerLoad = null;
        if (peer) {
          peerLoad = await peer.request({ cmd: 'load', dir, mode: lora ? 'lora' : 'full', r: opts.r, alpha: opts.alpha, adapter: lora && fs.existsSync(adapterFile) ? adapterFile : null, optimizer: peerOpt });
          if (oursTrainable != null && peerLoad.trainable !== oursTrainable) log(`WARNING: trainable parameters differ: ours ${oursTrainable}, torch ${peerLoad.trainable}`);
        }
        const ourStep = async () => {
          const ta = now();
          // As the SFT stage runs it: the mean NLL's gradient (-1/n per token) is known before the
          // forward, which then computes the LM head's gradient in the same pass over the logits.
          const lmGrad = new Float32Array(n), zero = new Float32Array(1);
          addon.runOp('sft_loss', { n, logp: new Float32Array(n), loss: zero, dlogp: lmGrad });
          const f = /** @type {any} */ (await tr.forward(opts.twoPass ? { inputIds: idsTyped } : { inputIds: idsTyped, lmGrad }));
          const tb = now();
          const loss = new Float32Array(1);
          addon.runOp('sft_loss', { n, logp: f.flat.logp, loss });
          await tr.backward(opts.twoPass ? { dlogp: lmGrad } : {});
          const tc = now();
          const s = await tr.step(stepOpts);
          await tr.zeroGrad();
          const td = now();
          return { ms: td - ta, forward_ms: tb - ta, backward_ms: tc - tb, optimizer_ms: td - tc, loss: loss[0], grad_norm: s.gradNorm };
        };
        // Ours' first step runs here, so that an unsupported combination fails before the timing: its
        // error is recorded and the peer is timed alone. This step is ours' first warm-up (or, with
        // --warmup 0, its first timed step).
        let oursPre = null;
        if (!oursError) {
          try {
            oursPre = await ourStep();
          } catch (e) {
            oursError = e && e.message ? e.message : String(e);
          }
        }
        if (oursError) log(`${name} ${mode}: ours cannot train: ${oursError}`);
        const autocast = bf16 ? 'bf16' : undefined;
        const r = await interleaved({
          ours: oursError ? null : ourStep,
          oursPre,
          peer: peer && (() => peer.request({ cmd: 'step', ids, autocast })),
          oursWarmup: opts.warmup,
          oursRepeats: opts.repeats,
          peerWarmup: bf16 ? 0 : opts.warmup,
          peerRepeats: bf16 ? opts.bf16PeerRepeats : opts.repeats,
        });

        // -- checks
        let check = null;
        const fo = r.first.ours, fp = r.first.peer;
        if (!bf16) {
          fp32Loss[mode] = { ours: fo ? fo.loss : null, torch: fp ? fp.loss : null };
          if (fo && fp) {
            const rel = Math.abs(fo.loss - fp.loss) / Math.abs(fp.loss);
            const gRel = fp.grad_norm != null ? Math.abs(fo.grad_norm - fp.grad_norm) / Math.abs(fp.grad_norm) : null;
            const lo = r.last.ours, lp = r.last.peer;
            check = {
              first_loss_ours: fo.loss, first_loss_torch: fp.loss, loss_rel_diff: rel, tolerance: 1e-4,
              first_grad_norm_ours: fo.grad_norm, first_grad_norm_torch: fp.grad_norm, grad_norm_rel_diff: gRel,
              last_loss_ours: lo ? lo.loss : null, last_loss_torch: lp ? lp.loss : null,
              last_loss_rel_diff: lo && lp ? Math.abs(lo.loss - lp.loss) / Math.abs(lp.loss) : null,
              ok: rel < 1e-4,
            };
            log(`${name} ${mode} check: first-step loss ours ${fo.loss.toFixed(6)}, torch ${fp.loss.toFixed(6)}, rel diff ${rel.toExponential(2)}` +
              (gRel != null ? `; grad norm ours ${fo.grad_norm.toFixed(6)}, torch ${fp.grad_norm.toFixed(6)}, rel diff ${gRel.toExponential(2)}` : '') +
              (check.ok ? '' : '  <-- DISAGREE'));
          }
        } else {
          // bf16 rounds differently in each engine: each is checked against its own fp32 first-step loss
          // (LoRA B starts at zero, so the first-step loss is the base model's, whatever the adapter).
          const ref = fp32Loss.lora || fp32Loss.full || {};
          const tol = 0.05;
          const d = (x, y) => (x != null && y != null ? Math.abs(x - y) : null);
          check = {
            tolerance_abs: tol,
            first_loss_ours_bf16: fo ? fo.loss : null, first_loss_ours_f32: ref.ours ?? null, abs_diff_ours: d(fo && fo.loss, ref.ours),
            first_loss_torch_bf16: fp ? fp.loss : null, first_loss_torch_f32: ref.torch ?? null, abs_diff_torch: d(fp && fp.loss, ref.torch),
          };
          const diffs = [check.abs_diff_ours, check.abs_diff_torch].filter((x) => x != null);
          check.ok = diffs.length ? diffs.every((x) => x < tol) : null;
          log(`${name} ${mode} check (|first-step loss bf16 - fp32| of the same engine, < ${tol}): ours ${check.abs_diff_ours == null ? '-' : check.abs_diff_ours.toExponential(2)}, ` +
            `torch ${check.abs_diff_torch == null ? '-' : check.abs_diff_torch.toExponential(2)}`);
        }

        const flops = trainFlops(counts, lora ? 'lora' : 'full', B, T);
        pending.push({ mode, bf16, lora, flops, r, check, oursError, oursTrainable, peerLoad });
        log(`${name} ${mode}: ours ${r.ours ? (tokens / (r.ours.median_ms / 1e3)).toFixed(1) + ' tok/s' : 'n/a'}` + (r.peer ? `, torch ${(tokens / (r.peer.median_ms / 1e3)).toFixed(1)} tok/s` : ''));
        if (model) model.dispose();
      }

      const pk2 = await measurePeaks('after');
      const oursPeak = Math.max(pk1.oursPeak, pk2.oursPeak);
      const peerPeak = Math.max(pk1.peerPeak, pk2.peerPeak);
      const ceiling = Math.max(oursPeak, peerPeak);
      const ceilingSource = peerPeak > oursPeak ? 'torch.mm (OpenBLAS)' : 'our GEMM';
      const oursGemm = [...pk1.oursGemm, ...pk2.oursGemm];
      const peerGemm = peer ? [...pk1.peerGemm, ...pk2.peerGemm] : null;
      peaks.push({ config: name, oursPeak, peerPeak, ceiling, ceilingSource, passes: { ours: [pk1.oursPeak, pk2.oursPeak], torch: [pk1.peerPeak, pk2.peerPeak] } });
      emit({ name: 'matmul', engine: 'ours', dtype: 'f32', device, config: name, peak_gflops: oursPeak, shapes: oursGemm });
      if (peerGemm) emit({ name: 'matmul', engine: 'torch', dtype: 'f32', device, config: name, peak_gflops: peerPeak, shapes: peerGemm, blas: peerInfo.blas });
      log(`fp32 GEMM peak ${name}: ours ${oursPeak.toFixed(1)}, torch ${peer ? peerPeak.toFixed(1) : '-'} GFLOP/s; MFU denominator ${ceiling.toFixed(1)} (${ceilingSource})`);

      for (const { mode, bf16, lora, flops, r, check, oursError, oursTrainable, peerLoad } of pending) {
        const rate = (s) => (s ? { tokens_per_sec: tokens / (s.median_ms / 1e3), mfu: flops / (s.median_ms / 1e3) / (ceiling * 1e9) } : null);
        const o = rate(r.ours), p = rate(r.peer);
        const row = {
          name: 'train', mode, row: ROW_LABEL[mode], device, config: name, batch: B, seq: T, tokens, flops,
          weights_dtype: bf16 ? 'bf16' : 'f32', trainable_params: oursTrainable ?? (peerLoad ? peerLoad.trainable : null),
          ours: o
            ? { tokens_per_sec: o.tokens_per_sec, mfu: o.mfu, mfu_own_peak: flops / (r.ours.median_ms / 1e3) / (oursPeak * 1e9), ...r.ours }
            : { error: oursError },
          peer: p
            ? { engine: `torch ${peerInfo.torch} eager autograd${bf16 ? ', fp32 weights, bf16 autocast forward' : ', fp32'}${lora ? ', LoRA modules (PEFT formula)' : ''}, torch.optim.AdamW`,
                tokens_per_sec: p.tokens_per_sec, mfu: p.mfu, mfu_own_peak: flops / (r.peer.median_ms / 1e3) / (peerPeak * 1e9), trainable_params: peerLoad.trainable, ...r.peer }
            : null,
          ratio: o && p ? o.tokens_per_sec / p.tokens_per_sec : null,
          peak_gflops: ceiling, peak_source: ceilingSource, ours_gemm_peak_gflops: oursPeak, torch_gemm_peak_gflops: peer ? peerPeak : null,
          check,
          loadavg_1min: r.load.map((x) => +x.toFixed(2)),
        };
        rows.push(row);
        emit(row);
      }
    }
  } finally {
    if (peer) peer.close();
  }
  const totalS = (now() - t0) / 1e3;
  emit({ name: 'done', seconds: totalS });

  // -- table
  const f1 = (x) => (x == null ? '-' : x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const pct = (x) => (x == null ? '-' : (100 * x).toFixed(1) + '%');
  const ms = (s) => (s == null || s.median_ms == null ? '-' : `${s.median_ms.toFixed(0)} [${s.min_ms.toFixed(0)}-${s.max_ms.toFixed(0)}]`);
  const phases = (s) => (s == null || s.phases_median_ms == null ? '-' : `${s.phases_median_ms.forward.toFixed(0)}/${s.phases_median_ms.backward.toFixed(0)}/${s.phases_median_ms.optimizer.toFixed(0)}`);
  const e1 = (x) => (x == null ? '-' : x.toExponential(1));
  out('');
  out(`date ${meta.date}  commit ${meta.commit}  node ${meta.node}${meta.torch ? `  torch ${meta.torch}` : ''}`);
  out(`device ${device}; load avg at start ${meta.host.loadavg.join(' ')}`);
  if (peerInfo) out(`torch BLAS: ${peerInfo.blas.join(', ')}${peerInfo.openmp_openblas ? '' : '  (NOT the OpenMP OpenBLAS)'}; torch threads ${peerInfo.threads}, OMP_WAIT_POLICY ${meta.torch_omp_wait_policy}`);
  out(`step: batch ${B} x ${T} tokens, causal-LM loss over every token, AdamW (lr ${opts.lr}, wd 0.01), clip ${opts.maxGradNorm}; LoRA r ${opts.r}, alpha ${opts.alpha} on q,k,v,o,gate,up,down`);
  for (const p of peaks)
    out(`fp32 matmul peak ${p.config} (best shape; passes before/after the rows): ours ${p.oursPeak.toFixed(1)} (${p.passes.ours.map((x) => x.toFixed(1)).join('/')}), ` +
      `torch ${p.peerPeak ? `${p.peerPeak.toFixed(1)} (${p.passes.torch.map((x) => x.toFixed(1)).join('/')})` : '-'} GFLOP/s -> MFU denominator ${p.ceiling.toFixed(1)} GFLOP/s (${p.ceilingSource})`);
  out('');
  const head = ['config', 'row', 'ours tok/s', 'torch tok/s', 'ours/torch', 'MFU ours', 'MFU torch', 'ours ms med [min-max]', 'torch ms med [min-max]', 'ours fwd/bwd/opt ms', 'torch fwd/bwd/opt ms', 'load', 'check'];
  const checkCell = (r) => {
    const k = r.check;
    if (k == null) return '-';
    if (r.mode === 'lora-bf16')
      return `|loss bf16 - fp32|: ours ${e1(k.abs_diff_ours)}, torch ${e1(k.abs_diff_torch)}${k.ok === false ? ' FAIL' : ''}`;
    return `loss rel ${e1(k.loss_rel_diff)}, |g| rel ${e1(k.grad_norm_rel_diff)}${k.ok ? '' : ' FAIL'}`;
  };
  const body = rows.map((r) => [
    r.config, r.row + (r.mode === 'lora-bf16' ? ' (torch: bf16 autocast)' : ''), r.ours.error ? 'n/a*' : f1(r.ours.tokens_per_sec), f1(r.peer?.tokens_per_sec), r.ratio == null ? '-' : r.ratio.toFixed(2),
    pct(r.ours.mfu), pct(r.peer?.mfu), r.ours.error ? '-' : ms(r.ours), ms(r.peer), r.ours.error ? '-' : phases(r.ours), phases(r.peer),
    r.loadavg_1min.map((x) => x.toFixed(1)).join('→'), checkCell(r),
  ]);
  out('| ' + head.join(' | ') + ' |');
  out('|' + head.map(() => '---').join('|') + '|');
  for (const b of body) out('| ' + b.join(' | ') + ' |');
  out('');
  out('tok/s: batch x tokens per step / median step time (forward + loss + backward + clip + AdamW + zero grad). fwd/bwd/opt: forward; loss + backward; clip + AdamW + zero grad.');
  out('MFU: training FLOPs / step time / the fp32 matmul peak above; FLOPs per token: full 6 x (non-embedding body + LM head params), ' +
    'LoRA 4 x (frozen body + LM head params) + 6 x LoRA params; plus causal attention (QK^T, PV) 3 x its forward, as bench.js counts it.');
  out('load: the 1-minute load average before and after the row\'s steps (other processes share the cores).');
  if (rows.some((r) => r.mode === 'lora-bf16'))
    out(`bf16 row: ours loadModel(dir, { weightsDtype: 'bf16' }) + createLora, torch the fp32 LoRA model with its forward under torch.autocast('cpu', bfloat16); ` +
      `${bf16Note}. Same fp32 MFU denominator. The peer's bf16 row is ${opts.bf16PeerRepeats} timed step(s), its first step included (no warm-up).`);
  out('check: |first-step loss ours - torch| / |torch| (same weights, same ids; must be < 1e-4) and the same for the first step\'s global gradient norm (informational: ' +
    'torch 1.13 takes fp32 norms of large CPU tensors with errors up to ~1e-3, e.g. the LM head gradient\'s; ours agrees with a float64 norm of torch\'s gradients). ' +
    'LoRA: torch starts from our adapter (A from our seed, B zero).');
  if (rows.some((r) => (r.ours.mfu ?? 0) > 1 || (r.peer?.mfu ?? 0) > 1))
    out('MFU above 100%: the GEMM peaks were measured at busier moments than those steps (shared cores); read MFU as +-30% here, and the ours/torch ratio (interleaved) as the comparison.');
  for (const r of rows) if (r.ours.error) out(`* ${r.config} ${r.row}: ours could not train: ${r.ours.error}`);
  out(`repeats: ${opts.repeats} timed steps per engine after ${opts.warmup} warm-up (the first-step correctness check), interleaved ours/torch; total ${totalS.toFixed(0)} s`);
  const bad = rows.filter((r) => r.check && r.check.ok === false);
  if (bad.length) out(`NOTE: checks failed for ${bad.map((r) => `${r.config} ${r.mode}`).join(', ')}`);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
