/**
 * The forward pass shared by Model (inference) and Trainer (training):
 * packing ragged rows into [batch, seq] ids + mask, the engine call, and the
 * per-sequence split of its flat results. Its own file so that model.ts and
 * train.ts both import it without importing each other.
 */
import { fromNative, RlhfError } from '../errors';
import type { NativeModel, NativeForwardResult } from '../native';
import type { ModelConfig } from '../model/config';

export interface ForwardInput {
  /** Token ids per sequence; sequences may differ in length (right-padded internally) unless `mask` is given. */
  inputIds: number[][] | Int32Array[];
  /** 1 = token, 0 = padding, same shape as inputIds (left or right padding). */
  attentionMask?: number[][];
  /** Also return score-head values (reward models). */
  values?: boolean;
  /** Also return LM log-probs (default true when the model has an LM head). */
  logp?: boolean;
  /** Also return the full logits at each row's last real token. */
  lastLogits?: boolean;
  temperature?: number;
  /**
   * Training forward only: the gradient of the loss with respect to each
   * log-prob, flat [batch, seq-1] in the packed layout of `flat.logp`, when it
   * is known before the forward (SFT's masked mean NLL: -mask / tokens). The
   * LM head then computes its gradient in the same pass over each block of
   * logits instead of recomputing them in backward(); call backward() without
   * dlogp/dentropy.
   */
  lmGrad?: Float32Array;
  /**
   * Training forward only, instead of `lmGrad`: SFT's loss mask, flat
   * [batch, seq-1] (1 = a target token), and the denominator of the masked
   * mean (the target tokens of the whole optimizer step; default sum(mask)).
   * The gradient -mask / denom is made on the engine's device and used as
   * `lmGrad` is; the mask stays there for the loss call
   * (lib/engine/objectives.ts: `sftLoss`), which then needs none.
   * `labelSmoothing` eps in [0, 1] (default 0) makes it the label-smoothed
   * cross-entropy, (1 - eps) NLL + eps (mean over the vocabulary of -log p)
   * per target token (torch's CrossEntropyLoss(label_smoothing)).
   */
  sftLoss?: { mask: Float32Array; denom?: number; labelSmoothing?: number };
  /**
   * false: the outputs (logp, entropy, values) stay in the engine's memory
   * for a loss call (lib/engine/objectives.ts: the Trainer's after a training
   * forward, the Model's evaluation calls after an inference forward) and
   * nothing per token comes back (`logp`, `entropy`, `values`, `flat.*` are
   * absent; `lastLogits` still comes back). Default true.
   */
  download?: boolean;
}

export interface ForwardOutput {
  batch: number;
  seq: number;
  /** [batch][seq-1]: log p(ids[t+1] | ids[..t]); 0 where the query or target is padding. */
  logp?: Float32Array[];
  entropy?: Float32Array[];
  /** [batch][seq]: score head (label 0) at every position. */
  values?: Float32Array[];
  /** [batch][vocab] */
  lastLogits?: Float32Array[];
  /** The same arrays flat, as the engine returns them (logp [batch*(seq-1)], ...): what backward() takes gradients of. Empty with `download: false`. */
  flat: NativeForwardResult;
}

/** Packs ragged or masked sequences into [batch, seq] ids + mask. */
export function packBatch(ids: number[][] | Int32Array[], mask?: number[][]): { batch: number; seq: number; ids: Int32Array; mask: Uint8Array } {
  const batch = ids.length;
  if (batch === 0) throw new RlhfError('E_ARGUMENT', 'forward: no sequences given');
  const rowsIn = ids as ArrayLike<number>[];
  const seq = Math.max(...Array.from(rowsIn, (r) => r.length));
  if (seq === 0) throw new RlhfError('E_ARGUMENT', 'forward: all sequences are empty');
  const out = new Int32Array(batch * seq);
  const m = new Uint8Array(batch * seq);
  for (let b = 0; b < batch; b++) {
    const row = rowsIn[b];
    if (mask && (mask[b]?.length ?? -1) !== row.length) throw new RlhfError('E_ARGUMENT', `forward: attentionMask row ${b} has a different length than inputIds row ${b}`);
    out.set(row, b * seq);
    for (let t = 0; t < row.length; t++) m[b * seq + t] = mask ? (mask[b][t] ? 1 : 0) : 1;
  }
  return { batch, seq, ids: out, mask: m };
}

/** forward / training forward: packs the batch, calls the engine, splits the flat results per sequence. */
export async function runForward(handle: NativeModel, config: ModelConfig, input: ForwardInput, train: boolean): Promise<ForwardOutput> {
  const packed = packBatch(input.inputIds, input.attentionMask);
  if (packed.seq > config.maxSequenceLength)
    throw new RlhfError(
      'E_ARGUMENT',
      `forward: a sequence of ${packed.seq} tokens is longer than the model's context of ${config.maxSequenceLength} tokens; cut the rows to at most ${config.maxSequenceLength} tokens (e.g. --max-len)`,
    );
  const req = {
    ...packed,
    logp: input.logp ?? config.head === 'lm',
    values: input.values ?? false,
    lastLogits: input.lastLogits ?? false,
    temperature: input.temperature ?? 1,
    ...(input.lmGrad ? { lmGrad: input.lmGrad } : {}),
    ...(input.sftLoss
      ? {
          sftMask: input.sftLoss.mask,
          ...(input.sftLoss.denom !== undefined ? { sftDenom: input.sftLoss.denom } : {}),
          ...(input.sftLoss.labelSmoothing ? { sftLabelSmoothing: input.sftLoss.labelSmoothing } : {}),
        }
      : {}),
    ...(input.download === false ? { download: false } : {}),
  };
  const r = await (train ? handle.forwardTrain(req) : handle.forward(req)).catch((e: unknown) => {
    throw fromNative(e);
  });
  const { batch, seq } = packed;
  const rows = (a: Float32Array | undefined, w: number) => (a ? Array.from({ length: batch }, (_, b) => a.subarray(b * w, (b + 1) * w)) : undefined);
  return {
    batch,
    seq,
    logp: rows(r.logp, seq - 1),
    entropy: rows(r.entropy, seq - 1),
    values: rows(r.values, seq),
    lastLogits: rows(r.lastLogits, config.vocabSize),
    flat: r,
  };
}

