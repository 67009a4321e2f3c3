/**
 * The training objectives on the engine's own device: SFT, the reward
 * model's pairwise loss, DPO and PPO, each one loss call that runs the loss
 * kernels where the model lives (CPU, or the CUDA kernels of
 * kernels/loss.cu) over the outputs the last training forward left there,
 * leaves the gradients there for the next backward(), and returns only named
 * scalars. Per micro-batch nothing per token comes back to JS.
 *
 * How a stage uses it (Trainer methods, lib/engine/train.ts):
 *
 *   // reward model: chosen rows then rejected rows in one forward
 *   await trainer.forward({ inputIds: [...chosen, ...rejected], values: true, logp: false, download: false });
 *   const s = await trainer.pairwiseLoss({ margins, gradScale });   // {loss, accuracy, margin, chosen, rejected}
 *   await trainer.backward({});                                       // takes the gradient the loss left on the device
 *
 *   // SFT: the gradient -mask / denom is known before the forward, which
 *   // computes the LM head's gradient in the same pass over the logits
 *   await trainer.forward({ inputIds, sftLoss: { mask, denom }, download: false });
 *   const s = await trainer.sftLoss();                                // {loss, tokens, nllSum} from the device logp
 *   await trainer.backward({});
 *
 *   // DPO: the reference sums come from a separate non-training forward
 *   await trainer.forward({ inputIds: [...chosen, ...rejected], download: false });
 *   const s = await trainer.dpoLoss({ mask: spanMask(seq, spans), refChosen, refRejected, beta, gradScale });
 *   await trainer.backward({});
 *
 *   // PPO: critic and policy are two forwards (two adapters); per-token
 *   // rollout arrays are scattered on the host into the forward's layout
 *   await trainer.forward({ inputIds, values: true, logp: false, download: false });
 *   await trainer.ppoLoss({ mask, returns, oldValues, clipRangeValue, vfCoef, gradScale });
 *   await trainer.backward({});
 *   await trainer.forward({ inputIds, logp: true, temperature, download: false });
 *   await trainer.ppoLoss({ mask, oldLogp, advantages, clipRange, entCoef, gradScale });
 *   await trainer.backward({});
 *
 * Layouts (the forward's own, as `ForwardOutput.flat` has them): per-token
 * arrays are flat [batch, seq-1], position b*(seq-1)+t for the prediction of
 * token t+1 of row b (for the critic: the value of the prefix up to token t,
 * TRL's values[context_length - 1 : -1]); `seq` is the forward's
 * (`ForwardOutput.seq`: the longest row). `spanMask` and `scatterTokens` build
 * them from per-row spans and arrays. Per-pair arrays have one entry per
 * pair: rows 0..b-1 of the forward are the chosen sequences, rows b..2b-1 the
 * rejected ones.
 *
 * Gradients are of gradScale * loss (the loss itself is not scaled), so
 * micro-batches accumulate into one optimizer step. A loss call replaces the
 * gradients an earlier one left; a training forward discards them; backward()
 * consumes them, and refuses a host array for an output whose gradient the
 * loss call already left on the device.
 *
 * Evaluation (Model methods, lib/engine/model.ts): the same kinds but PPO
 * over the outputs of the last INFERENCE forward (`model.forward`, with
 * `download: false` so that nothing per token comes back), computing the
 * loss and its statistics with no gradients; nothing is left for backward()
 * and a training loss call's pending gradients stay as they were. Held-out
 * evaluation and DPO's reference log-probs:
 *
 *   await model.forward({ inputIds, download: false });
 *   const s = await model.sftLoss({ mask });                          // {loss, tokens, nllSum}
 *   await model.forward({ inputIds: [...chosen, ...rejected], values: true, logp: false, download: false });
 *   const r = await model.pairwiseLoss({ margins });                  // {loss, accuracy, margin, chosen, rejected}
 *   await model.forward({ inputIds: [...chosen, ...rejected], download: false });
 *   const d = await model.dpoLoss({ mask, refChosen, refRejected, beta });
 *   const sums = await model.sequenceLogps({ mask });                 // Float32Array [batch]: DPO's reference
 *
 * An evaluation call reads the outputs of the last `model.forward` of that
 * model (a later forward replaces them; a training forward, generate and
 * backward leave them alone); without one it is refused (E_ARGUMENT).
 */
import { fromNative, RlhfError } from '../errors';
import type { NativeEvalLossRequest, NativeLossRequest, NativeModel } from '../native';

// ------------------------------------------------------------------ statistics

export interface SftLossStats {
  /** ((1 - eps) nllSum + eps smoothSum) / denom - entCoef entropy (eps: labelSmoothing; nllSum / denom without either). */
  loss: number;
  /** sum(mask): the target tokens of this micro-batch. */
  tokens: number;
  /** -sum(mask * logp). */
  nllSum: number;
  /** -sum(mask * mean_v log p_v): label smoothing's term; only with labelSmoothing != 0. */
  smoothSum?: number;
  /** sum(mask * entropy) / denom; only with entCoef != 0. */
  entropy?: number;
}

export interface PairwiseLossStats {
  /** mean over pairs of -log sigmoid(chosen - rejected - margin). */
  loss: number;
  /** fraction of pairs with chosen > rejected. */
  accuracy: number;
  /** mean of chosen - rejected (without the margins). */
  margin: number;
  /** mean reward of the chosen rows. */
  chosen: number;
  /** mean reward of the rejected rows. */
  rejected: number;
}

export interface DpoLossStats {
  /** mean over pairs of the family's loss (ORPO: plus the chosen completions' NLL). */
  loss: number;
  /** fraction of pairs whose chosen implicit reward beats the rejected one. */
  accuracy: number;
  /** mean beta * score of the chosen rows: (policy - reference) sequence log-prob, per token where the loss uses per-token scores. */
  rewardsChosen: number;
  rewardsRejected: number;
  /** rewardsChosen - rewardsRejected. */
  margin: number;
  /** mean policy sequence log-prob of the chosen / rejected completions. */
  logpsChosen: number;
  logpsRejected: number;
  pairs: number;
  /** ORPO only: the chosen completions' NLL (token mean) and the mean log odds ratio. */
  nll?: number;
  logOdds?: number;
}

export interface KtoLossStats {
  /** mean over rows of the weighted KTO loss. */
  loss: number;
  /** mean beta * (policy - reference) sequence log-prob over the desirable / undesirable rows. */
  rewardsChosen: number;
  rewardsRejected: number;
  /** mean policy sequence log-prob over the desirable / undesirable rows. */
  logpsChosen: number;
  logpsRejected: number;
  /** desirable and undesirable rows. */
  chosen: number;
  rejected: number;
  kl: number;
}

export interface PpoLossStats {
  /** pgLoss + vfCoef vfLoss + klCoef kl - entCoef entropy. */
  loss: number;
  pgLoss: number;
  /** 0.5 masked mean of the clipped squared value error (0 without a value part). */
  vfLoss: number;
  /** masked mean KL estimate to the reference (0 without refLogp). */
  kl: number;
  /** masked mean entropy of the policy (0 without a policy part). */
  entropy: number;
  /** 0.5 masked mean (logp - oldLogp)^2. */
  approxKl: number;
  clipfrac: number;
  vfClipfrac: number;
  /** masked mean probability ratio. */
  ratio: number;
  /** sum(mask); with `sequence`, the rows. Statistics are sums over `denom` when it is given. */
  tokens: number;
}

// ------------------------------------------------------------------ inputs

export interface SftLossInput {
  /** Loss mask, flat [batch, seq-1]; default: the one given to the forward (`sftLoss.mask`). */
  mask?: Float32Array;
  /** Denominator of the masked mean; default: the forward's, else sum(mask). */
  denom?: number;
  /**
   * Label smoothing eps in [0, 1]: each target token's term is (1 - eps)
   * (-log p_y) + eps (-(1/V) sum_v log p_v). Default: the forward's
   * (`sftLoss.labelSmoothing`), else 0.
   */
  labelSmoothing?: number;
  /**
   * Entropy bonus: subtracts entCoef times the masked mean entropy (same mask
   * and denominator) and sends its gradient to the forward's entropy output.
   * Needs a forward without a gradient (no `sftLoss` / `lmGrad`).
   */
  entCoef?: number;
  /**
   * Scale of the gradient. Only without a gradient given to the forward
   * (with `sftLoss` / `lmGrad` on the forward, the forward made the gradient
   * and this call only measures).
   */
  gradScale?: number;
}

export interface PairwiseLossInput {
  /** Index of each row's reward token (its last, by default: the last real token of each row). */
  last?: Int32Array | readonly number[];
  /** Per-pair margin (Llama 2), or null/absent for none. */
  margins?: Float32Array | null;
  /** Per-pair soft label P(chosen better) (AI feedback), or null/absent for 1: the loss becomes -p log sigmoid(z) - (1 - p) log sigmoid(-z). */
  targets?: Float32Array | null;
  gradScale?: number;
}

/** The DPO loss call's inputs (documented with the native request, lib/native.ts). */
export type DpoLossInput = Omit<Extract<NativeLossRequest, { kind: 'dpo' }>, 'kind'>;

/** The KTO loss call's inputs (documented with the native request, lib/native.ts). */
export type KtoLossInput = Omit<Extract<NativeLossRequest, { kind: 'kto' }>, 'kind'>;

/** The PPO loss call's inputs (documented with the native request, lib/native.ts). */
export type PpoLossInput = Omit<Extract<NativeLossRequest, { kind: 'ppo' }>, 'kind'>;

/** Evaluation inputs: those of the training calls without gradScale; SFT's mask is required (an inference forward keeps none). */
export interface SftEvalInput {
  /** Loss mask, flat [batch, seq-1]. */
  mask: Float32Array;
  /** Denominator of the masked mean; default max(1, sum(mask)). */
  denom?: number;
  /** Label smoothing eps in [0, 1]; default 0. */
  labelSmoothing?: number;
}
export type PairwiseEvalInput = Omit<PairwiseLossInput, 'gradScale'>;
export type DpoEvalInput = Omit<DpoLossInput, 'gradScale'>;
export type KtoEvalInput = Omit<KtoLossInput, 'gradScale'>;
export interface SequenceLogpsInput {
  /** Each row's completion tokens, flat [batch, seq-1] (see spanMask). */
  mask: Float32Array;
}

// ------------------------------------------------------------------ layout helpers

/** A flat [rows, seq-1] 0/1 mask with ones at positions [from, to) of each row (spans in the forward's logp layout). */
export function spanMask(seq: number, spans: readonly (readonly [number, number])[]): Float32Array {
  const w = seq - 1;
  const m = new Float32Array(spans.length * w);
  spans.forEach(([from, to], row) => {
    if (from < 0 || to > w || from > to) throw new RlhfError('E_ARGUMENT', `spanMask: span [${from}, ${to}) of row ${row} is outside [0, ${w})`);
    m.fill(1, row * w + from, row * w + to);
  });
  return m;
}

/** Per-row arrays placed at `start` of each row of a flat [rows, seq-1] array (zeros elsewhere). */
export function scatterTokens(seq: number, rows: readonly { start: number; values: ArrayLike<number> }[]): Float32Array {
  const w = seq - 1;
  const out = new Float32Array(rows.length * w);
  rows.forEach(({ start, values }, row) => {
    if (start < 0 || start + values.length > w)
      throw new RlhfError('E_ARGUMENT', `scatterTokens: ${values.length} values at ${start} of row ${row} do not fit in ${w} positions`);
    out.set(values, row * w + start);
  });
  return out;
}

// ------------------------------------------------------------------ the calls

async function run(handle: NativeModel, req: NativeLossRequest): Promise<Record<string, number>> {
  return handle.loss(req).catch((e: unknown) => {
    throw fromNative(e);
  });
}

const opt = <K extends string, V>(key: K, v: V | undefined | null): Partial<Record<K, V>> => (v === undefined || v === null ? {} : ({ [key]: v } as Record<K, V>));

const sftStats = (r: Record<string, number>): SftLossStats => ({
  loss: r.loss,
  tokens: r.tokens,
  nllSum: r.nllSum,
  ...(r.smoothSum !== undefined ? { smoothSum: r.smoothSum } : {}),
  ...(r.entropy !== undefined ? { entropy: r.entropy } : {}),
});
const pairwiseStats = (r: Record<string, number>): PairwiseLossStats => ({ loss: r.loss, accuracy: r.accuracy, margin: r.margin, chosen: r.chosen, rejected: r.rejected });
const dpoStats = (r: Record<string, number>): DpoLossStats => ({
  loss: r.loss,
  accuracy: r.accuracy,
  rewardsChosen: r.rewardsChosen,
  rewardsRejected: r.rewardsRejected,
  margin: r.margin,
  logpsChosen: r.logpsChosen,
  logpsRejected: r.logpsRejected,
  pairs: r.pairs,
  ...(r.nll !== undefined ? { nll: r.nll, logOdds: r.logOdds } : {}),
});
const ktoStats = (r: Record<string, number>): KtoLossStats => ({
  loss: r.loss,
  rewardsChosen: r.rewardsChosen,
  rewardsRejected: r.rewardsRejected,
  logpsChosen: r.logpsChosen,
  logpsRejected: r.logpsRejected,
  chosen: r.chosen,
  rejected: r.rejected,
  kl: r.kl,
});
/** The dpo request's fields beside kind (training and evaluation alike). */
const dpoFields = (x: DpoEvalInput) => ({
  mask: x.mask,
  ...opt('refChosen', x.refChosen),
  ...opt('refRejected', x.refRejected),
  beta: x.beta,
  ...opt('lossType', x.lossType),
  ...opt('labelSmoothing', x.labelSmoothing),
  ...opt('gamma', x.gamma),
  ...(x.lengthNormalize ? { lengthNormalize: true } : {}),
});
const ktoFields = (x: KtoEvalInput) => ({
  mask: x.mask,
  refLogps: x.refLogps,
  desirable: x.desirable,
  kl: x.kl,
  beta: x.beta,
  ...opt('desirableWeight', x.desirableWeight),
  ...opt('undesirableWeight', x.undesirableWeight),
});
const int32 = (x: Int32Array | readonly number[] | undefined) => (x === undefined ? undefined : x instanceof Int32Array ? x : Int32Array.from(x));

export async function sftObjective(handle: NativeModel, x: SftLossInput = {}): Promise<SftLossStats> {
  return sftStats(
    await run(handle, {
      kind: 'sft',
      ...opt('mask', x.mask),
      ...opt('denom', x.denom),
      ...opt('labelSmoothing', x.labelSmoothing),
      ...opt('entCoef', x.entCoef),
      ...opt('gradScale', x.gradScale),
    }),
  );
}

export async function pairwiseObjective(handle: NativeModel, x: PairwiseLossInput = {}): Promise<PairwiseLossStats> {
  return pairwiseStats(await run(handle, { kind: 'pairwise', ...opt('last', int32(x.last)), ...opt('margin', x.margins), ...opt('target', x.targets), ...opt('gradScale', x.gradScale) }));
}

export async function dpoObjective(handle: NativeModel, x: DpoLossInput): Promise<DpoLossStats> {
  return dpoStats(await run(handle, { kind: 'dpo', ...dpoFields(x), ...opt('gradScale', x.gradScale) }));
}

export async function ktoObjective(handle: NativeModel, x: KtoLossInput): Promise<KtoLossStats> {
  return ktoStats(await run(handle, { kind: 'kto', ...ktoFields(x), ...opt('gradScale', x.gradScale) }));
}

export async function ppoObjective(handle: NativeModel, x: PpoLossInput): Promise<PpoLossStats> {
  const r = await run(handle, {
    kind: 'ppo',
    mask: x.mask,
    ...opt('oldLogp', x.oldLogp),
    ...opt('advantages', x.advantages),
    ...opt('refLogp', x.refLogp),
    ...opt('returns', x.returns),
    ...opt('oldValues', x.oldValues),
    ...opt('clipRange', x.clipRange),
    ...opt('clipRangeHigh', x.clipRangeHigh),
    ...opt('clipRangeValue', x.clipRangeValue),
    ...opt('vfCoef', x.vfCoef),
    ...opt('klCoef', x.klCoef),
    ...opt('klEstimator', x.klEstimator),
    ...opt('entCoef', x.entCoef),
    ...opt('gradScale', x.gradScale),
    ...opt('denom', x.denom),
    ...(x.sequence ? { sequence: true } : {}),
    ...(x.klTimesRatio ? { klTimesRatio: true } : {}),
  });
  // The sequence-level surrogate has no value, KL or entropy part; its count is of rows.
  return {
    loss: r.loss,
    pgLoss: r.pgLoss,
    vfLoss: r.vfLoss ?? 0,
    kl: r.kl ?? 0,
    entropy: r.entropy ?? 0,
    approxKl: r.approxKl,
    clipfrac: r.clipfrac,
    vfClipfrac: r.vfClipfrac ?? 0,
    ratio: r.ratio,
    tokens: r.tokens ?? r.sequences,
  };
}

// ------------------------------------------------------------------ evaluation calls (no gradients)

async function runEval(handle: NativeModel, req: Exclude<NativeEvalLossRequest, { kind: 'sequenceLogps' }>): Promise<Record<string, number>> {
  return handle.evalLoss(req).catch((e: unknown) => {
    throw fromNative(e);
  });
}

/** SFT's masked NLL over the last inference forward's logp. */
export async function sftEvaluation(handle: NativeModel, x: SftEvalInput): Promise<SftLossStats> {
  return sftStats(await runEval(handle, { kind: 'sft', mask: x.mask, ...opt('denom', x.denom), ...opt('labelSmoothing', x.labelSmoothing) }));
}

/** The pairwise loss over the last inference forward's values (chosen rows, then rejected rows). */
export async function pairwiseEvaluation(handle: NativeModel, x: PairwiseEvalInput = {}): Promise<PairwiseLossStats> {
  return pairwiseStats(await runEval(handle, { kind: 'pairwise', ...opt('last', int32(x.last)), ...opt('margin', x.margins), ...opt('target', x.targets) }));
}

/** DPO over the last inference forward's logp (chosen rows, then rejected rows) against reference sums. */
export async function dpoEvaluation(handle: NativeModel, x: DpoEvalInput): Promise<DpoLossStats> {
  return dpoStats(await runEval(handle, { kind: 'dpo', ...dpoFields(x) }));
}

/** KTO over the last inference forward's logp (one row per example). */
export async function ktoEvaluation(handle: NativeModel, x: KtoEvalInput): Promise<KtoLossStats> {
  return ktoStats(await runEval(handle, { kind: 'kto', ...ktoFields(x) }));
}

/** Per-row sums of the last inference forward's logp over `mask` (row_dot on the device), one per row of the forward. */
export async function sequenceLogpsEvaluation(handle: NativeModel, x: SequenceLogpsInput): Promise<Float32Array> {
  const r = await handle.evalLoss({ kind: 'sequenceLogps', mask: x.mask }).catch((e: unknown) => {
    throw fromNative(e);
  });
  return r.sums;
}
