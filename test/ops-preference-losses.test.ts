// The preference-optimisation family of the dpo_loss op beyond plain DPO
// (robust, hinge, IPO, SimPO, ORPO, and the sigmoid loss on per-token scores)
// and the kto_loss op, against float64 references written here from the
// papers' formulas (not from the kernels' code):
//
//   scores    s = (policy - reference) / length (reference 0 for the
//             reference-free losses, length 1 without per-token scores),
//             h = s_c - s_r, z = beta h
//   sigmoid   DPO (Rafailov et al. 2023, eq. 7); with label smoothing ls the
//             conservative DPO of Mitchell (2023): -(1-ls) log sig(z) - ls log sig(-z)
//   robust    Chowdhury et al. 2024 (rDPO), unbiased under a flip rate ls:
//             (-(1-ls) log sig(z) + ls log sig(-z)) / (1 - 2 ls)
//   hinge     SLiC (Zhao et al. 2023): max(0, 1 - z)
//   ipo       Azar et al. 2023, eq. 17, on per-token scores as TRL takes
//             them: (h - 1/(2 beta))^2
//   simpo     Meng et al. 2024, with label smoothing:
//             -(1-ls) log sig(beta h - gamma) - ls log sig(-(beta h - gamma)),
//             h the difference of the average log-probs
//   orpo      Hong et al. 2024 (beta is the paper's lambda): the
//             chosen completions' NLL -sum(policy_c) / sum(len_c), plus per
//             pair -beta log sig(log(odds_c / odds_r)), odds = P / (1 - P),
//             P = e^a, a the average log-prob
//   kto       Ethayarajh et al. 2024, eq. 7 with TRL's class weights, over
//             unpaired examples, r = policy - reference:
//             desirable w_d (1 - sig(beta (r - kl))), undesirable
//             w_u (1 - sig(beta (kl - r))), mean over all examples
//
// For each: the loss, every statistic, and the gradients w.r.t. the policy
// sums, against the float64 analytic gradient and against central finite
// differences of the float64 loss (steps h = 1e-4 max(1, |x|) and h/2,
// Richardson); on every CPU kernel set (runAll: bitwise the same results);
// random inputs of realistic size (sequence sums in the tens to hundreds,
// completions of 1..60 tokens) and a worked example per loss whose numbers
// are written out. The hinge's inputs are kept at least 0.1 away from its
// kink (z = 1) so that finite differences are valid there; the cases are
// checked to reach both of its sides.
//
// Then each loss through the engine (trainer.dpoLoss / ktoLoss) on the tiny
// Llama of the training fixtures: the engine's loss and statistics equal the
// op's on the engine's own sequence sums (row_dot over the training
// forward's log-probs) and lengths (the mask's row sums), and its parameter
// gradients equal those of the host gradient dlogp = (the float64 per-row
// gradient) spread over each row's mask tokens (divided by the row's length
// for per-token scores), uploaded through backward({dlogp}). Last, the
// arguments the engine refuses, each with E_ARGUMENT and a message naming the
// offending field.
//
// Bounds (EPS32 = 2^-24): a kernel forms each score with a subtraction and a
// division in fp32 (2 EPS32 |s| each score), then h, z and a log-sigmoid /
// square / log1mexp good to a few ulp. So a pair's loss is checked to
// 16 EPS32 (|l| + |dl/ds_c||s_c| + |dl/ds_r||s_r| + the fp32 constants'
// share: |dl/dh| / (2 beta) for IPO, |dl/dh| |gamma| / beta for SimPO,
// |dl/dlog_odds| (|log(1-P_c)| + |log(1-P_r)| + |log_odds|) for ORPO),
// averaged over the pairs; a gradient to 16 EPS32 of (|g| + the same
// sensitivities of g, from float64 second derivatives) times gradScale / b
// / length; statistics to 2 to 16 EPS32 of the magnitudes of their terms, the
// accuracy and the counts to their one fp32 rounding. Finite differences:
// 2e-6 |fd| + 2e-7 max|fd|, as test/ops-loss.test.ts.
import t from 'tap';
import type { Test } from 'tap';
import * as path from 'node:path';
import { EPS32, expectClose, expectEqual, f32, KERNELS, op, Rng } from './helpers/ref';
import { loadModel, type Model } from '../lib/engine/model';
import type { Trainer } from '../lib/engine/train';
import { spanMask } from '../lib/engine/objectives';
import type { PrefLossType } from '../lib/native';

const FD_REL = 1e-4;

/** Central finite differences with Richardson extrapolation (see test/ops-loss.test.ts). */
function fdGrad(f: (x: Float64Array) => number, x0: ArrayLike<number>): Float64Array {
  const x = Float64Array.from(x0);
  const g = new Float64Array(x.length);
  const central = (i: number, v: number, h: number): number => {
    x[i] = v + h;
    const fp = f(x);
    x[i] = v - h;
    const fm = f(x);
    x[i] = v;
    return (fp - fm) / (2 * h);
  };
  for (let i = 0; i < x.length; ++i) {
    const v = x[i];
    const h = FD_REL * Math.max(1, Math.abs(v));
    g[i] = (4 * central(i, v, h / 2) - central(i, v, h)) / 3;
  }
  return g;
}

function expectFd(t: Test, got: ArrayLike<number>, fd: Float64Array, what: string) {
  let gmax = 0;
  for (const v of fd) gmax = Math.max(gmax, Math.abs(v));
  const tol = fd.map((v) => 2e-6 * Math.abs(v) + 2e-7 * gmax + 1e-30);
  expectClose(t, got, fd, tol, `${what} vs finite differences`);
}

/** The largest differences from float64 over every case, for the summary at the end. */
const worst = { loss: 0, grad: 0, fd: 0 };
/** max |got - ref| / max |ref| of an array. */
function relToMax(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; ++i) (num = Math.max(num, Math.abs(got[i] - ref[i]))), (den = Math.max(den, Math.abs(ref[i])));
  return den > 0 ? num / den : num;
}
function track(out: { loss: ArrayLike<number>; grads: [ArrayLike<number>, ArrayLike<number>][] }, loss: number, fd: [ArrayLike<number>, Float64Array][]) {
  worst.loss = Math.max(worst.loss, Math.abs(out.loss[0] - loss) / Math.max(Math.abs(loss), 1e-30));
  for (const [g, r] of out.grads) worst.grad = Math.max(worst.grad, relToMax(g, r));
  for (const [g, r] of fd) worst.fd = Math.max(worst.fd, relToMax(g, r));
}

/** Runs the op on every kernel set; returns the first run's outputs and checks the others are bitwise equal. */
function runAll<T extends Record<string, Float32Array>>(t: Test, run: (isa: string) => T): T {
  let first: T | undefined;
  for (const isa of KERNELS) {
    const out = run(isa);
    if (!first) first = out;
    else for (const k of Object.keys(out)) expectEqual(t, out[k], first[k], `${k} on ${isa} equals ${KERNELS[0]}`);
  }
  return first!;
}

const logSigmoid = (x: number): number => Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));
const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
/** log(1 - e^a), a < 0. */
const log1mexp = (a: number): number => Math.log(-Math.expm1(a));

// ================================================================== float64 references

const TYPE_ID: Record<PrefLossType, number> = { sigmoid: 0, robust: 1, hinge: 2, ipo: 3, simpo: 4, orpo: 5 };

/** Hyper-parameters as the fp32 values the kernel receives. */
interface Hyper {
  beta: number;
  ls: number;
  gamma: number;
}

interface PairTerm {
  l: number;
  /** d l / d s_c, d l / d s_r */
  dc: number;
  dr: number;
  /** d l / d h (ORPO: d l / d log_odds) */
  dh: number;
  /** ORPO's log odds ratio */
  lo: number;
  /** the fp32 constants' share of the error (see the header) */
  extra: number;
}

/** One pair's loss from its two scores, in float64, straight from the papers' formulas. */
function pairTerm(type: PrefLossType, sc: number, sr: number, hp: Hyper): PairTerm {
  const { beta, ls, gamma } = hp;
  if (type === 'orpo') {
    // log odds(y) = log(P / (1 - P)) = a - log(1 - e^a); d/da = 1 / (1 - e^a).
    const lo = sc - log1mexp(sc) - (sr - log1mexp(sr));
    const l = -beta * logSigmoid(lo);
    const dlo = -beta * sigmoid(-lo);
    return { l, dc: dlo / -Math.expm1(sc), dr: -dlo / -Math.expm1(sr), dh: dlo, lo, extra: Math.abs(dlo) * (Math.abs(log1mexp(sc)) + Math.abs(log1mexp(sr)) + Math.abs(lo)) };
  }
  const h = sc - sr, z = beta * h;
  let l: number, dh: number, extra = 0;
  switch (type) {
    case 'sigmoid':
      l = -(1 - ls) * logSigmoid(z) - ls * logSigmoid(-z);
      dh = beta * (-(1 - ls) * sigmoid(-z) + ls * sigmoid(z));
      break;
    case 'robust':
      l = (-(1 - ls) * logSigmoid(z) + ls * logSigmoid(-z)) / (1 - 2 * ls);
      dh = (beta * (-(1 - ls) * sigmoid(-z) - ls * sigmoid(z))) / (1 - 2 * ls);
      break;
    case 'hinge':
      l = Math.max(0, 1 - z);
      dh = z < 1 ? -beta : 0;
      break;
    case 'ipo': {
      const u = h - 1 / (2 * beta);
      l = u * u;
      dh = 2 * u;
      extra = Math.abs(dh) / (2 * beta);
      break;
    }
    case 'simpo': {
      const y = z - gamma;
      l = -(1 - ls) * logSigmoid(y) - ls * logSigmoid(-y);
      dh = beta * (-(1 - ls) * sigmoid(-y) + ls * sigmoid(y));
      extra = (Math.abs(dh) * Math.abs(gamma)) / beta;
      break;
    }
  }
  return { l, dc: dh, dr: -dh, dh, lo: 0, extra };
}

/** Second-derivative sensitivities of a pair's gradient (for its error bound): |d g/d s_c| |s_c| + |d g/d s_r| |s_r| + the constants' share. */
function gradSens(type: PrefLossType, sc: number, sr: number, hp: Hyper): { c: number; r: number } {
  const d = (f: (a: number, b: number) => number, which: 0 | 1) => {
    const x = which === 0 ? sc : sr, e = 1e-6 * Math.max(Math.abs(x), 1e-3);
    return which === 0 ? (f(sc + e, sr) - f(sc - e, sr)) / (2 * e) : (f(sc, sr + e) - f(sc, sr - e)) / (2 * e);
  };
  const gc = (a: number, b: number) => pairTerm(type, a, b, hp).dc, gr = (a: number, b: number) => pairTerm(type, a, b, hp).dr;
  let c = Math.abs(d(gc, 0) * sc) + Math.abs(d(gc, 1) * sr), r = Math.abs(d(gr, 0) * sc) + Math.abs(d(gr, 1) * sr);
  const p = pairTerm(type, sc, sr, hp);
  if (type === 'ipo') (c += 2 / (2 * hp.beta)), (r += 2 / (2 * hp.beta));
  if (type === 'simpo') {
    const y = hp.beta * (sc - sr) - hp.gamma, curv = hp.beta * sigmoid(y) * sigmoid(-y); // |d (dl/dh) / dy|
    c += curv * Math.abs(hp.gamma);
    r += curv * Math.abs(hp.gamma);
  }
  if (type === 'orpo') {
    const curv = hp.beta * sigmoid(p.lo) * sigmoid(-p.lo), m = Math.abs(log1mexp(sc)) + Math.abs(log1mexp(sr)) + Math.abs(p.lo);
    c += (curv * m) / Math.abs(Math.expm1(sc));
    r += (curv * m) / Math.abs(Math.expm1(sr));
  }
  return { c, r };
}

interface PrefInputs {
  b: number;
  pc: Float32Array;
  pr: Float32Array;
  rc?: Float32Array;
  rr?: Float32Array;
  lc?: Float32Array;
  lr?: Float32Array;
}

interface PrefRef {
  loss: number;
  lossTol: number;
  stats: number[];
  statsTol: number[];
  /** d loss / d policy sums (gradScale 1) and their bounds (before gradScale) */
  gc: Float64Array;
  gr: Float64Array;
  gcTol: Float64Array;
  grTol: Float64Array;
  z: Float64Array;
}

/** The family's loss over b pairs, float64, with `pc` / `pr` overridable for finite differences. */
function prefRef(type: PrefLossType, x: PrefInputs, hp: Hyper, over: { pc?: ArrayLike<number>; pr?: ArrayLike<number> } = {}): PrefRef {
  const pc = over.pc ?? x.pc, pr = over.pr ?? x.pr, b = x.b;
  const inv = b > 0 ? 1 / b : 0;
  let sum = 0, mag = 0, acc = 0, cr = 0, rj = 0, crMag = 0, rjMag = 0, lo = 0, loMag = 0;
  let nllNum = 0, nllDen = 0;
  const gc = new Float64Array(b), gr = new Float64Array(b), gcTol = new Float64Array(b), grTol = new Float64Array(b), z = new Float64Array(b);
  for (let i = 0; i < b; ++i) {
    const lc = x.lc ? x.lc[i] : 1, lr = x.lr ? x.lr[i] : 1;
    const sc = (pc[i] - (x.rc ? x.rc[i] : 0)) / lc, sr = (pr[i] - (x.rr ? x.rr[i] : 0)) / lr;
    const p = pairTerm(type, sc, sr, hp);
    z[i] = hp.beta * (sc - sr);
    sum += p.l;
    mag += Math.abs(p.l) + Math.abs(p.dc * sc) + Math.abs(p.dr * sr) + p.extra;
    gc[i] = (p.dc / lc) * inv;
    gr[i] = (p.dr / lr) * inv;
    const s = gradSens(type, sc, sr, hp);
    gcTol[i] = (16 * EPS32 * (Math.abs(p.dc) + s.c) * inv) / lc;
    grTol[i] = (16 * EPS32 * (Math.abs(p.dr) + s.r) * inv) / lr;
    acc += hp.beta * sc > hp.beta * sr ? 1 : 0;
    cr += hp.beta * sc;
    rj += hp.beta * sr;
    crMag += Math.abs(hp.beta * sc);
    rjMag += Math.abs(hp.beta * sr);
    lo += p.lo;
    if (type === 'orpo') loMag += Math.abs(p.lo) + Math.abs(sc / Math.expm1(sc)) + Math.abs(sr / Math.expm1(sr)) + Math.abs(log1mexp(sc)) + Math.abs(log1mexp(sr));
    nllNum -= pc[i];
    nllDen += lc;
  }
  let loss = sum * inv, lossTol = 16 * EPS32 * mag * inv, nll = 0;
  if (type === 'orpo') {
    // The NLL term, a token mean over the batch's chosen completions; its gradient -1 / sum(len_c) on each chosen sum.
    nll = nllNum / nllDen;
    loss += nll;
    lossTol += 4 * EPS32 * Math.abs(nll);
    for (let i = 0; i < b; ++i) {
      gc[i] -= 1 / nllDen;
      gcTol[i] += (4 * EPS32) / nllDen;
    }
  }
  return {
    loss,
    lossTol: lossTol + 1e-30,
    stats: [acc * inv, cr * inv, rj * inv, (cr - rj) * inv, nll, lo * inv],
    statsTol: [EPS32, 8 * EPS32 * crMag * inv, 8 * EPS32 * rjMag * inv, 8 * EPS32 * (crMag + rjMag) * inv, 4 * EPS32 * Math.abs(nll), 16 * EPS32 * loMag * inv],
    gc,
    gr,
    gcTol,
    grTol,
    z,
  };
}

// ================================================================== dpo_loss: the family

interface PrefCase {
  type: PrefLossType;
  b: number;
  beta: number;
  ls?: number;
  gamma?: number;
  gradScale?: number;
  /** per-token scores (lengths given) */
  lengths: boolean;
  /** scale of the policy-reference drift (default 1) */
  spread?: number;
  fd: boolean;
  seed: number;
}

/** Random pairs: completions of 1..60 tokens with average log-probs in (-3, -0.1), so sums in the tens to hundreds. */
function prefInputs(cs: PrefCase): PrefInputs {
  const rng = new Rng(cs.seed);
  const b = cs.b;
  const refFree = cs.type === 'simpo' || cs.type === 'orpo';
  const x: PrefInputs = { b, pc: new Float32Array(b), pr: new Float32Array(b) };
  if (!refFree) (x.rc = new Float32Array(b)), (x.rr = new Float32Array(b));
  if (cs.lengths) (x.lc = new Float32Array(b)), (x.lr = new Float32Array(b));
  const B = f32(cs.beta), k = cs.spread ?? 1;
  for (let i = 0; i < b; ++i) {
    for (;;) {
      const lc = rng.int(1, 61), lr = rng.int(1, 61);
      const ac = -rng.uniform(0.1, 3), ar = -rng.uniform(0.1, 3);
      const pc = f32(ac * lc), pr = f32(ar * lr);
      let rc = 0, rr = 0;
      if (!refFree) {
        // Policy and reference differ by a drift per token (per-token scores) or per sequence.
        const dc = k * rng.normal() * (cs.lengths ? 0.1 : 3) + (cs.lengths ? 0.05 : 0.5);
        const dr = k * rng.normal() * (cs.lengths ? 0.1 : 3) - (cs.lengths ? 0.05 : 0.5);
        rc = f32(pc - dc * (cs.lengths ? lc : 1));
        rr = f32(pr - dr * (cs.lengths ? lr : 1));
      }
      if (cs.type === 'hinge') {
        const sc = (pc - rc) / (cs.lengths ? lc : 1), sr = (pr - rr) / (cs.lengths ? lr : 1);
        if (Math.abs(1 - B * (sc - sr)) < 0.1) continue; // off the kink, for finite differences
      }
      x.pc[i] = pc;
      x.pr[i] = pr;
      if (x.rc) (x.rc[i] = rc), (x.rr![i] = rr);
      if (x.lc) (x.lc[i] = lc), (x.lr![i] = lr);
      break;
    }
  }
  return x;
}

function prefCase(t: Test, cs: PrefCase) {
  const x = prefInputs(cs);
  const hp: Hyper = { beta: f32(cs.beta), ls: f32(cs.ls ?? 0), gamma: f32(cs.gamma ?? 0) };
  const gs = f32(cs.gradScale ?? 1);
  const ref = prefRef(cs.type, x, hp);
  const b = x.b;
  const out = runAll(t, (isa) => {
    const loss = new Float32Array(1), dpolicyChosen = new Float32Array(b).fill(7), dpolicyRejected = new Float32Array(b).fill(7), stats = new Float32Array(6).fill(7);
    op(
      'dpo_loss',
      {
        b,
        lossType: TYPE_ID[cs.type],
        policyChosen: x.pc,
        policyRejected: x.pr,
        refChosen: x.rc,
        refRejected: x.rr,
        lenChosen: x.lc,
        lenRejected: x.lr,
        beta: cs.beta,
        labelSmoothing: cs.ls ?? 0,
        gamma: cs.gamma ?? 0,
        gradScale: cs.gradScale ?? 1,
        loss,
        dpolicyChosen,
        dpolicyRejected,
        stats,
      },
      isa,
    );
    return { loss, dpolicyChosen, dpolicyRejected, stats };
  });
  expectClose(t, out.loss, [ref.loss], ref.lossTol, 'loss vs float64');
  expectClose(t, out.stats, ref.stats, ref.statsTol, 'stats [accuracy, chosen reward, rejected reward, margin, nll, log odds] vs float64');
  const gc = ref.gc.map((v) => v * gs), gr = ref.gr.map((v) => v * gs);
  expectClose(t, out.dpolicyChosen, gc, ref.gcTol.map((v) => v * Math.abs(gs) + 1e-30), 'dpolicy_chosen vs analytic');
  expectClose(t, out.dpolicyRejected, gr, ref.grTol.map((v) => v * Math.abs(gs) + 1e-30), 'dpolicy_rejected vs analytic');
  const fd: [Float32Array, Float64Array][] = [];
  if (cs.fd) {
    fd.push([out.dpolicyChosen, fdGrad((v) => prefRef(cs.type, x, hp, { pc: v }).loss * gs, x.pc)]);
    fd.push([out.dpolicyRejected, fdGrad((v) => prefRef(cs.type, x, hp, { pr: v }).loss * gs, x.pr)]);
    expectFd(t, fd[0][0], fd[0][1], 'dpolicy_chosen');
    expectFd(t, fd[1][0], fd[1][1], 'dpolicy_rejected');
  }
  track({ loss: out.loss, grads: [[out.dpolicyChosen, gc], [out.dpolicyRejected, gr]] }, ref.loss, fd);
  if (b >= 16) t.ok(ref.stats[0] > 0 && ref.stats[0] < 1, `accuracy ${ref.stats[0].toFixed(3)} neither 0 nor 1`);
  return { ref, out };
}

/** A small worked example: the op on every kernel set against numbers written out by hand. */
function worked(t: Test, args: Record<string, unknown>, b: number, want: { loss: number; dc: number[]; dr: number[]; stats: number[] }, tol = 1e-6) {
  for (const isa of KERNELS) {
    const loss = new Float32Array(1), dpolicyChosen = new Float32Array(b), dpolicyRejected = new Float32Array(b), stats = new Float32Array(6);
    op('dpo_loss', { b, ...args, loss, dpolicyChosen, dpolicyRejected, stats }, isa);
    expectClose(t, loss, [want.loss], tol, `${isa}: loss`);
    expectClose(t, dpolicyChosen, want.dc, tol, `${isa}: dpolicy_chosen`);
    expectClose(t, dpolicyRejected, want.dr, tol, `${isa}: dpolicy_rejected`);
    expectClose(t, stats, want.stats, tol, `${isa}: [accuracy, chosen reward, rejected reward, margin, nll, log odds]`);
  }
}

const F = (a: number[]) => new Float32Array(a);

t.test('dpo_loss, robust (rDPO): loss, statistics, gradients', async (t) => {
  await t.test('beta 0.1, no flips assumed (ls 0: DPO itself)', async (t) => void prefCase(t, { type: 'robust', b: 64, beta: 0.1, ls: 0, lengths: false, fd: true, seed: 101 }));
  await t.test('beta 0.5, ls 0.1, gradScale 0.5', async (t) => void prefCase(t, { type: 'robust', b: 97, beta: 0.5, ls: 0.1, gradScale: 0.5, lengths: false, fd: true, seed: 102 }));
  await t.test('beta 2, ls 0.3 (saturated pairs)', async (t) => void prefCase(t, { type: 'robust', b: 50, beta: 2, ls: 0.3, lengths: false, fd: true, seed: 103 }));
  await t.test('beta 0.5, ls 0.2, per-token scores', async (t) => void prefCase(t, { type: 'robust', b: 40, beta: 0.5, ls: 0.2, lengths: true, fd: true, seed: 104 }));
  await t.test('b=30000 (many chunks)', async (t) => void prefCase(t, { type: 'robust', b: 30000, beta: 0.1, ls: 0.1, lengths: false, fd: false, seed: 105 }));
  await t.test('a worked example', async (t) =>
    // h = (-10 - -11) - (-12 - -11.5) = 1.5, z = 0.2 * 1.5 = 0.3, ls 0.1:
    // log sig(0.3) = -0.5543552, log sig(-0.3) = -0.8543552,
    // loss = (0.9 * 0.5543552 - 0.1 * 0.8543552) / 0.8 = 0.5168552;
    // dl/dh = 0.2 (-0.9 sig(-0.3) - 0.1 sig(0.3)) / 0.8 = 0.2 (-0.9 * 0.4255575 - 0.1 * 0.5744425) / 0.8 = -0.1101115.
    worked(t, { lossType: 1, policyChosen: F([-10]), policyRejected: F([-12]), refChosen: F([-11]), refRejected: F([-11.5]), beta: 0.2, labelSmoothing: 0.1 }, 1, {
      loss: 0.5168552,
      dc: [-0.1101115],
      dr: [0.1101115],
      stats: [1, 0.2, -0.1, 0.3, 0, 0],
    }));
});

t.test('dpo_loss, hinge (SLiC): loss, statistics, gradients on both sides of the margin', async (t) => {
  const sides = (z: Float64Array) => [z.filter((v) => v < 1).length, z.filter((v) => v > 1).length];
  await t.test('beta 0.1', async (t) => {
    const { ref } = prefCase(t, { type: 'hinge', b: 64, beta: 0.1, lengths: false, spread: 3, fd: true, seed: 111 });
    const [lo, hi] = sides(ref.z);
    t.ok(lo > 0 && hi > 0, `pairs inside the margin (${lo}, gradient -beta) and beyond it (${hi}, loss and gradient 0)`);
  });
  await t.test('beta 0.5, gradScale 3', async (t) => {
    const { ref } = prefCase(t, { type: 'hinge', b: 80, beta: 0.5, gradScale: 3, lengths: false, fd: true, seed: 112 });
    const [lo, hi] = sides(ref.z);
    t.ok(lo > 0 && hi > 0, `both sides: ${lo} inside, ${hi} beyond`);
  });
  await t.test('beta 2, per-token scores', async (t) => {
    const { ref } = prefCase(t, { type: 'hinge', b: 64, beta: 2, lengths: true, spread: 4, fd: true, seed: 113 });
    const [lo, hi] = sides(ref.z);
    t.ok(lo > 0 && hi > 0, `both sides: ${lo} inside, ${hi} beyond`);
  });
  await t.test('b=30000 (many chunks)', async (t) => void prefCase(t, { type: 'hinge', b: 30000, beta: 0.1, lengths: false, fd: false, seed: 114 }));
  await t.test('a worked example', async (t) =>
    // pair 1: h = 1.5, z = 0.3 < 1: loss 0.7, dl/dh = -0.2; pair 2: h = (-5 - -9) - (-20 - -18) = 6,
    // z = 1.2 > 1: loss 0, gradient 0. Mean over the 2 pairs: loss 0.35, gradients / 2.
    worked(t, { lossType: 2, policyChosen: F([-10, -5]), policyRejected: F([-12, -20]), refChosen: F([-11, -9]), refRejected: F([-11.5, -18]), beta: 0.2 }, 2, {
      loss: 0.35,
      dc: [-0.1, 0],
      dr: [0.1, 0],
      // rewards: chosen 0.2 * [1, 4] -> mean 0.5; rejected 0.2 * [-0.5, -2] -> mean -0.25
      stats: [1, 0.5, -0.25, 0.75, 0, 0],
    }));
});

t.test('dpo_loss, IPO (eq. 17, per-token scores): loss, statistics, gradients', async (t) => {
  await t.test('beta 0.1', async (t) => void prefCase(t, { type: 'ipo', b: 64, beta: 0.1, lengths: true, fd: true, seed: 121 }));
  await t.test('beta 0.5, gradScale 0.25', async (t) => void prefCase(t, { type: 'ipo', b: 64, beta: 0.5, gradScale: 0.25, lengths: true, fd: true, seed: 122 }));
  await t.test('beta 2', async (t) => void prefCase(t, { type: 'ipo', b: 64, beta: 2, lengths: true, fd: true, seed: 123 }));
  await t.test('beta 0.5 on sequence sums (no lengths: the paper\'s form)', async (t) => void prefCase(t, { type: 'ipo', b: 40, beta: 0.5, lengths: false, fd: true, seed: 124 }));
  await t.test('b=30000 (many chunks)', async (t) => void prefCase(t, { type: 'ipo', b: 30000, beta: 0.1, lengths: true, fd: false, seed: 125 }));
  await t.test('a worked example', async (t) =>
    // s_c = (-6 - -7.5) / 3 = 0.5, s_r = (-8 - -6) / 4 = -0.5, h = 1; beta 0.25: 1/(2 beta) = 2, u = -1:
    // loss = 1, dl/dh = 2u = -2: dpolicy_chosen = -2 / 3, dpolicy_rejected = 2 / 4.
    worked(t, { lossType: 3, policyChosen: F([-6]), policyRejected: F([-8]), refChosen: F([-7.5]), refRejected: F([-6]), lenChosen: F([3]), lenRejected: F([4]), beta: 0.25 }, 1, {
      loss: 1,
      dc: [-2 / 3],
      dr: [0.5],
      stats: [1, 0.125, -0.125, 0.25, 0, 0],
    }));
});

t.test('dpo_loss, sigmoid on per-token scores (and conservative DPO): loss, statistics, gradients', async (t) => {
  await t.test('beta 0.1', async (t) => void prefCase(t, { type: 'sigmoid', b: 64, beta: 0.1, lengths: true, fd: true, seed: 131 }));
  await t.test('beta 0.5, ls 0.1', async (t) => void prefCase(t, { type: 'sigmoid', b: 64, beta: 0.5, ls: 0.1, lengths: true, fd: true, seed: 132 }));
  await t.test('beta 2, ls 0.3', async (t) => void prefCase(t, { type: 'sigmoid', b: 64, beta: 2, ls: 0.3, lengths: true, fd: true, seed: 133 }));
  await t.test('a worked example', async (t) =>
    // h = 1 as in the IPO example; beta 0.5: loss = -log sig(0.5) = 0.4740770;
    // dl/dh = -0.5 sig(-0.5) = -0.5 * 0.3775407: dpolicy_chosen = that / 3 = -0.0629234, dpolicy_rejected = -that / 4 = 0.0471926.
    worked(t, { lossType: 0, policyChosen: F([-6]), policyRejected: F([-8]), refChosen: F([-7.5]), refRejected: F([-6]), lenChosen: F([3]), lenRejected: F([4]), beta: 0.5 }, 1, {
      loss: 0.474077,
      dc: [-0.0629234],
      dr: [0.0471926],
      stats: [1, 0.25, -0.25, 0.5, 0, 0],
    }));
});

t.test('dpo_loss, SimPO (reference-free, average log-probs, target margin gamma): loss, statistics, gradients', async (t) => {
  await t.test('beta 2, gamma 0.5', async (t) => void prefCase(t, { type: 'simpo', b: 64, beta: 2, gamma: 0.5, lengths: true, fd: true, seed: 141 }));
  await t.test('beta 2.5, gamma 1, ls 0.1, gradScale 0.5', async (t) => void prefCase(t, { type: 'simpo', b: 64, beta: 2.5, gamma: 1, ls: 0.1, gradScale: 0.5, lengths: true, fd: true, seed: 142 }));
  await t.test('beta 0.1, gamma 0.05, ls 0.3', async (t) => void prefCase(t, { type: 'simpo', b: 64, beta: 0.1, gamma: 0.05, ls: 0.3, lengths: true, fd: true, seed: 143 }));
  await t.test('b=30000 (many chunks)', async (t) => void prefCase(t, { type: 'simpo', b: 30000, beta: 2, gamma: 1, lengths: true, fd: false, seed: 144 }));
  await t.test('a worked example', async (t) =>
    // a_c = -6 / 3 = -2, a_r = -10 / 4 = -2.5, h = 0.5; beta 2, gamma 0.5: y = 2 * 0.5 - 0.5 = 0.5;
    // loss = -log sig(0.5) = 0.4740770; dl/dh = -2 sig(-0.5) = -0.7550813: dpolicy_chosen = that / 3 = -0.2516938,
    // dpolicy_rejected = -that / 4 = 0.1887703. Rewards beta a: -4 and -5.
    worked(t, { lossType: 4, policyChosen: F([-6]), policyRejected: F([-10]), lenChosen: F([3]), lenRejected: F([4]), beta: 2, gamma: 0.5 }, 1, {
      loss: 0.474077,
      dc: [-0.2516938],
      dr: [0.1887703],
      stats: [1, -4, -5, 1, 0, 0],
    }));
});

t.test('dpo_loss, ORPO (NLL + odds-ratio term): loss, statistics, gradients', async (t) => {
  await t.test('beta 0.1', async (t) => void prefCase(t, { type: 'orpo', b: 64, beta: 0.1, lengths: true, fd: true, seed: 151 }));
  await t.test('beta 0.5, gradScale 2', async (t) => void prefCase(t, { type: 'orpo', b: 64, beta: 0.5, gradScale: 2, lengths: true, fd: true, seed: 152 }));
  await t.test('beta 2', async (t) => void prefCase(t, { type: 'orpo', b: 64, beta: 2, lengths: true, fd: true, seed: 153 }));
  await t.test('b=30000 (many chunks)', async (t) => void prefCase(t, { type: 'orpo', b: 30000, beta: 0.1, lengths: true, fd: false, seed: 154 }));
  await t.test('a worked example', async (t) => {
    // a_c = -2 ln 2 / 2 = -ln 2: P_c = 1/2, odds 1; a_r = -ln 4 (one token): P_r = 1/4, odds 1/3.
    // log odds ratio = ln 3 = 1.0986123; -beta log sig(ln 3) = -0.1 ln(3/4) = 0.0287682; NLL = 2 ln 2 / 2 = 0.6931472;
    // loss = 0.7219154. d l / d log_odds = -0.1 sig(-ln 3) = -0.025; d log_odds / d a_c = 1 / (1 - P_c) = 2,
    // d log_odds / d a_r = -1 / (1 - P_r) = -4/3. dpolicy_chosen = -0.025 * 2 / 2 - 1 / 2 (NLL) = -0.525,
    // dpolicy_rejected = -0.025 * -4/3 / 1 = 0.0333333. Rewards beta a: -0.0693147, -0.1386294.
    worked(t, { lossType: 5, policyChosen: F([-2 * Math.LN2]), policyRejected: F([-Math.log(4)]), lenChosen: F([2]), lenRejected: F([1]), beta: 0.1 }, 1, {
      loss: 0.7219154,
      dc: [-0.525],
      dr: [0.0333333],
      stats: [1, -0.0693147, -0.1386294, 0.0693147, 0.6931472, 1.0986123],
    });
  });
});

t.test('dpo_loss: the op\'s own argument checks', async (t) => {
  const a = new Float32Array(2), loss = new Float32Array(1);
  t.throws(() => op('dpo_loss', { b: 2, lossType: 6, policyChosen: a, policyRejected: a, loss }, KERNELS[0]), /'lossType' must be 0\.\.5/);
  t.throws(() => op('dpo_loss', { b: 2, lossType: 5, policyChosen: a, policyRejected: a, loss }, KERNELS[0]), /ORPO needs 'lenChosen'/);
  t.throws(() => op('dpo_loss', { b: 2, lossType: 4, policyChosen: a, policyRejected: a, lenChosen: new Float32Array(1), loss }, KERNELS[0]), /'lenChosen'/);
});

// ================================================================== kto_loss

interface KtoInputs {
  b: number;
  policy: Float32Array;
  ref: Float32Array;
  desirable: Float32Array;
}
interface KtoHyper {
  beta: number;
  kl: number;
  wd: number;
  wu: number;
}

function ktoRef(x: KtoInputs, hp: KtoHyper, policy: ArrayLike<number> = x.policy) {
  const b = x.b, inv = b > 0 ? 1 / b : 0;
  let sum = 0, mag = 0;
  const st = [0, 0, 0, 0, 0, 0], stMag = [0, 0, 0, 0];
  const g = new Float64Array(b), gTol = new Float64Array(b);
  for (let i = 0; i < b; ++i) {
    const r = policy[i] - x.ref[i];
    const want = x.desirable[i] === 1;
    // 1 - sigmoid(v) is written sigmoid(-v): the same number without the cancellation.
    const v = want ? hp.beta * (r - hp.kl) : hp.beta * (hp.kl - r);
    const w = want ? hp.wd : hp.wu;
    const l = w * sigmoid(-v);
    const s = sigmoid(v), dv = -w * s * (1 - s); // d l / d v
    const dr = want ? dv * hp.beta : -dv * hp.beta;
    const curv = w * hp.beta * hp.beta * Math.abs(s * (1 - s) * (1 - 2 * s)); // |d^2 l / d r^2|
    sum += l;
    mag += Math.abs(l) + Math.abs(dr) * (Math.abs(r) + Math.abs(hp.kl));
    g[i] = dr * inv;
    gTol[i] = 16 * EPS32 * (Math.abs(dr) + curv * (Math.abs(r) + Math.abs(hp.kl))) * inv;
    st[want ? 0 : 1] += hp.beta * r;
    stMag[want ? 0 : 1] += Math.abs(hp.beta * r);
    st[want ? 2 : 3] += policy[i];
    stMag[want ? 2 : 3] += Math.abs(policy[i]);
    st[want ? 4 : 5] += 1;
  }
  const nc = st[4] > 0 ? st[4] : 1, nr = st[5] > 0 ? st[5] : 1;
  return {
    loss: sum * inv,
    lossTol: 16 * EPS32 * mag * inv + 1e-30,
    stats: [st[0] / nc, st[1] / nr, st[2] / nc, st[3] / nr, st[4], st[5]],
    statsTol: [(8 * EPS32 * stMag[0]) / nc, (8 * EPS32 * stMag[1]) / nr, (2 * EPS32 * stMag[2]) / nc, (2 * EPS32 * stMag[3]) / nr, 0, 0],
    g,
    gTol,
  };
}

interface KtoCase {
  b: number;
  beta: number;
  kl: number;
  wd?: number;
  wu?: number;
  /** fraction of desirable rows */
  frac: number;
  gradScale?: number;
  fd: boolean;
  seed: number;
}

function ktoCase(t: Test, cs: KtoCase) {
  const rng = new Rng(cs.seed);
  const b = cs.b;
  const x: KtoInputs = { b, policy: new Float32Array(b), ref: new Float32Array(b), desirable: new Float32Array(b) };
  for (let i = 0; i < b; ++i) {
    const want = rng.uniform() < cs.frac;
    x.desirable[i] = want ? 1 : 0;
    x.policy[i] = f32(-rng.uniform(10, 200));
    x.ref[i] = f32(x.policy[i] - (rng.normal() * 3 + (want ? 0.5 : -0.5)));
  }
  const hp: KtoHyper = { beta: f32(cs.beta), kl: f32(cs.kl), wd: f32(cs.wd ?? 1), wu: f32(cs.wu ?? 1) };
  const gs = f32(cs.gradScale ?? 1);
  const ref = ktoRef(x, hp);
  const out = runAll(t, (isa) => {
    const loss = new Float32Array(1), dpolicy = new Float32Array(b).fill(7), stats = new Float32Array(6).fill(7);
    op('kto_loss', { ...x, kl: cs.kl, beta: cs.beta, desirableWeight: cs.wd ?? 1, undesirableWeight: cs.wu ?? 1, gradScale: cs.gradScale ?? 1, loss, dpolicy, stats }, isa);
    return { loss, dpolicy, stats };
  });
  expectClose(t, out.loss, [ref.loss], ref.lossTol, 'loss vs float64');
  expectClose(t, out.stats, ref.stats, ref.statsTol, 'stats [chosen reward, rejected reward, chosen logps, rejected logps, chosen count, rejected count] vs float64');
  const g = ref.g.map((v) => v * gs);
  expectClose(t, out.dpolicy, g, ref.gTol.map((v) => v * Math.abs(gs) + 1e-30), 'dpolicy vs analytic');
  const fd: [Float32Array, Float64Array][] = cs.fd ? [[out.dpolicy, fdGrad((v) => ktoRef(x, hp, v).loss * gs, x.policy)]] : [];
  if (cs.fd) expectFd(t, fd[0][0], fd[0][1], 'dpolicy');
  track({ loss: out.loss, grads: [[out.dpolicy, g]] }, ref.loss, fd);
  return { ref, out };
}

t.test('kto_loss: loss, statistics, gradients', async (t) => {
  await t.test('beta 0.1, kl 0.3, mixed labels', async (t) => void ktoCase(t, { b: 64, beta: 0.1, kl: 0.3, frac: 0.5, fd: true, seed: 161 }));
  await t.test('beta 0.5, kl 1.2, weights 1 / 1.33, gradScale 0.5', async (t) => void ktoCase(t, { b: 97, beta: 0.5, kl: 1.2, wd: 1, wu: 1.33, frac: 0.4, gradScale: 0.5, fd: true, seed: 162 }));
  await t.test('beta 2, kl 0 (clamped estimate), weights 1.33 / 1', async (t) => void ktoCase(t, { b: 64, beta: 2, kl: 0, wd: 1.33, wu: 1, frac: 0.6, fd: true, seed: 163 }));
  await t.test('only desirable rows', async (t) => {
    const { out } = ktoCase(t, { b: 40, beta: 0.5, kl: 0.4, frac: 1, fd: true, seed: 164 });
    t.same([out.stats[1], out.stats[3], out.stats[4], out.stats[5]], [0, 0, 40, 0], 'no undesirable rows: their means 0, counts 40 / 0');
  });
  await t.test('only undesirable rows', async (t) => {
    const { out } = ktoCase(t, { b: 40, beta: 0.5, kl: 0.4, frac: 0, fd: true, seed: 165 });
    t.same([out.stats[0], out.stats[2], out.stats[4], out.stats[5]], [0, 0, 0, 40], 'no desirable rows: their means 0, counts 0 / 40');
  });
  await t.test('b=30000 (many chunks)', async (t) => void ktoCase(t, { b: 30000, beta: 0.1, kl: 0.5, wu: 1.33, frac: 0.5, fd: false, seed: 166 }));
  await t.test('a worked example', async (t) => {
    // desirable: r = -10 - -11 = 1, beta 1, kl 0.5: 1 - sig(0.5) = 0.3775407;
    // undesirable: r = -14 - -12 = -2, w_u 1.33: 1.33 (1 - sig(0.5 - -2)) = 1.33 * 0.0758582 = 0.1008914.
    // loss = (0.3775407 + 0.1008914) / 2 = 0.2392160. Gradients / 2: -sig(0.5) sig(-0.5) / 2 = -0.1175019,
    // +1.33 sig(2.5) sig(-2.5) / 2 = 0.0466190.
    for (const isa of KERNELS) {
      const loss = new Float32Array(1), dpolicy = new Float32Array(2), stats = new Float32Array(6);
      op('kto_loss', { b: 2, policy: F([-10, -14]), ref: F([-11, -12]), desirable: F([1, 0]), kl: 0.5, beta: 1, desirableWeight: 1, undesirableWeight: 1.33, loss, dpolicy, stats }, isa);
      expectClose(t, loss, [0.239216], 1e-6, `${isa}: loss`);
      expectClose(t, dpolicy, [-0.1175019, 0.046619], 1e-6, `${isa}: dpolicy`);
      t.same([...stats], [1, -2, -10, -14, 1, 1], `${isa}: rewards, logps, counts`);
    }
  });
});

t.test('summary: the largest differences of the ops from float64', async (t) => {
  t.comment(`loss (relative) ${worst.loss.toExponential(2)}; gradients vs analytic (max|diff| / max|g| per array) ${worst.grad.toExponential(2)}; vs finite differences ${worst.fd.toExponential(2)}`);
  t.ok(worst.loss < 1e-5 && worst.grad < 1e-5, 'all well inside fp32 accuracy');
});

// ================================================================== through the engine

const FIXTURE = path.join(__dirname, 'fixtures', 'train-golden', 'models', 'llama');
// Preference pairs (token ids with the length of their prompt): chosen rows then rejected rows in one forward.
const CHOSEN = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13], prompt: 3 },
  { ids: [30, 31, 32, 33, 34, 200, 201], prompt: 5 },
];
const REJECTED = [
  { ids: [5, 17, 33, 2, 41, 19, 28], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2, 9, 44, 12, 3], prompt: 3 },
  { ids: [30, 31, 32, 33, 34, 150, 151, 152, 153], prompt: 5 },
];
const ROWS = [...CHOSEN, ...REJECTED];
const P = CHOSEN.length;
const SEQ = Math.max(...ROWS.map((r) => r.ids.length));
const W = SEQ - 1;
/** logp positions of each row's completion: token j >= prompt is predicted at j - 1. */
const SPANS = ROWS.map((r): [number, number] => [r.prompt - 1, r.ids.length - 1]);
const MASK = spanMask(SEQ, SPANS);
const INPUT_IDS = ROWS.map((r) => r.ids);
const LENS = Float32Array.from(SPANS, ([a, e]) => e - a);

async function setup(): Promise<{ m: Model; tr: Trainer }> {
  const m = await loadModel(FIXTURE, { device: 'cpu' });
  const tr = m.trainer();
  tr.createLora({ r: 4, alpha: 8, seed: 3, targets: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
  const rng = new Rng(11);
  for (const { name, shape } of tr.trainable()) if (name.includes('lora_B')) tr.write(name, rng.normals(shape.reduce((a, b) => a * b, 1), 0.05));
  await tr.zeroGrad();
  return { m, tr };
}

const grads = (tr: Trainer) => Object.fromEntries(tr.trainable().map((x) => [x.name, tr.read(x.name, 'grad')]));

/** The training forward's log-probs and the engine's own per-row sums of them (row_dot with the mask, as the loss call forms them). */
async function engineSums(tr: Trainer): Promise<Float32Array> {
  const f = await tr.forward({ inputIds: INPUT_IDS });
  const sums = new Float32Array(ROWS.length);
  op('row_dot', { rows: ROWS.length, cols: W, x: f.flat.logp!, w: MASK, out: sums }, KERNELS[KERNELS.length - 1]);
  return sums;
}

/** The host gradient of the log-probs: each row's gradient on each of its mask tokens. */
function spread(perRow: ArrayLike<number>): Float32Array {
  const dlogp = new Float32Array(ROWS.length * W);
  SPANS.forEach(([a, e], row) => dlogp.fill(perRow[row], row * W + a, row * W + e));
  return dlogp;
}

/** Gradients of the loss call (backward({})) against those of backward({dlogp}) with the float64 dlogp. */
async function sameGradients(t: Test, tr: Trainer, fromLoss: Record<string, Float32Array>, perRow: ArrayLike<number>, what: string) {
  await tr.zeroGrad();
  await tr.forward({ inputIds: INPUT_IDS });
  await tr.backward({ dlogp: spread(perRow) });
  const host = grads(tr);
  let worst = 0, nonzero = 0, names = 0;
  for (const [name, b] of Object.entries(host)) {
    const a = fromLoss[name];
    let num = 0, den = 0;
    for (let i = 0; i < b.length; i++) (num = Math.max(num, Math.abs(a[i] - b[i]))), (den = Math.max(den, Math.abs(b[i])));
    names++;
    if (den > 0) nonzero++;
    worst = Math.max(worst, den > 0 ? num / den : num);
  }
  t.equal(nonzero, names, `${what}: every one of the ${names} trainable tensors has a nonzero gradient`);
  // The host dlogp is the float64 gradient rounded once; the loss call's is the fp32 kernel's (a few EPS32 off).
  t.ok(worst <= 1e-5, `${what}: parameter gradients equal those of the float64 dlogp spread over the mask: worst max|diff|/max|ref| ${worst.toExponential(2)}`);
}

interface EngineCase {
  type: PrefLossType;
  beta: number;
  ls?: number;
  gamma?: number;
  lengthNormalize?: boolean;
  gradScale: number;
  /** reference offsets from the policy sums (chosen, rejected), for the losses with a reference */
  refOffsets?: [number[], number[]];
}

const ENGINE_CASES: EngineCase[] = [
  // reference = policy + offset: h = -1.5, 2.5, -1.5 (sequence sums)
  { type: 'sigmoid', beta: 0.5, ls: 0.1, lengthNormalize: true, gradScale: 0.5, refOffsets: [[1, -1, 0.5], [-0.5, 1.5, -1]] },
  { type: 'robust', beta: 0.5, ls: 0.2, gradScale: 0.5, refOffsets: [[1, -1, 0.5], [-0.5, 1.5, -1]] },
  // h = 4, -2, 15, z = 0.4, -0.2, 1.5: two pairs inside the margin, one beyond, all off the kink
  { type: 'hinge', beta: 0.1, gradScale: 1, refOffsets: [[-3, 1, -10], [1, -1, 5]] },
  { type: 'ipo', beta: 0.5, gradScale: 0.7, refOffsets: [[1, -1, 0.5], [-0.5, 1.5, -1]] },
  { type: 'simpo', beta: 2, gamma: 0.5, ls: 0.1, gradScale: 0.5 },
  { type: 'orpo', beta: 0.25, gradScale: 0.5 },
];

t.test('through the engine: trainer.dpoLoss and trainer.ktoLoss on the tiny Llama', async (t) => {
  const { m, tr } = await setup();
  t.teardown(() => m.dispose());
  for (const cs of ENGINE_CASES) {
    await t.test(`${cs.type}${cs.lengthNormalize ? ' (lengthNormalize)' : ''}, beta ${cs.beta}`, async (t) => {
      await tr.zeroGrad();
      const sums = await engineSums(tr);
      const pc = sums.slice(0, P), pr = sums.slice(P);
      const perToken = cs.type === 'ipo' || cs.type === 'simpo' || cs.type === 'orpo' || !!cs.lengthNormalize;
      const refChosen = cs.refOffsets ? Float32Array.from(pc, (v, i) => v + cs.refOffsets![0][i]) : undefined;
      const refRejected = cs.refOffsets ? Float32Array.from(pr, (v, i) => v + cs.refOffsets![1][i]) : undefined;
      const s = await tr.dpoLoss({ mask: MASK, refChosen, refRejected, beta: cs.beta, lossType: cs.type, labelSmoothing: cs.ls, gamma: cs.gamma, lengthNormalize: cs.lengthNormalize, gradScale: cs.gradScale });
      await tr.backward({});
      const fromLoss = grads(tr);

      // The op on the engine's own sums and lengths: the same numbers.
      const x: PrefInputs = { b: P, pc, pr, rc: refChosen, rr: refRejected, ...(perToken ? { lc: LENS.slice(0, P), lr: LENS.slice(P) } : {}) };
      const loss = new Float32Array(1), stats = new Float32Array(6);
      op('dpo_loss', { b: P, lossType: TYPE_ID[cs.type], policyChosen: pc, policyRejected: pr, refChosen, refRejected, lenChosen: x.lc, lenRejected: x.lr, beta: cs.beta, labelSmoothing: cs.ls ?? 0, gamma: cs.gamma ?? 0, gradScale: cs.gradScale, loss, stats }, KERNELS[KERNELS.length - 1]);
      t.equal(s.loss, loss[0], `loss ${s.loss} is the op's on the engine's sums and lengths`);
      t.same([s.accuracy, s.rewardsChosen, s.rewardsRejected, s.margin], [stats[0], stats[1], stats[2], stats[3]], 'accuracy, rewards, margin are the op\'s');
      if (cs.type === 'orpo') t.same([s.nll, s.logOdds], [stats[4], stats[5]], 'ORPO: nll and log odds are the op\'s');
      else t.ok(s.nll === undefined && s.logOdds === undefined, 'nll and logOdds only for ORPO');
      const mean = (a: Float32Array) => a.reduce((u, v) => u + v, 0) / a.length;
      t.ok(Math.abs(s.logpsChosen - mean(pc)) <= 1e-12 * Math.abs(mean(pc)) && Math.abs(s.logpsRejected - mean(pr)) <= 1e-12 * Math.abs(mean(pr)), 'logps: the mean sums');
      t.equal(s.pairs, P, 'pairs');

      // And against float64.
      const hp: Hyper = { beta: f32(cs.beta), ls: f32(cs.ls ?? 0), gamma: f32(cs.gamma ?? 0) };
      const ref = prefRef(cs.type, x, hp);
      t.ok(Math.abs(s.loss - ref.loss) <= ref.lossTol, `loss vs float64 ${ref.loss} (|diff| ${Math.abs(s.loss - ref.loss).toExponential(2)} <= ${ref.lossTol.toExponential(2)})`);
      if (cs.type === 'hinge') t.ok(ref.z.some((z) => z < 1) && ref.z.some((z) => z > 1), `both sides of the hinge: z = ${Array.from(ref.z, (z) => z.toFixed(3)).join(', ')}`);

      // The gradient left for backward: the float64 per-pair gradient (per-token: over the length) times gradScale on each token.
      const gs = f32(cs.gradScale);
      await sameGradients(t, tr, fromLoss, [...ref.gc, ...ref.gr].map((v) => v * gs), cs.type);
    });
  }

  await t.test('kto, beta 0.5, kl 0.7, weights 1 / 1.33, gradScale 0.5', async (t) => {
    await tr.zeroGrad();
    const sums = await engineSums(tr);
    const desirable = F([1, 0, 1, 1, 0, 0]);
    const refLogps = Float32Array.from(sums, (v, i) => v + [-1.5, 2, 0.5, -3, -1, 0.5][i]);
    const cs = { beta: 0.5, kl: 0.7, wd: 1, wu: 1.33, gradScale: 0.5 };
    const s = await tr.ktoLoss({ mask: MASK, refLogps, desirable, kl: cs.kl, beta: cs.beta, desirableWeight: cs.wd, undesirableWeight: cs.wu, gradScale: cs.gradScale });
    await tr.backward({});
    const fromLoss = grads(tr);
    const loss = new Float32Array(1), stats = new Float32Array(6);
    op('kto_loss', { b: ROWS.length, policy: sums, ref: refLogps, desirable, kl: cs.kl, beta: cs.beta, desirableWeight: cs.wd, undesirableWeight: cs.wu, gradScale: cs.gradScale, loss, stats }, KERNELS[KERNELS.length - 1]);
    t.equal(s.loss, loss[0], `loss ${s.loss} is the op's on the engine's sums`);
    t.same([s.rewardsChosen, s.rewardsRejected, s.logpsChosen, s.logpsRejected, s.chosen, s.rejected], [...stats], 'rewards, logps, counts are the op\'s');
    t.equal(s.kl, f32(cs.kl), 'kl: the reference point given');
    const hp: KtoHyper = { beta: f32(cs.beta), kl: f32(cs.kl), wd: f32(cs.wd), wu: f32(cs.wu) };
    const ref = ktoRef({ b: ROWS.length, policy: sums, ref: refLogps, desirable }, hp);
    t.ok(Math.abs(s.loss - ref.loss) <= ref.lossTol, `loss vs float64 ${ref.loss} (|diff| ${Math.abs(s.loss - ref.loss).toExponential(2)} <= ${ref.lossTol.toExponential(2)})`);
    await sameGradients(t, tr, fromLoss, ref.g.map((v) => v * f32(cs.gradScale)), 'kto');
  });
});

t.test('through the engine: the arguments it refuses, each named', async (t) => {
  const { m, tr } = await setup();
  t.teardown(() => m.dispose());
  await tr.forward({ inputIds: INPUT_IDS, download: false });
  const ref3 = new Float32Array(P);
  const refs = { refChosen: ref3, refRejected: ref3 };
  const bad = { code: 'E_ARGUMENT' };
  await t.rejects(tr.dpoLoss({ mask: MASK, ...refs, beta: 0.1, lossType: 'simpo' }), { ...bad, message: /SimPO and ORPO use no reference model: give no 'refChosen' \/ 'refRejected'/ }, 'simpo with reference sums');
  await t.rejects(tr.dpoLoss({ mask: MASK, refChosen: ref3, beta: 0.1, lossType: 'orpo' }), { ...bad, message: /give no 'refChosen'/ }, 'orpo with reference sums');
  await t.rejects(tr.dpoLoss({ mask: MASK, beta: 0.1, lossType: 'sigmoid' }), { ...bad, message: /'refChosen' and 'refRejected' need one element per pair \(3\)/ }, 'sigmoid without reference sums');
  await t.rejects(tr.dpoLoss({ mask: MASK, refChosen: ref3, beta: 0.1, lossType: 'ipo' }), { ...bad, message: /'refChosen' and 'refRejected'/ }, 'ipo with one of the two');
  await t.rejects(tr.dpoLoss({ mask: MASK, ...refs, beta: 0.1, lossType: 'robust', labelSmoothing: 0.5 }), { ...bad, message: /labelSmoothing in \[0, 0\.5\), got 0\.5/ }, 'robust with labelSmoothing 0.5 (its 1 / (1 - 2 ls))');
  await t.rejects(tr.dpoLoss({ mask: MASK, ...refs, beta: 0.1, lossType: 'robust', labelSmoothing: 0.7 }), { ...bad, message: /labelSmoothing/ }, 'robust with labelSmoothing 0.7');
  await t.rejects(tr.dpoLoss({ mask: MASK, ...refs, beta: 0, lossType: 'hinge' }), { ...bad, message: /beta must be > 0/ }, 'beta 0');
  // A row with no completion token: a per-token score would divide by 0.
  const holed = MASK.slice();
  holed.fill(0, 4 * W, 5 * W);
  for (const lossType of ['ipo', 'simpo', 'orpo'] as const)
    await t.rejects(tr.dpoLoss({ mask: holed, ...(lossType === 'ipo' ? refs : {}), beta: 0.1, lossType }), { ...bad, message: /row 4 has no completion token in the mask/ }, `${lossType}: an empty mask row`);
  await t.rejects(tr.dpoLoss({ mask: holed, ...refs, beta: 0.1, lossType: 'sigmoid', lengthNormalize: true }), { ...bad, message: /row 4 has no completion token in the mask/ }, 'sigmoid with lengthNormalize: an empty mask row');
  await t.rejects(tr.dpoLoss({ mask: MASK, ...refs, beta: 0.1, lossType: 'nope' as PrefLossType }), { ...bad, message: /'lossType' must be sigmoid, robust, hinge, ipo, simpo or orpo, got 'nope'/ }, 'an unknown lossType');
  // KTO.
  const n = ROWS.length, rows = new Float32Array(n);
  const kto = { mask: MASK, refLogps: rows, beta: 0.1, kl: 0.2 };
  await t.rejects(tr.ktoLoss({ ...kto, desirable: F([1, 0, 0.5, 1, 0, 1]) }), { ...bad, message: /'desirable' must hold 1 \(desirable\) or 0 \(undesirable\)/ }, 'desirable 0.5');
  await t.rejects(tr.ktoLoss({ ...kto, desirable: F([1, 0, 2, 1, 0, 1]) }), { ...bad, message: /'desirable'/ }, 'desirable 2');
  await t.rejects(tr.ktoLoss({ ...kto, desirable: F([1, 0, 1, 1, 0, 1]), kl: -0.1 }), { ...bad, message: /kl must be a finite number >= 0/ }, 'negative kl');
  await t.rejects(tr.ktoLoss({ ...kto, desirable: F([1, 0, 1, 1, 0, 1]), kl: NaN }), { ...bad, message: /kl must be a finite number/ }, 'kl NaN');
  await t.rejects(tr.ktoLoss({ ...kto, desirable: F([1, 0, 1]) }), { ...bad, message: /'desirable' has 3 elements, expected one per row \(6\)/ }, 'desirable of the wrong size');
  await t.rejects(tr.ktoLoss({ ...kto, refLogps: new Float32Array(2), desirable: F([1, 0, 1, 1, 0, 1]) }), { ...bad, message: /'refLogps' has 2 elements/ }, 'refLogps of the wrong size');
  await t.rejects(tr.ktoLoss({ ...kto, desirable: F([1, 0, 1, 1, 0, 1]), beta: -1 }), { ...bad, message: /beta must be > 0/ }, 'kto beta -1');
});
