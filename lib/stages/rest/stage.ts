/**
 * ReST as a registered stage (`rlhf-native rest`, lib/train/stage.ts): its
 * options, its run, and how a recipe wires it. The parts: rest/config.ts
 * (options, defaults, metrics and result types), rest/reward.ts (the reward
 * options and source), rest/filter.ts (thresholds and the kept samples, in
 * float64), rest/run.ts (the stage on the online loop). See docs/rest.md.
 */
import type { Stage } from '../../train/stage';
import { REST_OPTIONS, type RestConfig, type RestHooks, type RestResult } from './config';
import { runRest } from './run';

export const restStage: Stage<RestConfig, RestResult> = {
  name: 'rest',
  summary: 'ReST / ReST-EM: sample N responses per prompt (Grow), finetune on those at or above rising reward thresholds (Improve)',
  options: REST_OPTIONS,
  run: (config, hooks = {}) => runRest(config, hooks as RestHooks),
  recipe: {
    /** Samples from the recipe's base (SFT's model), scored by the recipe's reward model(s). */
    inputs: (ctx) => ({ ...ctx.rewardOptions(), model: ctx.base }),
    /** A checkpoint after every Grow step: a recipe stopped inside rest resumes after the last finished one. */
    defaults: { checkpointSteps: 1 },
    checkpoints: true,
    outputs: async (r) => ({ model: r.policy.model, ...(r.policy.adapter ? { adapter: r.policy.adapter } : {}) }),
    summary: (r) => ({ eval: { reward_before: r.initialReward, reward_after: r.finalReward }, steps: r.growSteps }),
    progress: (m) => ({ grow: m.phase === 'eval' ? undefined : (m.grow as number), improve: m.improve as number | undefined, sft_step: m.phase === 'sft' ? (m.step as number) : undefined, loss: m.loss as number | undefined, reward: m.mean_reward as number | undefined }),
    /** Grow steps finished: a Grow step's grow, improve and SFT records come before its end (its 'iteration' record). */
    done: (m) => (m.phase === 'iteration' || m.phase === 'eval' ? Number(m.grow ?? 0) : Number(m.grow ?? 1) - 1),
    /** In the run's metrics a rest record's step is its Grow step (0: the eval before the first), as its checkpoints are counted; an SFT step is sft_step. */
    record: (m) => ({ ...m, ...(m.step !== undefined ? { sft_step: m.step } : {}), reward: m.mean_reward, step: Number(m.grow ?? 0) }),
  },
};

export { runRest } from './run';
export { improveFilters, quantile, selectKept } from './filter';
export type { Candidate, ImproveFilter } from './filter';
export { REST_DEFAULTS, REST_OPTIONS, REST_VARIANT_DEFAULTS, resolveRestConfig } from './config';
export type { ResolvedRestConfig, RestConfig, RestGrowSummary, RestHooks, RestImproveSummary, RestMetrics, RestResult, RestSftOptions, RestVariant } from './config';
