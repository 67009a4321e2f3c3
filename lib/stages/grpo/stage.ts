/** The GRPO family as a registered stage: its options, its run, and how a recipe wires it (lib/train/stage.ts). */
import type { Stage } from '../../train/stage';
import { withDefaults } from '../../train/options';
import { GRPO_OPTIONS, type GrpoConfig, type GrpoHooks, type GrpoResult } from './config';
import { runGrpo } from './run';

export const grpoStage: Stage<GrpoConfig, GrpoResult> = {
  name: 'grpo',
  summary: 'GRPO / RLOO / REINFORCE++: G samples per prompt, group-relative advantages, no critic',
  options: GRPO_OPTIONS,
  run: (config, hooks = {}) => runGrpo(config, hooks as GrpoHooks),
  recipe: {
    /** A new LoRA policy on the recipe's base (SFT's model), rewarded by the recipe's reward model(s) or hooks.reward. */
    inputs: (ctx) => ({ ...ctx.rewardOptions(), model: ctx.base }),
    /** A checkpoint every iteration: a recipe stopped inside grpo resumes from the newest one. */
    defaults: { checkpointSteps: 1, checkpointKeep: 2 },
    checkpoints: true,
    outputs: async (r) => ({ adapter: r.out }),
    summary: (r) => ({
      eval: r.eval ? { reward_before: r.eval.before.reward, reward_after: r.eval.after.reward } : { reward_first: r.initialReward, reward_last: r.finalReward },
      steps: r.steps,
    }),
    progress: (m) => ({ reward: m.reward as number | undefined, kl: m.kl as number | undefined }),
  },
};

/** RLOO's defaults (TRL 1.13's RLOOConfig): the leave-one-out estimator, KL coefficient 0.05 in the rewards. */
const RLOO_DEFAULTS = { estimator: 'rloo', beta: 0.05 } as const;

/** RLOO (`rlhf-native rloo`, a recipe's `rloo` section): the grpo stage with RLOO's defaults. */
export const rlooStage: Stage<GrpoConfig, GrpoResult> = {
  ...grpoStage,
  name: 'rloo',
  summary: 'RLOO: G samples per prompt, leave-one-out baseline, sequence-level clipped ratio, no critic',
  options: withDefaults(GRPO_OPTIONS, RLOO_DEFAULTS),
  run: (config, hooks = {}) => runGrpo({ ...RLOO_DEFAULTS, ...config }, hooks as GrpoHooks),
};
