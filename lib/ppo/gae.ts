/**
 * The per-token arithmetic of a PPO rollout, in float64 over ragged rows (one
 * Float64Array per response, one entry per response token): the KL estimate
 * against the reference, the shaped rewards, generalised advantage estimation
 * and masked whitening. These are the steps TRL's PPOTrainer runs between
 * generation and the PPO epochs; docs/ppo.md gives the formulas and sources.
 *
 * None of this touches the model: the stage passes in log-probs and values it
 * read from the engine and hands the results to the native `ppo_loss` op.
 */
import { RlhfError } from '../errors';

export type RewardKlEstimator = 'k1' | 'k3';

/**
 * Per-token KL estimate of the policy against the reference for tokens
 * sampled from the policy, d = logp - ref_logp (Schulman 2020):
 * k1 = d (unbiased; TRL's default `kl_estimator="k1"`),
 * k3 = exp(-d) - 1 + d (unbiased, never negative), computed as expm1(-d) + d.
 */
export function klPerToken(logp: ArrayLike<number>, refLogp: ArrayLike<number>, estimator: RewardKlEstimator = 'k1'): Float64Array {
  if (logp.length !== refLogp.length) throw new RlhfError('E_ARGUMENT', `klPerToken: ${logp.length} log-probs but ${refLogp.length} reference log-probs`);
  const out = new Float64Array(logp.length);
  for (let t = 0; t < logp.length; t++) {
    const d = logp[t] - refLogp[t];
    out[t] = estimator === 'k3' ? Math.expm1(-d) + d : d;
  }
  return out;
}

/**
 * The rewards PPO optimises, per token (InstructGPT; TRL's PPOTrainer):
 *   r_t = -klCoef * kl_t           for every response token,
 *   r_{T-1} += score               at the last response token.
 * A row with no tokens gets no reward (and the score is dropped).
 */
export function shapeRewards(kl: readonly Float64Array[], scores: ArrayLike<number>, klCoef: number): Float64Array[] {
  if (kl.length !== scores.length) throw new RlhfError('E_ARGUMENT', `shapeRewards: ${kl.length} rows but ${scores.length} scores`);
  return kl.map((row, b) => {
    const r = new Float64Array(row.length);
    for (let t = 0; t < row.length; t++) r[t] = -klCoef * row[t];
    if (row.length > 0) r[row.length - 1] += scores[b];
    return r;
  });
}

/**
 * Generalised advantage estimation (Schulman et al. 2016), per row, the
 * response being one episode that ends after its last token (the value after
 * the end is 0):
 *   delta_t = r_t + gamma V_{t+1} - V_t
 *   A_t     = delta_t + gamma lam A_{t+1}
 *   R_t     = A_t + V_t            (the value targets, "returns")
 */
export function gae(rewards: readonly Float64Array[], values: readonly ArrayLike<number>[], gamma: number, lam: number): { advantages: Float64Array[]; returns: Float64Array[] } {
  if (rewards.length !== values.length) throw new RlhfError('E_ARGUMENT', `gae: ${rewards.length} reward rows but ${values.length} value rows`);
  const advantages: Float64Array[] = [], returns: Float64Array[] = [];
  rewards.forEach((r, b) => {
    const v = values[b];
    const n = r.length;
    if (v.length !== n) throw new RlhfError('E_ARGUMENT', `gae: row ${b} has ${n} rewards but ${v.length} values`);
    const a = new Float64Array(n), ret = new Float64Array(n);
    let last = 0;
    for (let t = n - 1; t >= 0; t--) {
      const next = t + 1 < n ? v[t + 1] : 0;
      const delta = r[t] + gamma * next - v[t];
      last = delta + gamma * lam * last;
      a[t] = last;
      ret[t] = last + v[t];
    }
    advantages.push(a);
    returns.push(ret);
  });
  return { advantages, returns };
}

/**
 * Whitening over every token of every row, as TRL's `masked_whiten`:
 * (x - mean) / sqrt(var + 1e-8) with the unbiased (n - 1) variance; with
 * `shiftMean` false the mean is added back (scale only, as TRL whitens
 * rewards). Fewer than two tokens have no spread: the result is then
 * x - mean (0) with shiftMean, x unchanged without.
 */
export function maskedWhiten(rows: readonly Float64Array[], shiftMean = true): Float64Array[] {
  let n = 0, sum = 0;
  for (const r of rows) for (const x of r) (sum += x), n++;
  const mean = n > 0 ? sum / n : 0;
  if (n < 2) return rows.map((r) => (shiftMean ? r.map((x) => x - mean) : Float64Array.from(r)));
  let ss = 0;
  for (const r of rows) for (const x of r) ss += (x - mean) * (x - mean);
  const inv = 1 / Math.sqrt(ss / (n - 1) + 1e-8);
  return rows.map((r) => r.map((x) => (x - mean) * inv + (shiftMean ? 0 : mean)));
}
