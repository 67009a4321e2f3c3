// logits_xent: log-softmax cross-entropy on materialised logits with its
// gradient, in place, on every kernel this CPU has.
//   logp, entropy, lse against float64 formulas over the fp32 logits;
//   dz against central finite differences of the float64 objective
//   L(z) = sum_i dlogp_i * logp_i(z) (so dz is checked as the gradient of
//   what the op computes, not through the op's own formula).
// Odd vocabularies (SIMD tails), rows ld apart, rows without a target (-1:
// zeros out), a temperature, and a large logit offset (the max shift).
import t from 'tap';
import { EPS32, expectClose, KERNELS, op, Rng } from './helpers/ref';

function refRow(z: ArrayLike<number>, off: number, vocab: number, target: number, invT: number) {
  let m = -Infinity;
  for (let j = 0; j < vocab; j++) m = Math.max(m, z[off + j] * invT);
  let s = 0, sx = 0;
  for (let j = 0; j < vocab; j++) {
    const zt = z[off + j] * invT, e = Math.exp(zt - m);
    s += e;
    sx += e * zt;
  }
  const lse = m + Math.log(s);
  return { lse, logp: z[off + target] * invT - lse, entropy: lse - sx / s };
}

const CASES = [
  { n: 1, vocab: 3, ld: 3, invT: 1, offset: 0 },
  { n: 9, vocab: 37, ld: 40, invT: 1 / 0.7, offset: 0 },
  { n: 6, vocab: 257, ld: 257, invT: 1, offset: 60 },
  { n: 4, vocab: 1000, ld: 1003, invT: 2, offset: -5 },
];

for (const c of CASES) {
  t.test(`logits_xent ${c.n} rows x ${c.vocab} (ld ${c.ld}, 1/T ${c.invT.toFixed(3)}, offset ${c.offset})`, async (t) => {
    const rng = new Rng(77 + c.vocab);
    const z0 = new Float32Array(c.n * c.ld).fill(NaN);
    for (let i = 0; i < c.n; i++) for (let j = 0; j < c.vocab; j++) z0[i * c.ld + j] = c.offset + 2 * rng.normal();
    const targets = Int32Array.from({ length: c.n }, (_, i) => (i % 4 === 3 ? -1 : rng.int(0, c.vocab)));
    const dlogp = rng.normals(c.n);
    for (const isa of KERNELS) {
      const z = z0.slice(), logp = new Float32Array(c.n), entropy = new Float32Array(c.n), lse = new Float32Array(c.n);
      op('logits_xent', { n: c.n, vocab: c.vocab, ld: c.ld, z, targets, dlogp, invTemperature: c.invT, logp, entropy, lse }, isa);
      for (let i = 0; i < c.n; i++) {
        const off = i * c.ld;
        if (targets[i] < 0) {
          t.ok(logp[i] === 0 && entropy[i] === 0 && z.subarray(off, off + c.vocab).every((x) => x === 0), `${isa}: row ${i} without a target: zeros`);
          continue;
        }
        const r = refRow(z0, off, c.vocab, targets[i], c.invT);
        const mag = Math.abs(r.lse) + Math.abs(c.offset * c.invT) + 10;
        expectClose(t, [logp[i], lse[i], entropy[i]], [r.logp, r.lse, r.entropy], [64 * EPS32 * mag, 64 * EPS32 * mag, 256 * EPS32 * mag + 1e-6 * c.vocab ** 0.5], `${isa}: row ${i} logp, lse, entropy`);
        // dz: finite differences of dlogp_i * logp_i(z) in float64.
        const zr = Float64Array.from(z0.subarray(off, off + c.vocab));
        const fd = new Float64Array(c.vocab);
        for (let j = 0; j < c.vocab; j++) {
          const h = 1e-4 * Math.max(1, Math.abs(zr[j]));
          const keep = zr[j];
          zr[j] = keep + h;
          const up = refRow(zr, 0, c.vocab, targets[i], c.invT).logp;
          zr[j] = keep - h;
          const down = refRow(zr, 0, c.vocab, targets[i], c.invT).logp;
          zr[j] = keep;
          fd[j] = (dlogp[i] * (up - down)) / (2 * h);
        }
        let big = 0;
        for (const v of fd) big = Math.max(big, Math.abs(v));
        expectClose(t, z.subarray(off, off + c.vocab), fd, Float64Array.from(fd, (v) => 1e-4 * big + 1e-3 * Math.abs(v) + 1e-9), `${isa}: row ${i} dz vs finite differences`);
      }
      let padOk = true;
      for (let i = 0; i < z.length; i++) if (i % c.ld >= c.vocab && !Number.isNaN(z[i])) padOk = false;
      t.ok(padOk, `${isa}: ld padding untouched`);
    }
  });
}

t.test('logits_xent refuses a target outside the vocabulary', async (t) => {
  t.throws(
    () => op('logits_xent', { n: 1, vocab: 4, z: new Float32Array(4), targets: Int32Array.of(4), dlogp: new Float32Array(1), logp: new Float32Array(1) }, KERNELS[0]),
    { code: 'E_ARGUMENT' },
  );
});
