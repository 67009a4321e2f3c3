/**
 * NaN / infinity in a training step. A step whose loss or gradient norm is
 * not finite is never applied: the loss is checked before the optimizer
 * step, and the native optimizer refuses a non-finite gradient norm without
 * touching the weights or their optimizer state (it answers `skipped`). What
 * happens next is the stage's `nanPolicy`:
 *   'stop' (default)  the run ends with E_NUMERIC naming the step and the
 *                     cause; checkpoints already written are kept (the
 *                     newest is named in the message) and the output folder
 *                     gets no half-trained weights;
 *   'skip'            the step's gradients are dropped, the reason is
 *                     logged, and training goes on with the next step's data
 *                     (the result lists the skipped steps).
 * See docs/reliability.md.
 */
import { RlhfError } from '../errors';

export type NanPolicy = 'stop' | 'skip';
export const NAN_POLICIES: readonly NanPolicy[] = ['stop', 'skip'];

/** E_ARGUMENT unless `v` is a policy. */
export function checkNanPolicy(v: unknown): NanPolicy {
  if (v !== 'stop' && v !== 'skip') throw new RlhfError('E_ARGUMENT', `--nan-policy must be stop or skip, got ${String(v)}`);
  return v;
}

/** Why a step cannot be applied ("the loss is NaN", "the gradient norm is Infinity"), or null when it can. */
export function nonFinite(x: { loss?: number; gradNorm?: number; skipped?: boolean; what?: string }): string | null {
  if (x.loss !== undefined && !Number.isFinite(x.loss)) return `the ${x.what ?? 'loss'} is ${x.loss}`;
  if ((x.gradNorm !== undefined && !Number.isFinite(x.gradNorm)) || x.skipped) return `the ${x.what ? `${x.what} ` : ''}gradient norm is ${x.gradNorm}`;
  return null;
}

/** The E_NUMERIC error of a run stopped by a non-finite step. */
export function numericStop(stage: string, step: string, why: string, opts: { lastGoodStep: number; checkpoint?: string | null; hint?: string }): RlhfError {
  const kept =
    opts.checkpoint === undefined
      ? 'no output was written'
      : opts.checkpoint
        ? `the newest checkpoint, ${opts.checkpoint}, is kept (continue from it with --resume once the cause is fixed; --resume-mismatch if you change options such as --lr)`
        : 'no checkpoint was written (see --checkpoint-steps), and no output was written';
  return new RlhfError(
    'E_NUMERIC',
    `${stage}: ${why} at ${step}: the step was not applied and the run stopped (--nan-policy stop) with the weights of step ${opts.lastGoodStep}; ${kept}; ` +
      `${opts.hint ?? 'training diverged or the data or weights hold NaN/Inf: try a lower --lr or --max-grad-norm, check the inputs'}, or skip such steps with --nan-policy skip`,
  );
}
