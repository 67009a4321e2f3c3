#!/usr/bin/env node
// Rebuilds the demo's pretrained base model (models/demo-base): a tiny Llama
// with a BPE tokenizer trained on the demo world's text, pretrained on the
// world's corpus with the SFT stage ({text} rows, full training). Deterministic
// for a given seed on a given machine. Needs the compiled package (npm run
// build) and the native addon. See docs/demo.md.
//
//   node scripts/make-demo-base.js [--out models/demo-base] [--seed 0] [--steps N] [--rows N]
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) {
    console.error(`make-demo-base: --${name} needs a value`);
    process.exit(2);
  }
  return v;
};
if (args.includes('--help') || args.includes('-h')) {
  console.log('usage: node scripts/make-demo-base.js [--out models/demo-base] [--seed N] [--steps N] [--rows N] [--work DIR]');
  process.exit(0);
}

const dist = path.join(root, 'dist', 'lib', 'demo', 'index.js');
if (!fs.existsSync(dist)) {
  console.error('make-demo-base: dist/ is missing; run `npm run build` first');
  process.exit(1);
}
const demo = require(dist);

const out = path.resolve(opt('out', path.join(root, 'models', 'demo-base')));
const num = (name) => {
  const v = opt(name, undefined);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`make-demo-base: --${name} must be a non-negative integer, got ${v}`);
    process.exit(2);
  }
  return n;
};

(async () => {
  const t0 = Date.now();
  const r = await demo.makeDemoBase({
    out,
    seed: num('seed'),
    steps: num('steps'),
    rows: num('rows'),
    work: opt('work', undefined),
    log: (line) => console.error(line),
    onStep: (m, info) => {
      if (m.step % 25 === 0 || m.eval_loss !== undefined || m.step === info.totalSteps)
        console.error(
          `step ${m.step}/${info.totalSteps}  loss ${m.loss.toFixed(4)}` +
            (m.eval_loss !== undefined ? `  eval ${m.eval_loss.toFixed(4)}` : '') +
            `  ${Math.round(m.tokens_per_sec)} tok/s  ${m.elapsed_s.toFixed(0)} s`,
        );
    },
  });
  console.log(
    `wrote ${r.out}: ${r.parameters} parameters, vocab ${r.tokenizerVocabSize}, ${(r.bytes / 1e6).toFixed(2)} MB; ` +
      `${r.steps} steps over ${r.trainTokens} tokens; held-out loss ${r.initialEvalLoss.toFixed(3)} -> ${r.evalLoss.toFixed(3)}; ` +
      `${((Date.now() - t0) / 1000).toFixed(0)} s`,
  );
})().catch((e) => {
  console.error(`make-demo-base: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
