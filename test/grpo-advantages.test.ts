// The critic-free advantages (lib/grpo/advantages.ts) against float64
// references written here from the papers' formulas, plus hand-worked cases
// whose every intermediate number is written out:
//
//   GRPO (Shao et al. 2024, eq. in 4.1.2; TRL 1.13's scale_rewards):
//     A_i = (r_i - mean_g) / (std_g + 1e-4), std_g the unbiased (n - 1) std of
//     the group; 'batch' divides by the unbiased std of every reward of the
//     batch (the mean is still the group's); 'none' (Dr. GRPO) divides by 1.
//   RLOO (Ahmadian et al. 2024, eq. 7): A_i = r_i - (1 / (G - 1)) sum_{j != i} r_j,
//     optionally whitened over the batch: (A - mean) / (std + 1e-4), unbiased std.
//   REINFORCE++ (Hu 2025, eqs. 8-10): per-token rewards -beta kl_t with the
//     score added at the last token, the advantage the reward-to-go with
//     gamma 1, whitened over every token of the batch:
//     (x - mean) / sqrt(var + 1e-8), var unbiased (verl's / TRL's masked_whiten).
//
// The references are plain loops over the definitions (the leave-one-out mean
// sums the other rewards, the reward-to-go sums the tail of each row), not the
// library's shortcuts (G/(G-1) (r - mean), GAE with lambda 1). Bound: 1e-12
// relative to the magnitudes (both sides are float64 over a few dozen terms).
import t from 'tap';
import type { Test } from 'tap';
import { grpoAdvantages, reinforcePlusPlusAdvantages, rlooAdvantages, STD_EPS } from '../lib/grpo/advantages';
import { Rng } from './helpers/ref';

function close(t: Test, got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol = 1e-12) {
  t.equal(got.length, want.length, `${what}: ${want.length} values`);
  let worst = 0, at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]) / Math.max(1, Math.abs(want[i]));
    if (!(e <= worst) || Number.isNaN(e)) (worst = Number.isNaN(e) ? Infinity : e), (at = i);
  }
  t.ok(worst <= tol, `${what}: max relative error ${worst.toExponential(2)} <= ${tol}` + (at >= 0 && worst > tol ? ` (at ${at}: ${got[at]} vs ${want[at]})` : ''));
}

// ------------------------------------------------------------------ float64 references

const avg = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
/** Unbiased (Bessel) standard deviation. */
const sampleStd = (xs: readonly number[]) => {
  const m = avg(xs);
  return Math.sqrt(xs.reduce((s, x) => s + (x - m) * (x - m), 0) / (xs.length - 1));
};
const groupsOf = (r: readonly number[], G: number) => Array.from({ length: r.length / G }, (_, g) => r.slice(g * G, (g + 1) * G));

function grpoRef(r: readonly number[], G: number, scale: 'group' | 'batch' | 'none') {
  const batchStd = sampleStd(r);
  const out: number[] = [], stds: number[] = [], zero: boolean[] = [];
  for (const grp of groupsOf(r, G)) {
    const m = avg(grp), s = sampleStd(grp);
    stds.push(s);
    zero.push(grp.every((x) => x === grp[0]));
    for (const x of grp) out.push((x - m) / (scale === 'group' ? s + 1e-4 : scale === 'batch' ? batchStd + 1e-4 : 1));
  }
  return { out, stds, zero };
}

function rlooRef(r: readonly number[], G: number, normalize: boolean) {
  const out: number[] = [];
  for (const grp of groupsOf(r, G))
    grp.forEach((x, i) => {
      let others = 0;
      grp.forEach((y, j) => j !== i && (others += y));
      out.push(x - others / (G - 1));
    });
  if (!normalize) return out;
  const m = avg(out), s = sampleStd(out);
  return out.map((a) => (a - m) / (s + 1e-4));
}

function reinforcePpRef(scores: readonly number[], kl: readonly number[][], beta: number): number[][] {
  const toGo = kl.map((row, b) =>
    row.map((_, t) => {
      let s = 0;
      for (let u = t; u < row.length; u++) s += -beta * row[u] + (u === row.length - 1 ? scores[b] : 0);
      return s;
    }),
  );
  const all = toGo.flat();
  if (all.length < 2) return toGo.map((row) => row.map((x) => x - avg(all)));
  const m = avg(all), v = all.reduce((s, x) => s + (x - m) * (x - m), 0) / (all.length - 1);
  return toGo.map((row) => row.map((x) => (x - m) / Math.sqrt(v + 1e-8)));
}

// ------------------------------------------------------------------ GRPO

t.test('grpoAdvantages: a hand-worked batch of two groups of 3', async (t) => {
  // Group 0: rewards 1, 0, 0.5: mean 0.5, deviations 0.5, -0.5, 0, squares sum 0.5,
  //   unbiased variance 0.5 / 2 = 0.25, std 0.5; A = +-0.5 / 0.5001 = +-0.99980004.., 0.
  // Group 1: rewards 2, 2, 2: std 0, A = 0 / 0.0001 = 0, flagged.
  const r = [1, 0, 0.5, 2, 2, 2];
  const g = grpoAdvantages(r, 3, 'group');
  close(t, g.advantages, [0.5 / 0.5001, -0.5 / 0.5001, 0, 0, 0, 0], 'group-scaled advantages');
  t.ok(Math.abs(g.advantages[0] - 0.9998000399920016) < 1e-15, `A_0 = 0.99980004 (${g.advantages[0]})`);
  close(t, g.groupStd, [0.5, 0], 'group std (unbiased)');
  t.same(g.zeroStd, [false, true], 'the equal-reward group is flagged');
  // 'batch': every reward's mean 7.5 / 6 = 1.25, squares 0.0625 + 1.5625 + 0.5625 + 3 * 0.5625 = 3.875,
  //   unbiased variance 3.875 / 5 = 0.775, std 0.88034084..; the group means stay.
  const b = grpoAdvantages(r, 3, 'batch');
  const sb = Math.sqrt(0.775);
  close(t, b.advantages, [0.5 / (sb + 1e-4), -0.5 / (sb + 1e-4), 0, 0, 0, 0], 'batch-scaled advantages');
  // 'none' (Dr. GRPO): the deviations themselves.
  close(t, grpoAdvantages(r, 3, 'none').advantages, [0.5, -0.5, 0, 0, 0, 0], 'unscaled advantages');
  t.equal(STD_EPS, 1e-4, "TRL's epsilon");
});

t.test('grpoAdvantages: random batches against the float64 formula', async (t) => {
  const rng = new Rng(5);
  for (const [groups, G] of [[1, 2], [3, 4], [8, 8], [5, 16]] as const)
    for (const scale of ['group', 'batch', 'none'] as const) {
      // Rewards of mixed kinds: continuous, binary (ties), and one constant group.
      const r: number[] = [];
      for (let g = 0; g < groups; g++)
        for (let j = 0; j < G; j++) r.push(g === 1 ? 0.25 : g % 3 === 2 ? (rng.uniform() < 0.5 ? 1 : 0) : rng.normal() * 3 + 1);
      const got = grpoAdvantages(r, G, scale), ref = grpoRef(r, G, scale);
      close(t, got.advantages, ref.out, `${groups} x ${G}, ${scale}`);
      close(t, got.groupStd, ref.stds, `${groups} x ${G}, ${scale}: group stds`);
      t.same(got.zeroStd, ref.zero, `${groups} x ${G}, ${scale}: zero-variance flags`);
      // Within each group the advantages sum to 0 (the group mean is the baseline).
      for (let g = 0; g < groups; g++) {
        const s = got.advantages.slice(g * G, (g + 1) * G).reduce((a, x) => a + x, 0);
        t.ok(Math.abs(s) < 1e-9, `${groups} x ${G}, ${scale}: group ${g} sums to 0 (${s.toExponential(1)})`);
      }
    }
});

t.test('grpoAdvantages: nearly equal rewards are not flagged; the 1e-4 keeps them finite', async (t) => {
  const r = [1, 1 + 1e-12, 1, 1];
  const g = grpoAdvantages(r, 4, 'group');
  t.same(g.zeroStd, [false], 'a group that differs in the last bits has a (tiny) signal');
  t.ok(g.advantages.every((a) => Number.isFinite(a) && Math.abs(a) < 1e-7), 'its advantages are tiny, not blown up by 1/std');
});

t.test('grpoAdvantages / rlooAdvantages: refuse groups of 1 and ragged batches', async (t) => {
  t.throws(() => grpoAdvantages([1, 2, 3], 1, 'group'), { code: 'E_ARGUMENT', message: /at least 2 samples/ });
  t.throws(() => grpoAdvantages([1, 2, 3], 2, 'group'), { code: 'E_ARGUMENT', message: /3 rewards are not a whole number of groups of 2/ });
  t.throws(() => rlooAdvantages([1, 2, 3, 4], 1, false), { code: 'E_ARGUMENT', message: /at least 2 samples/ });
  t.throws(() => rlooAdvantages([1, 2, 3, 4, 5], 4, false), { code: 'E_ARGUMENT', message: /not a whole number/ });
});

// ------------------------------------------------------------------ RLOO

t.test('rlooAdvantages: hand-worked leave-one-out baselines', async (t) => {
  // Group 0 (G = 3): 1 - (0 + 0.5) / 2 = 0.75; 0 - (1 + 0.5) / 2 = -0.75; 0.5 - (1 + 0) / 2 = 0.
  // Group 1: 4 - (2 + 0) / 2 = 3; 2 - (4 + 0) / 2 = 0; 0 - (4 + 2) / 2 = -3.
  const r = [1, 0, 0.5, 4, 2, 0];
  const a = rlooAdvantages(r, 3, false);
  close(t, a.advantages, [0.75, -0.75, 0, 3, 0, -3], 'leave-one-out advantages');
  close(t, a.groupStd, [0.5, 2], 'group stds');
  t.same(a.zeroStd, [false, false]);
  // Whitened: the six values have mean 0 and squares 0.5625 * 2 + 9 * 2 = 19.125, unbiased variance 3.825.
  const s = Math.sqrt(3.825);
  close(t, rlooAdvantages(r, 3, true).advantages, [0.75 / (s + 1e-4), -0.75 / (s + 1e-4), 0, 3 / (s + 1e-4), 0, -3 / (s + 1e-4)], 'whitened over the batch');
  // G = 2: each sample's baseline is the other's reward.
  close(t, rlooAdvantages([3, 1, 5, 5], 2, false).advantages, [2, -2, 0, 0], 'pairs');
  t.same(rlooAdvantages([3, 1, 5, 5], 2, false).zeroStd, [false, true], 'the equal pair is flagged');
});

t.test('rlooAdvantages: random batches against the float64 formula', async (t) => {
  const rng = new Rng(9);
  for (const [groups, G] of [[1, 2], [4, 3], [6, 8]] as const)
    for (const normalize of [false, true]) {
      const r = Array.from({ length: groups * G }, () => rng.normal() * 2 - 0.5);
      close(t, rlooAdvantages(r, G, normalize).advantages, rlooRef(r, G, normalize), `${groups} x ${G}, normalize ${normalize}`);
    }
});

// ------------------------------------------------------------------ REINFORCE++

t.test('reinforcePlusPlusAdvantages: a hand-worked batch', async (t) => {
  // Row 0: kl 0.1, -0.2, score 1, beta 0.5: rewards -0.05, 0.1 + 1 = 1.1; to go 1.05, 1.1.
  // Row 1: kl 0.4, score 0: rewards -0.2; to go -0.2.
  // Row 2: no tokens: nothing (its score is dropped).
  // All tokens 1.05, 1.1, -0.2: mean 0.65, deviations 0.4, 0.45, -0.85,
  //   squares 0.16 + 0.2025 + 0.7225 = 1.085, unbiased variance 0.5425.
  const a = reinforcePlusPlusAdvantages([1, 0, 7], [Float64Array.from([0.1, -0.2]), Float64Array.from([0.4]), new Float64Array(0)], 0.5);
  const sd = Math.sqrt(0.5425 + 1e-8);
  t.equal(a.length, 3);
  close(t, a[0], [0.4 / sd, 0.45 / sd], 'row 0');
  close(t, a[1], [-0.85 / sd], 'row 1');
  t.equal(a[2].length, 0, 'an empty row stays empty');
  t.ok(Math.abs(a[0][0] - 0.5430754) < 1e-7, `A_00 = 0.4 / 0.7365460 = 0.5430754 (${a[0][0]})`);
});

t.test('reinforcePlusPlusAdvantages: random batches against the float64 formula', async (t) => {
  const rng = new Rng(13);
  for (const [rows, maxLen, beta] of [[2, 3, 0], [5, 9, 0.05], [16, 20, 0.5]] as const) {
    const kl = Array.from({ length: rows }, (_, b) => Array.from({ length: b === 1 ? 1 : rng.int(0, maxLen + 1) }, () => rng.normal() * 0.2));
    const scores = Array.from({ length: rows }, () => rng.normal());
    const got = reinforcePlusPlusAdvantages(scores, kl.map((r) => Float64Array.from(r)), beta);
    const ref = reinforcePpRef(scores, kl, beta);
    got.forEach((row, b) => close(t, row, ref[b], `${rows} rows, beta ${beta}: row ${b} (${kl[b].length} tokens)`));
    const all = got.flatMap((r) => Array.from(r));
    t.ok(Math.abs(avg(all)) < 1e-12, `${rows} rows, beta ${beta}: whitened mean 0`);
    t.ok(Math.abs(sampleStd(all) - 1) < 1e-6, `${rows} rows, beta ${beta}: whitened unbiased std 1 (${sampleStd(all)})`);
  }
  // beta 0: every token of a row carries the row's score before whitening, so a row's advantages are all equal.
  const flat = reinforcePlusPlusAdvantages([2, -1], [Float64Array.from([9, 9, 9]), Float64Array.from([5, 5])], 0);
  t.ok(flat[0].every((x) => x === flat[0][0]) && flat[1].every((x) => x === flat[1][0]) && flat[0][0] > 0 && flat[1][0] < 0, 'beta 0: the KL plays no part');
});
