/**
 * The rejection-sampling and PPO stages as Stage objects, with their recipe
 * wiring: rs samples from the shared base scored by the recipe's reward
 * models and finetunes a policy adapter; ppo continues that adapter (else a
 * fresh one) on the same base, its critic from the (helpfulness) reward model.
 */
import { runRejectionSampling, type RsConfig, type RsMetrics, type RsResult } from '../stages/rejection';
import { runPpo, type PpoConfig, type PpoResult, type PpoStepMetrics } from '../stages/ppo';
import type { Stage, StageHooks } from './stage';
import type { OptionTable } from './options';

const untabled = {} as OptionTable<never>;

export const rsStage: Stage<RsConfig, RsResult, RsMetrics> = {
  name: 'rs',
  summary: 'rejection sampling: best of K by the reward models, then SFT on the best',
  options: untabled as unknown as OptionTable<RsConfig>,
  run: (config: RsConfig, hooks: StageHooks<RsMetrics> = {}) => runRejectionSampling(config, { ...hooks, onMetrics: (m) => hooks.onStep?.(m, { totalSteps: 0 }) }),
  recipe: {
    inputs: (ctx) => ({ ...ctx.rewardOptions(), model: ctx.base }),
    outputs: async (r) => ({ model: r.policy.model, ...(r.policy.adapter ? { adapter: r.policy.adapter } : {}) }),
    summary: (r) => ({ eval: { reward_before: r.initialReward, reward_after: r.finalReward }, steps: r.rounds }),
    progress: (m) => ({ reward: m.mean_reward as number | undefined }),
    record: (m, n) => ({ ...m, reward: m.mean_reward, step: n }),
  },
};

export const ppoStage: Stage<PpoConfig, PpoResult, PpoStepMetrics> = {
  name: 'ppo',
  summary: 'PPO against reward models: a LoRA policy and a critic (from the reward model) on one base',
  options: untabled as unknown as OptionTable<PpoConfig>,
  run: runPpo,
  recipe: {
    inputs(ctx, given) {
      const rs = ctx.outputs.get('rs');
      return { ...ctx.rewardOptions(), ...(rs?.adapter && !given.adapter ? { adapter: rs.adapter } : {}), model: rs?.model && !rs.adapter ? rs.model : ctx.base };
    },
    outputs: async (_r, ctx) => ({ adapter: ctx.dir, critic: `${ctx.dir}/critic` }),
    summary: (r) => ({
      eval: r.eval ? { reward_before: r.eval.before.reward, reward_after: r.eval.after.reward, kl_after: r.eval.after.kl } : { reward_first: r.initialReward, reward_last: r.finalReward, kl_last: r.finalKl },
      steps: r.steps,
    }),
    progress: (m) => ({ reward: m.reward as number, kl: m.kl as number }),
  },
};
