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
    progress: (m) => ({ round: m.phase === 'eval' ? undefined : (m.round as number), sft_step: m.phase === 'sft' ? (m.step as number) : undefined, loss: m.loss as number | undefined, reward: m.mean_reward as number | undefined }),
    /** Rounds finished: a round's sample and SFT records come before its end (its 'round' record). */
    done: (m) => (m.phase === 'round' || m.phase === 'eval' ? Number(m.round ?? 0) : Number(m.round ?? 1) - 1),
    /** In the run's metrics an rs record's step is its round (0: the eval before round 1), as its checkpoints are counted; a round's SFT step is sft_step. */
    record: (m) => ({ ...m, ...(m.step !== undefined ? { sft_step: m.step } : {}), reward: m.mean_reward, step: Number(m.round ?? 0) }),
  },
};
