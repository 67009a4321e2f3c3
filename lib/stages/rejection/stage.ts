/** Rejection sampling as a registered stage: its options, its run, and how a recipe wires it (lib/train/stage.ts). */
import type { Stage } from '../../train/stage';
import { RS_OPTIONS, type RsConfig, type RsHooks, type RsResult } from './config';
import { runRejectionSampling } from './run';

export const rsStage: Stage<RsConfig, RsResult> = {
  name: 'rs',
  summary: 'rejection sampling: sample K responses per prompt, finetune on the best under the reward model(s)',
  options: RS_OPTIONS,
  run: (config, hooks = {}) => runRejectionSampling(config, hooks as RsHooks),
  recipe: {
    /** Samples from the recipe's base (SFT's model), scored by the recipe's reward model(s). */
    inputs: (ctx) => ({ ...ctx.rewardOptions(), model: ctx.base }),
    /** A checkpoint after every round: a recipe stopped inside rs resumes after the last finished round. */
    defaults: { checkpointSteps: 1 },
    checkpoints: true,
    outputs: async (r) => ({ model: r.policy.model, ...(r.policy.adapter ? { adapter: r.policy.adapter } : {}) }),
    summary: (r) => ({ eval: { reward_before: r.initialReward, reward_after: r.finalReward }, steps: r.rounds }),
    progress: (m) => ({ reward: m.mean_reward as number | undefined }),
  },
};
