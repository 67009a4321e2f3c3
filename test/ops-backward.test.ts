// The backward ops (bias_grad and every *_backward op of the table) against
// central finite differences of a float64 reference of their forward.
//
// Method: for each op, random seeded inputs with odd sizes (SIMD tails, the
// 64-column tasks of column_reduce, the 256-row blocks and 2048-token
// vocabulary chunks of the LM head), a scalar objective L = sum(w .* forward(x))
// with random weights w (so dout = w), the analytic gradient from the op on
// every kernel this CPU has, and
//   fd_i = (L(x + h e_i) - L(x - h e_i)) / (2h),  h = 1e-5 max(1, |x_i|),
// evaluated in float64 on the float64 reference forward (each perturbation
// only re-evaluates the terms of L that depend on x_i; the rest is constant).
// The truncation error is ~h^2 |L'''| ~ 1e-10 and the roundoff ~1e-16 |L| / h
// ~ 1e-10, far below the bound.
//
// Bound (every gradient, every element i):
//   |got_i - (start_i + fd_i)| <= 1e-4 max_k |fd_k| + 1e-3 |fd_i| + 4 EPS32 |start_i|
// The op computes in fp32 from fp32 inputs (and, where it needs them, the
// fp32 statistics of its forward: rstd/mean, out/lse, lse/entropy), so its
// gradients are good to ~1e-6 relative of their magnitudes; 1e-4 of the
// largest gradient plus 1e-3 of the element absorbs that with room, and
// still catches any wrong term, factor or index. start_i is the value an
// accumulated output held before the call (EPS32 = 2^-24: its fp32 addition).
// Outputs that the op must leave alone (row padding) are filled with NaN and
// must stay NaN; outputs that must be zero (padded queries/keys, ignored LM
// targets) are also checked exactly.
import t from 'tap';
import type { Test } from 'tap';
import { copy, EPS32, expectClose, expectEqual, f32, geluTanh, KERNELS, layernormRef, op as runKernelOp, opKernels, Rng, rmsnormRef, silu, strided, untouched } from './helpers/ref';

// ------------------------------------------------------------------ helpers

/** Op runs of this file, `name:isa` (checked at the end: every backward op ran here on every kernel). */
const ran = new Set<string>();
function op(name: string, args: Record<string, unknown>, isa: string): void {
  runKernelOp(name, args, isa);
  ran.add(`${name}:${isa}`);
}

const FD_H = 1e-5;

/**
 * Central finite differences at the given indices of x (a float64 array that
 * is perturbed in place and restored): `local(i)` must return every term of
 * L that depends on x[i], read from x. Entries not in `indices` stay 0.
 */
function fdGrad(x: Float64Array, indices: ArrayLike<number>, local: (i: number) => number): Float64Array {
  const g = new Float64Array(x.length);
  for (let q = 0; q < indices.length; ++q) {
    const i = indices[q];
    const v = x[i];
    const h = FD_H * Math.max(1, Math.abs(v));
    const xp = v + h, xm = v - h;
    x[i] = xp;
    const fp = local(i);
    x[i] = xm;
    const fm = local(i);
    x[i] = v;
    g[i] = (fp - fm) / (xp - xm);
  }
  return g;
}

/** The bound of the file header: got vs start + fd at `indices`. */
function expectGrad(t: Test, got: ArrayLike<number>, fd: Float64Array, indices: ArrayLike<number>, what: string, start?: ArrayLike<number>): boolean {
  let gmax = 0;
  for (let q = 0; q < indices.length; ++q) gmax = Math.max(gmax, Math.abs(fd[indices[q]]));
  const ref = new Float64Array(fd.length), tol = new Float64Array(fd.length);
  for (let q = 0; q < indices.length; ++q) {
    const i = indices[q];
    const s = start ? start[i] : 0;
    ref[i] = s + fd[i];
    tol[i] = 1e-4 * gmax + 1e-3 * Math.abs(fd[i]) + 4 * EPS32 * Math.abs(s);
  }
  return expectClose(t, got, ref, tol, `${what} vs finite differences${start ? ' (accumulated onto a nonzero start)' : ''}`, indices);
}

function range(n: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; ++i) a[i] = i;
  return a;
}

/** Indices of the first `cols` columns of each of `rows` rows of stride ld, from `off`. */
function block(rows: number, cols: number, ld: number, off = 0): Int32Array {
  const a = new Int32Array(rows * cols);
  for (let i = 0; i < rows; ++i) for (let j = 0; j < cols; ++j) a[i * cols + j] = off + i * ld + j;
  return a;
}

/** Every element of `a` outside the set `valid` (row padding) is still NaN. */
function padStaysNaN(t: Test, a: Float32Array, valid: ArrayLike<number>, what: string) {
  const isValid = new Uint8Array(a.length);
  for (let q = 0; q < valid.length; ++q) isValid[valid[q]] = 1;
  t.ok(untouched(a, (i) => !isValid[i], NaN), `${what}: row padding untouched`);
}

// ------------------------------------------------------------------ bias_grad

// Forward: y[i, j] = (x W^T)[i, j] + b[j]; the bias-free part is a fixed
// random matrix c (constant in b). L = sum w .* y, w = dy in [n, ld] rows.
function biasGradCase(t: Test, cs: { n: number; dim: number; ld: number; seed: number }) {
  const { n, dim, ld } = cs;
  const rng = new Rng(cs.seed);
  const dy = new Float32Array(n * ld).fill(NaN); // padding NaN: must not be read
  for (let i = 0; i < n; ++i) for (let j = 0; j < dim; ++j) dy[i * ld + j] = rng.normal();
  const c = rng.normals(n * dim);
  const b = Float64Array.from(rng.normals(dim));
  const db0 = rng.normals(dim);
  const fd = fdGrad(b, range(dim), (j) => {
    let s = 0;
    for (let i = 0; i < n; ++i) s += dy[i * ld + j] * (c[i * dim + j] + b[j]);
    return s;
  });
  for (const isa of KERNELS) {
    const db = db0.slice();
    op('bias_grad', { n, dim, dy, ld, db }, isa);
    expectGrad(t, db, fd, range(dim), `${isa}: db`, db0);
  }
}

t.test('bias_grad: db += column sums of dy (row stride ld > dim), accumulated', async (t) => {
  biasGradCase(t, { n: 37, dim: 131, ld: 140, seed: 1 });
  biasGradCase(t, { n: 300, dim: 67, ld: 70, seed: 2 });
  biasGradCase(t, { n: 1, dim: 5, ld: 5, seed: 3 });
  // ld defaults to dim.
  const dy = new Float32Array([1, 2, 3, 4, 5, 6]);
  for (const isa of KERNELS) {
    const db = new Float32Array([10, 20, 30]);
    op('bias_grad', { n: 2, dim: 3, dy, db }, isa);
    expectEqual(t, db, [15, 27, 39], `${isa}: ld defaults to dim`);
  }
});

// ------------------------------------------------------------------ embedding_backward

// Forward: out[i, :] = table[ids[i], :] (+ pos[positions[i], :]). L = sum w .* out.
// Perturbing table[r, j] or pos[p, j] only changes column j of out.
function embeddingCase(t: Test, cs: { n: number; dim: number; rows: number; maxPos: number; positions: boolean; dtable: boolean; seed: number }) {
  const { n, dim, rows, maxPos } = cs;
  const rng = new Rng(cs.seed);
  // ids repeat (n > rows); the last row is never used (its gradient stays as it was).
  const ids = rng.ints(n, 0, rows - 1);
  ids[0] = ids[n - 1] = 0;
  const positions = cs.positions ? rng.ints(n, 0, maxPos - 1) : undefined;
  if (positions) positions[1] = positions[n - 2] = 3;
  const w = rng.normals(n * dim);
  const table = Float64Array.from(rng.normals(rows * dim));
  const pos = Float64Array.from(rng.normals(maxPos * dim));
  const column = (j: number) => {
    let s = 0;
    for (let i = 0; i < n; ++i) s += w[i * dim + j] * (table[ids[i] * dim + j] + (positions ? pos[positions[i] * dim + j] : 0));
    return s;
  };
  const fdTable = fdGrad(table, range(rows * dim), (q) => column(q % dim));
  const fdPos = positions ? fdGrad(pos, range(maxPos * dim), (q) => column(q % dim)) : undefined;
  const dtable0 = rng.normals(rows * dim), dpos0 = rng.normals(maxPos * dim);
  const label = `${cs.dtable ? 'dtable' : 'frozen table'}${positions ? ' + dposTable' : ''}`;
  for (const isa of KERNELS) {
    const dtable = cs.dtable ? dtable0.slice() : undefined;
    const dposTable = positions ? dpos0.slice() : undefined;
    op('embedding_backward', { n, dim, rows, ids, dout: w, dtable, positions, dposTable }, isa);
    if (dtable) {
      expectGrad(t, dtable, fdTable, range(rows * dim), `${isa}: ${label}: dtable (repeated ids)`, dtable0);
      expectEqual(t, dtable.subarray((rows - 1) * dim), dtable0.subarray((rows - 1) * dim), `${isa}: ${label}: a row no id points at is unchanged`);
    }
    if (dposTable && fdPos) {
      expectGrad(t, dposTable, fdPos, range(maxPos * dim), `${isa}: ${label}: dposTable (repeated positions)`, dpos0);
      expectEqual(t, dposTable.subarray((maxPos - 1) * dim), dpos0.subarray((maxPos - 1) * dim), `${isa}: ${label}: an unused position is unchanged`);
    }
  }
}

t.test('embedding_backward: scatter-add with repeated ids, with and without learned positions', async (t) => {
  embeddingCase(t, { n: 37, dim: 133, rows: 9, maxPos: 41, positions: false, dtable: true, seed: 11 });
  embeddingCase(t, { n: 53, dim: 67, rows: 13, maxPos: 29, positions: true, dtable: true, seed: 12 });
  embeddingCase(t, { n: 19, dim: 7, rows: 5, maxPos: 11, positions: true, dtable: false, seed: 13 });
});

// ------------------------------------------------------------------ rmsnorm_backward / layernorm_backward

const EPS = 1e-5;

// Forward: out = x rstd(x) weight, rstd = (mean(x^2) + eps)^-1/2 (rmsnormRef,
// float64). x[i, :] only changes row i; weight[j] only column j (rstd does not
// depend on it).
function rmsnormCase(t: Test, cs: { n: number; dim: number; dweight: boolean; seed: number }) {
  const { n, dim } = cs;
  const rng = new Rng(cs.seed);
  const xf = rng.normals(n * dim);
  // A row of small values, where eps matters (mean(x^2) ~ 1e-4 vs eps 1e-5).
  for (let j = 0; j < dim; ++j) xf[j] *= 0.01;
  const weight = rng.normals(dim, 0.3, 1);
  const w = rng.normals(n * dim);
  const rstd = Float32Array.from(rmsnormRef(xf, weight, n, dim, EPS).rstd);
  const x = Float64Array.from(xf), wt = Float64Array.from(weight);
  const row = (i: number) => {
    let ss = 0;
    for (let j = 0; j < dim; ++j) ss += x[i * dim + j] ** 2;
    const r = 1 / Math.sqrt(ss / dim + f32(EPS));
    let s = 0;
    for (let j = 0; j < dim; ++j) s += w[i * dim + j] * x[i * dim + j] * r * wt[j];
    return s;
  };
  const rstd64 = rmsnormRef(xf, weight, n, dim, EPS).rstd;
  const column = (j: number) => {
    let s = 0;
    for (let i = 0; i < n; ++i) s += w[i * dim + j] * x[i * dim + j] * rstd64[i] * wt[j];
    return s;
  };
  const fdX = fdGrad(x, range(n * dim), (q) => row(Math.floor(q / dim)));
  const fdW = fdGrad(wt, range(dim), column);
  const dx0 = rng.normals(n * dim), dw0 = rng.normals(dim);
  for (const isa of KERNELS) {
    const dx = dx0.slice();
    const dweight = cs.dweight ? dw0.slice() : undefined;
    op('rmsnorm_backward', { n, dim, x: xf, weight, rstd, dout: w, dx, dweight }, isa);
    expectGrad(t, dx, fdX, range(n * dim), `${isa}: n=${n} dim=${dim}: dx`, dx0);
    if (dweight) expectGrad(t, dweight, fdW, range(dim), `${isa}: n=${n} dim=${dim}: dweight`, dw0);
  }
}

// Forward: out = (x - mean) rstd weight + bias (layernormRef, float64).
function layernormCase(t: Test, cs: { n: number; dim: number; affine: boolean; seed: number }) {
  const { n, dim } = cs;
  const rng = new Rng(cs.seed);
  const xf = new Float32Array(n * dim);
  for (let i = 0; i < n; ++i) {
    const mu = rng.normal() * 2, sd = rng.uniform(0.05, 3);
    for (let j = 0; j < dim; ++j) xf[i * dim + j] = mu + sd * rng.normal();
  }
  const weight = rng.normals(dim, 0.3, 1), bias = rng.normals(dim);
  const w = rng.normals(n * dim);
  const fwd = layernormRef(xf, weight, bias, n, dim, EPS);
  const mean = Float32Array.from(fwd.mean), rstd = Float32Array.from(fwd.rstd);
  const x = Float64Array.from(xf), wt = Float64Array.from(weight), bs = Float64Array.from(bias);
  const row = (i: number) => {
    let mu = 0;
    for (let j = 0; j < dim; ++j) mu += x[i * dim + j];
    mu /= dim;
    let v = 0;
    for (let j = 0; j < dim; ++j) v += (x[i * dim + j] - mu) ** 2;
    const r = 1 / Math.sqrt(v / dim + f32(EPS));
    let s = 0;
    for (let j = 0; j < dim; ++j) s += w[i * dim + j] * ((x[i * dim + j] - mu) * r * wt[j] + bs[j]);
    return s;
  };
  const column = (j: number) => {
    let s = 0;
    for (let i = 0; i < n; ++i) s += w[i * dim + j] * ((x[i * dim + j] - fwd.mean[i]) * fwd.rstd[i] * wt[j] + bs[j]);
    return s;
  };
  const fdX = fdGrad(x, range(n * dim), (q) => row(Math.floor(q / dim)));
  const fdW = fdGrad(wt, range(dim), column);
  const fdB = fdGrad(bs, range(dim), column);
  const dx0 = rng.normals(n * dim), dw0 = rng.normals(dim), db0 = rng.normals(dim);
  for (const isa of KERNELS) {
    const dx = dx0.slice();
    const dweight = cs.affine ? dw0.slice() : undefined, dbias = cs.affine ? db0.slice() : undefined;
    op('layernorm_backward', { n, dim, x: xf, weight, mean, rstd, dout: w, dx, dweight, dbias }, isa);
    expectGrad(t, dx, fdX, range(n * dim), `${isa}: n=${n} dim=${dim}: dx`, dx0);
    if (dweight) expectGrad(t, dweight, fdW, range(dim), `${isa}: n=${n} dim=${dim}: dweight`, dw0);
    if (dbias) expectGrad(t, dbias, fdB, range(dim), `${isa}: n=${n} dim=${dim}: dbias`, db0);
  }
}

t.test('rmsnorm_backward: dx and dweight accumulated (dweight also null)', async (t) => {
  rmsnormCase(t, { n: 19, dim: 131, dweight: true, seed: 21 });
  rmsnormCase(t, { n: 7, dim: 67, dweight: false, seed: 22 });
  rmsnormCase(t, { n: 1, dim: 9, dweight: true, seed: 23 });
});

t.test('layernorm_backward: dx, dweight, dbias accumulated (weight/bias gradients also null)', async (t) => {
  layernormCase(t, { n: 17, dim: 133, affine: true, seed: 31 });
  layernormCase(t, { n: 5, dim: 67, affine: false, seed: 32 });
  layernormCase(t, { n: 1, dim: 11, affine: true, seed: 33 });
});

// ------------------------------------------------------------------ attention_backward

interface AttnCase {
  batch: number;
  seq: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** q|k|v in one row of stride (heads + 2 kvHeads) headDim + pad (else three buffers, each row padded by pad) */
  fused: boolean;
  pad: number;
  /** per sequence [left, right] padding (mask 0), or null: no mask */
  padding: [number, number][] | null;
  seed: number;
}

// Forward (float64): out[b,t,h] = sum_s softmax_s(scale q.k_s) v_s over
// s <= t with mask[b,s] (zero for a padded query). L = sum w .* out.
// q[b,t,h,:] only changes row (b,t,h); k/v[b,s,g,:] only rows (b, t >= s, h in
// group g).
function attentionCase(t: Test, cs: AttnCase) {
  const { batch: B, seq: T, heads: H, kvHeads: KV, headDim: D, pad } = cs;
  const group = H / KV, BT = B * T;
  const rng = new Rng(cs.seed);
  let ldq: number, ldk: number, ldv: number, qOff: number, kOff: number, vOff: number, total: number;
  if (cs.fused) {
    ldq = ldk = ldv = (H + 2 * KV) * D + pad;
    qOff = 0, kOff = H * D, vOff = (H + KV) * D, total = BT * ldq;
  } else {
    ldq = H * D + pad, ldk = ldv = KV * D + pad;
    qOff = 0, kOff = BT * ldq, vOff = kOff + BT * ldk, total = vOff + BT * ldv;
  }
  const ldo = H * D + pad;
  const qIdx = new Int32Array(BT * H * D), kIdx = new Int32Array(BT * KV * D), vIdx = new Int32Array(BT * KV * D);
  // element (row, head, d) of each tensor in the buffer
  const at = (off: number, ld: number, row: number, head: number, d: number) => off + row * ld + head * D + d;
  for (let q = 0; q < qIdx.length; ++q) qIdx[q] = at(qOff, ldq, Math.floor(q / (H * D)), Math.floor(q / D) % H, q % D);
  for (let q = 0; q < kIdx.length; ++q) kIdx[q] = at(kOff, ldk, Math.floor(q / (KV * D)), Math.floor(q / D) % KV, q % D);
  for (let q = 0; q < vIdx.length; ++q) vIdx[q] = at(vOff, ldv, Math.floor(q / (KV * D)), Math.floor(q / D) % KV, q % D);
  const xf = new Float32Array(total).fill(NaN);
  for (const idx of [qIdx, kIdx]) for (const i of idx) xf[i] = 1.3 * rng.normal();
  for (const i of vIdx) xf[i] = rng.normal();
  const oIdx = block(BT, H * D, ldo);
  const w = new Float32Array(BT * ldo).fill(NaN);
  for (const i of oIdx) w[i] = rng.normal();
  let mask: Uint8Array | undefined;
  if (cs.padding) {
    mask = new Uint8Array(BT).fill(1);
    cs.padding.forEach(([l, r], b) => {
      for (let s = 0; s < l; ++s) mask![b * T + s] = 0;
      for (let s = T - r; s < T; ++s) mask![b * T + s] = 0;
    });
  }
  const valid = (b: number, s: number) => !mask || mask[b * T + s] !== 0;
  const scale = f32(1 / Math.sqrt(D));

  const x = Float64Array.from(xf);
  const p = new Float64Array(T), o = new Float64Array(D);
  const rowObj = (b: number, h: number, t: number): number => {
    if (!valid(b, t)) return 0;
    const g = Math.floor(h / group);
    const qb = at(qOff, ldq, b * T + t, h, 0);
    let m = -Infinity;
    for (let s = 0; s <= t; ++s) {
      if (!valid(b, s)) continue;
      const kb = at(kOff, ldk, b * T + s, g, 0);
      let dot = 0;
      for (let d = 0; d < D; ++d) dot += x[qb + d] * x[kb + d];
      p[s] = dot * scale;
      m = Math.max(m, p[s]);
    }
    let sum = 0;
    for (let s = 0; s <= t; ++s) if (valid(b, s)) sum += p[s] = Math.exp(p[s] - m);
    o.fill(0);
    for (let s = 0; s <= t; ++s) {
      if (!valid(b, s)) continue;
      const vb = at(vOff, ldv, b * T + s, g, 0);
      for (let d = 0; d < D; ++d) o[d] += (p[s] / sum) * x[vb + d];
    }
    const wb = (b * T + t) * ldo + h * D;
    let l = 0;
    for (let d = 0; d < D; ++d) l += w[wb + d] * o[d];
    return l;
  };
  // Buffer index -> (row, head) of q or of k/v.
  const qLocal = (i: number) => {
    const row = Math.floor((i - qOff) / ldq), h = Math.floor(((i - qOff) % ldq) / D);
    return rowObj(Math.floor(row / T), h, row % T);
  };
  const kvLocal = (off: number, ld: number) => (i: number) => {
    const row = Math.floor((i - off) / ld), g = Math.floor(((i - off) % ld) / D);
    const b = Math.floor(row / T), s = row % T;
    let l = 0;
    for (let h = g * group; h < (g + 1) * group; ++h) for (let tq = s; tq < T; ++tq) l += rowObj(b, h, tq);
    return l;
  };
  const fdQ = fdGrad(x, qIdx, qLocal), fdK = fdGrad(x, kIdx, kvLocal(kOff, ldk)), fdV = fdGrad(x, vIdx, kvLocal(vOff, ldv));

  // Gradients that must be exactly zero: padded queries (dq), padded keys (dk, dv).
  const zq: number[] = [], zk: number[] = [];
  for (let b = 0; b < B; ++b)
    for (let s = 0; s < T; ++s) {
      if (valid(b, s)) continue;
      for (let h = 0; h < H; ++h) for (let d = 0; d < D; ++d) zq.push(at(qOff, ldq, b * T + s, h, d));
      for (let g = 0; g < KV; ++g) for (let d = 0; d < D; ++d) zk.push(at(kOff, ldk, b * T + s, g, d), at(vOff, ldv, b * T + s, g, d));
    }

  const label = `B=${B} T=${T} H=${H} KV=${KV} D=${D} ${cs.fused ? 'fused qkv' : 'separate q/k/v'} pad=${pad}${mask ? ' masked' : ''}`;
  for (const isa of KERNELS) {
    const out = new Float32Array(BT * ldo).fill(NaN), lse = new Float32Array(B * H * T).fill(NaN);
    const shape = { batch: B, seq: T, heads: H, kvHeads: KV, headDim: D, scale, ldq, ldk, ldv, mask };
    const inputs = { q: xf.subarray(qOff), k: xf.subarray(kOff), v: xf.subarray(vOff) };
    op('attention', { ...shape, ...inputs, out, ldo, lse }, isa);
    const dx = new Float32Array(total).fill(NaN);
    op('attention_backward', { ...shape, ...inputs, out, dout: w, ldo, lse, dq: dx.subarray(qOff), dk: dx.subarray(kOff), dv: dx.subarray(vOff) }, isa);
    expectGrad(t, dx, fdQ, qIdx, `${isa}: ${label}: dq`);
    expectGrad(t, dx, fdK, kIdx, `${isa}: ${label}: dk`);
    expectGrad(t, dx, fdV, vIdx, `${isa}: ${label}: dv`);
    if (zq.length) {
      expectEqual(t, dx, new Float64Array(total), `${isa}: ${label}: dq = 0 on padded query rows`, zq);
      expectEqual(t, dx, new Float64Array(total), `${isa}: ${label}: dk = dv = 0 on padded keys`, zk);
    }
    const all = Int32Array.from([...qIdx, ...kIdx, ...vIdx]);
    padStaysNaN(t, dx, all, `${isa}: ${label}: dq/dk/dv`);
  }
}

t.test('attention_backward: causal MHA, separate buffers', async (t) => {
  attentionCase(t, { batch: 2, seq: 13, heads: 3, kvHeads: 3, headDim: 8, fused: false, pad: 0, padding: null, seed: 41 });
});

t.test('attention_backward: GQA (2x) with left- and right-padded rows, row strides > heads * head_dim', async (t) => {
  attentionCase(t, { batch: 3, seq: 11, heads: 4, kvHeads: 2, headDim: 6, fused: false, pad: 3, padding: [[0, 0], [3, 0], [0, 4]], seed: 42 });
});

t.test('attention_backward: GQA (4x), fused qkv rows with padding, masked', async (t) => {
  attentionCase(t, { batch: 2, seq: 10, heads: 8, kvHeads: 2, headDim: 5, fused: true, pad: 3, padding: [[2, 0], [0, 3]], seed: 43 });
});

t.test('attention_backward: sequence past the forward 64-row query block, GQA 2x, fused, left-padded', async (t) => {
  attentionCase(t, { batch: 1, seq: 70, heads: 2, kvHeads: 1, headDim: 4, fused: true, pad: 1, padding: [[5, 0]], seed: 44 });
});

// ------------------------------------------------------------------ swiglu_backward / gelu_backward

// Forward: out[i, j] = silu(gate[i, j]) up[i, j]; L = sum w .* out. Elementwise.
function swigluCase(t: Test, cs: { n: number; dim: number; fused: boolean; padIn: number; padOut: number; seed: number }) {
  const { n, dim } = cs;
  const rng = new Rng(cs.seed);
  const ldIn = (cs.fused ? 2 * dim : dim) + cs.padIn, ldOut = dim + cs.padOut;
  const gOff = 0, uOff = cs.fused ? dim : n * ldIn, total = cs.fused ? n * ldIn : 2 * n * ldIn;
  const gIdx = block(n, dim, ldIn, gOff), uIdx = block(n, dim, ldIn, uOff);
  const xf = new Float32Array(total).fill(NaN);
  for (const i of gIdx) xf[i] = 3 * rng.normal(); // into both tails of the sigmoid
  for (const i of uIdx) xf[i] = rng.normal();
  const w = new Float32Array(n * ldOut).fill(NaN);
  for (const i of block(n, dim, ldOut)) w[i] = rng.normal();
  const x = Float64Array.from(xf);
  // element (i, j) from a buffer index of gate or up
  const term = (off: number) => (q: number) => {
    const i = Math.floor((q - off) / ldIn), j = (q - off) % ldIn;
    return w[i * ldOut + j] * silu(x[gOff + i * ldIn + j]) * x[uOff + i * ldIn + j];
  };
  const fdG = fdGrad(x, gIdx, term(gOff)), fdU = fdGrad(x, uIdx, term(uOff));
  const label = `n=${n} dim=${dim} ${cs.fused ? 'fused gate|up' : 'separate gate, up'} ldIn=${ldIn} ldOut=${ldOut}`;
  for (const isa of KERNELS) {
    const dx = new Float32Array(total).fill(NaN);
    op('swiglu_backward', { n, dim, gate: xf.subarray(gOff), up: xf.subarray(uOff), ldIn, dout: w, ldOut, dgate: dx.subarray(gOff), dup: dx.subarray(uOff) }, isa);
    expectGrad(t, dx, fdG, gIdx, `${isa}: ${label}: dgate`);
    expectGrad(t, dx, fdU, uIdx, `${isa}: ${label}: dup`);
    padStaysNaN(t, dx, Int32Array.from([...gIdx, ...uIdx]), `${isa}: ${label}: dgate/dup`);
  }
}

// Forward: out = gelu_tanh(x) (GPT-2 gelu_new); L = sum w .* out. Elementwise.
function geluCase(t: Test, cs: { n: number; dim: number; padIn: number; padOut: number; seed: number }) {
  const { n, dim } = cs;
  const rng = new Rng(cs.seed);
  const ldIn = dim + cs.padIn, ldOut = dim + cs.padOut;
  const idx = block(n, dim, ldIn);
  const xf = new Float32Array(n * ldIn).fill(NaN);
  for (const i of idx) xf[i] = rng.uniform(-6, 6);
  const w = new Float32Array(n * ldOut).fill(NaN);
  for (const i of block(n, dim, ldOut)) w[i] = rng.normal();
  const x = Float64Array.from(xf);
  const fd = fdGrad(x, idx, (q) => w[Math.floor(q / ldIn) * ldOut + (q % ldIn)] * geluTanh(x[q]));
  const label = `n=${n} dim=${dim} ldIn=${ldIn} ldOut=${ldOut}`;
  for (const isa of KERNELS) {
    const dx = new Float32Array(n * ldIn).fill(NaN);
    op('gelu_backward', { n, dim, x: xf, ldIn, dout: w, ldOut, dx }, isa);
    expectGrad(t, dx, fd, idx, `${isa}: ${label}: dx`);
    padStaysNaN(t, dx, idx, `${isa}: ${label}: dx`);
  }
}

t.test('swiglu_backward: separate and fused gate|up layouts', async (t) => {
  swigluCase(t, { n: 13, dim: 37, fused: false, padIn: 0, padOut: 0, seed: 51 });
  swigluCase(t, { n: 11, dim: 45, fused: false, padIn: 2, padOut: 3, seed: 52 });
  swigluCase(t, { n: 9, dim: 41, fused: true, padIn: 3, padOut: 1, seed: 53 });
});

t.test('gelu_backward: tanh approximation, strided rows', async (t) => {
  geluCase(t, { n: 13, dim: 37, padIn: 0, padOut: 0, seed: 61 });
  geluCase(t, { n: 9, dim: 53, padIn: 3, padOut: 5, seed: 62 });
});

// ------------------------------------------------------------------ lm_head_logp_backward

/** fp32 -> bf16 bits, round to nearest even (finite inputs). */
function toBf16(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
function fromBf16(b: number): number {
  return new Float32Array(new Uint32Array([b << 16]).buffer)[0];
}

interface LmCase {
  n: number;
  dim: number;
  vocab: number;
  invTemperature: number;
  /** L also weights the entropy (dentropy passed) */
  entropy: boolean;
  /** dweight: accumulated, or null */
  dweight: boolean;
  bf16: boolean;
  seed: number;
}

// Forward (float64): z = invT hidden W^T, per row with target >= 0:
// logp = z[target] - lse(z), entropy = lse - sum softmax(z) z; rows with
// target < 0 give 0 (constant). L = sum_i a_i logp_i + c_i entropy_i.
// FD of hidden[i, j]: row i's logits are recomputed from the perturbed hidden.
// FD of W[v, j]: only the logit z_iv of each row changes; the row's softmax
// sums S = sum_u exp(z_u - m), T = sum_u exp(z_u - m) z_u are updated by that
// one term (float64; the change of L is ~1e-5 of its terms, far above the
// 1e-16 roundoff), so lse and entropy are recomputed without an O(vocab) pass.
function lmCase(t: Test, cs: LmCase) {
  const { n, dim, vocab: V } = cs;
  const rng = new Rng(cs.seed);
  const hf = rng.normals(n * dim);
  const wf = rng.normals(V * dim, 3 / Math.sqrt(dim));
  let wBf16: Uint16Array | undefined;
  if (cs.bf16) {
    wBf16 = new Uint16Array(V * dim);
    for (let q = 0; q < V * dim; ++q) {
      wBf16[q] = toBf16(wf[q]);
      wf[q] = fromBf16(wBf16[q]); // the reference (and the forward) use the rounded weights
    }
  }
  const targets = new Int32Array(n);
  for (let i = 0; i < n; ++i) targets[i] = rng.uniform() < 0.2 ? -1 : rng.int(0, V);
  targets[0] = V - 1;
  if (n > 1) targets[1] = -1;
  if (n > 2) targets[2] = 0;
  if (n > 3 && V > 2048) targets[3] = 2048; // first token of the second vocabulary chunk
  const a = rng.normals(n), c = cs.entropy ? rng.normals(n) : new Float32Array(n);
  const invT = f32(cs.invTemperature);

  const h = Float64Array.from(hf), W = Float64Array.from(wf);
  const logit = (i: number, v: number) => {
    let s = 0;
    for (let j = 0; j < dim; ++j) s += h[i * dim + j] * W[v * dim + j];
    return s * invT;
  };
  // Row statistics at the unperturbed point.
  const z = new Float64Array(n * V), E = new Float64Array(n * V), M = new Float64Array(n), S = new Float64Array(n), Tz = new Float64Array(n);
  const zrow = new Float64Array(V);
  const stats = (zr: ArrayLike<number>, off: number) => {
    let m = -Infinity;
    for (let v = 0; v < V; ++v) m = Math.max(m, zr[off + v]);
    let s = 0, tz = 0;
    for (let v = 0; v < V; ++v) {
      const e = Math.exp(zr[off + v] - m);
      s += e;
      tz += e * zr[off + v];
    }
    return { m, s, tz };
  };
  const objective = (i: number, zt: number, m: number, s: number, tz: number) => {
    const lse = m + Math.log(s);
    return a[i] * (zt - lse) + c[i] * (lse - tz / s);
  };
  for (let i = 0; i < n; ++i) {
    if (targets[i] < 0) continue;
    for (let v = 0; v < V; ++v) z[i * V + v] = logit(i, v);
    const st = stats(z, i * V);
    M[i] = st.m, S[i] = st.s, Tz[i] = st.tz;
    for (let v = 0; v < V; ++v) E[i * V + v] = Math.exp(z[i * V + v] - st.m);
  }
  const fdH = fdGrad(h, range(n * dim), (q) => {
    const i = Math.floor(q / dim);
    if (targets[i] < 0) return 0;
    for (let v = 0; v < V; ++v) zrow[v] = logit(i, v);
    const st = stats(zrow, 0);
    return objective(i, zrow[targets[i]], st.m, st.s, st.tz);
  });
  const fdW = cs.dweight
    ? fdGrad(W, range(V * dim), (q) => {
        const v = Math.floor(q / dim);
        let l = 0;
        for (let i = 0; i < n; ++i) {
          if (targets[i] < 0) continue;
          const zv = logit(i, v), e = Math.exp(zv - M[i]);
          const s = S[i] - E[i * V + v] + e, tz = Tz[i] - E[i * V + v] * z[i * V + v] + e * zv;
          l += objective(i, targets[i] === v ? zv : z[i * V + targets[i]], M[i], s, tz);
        }
        return l;
      })
    : undefined;

  const dh0 = rng.normals(n * dim), dw0 = rng.normals(V * dim);
  const label = `n=${n} dim=${dim} vocab=${V} invT=${cs.invTemperature}${cs.entropy ? ' logp+entropy' : ' logp only'}${cs.bf16 ? ' bf16 weight' : ''}`;
  const ignoredRows: number[] = [];
  for (let i = 0; i < n; ++i) if (targets[i] < 0) for (let j = 0; j < dim; ++j) ignoredRows.push(i * dim + j);
  for (const isa of KERNELS) {
    // The forward's fp32 lse and entropy (the forward op takes fp32 weights: the bf16 values widened).
    const logp = new Float32Array(n), entropy = new Float32Array(n), lse = new Float32Array(n);
    op('lm_head_logp', { n, dim, vocab: V, hidden: hf, weight: wf, targets, logp, entropy, lse, invTemperature: cs.invTemperature }, isa);
    const dhidden = dh0.slice(), dweight = cs.dweight ? dw0.slice() : undefined;
    const weights = cs.bf16 ? { weightBf16: wBf16 } : { weight: wf };
    const ent = cs.entropy ? { entropy, dentropy: c } : {};
    op('lm_head_logp_backward', { n, dim, vocab: V, hidden: hf, ...weights, targets, lse, ...ent, dlogp: a, invTemperature: cs.invTemperature, dhidden, dweight }, isa);
    expectGrad(t, dhidden, fdH, range(n * dim), `${isa}: ${label}: dhidden`, dh0);
    expectEqual(t, dhidden, dh0, `${isa}: ${label}: dhidden of rows with target -1 unchanged`, ignoredRows);
    if (dweight && fdW) expectGrad(t, dweight, fdW, range(V * dim), `${isa}: ${label}: dweight`, dw0);
  }
}

t.test('lm_head_logp_backward: small vocabulary, logp + entropy, accumulated dhidden/dweight', async (t) => {
  lmCase(t, { n: 5, dim: 9, vocab: 7, invTemperature: 1, entropy: true, dweight: true, bf16: false, seed: 71 });
  lmCase(t, { n: 6, dim: 5, vocab: 7, invTemperature: 0.6, entropy: false, dweight: true, bf16: false, seed: 72 });
});

t.test('lm_head_logp_backward: rows past the 256-row block, vocab 513, temperature', async (t) => {
  lmCase(t, { n: 300, dim: 6, vocab: 513, invTemperature: 1 / 0.7, entropy: true, dweight: true, bf16: false, seed: 73 });
});

t.test('lm_head_logp_backward: vocabulary past the 2048 chunk (with rows past 256), dweight also null', async (t) => {
  lmCase(t, { n: 260, dim: 5, vocab: 2053, invTemperature: 1.3, entropy: true, dweight: true, bf16: false, seed: 74 });
  lmCase(t, { n: 9, dim: 8, vocab: 2049, invTemperature: 1, entropy: true, dweight: false, bf16: false, seed: 75 });
});

t.test('lm_head_logp_backward: bf16 weights (reference on the bf16-rounded weights), dhidden', async (t) => {
  lmCase(t, { n: 33, dim: 16, vocab: 2051, invTemperature: 0.8, entropy: true, dweight: false, bf16: true, seed: 76 });
  lmCase(t, { n: 4, dim: 7, vocab: 513, invTemperature: 1, entropy: false, dweight: false, bf16: true, seed: 77 });
});

// ------------------------------------------------------------------ value_head_backward

// Forward: value[i] = hidden[i] . weight + bias; L = sum dvalue .* value.
function valueHeadCase(t: Test, cs: { n: number; dim: number; grads: boolean; seed: number }) {
  const { n, dim } = cs;
  const rng = new Rng(cs.seed);
  const hf = rng.normals(n * dim), wf = rng.normals(dim), bias = rng.normal();
  const a = rng.normals(n);
  const h = Float64Array.from(hf), w = Float64Array.from(wf), b = Float64Array.of(bias);
  const value = (i: number) => {
    let s = b[0];
    for (let j = 0; j < dim; ++j) s += h[i * dim + j] * w[j];
    return a[i] * s;
  };
  const all = () => {
    let l = 0;
    for (let i = 0; i < n; ++i) l += value(i);
    return l;
  };
  const fdH = fdGrad(h, range(n * dim), (q) => value(Math.floor(q / dim)));
  const fdW = fdGrad(w, range(dim), all);
  const fdB = fdGrad(b, [0], all);
  const dh0 = rng.normals(n * dim), dw0 = rng.normals(dim), db0 = rng.normals(1);
  for (const isa of KERNELS) {
    const dhidden = dh0.slice();
    const dweight = cs.grads ? dw0.slice() : undefined, dbias = cs.grads ? db0.slice() : undefined;
    op('value_head_backward', { n, dim, hidden: hf, weight: wf, dvalue: a, dhidden, dweight, dbias }, isa);
    expectGrad(t, dhidden, fdH, range(n * dim), `${isa}: n=${n} dim=${dim}: dhidden`, dh0);
    if (dweight) expectGrad(t, dweight, fdW, range(dim), `${isa}: n=${n} dim=${dim}: dweight`, dw0);
    if (dbias) expectGrad(t, dbias, fdB, [0], `${isa}: n=${n} dim=${dim}: dbias`, db0);
  }
}

t.test('value_head_backward: dhidden, dweight, dbias accumulated (weight/bias gradients also null)', async (t) => {
  valueHeadCase(t, { n: 37, dim: 131, grads: true, seed: 81 });
  valueHeadCase(t, { n: 300, dim: 67, grads: true, seed: 82 });
  valueHeadCase(t, { n: 3, dim: 9, grads: false, seed: 83 });
});


// ------------------------------------------------------------------ lora_backward
// dB += dY^T u; du = s dY B; dA += du^T x_lora; dx (+)= du A, against central
// finite differences of the float64 objective L = sum(dY .* (s (x_lora A^T) B^T))
// (dY is the weight of the objective, as above): the gradients of what the
// forward computes, not the op's own formulas. Output slices of a wider
// matrix (lddy > out) and strided input rows (ldx > in), odd sizes.
const LORA_CASES = [
  { n: 1, inDim: 5, out: 3, r: 1, ldx: 5, ldy: 3 },
  { n: 19, inDim: 37, out: 23, r: 4, ldx: 40, ldy: 29 },
  { n: 70, inDim: 64, out: 130, r: 8, ldx: 64, ldy: 131 },
  { n: 33, inDim: 129, out: 17, r: 16, ldx: 129, ldy: 17 },
];
for (const c of LORA_CASES) {
  t.test(`lora_backward ${c.n}x${c.inDim}->${c.out} r${c.r}: finite differences of the forward`, async (t) => {
    const rng = new Rng(2000 + c.n);
    const s = 1.25;
    const xl = strided(rng, c.n, c.inDim, c.ldx, 1, 0);
    const a = rng.normals(c.r * c.inDim, 0.3), b = rng.normals(c.out * c.r, 0.3);
    const dy = strided(rng, c.n, c.out, c.ldy, 1, 0);
    const da0 = rng.normals(c.r * c.inDim), db0 = rng.normals(c.out * c.r);
    const dx0 = strided(rng, c.n, c.inDim, c.ldx, 1, 0);
    // L(x, A, B) = sum_{i,o} dy[i,o] * sum_j s (x_i . A_j) B[o,j]; the fp32 u the forward saved feeds dB.
    const uF = new Float32Array(c.n * c.r);
    for (let i = 0; i < c.n; i++)
      for (let j = 0; j < c.r; j++) {
        let acc = 0;
        for (let k = 0; k < c.inDim; k++) acc += xl[i * c.ldx + k] * a[j * c.inDim + k];
        uF[i * c.r + j] = f32(s * acc);
      }
    const L = (X: Float64Array | Float32Array, A: Float64Array | Float32Array, B: Float64Array | Float32Array) => {
      let tot = 0;
      for (let i = 0; i < c.n; i++)
        for (let j = 0; j < c.r; j++) {
          let xa = 0;
          for (let k = 0; k < c.inDim; k++) xa += X[i * c.ldx + k] * A[j * c.inDim + k];
          let g = 0;
          for (let o = 0; o < c.out; o++) g += dy[i * c.ldy + o] * B[o * c.r + j];
          tot += s * xa * g;
        }
      return tot;
    };
    const fd = (arr: Float32Array, which: 0 | 1 | 2, count: number, index: (q: number) => number) => {
      const out = new Float64Array(count);
      const X = Float64Array.from(xl), A = Float64Array.from(a), B = Float64Array.from(b);
      const target = which === 0 ? X : which === 1 ? A : B;
      for (let q = 0; q < count; q++) {
        const e = index(q), h = 1e-4 * Math.max(1, Math.abs(arr[e]));
        const keep = target[e];
        target[e] = keep + h;
        const up = L(X, A, B);
        target[e] = keep - h;
        const down = L(X, A, B);
        target[e] = keep;
        out[q] = (up - down) / (2 * h);
      }
      return out;
    };
    const dxIdx = Array.from({ length: c.n * c.inDim }, (_, q) => Math.floor(q / c.inDim) * c.ldx + (q % c.inDim));
    const fdX = fd(xl, 0, dxIdx.length, (q) => dxIdx[q]);
    const fdA = fd(a, 1, a.length, (q) => q), fdB = fd(b, 2, b.length, (q) => q);
    const bound = (ref: ArrayLike<number>, start: ArrayLike<number>) => {
      let big = 0;
      for (let i = 0; i < ref.length; i++) big = Math.max(big, Math.abs(ref[i]));
      return Float64Array.from(ref, (v, i) => 1e-4 * big + 1e-3 * Math.abs(v) + 4 * EPS32 * Math.abs(start[i]) + 1e-12);
    };
    for (const accumulateDx of [true, false]) {
      for (const isa of KERNELS) {
        const da = copy(da0), db = copy(db0), dx = copy(dx0), du = new Float32Array(c.n * c.r);
        op('lora_backward', { n: c.n, in: c.inDim, out: c.out, r: c.r, dy, lddy: c.ldy, xLora: xl, ldx: c.ldx, u: uF, a, b, scale: s, da, db, du, dx, lddx: c.ldx, accumulateDx }, isa);
        const refA = Float64Array.from(fdA, (v, i) => da0[i] + v), refB = Float64Array.from(fdB, (v, i) => db0[i] + v);
        expectClose(t, da, refA, bound(fdA, da0), `${isa}: dA += du^T x_lora`);
        expectClose(t, db, refB, bound(fdB, db0), `${isa}: dB += dY^T u`);
        const dxStart = dxIdx.map((e) => (accumulateDx ? dx0[e] : 0));
        const dxGot = dxIdx.map((e) => dx[e]);
        expectClose(t, dxGot, Float64Array.from(fdX, (v, q) => dxStart[q] + v), bound(fdX, dxStart), `${isa}: dx ${accumulateDx ? '+=' : '='} du A`);
      }
    }
  });
}

// ------------------------------------------------------------------ row_dot_backward

// Forward: out[r] = sum_c w[r,c] x[r,c] (row_dot); L = sum_r dout[r] out[r].
// dx is written (not accumulated): start it at NaN to see every element set.
t.test('row_dot_backward: dx = w dout against finite differences (zero weights give zero)', async (t) => {
  for (const [rows, cols, seed] of [[3, 7, 41], [1, 1, 42], [5, 33, 43]]) {
    const rng = new Rng(seed);
    const xf = rng.normals(rows * cols), dout = rng.normals(rows);
    const wf = Float32Array.from(rng.normals(rows * cols), (v, i) => (i % 4 === 1 ? 0 : v));
    const x = Float64Array.from(xf);
    const fd = fdGrad(x, range(rows * cols), (q) => {
      const r = Math.floor(q / cols);
      let l = 0;
      for (let c = 0; c < cols; ++c) l += wf[r * cols + c] * x[r * cols + c];
      return dout[r] * l;
    });
    for (const isa of KERNELS) {
      const dx = new Float32Array(rows * cols).fill(NaN);
      op('row_dot_backward', { rows, cols, w: wf, dout, dx }, isa);
      expectGrad(t, dx, fd, range(rows * cols), `${isa}: ${rows} x ${cols}: dx`);
      t.ok(Array.from(dx).every((v, i) => wf[i] !== 0 || v === 0), `${isa}: ${rows} x ${cols}: dx is 0 where the weight is 0`);
    }
  }
});

// ------------------------------------------------------------------ coverage

/** The backward ops of the op table, each tested above. */
const BACKWARD_OPS = [
  'bias_grad',
  'lora_backward',
  'embedding_backward',
  'rmsnorm_backward',
  'layernorm_backward',
  'attention_backward',
  'swiglu_backward',
  'gelu_backward',
  'lm_head_logp_backward',
  'value_head_backward',
  'row_dot_backward',
];

t.test('every backward op of the table (bias_grad and *_backward) is checked here, on every kernel', async (t) => {
  const table = opKernels().ops.filter((name) => name === 'bias_grad' || name.endsWith('_backward'));
  t.same([...table].sort(), [...BACKWARD_OPS].sort(), `the list of this file matches the op table: ${table.join(', ')}`);
  for (const name of table) for (const isa of KERNELS) t.ok(ran.has(`${name}:${isa}`), `${name} ran (and was checked) on ${isa}`);
});
