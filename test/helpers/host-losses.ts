/**
 * The stages' losses on host arrays, through the native ops run one at a
 * time (runOp, a test hook): the path the stages took before their losses
 * moved onto the model's device (lib/engine/objectives.ts). The device path
 * is tested bit for bit against this one (test/engine-objectives.test.ts,
 * test/engine-eval-loss.test.ts), and this one against float64 math
 * (test/stage-rm.test.ts, test/stage-dpo.test.ts).
 */
import { callNative } from '../../lib/errors';
import { native, type NativeForwardResult } from '../../lib/native';
import type { ForwardOutput } from '../../lib/engine/model';
import type { Trainer } from '../../lib/engine/train';
import type { PreferenceExample } from '../../lib/data/preference-data';
import { packDpoBatch, type DpoBatch, type RefLogps } from '../../lib/stages/dpo';

/** Pairwise loss over per-pair rewards through the native op. */
export function pairwiseLoss(chosen: Float32Array, rejected: Float32Array, margin: Float32Array | null, gradScale = 1, withGrad = true) {
  const b = chosen.length;
  const loss = new Float32Array(1), stats = new Float32Array(4);
  const dchosen = withGrad ? new Float32Array(b) : undefined, drejected = withGrad ? new Float32Array(b) : undefined;
  callNative(() => native().runOp('pairwise_loss', { b, chosen, rejected, margin: margin ?? undefined, gradScale, loss, dchosen, drejected, stats }));
  return { loss: loss[0], accuracy: stats[0], margin: stats[1], chosen: stats[2], rejected: stats[3], dchosen, drejected };
}


/** Per-row sums of logp over each completion span (flat logp [2b * (seq - 1)]), summed in fp64 by the native sft_loss op. */
export function sequenceLogps(flatLogp: Float32Array, batch: DpoBatch): { chosen: Float32Array; rejected: Float32Array } {
  const w = batch.seq - 1, b = batch.pairs;
  const sums = new Float32Array(2 * b);
  const loss = new Float32Array(1), stats = new Float32Array(2);
  const op = native();
  batch.spans.forEach(([a, e], row) => {
    const logp = flatLogp.subarray(row * w + a, row * w + e);
    callNative(() => op.runOp('sft_loss', { n: logp.length, logp, loss, stats }));
    sums[row] = -stats[1];
  });
  return { chosen: sums.subarray(0, b), rejected: sums.subarray(b) };
}

/** dlogp for backward: each row's sequence gradient on every token of its completion span, 0 elsewhere. */
export function broadcastSequenceGrads(batch: DpoBatch, dChosen: Float32Array, dRejected: Float32Array): Float32Array {
  const w = batch.seq - 1, b = batch.pairs;
  const dlogp = new Float32Array(2 * b * w);
  batch.spans.forEach(([a, e], row) => dlogp.fill(row < b ? dChosen[row] : dRejected[row - b], row * w + a, row * w + e));
  return dlogp;
}

export interface DpoLossResult {
  /** Mean loss over the pairs. */
  loss: number;
  accuracy: number;
  rewardsChosen: number;
  rewardsRejected: number;
  margin: number;
  /** Gradients of loss * gradScale w.r.t. the policy sums (with withGrad). */
  dChosen?: Float32Array;
  dRejected?: Float32Array;
}

/** The sigmoid DPO loss over b pairs through the native `dpo_loss` op (docs/losses.md). */
export function dpoLoss(
  x: { policyChosen: Float32Array; policyRejected: Float32Array; refChosen: Float32Array; refRejected: Float32Array },
  opts: { beta: number; labelSmoothing: number; gradScale?: number; withGrad?: boolean },
): DpoLossResult {
  const b = x.policyChosen.length;
  const loss = new Float32Array(1), stats = new Float32Array(6);
  const withGrad = opts.withGrad ?? true;
  const dChosen = withGrad ? new Float32Array(b) : undefined, dRejected = withGrad ? new Float32Array(b) : undefined;
  callNative(() =>
    native().runOp('dpo_loss', {
      b,
      ...x,
      beta: opts.beta,
      labelSmoothing: opts.labelSmoothing,
      gradScale: opts.gradScale ?? 1,
      loss,
      dpolicyChosen: dChosen,
      dpolicyRejected: dRejected,
      stats,
    }),
  );
  return { loss: loss[0], accuracy: stats[0], rewardsChosen: stats[1], rewardsRejected: stats[2], margin: stats[3], dChosen, dRejected };
}

/**
 * One micro-batch of training: training forward, sequence log-probs, the
 * loss (gradients scaled by `gradScale`), their broadcast onto dlogp, and
 * backward (gradients accumulate). Returns the loss statistics, the policy
 * sums and the dlogp that went into backward.
 */
export async function dpoMicroBatch(
  trainer: Trainer,
  examples: readonly PreferenceExample[],
  ref: RefLogps,
  opts: { beta: number; labelSmoothing: number; gradScale: number },
): Promise<{ loss: DpoLossResult; policy: { chosen: Float32Array; rejected: Float32Array }; dlogp: Float32Array; tokens: number }> {
  const batch = packDpoBatch(examples);
  const f = (await trainer.forward({ inputIds: batch.inputIds, logp: true })) as ForwardOutput & { flat: NativeForwardResult };
  const policy = sequenceLogps(f.flat.logp!, batch);
  const loss = dpoLoss({ policyChosen: policy.chosen, policyRejected: policy.rejected, refChosen: ref.chosen, refRejected: ref.rejected }, { ...opts, withGrad: true });
  const dlogp = broadcastSequenceGrads(batch, loss.dChosen!, loss.dRejected!);
  await trainer.backward({ dlogp });
  return { loss, policy, dlogp, tokens: batch.tokens };
}

