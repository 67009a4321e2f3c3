/**
 * The GRPO family's policy loss on the device: per micro-batch a training
 * forward of the policy's log-probs, one `ppo_loss` call and a backward; the
 * gradients of a minibatch accumulate into one optimizer step.
 *
 * The token losses are PPO's clipped surrogate with bounds 1 - epsilon and
 * 1 + epsilonHigh, plus beta times the k3 KL to the reference (GRPO only),
 * averaged as TRL 1.13's `loss_type` says, over the whole minibatch even
 * when it is split into micro-batches (the loss call's `denom`):
 *   dapo, bnpo  sum over tokens / tokens of the minibatch
 *   grpo        mean over sequences of each sequence's token mean (weights 1/length)
 *   dr_grpo     sum over tokens / (sequences x maxNewTokens)
 * RLOO's surrogate is of whole sequences (TRL's RLOOTrainer): the ratio of
 * the sequences' log-prob sums, clipped, averaged over sequences.
 */
import type { Trainer } from '../../engine/train';
import { scatterTokens, type PpoLossStats } from '../../engine/objectives';
import type { PromptIds } from '../../data/prompts';
import type { LossType, ResolvedGrpoConfig } from './config';

/** One sample and what the update needs of it. */
export interface GrpoSample {
  prompt: PromptIds;
  response: number[];
  eos: boolean;
  reward: number;
  /** Per response token: the policy's log-probs at sampling time, and the reference's (null with beta 0). */
  oldLogp: Float32Array;
  refLogp: Float32Array | null;
  /** Per response token (grpo: the sequence's advantage on every token; reinforce_pp: per token). */
  advantages: Float32Array;
  /** The sequence's advantage (rloo's surrogate). */
  advantage: number;
}

export interface GrpoLossOptions {
  /** Sequence-level ratio (rloo) instead of per token. */
  sequence: boolean;
  lossType: LossType;
  maxNewTokens: number;
  epsilon: number;
  epsilonHigh: number;
  /** The k3 KL's weight in the loss (0: none). */
  beta: number;
  /** The KL term times the probability ratio. */
  klTimesRatio: boolean;
  temperature: number;
  microBatchSize: number;
}

/** The loss options of a resolved config: the KL is in GRPO's loss only (rloo and reinforce_pp put it in the rewards). */
export function lossOptionsOf(cfg: ResolvedGrpoConfig): GrpoLossOptions {
  return {
    sequence: cfg.estimator === 'rloo',
    lossType: cfg.lossType,
    maxNewTokens: cfg.maxNewTokens,
    epsilon: cfg.epsilon,
    epsilonHigh: cfg.epsilonHigh,
    beta: cfg.estimator === 'grpo' ? cfg.beta : 0,
    klTimesRatio: cfg.klBiasCorrection,
    temperature: cfg.temperature,
    microBatchSize: cfg.microBatchSize,
  };
}

/** The minibatch's divisor and each sample's token weight, as `lossType` averages. */
export function lossWeights(mb: readonly GrpoSample[], o: Pick<GrpoLossOptions, 'sequence' | 'lossType' | 'maxNewTokens'>): { denom: number; weight: (s: GrpoSample) => number } {
  if (o.sequence || o.lossType === 'grpo') return { denom: Math.max(1, mb.length), weight: (s) => (o.sequence ? 1 : 1 / Math.max(1, s.response.length)) };
  if (o.lossType === 'dr_grpo') return { denom: Math.max(1, mb.length * o.maxNewTokens), weight: () => 1 };
  return { denom: Math.max(1, mb.reduce((n, s) => n + s.response.length, 0)), weight: () => 1 };
}

const sum = (xs: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return s;
};

/**
 * The policy's gradients for one minibatch (zeroed first, accumulated over
 * micro-batches, not stepped). Returns the loss statistics of the whole
 * minibatch (each micro-batch's are sums over the minibatch's divisor) and
 * the tokens that went through the forwards.
 */
export async function minibatchGradients(trainer: Trainer, mb: readonly GrpoSample[], o: GrpoLossOptions): Promise<{ stats: PpoLossStats; seqTokens: number }> {
  trainer.useAdapter('policy');
  await trainer.zeroGrad();
  const { denom, weight } = lossWeights(mb, o);
  const stats: Record<string, number> = {};
  let seqTokens = 0, weights = 0;
  for (let i = 0; i < mb.length; i += o.microBatchSize) {
    const rs = mb.slice(i, i + o.microBatchSize).filter((s) => s.response.length > 0);
    if (!rs.length) continue;
    const ids = rs.map((s) => [...s.prompt.ids, ...s.response]);
    const { seq } = await trainer.forward({ inputIds: ids, logp: true, temperature: o.temperature, download: false });
    const tokens = (pick: (s: GrpoSample) => ArrayLike<number>) => scatterTokens(seq, rs.map((s) => ({ start: s.prompt.ids.length - 1, values: pick(s) })));
    const mask = tokens((s) => new Float32Array(s.response.length).fill(o.sequence ? 1 : weight(s)));
    weights += o.sequence ? rs.length : rs.reduce((n, s) => n + weight(s) * s.response.length, 0);
    const out = o.sequence
      ? await trainer.ppoLoss({
          mask,
          sequence: true,
          oldLogp: Float32Array.from(rs, (s) => sum(s.oldLogp)),
          advantages: Float32Array.from(rs, (s) => s.advantage),
          clipRange: o.epsilon,
          clipRangeHigh: o.epsilonHigh,
          denom,
        })
      : await trainer.ppoLoss({
          mask,
          oldLogp: tokens((s) => s.oldLogp),
          advantages: tokens((s) => s.advantages),
          ...(o.beta > 0 ? { refLogp: tokens((s) => s.refLogp!), klCoef: o.beta, klEstimator: 'k3' as const, klTimesRatio: o.klTimesRatio } : {}),
          clipRange: o.epsilon,
          clipRangeHigh: o.epsilonHigh,
          denom,
        });
    await trainer.backward({});
    for (const [k, v] of Object.entries(out)) if (k !== 'tokens') stats[k] = (stats[k] ?? 0) + v;
    seqTokens += ids.reduce((n, x) => n + x.length, 0);
  }
  // The loss and its policy part are the objective (over `denom`); the other figures are means over the weighted tokens.
  const mean = (k: string) => ((stats[k] ?? 0) * denom) / Math.max(weights, 1e-30);
  return {
    stats: { loss: stats.loss ?? 0, pgLoss: stats.pgLoss ?? 0, vfLoss: 0, kl: mean('kl'), entropy: mean('entropy'), approxKl: mean('approxKl'), clipfrac: mean('clipfrac'), vfClipfrac: 0, ratio: mean('ratio'), tokens: denom },
    seqTokens,
  };
}
