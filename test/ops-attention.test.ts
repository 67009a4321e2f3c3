// rope, attention and kv_attention against float64 references.
//
// Bounds (EPS32 = 2^-24):
//   rope: 6 EPS32 (|x_j| + |x_{j+d/2}|) per rotated pair — two products and a
//     sum in float32 plus the float32 rounding of the cos/sin table entries.
//     Columns that are not rotated must not change at all.
//   attention / kv_attention: see attendRef in helpers/ref.ts: every exponent
//     is off by at most A EPS32 with A = max_s(dotC(d) scale sum_i|q_i k_si| +
//     |score_s - max|), so each output is within (2A + 8 + 4 sqrt(keys)) EPS32
//     sum_s p_s |v_sj|, and lse within (2A + 8 + 4 sqrt(keys) + 2|lse|) EPS32.
import t from 'tap';
import type { Test } from 'tap';
import { acrossKernels, attendRef, EPS32, expectClose, KERNELS, op, Rng, ropeRef, ropeTables, untouched } from './helpers/ref';

const SENTINEL = -777.25;

// ------------------------------------------------------------------ rope

interface RopeCase {
  n: number;
  heads: number;
  /** heads stored in a row (>= heads; the rest must stay as they are) */
  rowHeads: number;
  headDim: number;
  extra: number;
  theta: number;
  maxPos: number;
  seed: number;
}

function ropeCase(t: Test, cs: RopeCase) {
  const { n, heads, headDim } = cs;
  const rng = new Rng(cs.seed);
  const ld = cs.rowHeads * headDim + cs.extra;
  const x = rng.normals(n * ld, 2);
  const positions = rng.ints(n, 0, cs.maxPos);
  positions[0] = 0; // position 0 rotates by nothing
  if (n > 1) positions[n - 1] = cs.maxPos - 1;
  const { cos, sin, angle } = ropeTables(cs.maxPos, headDim, cs.theta);
  const fwd = ropeRef(x, n, heads, headDim, ld, positions, angle, false);
  const rotated = (q: number) => q % ld < heads * headDim;

  acrossKernels(t, (isa) => {
    const y = x.slice();
    op('rope', { n, heads, headDim, x: y, ld, positions, cos, sin, inverse: false }, isa);
    expectClose(t, y, fwd.out, fwd.tol, `${isa}: rotated rows`);
    t.ok(y.every((v, q) => rotated(q) || Object.is(v, x[q])), `${isa}: heads past 'heads' and the row padding unchanged`);
    // Position 0 is the identity.
    let same0 = true;
    for (let q = 0; q < heads * headDim; ++q) if (y[q] !== x[q]) same0 = false;
    t.ok(same0, `${isa}: position 0 leaves the row as it is`);
    // The inverse rotation undoes it (two rotations' worth of rounding).
    const back = y.slice();
    op('rope', { n, heads, headDim, x: back, ld, positions, cos, sin, inverse: true }, isa);
    expectClose(t, back, x, fwd.tol.map((v) => 3 * v), `${isa}: inverse(rope(x)) = x`);
    // The inverse alone matches the reference rotation by -angle.
    const inv = x.slice();
    op('rope', { n, heads, headDim, x: inv, ld, positions, cos, sin, inverse: true }, isa);
    const invRef = ropeRef(x, n, heads, headDim, ld, positions, angle, true);
    expectClose(t, inv, invRef.out, invRef.tol, `${isa}: inverse rotation`);
    return { out: { got: y, tol: fwd.tol }, inverse: { got: inv, tol: invRef.tol } };
  });
}

t.test('rope: rotate_half pairs (j, j + d/2), several positions, inverse undoes it', async (t) => {
  const cases: RopeCase[] = [
    { n: 1, heads: 1, rowHeads: 1, headDim: 2, extra: 0, theta: 10000, maxPos: 3, seed: 1 },
    { n: 3, heads: 2, rowHeads: 3, headDim: 6, extra: 1, theta: 10000, maxPos: 17, seed: 2 },
    { n: 7, heads: 5, rowHeads: 8, headDim: 14, extra: 3, theta: 10000, maxPos: 100, seed: 3 },
    { n: 13, heads: 3, rowHeads: 3, headDim: 34, extra: 0, theta: 1e6, maxPos: 257, seed: 4 },
    { n: 17, heads: 6, rowHeads: 9, headDim: 64, extra: 5, theta: 500000, maxPos: 4096, seed: 5 },
    { n: 31, heads: 2, rowHeads: 2, headDim: 66, extra: 0, theta: 10000, maxPos: 33, seed: 6 },
  ];
  for (const cs of cases)
    await t.test(`n=${cs.n} heads=${cs.heads}/${cs.rowHeads} head_dim=${cs.headDim} ld+${cs.extra} theta=${cs.theta} max_pos=${cs.maxPos}`, async (t) => ropeCase(t, cs));
});

t.test('rope: a hand-checked rotation (d = 4, position 1, theta = 10000)', async (t) => {
  // inv_freq = [1, 10000^(-1/2) = 0.01]; pairs (0,2) rotate by 1 rad, (1,3) by 0.01 rad.
  const { cos, sin } = ropeTables(2, 4, 10000);
  for (const isa of KERNELS) {
    const x = new Float32Array([1, 2, 3, 4]);
    op('rope', { n: 1, heads: 1, headDim: 4, x, ld: 4, positions: new Int32Array([1]), cos, sin }, isa);
    const c1 = Math.cos(1), s1 = Math.sin(1), c2 = Math.cos(0.01), s2 = Math.sin(0.01);
    const want = [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2];
    expectClose(t, x, want, 1e-6, `${isa}: [1,2,3,4] rotated`);
  }
});

// ------------------------------------------------------------------ attention

interface AttnCase {
  batch: number;
  seq: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale?: number;
  /** 'none' (null mask), 'full' (all ones), or per-batch row kinds */
  mask: 'none' | 'full' | ('left' | 'right' | 'holes' | 'empty' | 'full')[];
  /** q, k, v in one fused row [q heads | k heads | v heads | extra] */
  fused?: boolean;
  extraLd?: number;
  extraLdo?: number;
  lse: boolean;
  seed: number;
}

function makeMask(rng: Rng, kinds: AttnCase['mask'], batch: number, seq: number): Uint8Array | undefined {
  if (kinds === 'none') return undefined;
  const mask = new Uint8Array(batch * seq).fill(1);
  if (kinds === 'full') return mask;
  for (let b = 0; b < batch; ++b) {
    const kind = kinds[b % kinds.length];
    const pad = Math.max(1, Math.floor(seq / 3));
    for (let s = 0; s < seq; ++s) {
      let on = 1;
      if (kind === 'left') on = s >= pad ? 1 : 0;
      else if (kind === 'right') on = s < seq - pad ? 1 : 0;
      else if (kind === 'holes') on = rng.uniform() < 0.7 ? 1 : 0;
      else if (kind === 'empty') on = 0;
      mask[b * seq + s] = on;
    }
  }
  return mask;
}

function attnCase(t: Test, cs: AttnCase) {
  const { batch, seq, heads, kvHeads, headDim: d } = cs;
  const rng = new Rng(cs.seed);
  const scale = cs.scale ?? 1 / Math.sqrt(d);
  const rows = batch * seq;
  const qw = heads * d, kw = kvHeads * d;
  let q: Float32Array, k: Float32Array, v: Float32Array, ldq: number, ldk: number, ldv: number;
  if (cs.fused) {
    const ld = qw + 2 * kw + (cs.extraLd ?? 0);
    const buf = rng.normals(rows * ld);
    q = buf;
    k = buf.subarray(qw);
    v = buf.subarray(qw + kw);
    ldq = ldk = ldv = ld;
  } else {
    ldq = qw + (cs.extraLd ?? 0);
    ldk = kw + (cs.extraLd ?? 0);
    ldv = kw;
    q = rng.normals(rows * ldq);
    k = rng.normals(rows * ldk);
    v = rng.normals(rows * ldv);
  }
  const mask = makeMask(rng, cs.mask, batch, seq);
  const ldo = qw + (cs.extraLdo ?? 0);

  // Reference, [rows, ldo] with the bound per element; lse [batch, heads, seq].
  const refOut = new Float64Array(rows * ldo), tolOut = new Float64Array(rows * ldo);
  const refLse = new Float64Array(batch * heads * seq), tolLse = new Float64Array(batch * heads * seq);
  const idx: number[] = [];
  const masked: number[] = [];
  const group = heads / kvHeads;
  for (let b = 0; b < batch; ++b)
    for (let h = 0; h < heads; ++h) {
      const kvh = Math.floor(h / group);
      for (let tq = 0; tq < seq; ++tq) {
        const row = b * seq + tq;
        const visible = !mask || mask[row] !== 0;
        const keys = [];
        if (visible)
          for (let s = 0; s <= tq; ++s)
            if (!mask || mask[b * seq + s]) keys.push({ k, kOff: (b * seq + s) * ldk + kvh * d, v, vOff: (b * seq + s) * ldv + kvh * d });
        const r = attendRef(q, row * ldq + h * d, keys, d, scale);
        for (let j = 0; j < d; ++j) {
          refOut[row * ldo + h * d + j] = r.out[j];
          tolOut[row * ldo + h * d + j] = r.tol[j];
          idx.push(row * ldo + h * d + j);
          if (!visible) masked.push(row * ldo + h * d + j);
        }
        refLse[(b * heads + h) * seq + tq] = r.lse;
        tolLse[(b * heads + h) * seq + tq] = r.lseTol;
      }
    }
  const isPad = (x: number) => x % ldo >= qw;

  acrossKernels(t, (isa) => {
    const out = new Float32Array(rows * ldo).fill(SENTINEL);
    const lse = cs.lse ? new Float32Array(batch * heads * seq).fill(NaN) : undefined;
    op('attention', { batch, seq, heads, kvHeads, headDim: d, scale, q, k, v, ldq, ldk, ldv, mask, out, ldo, lse }, isa);
    expectClose(t, out, refOut, tolOut, `${isa}: out`, idx);
    if (masked.length) t.ok(masked.every((x) => out[x] === 0), `${isa}: padded query rows are zeros (${masked.length / d} rows)`);
    if (ldo > qw) t.ok(untouched(out, isPad, SENTINEL), `${isa}: output padding columns untouched`);
    const r: Record<string, { got: Float32Array; tol: Float64Array; indices?: number[] }> = { out: { got: out, tol: tolOut, indices: idx } };
    if (lse) {
      expectClose(t, lse, refLse, tolLse, `${isa}: lse = log-sum-exp of the scaled visible scores (-inf for padded rows)`);
      r.lse = { got: lse, tol: tolLse };
    }
    return r;
  });
}

const attnLabel = (c: AttnCase) =>
  `batch=${c.batch} seq=${c.seq} heads=${c.heads}/${c.kvHeads} d=${c.headDim}` +
  ` mask=${Array.isArray(c.mask) ? c.mask.join(',') : c.mask}${c.fused ? ' fused-qkv' : ''}` +
  (c.extraLd ? ` ld+${c.extraLd}` : '') + (c.extraLdo ? ` ldo+${c.extraLdo}` : '') + (c.scale ? ` scale=${c.scale}` : '') + (c.lse ? ' +lse' : '');

t.test('attention: causal, GQA, padding masks, strided q/k/v/out, lse', async (t) => {
  const cases: AttnCase[] = [
    { batch: 1, seq: 1, heads: 1, kvHeads: 1, headDim: 1, mask: 'none', lse: true, seed: 1 },
    { batch: 2, seq: 17, heads: 4, kvHeads: 4, headDim: 8, mask: 'none', lse: true, seed: 2 },
    { batch: 3, seq: 13, heads: 6, kvHeads: 2, headDim: 13, mask: 'full', lse: true, seed: 3, extraLd: 3, extraLdo: 2 },
    { batch: 4, seq: 33, heads: 6, kvHeads: 3, headDim: 16, mask: ['left', 'right', 'holes', 'empty'], lse: true, seed: 4, fused: true, extraLd: 5, extraLdo: 3 },
    { batch: 2, seq: 31, heads: 4, kvHeads: 1, headDim: 33, mask: ['right', 'left'], lse: false, seed: 5, fused: true },
    { batch: 3, seq: 7, heads: 3, kvHeads: 3, headDim: 65, mask: ['holes', 'full', 'left'], lse: true, seed: 6, scale: 0.37, extraLdo: 1 },
    { batch: 1, seq: 257, heads: 2, kvHeads: 1, headDim: 17, mask: ['left'], lse: true, seed: 7, extraLd: 1 },
    { batch: 2, seq: 100, heads: 8, kvHeads: 2, headDim: 32, mask: ['right', 'holes'], lse: true, seed: 8, fused: true, extraLd: 7 },
  ];
  for (const cs of cases) await t.test(attnLabel(cs), async (t) => attnCase(t, cs));
});

t.test('attention: a row that sees one key copies its value; large scores do not overflow', async (t) => {
  for (const isa of KERNELS) {
    // seq 2, d 3: row 0 sees only key 0 -> out = v0; row 1 with scores of 1000 and 0 -> out = v of the big one.
    const q = new Float32Array([1, 0, 0, 1000, 0, 0]);
    const k = new Float32Array([5, 1, 1, 1, 0, 0]);
    const v = new Float32Array([1, 2, 3, -4, -5, -6]);
    const out = new Float32Array(6), lse = new Float32Array(2);
    op('attention', { batch: 1, seq: 2, heads: 1, kvHeads: 1, headDim: 3, scale: 1, q, k, v, ldq: 3, ldk: 3, ldv: 3, out, ldo: 3, lse }, isa);
    t.same(Array.from(out.subarray(0, 3)), [1, 2, 3], `${isa}: first row = v0`);
    // row 1: scores 5000 (key 0) and 1000 (key 1): softmax is one-hot on key 0.
    t.same(Array.from(out.subarray(3)), [1, 2, 3], `${isa}: dominated row = v0, finite`);
    t.equal(lse[0], 5, `${isa}: lse of one score is the score`);
    t.equal(lse[1], 5000, `${isa}: lse of (5000, 1000) is 5000 in float32`);
  }
});

// ------------------------------------------------------------------ kv_attention

interface KvCase {
  batch: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  capacity: number;
  lengths: number[];
  cacheMask: boolean;
  extraLdq: number;
  extraLdo: number;
  scale?: number;
  seed: number;
}

function kvCase(t: Test, cs: KvCase) {
  const { batch, heads, kvHeads, headDim: d, capacity } = cs;
  const rng = new Rng(cs.seed);
  const scale = cs.scale ?? 1 / Math.sqrt(d);
  const ldq = heads * d + cs.extraLdq, ldo = heads * d + cs.extraLdo;
  const q = rng.normals(batch * ldq);
  // Cache [batch, kv_heads, capacity, d]; entries past each length are garbage (NaN) that must not be read.
  const kCache = rng.normals(batch * kvHeads * capacity * d);
  const vCache = rng.normals(batch * kvHeads * capacity * d);
  const length = Int32Array.from(cs.lengths);
  for (let b = 0; b < batch; ++b)
    for (let h = 0; h < kvHeads; ++h)
      for (let s = length[b]; s < capacity; ++s)
        for (let j = 0; j < d; ++j) kCache[((b * kvHeads + h) * capacity + s) * d + j] = vCache[((b * kvHeads + h) * capacity + s) * d + j] = NaN;
  let cacheMask: Uint8Array | undefined;
  if (cs.cacheMask) {
    cacheMask = new Uint8Array(batch * capacity);
    for (let b = 0; b < batch; ++b)
      for (let s = 0; s < capacity; ++s) cacheMask[b * capacity + s] = s === length[b] - 1 || rng.uniform() < 0.6 ? 1 : 0;
    // Masked-out slots may hold anything: make some of them huge, to show they are skipped.
    for (let b = 0; b < batch; ++b)
      for (let s = 0; s < length[b]; ++s)
        if (!cacheMask[b * capacity + s]) for (let h = 0; h < kvHeads; ++h) kCache[((b * kvHeads + h) * capacity + s) * d] = 1e30;
  }
  const refOut = new Float64Array(batch * ldo), tolOut = new Float64Array(batch * ldo);
  const idx: number[] = [];
  const group = heads / kvHeads;
  for (let b = 0; b < batch; ++b)
    for (let h = 0; h < heads; ++h) {
      const kvh = Math.floor(h / group);
      const base = (b * kvHeads + kvh) * capacity * d;
      const keys = [];
      for (let s = 0; s < length[b]; ++s) if (!cacheMask || cacheMask[b * capacity + s]) keys.push({ k: kCache, kOff: base + s * d, v: vCache, vOff: base + s * d });
      const r = attendRef(q, b * ldq + h * d, keys, d, scale);
      for (let j = 0; j < d; ++j) {
        refOut[b * ldo + h * d + j] = r.out[j];
        tolOut[b * ldo + h * d + j] = r.tol[j];
        idx.push(b * ldo + h * d + j);
      }
    }
  acrossKernels(t, (isa) => {
    const out = new Float32Array(batch * ldo).fill(SENTINEL);
    op('kv_attention', { batch, heads, kvHeads, headDim: d, capacity, scale, q, ldq, kCache, vCache, length, cacheMask, out, ldo }, isa);
    expectClose(t, out, refOut, tolOut, `${isa}: out`, idx);
    if (ldo > heads * d) t.ok(untouched(out, (x) => x % ldo >= heads * d, SENTINEL), `${isa}: output padding untouched`);
    return { out: { got: out, tol: tolOut, indices: idx } };
  });
}

t.test('kv_attention: per-row lengths, cache_mask, GQA, strided q/out', async (t) => {
  const cases: KvCase[] = [
    { batch: 1, heads: 1, kvHeads: 1, headDim: 1, capacity: 1, lengths: [1], cacheMask: false, extraLdq: 0, extraLdo: 0, seed: 1 },
    { batch: 4, heads: 6, kvHeads: 3, headDim: 33, capacity: 37, lengths: [1, 13, 37, 20], cacheMask: false, extraLdq: 7, extraLdo: 2, seed: 2 },
    { batch: 3, heads: 4, kvHeads: 1, headDim: 16, capacity: 65, lengths: [65, 3, 31], cacheMask: true, extraLdq: 0, extraLdo: 1, seed: 3 },
    { batch: 5, heads: 8, kvHeads: 2, headDim: 7, capacity: 100, lengths: [100, 1, 57, 8, 99], cacheMask: true, extraLdq: 3, extraLdo: 0, seed: 4, scale: 0.9 },
    { batch: 2, heads: 3, kvHeads: 3, headDim: 65, capacity: 257, lengths: [257, 129], cacheMask: true, extraLdq: 1, extraLdo: 5, seed: 5 },
  ];
  for (const cs of cases)
    await t.test(
      `batch=${cs.batch} heads=${cs.heads}/${cs.kvHeads} d=${cs.headDim} capacity=${cs.capacity} lengths=${cs.lengths.join(',')}${cs.cacheMask ? ' +cache_mask' : ''}`,
      async (t) => kvCase(t, cs),
    );
});

t.test('kv_attention agrees with attention on the last row of a causal sequence', async (t) => {
  // Prefill a sequence with attention, then attend its last token against a cache holding the same keys/values.
  const rng = new Rng(99);
  const seq = 19, heads = 6, kvHeads = 2, d = 12, capacity = 23;
  const q = rng.normals(seq * heads * d), k = rng.normals(seq * kvHeads * d), v = rng.normals(seq * kvHeads * d);
  const kCache = new Float32Array(kvHeads * capacity * d), vCache = new Float32Array(kvHeads * capacity * d);
  for (let h = 0; h < kvHeads; ++h)
    for (let s = 0; s < seq; ++s)
      for (let j = 0; j < d; ++j) {
        kCache[(h * capacity + s) * d + j] = k[s * kvHeads * d + h * d + j];
        vCache[(h * capacity + s) * d + j] = v[s * kvHeads * d + h * d + j];
      }
  for (const isa of KERNELS) {
    const full = new Float32Array(seq * heads * d);
    op('attention', { batch: 1, seq, heads, kvHeads, headDim: d, scale: 0.3, q, k, v, ldq: heads * d, ldk: kvHeads * d, ldv: kvHeads * d, out: full, ldo: heads * d }, isa);
    const last = new Float32Array(heads * d);
    op('kv_attention', { batch: 1, heads, kvHeads, headDim: d, capacity, scale: 0.3, q: q.subarray((seq - 1) * heads * d), ldq: heads * d, kCache, vCache, length: new Int32Array([seq]), out: last, ldo: heads * d }, isa);
    expectClose(t, last, Array.from(full.subarray((seq - 1) * heads * d)), 2e-6, `${isa}: same output`);
  }
});

t.test('kv_attention: a row with no visible key (length 0, or every slot masked) gives zeros', async (t) => {
  const heads = 2, d = 5, capacity = 4;
  const rng = new Rng(123);
  const q = rng.normals(2 * heads * d), kCache = rng.normals(2 * capacity * d), vCache = rng.normals(2 * capacity * d);
  for (const isa of KERNELS) {
    const out = new Float32Array(2 * heads * d).fill(SENTINEL);
    op('kv_attention', { batch: 2, heads, kvHeads: 1, headDim: d, capacity, scale: 1, q, ldq: heads * d, kCache, vCache, length: Int32Array.from([0, 3]), cacheMask: Uint8Array.from([1, 1, 1, 1, 0, 0, 0, 1]), out, ldo: heads * d }, isa);
    t.ok(out.every((v) => v === 0), `${isa}: zeros`);
  }
});
