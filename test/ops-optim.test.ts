// The optimizer ops (adamw, sgd) against float64 re-implementations of
// torch.optim.AdamW and torch.optim.SGD (the algorithms as torch's docs and
// single-tensor code define them), several steps in a row; grad_norm against
// an exactly rounded float64 sum; scale against the fp32 arithmetic of
// torch.nn.utils.clip_grad_norm_.
//
// Bounds (EPS32 = 2^-24): one fp32 step rounds the decayed parameter
// (~2 EPS32 |p|), the moments (~4 EPS32 of their terms) and the update
// lr * mhat / (sqrt(vhat) + eps) (~8 EPS32 of it); the reference carries the
// bound forward step by step, with the moments' own errors feeding the next
// update, so after k steps the bound is the sum of k such terms (times 4 for
// headroom). Hyper-parameters are the fp32 values the kernels receive.
// grad_norm sums exact fp64 squares in fp64 over fixed chunks: |got - exact|
// <= 1e-12 |exact|. scale is one fp32 multiply: exact.
import t from 'tap';
import type { Test } from 'tap';
import { EPS32, expectClose, expectEqual, f32, KERNELS, op, Rng } from './helpers/ref';

// ================================================================== adamw

interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  gradScale?: number;
}

/** State of one parameter array in float64, with an error bound per element for p, m and v. */
class AdamRef {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
  tp: Float64Array;
  tm: Float64Array;
  tv: Float64Array;
  constructor(p: ArrayLike<number>, m: ArrayLike<number>, v: ArrayLike<number>) {
    this.p = Float64Array.from(p);
    this.m = Float64Array.from(m);
    this.v = Float64Array.from(v);
    this.tp = new Float64Array(p.length);
    this.tm = new Float64Array(p.length);
    this.tv = new Float64Array(p.length);
  }
  /** torch.optim.AdamW (amsgrad off, maximize off), step t counting from 1. */
  step(grad: ArrayLike<number>, hp: AdamHyper, t: number) {
    const lr = f32(hp.lr), b1 = f32(hp.beta1), b2 = f32(hp.beta2), eps = f32(hp.eps), wd = f32(hp.weightDecay), gs = f32(hp.gradScale ?? 1);
    const bc1 = 1 - Math.pow(b1, t), bc2 = 1 - Math.pow(b2, t);
    const stepSize = lr / bc1, bc2Sqrt = Math.sqrt(bc2);
    for (let i = 0; i < this.p.length; ++i) {
      const g = grad[i] * gs;
      this.p[i] *= 1 - lr * wd;
      this.tp[i] += 2 * EPS32 * Math.abs(this.p[i]);
      this.m[i] = b1 * this.m[i] + (1 - b1) * g;
      this.tm[i] = b1 * this.tm[i] + 4 * EPS32 * (Math.abs(b1 * this.m[i]) + Math.abs((1 - b1) * g));
      this.v[i] = b2 * this.v[i] + (1 - b2) * g * g;
      this.tv[i] = b2 * this.tv[i] + 4 * EPS32 * (b2 * this.v[i] + (1 - b2) * g * g);
      const sq = Math.sqrt(this.v[i]);
      const denom = sq / bc2Sqrt + eps;
      const u = stepSize * (this.m[i] / denom);
      this.p[i] -= u;
      // The update moves with m (relative tm/|m|) and with sqrt(v) (half of tv/v, scaled by sq/bc2Sqrt over denom).
      const rel = 8 * EPS32 + (this.m[i] !== 0 ? this.tm[i] / Math.abs(this.m[i]) : 0) + (this.v[i] > 0 ? (0.5 * this.tv[i]) / this.v[i] : 0) * (sq / bc2Sqrt / denom);
      this.tp[i] += Math.abs(u) * rel + stepSize * (this.m[i] === 0 ? this.tm[i] / eps : 0) + 2 * EPS32 * Math.abs(this.p[i]);
    }
  }
}

interface AdamCase {
  n: number;
  hp: AdamHyper;
  /** steps taken, starting at `from` (1: fresh state) */
  from: number;
  steps: number;
  gradStd: number;
  /** zero gradients at some positions, to exercise m = 0 */
  zeros: boolean;
  seed: number;
}

function adamCase(t: Test, cs: AdamCase) {
  const rng = new Rng(cs.seed);
  const n = cs.n;
  const p0 = rng.normals(n, 0.5);
  let m0: Float32Array = new Float32Array(n), v0: Float32Array = new Float32Array(n);
  if (cs.from > 1) {
    // Resumed state: moments as after some training.
    m0 = rng.normals(n, 0.05 * cs.gradStd);
    v0 = Float32Array.from(rng.normals(n, cs.gradStd), (x) => f32(x * x * 0.5 + 1e-3 * cs.gradStd * cs.gradStd));
  }
  const grads: Float32Array[] = [];
  for (let s = 0; s < cs.steps; ++s) {
    const g = rng.normals(n, cs.gradStd);
    if (cs.zeros) for (let i = 0; i < n; i += 7) g[i] = 0;
    grads.push(g);
  }
  const ref = new AdamRef(p0, m0, v0);
  let first: { param: Float32Array; m: Float32Array; v: Float32Array } | undefined;
  const checkpoints: number[] = [];
  for (const isa of KERNELS) {
    const param = p0.slice(), m = m0.slice(), v = v0.slice();
    for (let s = 0; s < cs.steps; ++s) {
      const step = cs.from + s;
      op('adamw', { n, param, grad: grads[s], m, v, ...cs.hp, step }, isa);
      if (isa !== KERNELS[0]) continue;
      ref.step(grads[s], cs.hp, step);
      const k = 4;
      expectClose(t, m, ref.m, ref.tm.map((x) => k * x + 1e-45), `step ${step}: m`);
      expectClose(t, v, ref.v, ref.tv.map((x) => k * x + 1e-45), `step ${step}: v`);
      expectClose(t, param, ref.p, ref.tp.map((x) => k * x), `step ${step}: param`);
      checkpoints.push(step);
    }
    if (!first) first = { param, m, v };
    else {
      expectEqual(t, param, first.param, `param on ${isa} equals ${KERNELS[0]}`);
      expectEqual(t, m, first.m, `m on ${isa} equals ${KERNELS[0]}`);
      expectEqual(t, v, first.v, `v on ${isa} equals ${KERNELS[0]}`);
    }
  }
  // The updates are far larger than the bounds: the test can tell a bias-correction slip.
  let moved = 0, bound = 0;
  for (let i = 0; i < n; ++i) (moved = Math.max(moved, Math.abs(ref.p[i] - p0[i]))), (bound = Math.max(bound, 4 * ref.tp[i]));
  t.ok(moved > 50 * bound, `parameters moved by up to ${moved.toExponential(2)}, bound ${bound.toExponential(2)}`);
}

t.test('adamw: torch.optim.AdamW steps', async (t) => {
  const base: AdamHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
  await t.test('steps 1..5 from zero state (bias correction at t=1 and t=5), weight decay 0.01', async (t) =>
    adamCase(t, { n: 1000, hp: base, from: 1, steps: 5, gradStd: 1, zeros: true, seed: 41 }));
  await t.test('steps 1..5, no weight decay, lr 3e-2, betas (0.8, 0.95)', async (t) =>
    adamCase(t, { n: 777, hp: { ...base, lr: 3e-2, beta1: 0.8, beta2: 0.95, weightDecay: 0 }, from: 1, steps: 5, gradStd: 0.3, zeros: false, seed: 42 }));
  await t.test('strong weight decay 0.5, eps 1e-6 against tiny gradients', async (t) =>
    adamCase(t, { n: 500, hp: { ...base, lr: 1e-2, eps: 1e-6, weightDecay: 0.5 }, from: 1, steps: 4, gradStd: 1e-6, zeros: true, seed: 43 }));
  await t.test('resumed at t=100 (moments given), gradScale 0.25', async (t) =>
    adamCase(t, { n: 600, hp: { ...base, gradScale: 0.25 }, from: 100, steps: 3, gradStd: 2, zeros: false, seed: 44 }));
  await t.test('n=200003 (many chunks), steps 1..3', async (t) =>
    adamCase(t, { n: 200003, hp: base, from: 1, steps: 3, gradStd: 1, zeros: true, seed: 45 }));
  await t.test('t=1 worked example: the first step moves every weight by lr (sign of the gradient)', async (t) => {
    const param = new Float32Array([1, -2, 0.5]), grad = new Float32Array([0.3, -4, 1e-3]), m = new Float32Array(3), v = new Float32Array(3);
    for (const isa of KERNELS) {
      const p = param.slice(), mm = m.slice(), vv = v.slice();
      op('adamw', { n: 3, param: p, grad, m: mm, v: vv, lr: 0.1, weightDecay: 0, eps: 1e-12, step: 1 }, isa);
      expectClose(t, p, [0.9, -1.9, 0.4], 1e-6, `${isa}: p - lr sign(g)`);
      // (1 - beta1, 1 - beta2 from the fp32 betas: within 3e-7 and 2e-5 relative of 0.1 and 0.001)
      expectClose(t, mm, [0.03, -0.4, 1e-4], [1e-8, 1e-7, 1e-10], `${isa}: m = 0.1 g`);
      expectClose(t, vv, [0.3 * 0.3 * 1e-3, 16e-3, 1e-9], [2e-9, 4e-7, 2e-14], `${isa}: v = 0.001 g^2`);
    }
  });
  await t.test('step counts from 1', async (t) => {
    const a = new Float32Array(1);
    t.throws(() => op('adamw', { n: 1, param: a, grad: a, m: a, v: a, step: 0 }, KERNELS[0]), /counts from 1/);
  });
});

// ================================================================== sgd

interface SgdHyper {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  gradScale?: number;
}

/** torch.optim.SGD (nesterov off, maximize off) in float64, with bounds. */
function sgdRefStep(p: Float64Array, buf: Float64Array, tp: Float64Array, tb: Float64Array, grad: ArrayLike<number>, hp: SgdHyper, step: number) {
  const lr = f32(hp.lr), mu = f32(hp.momentum), damp = f32(hp.dampening), wd = f32(hp.weightDecay), gs = f32(hp.gradScale ?? 1);
  for (let i = 0; i < p.length; ++i) {
    let d = grad[i] * gs;
    let td = 2 * EPS32 * Math.abs(d);
    if (wd !== 0) {
      d += wd * p[i];
      td += wd * tp[i] + 4 * EPS32 * (Math.abs(grad[i] * gs) + Math.abs(wd * p[i]));
    }
    if (mu !== 0) {
      if (step <= 1) {
        buf[i] = d;
        tb[i] = td;
      } else {
        buf[i] = mu * buf[i] + (1 - damp) * d;
        tb[i] = mu * tb[i] + (1 - damp) * td + 4 * EPS32 * (Math.abs(mu * buf[i]) + Math.abs((1 - damp) * d));
      }
      d = buf[i];
      td = tb[i];
    }
    p[i] -= lr * d;
    tp[i] += lr * td + 4 * EPS32 * (Math.abs(p[i]) + Math.abs(lr * d));
  }
}

function sgdCase(t: Test, n: number, hp: SgdHyper, steps: number, seed: number) {
  const rng = new Rng(seed);
  const p0 = rng.normals(n);
  const grads = Array.from({ length: steps }, () => rng.normals(n));
  const P = Float64Array.from(p0), B = new Float64Array(n), TP = new Float64Array(n), TB = new Float64Array(n);
  let first: Float32Array | undefined;
  for (const isa of KERNELS) {
    const param = p0.slice();
    const momentumBuf = hp.momentum !== 0 ? new Float32Array(n).fill(NaN) : undefined; // step 1 overwrites it
    for (let s = 1; s <= steps; ++s) {
      op('sgd', { n, param, grad: grads[s - 1], momentumBuf, ...hp, step: s }, isa);
      if (isa !== KERNELS[0]) continue;
      sgdRefStep(P, B, TP, TB, grads[s - 1], hp, s);
      expectClose(t, param, P, TP.map((x) => 4 * x), `step ${s}: param`);
      if (momentumBuf) expectClose(t, momentumBuf, B, TB.map((x) => 4 * x), `step ${s}: momentum buffer`);
    }
    if (!first) first = param;
    else expectEqual(t, param, first, `param on ${isa} equals ${KERNELS[0]}`);
  }
}

t.test('sgd: torch.optim.SGD steps', async (t) => {
  await t.test('plain', async (t) => sgdCase(t, 1000, { lr: 0.1, momentum: 0, dampening: 0, weightDecay: 0 }, 3, 51));
  await t.test('weight decay, gradScale', async (t) => sgdCase(t, 1000, { lr: 0.05, momentum: 0, dampening: 0, weightDecay: 0.1, gradScale: 0.5 }, 3, 52));
  await t.test('momentum 0.9 (buffer = d at step 1)', async (t) => sgdCase(t, 1000, { lr: 0.01, momentum: 0.9, dampening: 0, weightDecay: 0 }, 5, 53));
  await t.test('momentum 0.9, dampening 0.1, weight decay 0.01', async (t) => sgdCase(t, 999, { lr: 0.02, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 }, 5, 54));
  await t.test('n=100003 (many chunks), momentum', async (t) => sgdCase(t, 100003, { lr: 0.01, momentum: 0.5, dampening: 0, weightDecay: 0.001 }, 3, 55));
  await t.test('a worked example', async (t) => {
    for (const isa of KERNELS) {
      const param = new Float32Array([1, 2]), momentumBuf = new Float32Array(2);
      op('sgd', { n: 2, param, grad: new Float32Array([1, -1]), momentumBuf, lr: 0.5, momentum: 0.9, step: 1 }, isa);
      expectClose(t, param, [0.5, 2.5], 0, `${isa}: step 1: p - lr g`);
      op('sgd', { n: 2, param, grad: new Float32Array([1, -1]), momentumBuf, lr: 0.5, momentum: 0.9, step: 2 }, isa);
      // buf = 0.9 g + g = 1.9 g
      expectClose(t, momentumBuf, [1.9, -1.9], 1e-6, `${isa}: step 2: buffer`);
      expectClose(t, param, [0.5 - 0.95, 2.5 + 0.95], 1e-6, `${isa}: step 2: param`);
    }
  });
});

// ================================================================== grad_norm and scale

/** Sum of squares, exactly rounded: each square is exact in float64; Neumaier summation. */
function sumSquares(x: ArrayLike<number>): number {
  let s = 0, c = 0;
  for (let i = 0; i < x.length; ++i) {
    const v = x[i] * x[i];
    const u = s + v;
    c += Math.abs(s) >= Math.abs(v) ? s - u + v : v - u + s;
    s = u;
  }
  return s + c;
}

t.test('grad_norm: sum of squares in float64', async (t) => {
  const rng = new Rng(61);
  const n = 1_000_000;
  const g = rng.normals(n, 1e-2);
  // A few large entries, so the sum spans many magnitudes.
  for (let i = 0; i < n; i += 99991) g[i] = 1e3 * (i % 2 ? 1 : -1);
  const exact = sumSquares(g);
  let naive32 = 0;
  for (let i = 0; i < n; ++i) naive32 = f32(naive32 + f32(g[i] * g[i]));
  const outs: number[] = [];
  for (const isa of KERNELS) {
    const out = new Float64Array([0]);
    op('grad_norm', { n, grad: g, out }, isa);
    expectClose(t, out, [exact], 1e-12 * exact, `${isa}: n=1e6 vs exactly rounded sum (a naive fp32 sum is off by ${(Math.abs(naive32 - exact) / exact).toExponential(1)} relative)`);
    outs.push(out[0]);
    // Accumulates: a second tensor adds to the same output.
    const h = rng.normals(1001, 3);
    const before = out[0];
    op('grad_norm', { n: 1001, grad: h, out }, isa);
    expectClose(t, out, [before + sumSquares(h)], 1e-12 * (before + sumSquares(h)), `${isa}: accumulates over tensors`);
  }
  t.ok(outs.every((v) => v === outs[0]), 'same bits on every kernel');
  for (const isa of KERNELS) {
    const out = new Float64Array([2.5]);
    op('grad_norm', { n: 0, grad: new Float32Array(0), out }, isa);
    t.equal(out[0], 2.5, `${isa}: n=0 leaves the output`);
    op('grad_norm', { n: 3, grad: new Float32Array([3, 4, 12]), out }, isa);
    t.equal(out[0], 2.5 + 169, `${isa}: 3-4-12`);
  }
  t.throws(() => op('grad_norm', { n: 1, grad: new Float32Array(1), out: new Float32Array(1) }, KERNELS[0]), /wrong typed-array type/, 'the output is a Float64Array');
});

/** torch.nn.utils.clip_grad_norm_'s factor in fp32: min(1, max_norm / (norm + 1e-6)), norm = fp32(sqrt(sumsq)). */
function clipCoef(maxNorm: number, sumsq: number): number {
  const norm = f32(Math.sqrt(sumsq));
  const c = f32(f32(maxNorm) / f32(norm + f32(1e-6)));
  return c > 1 ? 1 : c;
}

t.test('scale: x *= factor, and gradient clipping from grad_norm', async (t) => {
  const rng = new Rng(71);
  for (const n of [1, 1000, 100003]) {
    const x0 = rng.normals(n, 2);
    for (const isa of KERNELS) {
      const x = x0.slice();
      op('scale', { n, x, factor: 0.3 }, isa);
      expectEqual(t, x, Float64Array.from(x0, (v) => f32(v * f32(0.3))), `${isa}: n=${n}, factor 0.3`);
    }
  }
  await t.test('clip_grad_norm_: two tensors, norm above and below max_norm', async (t) => {
    for (const maxNorm of [1, 1e4]) {
      const a0 = rng.normals(5000, 0.1), b0 = rng.normals(70001, 0.05);
      for (const isa of KERNELS) {
        const a = a0.slice(), b = b0.slice();
        const sumsq = new Float64Array(1);
        op('grad_norm', { n: a.length, grad: a, out: sumsq }, isa);
        op('grad_norm', { n: b.length, grad: b, out: sumsq }, isa);
        const coef = clipCoef(maxNorm, sumsq[0]);
        op('scale', { n: a.length, x: a, sumsq, maxNorm }, isa);
        op('scale', { n: b.length, x: b, sumsq, maxNorm }, isa);
        expectEqual(t, a, Float64Array.from(a0, (v) => f32(v * coef)), `${isa}: max_norm ${maxNorm}: first tensor (coef ${coef})`);
        expectEqual(t, b, Float64Array.from(b0, (v) => f32(v * coef)), `${isa}: max_norm ${maxNorm}: second tensor`);
        const norm = Math.sqrt(sumSquares(a) + sumSquares(b)), before = Math.sqrt(sumsq[0]);
        if (maxNorm < before) expectClose(t, [norm], [maxNorm], 1e-5 * maxNorm, `${isa}: clipped norm ${before.toFixed(3)} -> max_norm`);
        else t.equal(coef, 1, `${isa}: norm ${before.toFixed(3)} below max_norm: unchanged`);
      }
    }
  });
  await t.test('a NaN norm propagates (as torch.clamp does)', async (t) => {
    const x = new Float32Array([1, 2]);
    op('scale', { n: 2, x, sumsq: new Float64Array([NaN]), maxNorm: 1 }, KERNELS[0]);
    t.ok(Number.isNaN(x[0]) && Number.isNaN(x[1]));
  });
});
