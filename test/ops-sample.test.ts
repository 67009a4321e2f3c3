// sample: greedy / temperature / top-k / top-p with the counter-based RNG.
//
// Three kinds of checks:
//  - exact: temperature 0 and top_k = 1 are argmax (first index on ties), and
//    tiny top_p is argmax; for random logits the pick equals the one a float64
//    replica of the documented algorithm makes from the same uniform
//    u = uniform01(seed, step) (native/ops/math.h, re-implemented here with
//    BigInt), skipping only rows whose u lies within 1e-9 of a bucket boundary;
//  - statistical: 4000 rows with distinct seeds (and 4000 steps of one seed)
//    at temperature 1 on 5 logits give frequencies within 4 sigma of
//    softmax; with top_k = 2 only the top two appear, at the renormalised
//    pair's odds; determinism in (seeds, step);
//  - out_logp = log softmax(logits / T)[pick] within
//    (4 max|z| + 8 + 4 sqrt(V) + 2 |lse| + 2 |logp|) EPS32, z = logits / T
//    (T = 0: the untempered softmax).
import t from 'tap';
import type { Test } from 'tap';
import { EPS32, expectClose, expectEqual, f32, KERNELS, lseStats, mix64, op, Rng, uniform01 } from './helpers/ref';

interface SampleArgs {
  n: number;
  vocab: number;
  logits: Float32Array;
  ld: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seeds: BigUint64Array;
  step: number;
}

function sample(a: SampleArgs, isa: string, withLogp = true): { out: Int32Array; logp: Float32Array } {
  const out = new Int32Array(a.n).fill(-7);
  const logp = new Float32Array(a.n).fill(NaN);
  op('sample', { ...a, out, outLogp: withLogp ? logp : undefined }, isa);
  return { out, logp };
}

function seedsFrom(rng: Rng, n: number): BigUint64Array {
  const s = new BigUint64Array(n);
  for (let i = 0; i < n; ++i) s[i] = (BigInt(rng.int(0, 2 ** 32)) << 32n) | BigInt(rng.int(0, 2 ** 32));
  return s;
}

function tile(row: number[], n: number, ld = row.length): Float32Array {
  const a = new Float32Array(n * ld).fill(NaN);
  for (let i = 0; i < n; ++i) a.set(row, i * ld);
  return a;
}

function argmax(x: ArrayLike<number>, off: number, n: number): number {
  let best = 0;
  for (let j = 1; j < n; ++j) if (x[off + j] > x[off + best]) best = j;
  return best;
}

/**
 * The documented algorithm in float64: candidates sorted by logit (ties by
 * index), cut to top_k, then to the shortest prefix whose mass reaches top_p,
 * then the first candidate whose cumulative weight exceeds u * total.
 * `margin` is how far u (and the top_p mass) is from a boundary, relative.
 */
function refPick(logits: ArrayLike<number>, off: number, vocab: number, temperature: number, topK: number, topP: number, u: number): { pick: number; margin: number } {
  const T = f32(temperature);
  if (T <= 0) return { pick: argmax(logits, off, vocab), margin: Infinity };
  const invT = f32(1 / T);
  const idx = Array.from({ length: vocab }, (_, j) => j).sort((a, b) => logits[off + b] - logits[off + a] || a - b);
  let keep = topK > 0 && topK < vocab ? topK : vocab;
  const m = f32(logits[off + idx[0]] * invT);
  const p = idx.slice(0, keep).map((j) => Math.exp(logits[off + j] * invT - m));
  let total = p.reduce((s, x) => s + x, 0);
  let margin = Infinity;
  const tp = f32(topP);
  if (tp < 1) {
    let mass = 0, j = 0;
    for (; j < keep; ++j) {
      mass += p[j] / total;
      margin = Math.min(margin, Math.abs(mass - tp));
      if (mass >= tp) break;
    }
    keep = Math.min(keep, j + 1);
    total = p.slice(0, keep).reduce((s, x) => s + x, 0);
  }
  const uu = u * total;
  let c = 0;
  for (let j = 0; j < keep; ++j) {
    c += p[j];
    margin = Math.min(margin, Math.abs(uu - c) / total);
    if (uu < c) return { pick: idx[j], margin };
  }
  return { pick: idx[keep - 1], margin };
}

function logpRef(logits: ArrayLike<number>, off: number, vocab: number, temperature: number, pick: number): { logp: number; tol: number } {
  const T = f32(temperature);
  const invT = T > 0 ? f32(1 / T) : 1;
  const z = new Float64Array(vocab);
  let zmax = 0;
  for (let j = 0; j < vocab; ++j) {
    z[j] = logits[off + j] * invT;
    if (Number.isFinite(z[j])) zmax = Math.max(zmax, Math.abs(z[j]));
  }
  const st = lseStats(z);
  const logp = z[pick] - st.lse;
  return { logp, tol: (4 * zmax + 8 + 4 * Math.sqrt(vocab) + 2 * Math.abs(st.lse) + 2 * Math.abs(logp)) * EPS32 };
}

/** Counts within 4 sigma of n * probs (binomial per category). */
function expectFrequencies(t: Test, picks: Int32Array, probs: number[], what: string) {
  const n = picks.length;
  const counts = new Array(probs.length).fill(0);
  let outside = 0;
  for (const p of picks) {
    if (p >= 0 && p < probs.length) counts[p]++;
    else outside++;
  }
  let ok = outside === 0;
  const parts: string[] = [];
  for (let j = 0; j < probs.length; ++j) {
    const mean = n * probs[j], sigma = Math.sqrt(n * probs[j] * (1 - probs[j]));
    const z = sigma > 0 ? (counts[j] - mean) / sigma : counts[j] === mean ? 0 : Infinity;
    if (!(Math.abs(z) <= 4)) ok = false;
    parts.push(`${j}: ${counts[j]} vs ${mean.toFixed(1)} (${z.toFixed(2)} sigma)`);
  }
  t.ok(ok, `${what}: ${parts.join(', ')}${outside ? `, ${outside} out of range` : ''}`);
}

function softmax(x: number[], T = 1): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp((v - m) / T));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

// Five logits, well spread; the top two are index 3 then index 0.
const FIVE = [1.0, 0.5, -0.3, 2.0, 0.0].map(f32);

t.test('temperature 0 is argmax, first index on ties; out_logp is the untempered log-softmax', async (t) => {
  const rng = new Rng(1);
  const vocab = 257, n = 33, ld = vocab + 3;
  const logits = new Float32Array(n * ld).fill(NaN);
  for (let i = 0; i < n; ++i) for (let j = 0; j < vocab; ++j) logits[i * ld + j] = Math.round(4 * rng.normal()) / 2; // many ties
  for (let i = 0; i < n; ++i) {
    // a tie for the maximum in every row, at two random positions
    const a = rng.int(0, vocab), b = rng.int(0, vocab);
    logits[i * ld + a] = logits[i * ld + b] = 100;
  }
  const want = Int32Array.from({ length: n }, (_, i) => argmax(logits, i * ld, vocab));
  const seeds = seedsFrom(rng, n);
  for (const isa of KERNELS) {
    const { out, logp } = sample({ n, vocab, logits, ld, temperature: 0, seeds, step: 5 }, isa);
    expectEqual(t, out, want, `${isa}: argmax`);
    const ref = Array.from(out, (p, i) => logpRef(logits, i * ld, vocab, 0, p));
    expectClose(t, logp, ref.map((r) => r.logp), ref.map((r) => r.tol), `${isa}: out_logp`);
  }
});

t.test('top_k = 1 is argmax at any temperature; top_p tiny is argmax', async (t) => {
  const rng = new Rng(2);
  const vocab = 100, n = 65;
  const logits = new Float32Array(n * vocab);
  for (let i = 0; i < n * vocab; ++i) logits[i] = Math.round(3 * rng.normal());
  const want = Int32Array.from({ length: n }, (_, i) => argmax(logits, i * vocab, vocab));
  const seeds = seedsFrom(rng, n);
  for (const isa of KERNELS)
    for (const temperature of [0.1, 0.7, 1, 3, 100]) {
      expectEqual(t, sample({ n, vocab, logits, ld: vocab, temperature, topK: 1, seeds, step: 1 }, isa).out, want, `${isa}: T=${temperature} top_k=1`);
      expectEqual(t, sample({ n, vocab, logits, ld: vocab, temperature, topP: 1e-6, seeds, step: 2 }, isa).out, want, `${isa}: T=${temperature} top_p=1e-6`);
    }
});

t.test('random logits: the pick is the one the float64 replica makes from u = uniform01(seed, step); out_logp', async (t) => {
  const rng = new Rng(3);
  const configs: { vocab: number; temperature: number; topK: number; topP: number; banned?: number }[] = [
    { vocab: 257, temperature: 1, topK: 0, topP: 1 },
    { vocab: 257, temperature: 0.7, topK: 0, topP: 1 },
    { vocab: 31, temperature: 1.3, topK: 7, topP: 1 },
    { vocab: 100, temperature: 1, topK: 0, topP: 0.9 },
    { vocab: 65, temperature: 0.8, topK: 13, topP: 0.5 },
    { vocab: 17, temperature: 2, topK: 300, topP: 0.95 },
    { vocab: 1, temperature: 1, topK: 0, topP: 1 },
    { vocab: 1100, temperature: 0.5, topK: 50, topP: 0.8 },
    // Banned tokens (logit -inf, about half of them): never picked, even when top_k reaches past the allowed ones.
    { vocab: 33, temperature: 1, topK: 0, topP: 1, banned: 0.5 },
    { vocab: 33, temperature: 0.9, topK: 30, topP: 1, banned: 0.5 },
    { vocab: 65, temperature: 1.1, topK: 0, topP: 0.9, banned: 0.7 },
  ];
  for (const cfg of configs) {
    const { vocab } = cfg;
    const n = 300, ld = vocab + 1;
    const logits = new Float32Array(n * ld).fill(NaN);
    for (let i = 0; i < n; ++i) for (let j = 0; j < vocab; ++j) logits[i * ld + j] = cfg.banned && rng.uniform() < cfg.banned ? -Infinity : 2 * rng.normal();
    if (cfg.banned) for (let i = 0; i < n; ++i) logits[i * ld + rng.int(0, vocab)] = 2 * rng.normal(); // at least one allowed token
    const seeds = seedsFrom(rng, n);
    const step = rng.int(0, 1 << 30);
    const want = new Int32Array(n), checked: number[] = [];
    for (let i = 0; i < n; ++i) {
      const r = refPick(logits, i * ld, vocab, cfg.temperature, cfg.topK, cfg.topP, uniform01(seeds[i], BigInt(step)));
      want[i] = r.pick;
      if (r.margin > 1e-9) checked.push(i);
    }
    await t.test(`vocab=${vocab} T=${cfg.temperature} top_k=${cfg.topK} top_p=${cfg.topP}${cfg.banned ? ` banned~${cfg.banned}` : ''}`, async (t) => {
      const picks: Int32Array[] = [];
      for (const isa of KERNELS) {
        const { out, logp } = sample({ n, vocab, logits, ld, temperature: cfg.temperature, topK: cfg.topK, topP: cfg.topP, seeds, step }, isa);
        t.ok(checked.length >= n - 2, `${isa}: ${checked.length} of ${n} rows away from a bucket boundary`);
        expectEqual(t, out, want, `${isa}: picks`, checked);
        if (cfg.banned) t.ok(out.every((p, i) => logits[i * ld + p] > -Infinity), `${isa}: no banned token picked`);
        const ref = Array.from(out, (p, i) => logpRef(logits, i * ld, vocab, cfg.temperature, p));
        expectClose(t, logp, ref.map((r) => r.logp), ref.map((r) => r.tol), `${isa}: out_logp = log softmax(logits/T)[pick]`);
        picks.push(out);
      }
      if (picks.length > 1) expectEqual(t, picks[picks.length - 1], picks[0], `picks identical for every kernel`);
    });
  }
});

t.test('frequencies: 4000 rows with distinct seeds at temperature 1 match softmax within 4 sigma', async (t) => {
  const n = 4000, vocab = 5;
  const logits = tile(FIVE, n);
  const seeds = seedsFrom(new Rng(4), n);
  const probs = softmax(FIVE);
  for (const isa of KERNELS) {
    const { out, logp } = sample({ n, vocab, logits, ld: vocab, temperature: 1, seeds, step: 0 }, isa);
    expectFrequencies(t, out, probs, `${isa}: T=1`);
    expectClose(t, logp, Array.from(out, (p) => Math.log(probs[p])), 2e-6, `${isa}: out_logp = log p[pick]`);
  }
  // Temperature 2 flattens the distribution.
  const probs2 = softmax(FIVE, f32(2));
  for (const isa of KERNELS) {
    const { out, logp } = sample({ n, vocab, logits, ld: vocab, temperature: 2, seeds, step: 1 }, isa);
    expectFrequencies(t, out, probs2, `${isa}: T=2`);
    expectClose(t, logp, Array.from(out, (p) => Math.log(probs2[p])), 2e-6, `${isa}: T=2 out_logp = log softmax(logits/2)[pick]`);
  }
});

t.test('frequencies: top_k = 2 keeps only the top two, at their renormalised odds', async (t) => {
  const n = 4000, vocab = 5;
  const logits = tile(FIVE, n, 7);
  const seeds = seedsFrom(new Rng(5), n);
  const p = softmax(FIVE);
  const pair = p[3] + p[0];
  const probs = [p[0] / pair, 0, 0, p[3] / pair, 0];
  for (const isa of KERNELS) {
    const { out, logp } = sample({ n, vocab, logits, ld: 7, temperature: 1, topK: 2, seeds, step: 9 }, isa);
    t.ok(out.every((x) => x === 3 || x === 0), `${isa}: only indices 3 and 0 appear`);
    expectFrequencies(t, out, probs, `${isa}: top_k=2`);
    // out_logp is under the full softmax, not the truncated one.
    expectClose(t, logp, Array.from(out, (x) => Math.log(p[x])), 2e-6, `${isa}: out_logp under the full softmax`);
  }
});

t.test('determinism: same seeds and step give the same picks; the step moves them; rows depend only on their seed', async (t) => {
  const n = 4000, vocab = 5;
  const logits = tile(FIVE, n);
  const seeds = seedsFrom(new Rng(6), n);
  const probs = softmax(FIVE);
  for (const isa of KERNELS) {
    const a = sample({ n, vocab, logits, ld: vocab, temperature: 1, seeds, step: 17 }, isa).out;
    const b = sample({ n, vocab, logits, ld: vocab, temperature: 1, seeds, step: 17 }, isa).out;
    expectEqual(t, b, a, `${isa}: same seeds + step -> same picks`);
    const c = sample({ n, vocab, logits, ld: vocab, temperature: 1, seeds, step: 18 }, isa).out;
    let differ = 0;
    for (let i = 0; i < n; ++i) if (a[i] !== c[i]) differ++;
    // Two independent draws agree with probability sum p^2.
    const agree = probs.reduce((s, x) => s + x * x, 0);
    const mean = n * (1 - agree), sigma = Math.sqrt(n * agree * (1 - agree));
    t.ok(Math.abs(differ - mean) <= 4 * sigma, `${isa}: step 17 vs 18: ${differ} of ${n} picks differ (expected ${mean.toFixed(0)} +- ${(4 * sigma).toFixed(0)})`);
    // One seed in every row: every row picks the same token.
    const same = sample({ n: 64, vocab, logits, ld: vocab, temperature: 1, seeds: new BigUint64Array(64).fill(seeds[0]), step: 17 }, isa).out;
    t.ok(same.every((x) => x === a[0]), `${isa}: 64 rows with seed[0] all pick ${a[0]}`);
  }
  // One seed, 4000 steps: the picks over steps follow softmax too.
  for (const isa of KERNELS) {
    const picks = new Int32Array(4000);
    const one = new BigUint64Array([seeds[1]]);
    const row = Float32Array.from(FIVE);
    for (let s = 0; s < picks.length; ++s) picks[s] = sample({ n: 1, vocab, logits: row, ld: vocab, temperature: 1, seeds: one, step: s }, isa, false).out[0];
    expectFrequencies(t, picks, probs, `${isa}: one seed over 4000 steps`);
  }
});

t.test('uniform01 replica: the BigInt splitmix64 matches known values', async (t) => {
  // splitmix64 finaliser of 0 (mix64(0)) is 0xe220a8397b1dcdaf, a published constant of SplitMix64's first output.
  t.equal(mix64(0n), 0xe220a8397b1dcdafn);
  const u = uniform01(12345n, 0n);
  t.ok(u >= 0 && u < 1 && Number.isInteger(u * 16777216), 'uniform01 has 24 bits');
});
