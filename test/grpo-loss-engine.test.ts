/**
 * The GRPO family's losses through real training forwards on the tiny Llama
 * of the training fixtures, with a LoRA policy whose B matrices are nonzero:
 *
 *   1. RLOO's sequence-level surrogate (ppoLoss with `sequence: true`):
 *        loss = mean_rows max(-A R, -A clip(R, 1 - eps_lo, 1 + eps_hi)),
 *        R = exp(sum_t mask_t logp_t - oldLogp_row)
 *      against float64 from a plain forward's log-probs; the parameter
 *      gradients against the float64 chain rule (dloss/dlogp_t =
 *      mask_t dloss/dS_row, uploaded through backward({dlogp})) and against
 *      central finite differences of the float64 loss along two directions
 *      in parameter space (the gradient's and a random one).
 *   2. lossWeights and minibatchGradients: a minibatch split into
 *      micro-batches of 1, 2 and all samples gives the same loss and the same
 *      parameter gradients, for loss types dapo, grpo and dr_grpo (with a k3
 *      KL term times the ratio) and for rloo; each loss equals the float64
 *      formula of its averaging (TRL 1.13's loss_type).
 *
 * Bounds: a row's log-prob sum S is a sum of fp32 log-probs rounded once, and
 * S - oldLogp is formed in fp32, so the ratio is good to ~4 EPS32 (|S| + |old|)
 * relative; the loss is held to that times |A| R per row (plus 1e-6 for the
 * plain forward's own rounding). Gradients of two paths that differ only in
 * summation order: 1e-5 of the largest element of each tensor.
 */
import t from 'tap';
import type { Test } from 'tap';
import * as path from 'node:path';
import { loadModel, type Model } from '../lib/engine/model';
import type { Trainer } from '../lib/engine/train';
import { spanMask } from '../lib/engine/objectives';
import { lossWeights, minibatchGradients, type GrpoLossOptions, type GrpoSample } from '../lib/stages/grpo/loss';
import { Rng } from './helpers/ref';

const FIXTURE = path.join(__dirname, 'fixtures', 'train-golden', 'models', 'llama');
const EPS32 = 2 ** -24;
const TEMP = 0.9;

async function setup(): Promise<{ m: Model; tr: Trainer }> {
  const m = await loadModel(FIXTURE, { device: 'cpu' });
  const tr = m.trainer();
  tr.createLora({ name: 'policy', r: 4, alpha: 8, seed: 7, targets: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
  const rng = new Rng(17);
  for (const { name, shape } of tr.trainable()) if (name.includes('lora_B')) tr.write(name, rng.normals(shape.reduce((a, b) => a * b, 1), 0.05));
  await tr.zeroGrad();
  return { m, tr };
}

const grads = (tr: Trainer) => Object.fromEntries(tr.trainable().map((x) => [x.name, Float64Array.from(tr.read(x.name, 'grad'))]));
const params = (tr: Trainer) => Object.fromEntries(tr.trainable().map((x) => [x.name, tr.read(x.name)]));

/** max over tensors of max|a - b| / max|b|; also whether every tensor of b is nonzero. */
function gradDiff(a: Record<string, Float64Array>, b: Record<string, Float64Array>) {
  let worst = 0, allNonzero = true;
  for (const k of Object.keys(b)) {
    let num = 0, den = 0;
    for (let i = 0; i < b[k].length; i++) (num = Math.max(num, Math.abs(a[k][i] - b[k][i]))), (den = Math.max(den, Math.abs(b[k][i])));
    if (den === 0) allNonzero = false;
    worst = Math.max(worst, den > 0 ? num / den : num);
  }
  return { worst, allNonzero };
}

// ------------------------------------------------------------------ 1. sequence-level surrogate

// Prompt + response rows; the response of row b starts at PROMPT[b].
const ROWS = [
  [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19],
  [8, 4, 22, 51, 6, 13, 2],
  [1, 70, 120, 7, 99, 250, 14, 3, 81, 2, 5],
  [30, 31, 32, 33, 34, 200, 201, 202],
  [44, 45, 46, 47, 48, 49, 50, 51, 52],
];
const PROMPT = [4, 3, 6, 5, 2];
// Log-ratios S - old and advantages: inside the range; above 1.28 with A > 0 (clipped); below 0.8 with A > 0
// (unclipped); above with A < 0 (unclipped); in (1.2, 1.28) with A > 0 (clipped only by symmetric bounds).
const LOG_RATIO = [0.1, 0.5, -0.5, 0.35, Math.log(1.24)];
const ADV = [1.2, 0.8, 0.6, -0.9, 0.7];
const EPS_LO = 0.2, EPS_HI = 0.28;

const SEQ = Math.max(...ROWS.map((r) => r.length));
const SPANS = ROWS.map((r, b): [number, number] => [PROMPT[b] - 1, r.length - 1]);
const MASK = spanMask(SEQ, SPANS);

async function rowSums(m: Model): Promise<number[]> {
  const f = await m.forward({ inputIds: ROWS, logp: true, temperature: TEMP });
  return SPANS.map(([a, e], b) => {
    let s = 0;
    for (let t = a; t < e; t++) s += f.logp![b][t];
    return s;
  });
}

/** The float64 surrogate over rows and dloss/dS per row (denom: rows, or the given divisor). */
function seqRef(S: number[], old: number[], denom = S.length) {
  const lo = Math.fround(1 - Math.fround(EPS_LO)), hi = Math.fround(1 + Math.fround(EPS_HI));
  let loss = 0, clip = 0, ratio = 0, tol = 1e-6;
  const dS: number[] = [];
  S.forEach((s, b) => {
    const A = ADV[b], r = Math.exp(s - old[b]);
    const l1 = -A * r, l2 = -A * Math.min(Math.max(r, lo), hi);
    loss += Math.max(l1, l2);
    clip += l2 > l1 ? 1 : 0;
    ratio += r;
    dS.push((l2 > l1 ? 0 : -A * r) / denom);
    tol += (Math.abs(A) * r * 4 * EPS32 * (Math.abs(s) + Math.abs(old[b]) + 1)) / denom;
  });
  return { loss: loss / denom, clip: clip / denom, ratio: ratio / denom, dS, tol };
}

t.test('sequence-level surrogate: loss and statistics vs float64, gradients vs the chain rule and finite differences', async (t) => {
  const { m, tr } = await setup();
  t.teardown(() => m.dispose());
  const S = await rowSums(m);
  const old = S.map((s, b) => Math.fround(s - LOG_RATIO[b]));
  const ref = seqRef(S, old);
  t.ok(ref.clip > 0 && ref.clip < 1, `some rows clipped, some not (clipfrac ${ref.clip})`);

  const call = async (denom?: number) => {
    await tr.zeroGrad();
    await tr.forward({ inputIds: ROWS, logp: true, temperature: TEMP, download: false });
    const s = await tr.ppoLoss({ mask: MASK, sequence: true, oldLogp: Float32Array.from(old), advantages: Float32Array.from(ADV), clipRange: EPS_LO, clipRangeHigh: EPS_HI, ...(denom ? { denom } : {}) });
    await tr.backward({});
    return { s, g: grads(tr) };
  };
  const { s, g } = await call();
  t.ok(Math.abs(s.loss - ref.loss) <= ref.tol, `loss ${s.loss} vs float64 ${ref.loss} (|diff| ${Math.abs(s.loss - ref.loss).toExponential(2)} <= ${ref.tol.toExponential(2)})`);
  t.ok(Math.abs(s.pgLoss - ref.loss) <= ref.tol, 'pgLoss is the loss');
  t.equal(s.tokens, ROWS.length, 'the count is of rows');
  t.ok(Math.abs(s.clipfrac - ref.clip) < 1e-7, `clipfrac ${s.clipfrac} = ${ref.clip}`);
  t.ok(Math.abs(s.ratio - ref.ratio) < 1e-5 * ref.ratio, `mean ratio ${s.ratio} vs ${ref.ratio}`);
  const akl = LOG_RATIO.reduce((a, d) => a + 0.5 * d * d, 0) / ROWS.length;
  t.ok(Math.abs(s.approxKl - akl) < 1e-5, `approxKl ${s.approxKl} vs ${akl}`);

  // A divisor other than the rows (a minibatch split in micro-batches): everything over denom.
  const d = await call(12.5);
  const refD = seqRef(S, old, 12.5);
  t.ok(Math.abs(d.s.loss - refD.loss) <= refD.tol, `denom 12.5: loss ${d.s.loss} vs ${refD.loss}`);
  t.ok(gradDiff(d.g, Object.fromEntries(Object.entries(g).map(([k, v]) => [k, v.map((x) => (x * ROWS.length) / 12.5)]))).worst < 1e-6, 'denom 12.5: gradients scale by rows / denom');

  // The chain rule: dloss/dlogp_t = mask_t dloss/dS_row, uploaded as a host gradient.
  const w = SEQ - 1, dlogp = new Float32Array(ROWS.length * w);
  SPANS.forEach(([a, e], b) => dlogp.fill(ref.dS[b], b * w + a, b * w + e));
  await tr.zeroGrad();
  await tr.forward({ inputIds: ROWS, logp: true, temperature: TEMP });
  await tr.backward({ dlogp });
  const chain = grads(tr);
  const cd = gradDiff(g, chain);
  t.ok(cd.allNonzero, 'every trainable tensor has a nonzero gradient');
  t.ok(cd.worst < 1e-5, `gradients equal the float64 chain rule's: worst max|diff|/max|ref| ${cd.worst.toExponential(2)}`);

  // Finite differences of the float64 loss along direction u: (L(p + h u) - L(p - h u)) / 2h = g . u.
  const p0 = params(tr), names = Object.keys(p0);
  const rng = new Rng(23);
  const dirs: [string, Record<string, Float64Array>][] = [
    ['the gradient', g],
    ['a random direction', Object.fromEntries(names.map((k) => [k, Float64Array.from(rng.normals(p0[k].length))]))],
  ];
  for (const [what, dir] of dirs) {
    let norm = 0, gu = 0;
    for (const k of names) for (let i = 0; i < dir[k].length; i++) (norm += dir[k][i] ** 2), (gu += dir[k][i] * g[k][i]);
    norm = Math.sqrt(norm);
    gu /= norm;
    // A step that moves the loss by ~2e-3: well above the forward's fp32 noise (~1e-6), small enough to stay off the clip bounds.
    const h = 2e-3 / Math.max(Math.abs(gu), 1e-3);
    const at = async (sign: number) => {
      for (const k of names) tr.write(k, Float32Array.from(p0[k], (v, i) => v + (sign * h * dir[k][i]) / norm));
      return seqRef(await rowSums(m), old).loss;
    };
    const fd = ((await at(1)) - (await at(-1))) / (2 * h);
    for (const k of names) tr.write(k, p0[k]);
    t.ok(Math.abs(fd - gu) <= 2e-2 * Math.abs(gu) + 1e-4, `along ${what}: finite difference ${fd.toExponential(4)} vs g.u ${gu.toExponential(4)}`);
  }
});

// ------------------------------------------------------------------ 2. lossWeights and micro-batches

t.test('lossWeights: the divisor and the token weights of each loss type (hand-worked)', async (t) => {
  const mk = (n: number) => ({ response: new Array(n).fill(9) }) as unknown as GrpoSample;
  const mb = [mk(2), mk(3), mk(5)];
  const w = (o: Parameters<typeof lossWeights>[1]) => {
    const r = lossWeights(mb, o);
    return [r.denom, ...mb.map(r.weight)];
  };
  t.same(w({ sequence: false, lossType: 'dapo', maxNewTokens: 8 }), [10, 1, 1, 1], 'dapo: the minibatch\'s 2 + 3 + 5 tokens');
  t.same(w({ sequence: false, lossType: 'bnpo', maxNewTokens: 8 }), [10, 1, 1, 1], 'bnpo: the same here');
  t.same(w({ sequence: false, lossType: 'grpo', maxNewTokens: 8 }), [3, 1 / 2, 1 / 3, 1 / 5], 'grpo: 3 sequences, each token weighted 1/length');
  t.same(w({ sequence: false, lossType: 'dr_grpo', maxNewTokens: 8 }), [24, 1, 1, 1], 'dr_grpo: 3 sequences x 8 tokens');
  t.same(w({ sequence: true, lossType: 'dapo', maxNewTokens: 8 }), [3, 1, 1, 1], 'sequence-level (rloo): 3 sequences');
});

const PROMPTS = [
  [1, 40, 41, 42, 43],
  [1, 50, 51, 52],
];
const RESPONSES = [
  [60, 61, 2],
  [62, 63, 64, 65, 66, 67],
  [68],
  [70, 71, 72, 2],
  [73, 74],
  [75, 76, 77, 78, 79],
];
const MAX_NEW = 6;

/** The samples, with the policy's own log-probs shifted per token (some ratios outside each bound). */
async function samples(m: Model): Promise<GrpoSample[]> {
  const rows = RESPONSES.map((r, i) => [...PROMPTS[Math.floor(i / 3)], ...r]);
  const f = await m.forward({ inputIds: rows, logp: true, temperature: TEMP });
  const rng = new Rng(31);
  const advs = [0.9, -1.1, 0.2, 1.3, -0.4, -0.9];
  return RESPONSES.map((resp, i) => {
    const P = PROMPTS[Math.floor(i / 3)].length;
    const cur = f.logp![i].subarray(P - 1, P - 1 + resp.length);
    const oldLogp = Float32Array.from(cur, (v) => v - rng.uniform(-0.4, 0.4));
    return {
      prompt: { line: Math.floor(i / 3) + 1, text: '', ids: PROMPTS[Math.floor(i / 3)] },
      response: resp,
      eos: resp[resp.length - 1] === 2,
      reward: 0,
      oldLogp,
      refLogp: Float32Array.from(cur, (v) => v + rng.normal() * 0.3),
      advantages: new Float32Array(resp.length).fill(advs[i]),
      advantage: advs[i],
    };
  });
}

/** The float64 loss of the minibatch from the current per-token log-probs, as each loss type averages. */
async function lossRef(m: Model, S: GrpoSample[], o: GrpoLossOptions): Promise<number> {
  const f = await m.forward({ inputIds: S.map((s) => [...s.prompt.ids, ...s.response]), logp: true, temperature: o.temperature });
  const lo = Math.fround(1 - Math.fround(o.epsilon)), hi = Math.fround(1 + Math.fround(o.epsilonHigh));
  const surrogate = (r: number, A: number) => Math.max(-A * r, -A * Math.min(Math.max(r, lo), hi));
  let total = 0, tokens = 0;
  S.forEach((s, i) => {
    const P = s.prompt.ids.length;
    const lp = Array.from(f.logp![i].subarray(P - 1, P - 1 + s.response.length));
    if (o.sequence) {
      const d = lp.reduce((a, x) => a + x, 0) - s.oldLogp.reduce((a, x) => a + x, 0);
      total += surrogate(Math.exp(d), s.advantage);
      return;
    }
    let row = 0;
    lp.forEach((x, j) => {
      const r = Math.exp(x - s.oldLogp[j]);
      let l = surrogate(r, s.advantages[j]);
      if (o.beta > 0) {
        const e = x - s.refLogp![j];
        l += Math.fround(o.beta) * (o.klTimesRatio ? r : 1) * (Math.exp(-e) + e - 1);
      }
      row += l;
    });
    total += o.lossType === 'grpo' ? row / lp.length : row;
    tokens += lp.length;
  });
  if (o.sequence || o.lossType === 'grpo') return total / S.length;
  if (o.lossType === 'dr_grpo') return total / (S.length * o.maxNewTokens);
  return total / tokens;
}

t.test('minibatchGradients: micro-batches of 1, 2 and all give the same loss and gradients; the loss is the float64 formula', async (t) => {
  const { m, tr } = await setup();
  t.teardown(() => m.dispose());
  const S = await samples(m);
  const base: GrpoLossOptions = { sequence: false, lossType: 'dapo', maxNewTokens: MAX_NEW, epsilon: 0.2, epsilonHigh: 0.28, beta: 0.04, klTimesRatio: true, temperature: TEMP, microBatchSize: S.length };
  const cases: [string, Partial<GrpoLossOptions>][] = [
    ['dapo', { lossType: 'dapo' }],
    ['grpo', { lossType: 'grpo' }],
    ['dr_grpo', { lossType: 'dr_grpo', beta: 0 }],
    ['rloo (sequence-level)', { sequence: true, beta: 0 }],
  ];
  const all: Record<string, Record<string, Float64Array>> = {};
  for (const [name, over] of cases) {
    const o = { ...base, ...over };
    const want = await lossRef(m, S, o);
    const runs: { loss: number; clipfrac: number; g: Record<string, Float64Array> }[] = [];
    for (const micro of [1, 2, S.length]) {
      const r = await minibatchGradients(tr, S, { ...o, microBatchSize: micro });
      runs.push({ loss: r.stats.loss, clipfrac: r.stats.clipfrac, g: grads(tr) });
      t.ok(Math.abs(r.stats.loss - want) <= 1e-5 * Math.max(1, Math.abs(want)), `${name}, micro-batches of ${micro}: loss ${r.stats.loss} vs float64 ${want}`);
    }
    const [one, two, whole] = runs;
    t.ok(Math.abs(one.clipfrac - whole.clipfrac) < 1e-6 && Math.abs(two.clipfrac - whole.clipfrac) < 1e-6, `${name}: the same clip fraction (${whole.clipfrac.toFixed(3)})`);
    t.ok(whole.clipfrac > 0, `${name}: some tokens clipped`);
    const d1 = gradDiff(one.g, whole.g), d2 = gradDiff(two.g, whole.g);
    t.ok(d1.allNonzero, `${name}: every trainable tensor has a nonzero gradient`);
    t.ok(d1.worst < 1e-5 && d2.worst < 1e-5, `${name}: gradients of micro-batches 1 and 2 equal the whole's (${d1.worst.toExponential(2)}, ${d2.worst.toExponential(2)})`);
    all[name] = whole.g;
  }
  // The averaging matters: the loss types give different gradients on this ragged batch.
  t.ok(gradDiff(all.dapo, all.grpo).worst > 1e-2, 'dapo and grpo averaging differ');
  t.ok(gradDiff(all.dr_grpo, all['rloo (sequence-level)']).worst > 1e-2, 'dr_grpo and rloo differ');
});
