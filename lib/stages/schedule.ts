/**
 * Learning-rate schedules, as transformers' `get_scheduler` defines them
 * (`transformers/optimization.py`): a multiplier of the base learning rate
 * as a function of `currentStep`, the number of optimizer steps already
 * taken (the LambdaLR counter). Optimizer step k (counting from 1) therefore
 * runs with `lr * multiplier(k - 1)`, exactly as in the Hugging Face Trainer,
 * where `lr_scheduler.step()` follows `optimizer.step()`.
 *
 *   warmup (all kinds):  currentStep < W:  currentStep / max(1, W)
 *   constant:            1
 *   linear:              max(0, (N - currentStep) / max(1, N - W))
 *   cosine:              max(0, 0.5 (1 + cos(pi * 2 * 0.5 * progress))),
 *                        progress = (currentStep - W) / max(1, N - W)
 *
 * with W = warmupSteps and N = totalSteps. `linear` and `cosine` reach 0 at
 * currentStep = N, i.e. just after the last optimizer step; the last step
 * itself runs at `lr / (N - W)` (linear). With W > 0 the first step runs at
 * lr 0, as in transformers. `constant` with W > 0 is transformers'
 * `constant_with_warmup` (its plain `constant` ignores warmup).
 */
import { RlhfError } from '../errors';

export const LR_SCHEDULES = ['constant', 'linear', 'cosine'] as const;
export type LrScheduleKind = (typeof LR_SCHEDULES)[number];

export interface LrScheduleOptions {
  kind: LrScheduleKind;
  /** Peak learning rate. */
  lr: number;
  /** Linear warmup from 0 over this many steps (default 0). */
  warmupSteps?: number;
  /** Number of optimizer steps in the run (needed by linear and cosine). */
  totalSteps: number;
}

/** The multiplier of the base learning rate after `currentStep` optimizer steps. */
export function lrMultiplier(kind: LrScheduleKind, currentStep: number, warmupSteps: number, totalSteps: number): number {
  if (currentStep < warmupSteps) return currentStep / Math.max(1, warmupSteps);
  switch (kind) {
    case 'constant':
      return 1;
    case 'linear':
      return Math.max(0, (totalSteps - currentStep) / Math.max(1, totalSteps - warmupSteps));
    case 'cosine': {
      const progress = (currentStep - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 2 * 0.5 * progress)));
    }
    default:
      throw new RlhfError('E_ARGUMENT', `unknown learning-rate schedule "${kind as string}" (known: ${LR_SCHEDULES.join(', ')})`);
  }
}

/** A function from currentStep (optimizer steps taken so far) to the learning rate. */
export function lrSchedule(opts: LrScheduleOptions): (currentStep: number) => number {
  const warmup = opts.warmupSteps ?? 0;
  if (!(LR_SCHEDULES as readonly string[]).includes(opts.kind))
    throw new RlhfError('E_ARGUMENT', `unknown learning-rate schedule "${opts.kind}" (known: ${LR_SCHEDULES.join(', ')})`);
  if (!Number.isInteger(warmup) || warmup < 0) throw new RlhfError('E_ARGUMENT', `warmup steps must be a non-negative integer, got ${warmup}`);
  if (!Number.isInteger(opts.totalSteps) || opts.totalSteps < 1) throw new RlhfError('E_ARGUMENT', `total steps must be a positive integer, got ${opts.totalSteps}`);
  if (!(opts.lr >= 0) || !Number.isFinite(opts.lr)) throw new RlhfError('E_ARGUMENT', `learning rate must be a finite number >= 0, got ${opts.lr}`);
  return (currentStep) => opts.lr * lrMultiplier(opts.kind, currentStep, warmup, opts.totalSteps);
}
