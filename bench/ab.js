#!/usr/bin/env node
// @ts-check
/**
 * A/B of two builds of this package inside one process: both addons loaded
 * side by side, calls alternating (A then B, then B then A), so that the
 * host's load, which on a shared machine moves step times by 10-30% from one
 * minute to the next, hits both sides of every pair alike. Reports each
 * side's median and the median of the per-pair ratios A/B (> 1: B faster).
 *
 *   node bench/ab.js --b DIR_B [--a DIR_A] [--workload step-full,step-lora] [--pairs 16]
 *
 * DIR_A / DIR_B: package roots with `dist/` and `build/Release/rlhf_native.node`
 * (e.g. a git worktree of another commit after `npm install`). This checkout by
 * default for A. Workloads: one SFT training step on config M (bench/common.js),
 * batch 4 x 256, as bench/train.js times it (lmGrad forward, backward, AdamW with
 * clipping, zero grad): step-full, step-lora (r 16 on all seven projections).
 * Single kernels: bench/step_shapes.js --addons (the same alternation per op).
 */
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { CONFIGS, median, now, randomIds, prepareFolder } = require('./common');

const ROOT = path.resolve(__dirname, '..');
const USAGE = `usage: node bench/ab.js --b DIR [--a DIR] [--workload step-full,step-lora] [--pairs N] [--out DIR]
  --a DIR, --b DIR   package roots (dist/ and build/Release/rlhf_native.node); --a defaults to this checkout
  --workload LIST    step-full, step-lora (default both)
  --pairs N          timed pairs per workload (default 16)
  --out DIR          cache folder for the model folder (default bench/out)`;

function parseArgs(argv) {
  const o = { a: ROOT, b: '', workloads: ['step-full', 'step-lora'], pairs: 0, out: path.join(__dirname, 'out') };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value\n${USAGE}`);
      return v;
    };
    if (arg === '--a') o.a = path.resolve(val());
    else if (arg === '--b') o.b = path.resolve(val());
    else if (arg === '--workload') o.workloads = val().split(',');
    else if (arg === '--pairs') o.pairs = Number(val());
    else if (arg === '--out') o.out = path.resolve(val());
    else if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${arg}\n${USAGE}`);
  }
  if (!o.b) throw new Error(`--b is required\n${USAGE}`);
  for (const w of o.workloads) if (!['step-full', 'step-lora'].includes(w)) throw new Error(`unknown workload ${w}\n${USAGE}`);
  if (o.pairs && !(Number.isInteger(o.pairs) && o.pairs > 0)) throw new Error(`--pairs must be a positive integer\n${USAGE}`);
  for (const d of [o.a, o.b])
    for (const f of ['dist/lib/index.js', 'build/Release/rlhf_native.node'])
      if (!fs.existsSync(path.join(d, f))) throw new Error(`${path.join(d, f)} is missing: build that package first (npm install)`);
  return o;
}

/** Runs `pairs` alternating pairs of fa / fb (async, each returning ms) and summarises them. */
async function alternate(fa, fb, pairs) {
  await fa();
  await fb();
  const ta = [], tb = [], ratio = [];
  for (let i = 0; i < pairs; i++) {
    let da, db;
    if (i % 2 === 0) {
      da = await fa();
      db = await fb();
    } else {
      db = await fb();
      da = await fa();
    }
    ta.push(da);
    tb.push(db);
    ratio.push(da / db);
  }
  return { a: median(ta), b: median(tb), ratio: median(ratio), min: Math.min(...ratio), max: Math.max(...ratio) };
}

const fmt = (name, r) =>
  `${name.padEnd(34)} A ${r.a.toFixed(2).padStart(9)} ms  B ${r.b.toFixed(2).padStart(9)} ms  median A/B ${r.ratio.toFixed(3)} [${r.min.toFixed(3)}-${r.max.toFixed(3)}]`;

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const sides = [o.a, o.b].map((root) => ({
    root,
    lib: require(path.join(root, 'dist/lib/index.js')),
    addon: require(path.join(root, 'build/Release/rlhf_native.node')),
  }));
  console.log(`A: ${o.a}\nB: ${o.b}\n(> 1: B faster; pairs alternate which side runs first)`);
  const c = CONFIGS.M;
  const B = 4, T = 256, n = B * (T - 1);
  for (const w of o.workloads) {
    const dir = prepareFolder(sides[0].lib, 'M', c, o.out);
    const ids = randomIds(B, T, c.vocab, 7).map((r) => Int32Array.from(r));
    const stepOpts = { optimizer: 'adamw', lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1 };
    const trainers = [];
    for (const s of sides) {
      const model = await s.lib.loadModel(dir, { device: 'cpu' });
      const tr = model.trainer();
      if (w === 'step-full') tr.enableFullTraining();
      else tr.createLora({ r: 16, alpha: 32, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], seed: 0 });
      trainers.push({ model, tr, addon: s.addon });
    }
    const step = ({ tr, addon }) => async () => {
      const t0 = now();
      const lmGrad = new Float32Array(n);
      addon.runOp('sft_loss', { n, logp: new Float32Array(n), loss: new Float32Array(1), dlogp: lmGrad });
      await tr.forward({ inputIds: ids, lmGrad });
      await tr.backward({});
      await tr.step(stepOpts);
      await tr.zeroGrad();
      return now() - t0;
    };
    console.log(fmt(`${w} (M, 4 x 256)`, await alternate(step(trainers[0]), step(trainers[1]), o.pairs || 16)));
    for (const t of trainers) t.model.dispose();  // frees both models before the next workload loads its own
  }
}

main().catch((e) => {
  console.error(e && e.message ? e.message : e);
  process.exit(1);
});
