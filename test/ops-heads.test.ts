// lm_head_logp (chunked logits -> logp of the target, entropy, lse) and
// value_head against float64 references.
//
// Bounds (EPS32 = 2^-24):
//   value_head: dotC(dim) EPS32 (sum_i |h_i w_i| + |bias|), dotC(k) = 4 + 2 sqrt(k).
//   lm_head_logp: each logit z_v = inv_temperature * h . W_v is off by
//     dz_v <= (dotC(dim) sum_i |h_i W_vi| + 2 |h . W_v|) inv_temperature EPS32.
//     With A = max_v (dz_v / EPS32 + |z_v - max z|) (the error of every exp
//     argument, in EPS32) and V the vocabulary:
//       lse:     (2A + 8 + 4 sqrt(V) + 2 |lse|) EPS32
//       logp:    lse bound + dz_target + 2 |logp| EPS32
//       entropy: lse bound + (4A + 8 + 4 sqrt(V)) EPS32 (1 + sum_v p_v |z_v|)
//     On these well-scaled inputs (logits of std ~3) that is ~1e-5 relative.
import t from 'tap';
import type { Test } from 'tap';
import { acrossKernels, dotC, EPS32, expectClose, f32, KERNELS, lseStats, op, Rng } from './helpers/ref';

interface LmCase {
  n: number;
  dim: number;
  vocab: number;
  invTemperature: number;
  /** fraction of rows whose target is -1 */
  ignore: number;
  outputs: 'all' | 'logp';
  logitStd?: number;
  seed: number;
}

function lmCase(t: Test, cs: LmCase) {
  const { n, dim, vocab } = cs;
  const rng = new Rng(cs.seed);
  const hidden = rng.normals(n * dim);
  const weight = rng.normals(vocab * dim, (cs.logitStd ?? 3) / Math.sqrt(dim));
  const targets = new Int32Array(n);
  for (let i = 0; i < n; ++i) targets[i] = rng.uniform() < cs.ignore ? -1 : rng.int(0, vocab);
  // Targets in the first and the last vocabulary chunk, and an ignored row.
  targets[0] = vocab - 1;
  if (n > 1) targets[1] = 0;
  if (n > 2) targets[2] = -1;
  const invT = f32(cs.invTemperature);

  const refLogp = new Float64Array(n), refEnt = new Float64Array(n), refLse = new Float64Array(n);
  const tolLogp = new Float64Array(n), tolEnt = new Float64Array(n), tolLse = new Float64Array(n);
  const z = new Float64Array(vocab), dz = new Float64Array(vocab);
  for (let i = 0; i < n; ++i) {
    if (targets[i] < 0) continue; // expected 0, exactly
    for (let v = 0; v < vocab; ++v) {
      let s = 0, sa = 0;
      for (let j = 0; j < dim; ++j) {
        const p = hidden[i * dim + j] * weight[v * dim + j];
        s += p;
        sa += Math.abs(p);
      }
      z[v] = s * invT;
      dz[v] = (dotC(dim) * sa + 2 * Math.abs(s)) * invT; // in EPS32
    }
    const st = lseStats(z);
    let A = 0;
    for (let v = 0; v < vocab; ++v) A = Math.max(A, dz[v] + Math.abs(z[v] - st.max));
    const base = 8 + 4 * Math.sqrt(vocab);
    refLse[i] = st.lse;
    refLogp[i] = z[targets[i]] - st.lse;
    refEnt[i] = st.entropy;
    tolLse[i] = (2 * A + base + 2 * Math.abs(st.lse)) * EPS32;
    tolLogp[i] = tolLse[i] + (dz[targets[i]] + 2 * Math.abs(refLogp[i])) * EPS32;
    tolEnt[i] = tolLse[i] + (4 * A + base) * EPS32 * (1 + st.pAbs);
  }

  acrossKernels(t, (isa) => {
    const logp = new Float32Array(n).fill(NaN);
    const entropy = cs.outputs === 'all' ? new Float32Array(n).fill(NaN) : undefined;
    const lse = cs.outputs === 'all' ? new Float32Array(n).fill(NaN) : undefined;
    op('lm_head_logp', { n, dim, vocab, hidden, weight, targets, logp, entropy, lse, invTemperature: cs.invTemperature }, isa);
    expectClose(t, logp, refLogp, tolLogp, `${isa}: logp (0 where target = -1)`);
    const r: Record<string, { got: Float32Array; tol: Float64Array }> = { logp: { got: logp, tol: tolLogp } };
    if (entropy && lse) {
      expectClose(t, entropy, refEnt, tolEnt, `${isa}: entropy = lse - sum p z (0 where target = -1)`);
      expectClose(t, lse, refLse, tolLse, `${isa}: lse (0 where target = -1)`);
      r.entropy = { got: entropy, tol: tolEnt };
      r.lse = { got: lse, tol: tolLse };
    }
    return r;
  });
}

t.test('lm_head_logp: vocab chunks of 512 merged, row blocks of 256, ignored targets, temperature', async (t) => {
  const cases: LmCase[] = [
    { n: 1, dim: 1, vocab: 1, invTemperature: 1, ignore: 0, outputs: 'all', seed: 1 },
    { n: 3, dim: 7, vocab: 13, invTemperature: 1, ignore: 0, outputs: 'all', seed: 2 },
    { n: 7, dim: 65, vocab: 513, invTemperature: 1, ignore: 0.2, outputs: 'logp', seed: 3 },
    { n: 17, dim: 31, vocab: 100, invTemperature: 1 / 0.7, ignore: 0.1, outputs: 'all', seed: 4 },
    { n: 300, dim: 33, vocab: 1100, invTemperature: 1 / 0.7, ignore: 0.1, outputs: 'all', seed: 5 },
    { n: 257, dim: 17, vocab: 1537, invTemperature: 2.5, ignore: 0.3, outputs: 'all', seed: 6 },
    { n: 9, dim: 100, vocab: 1025, invTemperature: 0.5, ignore: 0, outputs: 'all', seed: 7, logitStd: 8 },
    { n: 33, dim: 257, vocab: 600, invTemperature: 1, ignore: 0, outputs: 'all', seed: 8, logitStd: 0.01 },
  ];
  for (const cs of cases)
    await t.test(
      `n=${cs.n} dim=${cs.dim} vocab=${cs.vocab} inv_temperature=${cs.invTemperature.toPrecision(3)}${cs.ignore ? ` ignore~${cs.ignore}` : ''}${cs.outputs === 'logp' ? ' logp only' : ''}${cs.logitStd ? ` logit std ${cs.logitStd}` : ''}`,
      async (t) => lmCase(t, cs),
    );
});

t.test('lm_head_logp: uniform logits give logp = -log V and entropy = log V', async (t) => {
  const n = 5, dim = 3, vocab = 1031;
  const hidden = new Float32Array(n * dim).fill(1);
  const weight = new Float32Array(vocab * dim).fill(0.25);
  const targets = Int32Array.from([0, 1030, 512, 511, -1]);
  for (const isa of KERNELS) {
    const logp = new Float32Array(n), entropy = new Float32Array(n), lse = new Float32Array(n);
    op('lm_head_logp', { n, dim, vocab, hidden, weight, targets, logp, entropy, lse, invTemperature: 1 }, isa);
    const L = Math.log(vocab);
    expectClose(t, logp, [-L, -L, -L, -L, 0], 4e-6, `${isa}: logp = -log(${vocab})`);
    expectClose(t, entropy, [L, L, L, L, 0], 4e-6, `${isa}: entropy = log(${vocab})`);
    expectClose(t, lse, [0.75 + L, 0.75 + L, 0.75 + L, 0.75 + L, 0], 4e-6, `${isa}: lse = 0.75 + log(${vocab})`);
  }
});

t.test('value_head: value = hidden . w + bias', async (t) => {
  let seed = 100;
  for (const [n, dim, bias] of [
    [1, 1, 0],
    [3, 7, 0.25],
    [13, 17, -1.5],
    [7, 33, 0],
    [17, 100, 3],
    [5, 257, 0.125],
    [2, 1537, -0.3],
  ])
    await t.test(`n=${n} dim=${dim} bias=${bias}`, async (t) => {
      const rng = new Rng(seed++);
      const hidden = rng.normals(n * dim), weight = rng.normals(dim, 0.2);
      const b32 = f32(bias);
      const ref = new Float64Array(n), tol = new Float64Array(n);
      for (let i = 0; i < n; ++i) {
        let s = b32, sa = Math.abs(b32);
        for (let j = 0; j < dim; ++j) {
          s += hidden[i * dim + j] * weight[j];
          sa += Math.abs(hidden[i * dim + j] * weight[j]);
        }
        ref[i] = s;
        tol[i] = dotC(dim) * EPS32 * sa;
      }
      acrossKernels(t, (isa) => {
        const value = new Float32Array(n).fill(NaN);
        op('value_head', { n, dim, hidden, weight, bias, value }, isa);
        expectClose(t, value, ref, tol, `${isa}: value`);
        return { value: { got: value, tol } };
      });
    });
});
