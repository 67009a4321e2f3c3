/**
 * Label smoothing and HIR's loss on the engine (lib/engine/objectives.ts,
 * native/model/objective.cc, lib/stages/hir/loss.ts), on the tiny Llama and
 * GPT-2 of the training fixtures with a LoRA adapter (B made nonzero).
 *
 * The float64 references are written from the formulas over the model's own
 * logits: every position's full logits come from one inference forward of
 * all the prefixes (lastLogits at each prefix's last token), and
 *   smoothed token loss = (1 - eps)(-log p_y) + eps(-(1/V) sum_v log p_v)
 *   (torch's CrossEntropyLoss(label_smoothing=eps)),
 *   HIR = mean smoothed loss over the positive rows' output tokens
 *       + mean over pairs of (1 - eps)(-log s) + eps(-log(1 - s)),
 *         s = p+ / (p+ + p-), p = exp(mean token log-prob of the output)
 *       - e * mean token entropy (positive rows).
 * Gradients: the parameter gradients (the sum of the separate backward calls
 * for HIR) against central differences of that float64 loss along random
 * directions of the adapter's parameters; the fused SFT path (gradient made
 * in the forward) against the loss-call path; eps 0 against today's bits.
 */
import t from 'tap';
import type { Test } from 'tap';
import * as path from 'node:path';
import { loadModel, type Model } from '../lib/engine/model';
import type { Trainer } from '../lib/engine/train';
import { spanMask } from '../lib/engine/objectives';
import { hirMicroBatch, hirRows, type HirExample } from '../lib/stages/hir/loss';
import { Rng } from './helpers/ref';

const G = path.join(__dirname, 'fixtures', 'train-golden', 'models');
const TARGETS = { llama: ['q_proj', 'v_proj', 'o_proj', 'down_proj'], gpt2: ['c_attn', 'c_proj', 'c_fc'] };

const SFT_ROWS = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2, 9], prompt: 3 },
  { ids: [1, 70, 120, 7, 99, 250, 14, 3, 81, 2], prompt: 5 },
];
const HIR: HirExample[] = [
  { pos: [5, 17, 33, 2, 41], neg: [5, 17, 90, 91, 2, 41], output: [9, 11, 60, 7, 3] },
  { pos: [8, 4, 22], neg: [8, 4, 95, 22], output: [51, 6, 13, 2, 9, 44, 12] },
  { pos: [30, 31, 32, 33], neg: [30, 31, 99, 98, 97, 33], output: [200, 201, 3] },
];

async function setup(arch: 'llama' | 'gpt2', device: 'cpu' | 'cpu-guarded' = 'cpu'): Promise<{ m: Model; tr: Trainer }> {
  const m = await loadModel(path.join(G, arch), { device });
  const tr = m.trainer();
  tr.createLora({ r: 4, alpha: 8, seed: 3, targets: TARGETS[arch] });
  const rng = new Rng(11);
  for (const { name, shape } of tr.trainable()) if (name.includes('lora_B')) tr.write(name, rng.normals(shape.reduce((a, b) => a * b, 1), 0.05));
  await tr.zeroGrad();
  return { m, tr };
}

const grads = (tr: Trainer) => Object.fromEntries(tr.trainable().map((x) => [x.name, Float64Array.from(tr.read(x.name, 'grad'))]));

/** float64 statistics of every output token: logp of the target, mean log p over the vocabulary, entropy. */
interface Tok {
  logp: number;
  meanLogp: number;
  entropy: number;
}
async function tokenStats(m: Model, rows: number[][], spans: [number, number][]): Promise<Tok[][]> {
  const prefixes: number[][] = [], where: [number, number][] = [];
  rows.forEach((r, i) => {
    for (let p = spans[i][0]; p < spans[i][1]; p++) prefixes.push(r.slice(0, p + 1)), where.push([i, p]);
  });
  const f = await m.forward({ inputIds: prefixes, logp: false, lastLogits: true });
  const out: Tok[][] = rows.map(() => []);
  f.lastLogits!.forEach((z, k) => {
    const [i, p] = where[k];
    let mx = -Infinity;
    for (const x of z) mx = Math.max(mx, x);
    let s = 0, sx = 0, sum = 0;
    for (const x of z) (s += Math.exp(x - mx)), (sx += Math.exp(x - mx) * x), (sum += x);
    const lse = mx + Math.log(s);
    out[i].push({ logp: z[rows[i][p + 1]] - lse, meanLogp: sum / z.length - lse, entropy: lse - sx / s });
  });
  return out;
}

/** The smoothed SFT loss over the rows' completions (token mean). */
function sftRef(toks: Tok[][], eps: number) {
  let n = 0, nll = 0, smooth = 0;
  for (const row of toks) for (const x of row) (n += 1), (nll -= x.logp), (smooth -= x.meanLogp);
  return { loss: ((1 - eps) * nll + eps * smooth) / n, nll, smooth, tokens: n };
}

const logSigmoid = (x: number) => Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));

/** HIR's whole loss from the formula (positive rows first, then negative rows). */
function hirRef(toks: Tok[][], B: number, eps: number, c: number, e: number) {
  const pos = toks.slice(0, B);
  const ls = sftRef(pos, eps);
  let ent = 0;
  for (const row of pos) for (const x of row) ent += x.entropy;
  ent /= ls.tokens;
  let con = 0;
  for (let i = 0; i < B; i++) {
    const mean = (row: Tok[]) => row.reduce((a, x) => a + x.logp, 0) / row.length;
    const pp = Math.exp(mean(toks[i])), pn = Math.exp(mean(toks[B + i]));
    // -log(p+/(p+ + p-)) and -log(p-/(p+ + p-)), in the log-sigmoid form for float64 stability
    const h = Math.log(pp) - Math.log(pn);
    con += (1 - eps) * -logSigmoid(h) + eps * -logSigmoid(-h);
  }
  con /= B;
  return { loss: ls.loss + c * con - e * ent, smoothed: ls.loss, contrastive: con, entropy: ent };
}

/** Central differences of f along a random direction of the adapter, against the gradient's dot with it. */
async function directional(t: Test, tr: Trainer, g: Record<string, Float64Array>, f: () => Promise<number>, seed: number, what: string) {
  const rng = new Rng(seed);
  const names = tr.trainable().map((x) => x.name);
  const base = Object.fromEntries(names.map((n) => [n, tr.read(n)]));
  const dir = Object.fromEntries(names.map((n) => [n, rng.normals(base[n].length)]));
  let gd = 0, gn = 0, dn = 0;
  for (const n of names) for (let i = 0; i < dir[n].length; i++) (gd += g[n][i] * dir[n][i]), (gn += g[n][i] ** 2), (dn += dir[n][i] ** 2);
  const h = 2e-3 / Math.sqrt(dn / names.length);
  const at = async (s: number) => {
    for (const n of names) tr.write(n, Float32Array.from(base[n], (x, i) => x + s * h * dir[n][i]));
    return f();
  };
  const fd = ((await at(1)) - (await at(-1))) / (2 * h);
  for (const n of names) tr.write(n, base[n]);
  // fp32 forwards: the loss is good to ~1e-6 relative, so |error| ~ 1e-6 L / h; 2% of the projection's scale.
  const scale = Math.sqrt(gn * dn) / Math.sqrt(names.length) + 1e-9;
  t.ok(Math.abs(fd - gd) <= 0.02 * Math.max(Math.abs(gd), 0.1 * scale), `${what}: directional derivative ${gd.toExponential(4)} vs central differences ${fd.toExponential(4)}`);
  return { gd, fd };
}

function closeGrads(t: Test, a: Record<string, Float64Array>, b: Record<string, Float64Array>, rel: number, what: string) {
  let worst = 0, name = '';
  for (const n of Object.keys(a)) {
    const mx = Math.max(1e-30, ...b[n].map(Math.abs));
    for (let i = 0; i < a[n].length; i++) {
      const e = Math.abs(a[n][i] - b[n][i]) / mx;
      if (e > worst) (worst = e), (name = n);
    }
  }
  t.ok(worst <= rel, `${what}: worst difference ${worst.toExponential(2)} of the tensor's largest gradient (${name || 'none'}) <= ${rel}`);
}

for (const arch of ['llama', 'gpt2'] as const) {
  t.test(`${arch}: label-smoothed SFT loss, fused and loss-call paths, evaluation, gradients`, async (t) => {
    const { m, tr } = await setup(arch);
    try {
      const eps = 0.2;
      const rows = SFT_ROWS.map((r) => r.ids);
      const spans = SFT_ROWS.map((r): [number, number] => [r.prompt - 1, r.ids.length - 1]);
      const seq = Math.max(...rows.map((r) => r.length));
      const mask = spanMask(seq, spans);
      const ref = sftRef(await tokenStats(m, rows, spans), eps);
      const near = (got: number, want: number, what: string) => t.ok(Math.abs(got - want) <= 2e-5 * Math.abs(want), `${what}: ${got} vs float64 ${want}`);

      // Fused: the gradient made in the forward.
      await tr.forward({ inputIds: rows, sftLoss: { mask, labelSmoothing: eps }, download: false });
      const sf = await tr.sftLoss();
      await tr.backward({});
      const gFused = grads(tr);
      near(sf.loss, ref.loss, 'fused: loss');
      near(sf.nllSum, ref.nll, 'fused: nllSum');
      near(sf.smoothSum, ref.smooth, 'fused: smoothSum');
      t.equal(sf.tokens, ref.tokens, 'fused: tokens');

      // The loss call over a forward without a gradient.
      await tr.zeroGrad();
      await tr.forward({ inputIds: rows, download: false });
      const sl = await tr.sftLoss({ mask, labelSmoothing: eps });
      await tr.backward({});
      const gCall = grads(tr);
      near(sl.loss, ref.loss, 'loss call: loss');
      closeGrads(t, gFused, gCall, 1e-5, 'fused vs loss-call parameter gradients');

      // Evaluation mode.
      await m.forward({ inputIds: rows, download: false });
      const se = await m.sftLoss({ mask, labelSmoothing: eps });
      near(se.loss, ref.loss, 'evaluation: loss');

      // The gradient against central differences of the float64 loss.
      const evalLoss = async () => sftRef(await tokenStats(m, rows, spans), eps).loss;
      await directional(t, tr, gCall, evalLoss, 21, 'smoothed loss');
      // ... and it is not the plain NLL's: the same check on the eps-0 gradient fails.
      await tr.zeroGrad();
      await tr.forward({ inputIds: rows, sftLoss: { mask }, download: false });
      await tr.sftLoss();
      await tr.backward({});
      const gPlain = grads(tr);
      let diff = 0, mx = 0;
      for (const n of Object.keys(gPlain)) for (let i = 0; i < gPlain[n].length; i++) (diff = Math.max(diff, Math.abs(gPlain[n][i] - gCall[n][i]))), (mx = Math.max(mx, Math.abs(gCall[n][i])));
      t.ok(diff > 0.01 * mx, `smoothing changes the gradient (by ${(diff / mx).toExponential(2)} of the largest)`);

      // eps 0 given explicitly: the bits of today's call.
      await tr.zeroGrad();
      await tr.forward({ inputIds: rows, sftLoss: { mask, labelSmoothing: 0 }, download: false });
      const s0 = await tr.sftLoss();
      await tr.backward({});
      const g0 = grads(tr);
      await tr.zeroGrad();
      await tr.forward({ inputIds: rows, sftLoss: { mask }, download: false });
      const s1 = await tr.sftLoss();
      await tr.backward({});
      const g1 = grads(tr);
      t.ok(Object.is(s0.loss, s1.loss) && Object.keys(g0).every((n) => g0[n].every((x, i) => Object.is(x, g1[n][i]))), 'labelSmoothing 0: the same bits as without it');
      await tr.zeroGrad();
    } finally {
      m.dispose();
    }
  });

  t.test(`${arch}: HIR's whole loss of a fixed batch against float64; the gradients of the separate backward calls sum to the whole loss's`, async (t) => {
    const { m, tr } = await setup(arch);
    try {
      const eps = 0.2, c = 1, e = 0.05; // a larger entropy weight than the paper's 0.001 so that its gradient shows
      const B = HIR.length;
      const tokens = HIR.reduce((n, x) => n + x.output.length, 0);
      const { inputIds, spans } = hirRows(HIR);
      const ref = hirRef(await tokenStats(m, inputIds, spans), B, eps, c, e);
      const s = await hirMicroBatch(tr, HIR, { eps, contrastiveCoef: c, entropyCoef: e, tokens, pairs: B });
      const g = grads(tr);
      const got = { smoothed: s.smoothed / tokens, contrastive: s.contrastive / B, entropy: s.entropy / tokens };
      for (const k of ['smoothed', 'contrastive', 'entropy'] as const) t.ok(Math.abs(got[k] - ref[k]) <= 2e-5 * Math.abs(ref[k]) + 1e-7, `${k}: ${got[k]} vs float64 ${ref[k]}`);
      const whole = got.smoothed + c * got.contrastive - e * got.entropy;
      t.ok(Math.abs(whole - ref.loss) <= 2e-5 * Math.abs(ref.loss), `whole loss ${whole} vs float64 ${ref.loss}`);

      const f = async () => hirRef(await tokenStats(m, inputIds, spans), B, eps, c, e).loss;
      await directional(t, tr, g, f, 31, 'whole HIR loss, direction 1');
      await directional(t, tr, g, f, 32, 'whole HIR loss, direction 2');

      // Each term alone (the others' weights 0) sums to the same gradient: the backward calls accumulate.
      const parts: Record<string, Float64Array>[] = [];
      for (const o of [
        { contrastiveCoef: 0, entropyCoef: 0 },
        { contrastiveCoef: c, entropyCoef: 0 },
      ]) {
        await tr.zeroGrad();
        await hirMicroBatch(tr, HIR, { eps, tokens, pairs: B, ...o });
        parts.push(grads(tr));
      }
      // (smoothed NLL + entropy) + ((NLL + contrastive) - NLL): the three terms, each from runs of its own
      await tr.zeroGrad();
      await hirMicroBatch(tr, HIR, { eps, tokens, pairs: B, contrastiveCoef: 0, entropyCoef: e });
      const noCon = grads(tr);
      const sum = Object.fromEntries(Object.keys(g).map((n) => [n, noCon[n].map((x, i) => x + (parts[1][n][i] - parts[0][n][i]))]));
      closeGrads(t, g, sum, 1e-5, 'sum of the terms computed apart vs the whole');
      // The contrastive term matters: dropping it changes the gradient well beyond the finite-difference bound.
      let diff = 0, mx = 0;
      for (const n of Object.keys(g)) for (let i = 0; i < g[n].length; i++) (diff = Math.max(diff, Math.abs(g[n][i] - noCon[n][i]))), (mx = Math.max(mx, Math.abs(g[n][i])));
      t.ok(diff > 0.05 * mx, `the contrastive term's share of the gradient is ${(diff / mx).toExponential(2)} of the largest`);
      await tr.zeroGrad();
    } finally {
      m.dispose();
    }
  });
}

t.test('cpu-guarded (backend memory the host cannot touch between ops): the same bits as the CPU', async (t) => {
  const run = async (device: 'cpu' | 'cpu-guarded') => {
    const { m, tr } = await setup('llama', device);
    try {
      const rows = SFT_ROWS.map((r) => r.ids);
      const mask = spanMask(Math.max(...rows.map((r) => r.length)), SFT_ROWS.map((r): [number, number] => [r.prompt - 1, r.ids.length - 1]));
      await tr.forward({ inputIds: rows, sftLoss: { mask, labelSmoothing: 0.2 }, download: false });
      const s = await tr.sftLoss();
      await tr.backward({});
      const h = await hirMicroBatch(tr, HIR, { eps: 0.2, contrastiveCoef: 1, entropyCoef: 0.01, tokens: 15, pairs: 3 });
      await m.forward({ inputIds: rows, download: false });
      const e = await m.sftLoss({ mask, labelSmoothing: 0.2 });
      return { stats: [s.loss, s.smoothSum!, h.smoothed, h.contrastive, h.entropy, e.loss, e.smoothSum!], grads: grads(tr) };
    } finally {
      m.dispose();
    }
  };
  const a = await run('cpu'), b = await run('cpu-guarded');
  t.ok(a.stats.every((x, i) => Object.is(x, b.stats[i])), 'statistics');
  t.ok(Object.keys(a.grads).every((n) => a.grads[n].every((x, i) => Object.is(x, b.grads[n][i]))), 'parameter gradients');
});
