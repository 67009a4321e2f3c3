// gemm against a float64 reference, every kernel this CPU has.
//
// Bound: |ours - ref| <= (4 + 2 sqrt(k)) * EPS32 * (sum_k |a_ik b_kj| + |bias_j| + |C0_ij|)
// (EPS32 = 2^-24). Any summation order of k float32 products is within
// (k-1) EPS32 of that sum in the worst case and ~sqrt(k) EPS32 in practice;
// the 4 covers the final roundings (+C0, +bias, store).
//
// Padding of A and B (leading dimensions larger than a row) holds NaN, and so
// does C when accumulate is false: a kernel that reads either poisons its
// output. Padding columns of C hold a sentinel that must survive.
import t from 'tap';
import type { Test } from 'tap';
import { acrossKernels, dotC, EPS32, expectClose, gemmRef, KERNELS, op, Rng, strided, untouched } from './helpers/ref';

const SENTINEL = 12345.5;

interface Case {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  /** extra columns of each leading dimension beyond the row length */
  padA?: number;
  padB?: number;
  padC?: number;
  accumulate?: boolean;
  bias?: boolean;
  seed: number;
}

function runCase(t: Test, cs: Case): void {
  const { transA, transB, m, n, k } = cs;
  const rng = new Rng(cs.seed);
  // Stored shapes: A [m,k] or (transA) [k,m]; B [k,n] or (transB) [n,k].
  const aRows = transA ? k : m, aCols = transA ? m : k;
  const bRows = transB ? n : k, bCols = transB ? k : n;
  const lda = aCols + (cs.padA ?? 0), ldb = bCols + (cs.padB ?? 0), ldc = n + (cs.padC ?? 0);
  const a = strided(rng, aRows, aCols, lda);
  const b = strided(rng, bRows, bCols, ldb);
  const accumulate = !!cs.accumulate;
  // C0: random where accumulated, NaN where it must not be read; the padding always holds the sentinel.
  const c0 = new Float32Array(m * ldc).fill(SENTINEL);
  for (let i = 0; i < m; ++i) for (let j = 0; j < n; ++j) c0[i * ldc + j] = accumulate ? rng.normal() : NaN;
  const bias = cs.bias ? rng.normals(n) : undefined;
  const { ref, absSum } = gemmRef({ transA, transB, m, n, k, a, lda, b, ldb, ldc, c0, accumulate, bias });

  const idx = new Int32Array(m * n);
  const refC = new Float64Array(m * ldc), tol = new Float64Array(m * ldc);
  for (let i = 0; i < m; ++i)
    for (let j = 0; j < n; ++j) {
      idx[i * n + j] = i * ldc + j;
      refC[i * ldc + j] = ref[i * n + j];
      tol[i * ldc + j] = dotC(k) * EPS32 * absSum[i * n + j];
    }
  const isPad = (q: number) => q % ldc >= n;

  acrossKernels(t, (isa) => {
    const c = c0.slice();
    op('gemm', { transA, transB, m, n, k, a, lda, b, ldb, c, ldc, bias, accumulate }, isa);
    expectClose(t, c, refC, tol, `${isa}: C`, idx);
    if (ldc > n) t.ok(untouched(c, isPad, SENTINEL), `${isa}: padding columns of C untouched`);
    return { c: { got: c, tol, indices: idx } };
  });
}

const label = (c: Case) =>
  `${c.transA ? 'T' : 'N'}${c.transB ? 'T' : 'N'} m=${c.m} n=${c.n} k=${c.k}` +
  (c.padA || c.padB || c.padC ? ` ld+(${c.padA ?? 0},${c.padB ?? 0},${c.padC ?? 0})` : '') +
  (c.accumulate ? ' accumulate' : '') +
  (c.bias ? ' bias' : '');

const combos: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];

t.test('all four transpose combinations, odd shapes, padded leading dimensions, accumulate and bias', async (t) => {
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [3, 7, 13],
    [13, 17, 31],
    [17, 33, 7],
    [31, 65, 33],
    [7, 100, 257],
    [65, 31, 100],
    [33, 257, 17],
  ];
  let seed = 1;
  for (const [transA, transB] of combos) {
    for (const [m, n, k] of shapes) {
      const variant = seed % 4;
      const cs: Case = {
        transA, transB, m, n, k, seed: seed++,
        padA: variant & 1 ? 3 : 0, padB: variant & 2 ? 5 : 0, padC: variant ? 2 : 0,
        accumulate: variant === 1 || variant === 3, bias: variant >= 2,
      };
      await t.test(label(cs), async (t) => runCase(t, cs));
    }
  }
});

t.test('small M (m <= 8, trans_b: the dot-product path) and m just above 8', async (t) => {
  let seed = 100;
  for (const m of [1, 2, 3, 4, 5, 7, 8, 9, 13]) {
    for (const [n, k] of [[1, 1], [7, 5], [33, 17], [65, 300], [100, 15], [257, 33]] as [number, number][]) {
      const cs: Case = { transA: false, transB: true, m, n, k, seed: seed++, padA: m % 2 ? 3 : 0, padB: n % 2 ? 0 : 1, padC: 1, accumulate: seed % 2 === 0, bias: seed % 3 === 0 };
      await t.test(label(cs), async (t) => runCase(t, cs));
    }
  }
  // Long rows: the small-M path walks B in chunks of ~96 KB of rows (only 3-6 rows when k is this long).
  for (const [m, n, k] of [[5, 50, 9001], [3, 20, 30001], [8, 7, 4099]] as [number, number, number][]) {
    const cs: Case = { transA: false, transB: true, m, n, k, seed: seed++, padA: 1, padB: 2, padC: 1, accumulate: true, bias: true };
    await t.test(label(cs), async (t) => runCase(t, cs));
  }
});

t.test('shapes crossing the cache blocks: m > MC=192, n > NC=1536, several K slabs (AVX2: K > 768; AVX-512: K > 256)', async (t) => {
  const cases: Case[] = [
    { transA: false, transB: true, m: 200, n: 1600, k: 300, seed: 500 },
    { transA: false, transB: false, m: 13, n: 1600, k: 300, seed: 501, padC: 3, accumulate: true, bias: true },
    { transA: true, transB: true, m: 200, n: 40, k: 300, seed: 505, padA: 2, padB: 1 },
    { transA: true, transB: false, m: 197, n: 67, k: 530, seed: 502, padA: 1, padB: 2, accumulate: true },
    { transA: true, transB: true, m: 25, n: 49, k: 777, seed: 503, bias: true },
    { transA: false, transB: true, m: 6, n: 1601, k: 513, seed: 504, accumulate: true },
    { transA: false, transB: false, m: 50, n: 70, k: 2000, seed: 506, accumulate: true },  // three K slabs
  ];
  for (const cs of cases) await t.test(label(cs), async (t) => runCase(t, cs));
});

t.test('exact tiles (multiples of 6x16 / 12x32) still right next to the odd ones', async (t) => {
  const cases: Case[] = [
    { transA: false, transB: false, m: 12, n: 32, k: 16, seed: 600 },
    { transA: false, transB: true, m: 24, n: 64, k: 256, seed: 601, accumulate: true },
    { transA: true, transB: false, m: 192, n: 96, k: 512, seed: 602, bias: true },
  ];
  for (const cs of cases) await t.test(label(cs), async (t) => runCase(t, cs));
});

t.test('k = 0: C = bias (or unchanged with accumulate); m = 0 and n = 0 are no-ops', async (t) => {
  for (const isa of KERNELS) {
    const bias = new Float32Array([1, -2, 3]);
    const c = new Float32Array(6).fill(NaN);
    op('gemm', { m: 2, n: 3, k: 0, a: new Float32Array(0), lda: 0, b: new Float32Array(0), ldb: 3, c, ldc: 3, bias }, isa);
    t.same(Array.from(c), [1, -2, 3, 1, -2, 3], `${isa}: k=0 -> bias`);
    const c2 = new Float32Array([1, 2, 3, 4, 5, 6]);
    op('gemm', { m: 2, n: 3, k: 0, a: new Float32Array(0), lda: 0, b: new Float32Array(0), ldb: 3, c: c2, ldc: 3, accumulate: true }, isa);
    t.same(Array.from(c2), [1, 2, 3, 4, 5, 6], `${isa}: k=0 with accumulate leaves C`);
    const c3 = new Float32Array(4).fill(7);
    op('gemm', { m: 0, n: 2, k: 3, a: new Float32Array(0), lda: 3, b: new Float32Array(6), ldb: 2, c: c3, ldc: 2 }, isa);
    op('gemm', { m: 2, n: 0, k: 3, a: new Float32Array(6), lda: 3, b: new Float32Array(0), ldb: 0, c: c3, ldc: 2 }, isa);
    t.same(Array.from(c3), [7, 7, 7, 7], `${isa}: m=0 / n=0 write nothing`);
  }
});
