// rmsnorm and layernorm (each fused with the residual add) against float64.
//
// The residual update residual += delta is one float32 add per element, so it
// must equal Math.fround(residual + delta) exactly. The norms are then
// checked against float64 statistics of that float32 residual x:
//
//   rmsnorm: C = 4 + 2 sqrt(dim) (dotC). mean(x^2) is a sum of positive
//     terms, relative error <= C EPS32; rstd = 1/sqrt(.) halves it and adds
//     a rounding or two, so |rstd - ref| <= C EPS32 rstd, and each output
//     x_j * rstd * w_j is off by <= (C + 3) EPS32 |ref_j|.
//   layernorm: the float32 mean is off by <= C EPS32 mean|x|; the output
//     (x_j - mean) rstd w_j + b_j by <= (C + 4) EPS32 ((|x_j - mean| + mean|x|)
//     rstd |w_j| + |b_j|); rstd by <= C EPS32 rstd (1 + (C EPS32 mean|x|)^2 / var),
//     the second term being the (second-order) effect of centring on a mean
//     that is off, which matters only when |mean| >> std.
import t from 'tap';
import type { Test } from 'tap';
import { acrossKernels, dotC, EPS32, expectClose, expectEqual, f32, KERNELS, layernormRef, op, Rng, rmsnormRef } from './helpers/ref';

interface Case {
  n: number;
  dim: number;
  delta: boolean;
  stats: boolean;
  eps?: number;
  /** offset added to the residual (tests the two-pass variance) */
  offset?: number;
  seed: number;
}

const label = (c: Case) => `n=${c.n} dim=${c.dim}${c.delta ? ' +delta' : ''}${c.stats ? ' +stats' : ''}${c.offset ? ` offset=${c.offset}` : ''}${c.eps ? ` eps=${c.eps}` : ''}`;

function inputs(cs: Case) {
  const rng = new Rng(cs.seed);
  const { n, dim } = cs;
  const residual = rng.normals(n * dim, 1.5, cs.offset ?? 0);
  const delta = cs.delta ? rng.normals(n * dim, 0.7) : undefined;
  const x = new Float32Array(n * dim);
  for (let i = 0; i < n * dim; ++i) x[i] = delta ? f32(residual[i] + delta[i]) : residual[i];
  const weight = rng.normals(dim, 0.5, 1);
  const bias = rng.normals(dim, 0.3);
  return { residual, delta, x, weight, bias };
}

function rmsCase(t: Test, cs: Case) {
  const { n, dim } = cs;
  const eps = cs.eps ?? 1e-5;
  const { residual, delta, x, weight } = inputs(cs);
  const ref = rmsnormRef(x, weight, n, dim, eps);
  const C = dotC(dim);
  const tolOut = ref.out.map((v) => (C + 3) * EPS32 * Math.abs(v));
  const tolRstd = ref.rstd.map((v) => C * EPS32 * v);
  acrossKernels(t, (isa) => {
    const res = residual.slice();
    const out = new Float32Array(n * dim).fill(NaN);
    const rstd = cs.stats ? new Float32Array(n).fill(NaN) : undefined;
    op('rmsnorm', { n, dim, eps, residual: res, delta, weight, out, rstd }, isa);
    expectEqual(t, res, x, `${isa}: residual ${delta ? '+= delta in place' : 'unchanged without delta'}`);
    expectClose(t, out, ref.out, tolOut, `${isa}: out`);
    const r: Record<string, { got: Float32Array; tol: Float64Array | number }> = { out: { got: out, tol: tolOut }, residual: { got: res, tol: 0 } };
    if (rstd) {
      expectClose(t, rstd, ref.rstd, tolRstd, `${isa}: rstd`);
      r.rstd = { got: rstd, tol: tolRstd };
    }
    return r;
  });
}

function lnCase(t: Test, cs: Case) {
  const { n, dim } = cs;
  const eps = cs.eps ?? 1e-5;
  const { residual, delta, x, weight, bias } = inputs(cs);
  const ref = layernormRef(x, weight, bias, n, dim, eps);
  const C = dotC(dim);
  const tolOut = new Float64Array(n * dim);
  for (let i = 0; i < n; ++i)
    for (let j = 0; j < dim; ++j)
      tolOut[i * dim + j] = (C + 4) * EPS32 * ((Math.abs(x[i * dim + j] - ref.mean[i]) + ref.meanAbs[i]) * ref.rstd[i] * Math.abs(weight[j]) + Math.abs(bias[j]));
  const tolMean = ref.meanAbs.map((v) => C * EPS32 * v);
  const tolRstd = ref.rstd.map((r, i) => C * EPS32 * r * (1 + (C * EPS32 * ref.meanAbs[i]) ** 2 / ref.var[i]));
  acrossKernels(t, (isa) => {
    const res = residual.slice();
    const out = new Float32Array(n * dim).fill(NaN);
    const mean = cs.stats ? new Float32Array(n).fill(NaN) : undefined;
    const rstd = cs.stats ? new Float32Array(n).fill(NaN) : undefined;
    op('layernorm', { n, dim, eps, residual: res, delta, weight, bias, out, mean, rstd }, isa);
    expectEqual(t, res, x, `${isa}: residual ${delta ? '+= delta in place' : 'unchanged without delta'}`);
    expectClose(t, out, ref.out, tolOut, `${isa}: out`);
    const r: Record<string, { got: Float32Array; tol: Float64Array | number }> = { out: { got: out, tol: tolOut }, residual: { got: res, tol: 0 } };
    if (mean && rstd) {
      expectClose(t, mean, ref.mean, tolMean, `${isa}: mean`);
      expectClose(t, rstd, ref.rstd, tolRstd, `${isa}: rstd`);
      r.mean = { got: mean, tol: tolMean };
      r.rstd = { got: rstd, tol: tolRstd };
    }
    return r;
  });
}

const cases: Case[] = [
  { n: 1, dim: 1, delta: false, stats: true, seed: 1 },
  { n: 3, dim: 7, delta: true, stats: true, seed: 2 },
  { n: 13, dim: 17, delta: false, stats: false, seed: 3 },
  { n: 7, dim: 31, delta: true, stats: false, seed: 4 },
  { n: 17, dim: 33, delta: true, stats: true, seed: 5 },
  { n: 5, dim: 65, delta: false, stats: true, seed: 6, eps: 1e-6 },
  { n: 33, dim: 100, delta: true, stats: true, seed: 7 },
  { n: 4, dim: 257, delta: true, stats: true, seed: 8, eps: 1e-2 },
  { n: 9, dim: 1537, delta: true, stats: true, seed: 9 },
];

t.test('rmsnorm: residual add in place, out and rstd', async (t) => {
  for (const cs of cases) await t.test(label(cs), async (t) => rmsCase(t, cs));
  const big: Case = { n: 3, dim: 100, delta: true, stats: true, seed: 10, offset: 300 };
  await t.test(label(big), async (t) => rmsCase(t, big));
});

t.test('layernorm: residual add in place, out, mean and rstd', async (t) => {
  for (const cs of cases) await t.test(label(cs), async (t) => lnCase(t, cs));
  // |mean| >> std: the one-pass variance E[x^2] - mean^2 would lose every digit here.
  for (const cs of [
    { n: 3, dim: 100, delta: false, stats: true, seed: 11, offset: 1000 },
    { n: 5, dim: 257, delta: true, stats: true, seed: 12, offset: -3000 },
  ] as Case[])
    await t.test(label(cs), async (t) => lnCase(t, cs));
});

t.test('a constant row: rmsnorm and layernorm stay finite (eps keeps rstd bounded)', async (t) => {
  const dim = 33;
  for (const isa of KERNELS) {
    const weight = new Float32Array(dim).fill(1), bias = new Float32Array(dim).fill(0.5);
    const out = new Float32Array(dim), rstd = new Float32Array(1), mean = new Float32Array(1);
    op('layernorm', { n: 1, dim, eps: 1e-5, residual: new Float32Array(dim).fill(2), weight, bias, out, mean, rstd }, isa);
    t.equal(mean[0], 2, `${isa}: layernorm mean of a constant row`);
    t.ok(Math.abs(rstd[0] - 1 / Math.sqrt(f32(1e-5))) <= 1e-3 * rstd[0], `${isa}: layernorm rstd = 1/sqrt(eps), got ${rstd[0]}`);
    t.ok(out.every((v) => v === 0.5), `${isa}: layernorm out = bias`);
    const zero = new Float32Array(dim);
    op('rmsnorm', { n: 1, dim, eps: 1e-5, residual: zero, weight, out, rstd }, isa);
    t.ok(out.every((v) => v === 0) && Number.isFinite(rstd[0]), `${isa}: rmsnorm of zeros is zeros`);
  }
});
