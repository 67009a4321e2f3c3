// Label smoothing in the LM head and the SFT loss, op by op on every kernel
// this CPU has, against float64 written from the definition (torch's
// CrossEntropyLoss(label_smoothing=eps)):
//
//   loss of a target token = (1 - eps)(-log p_y) + eps(-(1/V) sum_v log p_v)
//
//   lm_head_logp: mean_logp = (1/V) sum_v log softmax(z)_v against float64
//     logits from hidden and weight (vocabularies over one 2048 chunk);
//   lm_head_logp_backward with dmeanLogp (and dlogp, dentropy): dhidden and
//     dweight against central finite differences of the float64 objective
//     sum_i dlogp_i logp_i + dentropy_i H_i + dmean_i mean_logp_i;
//   logits_xent with dmeanLogp: meanLogp, and dz against finite differences
//     of the same objective on the logits;
//   sft_loss with labelSmoothing: loss, statistics and both gradients against
//     the formula; eps = 0 gives the bits of a call without the field.
import t from 'tap';
import { EPS32, expectClose, KERNELS, op, Rng } from './helpers/ref';

/** float64 log-softmax statistics of one row of logits. */
function rowStats(z: ArrayLike<number>, target: number) {
  let m = -Infinity;
  for (let j = 0; j < z.length; j++) m = Math.max(m, z[j]);
  let s = 0, sx = 0, sum = 0;
  for (let j = 0; j < z.length; j++) {
    const e = Math.exp(z[j] - m);
    s += e;
    sx += e * z[j];
    sum += z[j];
  }
  const lse = m + Math.log(s);
  // mean over the vocabulary of log p_v, straight from its definition
  let meanLogp = 0;
  for (let j = 0; j < z.length; j++) meanLogp += z[j] - lse;
  meanLogp /= z.length;
  return { lse, logp: z[target] - lse, entropy: lse - sx / s, meanLogp, sum };
}

function logits(hidden: ArrayLike<number>, weight: ArrayLike<number>, i: number, dim: number, vocab: number, invT: number): Float64Array {
  const z = new Float64Array(vocab);
  for (let v = 0; v < vocab; v++) {
    let s = 0;
    for (let k = 0; k < dim; k++) s += hidden[i * dim + k] * weight[v * dim + k];
    z[v] = s * invT;
  }
  return z;
}

for (const c of [
  { n: 5, dim: 6, vocab: 37, invT: 1 },
  { n: 4, dim: 5, vocab: 2500, invT: 1 / 0.8 },
]) {
  t.test(`lm_head_logp mean_logp and its backward: ${c.n} rows x vocab ${c.vocab}, 1/T ${c.invT.toFixed(3)}`, async (t) => {
    const rng = new Rng(5 + c.vocab);
    const hidden = rng.normals(c.n * c.dim);
    const weight = rng.normals(c.vocab * c.dim, 2 / Math.sqrt(c.dim));
    const targets = Int32Array.from({ length: c.n }, (_, i) => (i === 2 ? -1 : rng.int(0, c.vocab)));
    const dlogp = rng.normals(c.n), dentropy = rng.normals(c.n), dmean = rng.normals(c.n);
    const objective = (h: ArrayLike<number>, w: ArrayLike<number>) => {
      let L = 0;
      for (let i = 0; i < c.n; i++) {
        if (targets[i] < 0) continue;
        const r = rowStats(logits(h, w, i, c.dim, c.vocab, c.invT), targets[i]);
        L += dlogp[i] * r.logp + dentropy[i] * r.entropy + dmean[i] * r.meanLogp;
      }
      return L;
    };
    // Finite differences of the float64 objective.
    const fdOf = (x: Float32Array, which: 'h' | 'w', idx: number) => {
      const a = Float64Array.from(x);
      const h = 1e-4 * Math.max(1, Math.abs(a[idx]));
      const keep = a[idx];
      a[idx] = keep + h;
      const up = which === 'h' ? objective(a, weight) : objective(hidden, a);
      a[idx] = keep - h;
      const down = which === 'h' ? objective(a, weight) : objective(hidden, a);
      return (up - down) / (2 * h);
    };
    const fdH = Float64Array.from({ length: c.n * c.dim }, (_, i) => fdOf(hidden, 'h', i));
    const wIdx = [0, 1, c.dim + 2, Math.floor(c.vocab / 2) * c.dim + 1, (c.vocab - 1) * c.dim + c.dim - 1];
    const fdW = wIdx.map((i) => fdOf(weight, 'w', i));
    const gmax = Math.max(...fdH.map(Math.abs), ...fdW.map(Math.abs));
    for (const isa of KERNELS) {
      const logp = new Float32Array(c.n), entropy = new Float32Array(c.n), lse = new Float32Array(c.n), meanLogp = new Float32Array(c.n).fill(NaN);
      op('lm_head_logp', { n: c.n, dim: c.dim, vocab: c.vocab, hidden, weight, targets, logp, entropy, lse, meanLogp, invTemperature: c.invT }, isa);
      for (let i = 0; i < c.n; i++) {
        if (targets[i] < 0) {
          t.equal(meanLogp[i], 0, `${isa}: row ${i} without a target: mean_logp 0`);
          continue;
        }
        const r = rowStats(logits(hidden, weight, i, c.dim, c.vocab, c.invT), targets[i]);
        const mag = Math.abs(r.lse) + Math.abs(r.sum) / c.vocab + 10;
        expectClose(t, [meanLogp[i]], [r.meanLogp], 512 * EPS32 * mag, `${isa}: row ${i} mean_logp`);
      }
      const dhidden = new Float32Array(c.n * c.dim), dweight = new Float32Array(c.vocab * c.dim);
      op(
        'lm_head_logp_backward',
        { n: c.n, dim: c.dim, vocab: c.vocab, hidden, weight, targets, lse, entropy, dlogp, dentropy, dmeanLogp: dmean, invTemperature: c.invT, dhidden, dweight },
        isa,
      );
      expectClose(t, dhidden, fdH, 1e-4 * gmax, `${isa}: dhidden against finite differences`);
      expectClose(t, wIdx.map((i) => dweight[i]), fdW, 1e-4 * gmax, `${isa}: dweight entries against finite differences`);
    }
  });
}

t.test('logits_xent with dmeanLogp: mean_logp and dz against float64', async (t) => {
  const n = 6, vocab = 301, ld = 305, invT = 1 / 0.9;
  const rng = new Rng(41);
  const z0 = new Float32Array(n * ld).fill(NaN);
  for (let i = 0; i < n; i++) for (let j = 0; j < vocab; j++) z0[i * ld + j] = 1.5 * rng.normal() + (i === 4 ? 40 : 0);
  const targets = Int32Array.from({ length: n }, (_, i) => (i === 1 ? -1 : rng.int(0, vocab)));
  const dlogp = rng.normals(n), dmean = rng.normals(n);
  for (const isa of KERNELS) {
    const z = z0.slice(), logp = new Float32Array(n), lse = new Float32Array(n), meanLogp = new Float32Array(n).fill(NaN);
    op('logits_xent', { n, vocab, ld, z, targets, dlogp, dmeanLogp: dmean, invTemperature: invT, logp, lse, meanLogp }, isa);
    for (let i = 0; i < n; i++) {
      const off = i * ld;
      if (targets[i] < 0) {
        t.ok(meanLogp[i] === 0 && z.subarray(off, off + vocab).every((x) => x === 0), `${isa}: row ${i} without a target: zeros`);
        continue;
      }
      const row = (zz: ArrayLike<number>) => rowStats(Float64Array.from({ length: vocab }, (_, j) => zz[j] * invT), targets[i]);
      const r = row(z0.subarray(off, off + vocab));
      expectClose(t, [meanLogp[i]], [r.meanLogp], 512 * EPS32 * (Math.abs(r.lse) + 10), `${isa}: row ${i} mean_logp`);
      const zr = Float64Array.from(z0.subarray(off, off + vocab));
      const fd = new Float64Array(vocab);
      for (let j = 0; j < vocab; j++) {
        const h = 1e-4 * Math.max(1, Math.abs(zr[j]));
        const keep = zr[j];
        zr[j] = keep + h;
        const u = row(zr);
        zr[j] = keep - h;
        const d = row(zr);
        zr[j] = keep;
        fd[j] = (dlogp[i] * (u.logp - d.logp) + dmean[i] * (u.meanLogp - d.meanLogp)) / (2 * h);
      }
      const gmax = Math.max(...fd.map(Math.abs));
      expectClose(t, z.subarray(off, off + vocab), fd, 1e-4 * gmax + 1e-7, `${isa}: row ${i} dz against finite differences`);
    }
  }
});

t.test('sft_loss with labelSmoothing: loss, statistics and gradients against the formula', async (t) => {
  const n = 5000; // two reduction chunks
  const rng = new Rng(9);
  const logp = Float32Array.from(rng.normals(n), (x) => -Math.abs(3 * x));
  const meanLogp = Float32Array.from(rng.normals(n), (x) => -6 - Math.abs(x));
  const mask = Float32Array.from({ length: n }, (_, i) => (i % 7 === 3 ? 0 : 1));
  for (let i = 0; i < n; i += 97) (logp[i] = NaN), (mask[i] = 0); // masked positions are not read
  for (const { eps, denom, gradScale } of [
    { eps: 0.2, denom: 0, gradScale: 1 },
    { eps: 0.1, denom: 12345, gradScale: 0.5 },
    { eps: 1, denom: 0, gradScale: 2 },
  ]) {
    let tokens = 0, nll = 0, smooth = 0, mag = 0;
    for (let i = 0; i < n; i++)
      if (mask[i]) (tokens += 1), (nll -= logp[i]), (smooth -= meanLogp[i]), (mag += Math.abs(logp[i]) + Math.abs(meanLogp[i]));
    const d = denom > 0 ? denom : tokens;
    const ref = ((1 - eps) * nll + eps * smooth) / d;
    for (const isa of KERNELS) {
      const loss = new Float32Array(1), stats = new Float32Array(3), dlogp = new Float32Array(n).fill(7), dmeanLogp = new Float32Array(n).fill(7);
      op('sft_loss', { n, logp, meanLogp, mask, denom, gradScale, labelSmoothing: eps, loss, stats, dlogp, dmeanLogp }, isa);
      const what = `${isa} eps ${eps} denom ${denom}`;
      expectClose(t, [loss[0]], [ref], 1e-6 * mag / d, `${what}: loss`);
      expectClose(t, stats, [tokens, nll, smooth], [0, 1e-6 * mag, 1e-6 * mag], `${what}: tokens, nllSum, smoothSum`);
      let bad = 0;
      for (let i = 0; i < n; i++) {
        const gl = mask[i] ? (-(1 - eps) * gradScale) / d : 0, gm = mask[i] ? (-eps * gradScale) / d : 0;
        if (Math.abs(dlogp[i] - gl) > 4 * EPS32 * Math.abs(gl) || Math.abs(dmeanLogp[i] - gm) > 4 * EPS32 * Math.abs(gm)) bad++;
        if (!mask[i] && (!Object.is(dlogp[i], 0) || !Object.is(dmeanLogp[i], 0))) bad++;
      }
      t.equal(bad, 0, `${what}: dlogp = -(1-eps) mask/denom, dmeanLogp = -eps mask/denom (+0 where masked out)`);
    }
  }
  for (const isa of KERNELS) {
    const a = { loss: new Float32Array(1), dlogp: new Float32Array(n), stats: new Float32Array(2) };
    const b = { loss: new Float32Array(1), dlogp: new Float32Array(n), stats: new Float32Array(2) };
    op('sft_loss', { n, logp, mask, ...a }, isa);
    op('sft_loss', { n, logp, mask, labelSmoothing: 0, ...b }, isa);
    t.ok(Object.is(a.loss[0], b.loss[0]) && a.dlogp.every((x, i) => Object.is(x, b.dlogp[i])) && a.stats.every((x, i) => Object.is(x, b.stats[i])), `${isa}: eps 0 gives the bits of a call without labelSmoothing`);
  }
});
