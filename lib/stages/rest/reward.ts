/**
 * ReST's reward options and source, in one place: the reward-model rows of
 * rejection sampling (a helpfulness model, an optional safety model and
 * Llama 2's combination), their checks, and the source opened from them
 * when the caller passes none (hooks.reward).
 */
import { rewardModels, type RewardSource } from '../../reward/sources';
import { arg, type OptionTable } from '../../train/options';
import type { Device } from '../../info';
import { RS_OPTIONS, type RsConfig } from '../rejection/config';

export type RestRewardOptions = Pick<RsConfig, 'rewardModel' | 'safetyModel' | 'combine' | 'safetyThreshold' | 'rewardBatchSize'>;

const { rewardModel, safetyModel, combine, safetyThreshold, rewardBatchSize } = RS_OPTIONS;
/** The rows with rejection sampling's defaults (docs/rs.md). */
export const REST_REWARD_OPTIONS: OptionTable<RestRewardOptions> = { rewardModel, safetyModel, combine, safetyThreshold, rewardBatchSize };

/** The reward options after resolving. */
export interface ResolvedRewardOptions {
  rewardModel: string | null;
  safetyModel: string | null;
  combine: 'llama2' | 'helpfulness';
  safetyThreshold: number;
  rewardBatchSize: number;
}

/** Before resolving: reward models or a reward source, not both, not neither (E_ARGUMENT naming the flag). */
export function checkRewardGiven(cfg: RestRewardOptions, rewardSource: boolean): void {
  const rm = cfg.rewardModel ?? null, safety = cfg.safetyModel ?? null;
  if (rewardSource) arg(rm === null && safety === null, '--reward-model / --safety-model cannot be given together with a reward source (hooks.reward)');
  else arg(rm !== null && rm.length > 0, '--reward-model is required (or pass a RewardSource as hooks.reward)');
  arg(safety === null || rm !== null, '--safety-model needs --reward-model (the helpfulness model)');
}

/** After resolving. */
export function checkRewardResolved(r: ResolvedRewardOptions): void {
  arg(r.combine !== 'llama2' || r.safetyModel !== null, '--combine llama2 needs --safety-model');
}

/** The reward source of a run: the caller's, or the reward models (then `own`: the run disposes it). */
export async function openReward(r: ResolvedRewardOptions & { device: Device; model: string }, given: RewardSource | undefined): Promise<{ source: RewardSource; own: boolean }> {
  if (given) return { source: given, own: false };
  const source = await rewardModels({
    helpfulness: r.rewardModel!,
    safety: r.safetyModel,
    combine: r.combine,
    safetyThreshold: r.safetyThreshold,
    batchSize: r.rewardBatchSize,
    device: r.device,
    policy: r.model,
  });
  return { source, own: true };
}
