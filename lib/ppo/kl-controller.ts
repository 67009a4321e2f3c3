/**
 * The coefficient of the KL penalty in the PPO rewards: fixed (TRL's
 * PPOTrainer, `kl_coef`), or adapted towards a target KL as in Ziegler et al.
 * (2019), "Fine-Tuning Language Models from Human Preferences", section 2.2:
 *
 *   e_t    = clip(KL_t / KL_target - 1, -0.2, 0.2)
 *   beta_t+1 = beta_t (1 + K_beta e_t),   K_beta = n_steps / horizon
 *
 * where KL_t is the mean over the batch of each response's summed KL and
 * n_steps the number of rollouts the update stands for (TRL's
 * AdaptiveKLController: `update(current, n_steps)`, target 6, horizon 10000).
 *
 * The coefficient is a controller's whole state: a checkpoint stores
 * `value`, and `klController(value, target, horizon)` restores it.
 */
import { RlhfError } from '../errors';

export interface KlController {
  /** The coefficient for the next batch's rewards. */
  readonly value: number;
  /** Records the KL measured on a batch of `nSteps` rollouts. */
  update(currentKl: number, nSteps: number): void;
}

export class FixedKlController implements KlController {
  constructor(readonly value: number) {}
  update(): void {}
}

export class AdaptiveKlController implements KlController {
  value: number;
  constructor(
    init: number,
    readonly target: number,
    readonly horizon: number,
  ) {
    if (!(target > 0) || !(horizon > 0)) throw new RlhfError('E_ARGUMENT', `adaptive KL control needs target > 0 and horizon > 0 (got ${target}, ${horizon})`);
    this.value = init;
  }
  update(currentKl: number, nSteps: number): void {
    if (!Number.isFinite(currentKl)) return;
    const err = Math.min(Math.max(currentKl / this.target - 1, -0.2), 0.2);
    this.value *= 1 + (err * nSteps) / this.horizon;
  }
}

/** Adaptive when `target` is a number, fixed when it is null. */
export function klController(init: number, target: number | null, horizon: number): KlController {
  return target === null ? new FixedKlController(init) : new AdaptiveKlController(init, target, horizon);
}
