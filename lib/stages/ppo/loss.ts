/**
 * PPO's loss, in one place: the gradients of the critic (clipped value loss)
 * and of the policy (clipped surrogate and entropy bonus) of a minibatch,
 * accumulated over micro-batches. Each micro-batch is a training forward
 * that keeps its outputs on the model's device, one loss call there
 * (`ppo_loss` over the response tokens, lib/engine/objectives.ts) and a
 * backward from the gradients it left. See docs/losses.md.
 */
import type { Trainer } from '../../engine/train';
import { scatterTokens } from '../../engine/objectives';
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
 * The critic's gradients for one minibatch (zeroed first, accumulated over
 * micro-batches, not stepped): the clipped value loss of `ppo_loss` times
 * vf_coef, a mean over every response token of the minibatch (each
 * micro-batch's op call is scaled by its share of the tokens).
 */
export async function criticGradients(trainer: Trainer, mb: readonly Rollout[], o: PpoUpdateOptions): Promise<{ tokens: number; seqTokens: number; vfLoss: number; vfClipfrac: number }> {
  trainer.useAdapter('critic');
  await trainer.zeroGrad();
  const total = mb.reduce((s, r) => s + r.response.length, 0);
  let vf = 0, vclip = 0, seqTokens = 0;
  for (const rs of microBatches(mb, o.microBatchSize)) {
    const n = rs.reduce((s, r) => s + r.response.length, 0);
    const ids = rs.map((r) => [...r.prompt.ids, ...r.response]);
    // Values only: the loss call runs the clipped value loss alone, on the model's backend.
    const { seq } = await trainer.forward({ inputIds: ids, values: true, logp: false, download: false });
    const out = await trainer.ppoLoss({
      mask: responseTokens(seq, rs, ones),
      returns: responseTokens(seq, rs, (r) => r.returns),
      oldValues: responseTokens(seq, rs, (r) => r.oldValues),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      gradScale: n / total,
    });
    await trainer.backward({});
    vf += out.vfLoss * n;
    vclip += out.vfClipfrac * n;
    seqTokens += ids.reduce((s, x) => s + x.length, 0);
  }
  return { tokens: total, seqTokens, vfLoss: total ? vf / total : 0, vfClipfrac: total ? vclip / total : 0 };
}

/**
 * The policy's gradients for one minibatch (zeroed first, accumulated, not
 * stepped): the clipped surrogate of `ppo_loss` minus ent_coef times the mean
 * entropy, a mean over every response token of the minibatch.
 */
export async function policyGradients(
  trainer: Trainer,
  mb: readonly Rollout[],
  o: PpoUpdateOptions,
): Promise<{ tokens: number; seqTokens: number; pgLoss: number; entropy: number; approxKl: number; clipfrac: number; ratio: number }> {
  trainer.useAdapter('policy');
  await trainer.zeroGrad();
  const total = mb.reduce((s, r) => s + r.response.length, 0);
  let pg = 0, ent = 0, akl = 0, clip = 0, ratio = 0, seqTokens = 0;
  for (const rs of microBatches(mb, o.microBatchSize)) {
    const n = rs.reduce((s, r) => s + r.response.length, 0);
    const ids = rs.map((r) => [...r.prompt.ids, ...r.response]);
    // Log-probs (and entropies) only: the loss call runs the clipped surrogate and the entropy bonus, on the model's backend.
    const { seq } = await trainer.forward({ inputIds: ids, logp: true, temperature: o.temperature, download: false });
    const out = await trainer.ppoLoss({
      mask: responseTokens(seq, rs, ones),
      oldLogp: responseTokens(seq, rs, (r) => r.oldLogp),
      advantages: responseTokens(seq, rs, (r) => r.advantages),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      entCoef: o.entCoef,
      gradScale: n / total,
    });
    await trainer.backward({});
    pg += out.pgLoss * n;
    ent += out.entropy * n;
    akl += out.approxKl * n;
    clip += out.clipfrac * n;
    ratio += out.ratio * n;
    seqTokens += ids.reduce((s, x) => s + x.length, 0);
  }
  const d = total || 1;
  return { tokens: total, seqTokens, pgLoss: pg / d, entropy: ent / d, approxKl: akl / d, clipfrac: clip / d, ratio: ratio / d };
}
