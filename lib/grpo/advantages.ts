/**
 * The advantages of the critic-free policy-gradient methods, in float64: a
 * batch is `groups` prompts times G samples, sample j of prompt g at index
 * g*G + j (the order the rollout produces). No model here: the stage passes
 * in rewards and per-token log-probs and hands the results to the device
 * loss (`ppo_loss`). docs/grpo.md gives the formulas and their sources.
 *
 *   GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_g) / (std_g + 1e-4),
 *     std the unbiased (Bessel) standard deviation of the group, as TRL 1.13
 *     computes it; scale 'none' drops the division (Dr. GRPO, Liu et al.
 *     2025); 'batch' divides by the std of the whole batch.
 *   RLOO (Ahmadian et al. 2024): A_i = r_i - mean of the other G - 1 rewards
 *     of the group, optionally whitened over the batch.
 *   REINFORCE++ (Hu 2025): per-token rewards -beta*kl_t with the score added
 *     at the last token, the reward-to-go as the advantage, whitened over
 *     every token of the batch.
 */
import { RlhfError } from '../errors';
import { gae, maskedWhiten, shapeRewards } from '../ppo/gae';

/** TRL's guard against a zero standard deviation (`std + 1e-4`). */
export const STD_EPS = 1e-4;

export type RewardScale = 'group' | 'batch' | 'none';

const checkGroups = (n: number, G: number, what: string) => {
  if (!Number.isInteger(G) || G < 2) throw new RlhfError('E_ARGUMENT', `${what}: a group needs at least 2 samples, got ${G}`);
  if (n % G !== 0) throw new RlhfError('E_ARGUMENT', `${what}: ${n} rewards are not a whole number of groups of ${G}`);
};

/** Mean and unbiased standard deviation of xs[from, from + n). */
function meanStd(xs: ArrayLike<number>, from: number, n: number): { mean: number; std: number } {
  let s = 0;
  for (let i = 0; i < n; i++) s += xs[from + i];
  const mean = s / n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (xs[from + i] - mean) ** 2;
  return { mean, std: n > 1 ? Math.sqrt(ss / (n - 1)) : 0 };
}

export interface GroupAdvantages {
  /** One per sample. */
  advantages: Float64Array;
  /** Per group: the unbiased standard deviation of its rewards. */
  groupStd: Float64Array;
  /** Per group: all its rewards equal (no learning signal; DAPO drops such groups). */
  zeroStd: boolean[];
}

/** GRPO's group-normalised advantages (see the file comment). */
export function grpoAdvantages(rewards: ArrayLike<number>, G: number, scale: RewardScale): GroupAdvantages {
  checkGroups(rewards.length, G, 'grpoAdvantages');
  const groups = rewards.length / G;
  const advantages = new Float64Array(rewards.length), groupStd = new Float64Array(groups);
  const zeroStd: boolean[] = [];
  const batchStd = scale === 'batch' ? meanStd(rewards, 0, rewards.length).std : 0;
  for (let g = 0; g < groups; g++) {
    const { mean, std } = meanStd(rewards, g * G, G);
    groupStd[g] = std;
    zeroStd.push(isZeroStd(rewards, g * G, G));
    const div = scale === 'group' ? std + STD_EPS : scale === 'batch' ? batchStd + STD_EPS : 1;
    for (let j = 0; j < G; j++) advantages[g * G + j] = (rewards[g * G + j] - mean) / div;
  }
  return { advantages, groupStd, zeroStd };
}

/** Every reward of the group equal: exactly, so a group of equal rewards never passes for varied. */
function isZeroStd(xs: ArrayLike<number>, from: number, n: number): boolean {
  for (let i = 1; i < n; i++) if (xs[from + i] !== xs[from]) return false;
  return true;
}

/** RLOO's leave-one-out advantages; `normalize` whitens them over the batch (TRL's normalize_advantages). */
export function rlooAdvantages(rewards: ArrayLike<number>, G: number, normalize: boolean): GroupAdvantages {
  checkGroups(rewards.length, G, 'rlooAdvantages');
  const groups = rewards.length / G;
  let advantages = new Float64Array(rewards.length);
  const groupStd = new Float64Array(groups), zeroStd: boolean[] = [];
  for (let g = 0; g < groups; g++) {
    let sum = 0;
    for (let j = 0; j < G; j++) sum += rewards[g * G + j];
    for (let j = 0; j < G; j++) {
      const r = rewards[g * G + j];
      advantages[g * G + j] = r - (sum - r) / (G - 1);
    }
    groupStd[g] = meanStd(rewards, g * G, G).std;
    zeroStd.push(isZeroStd(rewards, g * G, G));
  }
  if (normalize) {
    const { mean, std } = meanStd(advantages, 0, advantages.length);
    advantages = advantages.map((a) => (a - mean) / (std + STD_EPS));
  }
  return { advantages, groupStd, zeroStd };
}

/**
 * REINFORCE++'s per-token advantages: rewards shaped by the per-token KL
 * (klRows, already the estimate chosen) with the score at the last token,
 * summed to go (gamma 1), whitened over every token of the batch.
 */
export function reinforcePlusPlusAdvantages(scores: ArrayLike<number>, klRows: readonly Float64Array[], beta: number): Float64Array[] {
  const shaped = shapeRewards(klRows, scores, beta);
  // GAE with lambda 1, gamma 1 and zero values is the reward-to-go.
  const toGo = gae(
    shaped,
    shaped.map((r) => new Float64Array(r.length)),
    1,
    1,
  ).advantages;
  return maskedWhiten(toGo, true);
}
