/**
 * Helpers for the op tests (test/ops-*.test.ts): a seeded PRNG, the op runner
 * with a forced kernel, the "within tolerance" check, the scalar-vs-best
 * kernel parity check, and float64 reference implementations of every op of
 * the CPU backend (native/ops/op_args.h). Plain loops: this is test code.
 *
 * Tolerances are stated in units of EPS32 = 2^-24 (half an ulp at 1, the unit
 * roundoff of float32) times the sum of the magnitudes of the terms that made
 * an output, so a bound holds whatever the summation order of a kernel is.
 */
import type { Test } from 'tap';
import { native } from '../../lib/native';

export const EPS32 = 2 ** -24;
export const f32 = Math.fround;

// ------------------------------------------------------------------ ops and kernels

/** Kernels this CPU can run ('scalar' first, best last), and every op of the op table. */
export function opKernels(): { kernels: string[]; ops: string[] } {
  return native().opKernels();
}
export const KERNELS: string[] = opKernels().kernels;
export const BEST: string = KERNELS[KERNELS.length - 1];

/** Runs one CPU op on typed arrays with the given kernel set forced. */
export function op(name: string, args: Record<string, unknown>, isa: string): void {
  native().runOp(name, { ...args, isa });
}

/**
 * Which file tests which op (the ops of the forward pass). ops-coverage.test.ts
 * fails when a listed file does not run its op, when a name here is not an
 * op, and when an op of the table that is not listed here is run by no test
 * file at all.
 */
export const OP_TEST_FILES: Record<string, string> = {
  gemm: 'ops-gemm.test.ts',
  embedding: 'ops-misc.test.ts',
  rmsnorm: 'ops-norm.test.ts',
  layernorm: 'ops-norm.test.ts',
  rope: 'ops-attention.test.ts',
  attention: 'ops-attention.test.ts',
  kv_attention: 'ops-attention.test.ts',
  swiglu: 'ops-misc.test.ts',
  gelu: 'ops-misc.test.ts',
  add: 'ops-misc.test.ts',
  lm_head_logp: 'ops-heads.test.ts',
  value_head: 'ops-heads.test.ts',
  sample: 'ops-sample.test.ts',
};

// ------------------------------------------------------------------ seeded PRNG

/** mulberry32: a 32-bit state PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Rng {
  private readonly next: () => number;
  private spare: number | null = null;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  /** Integer in [lo, hi). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo));
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** n float32 values ~ N(mean, std^2). */
  normals(n: number, std = 1, mean = 0): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; ++i) a[i] = mean + std * this.normal();
    return a;
  }
  uniforms(n: number, lo: number, hi: number): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; ++i) a[i] = this.uniform(lo, hi);
    return a;
  }
  ints(n: number, lo: number, hi: number): Int32Array {
    const a = new Int32Array(n);
    for (let i = 0; i < n; ++i) a[i] = this.int(lo, hi);
    return a;
  }
}

/** A [rows, ld] matrix whose first `cols` columns are random normals and whose padding is `pad` (NaN by default). */
export function strided(rng: Rng, rows: number, cols: number, ld: number, std = 1, pad = NaN): Float32Array {
  const a = new Float32Array(rows * ld).fill(pad);
  for (let i = 0; i < rows; ++i) for (let j = 0; j < cols; ++j) a[i * ld + j] = std * rng.normal();
  return a;
}

// ------------------------------------------------------------------ comparisons

export type Tol = number | ArrayLike<number>;

export interface CloseReport {
  ok: boolean;
  /** max |got - ref| / tol over the checked elements (Infinity on NaN or a sign-of-infinity mismatch). */
  worst: number;
  index: number;
  got: number;
  ref: number;
  tol: number;
  count: number;
}

/** Element-wise |got[i] - ref[i]| <= tol[i] (infinities must match exactly; NaN never passes). */
export function closeReport(got: ArrayLike<number>, ref: ArrayLike<number>, tol: Tol, indices?: ArrayLike<number>): CloseReport {
  const r: CloseReport = { ok: true, worst: 0, index: -1, got: 0, ref: 0, tol: 0, count: 0 };
  const n = indices ? indices.length : ref.length;
  if (!indices && got.length !== ref.length) return { ...r, ok: false, worst: Infinity, count: n };
  for (let q = 0; q < n; ++q) {
    const i = indices ? indices[q] : q;
    const g = got[i], e = ref[i];
    const tl = typeof tol === 'number' ? tol : tol[i];
    let ratio: number;
    if (!Number.isFinite(e) && !Number.isNaN(e)) ratio = g === e ? 0 : Infinity;
    else {
      const d = Math.abs(g - e);
      ratio = d === 0 ? 0 : Number.isNaN(d) ? Infinity : tl > 0 ? d / tl : Infinity;
    }
    r.count++;
    if (ratio > r.worst || (r.index < 0 && ratio === r.worst)) Object.assign(r, { worst: ratio, index: i, got: g, ref: e, tol: tl });
    if (!(ratio <= 1)) r.ok = false;
  }
  return r;
}

/** One assertion for a whole array: passes when every element is within its bound; the message names the worst one. */
export function expectClose(t: Test, got: ArrayLike<number>, ref: ArrayLike<number>, tol: Tol, what: string, indices?: ArrayLike<number>): boolean {
  const r = closeReport(got, ref, tol, indices);
  const where = r.index >= 0 ? ` (worst [${r.index}]: got ${r.got}, ref ${r.ref}, bound ${r.tol.toExponential(2)})` : '';
  return t.ok(r.ok, `${what}: ${r.count} values, worst error/bound = ${r.worst.toPrecision(3)}${where}`);
}

/** Exact equality of two arrays, one assertion. */
export function expectEqual(t: Test, got: ArrayLike<number>, ref: ArrayLike<number>, what: string, indices?: ArrayLike<number>): boolean {
  return expectClose(t, got, ref, 0, `${what} (exact)`, indices);
}

/** Elements of `a` at the given indices keep the given value (sentinels in padding). */
export function untouched(a: ArrayLike<number>, isPad: (i: number) => boolean, value: number): boolean {
  for (let i = 0; i < a.length; ++i) {
    if (!isPad(i)) continue;
    if (Number.isNaN(value) ? !Number.isNaN(a[i]) : a[i] !== value) return false;
  }
  return true;
}

/** An output of one kernel and its bound against the reference, kept for the scalar-vs-best comparison. */
export interface KernelOut {
  got: ArrayLike<number>;
  /** Bound against the reference (0: exact). The two kernels must agree within the sum of their bounds. */
  tol: Tol;
  indices?: ArrayLike<number>;
}

/**
 * Runs `body` once per kernel this CPU has (each call checks its results
 * against the float64 reference with t's assertions), then checks that the
 * scalar kernel and the best kernel agree: |scalar - best| <= tol_scalar +
 * tol_best (exactly where the bound is 0). Redundant with the reference
 * checks by the triangle inequality, but it makes a disagreement between
 * kernels show up under its own name.
 */
export function acrossKernels(t: Test, body: (isa: string) => Record<string, KernelOut>): void {
  const outs = new Map<string, Record<string, KernelOut>>();
  for (const isa of KERNELS) outs.set(isa, body(isa));
  if (BEST === 'scalar') return;
  const s = outs.get('scalar')!, b = outs.get(BEST)!;
  for (const key of Object.keys(s)) {
    const x = s[key], y = b[key];
    const n = x.got.length;
    const tol = new Float64Array(n);
    for (let i = 0; i < n; ++i) tol[i] = (typeof x.tol === 'number' ? x.tol : x.tol[i]) + (typeof y.tol === 'number' ? y.tol : y.tol[i]);
    expectClose(t, y.got, Array.from(x.got), tol, `parity scalar vs ${BEST}: ${key}`, x.indices);
  }
}

/** Copies of typed arrays, so each kernel starts from the same inputs. */
export function copy<T extends Float32Array | Int32Array | Uint8Array>(a: T): T {
  return a.slice() as T;
}

// ------------------------------------------------------------------ references (float64)

export interface GemmParams {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  a: Float32Array;
  lda: number;
  b: Float32Array;
  ldb: number;
  ldc: number;
  /** C before the call (read when accumulate). */
  c0?: Float32Array;
  accumulate: boolean;
  bias?: Float32Array;
}

/**
 * C = op(A) op(B) (+ bias) (+ C0), dense [m, n] in float64, and for each
 * output the sum of the magnitudes of every term that went into it.
 */
export function gemmRef(p: GemmParams): { ref: Float64Array; absSum: Float64Array } {
  const { m, n, k } = p;
  // Dense float64 copies of op(A) [m,k] and op(B)^T [n,k] so the inner loop is contiguous.
  const A = new Float64Array(m * k), Bt = new Float64Array(n * k);
  for (let i = 0; i < m; ++i) for (let q = 0; q < k; ++q) A[i * k + q] = p.transA ? p.a[q * p.lda + i] : p.a[i * p.lda + q];
  for (let j = 0; j < n; ++j) for (let q = 0; q < k; ++q) Bt[j * k + q] = p.transB ? p.b[j * p.ldb + q] : p.b[q * p.ldb + j];
  const ref = new Float64Array(m * n), absSum = new Float64Array(m * n);
  for (let i = 0; i < m; ++i) {
    const ai = i * k;
    for (let j = 0; j < n; ++j) {
      const bj = j * k;
      let s = 0, sa = 0;
      for (let q = 0; q < k; ++q) {
        const v = A[ai + q] * Bt[bj + q];
        s += v;
        sa += Math.abs(v);
      }
      if (p.bias) {
        s += p.bias[j];
        sa += Math.abs(p.bias[j]);
      }
      if (p.accumulate && p.c0) {
        s += p.c0[i * p.ldc + j];
        sa += Math.abs(p.c0[i * p.ldc + j]);
      }
      ref[i * n + j] = s;
      absSum[i * n + j] = sa;
    }
  }
  return { ref, absSum };
}

/** Dot-product error bound in units of EPS32: a few units times sqrt(k) (see the file header). */
export function dotC(k: number): number {
  return 4 + 2 * Math.sqrt(k);
}

export function rmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, n: number, dim: number, eps: number) {
  const out = new Float64Array(n * dim), rstd = new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    let ss = 0;
    for (let j = 0; j < dim; ++j) ss += x[i * dim + j] * x[i * dim + j];
    const r = 1 / Math.sqrt(ss / dim + f32(eps));
    rstd[i] = r;
    for (let j = 0; j < dim; ++j) out[i * dim + j] = x[i * dim + j] * r * w[j];
  }
  return { out, rstd };
}

export function layernormRef(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>, n: number, dim: number, eps: number) {
  const out = new Float64Array(n * dim), mean = new Float64Array(n), rstd = new Float64Array(n), var_ = new Float64Array(n), meanAbs = new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    let s = 0, sa = 0;
    for (let j = 0; j < dim; ++j) {
      s += x[i * dim + j];
      sa += Math.abs(x[i * dim + j]);
    }
    const mu = s / dim;
    let v = 0;
    for (let j = 0; j < dim; ++j) v += (x[i * dim + j] - mu) ** 2;
    v /= dim;
    const r = 1 / Math.sqrt(v + f32(eps));
    mean[i] = mu;
    rstd[i] = r;
    var_[i] = v;
    meanAbs[i] = sa / dim;
    for (let j = 0; j < dim; ++j) out[i * dim + j] = (x[i * dim + j] - mu) * r * w[j] + b[j];
  }
  return { out, mean, rstd, var: var_, meanAbs };
}

/** cos/sin tables [maxPos, d/2] as the model builds them: angle = pos * inv_freq[j], inv_freq = theta^(-2j/d). */
export function ropeTables(maxPos: number, headDim: number, theta: number): { cos: Float32Array; sin: Float32Array; angle: Float64Array } {
  const half = headDim / 2;
  const cos = new Float32Array(maxPos * half), sin = new Float32Array(maxPos * half), angle = new Float64Array(maxPos * half);
  for (let p = 0; p < maxPos; ++p)
    for (let j = 0; j < half; ++j) {
      const a = p * Math.pow(theta, (-2 * j) / headDim);
      angle[p * half + j] = a;
      cos[p * half + j] = Math.cos(a);
      sin[p * half + j] = Math.sin(a);
    }
  return { cos, sin, angle };
}

/**
 * Rotary embedding in float64 from the exact angles: for each of the first
 * `heads` heads of a row, (x_j, x_{j+d/2}) -> (x_j c - x_{j+d/2} s, x_{j+d/2} c + x_j s).
 * Also returns a bound per element: 4 EPS32 (|x_j c| + |x_{j+d/2} s|) plus the
 * rounding of the float32 tables (EPS32 per table entry).
 */
export function ropeRef(x: Float32Array, n: number, heads: number, headDim: number, ld: number, positions: Int32Array, angle: Float64Array, inverse: boolean) {
  const half = headDim / 2;
  const out = Float64Array.from(x), tol = new Float64Array(x.length);
  for (let i = 0; i < n; ++i)
    for (let h = 0; h < heads; ++h) {
      const base = i * ld + h * headDim;
      for (let j = 0; j < half; ++j) {
        const a = angle[positions[i] * half + j] * (inverse ? -1 : 1);
        const c = Math.cos(a), s = Math.sin(a);
        const x0 = x[base + j], x1 = x[base + j + half];
        out[base + j] = x0 * c - x1 * s;
        out[base + j + half] = x1 * c + x0 * s;
        const mag = Math.abs(x0) + Math.abs(x1);
        tol[base + j] = tol[base + j + half] = 6 * EPS32 * mag;
      }
    }
  return { out, tol };
}

/**
 * Softmax-weighted average of value rows over the visible keys, with the
 * log-sum-exp of the scaled scores and an error bound per output element.
 *
 * Bound (units of EPS32): each score q.k*scale is a float32 dot product with
 * error <= dotC(d) * scale * sum|q_i k_i|, and exp sees (score - max) rounded
 * once more, so every exponent is off by at most A = max_s(dotC(d) * scale *
 * sum|q_i k_si| + |score_s - max|) (times EPS32). Perturbing every exponent by
 * at most A*EPS32 moves each output by at most 2*A*EPS32 * sum_s p_s |v_s|;
 * the exp polynomial (~2 ulp), the normalisation and the float32 weighted sum
 * over n keys add (8 + 4 sqrt(n)) EPS32 * sum_s p_s |v_s|.
 */
export function attendRef(q: ArrayLike<number>, qOff: number, keys: { k: ArrayLike<number>; kOff: number; v: ArrayLike<number>; vOff: number }[], d: number, scale: number) {
  const out = new Float64Array(d), tol = new Float64Array(d);
  if (keys.length === 0) return { out, tol, lse: -Infinity, lseTol: 0 };
  const scores = new Float64Array(keys.length), errs = new Float64Array(keys.length);
  let m = -Infinity;
  for (let s = 0; s < keys.length; ++s) {
    let dot = 0, abs = 0;
    for (let i = 0; i < d; ++i) {
      const v = q[qOff + i] * keys[s].k[keys[s].kOff + i];
      dot += v;
      abs += Math.abs(v);
    }
    scores[s] = dot * scale;
    errs[s] = dotC(d) * Math.abs(scale) * abs;
    m = Math.max(m, scores[s]);
  }
  let sum = 0, A = 0;
  for (let s = 0; s < keys.length; ++s) {
    A = Math.max(A, errs[s] + Math.abs(scores[s] - m));
    sum += Math.exp(scores[s] - m);
  }
  const absAvg = new Float64Array(d);
  for (let s = 0; s < keys.length; ++s) {
    const p = Math.exp(scores[s] - m) / sum;
    for (let i = 0; i < d; ++i) {
      const vv = keys[s].v[keys[s].vOff + i];
      out[i] += p * vv;
      absAvg[i] += p * Math.abs(vv);
    }
  }
  const c = 2 * A + 8 + 4 * Math.sqrt(keys.length);
  for (let i = 0; i < d; ++i) tol[i] = c * EPS32 * absAvg[i];
  const lse = m + Math.log(sum);
  return { out, tol, lse, lseTol: (2 * A + 8 + 4 * Math.sqrt(keys.length) + 2 * Math.abs(lse)) * EPS32 };
}

export const silu = (x: number): number => x / (1 + Math.exp(-x));
export const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

/** log-softmax statistics of one row of logits (already scaled): lse, entropy = lse - sum p z, and sum p|z|. */
export function lseStats(z: ArrayLike<number>): { lse: number; entropy: number; pAbs: number; max: number } {
  let m = -Infinity;
  for (let i = 0; i < z.length; ++i) m = Math.max(m, z[i]);
  let s = 0, t = 0, ta = 0;
  for (let i = 0; i < z.length; ++i) {
    const e = Math.exp(z[i] - m);
    s += e;
    t += e * z[i];
    ta += e * Math.abs(z[i]);
  }
  const lse = m + Math.log(s);
  return { lse, entropy: lse - t / s, pAbs: ta / s, max: m };
}

// ------------------------------------------------------------------ the sampler's RNG (native/ops/math.h), in BigInt

const MASK64 = (1n << 64n) - 1n;

export function mix64(x: bigint): bigint {
  x = (x + 0x9e3779b97f4a7c15n) & MASK64;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return x ^ (x >> 31n);
}

/** Uniform in [0, 1) with 24 random bits, exactly as math::uniform01. */
export function uniform01(seed: bigint, counter: bigint): number {
  return Number(mix64(seed ^ mix64(counter)) >> 40n) / 16777216;
}
