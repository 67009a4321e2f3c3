/**
 * PPO's loss, in one place: the native `ppo_loss` op over a minibatch's
 * response tokens, and the gradients of the critic (clipped value loss) and
 * of the policy (clipped surrogate and entropy bonus) accumulated over
 * micro-batches. See docs/losses.md.
 */
import { callNative } from '../../errors';
import { native } from '../../native';
import type { Trainer } from '../../engine/train';
import type { PromptIds } from '../../data/prompts';

export interface PpoLossInput {
  logp: Float32Array;
  oldLogp: Float32Array;
  advantages: Float32Array;
  values?: Float32Array;
  oldValues?: Float32Array;
  returns?: Float32Array;
  refLogp?: Float32Array;
  entropy?: Float32Array;
  clipRange: number;
  clipRangeValue: number;
  vfCoef: number;
  entCoef?: number;
  gradScale?: number;
  /** Which gradients to return. */
  want?: { dlogp?: boolean; dvalues?: boolean; dentropy?: boolean };
}

export interface PpoLossOutput {
  loss: number;
  pgLoss: number;
  vfLoss: number;
  kl: number;
  entropy: number;
  approxKl: number;
  clipfrac: number;
  vfClipfrac: number;
  ratioMean: number;
  tokens: number;
  dlogp?: Float32Array;
  dvalues?: Float32Array;
  dentropy?: Float32Array;
}

/** The native `ppo_loss` op over n tokens (no mask: the caller passes response tokens only). */
export function ppoLoss(x: PpoLossInput): PpoLossOutput {
  const n = x.logp.length;
  const loss = new Float32Array(1), stats = new Float32Array(9);
  const dlogp = x.want?.dlogp ? new Float32Array(n) : undefined;
  const dvalues = x.want?.dvalues ? new Float32Array(n) : undefined;
  const dentropy = x.want?.dentropy ? new Float32Array(n) : undefined;
  callNative(() =>
    native().runOp('ppo_loss', {
      n,
      logp: x.logp,
      oldLogp: x.oldLogp,
      advantages: x.advantages,
      values: x.values,
      oldValues: x.oldValues,
      returns: x.returns,
      refLogp: x.refLogp,
      entropy: x.entropy,
      clipRange: x.clipRange,
      clipRangeValue: x.clipRangeValue,
      vfCoef: x.vfCoef,
      klCoef: 0,
      entCoef: x.entCoef ?? 0,
      gradScale: x.gradScale ?? 1,
      loss,
      dlogp,
      dvalues,
      dentropy,
      stats,
    }),
  );
  return {
    loss: loss[0],
    pgLoss: stats[0],
    vfLoss: stats[1],
    kl: stats[2],
    entropy: stats[3],
    approxKl: stats[4],
    clipfrac: stats[5],
    vfClipfrac: stats[6],
    ratioMean: stats[7],
    tokens: stats[8],
    dlogp,
    dvalues,
    dentropy,
  };
}

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

/**
 * Gathers a training forward's per-position outputs at the response tokens
 * (width w per row: seq - 1 for log-probs, seq for values), and scatters
 * gradients back into the same flat layout, zero elsewhere.
 */
function gatherResponses(flat: Float32Array, w: number, rs: readonly Rollout[], n: number): Float32Array {
  const out = new Float32Array(n);
  let k = 0;
  rs.forEach((r, b) => {
    const P = r.prompt.ids.length, L = r.response.length;
    out.set(flat.subarray(b * w + P - 1, b * w + P - 1 + L), k);
    k += L;
  });
  return out;
}
function scatterResponses(src: Float32Array, w: number, rs: readonly Rollout[]): Float32Array {
  const dst = new Float32Array(rs.length * w);
  let k = 0;
  rs.forEach((r, b) => {
    const P = r.prompt.ids.length, L = r.response.length;
    dst.set(src.subarray(k, k + L), b * w + P - 1);
    k += L;
  });
  return dst;
}
function concat(rs: readonly Rollout[], pick: (r: Rollout) => Float32Array, n: number): Float32Array {
  const out = new Float32Array(n);
  let k = 0;
  for (const r of rs) out.set(pick(r), k), (k += r.response.length);
  return out;
}

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
    const f = await trainer.forward({ inputIds: ids, values: true, logp: false });
    const lp = concat(rs, (r) => r.oldLogp, n);
    const out = ppoLoss({
      logp: lp,
      oldLogp: lp,
      advantages: new Float32Array(n),
      values: gatherResponses(f.flat.values!, f.seq, rs, n),
      oldValues: concat(rs, (r) => r.oldValues, n),
      returns: concat(rs, (r) => r.returns, n),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      gradScale: n / total,
      want: { dvalues: true },
    });
    await trainer.backward({ dvalues: scatterResponses(out.dvalues!, f.seq, rs) });
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
    const f = await trainer.forward({ inputIds: ids, logp: true, temperature: o.temperature });
    const w = f.seq - 1;
    const out = ppoLoss({
      logp: gatherResponses(f.flat.logp!, w, rs, n),
      oldLogp: concat(rs, (r) => r.oldLogp, n),
      advantages: concat(rs, (r) => r.advantages, n),
      entropy: gatherResponses(f.flat.entropy!, w, rs, n),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      entCoef: o.entCoef,
      gradScale: n / total,
      want: { dlogp: true, dentropy: o.entCoef > 0 },
    });
    await trainer.backward({ dlogp: scatterResponses(out.dlogp!, w, rs), dentropy: out.dentropy ? scatterResponses(out.dentropy, w, rs) : undefined });
    pg += out.pgLoss * n;
    ent += out.entropy * n;
    akl += out.approxKl * n;
    clip += out.clipfrac * n;
    ratio += out.ratioMean * n;
    seqTokens += ids.reduce((s, x) => s + x.length, 0);
  }
  const d = total || 1;
  return { tokens: total, seqTokens, pgLoss: pg / d, entropy: ent / d, approxKl: akl / d, clipfrac: clip / d, ratio: ratio / d };
}
