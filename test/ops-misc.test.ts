// swiglu, gelu, add and embedding against float64 references.
//
// Bounds (EPS32 = 2^-24):
//   swiglu: silu(g) u = g u / (1 + exp(-g)): an exp good to ~2 ulp, an add, a
//     divide and a multiply, so 32 EPS32 |ref| (~2e-6 relative), plus 1e-30
//     absolute for g < -87 where float32 exp saturates and the true value is
//     below 1e-36.
//   gelu (tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))):
//     32 EPS32 |ref| + 8 EPS32 |x|. The second term is the cancellation in
//     1 + tanh(u) for negative x: tanh is good to a few EPS32 absolute, which
//     is a large relative error once 1 + tanh(u) is small; it is inherent to
//     the formula in float32 (PyTorch's gelu_new has it too).
//   add, embedding: one float32 add per element (or a copy), so exact:
//     Math.fround(a + b).
import t from 'tap';
import type { Test } from 'tap';
import { acrossKernels, EPS32, expectClose, expectEqual, f32, geluTanh, KERNELS, op, Rng, silu, untouched } from './helpers/ref';

const SENTINEL = 4242.5;
const EXTREMES = [0, -0, 1e-3, -1e-3, 0.5, -0.5, 3, -3, 5, -5, 10, -10, 30, -30, 87, -87, 88.5, -88.5, 100, -100, 1e-30, -1e-30];

/** n*dim values ~ N(0, 3^2) with the extremes sprinkled in (when there is room). */
function activationInputs(rng: Rng, rows: number, cols: number, ld: number): Float32Array {
  const a = new Float32Array(rows * ld).fill(NaN);
  let e = 0;
  for (let i = 0; i < rows; ++i)
    for (let j = 0; j < cols; ++j) a[i * ld + j] = (i * cols + j) % 5 === 2 && e < EXTREMES.length ? EXTREMES[e++] : 3 * rng.normal();
  return a;
}

const shapes: [number, number][] = [
  [1, 1],
  [3, 7],
  [13, 17],
  [7, 31],
  [5, 33],
  [17, 65],
  [3, 100],
  [2, 257],
  [33, 13],
];

// ------------------------------------------------------------------ swiglu

function swigluCase(t: Test, n: number, dim: number, fused: boolean, extraOut: number, seed: number) {
  const rng = new Rng(seed);
  let gate: Float32Array, up: Float32Array, ldIn: number;
  if (fused) {
    // One [n, 2*dim (+1)] row per token: gate first, then up.
    ldIn = 2 * dim + 1;
    const buf = activationInputs(rng, n, 2 * dim, ldIn);
    gate = buf;
    up = buf.subarray(dim);
  } else {
    ldIn = dim;
    gate = activationInputs(rng, n, dim, ldIn);
    up = rng.normals(n * dim, 2);
  }
  const ldOut = dim + extraOut;
  const ref = new Float64Array(n * ldOut), tol = new Float64Array(n * ldOut), idx: number[] = [];
  for (let i = 0; i < n; ++i)
    for (let j = 0; j < dim; ++j) {
      const r = silu(gate[i * ldIn + j]) * up[i * ldIn + j];
      ref[i * ldOut + j] = r;
      tol[i * ldOut + j] = 32 * EPS32 * Math.abs(r) + 1e-30;
      idx.push(i * ldOut + j);
    }
  acrossKernels(t, (isa) => {
    const out = new Float32Array(n * ldOut).fill(SENTINEL);
    op('swiglu', { n, dim, gate, up, ldIn, out, ldOut }, isa);
    expectClose(t, out, ref, tol, `${isa}: out = silu(gate) * up`, idx);
    if (extraOut) t.ok(untouched(out, (x) => x % ldOut >= dim, SENTINEL), `${isa}: output padding untouched`);
    return { out: { got: out, tol, indices: idx } };
  });
}

t.test('swiglu: separate and fused gate|up rows, strided output', async (t) => {
  let seed = 1;
  for (const [n, dim] of shapes)
    for (const fused of [false, true]) {
      const extra = seed % 3;
      await t.test(`n=${n} dim=${dim}${fused ? ' fused' : ''}${extra ? ` ld_out+${extra}` : ''}`, async (t) => swigluCase(t, n, dim, fused, extra, seed++));
    }
});

// ------------------------------------------------------------------ gelu

function geluCase(t: Test, n: number, dim: number, extraIn: number, extraOut: number, inPlace: boolean, seed: number) {
  const rng = new Rng(seed);
  const ldIn = dim + extraIn, ldOut = inPlace ? ldIn : dim + extraOut;
  const x = activationInputs(rng, n, dim, ldIn);
  const ref = new Float64Array(n * ldOut), tol = new Float64Array(n * ldOut), idx: number[] = [];
  for (let i = 0; i < n; ++i)
    for (let j = 0; j < dim; ++j) {
      const xv = x[i * ldIn + j];
      const r = geluTanh(xv);
      ref[i * ldOut + j] = r;
      tol[i * ldOut + j] = 32 * EPS32 * Math.abs(r) + 8 * EPS32 * Math.abs(xv);
      idx.push(i * ldOut + j);
    }
  acrossKernels(t, (isa) => {
    let out: Float32Array;
    if (inPlace) {
      out = x.slice();
      op('gelu', { n, dim, x: out, ldIn, out, ldOut }, isa);
    } else {
      out = new Float32Array(n * ldOut).fill(SENTINEL);
      op('gelu', { n, dim, x, ldIn, out, ldOut }, isa);
    }
    expectClose(t, out, ref, tol, `${isa}: gelu_tanh${inPlace ? ' in place' : ''}`, idx);
    if (ldOut > dim) t.ok(untouched(out, (q) => q % ldOut >= dim, inPlace ? NaN : SENTINEL), `${isa}: padding untouched`);
    return { out: { got: out, tol, indices: idx } };
  });
}

t.test('gelu (tanh approximation): out of place with strides, and in place', async (t) => {
  let seed = 100;
  for (const [n, dim] of shapes) {
    const extraIn = seed % 2, extraOut = (seed >> 1) % 3;
    await t.test(`n=${n} dim=${dim} ld_in+${extraIn} ld_out+${extraOut}`, async (t) => geluCase(t, n, dim, extraIn, extraOut, false, seed++));
    await t.test(`n=${n} dim=${dim} in place`, async (t) => geluCase(t, n, dim, extraIn, 0, true, seed++));
  }
});

t.test('gelu: known values', async (t) => {
  for (const isa of KERNELS) {
    const x = new Float32Array([0, 1, -1, 2]);
    const out = new Float32Array(4);
    op('gelu', { n: 1, dim: 4, x, ldIn: 4, out, ldOut: 4 }, isa);
    // gelu_new(1) = 0.8411919906082768, gelu_new(-1) = -0.15880800939172324, gelu_new(2) = 1.954597694087775
    expectClose(t, out, [0, 0.8411919906082768, -0.15880800939172324, 1.954597694087775], 1e-6, `${isa}: gelu(0, 1, -1, 2)`);
  }
});

// ------------------------------------------------------------------ add

t.test('add: y += x, exact', async (t) => {
  let seed = 200;
  for (const [n, dim] of shapes)
    await t.test(`n=${n} dim=${dim}`, async (t) => {
      const rng = new Rng(seed++);
      const x = rng.normals(n * dim, 10), y0 = rng.normals(n * dim);
      const ref = y0.map((v, i) => f32(v + x[i]));
      acrossKernels(t, (isa) => {
        const y = y0.slice();
        op('add', { n, dim, x, y }, isa);
        expectEqual(t, y, ref, `${isa}: y + x`);
        t.ok(x.every((v, i) => v === x[i]), `${isa}: x unchanged`);
        return { y: { got: y, tol: 0 } };
      });
    });
});

// ------------------------------------------------------------------ embedding

t.test('embedding: rows of the table, with and without learned positions, exact', async (t) => {
  let seed = 300;
  for (const [n, dim, rows, maxPos] of [
    [1, 1, 1, 1],
    [3, 7, 5, 4],
    [17, 33, 50, 40],
    [13, 100, 7, 13],
    [31, 257, 65, 300],
  ]) {
    for (const withPos of [false, true])
      await t.test(`n=${n} dim=${dim} rows=${rows}${withPos ? ` +positions (max ${maxPos})` : ''}`, async (t) => {
        const rng = new Rng(seed++);
        const table = rng.normals(rows * dim);
        const ids = rng.ints(n, 0, rows);
        ids[0] = rows - 1;
        if (n > 1) ids[n - 1] = 0;
        const positions = withPos ? rng.ints(n, 0, maxPos) : undefined;
        const posTable = withPos ? rng.normals(maxPos * dim, 0.1) : undefined;
        if (positions) positions[0] = maxPos - 1;
        const ref = new Float64Array(n * dim);
        for (let i = 0; i < n; ++i)
          for (let j = 0; j < dim; ++j) ref[i * dim + j] = positions && posTable ? f32(table[ids[i] * dim + j] + posTable[positions[i] * dim + j]) : table[ids[i] * dim + j];
        acrossKernels(t, (isa) => {
          const out = new Float32Array(n * dim).fill(NaN);
          op('embedding', { n, dim, rows, ids, table, positions, posTable, out }, isa);
          expectEqual(t, out, ref, `${isa}: out`);
          return { out: { got: out, tol: 0 } };
        });
      });
  }
});
