// The ppo_loss op's GRPO-family fields (native/ops/op_args.h PpoLossOp), run
// through the test hook runOp on every CPU kernel, against a float64
// reference of the policy part written here from the formulas:
//
//   r    = exp(logp - old_logp)
//   pg_t = max(-A r, -A clip(r, 1 - eps_lo, 1 + eps_hi))         clip_range, clip_range_high
//   kl_t = k3(d) = exp(-d) + d - 1, d = logp - ref_logp            (k1: d)
//          times r with kl_times_ratio (TRL's use_bias_correction_kl)
//   loss = sum_t w_t (pg_t + kl_coef kl_t) / denom                 w: the mask's values; denom default sum(w)
//   dloss/dlogp_t = grad_scale w_t (pg'_t + kl_coef kl'_t) / denom
//     pg'  = -A r where the unclipped branch is the max (0 where the clipped one is strictly larger)
//     kl'  = r (kl + dkl/dd): for k3 r (1 - e^-d + e^-d + d - 1) = r d; for k1 r (d + 1)
//
// Gradients are checked against that analytic float64 gradient and against
// central finite differences (Richardson-extrapolated) of the float64 loss;
// inputs for the finite differences are kept 5e-3 away from the clip bounds.
// At exactly a bound the two branches are equal: the gradient is the
// unclipped one (-A r: torch.clamp passes its gradient at the bounds, so
// TRL's max of two equal branches has that gradient too) and the token is not
// counted as clipped; one fp32 step outside, it is.
//
// Bounds (EPS32 = 2^-24) as test/ops-loss.test.ts: a per-token term is a few
// fp32 operations summed in fp64, so the loss and statistics are held to
// 32 EPS32 of the magnitudes of their terms, gradients to 16 EPS32 of theirs.
import t from 'tap';
import type { Test } from 'tap';
import { EPS32, expectClose, expectEqual, f32, KERNELS, op, Rng } from './helpers/ref';

interface Hyper {
  epsLo: number;
  /** undefined: the op's default (symmetric). */
  epsHi?: number;
  klCoef: number;
  klEstimator: 'k1' | 'k3';
  klTimesRatio: boolean;
  /** undefined: sum of the mask. */
  denom?: number;
  gradScale: number;
}

interface Inputs {
  n: number;
  logp: Float32Array;
  oldLogp: Float32Array;
  advantages: Float32Array;
  refLogp?: Float32Array;
  mask?: Float32Array;
}

const STAT = { pg: 0, vf: 1, kl: 2, ent: 3, akl: 4, clip: 5, vclip: 6, ratio: 7, tokens: 8 };

/** The policy part of PPO in float64 (see the file comment); `logp` may be overridden for finite differences. */
function ref(x: Inputs, hp: Hyper, logpOver?: ArrayLike<number>) {
  const logp = logpOver ?? x.logp;
  // The bounds as the kernel forms them: 1 -/+ eps in fp32 on the fp32 hyper-parameters.
  const lo = f32(1 - f32(hp.epsLo)), hi = f32(1 + f32(hp.epsHi ?? hp.epsLo));
  const klC = f32(hp.klCoef), gs = f32(hp.gradScale);
  let count = 0;
  for (let i = 0; i < x.n; i++) count += x.mask ? x.mask[i] : 1;
  const div = hp.denom !== undefined ? hp.denom : count > 0 ? count : 1;
  let pg = 0, kl = 0, akl = 0, clip = 0, ratio = 0, mag = 0, klMag = 0;
  const dlogp = new Float64Array(x.n), dmag = new Float64Array(x.n);
  const branches = { clippedHigh: 0, clippedLow: 0, unclippedHigh: 0, unclippedLow: 0, inside: 0, between: 0 };
  for (let i = 0; i < x.n; i++) {
    const w = x.mask ? x.mask[i] : 1;
    if (w === 0) continue;
    const A = x.advantages[i], d = logp[i] - x.oldLogp[i];
    const r = Math.exp(d);
    const rc = Math.min(Math.max(r, lo), hi);
    const l1 = -A * r, l2 = -A * rc;
    const clipped = l2 > l1;
    if (clipped) r > 1 ? branches.clippedHigh++ : branches.clippedLow++;
    else if (r > hi) branches.unclippedHigh++;
    else if (r < lo) branches.unclippedLow++;
    else branches.inside++;
    // Between the symmetric bound 1 + eps_lo and the raised one: clipped with symmetric bounds (A > 0), not here.
    if (A > 0 && r > 1 + f32(hp.epsLo) && r < hi) branches.between++;
    pg += w * Math.max(l1, l2);
    clip += clipped ? w : 0;
    ratio += w * r;
    akl += w * 0.5 * d * d;
    let g = clipped ? 0 : -A * r;
    let gm = Math.abs(g) * (1 + Math.abs(d));
    mag += w * Math.abs(A) * r * (1 + Math.abs(d));
    if (x.refLogp) {
      const e = logp[i] - x.refLogp[i];
      let k = hp.klEstimator === 'k3' ? Math.exp(-e) + e - 1 : e;
      let dk = hp.klEstimator === 'k3' ? 1 - Math.exp(-e) : 1;
      if (hp.klTimesRatio) {
        // d(r k)/dlogp = r k + r dk (r depends on logp too).
        dk = r * (k + dk);
        k = r * k;
      }
      kl += w * k;
      // fp32 e is off by ~EPS32 (|logp| + |ref|); the ratio by ~EPS32 |d|.
      const em = (Math.abs(e) + 1) * (Math.abs(logp[i]) + Math.abs(x.refLogp[i]) + Math.abs(d) + 1) * (hp.klTimesRatio ? r : 1);
      klMag += w * em;
      g += klC * dk;
      gm += Math.abs(klC) * em;
    }
    dlogp[i] = (gs * w * g) / div;
    dmag[i] = (Math.abs(gs * w) * gm) / div;
  }
  const m = (s: number) => s / div;
  const loss = m(pg) + klC * m(kl);
  return {
    loss,
    lossMag: m(mag) + Math.abs(klC) * m(klMag),
    stats: [m(pg), 0, m(kl), 0, m(akl), m(clip), 0, m(ratio), count],
    statMag: [m(mag), 0, m(klMag), 0, m(akl) + 1e-30, m(clip), 0, m(ratio), count / 32],
    dlogp,
    dmag,
    branches,
    div,
  };
}

/** Central differences of f at x0, steps h and h/2 (h = 1e-4 max(1, |x|)) combined as (4 D(h/2) - D(h)) / 3. */
function finiteDiff(f: (x: Float64Array) => number, x0: ArrayLike<number>, skip: (i: number) => boolean): Float64Array {
  const x = Float64Array.from(x0), g = new Float64Array(x.length);
  const central = (i: number, h: number) => {
    const v = x[i];
    x[i] = v + h;
    const up = f(x);
    x[i] = v - h;
    const down = f(x);
    x[i] = v;
    return (up - down) / (2 * h);
  };
  for (let i = 0; i < x.length; i++) {
    if (skip(i)) continue;
    const h = 1e-4 * Math.max(1, Math.abs(x[i]));
    g[i] = (4 * central(i, h / 2) - central(i, h)) / 3;
  }
  return g;
}

/** Runs ppo_loss on every kernel (outputs bitwise equal across kernels); returns the first kernel's outputs. */
function run(t: Test, x: Inputs, hp: Hyper, extra: Record<string, unknown> = {}) {
  let first: { loss: Float32Array; dlogp: Float32Array; stats: Float32Array } | undefined;
  for (const isa of KERNELS) {
    const loss = new Float32Array(1), dlogp = new Float32Array(x.n).fill(7), stats = new Float32Array(9).fill(7);
    const args: Record<string, unknown> = {
      ...x,
      clipRange: hp.epsLo,
      klCoef: hp.klCoef,
      klEstimator: hp.klEstimator,
      klTimesRatio: hp.klTimesRatio,
      gradScale: hp.gradScale,
      loss,
      dlogp,
      stats,
      ...extra,
    };
    if (hp.epsHi !== undefined) args.clipRangeHigh = hp.epsHi;
    if (hp.denom !== undefined) args.denom = hp.denom;
    op('ppo_loss', args, isa);
    if (!first) first = { loss, dlogp, stats };
    else for (const k of ['loss', 'dlogp', 'stats'] as const) expectEqual(t, { loss, dlogp, stats }[k], first[k], `${k} on ${isa} equals ${KERNELS[0]}`);
  }
  return first!;
}

function check(t: Test, x: Inputs, hp: Hyper, fd = true) {
  const want = ref(x, hp);
  const got = run(t, x, hp);
  expectClose(t, got.loss, [want.loss], 32 * EPS32 * want.lossMag + 1e-30, 'loss vs float64');
  expectClose(t, got.stats, want.stats, want.statMag.map((v) => 32 * EPS32 * v + 1e-30), 'stats [pg, vf, kl, entropy, approxkl, clipfrac, vf_clipfrac, ratio, tokens] vs float64');
  expectClose(t, got.dlogp, want.dlogp, Array.from(want.dmag, (v) => 16 * EPS32 * v + 1e-30), 'dlogp vs the analytic float64 gradient');
  if (x.mask) t.ok(x.mask.every((w, i) => w !== 0 || Object.is(got.dlogp[i], 0)), 'dlogp is +0 where the mask is 0');
  if (fd) {
    const num = finiteDiff((v) => ref(x, hp, v).loss * f32(hp.gradScale), x.logp, (i) => !!x.mask && x.mask[i] === 0);
    const big = num.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expectClose(t, got.dlogp, num, Array.from(num, (v) => 2e-6 * Math.abs(v) + 2e-7 * big + 1e-30), 'dlogp vs finite differences of the float64 loss');
  }
  return { want, got };
}

/** Random inputs: log-ratios within +-0.5, every ratio >= 5e-3 from both bounds, NaN where the mask is 0. */
function inputs(seed: number, n: number, hp: Hyper, o: { zeros?: number; weights?: 'binary' | 'fractional'; ref?: boolean }): Inputs {
  const rng = new Rng(seed);
  const lo = 1 - hp.epsLo, hi = 1 + (hp.epsHi ?? hp.epsLo);
  const x: Inputs = { n, logp: new Float32Array(n), oldLogp: new Float32Array(n), advantages: new Float32Array(n) };
  if (o.ref) x.refLogp = new Float32Array(n);
  if (o.weights) {
    x.mask = new Float32Array(n);
    for (let i = 0; i < n; i++) x.mask[i] = rng.uniform() < (o.zeros ?? 0) ? 0 : o.weights === 'binary' ? 1 : f32(1 / rng.int(1, 9));
    x.mask[0] = 1;
  }
  for (let i = 0; i < n; i++) {
    for (;;) {
      const old = f32(rng.uniform(-7, -0.05));
      const lp = f32(Math.min(old + rng.uniform(-0.5, 0.5), -1e-3));
      const r = Math.exp(lp - old);
      if (Math.abs(r - lo) < 5e-3 || Math.abs(r - hi) < 5e-3) continue;
      x.oldLogp[i] = old;
      x.logp[i] = lp;
      break;
    }
    x.advantages[i] = f32(rng.normal() * 1.3);
    if (x.refLogp) x.refLogp[i] = f32(x.logp[i] + rng.normal() * 0.4);
  }
  if (x.mask) for (const a of [x.logp, x.oldLogp, x.advantages, x.refLogp]) if (a) for (let i = 0; i < n; i++) if (x.mask[i] === 0) a[i] = NaN;
  return x;
}

const BASE: Hyper = { epsLo: 0.2, epsHi: 0.28, klCoef: 0, klEstimator: 'k3', klTimesRatio: false, gradScale: 1 };

t.test('asymmetric clip bounds (clip_range 0.2, clip_range_high 0.28): loss, gradient and clipfrac on each side', async (t) => {
  const x = inputs(101, 600, BASE, { zeros: 0.2, weights: 'binary' });
  const { want } = check(t, x, BASE);
  const b = want.branches;
  t.ok(b.clippedHigh > 0 && b.clippedLow > 0, `clipped above 1.28 (A > 0: ${b.clippedHigh}) and below 0.8 (A < 0: ${b.clippedLow})`);
  t.ok(b.unclippedHigh > 0 && b.unclippedLow > 0, `outside but unclipped: above (A < 0: ${b.unclippedHigh}), below (A > 0: ${b.unclippedLow})`);
  t.ok(b.between > 10, `${b.between} tokens with A > 0 and ratio in (1.2, 1.28): clipped under symmetric bounds, trained here`);
  // The same batch with symmetric bounds: those tokens now clip, so the two losses differ.
  const sym = { ...BASE, epsHi: undefined };
  const s = check(t, x, sym, false);
  t.ok(s.want.branches.clippedHigh > b.clippedHigh, `symmetric bounds clip more above (${s.want.branches.clippedHigh} > ${b.clippedHigh})`);
  t.ok(Math.abs(s.got.loss[0] - ref(x, BASE).loss) > 1e-3, 'clip_range_high changes the loss');
  // clip_range_high given as the same value as clip_range: the symmetric op, bit for bit.
  const same = run(t, x, { ...BASE, epsHi: 0.2 });
  expectEqual(t, same.dlogp, s.got.dlogp, 'clip_range_high = clip_range equals the default');
});

t.test('a narrower upper bound (clip_range 0.3, clip_range_high 0.1) and a lower bound near 0', async (t) => {
  check(t, inputs(102, 300, { ...BASE, epsLo: 0.3, epsHi: 0.1 }, {}), { ...BASE, epsLo: 0.3, epsHi: 0.1 });
  check(t, inputs(103, 300, { ...BASE, epsLo: 0.9, epsHi: 0.28 }, { zeros: 0.1, weights: 'binary' }), { ...BASE, epsLo: 0.9, epsHi: 0.28 });
});

/** A log-ratio (with old_logp 0) whose fp32 ratio, as the kernel computes it, is exactly `target`, found by stepping the fp32 log-ratio. */
function logRatioFor(target: number): number {
  const ratioOf = (lp: number) => {
    const stats = new Float32Array(9);
    op('ppo_loss', { n: 1, logp: new Float32Array([lp]), oldLogp: new Float32Array([0]), advantages: new Float32Array([1]), loss: new Float32Array(1), stats }, KERNELS[0]);
    return stats[STAT.ratio];
  };
  const buf = new Float32Array(1), bits = new Int32Array(buf.buffer);
  buf[0] = Math.log(target);
  for (let k = 0; k < 200; k++) {
    const r = ratioOf(buf[0]);
    if (r === target) return buf[0];
    bits[0] += r < target === buf[0] > 0 ? 1 : -1; // step the magnitude up or down one ulp
  }
  throw new Error(`no fp32 log-ratio gives the ratio ${target}`);
}

t.test('exactly at each bound and one fp32 step outside', async (t) => {
  const lo = f32(1 - f32(0.2)), hi = f32(1 + f32(0.28));
  const up = (v: number) => {
    const b = new Float32Array([v]), i = new Int32Array(b.buffer);
    i[0] += 1;
    return b[0];
  };
  const down = (v: number) => {
    const b = new Float32Array([v]), i = new Int32Array(b.buffer);
    i[0] -= 1;
    return b[0];
  };
  // Tokens: [at hi, A = 2], [at hi, A = -1], [at lo, A = -2], [at lo, A = 1], [one step above hi, A = 2], [one step below lo, A = -2].
  const ratios = [hi, hi, lo, lo, up(hi), down(lo)];
  const logs = ratios.map(logRatioFor);
  const A = [2, -1, -2, 1, 2, -2];
  const x: Inputs = { n: 6, logp: Float32Array.from(logs), oldLogp: new Float32Array(6), advantages: Float32Array.from(A) };
  const hp: Hyper = { ...BASE, denom: 1 };
  const out = run(t, x, hp);
  // Per token (denom 1 makes the gradient the per-token value): at a bound -A r whatever the sign of A; outside, clipped: 0.
  const dwant = [-2 * hi, 1 * hi, 2 * lo, -1 * lo, 0, 0];
  expectClose(t, out.dlogp, dwant, dwant.map((v) => 2 * EPS32 * Math.abs(v)), 'dlogp: -A r at the bounds, 0 one step outside on the clipped side');
  // Loss: -A * bound for the four at the bounds, -A * bound for the clipped two as well (the clipped value).
  const lwant = -2 * hi + hi + 2 * lo - lo - 2 * hi + 2 * lo;
  expectClose(t, out.loss, [lwant], 8 * EPS32 * 12, 'loss: the bound values');
  t.equal(out.stats[STAT.clip], 2, 'clipfrac (a sum with denom 1): only the two tokens outside count');
  t.equal(out.stats[STAT.ratio], f32(hi + hi + lo + lo + up(hi) + down(lo)), 'the ratios are the fp32 values aimed at (their sum, exact in float64, rounded once)');
});

t.test('denom: the loss and the gradient are sum(w l) / denom; statistics too; tokens stays sum(mask)', async (t) => {
  for (const [seed, weights, denom, gradScale] of [
    [111, 'binary', 1234.5, 1],
    [112, 'fractional', 37, 0.5],
    [113, 'fractional', 0.75, 2],
  ] as const) {
    const hp: Hyper = { ...BASE, denom, gradScale };
    const x = inputs(seed, 250, hp, { zeros: 0.3, weights });
    const { want, got } = check(t, x, hp);
    const tokens = x.mask!.reduce((s, w) => s + w, 0);
    t.equal(want.div, denom, `divisor ${denom}`);
    expectClose(t, [got.stats[STAT.tokens]], [tokens], EPS32 * tokens, `tokens = sum(mask) = ${tokens.toFixed(3)}, not the denom`);
    // Against the default divisor: everything scales by sum(mask) / denom.
    const dflt = run(t, x, { ...hp, denom: undefined });
    expectClose(t, got.loss, [(dflt.loss[0] * tokens) / denom], 8 * EPS32 * Math.abs((dflt.loss[0] * tokens) / denom) + 1e-30, 'loss = default loss * sum(mask) / denom');
  }
});

t.test('mask values are weights (GRPO per-sequence means: 1/length)', async (t) => {
  // Three sequences of lengths 2, 3, 5 in one flat array, weights 1/length, denom = 3 sequences.
  const lens = [2, 3, 5], n = 10;
  const rng = new Rng(120);
  const x: Inputs = { n, logp: new Float32Array(n), oldLogp: new Float32Array(n), advantages: new Float32Array(n), mask: new Float32Array(n) };
  let k = 0;
  for (const [s, L] of lens.entries())
    for (let j = 0; j < L; j++, k++) {
      x.oldLogp[k] = f32(rng.uniform(-4, -0.5));
      x.logp[k] = f32(x.oldLogp[k] + [0.05, -0.1, 0.15, 0.4, -0.4][(s + j) % 5]);
      x.advantages[k] = [0.7, -1.1, 0.3][s];
      x.mask![k] = f32(1 / L);
    }
  const hp: Hyper = { ...BASE, epsHi: undefined, denom: 3 };
  const { got } = check(t, x, hp);
  // The formula by sequence: mean over sequences of the token mean of the clipped surrogate.
  let byHand = 0;
  k = 0;
  for (const L of lens) {
    let s = 0;
    for (let j = 0; j < L; j++, k++) {
      const r = Math.exp(x.logp[k] - x.oldLogp[k]), A = x.advantages[k];
      s += Math.max(-A * r, -A * Math.min(Math.max(r, f32(1 - f32(0.2))), f32(1 + f32(0.2))));
    }
    byHand += s / L;
  }
  expectClose(t, got.loss, [byHand / 3], 1e-6, 'loss = mean over sequences of each sequence\'s token mean');
});

t.test('kl_times_ratio with k3: loss r k3, gradient r (logp - ref)', async (t) => {
  const hp: Hyper = { ...BASE, klCoef: 0.3, klEstimator: 'k3', klTimesRatio: true, gradScale: 0.7 };
  const x = inputs(131, 400, hp, { zeros: 0.25, weights: 'binary', ref: true });
  const { got } = check(t, x, hp);
  // The KL part alone (advantages 0: the surrogate and its gradient vanish), per token, written directly.
  const x0: Inputs = { ...x, advantages: new Float32Array(x.n) };
  const kOnly = run(t, x0, hp);
  const w = x.mask!;
  const tokens = w.reduce((s, v) => s + v, 0);
  const klWant = new Float64Array(x.n), gWant = new Float64Array(x.n);
  let klSum = 0;
  for (let i = 0; i < x.n; i++) {
    if (w[i] === 0) continue;
    const r = Math.exp(x.logp[i] - x.oldLogp[i]), d = x.logp[i] - x.refLogp![i];
    klSum += r * (Math.exp(-d) + d - 1);
    klWant[i] = r * (Math.exp(-d) + d - 1);
    gWant[i] = (f32(0.7) * f32(0.3) * r * d) / tokens;
  }
  expectClose(t, [kOnly.stats[STAT.kl]], [klSum / tokens], 1e-6 * (klSum / tokens), 'kl statistic = mean of r k3');
  expectClose(t, kOnly.dlogp, gWant, Array.from(gWant, (v) => 1e-5 * Math.abs(v) + 1e-12), 'dlogp = grad_scale kl_coef r (logp - ref) / tokens');
  // Without the ratio the KL statistic is the plain k3 mean and the gradient kl_coef (1 - e^-d).
  const plain = run(t, x0, { ...hp, klTimesRatio: false });
  let k3 = 0;
  for (let i = 0; i < x.n; i++) if (w[i] !== 0) k3 += Math.exp(-(x.logp[i] - x.refLogp![i])) + (x.logp[i] - x.refLogp![i]) - 1;
  expectClose(t, [plain.stats[STAT.kl]], [k3 / tokens], 1e-6 * (k3 / tokens), 'klTimesRatio false: the plain k3 mean');
  t.ok(Math.abs(plain.stats[STAT.kl] - kOnly.stats[STAT.kl]) > 1e-4, 'the ratio weighting changes the KL term');
  t.ok(Math.abs(got.loss[0] - kOnly.loss[0]) > 1e-3, 'with advantages the surrogate adds to it');
});

t.test('kl_times_ratio with k1, asymmetric bounds and a denom together', async (t) => {
  const hp: Hyper = { ...BASE, klCoef: 0.1, klEstimator: 'k1', klTimesRatio: true, denom: 321, gradScale: 1.5 };
  check(t, inputs(141, 300, hp, { zeros: 0.2, weights: 'fractional', ref: true }), hp);
});

t.test('runOp takes klTimesRatio as a boolean (as the loss API does) or as 0/1', async (t) => {
  const hp: Hyper = { ...BASE, klCoef: 0.5, klEstimator: 'k3', klTimesRatio: true };
  const x = inputs(151, 50, hp, { ref: true });
  const asBool = run(t, x, hp);
  const asOne = run(t, x, hp, { klTimesRatio: 1 });
  const off = run(t, x, hp, { klTimesRatio: false });
  expectEqual(t, asBool.dlogp, asOne.dlogp, 'true and 1 agree');
  t.ok(off.dlogp.some((v, i) => v !== asBool.dlogp[i]), 'false differs');
});
