// The loss kernels (sft_loss, pairwise_loss, ppo_loss, dpo_loss) and the
// per-row reductions that feed them (row_dot, row_dot_backward) against
// float64 references written here from the formulas of docs/losses.md: the
// loss, every statistic, and every gradient, the gradients both against the
// analytic float64 gradient and against central finite differences of the
// float64 reference loss (steps h = 1e-4 max(1, |x|) and h/2, Richardson). Inputs are random, with
// masked-out tokens holding NaN (the kernels must skip them), and are kept a
// little away from the kinks of the clipped PPO terms (ratio at 1 +- eps,
// value at v_old +- eps_v, the two value branches equal) so that finite
// differences are valid; the cases are checked to cover every branch.
//
// Bounds (EPS32 = 2^-24): each per-element term is a handful of fp32
// operations on fp32 inputs (a subtraction, an exp/log1p/expm1 good to ~2 ulp,
// a few products), summed in fp64, so the loss and the statistics are checked
// to 32 EPS32 times the sum of the magnitudes of the terms (and of the inputs
// whose fp32 differences feed an exp), divided by the count; gradients to
// 16 EPS32 of the magnitudes of their terms. Finite differences (truncation
// ~h^4 after extrapolation): 2e-6 |fd| + 2e-7 max|fd|.
//
// Statistics slots (native/ops/op_args.h):
//   sft:      [tokens, nll_sum]
//   pairwise: [accuracy, margin_mean, chosen_mean, rejected_mean]
//   ppo:      [pg_loss, vf_loss, kl, entropy, approx_kl, clipfrac, vf_clipfrac, ratio_mean, tokens]
//   dpo:      [accuracy, chosen_reward, rejected_reward, margin, nll, log_odds]
//
// row_dot (out[r] = sum_c w[r,c] x[r,c], fp64 sum rounded once) is checked to
// one fp32 rounding of the float64 sum plus 2^-52 of the magnitudes;
// row_dot_backward (dx = w dout, one fp32 product) exactly; the gradient of
// L = sum_r g[r] out[r] also against finite differences of the float64 L.
import t from 'tap';
import type { Test } from 'tap';
import { EPS32, expectClose, expectEqual, f32, KERNELS, op, Rng } from './helpers/ref';

const FD_REL = 1e-4;

/**
 * Central finite differences of f at x (a float64 copy is perturbed one
 * element at a time), with steps h and h/2 combined by Richardson
 * extrapolation, (4 D(h/2) - D(h)) / 3, which cancels the h^2 term: the
 * sequence log-prob sums of DPO are in the hundreds, so h = 1e-4 |x| moves
 * beta * h by up to ~0.04, and a plain central difference would be off by
 * ~1e-4 relative there.
 */
function fdGrad(f: (x: Float64Array) => number, x0: ArrayLike<number>, skip?: (i: number) => boolean): Float64Array {
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
    if (skip && skip(i)) continue;
    const v = x[i];
    const h = FD_REL * Math.max(1, Math.abs(v));
    g[i] = (4 * central(i, v, h / 2) - central(i, v, h)) / 3;
  }
  return g;
}

/** kernel gradient vs finite differences: 2e-6 |fd| + 2e-7 max|fd|. */
function expectFd(t: Test, got: ArrayLike<number>, fd: Float64Array, what: string) {
  let gmax = 0;
  for (const v of fd) gmax = Math.max(gmax, Math.abs(v));
  const tol = fd.map((v) => 2e-6 * Math.abs(v) + 2e-7 * gmax + 1e-30);
  expectClose(t, got, fd, tol, `${what} vs finite differences`);
}

/** Every masked-out element is +0 exactly. */
function zerosAt(t: Test, got: ArrayLike<number>, mask: ArrayLike<number> | undefined, what: string) {
  if (!mask) return;
  let ok = true, count = 0;
  for (let i = 0; i < got.length; ++i)
    if (mask[i] === 0) {
      count++;
      if (!Object.is(got[i], 0)) ok = false;
    }
  t.ok(ok, `${what}: +0 at the ${count} masked-out positions`);
}

/** A 0/1 mask with about `zeros` of its entries 0, never all 0 unless asked. */
function randomMask(rng: Rng, n: number, zeros: number): Float32Array {
  const m = new Float32Array(n);
  for (let i = 0; i < n; ++i) m[i] = rng.uniform() < zeros ? 0 : 1;
  if (zeros < 1 && n > 0) m[0] = 1;
  return m;
}

/** NaN at the masked-out positions (padding may hold anything). */
function poison(a: Float32Array, mask: Float32Array | undefined): Float32Array {
  if (mask) for (let i = 0; i < a.length; ++i) if (mask[i] === 0) a[i] = NaN;
  return a;
}

/** Runs the op on every kernel; returns the outputs of the first run and checks the others are bitwise equal. */
function runAll<T extends Record<string, Float32Array>>(t: Test, run: (isa: string) => T): T {
  let first: T | undefined;
  for (const isa of KERNELS) {
    const out = run(isa);
    if (!first) first = out;
    else for (const k of Object.keys(out)) expectEqual(t, out[k], first[k], `${k} on ${isa} equals ${KERNELS[0]}`);
  }
  return first!;
}

// ------------------------------------------------------------------ float64 helpers

const logSigmoid = (x: number): number => Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));
const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

// ================================================================== sft_loss

function sftRef(logp: ArrayLike<number>, mask: ArrayLike<number> | undefined, denom: number) {
  let tokens = 0, nll = 0, mag = 0;
  for (let i = 0; i < logp.length; ++i) {
    const w = mask ? mask[i] : 1;
    if (w === 0) continue;
    tokens += w;
    nll -= w * logp[i];
    mag += Math.abs(w * logp[i]);
  }
  const d = denom > 0 ? denom : tokens > 0 ? tokens : 1;
  return { loss: nll / d, tokens, nll, mag, d };
}

interface SftCase {
  n: number;
  zeros: number | null; // null: no mask
  denom: number;
  gradScale: number;
  fd: boolean;
  seed: number;
}

function sftCase(t: Test, cs: SftCase) {
  const rng = new Rng(cs.seed);
  const mask = cs.zeros === null ? undefined : randomMask(rng, cs.n, cs.zeros);
  if (mask && cs.zeros === 1) mask.fill(0);
  const logp = poison(rng.uniforms(cs.n, -12, 0), mask);
  const denom = f32(cs.denom);
  const ref = sftRef(logp, mask, denom);
  const out = runAll(t, (isa) => {
    const loss = new Float32Array(1), dlogp = new Float32Array(cs.n).fill(7), stats = new Float32Array(2);
    op('sft_loss', { n: cs.n, logp, mask, denom: cs.denom, gradScale: cs.gradScale, loss, dlogp, stats }, isa);
    return { loss, dlogp, stats };
  });
  expectClose(t, out.loss, [ref.loss], 4 * EPS32 * (ref.mag / ref.d + Math.abs(ref.loss)), 'loss');
  expectClose(t, out.stats, [ref.tokens, ref.nll], [EPS32 * ref.tokens, 4 * EPS32 * ref.mag], 'stats [tokens, nll_sum]');
  // Analytic: dlogp = -mask / denom * grad_scale.
  const g = Float64Array.from({ length: cs.n }, (_, i) => (mask && mask[i] === 0 ? 0 : (-(mask ? mask[i] : 1) / ref.d) * f32(cs.gradScale)));
  expectClose(t, out.dlogp, g, g.map((v) => 4 * EPS32 * Math.abs(v)), 'dlogp vs analytic');
  zerosAt(t, out.dlogp, mask, 'dlogp');
  if (cs.fd) {
    const fd = fdGrad((x) => sftRef(x, mask, denom).loss * f32(cs.gradScale), logp, (i) => mask !== undefined && mask[i] === 0);
    expectFd(t, out.dlogp, fd, 'dlogp');
  }
}

t.test('sft_loss: masked mean NLL, its gradient and statistics', async (t) => {
  const cases: SftCase[] = [
    { n: 1, zeros: null, denom: 0, gradScale: 1, fd: true, seed: 1 },
    { n: 517, zeros: 0.3, denom: 0, gradScale: 1, fd: true, seed: 2 },
    { n: 517, zeros: 0.3, denom: 1234, gradScale: 0.25, fd: true, seed: 3 },
    { n: 300, zeros: null, denom: 0, gradScale: 3, fd: true, seed: 4 },
    { n: 40, zeros: 1, denom: 0, gradScale: 1, fd: true, seed: 5 }, // every token masked out: loss 0, divisor 1
    { n: 100003, zeros: 0.5, denom: 0, gradScale: 0.5, fd: false, seed: 6 }, // many chunks
  ];
  for (const cs of cases) await t.test(`n=${cs.n} zeros=${cs.zeros} denom=${cs.denom} gradScale=${cs.gradScale}`, async (t) => sftCase(t, cs));
  await t.test('empty', async (t) => {
    const loss = new Float32Array([9]), stats = new Float32Array(2).fill(9);
    for (const isa of KERNELS) op('sft_loss', { n: 0, logp: new Float32Array(0), loss, stats }, isa);
    t.same([...loss, ...stats], [0, 0, 0]);
  });
});

// ================================================================== pairwise_loss

// With soft labels p (P(chosen better)): -p log sigmoid(z) - (1 - p) log sigmoid(-z), d/dz = sigmoid(z) - p.
function pairwiseRef(c: ArrayLike<number>, r: ArrayLike<number>, m: ArrayLike<number> | undefined, p?: ArrayLike<number>) {
  const b = c.length;
  let loss = 0, acc = 0, margin = 0, cm = 0, rm = 0, mag = 0;
  const dz = new Float64Array(b), zmag = new Float64Array(b);
  for (let i = 0; i < b; ++i) {
    const z = c[i] - r[i] - (m ? m[i] : 0);
    const term = p ? -p[i] * logSigmoid(z) - (1 - p[i]) * logSigmoid(-z) : -logSigmoid(z);
    loss += term;
    dz[i] = p ? sigmoid(z) - p[i] : -sigmoid(-z);
    zmag[i] = Math.abs(c[i]) + Math.abs(r[i]) + (m ? Math.abs(m[i]) : 0);
    mag += (p ? -logSigmoid(z) - logSigmoid(-z) : term) + zmag[i];
    acc += c[i] > r[i] ? 1 : 0;
    margin += c[i] - r[i];
    cm += c[i];
    rm += r[i];
  }
  const inv = b > 0 ? 1 / b : 0;
  return { loss: loss * inv, acc: acc * inv, margin: margin * inv, cm: cm * inv, rm: rm * inv, dz, zmag, mag: mag * inv };
}

function pairwiseCase(t: Test, b: number, withMargin: boolean, gradScale: number, scoreStd: number, fd: boolean, seed: number, withTarget = false) {
  const rng = new Rng(seed);
  const chosen = rng.normals(b, scoreStd, 0.3), rejected = rng.normals(b, scoreStd);
  const margin = withMargin ? rng.uniforms(b, 0, 2) : undefined;
  const target = withTarget ? rng.uniforms(b, 0, 1) : undefined;
  if (target) target.set([0, 1, 0.5].slice(0, b)); // the ends and a tie
  const ref = pairwiseRef(chosen, rejected, margin, target);
  const out = runAll(t, (isa) => {
    const loss = new Float32Array(1), dchosen = new Float32Array(b), drejected = new Float32Array(b), stats = new Float32Array(4);
    op('pairwise_loss', { b, chosen, rejected, margin, target, gradScale, loss, dchosen, drejected, stats }, isa);
    return { loss, dchosen, drejected, stats };
  });
  const gs = f32(gradScale);
  expectClose(t, out.loss, [ref.loss], 16 * EPS32 * ref.mag, 'loss');
  let absC = 0, absR = 0;
  for (let i = 0; i < b; ++i) (absC += Math.abs(chosen[i])), (absR += Math.abs(rejected[i]));
  expectClose(t, out.stats, [ref.acc, ref.margin, ref.cm, ref.rm], [EPS32, (4 * EPS32 * (absC + absR)) / b, (4 * EPS32 * absC) / b, (4 * EPS32 * absR) / b], 'stats [accuracy, margin, chosen, rejected]');
  // Analytic: dchosen = -sigmoid(-z) / b * gs; drejected = -dchosen. The fp32
  // z is off by ~2 EPS32 zmag, which moves sigmoid by at most a quarter of that.
  const dc = ref.dz.map((v) => (v / b) * gs), dr = dc.map((v) => -v);
  const tol = ref.dz.map((v, i) => (16 * EPS32 * (Math.abs(v) + ref.zmag[i]) * Math.abs(gs)) / b);
  expectClose(t, out.dchosen, dc, tol, 'dchosen vs analytic');
  expectClose(t, out.drejected, dr, tol, 'drejected vs analytic');
  if (fd) {
    expectFd(t, out.dchosen, fdGrad((x) => pairwiseRef(x, rejected, margin, target).loss * gs, chosen), 'dchosen');
    expectFd(t, out.drejected, fdGrad((x) => pairwiseRef(chosen, x, margin, target).loss * gs, rejected), 'drejected');
  }
}

t.test('pairwise_loss: -log sigmoid(chosen - rejected - margin), gradients, accuracy and margin', async (t) => {
  await t.test('b=1', async (t) => pairwiseCase(t, 1, false, 1, 1, true, 11));
  await t.test('b=64, no margin', async (t) => pairwiseCase(t, 64, false, 1, 2, true, 12));
  await t.test('b=64, margin, gradScale 0.125', async (t) => pairwiseCase(t, 64, true, 0.125, 2, true, 13));
  await t.test('b=200, wide scores (|z| up to ~40)', async (t) => pairwiseCase(t, 200, true, 1, 12, true, 14));
  await t.test('b=20000 (many chunks)', async (t) => pairwiseCase(t, 20000, true, 2, 1.5, false, 15));
  await t.test('soft labels (RLAIF), b=64', async (t) => pairwiseCase(t, 64, false, 1, 2, true, 16, true));
  await t.test('soft labels with margin, gradScale 0.5, wide scores', async (t) => pairwiseCase(t, 200, true, 0.5, 12, true, 17, true));
  await t.test('extreme scores stay finite', async (t) => {
    const chosen = new Float32Array([100, -100, 0, 50]), rejected = new Float32Array([-100, 100, 0, 50]);
    const loss = new Float32Array(1), dchosen = new Float32Array(4), drejected = new Float32Array(4), stats = new Float32Array(4);
    for (const isa of KERNELS) op('pairwise_loss', { b: 4, chosen, rejected, loss, dchosen, drejected, stats }, isa);
    // z = 200, -200, 0, 0: losses ~0, 200, log 2, log 2.
    expectClose(t, loss, [(200 + 2 * Math.LN2) / 4], 1e-5, 'loss');
    expectClose(t, dchosen, [0, -0.25, -0.125, -0.125], 1e-7, 'dchosen');
    expectClose(t, drejected, [0, 0.25, 0.125, 0.125], 1e-7, 'drejected');
    t.same([...stats], [0.25, 0, 12.5, 12.5], 'accuracy counts strict wins only; means');
  });
});

// ================================================================== ppo_loss

type KlName = 'k1' | 'k2' | 'k3';

interface PpoHyper {
  clipRange: number;
  clipRangeValue: number;
  vfCoef: number;
  klCoef: number;
  klEstimator: KlName;
  entCoef: number;
  gradScale: number;
}

interface PpoInputs {
  n: number;
  logp: Float32Array;
  oldLogp: Float32Array;
  advantages: Float32Array;
  returns?: Float32Array;
  values?: Float32Array;
  oldValues?: Float32Array;
  refLogp?: Float32Array;
  entropy?: Float32Array;
  mask?: Float32Array;
}

function klRef(d: number, est: KlName): { k: number; dk: number } {
  if (est === 'k2') return { k: 0.5 * d * d, dk: d };
  if (est === 'k3') return { k: Math.exp(-d) + d - 1, dk: 1 - Math.exp(-d) };
  return { k: d, dk: 1 };
}

/**
 * PPO in float64 with TRL's conventions; `logp`, `values` and `entropy` can be
 * overridden (for finite differences). Hyper-parameters are taken as the fp32
 * values the kernel receives.
 */
function ppoRef(x: PpoInputs, hp: PpoHyper, over: { logp?: ArrayLike<number>; values?: ArrayLike<number>; entropy?: ArrayLike<number> } = {}) {
  const logp = over.logp ?? x.logp, values = over.values ?? x.values, entropy = over.entropy ?? x.entropy;
  const eps = f32(hp.clipRange), epsV = f32(hp.clipRangeValue), vfC = f32(hp.vfCoef), klC = f32(hp.klCoef), entC = f32(hp.entCoef);
  const n = x.n;
  let count = 0;
  for (let i = 0; i < n; ++i) count += x.mask ? x.mask[i] : 1;
  const div = count > 0 ? count : 1;
  let pg = 0, vf = 0, kl = 0, ent = 0, akl = 0, clip = 0, vclip = 0, ratio = 0;
  // magnitudes of the terms, for the error bounds
  let pgMag = 0, vfMag = 0, klMag = 0, entMag = 0;
  const dlogp = new Float64Array(n), dvalues = new Float64Array(n), dentropy = new Float64Array(n);
  const dlogpMag = new Float64Array(n), dvaluesMag = new Float64Array(n);
  const cat = { clippedHigh: 0, clippedLow: 0, outsideHigh: 0, outsideLow: 0, inside: 0, vClipped: 0, vOutsideUnclipped: 0, vInside: 0 };
  const gs = f32(hp.gradScale) / div;
  for (let i = 0; i < n; ++i) {
    const w = x.mask ? x.mask[i] : 1;
    if (w === 0) continue;
    const A = x.advantages[i];
    const r = Math.exp(logp[i] - x.oldLogp[i]);
    const rc = Math.min(Math.max(r, 1 - eps), 1 + eps);
    const l1 = -A * r, l2 = -A * rc;
    const clipped = l2 > l1;
    if (clipped) r > 1 ? cat.clippedHigh++ : cat.clippedLow++;
    else if (r > 1 + eps) cat.outsideHigh++;
    else if (r < 1 - eps) cat.outsideLow++;
    else cat.inside++;
    pg += w * Math.max(l1, l2);
    pgMag += w * (Math.abs(A) * r * (1 + Math.abs(logp[i] - x.oldLogp[i])));
    clip += clipped ? w : 0;
    ratio += w * r;
    akl += w * 0.5 * (logp[i] - x.oldLogp[i]) ** 2;
    let dl = clipped ? 0 : -A * r;
    let dlMag = Math.abs(dl);
    if (x.refLogp) {
      const d = logp[i] - x.refLogp[i];
      const { k, dk } = klRef(d, hp.klEstimator);
      kl += w * k;
      klMag += w * (Math.abs(k) + Math.abs(d) + (hp.klEstimator === 'k3' ? Math.abs(Math.expm1(-d)) : 0));
      dl += klC * dk;
      dlMag += Math.abs(klC * dk);
    }
    dlogp[i] = w * gs * dl;
    dlogpMag[i] = Math.abs(w * gs) * dlMag;
    if (values) {
      const v = values[i], vo = x.oldValues![i], R = x.returns![i];
      const d1 = v - R;
      let term = 0.5 * d1 * d1, dv = d1, vc = v;
      if (epsV > 0) {
        vc = Math.min(Math.max(v, vo - epsV), vo + epsV);
        const d2 = vc - R;
        if (d2 * d2 > d1 * d1) {
          term = 0.5 * d2 * d2;
          dv = 0;
          vclip += w;
          cat.vClipped++;
        } else if (vc !== v) cat.vOutsideUnclipped++;
        else cat.vInside++;
      }
      vf += w * term;
      vfMag += w * (term + (Math.abs(v) + Math.abs(R) + Math.abs(vc)) * (Math.abs(d1) + Math.abs(vc - R)));
      dvalues[i] = w * gs * vfC * dv;
      dvaluesMag[i] = Math.abs(w * gs * vfC) * (Math.abs(dv) + Math.abs(v) + Math.abs(R));
    }
    if (entropy) {
      ent += w * entropy[i];
      entMag += w * Math.abs(entropy[i]);
      dentropy[i] = -w * gs * entC;
    }
  }
  const m = (s: number) => s / div;
  const loss = m(pg) + vfC * m(vf) + klC * m(kl) - entC * m(ent);
  const lossMag = m(pgMag) + vfC * m(vfMag) + klC * m(klMag) + entC * m(entMag);
  const stats = [m(pg), m(vf), m(kl), m(ent), m(akl), m(clip), m(vclip), m(ratio), count];
  const statsMag = [m(pgMag), m(vfMag), m(klMag), m(entMag), m(akl), m(clip), m(vclip), m(ratio), count];
  return { loss, lossMag, stats, statsMag, dlogp, dvalues, dentropy, dlogpMag, dvaluesMag, cat, count };
}

interface PpoCase {
  n: number;
  zeros: number | null;
  values: boolean;
  ref: boolean;
  entropy: boolean;
  hp: PpoHyper;
  fd: boolean;
  seed: number;
}

/** Random PPO inputs, each token drawn until it sits at least `gap` away from every kink. */
function ppoInputs(cs: PpoCase): PpoInputs {
  const rng = new Rng(cs.seed);
  const n = cs.n;
  const eps = f32(cs.hp.clipRange), epsV = f32(cs.hp.clipRangeValue);
  const gap = 5e-3;
  const x: PpoInputs = { n, logp: new Float32Array(n), oldLogp: new Float32Array(n), advantages: new Float32Array(n) };
  if (cs.values) (x.values = new Float32Array(n)), (x.oldValues = new Float32Array(n)), (x.returns = new Float32Array(n));
  if (cs.ref) x.refLogp = new Float32Array(n);
  if (cs.entropy) x.entropy = new Float32Array(n);
  if (cs.zeros !== null) x.mask = randomMask(rng, n, cs.zeros);
  for (let i = 0; i < n; ++i) {
    for (;;) {
      const old = f32(rng.uniform(-6, -0.05));
      // log-ratios up to +-0.45: ratios 0.64..1.57, both sides of [1 - eps, 1 + eps]
      const lp = f32(Math.min(old + rng.uniform(-0.45, 0.45), -1e-3));
      const r = Math.exp(lp - old);
      if (Math.abs(r - (1 - eps)) < gap || Math.abs(r - (1 + eps)) < gap) continue;
      x.oldLogp[i] = old;
      x.logp[i] = lp;
      break;
    }
    x.advantages[i] = f32(rng.normal() * 1.5);
    if (cs.values) {
      for (;;) {
        const vo = f32(rng.normal());
        const v = f32(vo + rng.uniform(-0.6, 0.6));
        const R = f32(vo + rng.normal() * 0.8);
        if (epsV > 0) {
          if (Math.abs(v - (vo - epsV)) < gap || Math.abs(v - (vo + epsV)) < gap) continue;
          const vc = Math.min(Math.max(v, vo - epsV), vo + epsV);
          if (vc !== v && Math.abs(Math.abs(v - R) - Math.abs(vc - R)) < gap) continue;
        }
        x.values![i] = v;
        x.oldValues![i] = vo;
        x.returns![i] = R;
        break;
      }
    }
    if (cs.ref) x.refLogp![i] = f32(x.logp[i] + rng.normal() * 0.3);
    if (cs.entropy) x.entropy![i] = f32(rng.uniform(0, 4));
  }
  for (const a of [x.logp, x.oldLogp, x.advantages, x.values, x.oldValues, x.returns, x.refLogp, x.entropy]) if (a) poison(a, x.mask);
  return x;
}

function ppoCase(t: Test, cs: PpoCase) {
  const x = ppoInputs(cs);
  const n = cs.n;
  const ref = ppoRef(x, cs.hp);
  const out = runAll(t, (isa) => {
    const loss = new Float32Array(1), stats = new Float32Array(9);
    const dlogp = new Float32Array(n).fill(7), dvalues = new Float32Array(n).fill(7), dentropy = new Float32Array(n).fill(7);
    op('ppo_loss', { ...x, ...cs.hp, loss, dlogp, dvalues, dentropy, stats }, isa);
    return { loss, dlogp, dvalues, dentropy, stats };
  });
  const c = ref.count > 0 ? ref.count : 1;
  expectClose(t, out.loss, [ref.loss], 32 * EPS32 * ref.lossMag + 1e-30, 'loss');
  const statTol = ref.statsMag.map((v, k) => (k === 8 ? 0 : 32 * EPS32 * v + 1e-30));
  expectClose(t, out.stats, ref.stats, statTol, 'stats [pg, vf, kl, entropy, approxkl, clipfrac, vf_clipfrac, ratio, tokens]');
  expectClose(t, out.dlogp, ref.dlogp, ref.dlogpMag.map((v) => 16 * EPS32 * v), 'dlogp vs analytic');
  expectClose(t, out.dvalues, ref.dvalues, ref.dvaluesMag.map((v) => 16 * EPS32 * v), 'dvalues vs analytic');
  expectClose(t, out.dentropy, ref.dentropy, ref.dentropy.map((v) => 4 * EPS32 * Math.abs(v)), 'dentropy vs analytic');
  for (const k of ['dlogp', 'dvalues', 'dentropy'] as const) zerosAt(t, out[k], x.mask, k);
  if (!cs.values) t.ok(out.dvalues.every((v) => v === 0), 'no values: dvalues all 0');
  if (!cs.entropy) t.ok(out.dentropy.every((v) => v === 0), 'no entropy: dentropy all 0');
  if (cs.fd) {
    const gs = f32(cs.hp.gradScale);
    const skip = (i: number) => x.mask !== undefined && x.mask[i] === 0;
    expectFd(t, out.dlogp, fdGrad((v) => ppoRef(x, cs.hp, { logp: v }).loss * gs, x.logp, skip), 'dlogp');
    if (cs.values) expectFd(t, out.dvalues, fdGrad((v) => ppoRef(x, cs.hp, { values: v }).loss * gs, x.values!, skip), 'dvalues');
    if (cs.entropy) expectFd(t, out.dentropy, fdGrad((v) => ppoRef(x, cs.hp, { entropy: v }).loss * gs, x.entropy!, skip), 'dentropy');
  }
  return { ref, out, c };
}

const HP: PpoHyper = { clipRange: 0.2, clipRangeValue: 0.2, vfCoef: 0.5, klCoef: 0.1, klEstimator: 'k1', entCoef: 0.01, gradScale: 0.7 };

t.test('ppo_loss: clipped surrogate + clipped value loss + KL + entropy', async (t) => {
  await t.test('all terms, k1, masked (NaN padding), every branch covered', async (t) => {
    const { ref } = ppoCase(t, { n: 401, zeros: 0.25, values: true, ref: true, entropy: true, hp: HP, fd: true, seed: 21 });
    const c = ref.cat;
    t.ok(c.clippedHigh > 0 && c.clippedLow > 0, `clipped branch active above (${c.clippedHigh}) and below (${c.clippedLow}) the range`);
    t.ok(c.outsideHigh > 0 && c.outsideLow > 0, `ratio outside the range with the unclipped branch active: above ${c.outsideHigh}, below ${c.outsideLow}`);
    t.ok(c.inside > 0, `ratio inside the range: ${c.inside}`);
    t.ok(c.vClipped > 0 && c.vOutsideUnclipped > 0 && c.vInside > 0, `value clipped ${c.vClipped}, outside but unclipped ${c.vOutsideUnclipped}, inside ${c.vInside}`);
    t.ok(ref.stats[5] > 0.05 && ref.stats[5] < 0.6, `clipfrac ${ref.stats[5].toFixed(3)} neither 0 nor 1`);
  });
  await t.test('k3 estimator, no mask, no entropy', async (t) =>
    ppoCase(t, { n: 257, zeros: null, values: true, ref: true, entropy: false, hp: { ...HP, klEstimator: 'k3', klCoef: 0.05, entCoef: 0 }, fd: true, seed: 22 }));
  await t.test('k2 estimator, value clipping off (clipRangeValue 0)', async (t) =>
    ppoCase(t, { n: 200, zeros: 0.1, values: true, ref: true, entropy: true, hp: { ...HP, klEstimator: 'k2', clipRangeValue: 0, gradScale: 2 }, fd: true, seed: 23 }));
  await t.test('wide clip range (0.3), large coefficients', async (t) =>
    ppoCase(t, { n: 150, zeros: 0.4, values: true, ref: true, entropy: true, hp: { ...HP, clipRange: 0.3, clipRangeValue: 0.5, vfCoef: 1, klCoef: 0.5, entCoef: 0.1 }, fd: true, seed: 24 }));
  await t.test('policy only: no values, no reference, entropy', async (t) =>
    ppoCase(t, { n: 120, zeros: 0.2, values: false, ref: false, entropy: true, hp: HP, fd: true, seed: 25 }));
  await t.test('n=50000 (many chunks), analytic gradients', async (t) =>
    ppoCase(t, { n: 50000, zeros: 0.3, values: true, ref: true, entropy: true, hp: { ...HP, klEstimator: 'k3' }, fd: false, seed: 26 }));
  await t.test('every token masked out: zeros everywhere', async (t) => {
    const { out } = ppoCase(t, { n: 30, zeros: 1, values: true, ref: true, entropy: true, hp: HP, fd: false, seed: 27 });
    t.same([...out.loss, ...out.stats], new Array(10).fill(0));
  });
  await t.test('a worked example', async (t) => {
    // ratio e^0.1 = 1.105 (inside), A=1: pg = -1.105; ratio e^-0.5 = 0.607 < 0.8, A=2: unclipped, pg = -1.213;
    // ratio e^0.5 = 1.649 > 1.2, A=1: clipped, pg = -1.2. pg mean = -1.17277...
    const x = { n: 3, logp: new Float32Array([-1, -3, -2]), oldLogp: new Float32Array([-1.1, -2.5, -2.5]), advantages: new Float32Array([1, 2, 1]) };
    const loss = new Float32Array(1), dlogp = new Float32Array(3), stats = new Float32Array(9);
    for (const isa of KERNELS) op('ppo_loss', { ...x, loss, dlogp, stats }, isa);
    const r = [Math.exp(f32(-1) - f32(-1.1)), Math.exp(-0.5), Math.exp(0.5)];
    expectClose(t, loss, [(-r[0] - 2 * r[1] - 1.2) / 3], 1e-6, 'loss');
    expectClose(t, dlogp, [-r[0] / 3, (-2 * r[1]) / 3, 0], 1e-6, 'dlogp');
    expectClose(t, [stats[5], stats[8]], [1 / 3, 3], 1e-7, 'clipfrac 1/3, 3 tokens');
  });
  await t.test('values, oldValues and returns go together; klEstimator is checked', async (t) => {
    const a = new Float32Array(2), loss = new Float32Array(1);
    t.throws(() => op('ppo_loss', { n: 2, logp: a, oldLogp: a, advantages: a, values: a, loss }, KERNELS[0]), /go together/);
    t.throws(() => op('ppo_loss', { n: 2, logp: a, oldLogp: a, advantages: a, refLogp: a, klEstimator: 'k4', loss }, KERNELS[0]), /k1, k2 or k3/);
    t.throws(() => op('ppo_loss', { n: 3, logp: a, oldLogp: a, advantages: a, loss }, KERNELS[0]), /needs 3/);
  });
});

// ================================================================== dpo_loss

function dpoRef(pc: ArrayLike<number>, pr: ArrayLike<number>, rc: ArrayLike<number>, rr: ArrayLike<number>, beta: number, ls: number) {
  const b = pc.length;
  let loss = 0, acc = 0, cr = 0, rj = 0, mag = 0;
  const dh = new Float64Array(b), hmag = new Float64Array(b);
  for (let i = 0; i < b; ++i) {
    const h = pc[i] - rc[i] - (pr[i] - rr[i]);
    const z = beta * h;
    const li = -(1 - ls) * logSigmoid(z) - ls * logSigmoid(-z);
    loss += li;
    dh[i] = beta * (ls * sigmoid(z) - (1 - ls) * sigmoid(-z));
    // fp32 h is off by ~2 EPS32 (|pc - rc| + |pr - rr|) (the two differences
    // and their difference each rounded once).
    hmag[i] = Math.abs(beta) * (Math.abs(pc[i] - rc[i]) + Math.abs(pr[i] - rr[i]));
    mag += Math.abs(li) + hmag[i];
    const c = beta * (pc[i] - rc[i]), r = beta * (pr[i] - rr[i]);
    acc += c > r ? 1 : 0;
    cr += c;
    rj += r;
  }
  const inv = b > 0 ? 1 / b : 0;
  return { loss: loss * inv, mag: mag * inv, dh, hmag, stats: [acc * inv, cr * inv, rj * inv, (cr - rj) * inv, 0, 0] };
}

function dpoCase(t: Test, b: number, beta: number, ls: number, gradScale: number, fd: boolean, seed: number) {
  const rng = new Rng(seed);
  const pc = new Float32Array(b), pr = new Float32Array(b), rc = new Float32Array(b), rr = new Float32Array(b);
  for (let i = 0; i < b; ++i) {
    rc[i] = f32(-rng.uniform(10, 200));
    rr[i] = f32(-rng.uniform(10, 200));
    pc[i] = f32(rc[i] + rng.normal() * 3 + 0.5);
    pr[i] = f32(rr[i] + rng.normal() * 3 - 0.5);
  }
  const B = f32(beta), LS = f32(ls), gs = f32(gradScale);
  const ref = dpoRef(pc, pr, rc, rr, B, LS);
  const out = runAll(t, (isa) => {
    const loss = new Float32Array(1), dpolicyChosen = new Float32Array(b), dpolicyRejected = new Float32Array(b), stats = new Float32Array(6);
    op('dpo_loss', { b, policyChosen: pc, policyRejected: pr, refChosen: rc, refRejected: rr, beta, labelSmoothing: ls, gradScale, loss, dpolicyChosen, dpolicyRejected, stats }, isa);
    return { loss, dpolicyChosen, dpolicyRejected, stats };
  });
  expectClose(t, out.loss, [ref.loss], 16 * EPS32 * ref.mag, 'loss');
  let sc = 0, sr = 0;
  for (let i = 0; i < b; ++i) (sc += Math.abs(B * (pc[i] - rc[i]))), (sr += Math.abs(B * (pr[i] - rr[i])));
  expectClose(t, out.stats, ref.stats, [EPS32, (4 * EPS32 * sc) / b, (4 * EPS32 * sr) / b, (4 * EPS32 * (sc + sr)) / b, 0, 0], 'stats [accuracy, chosen reward, rejected reward, margin, nll 0, log odds 0]');
  t.ok(ref.stats[0] > 0 && ref.stats[0] < 1, `accuracy ${ref.stats[0].toFixed(3)} neither 0 nor 1`);
  const dc = ref.dh.map((v) => (v * gs) / b), dr = dc.map((v) => -v);
  const tol = ref.dh.map((v, i) => (16 * EPS32 * (Math.abs(v) + Math.abs(B) * ref.hmag[i]) * Math.abs(gs)) / b);
  expectClose(t, out.dpolicyChosen, dc, tol, 'dpolicy_chosen vs analytic');
  expectClose(t, out.dpolicyRejected, dr, tol, 'dpolicy_rejected vs analytic');
  if (fd) {
    expectFd(t, out.dpolicyChosen, fdGrad((x) => dpoRef(x, pr, rc, rr, B, LS).loss * gs, pc), 'dpolicy_chosen');
    expectFd(t, out.dpolicyRejected, fdGrad((x) => dpoRef(pc, x, rc, rr, B, LS).loss * gs, pr), 'dpolicy_rejected');
  }
}

t.test('dpo_loss: sigmoid loss with label smoothing, gradients, reward statistics', async (t) => {
  await t.test('beta 0.1', async (t) => dpoCase(t, 64, 0.1, 0, 1, true, 31));
  await t.test('beta 0.5, label smoothing 0.1, gradScale 0.5', async (t) => dpoCase(t, 97, 0.5, 0.1, 0.5, true, 32));
  await t.test('beta 2 (saturated pairs), label smoothing 0.3', async (t) => dpoCase(t, 50, 2, 0.3, 1, true, 33));
  await t.test('b=30000 (many chunks)', async (t) => dpoCase(t, 30000, 0.1, 0.05, 1, false, 34));
  await t.test('a worked example', async (t) => {
    // h = (-10 - -11) - (-12 - -11.5) = 1.5; beta 0.2: loss = -log sigmoid(0.3)
    const loss = new Float32Array(1), dpolicyChosen = new Float32Array(1), dpolicyRejected = new Float32Array(1), stats = new Float32Array(6);
    for (const isa of KERNELS)
      op('dpo_loss', { b: 1, policyChosen: new Float32Array([-10]), policyRejected: new Float32Array([-12]), refChosen: new Float32Array([-11]), refRejected: new Float32Array([-11.5]), beta: 0.2, loss, dpolicyChosen, dpolicyRejected, stats }, isa);
    const B = f32(0.2);
    expectClose(t, loss, [-logSigmoid(B * 1.5)], 1e-6, 'loss');
    expectClose(t, dpolicyChosen, [-B * sigmoid(-B * 1.5)], 1e-7, 'dpolicy_chosen');
    expectClose(t, dpolicyRejected, [B * sigmoid(-B * 1.5)], 1e-7, 'dpolicy_rejected');
    expectClose(t, stats, [1, B, -0.5 * B, 1.5 * B, 0, 0], 1e-7, 'accuracy, rewards, margin');
  });
});

// ================================================================== row_dot

function rowDotRef(x: ArrayLike<number>, w: ArrayLike<number>, rows: number, cols: number) {
  const out = new Float64Array(rows), mag = new Float64Array(rows);
  for (let r = 0; r < rows; ++r)
    for (let c = 0; c < cols; ++c) {
      const wv = w[r * cols + c];
      if (wv === 0) continue;
      out[r] += wv * x[r * cols + c];
      mag[r] += Math.abs(wv * x[r * cols + c]);
    }
  return { out, mag };
}

function rowDotCase(t: Test, rows: number, cols: number, kind: 'mask' | 'onehot' | 'weights', fd: boolean, seed: number) {
  const rng = new Rng(seed);
  const w = new Float32Array(rows * cols);
  for (let r = 0; r < rows; ++r) {
    if (kind === 'onehot') w[r * cols + rng.int(0, cols)] = 1;
    else if (kind === 'mask') {
      // a span of each row (a completion), a few rows empty
      const from = rng.int(0, cols), to = r % 5 === 4 ? from : rng.int(from, cols + 1);
      w.fill(1, r * cols + from, r * cols + to);
    } else for (let c = 0; c < cols; ++c) w[r * cols + c] = rng.uniform() < 0.3 ? 0 : rng.normal();
  }
  const x = poison(rng.uniforms(rows * cols, -12, 0.5), w); // NaN where w == 0: skipped
  const dout = rng.normals(rows);
  const out = runAll(t, (isa) => {
    const o = new Float32Array(rows).fill(7), dx = new Float32Array(rows * cols).fill(7);
    op('row_dot', { rows, cols, x, w, out: o }, isa);
    op('row_dot_backward', { rows, cols, w, dout, dx }, isa);
    return { out: o, dx };
  });
  const ref = rowDotRef(x, w, rows, cols);
  expectClose(t, out.out, ref.out, ref.out.map((v, r) => EPS32 * Math.abs(v) + 2 ** -52 * cols * ref.mag[r] + 1e-300), 'out vs float64 sum');
  // dx = w * dout: one fp32 product, so exact against the rounded float64 product.
  const dref = Float64Array.from({ length: rows * cols }, (_, i) => (w[i] === 0 ? 0 : f32(w[i] * dout[Math.floor(i / cols)])));
  expectEqual(t, out.dx, dref, 'dx = w * dout');
  zerosAt(t, out.dx, w, 'dx');
  if (fd) {
    // L(x) = sum_r dout[r] * sum_c w[r,c] x[r,c], in float64 (masked-out x read as 0).
    const L = (xx: Float64Array) => {
      let s = 0;
      for (let r = 0; r < rows; ++r) for (let c = 0; c < cols; ++c) if (w[r * cols + c] !== 0) s += dout[r] * w[r * cols + c] * xx[r * cols + c];
      return s;
    };
    const clean = Float64Array.from(x, (v) => (Number.isNaN(v) ? 0 : v));
    expectFd(t, out.dx, fdGrad(L, clean, (i) => w[i] === 0), 'dx');
  }
  return out;
}

t.test('row_dot / row_dot_backward: per-row weighted sums (sequence log-prob sums, last-token scores) and their broadcast', async (t) => {
  await t.test('completion masks, 9 x 37', async (t) => void rowDotCase(t, 9, 37, 'mask', true, 41));
  await t.test('one-hot (a value at each row index), 6 x 20', async (t) => void rowDotCase(t, 6, 20, 'onehot', true, 42));
  await t.test('general weights, 5 x 64', async (t) => void rowDotCase(t, 5, 64, 'weights', true, 43));
  await t.test('long rows, 3 x 9000', async (t) => void rowDotCase(t, 3, 9000, 'mask', false, 44));
  await t.test('many rows, 700 x 5', async (t) => void rowDotCase(t, 700, 5, 'weights', false, 45));
  await t.test('a worked example', async (t) => {
    const x = new Float32Array([1, 2, 3, NaN, -1, -2, -3, -4]), w = new Float32Array([0, 1, 1, 0, 1, 0, 0, 0.5]);
    for (const isa of KERNELS) {
      const out = new Float32Array(2), dx = new Float32Array(8).fill(9);
      op('row_dot', { rows: 2, cols: 4, x, w, out }, isa);
      op('row_dot_backward', { rows: 2, cols: 4, w, dout: new Float32Array([2, -4]), dx }, isa);
      expectEqual(t, out, [5, -3], `${isa}: out`);
      expectEqual(t, dx, [0, 2, 2, 0, -4, 0, 0, -2], `${isa}: dx`);
    }
  });
  await t.test('empty shapes and short arrays', async (t) => {
    op('row_dot', { rows: 0, cols: 5, x: new Float32Array(0), w: new Float32Array(0), out: new Float32Array(0) }, KERNELS[0]);
    const out = new Float32Array([7]);
    op('row_dot', { rows: 1, cols: 0, x: new Float32Array(0), w: new Float32Array(0), out }, KERNELS[0]);
    t.equal(out[0], 0, 'a row of no columns sums to 0');
    t.throws(() => op('row_dot', { rows: 2, cols: 3, x: new Float32Array(5), w: new Float32Array(6), out: new Float32Array(2) }, KERNELS[0]), /'x' has 5 elements, needs 6/);
    t.throws(() => op('row_dot_backward', { rows: 2, cols: 3, w: new Float32Array(6), dout: new Float32Array(1), dx: new Float32Array(6) }, KERNELS[0]), /'dout'/);
  });
});
