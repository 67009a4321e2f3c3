/**
 * PPO's loss, in one place: the gradients of the critic (clipped value loss)
 * and of the policy (clipped surrogate and entropy bonus) of a minibatch,
 * accumulated over micro-batches. Each micro-batch is a training forward
 * that keeps its outputs on the model's device, one loss call there
 * (`ppo_loss` over the response tokens, lib/engine/objectives.ts) and a
 * backward from the gradients it left. See docs/losses.md.
 */
import type { Trainer } from '../../engine/train';
import { scatterTokens, type PpoLossStats } from '../../engine/objectives';
import type { PromptIds } from '../../data/prompts';

/** One sampled response and everything the update needs about it. */
export interface Rollout {
  prompt: PromptIds;
  response: number[];
  /** Generation ended with an EOS token (which `response` then includes). */
  eos: boolean;
  score: number;
  parts: Record<string, number>;
  /** Per response token (length = response.length). */
  oldLogp: Float32Array;
  refLogp: Float32Array;
  oldValues: Float32Array;
  advantages: Float32Array;
  returns: Float32Array;
  /** Summed KL estimate (the rewards' estimator) over the response. */
  klSum: number;
}

// ------------------------------------------------------------------ one minibatch

export interface PpoUpdateOptions {
  cliprange: number;
  cliprangeValue: number;
  vfCoef: number;
  entCoef: number;
  /** The temperature the rollout log-probs were read at. */
  temperature: number;
  /** Rollouts per training forward; gradients accumulate over the minibatch. */
  microBatchSize: number;
}

/** Splits rows into micro-batches and returns, per micro-batch, the rows and their response-token count. */
function microBatches(mb: readonly Rollout[], size: number): Rollout[][] {
  const out: Rollout[][] = [];
  for (let i = 0; i < mb.length; i += size) {
    const rs = mb.slice(i, i + size);
    if (rs.some((r) => r.response.length > 0)) out.push(rs);
  }
  return out;
}

/** Per-token arrays of the rollouts at their response tokens, in a training forward's flat [rows, seq-1] layout (zeros elsewhere). */
function responseTokens(seq: number, rs: readonly Rollout[], pick: (r: Rollout) => ArrayLike<number>): Float32Array {
  return scatterTokens(
    seq,
    rs.map((r) => ({ start: r.prompt.ids.length - 1, values: pick(r) })),
  );
}
const ones = (r: Rollout) => new Float32Array(r.response.length).fill(1);

/**
 * One part's gradients for a minibatch (its adapter's, zeroed first,
 * accumulated over micro-batches, not stepped): each micro-batch is a
 * training forward of that part's outputs only, one `ppo_loss` call scaled by
 * its share of the minibatch's response tokens, and a backward. Returns the
 * loss statistics as token-weighted means over the minibatch.
 */
async function partGradients(trainer: Trainer, mb: readonly Rollout[], o: PpoUpdateOptions, part: 'critic' | 'policy'): Promise<{ tokens: number; seqTokens: number; stats: PpoLossStats }> {
  trainer.useAdapter(part);
  await trainer.zeroGrad();
  const total = mb.reduce((s, r) => s + r.response.length, 0);
  const sums: Record<string, number> = {};
  let seqTokens = 0;
  for (const rs of microBatches(mb, o.microBatchSize)) {
    const n = rs.reduce((s, r) => s + r.response.length, 0);
    const ids = rs.map((r) => [...r.prompt.ids, ...r.response]);
    // The critic: values only, so the loss call runs the clipped value loss alone; the policy:
    // log-probs (and entropies) only, the clipped surrogate and the entropy bonus.
    const { seq } = await trainer.forward(part === 'critic' ? { inputIds: ids, values: true, logp: false, download: false } : { inputIds: ids, logp: true, temperature: o.temperature, download: false });
    const tokens = (pick: (r: Rollout) => ArrayLike<number>) => responseTokens(seq, rs, pick);
    const out = await trainer.ppoLoss({
      mask: tokens(ones),
      ...(part === 'critic' ? { returns: tokens((r) => r.returns), oldValues: tokens((r) => r.oldValues) } : { oldLogp: tokens((r) => r.oldLogp), advantages: tokens((r) => r.advantages), entCoef: o.entCoef }),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      gradScale: n / total,
    });
    await trainer.backward({});
    for (const [k, v] of Object.entries(out)) sums[k] = (sums[k] ?? 0) + v * n;
    seqTokens += ids.reduce((s, x) => s + x.length, 0);
  }
  const d = total || 1;
  return { tokens: total, seqTokens, stats: Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / d])) as unknown as PpoLossStats };
}

/** The critic's gradients for one minibatch: the clipped value loss times vf_coef, a mean over every response token. */
export async function criticGradients(trainer: Trainer, mb: readonly Rollout[], o: PpoUpdateOptions): Promise<{ tokens: number; seqTokens: number; vfLoss: number; vfClipfrac: number }> {
  const { tokens, seqTokens, stats } = await partGradients(trainer, mb, o, 'critic');
  return { tokens, seqTokens, vfLoss: stats.vfLoss ?? 0, vfClipfrac: stats.vfClipfrac ?? 0 };
}

/** The policy's gradients for one minibatch: the clipped surrogate minus ent_coef times the mean entropy, a mean over every response token. */
export async function policyGradients(
  trainer: Trainer,
  mb: readonly Rollout[],
  o: PpoUpdateOptions,
): Promise<{ tokens: number; seqTokens: number; pgLoss: number; entropy: number; approxKl: number; clipfrac: number; ratio: number }> {
  const { tokens, seqTokens, stats: s } = await partGradients(trainer, mb, o, 'policy');
  return { tokens, seqTokens, pgLoss: s.pgLoss ?? 0, entropy: s.entropy ?? 0, approxKl: s.approxKl ?? 0, clipfrac: s.clipfrac ?? 0, ratio: s.ratio ?? 0 };
}
