/** PPO as a registered stage: its options, its run, and how a recipe wires it (lib/train/stage.ts). */
import * as path from 'node:path';
import type { Stage } from '../../train/stage';
import { PPO_OPTIONS, type PpoConfig, type PpoHooks, type PpoResult } from './config';
import { runPpo } from './run';

export const ppoStage: Stage<PpoConfig, PpoResult> = {
  name: 'ppo',
  summary: 'PPO against reward models: a LoRA policy and a critic (from the reward model) on one base',
  options: PPO_OPTIONS,
  run: (config, hooks = {}) => runPpo(config, hooks as PpoHooks),
  recipe: {
    /**
     * The policy continues the rejection-sampling adapter when the recipe
     * chains its policy stages and has one (unless the stage's section names its own `adapter`), on the base
     * rs sampled from (its full model when it trained every weight); the
     * reference is that base alone; rewards and the critic come from the
     * recipe's reward model(s).
     */
    inputs(ctx, given) {
      const rs = ctx.chained ? ctx.outputs.get('rs') : undefined;
      return {
        ...ctx.rewardOptions(),
        ...(rs?.adapter && !given.adapter ? { adapter: rs.adapter } : {}),
        model: rs?.model && !rs.adapter ? rs.model : ctx.base,
      };
    },
    /** A checkpoint every iteration: a recipe stopped inside PPO resumes it from the newest one. */
    defaults: { checkpointSteps: 1, checkpointKeep: 2 },
    checkpoints: true,
    outputs: async (r) => ({ adapter: r.out, critic: path.join(r.out, 'critic') }),
    summary: (r) => ({
      eval: r.eval ? { reward_before: r.eval.before.reward, reward_after: r.eval.after.reward, kl_after: r.eval.after.kl } : { reward_first: r.initialReward, reward_last: r.finalReward, kl_last: r.finalKl },
      steps: r.steps,
    }),
    progress: (m) => ({ reward: m.reward as number | undefined, kl: m.kl as number | undefined }),
  },
};
