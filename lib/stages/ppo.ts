/**
 * The PPO stage (`rlhf-native ppo`): reinforcement learning from a reward
 * source with proximal policy optimisation, InstructGPT / TRL PPOTrainer
 * semantics on the native engine, on the online loop (lib/train/online.ts).
 * See docs/ppo.md.
 *
 * One frozen base serves every role (docs: DESIGN section 2):
 *   policy    = base + LoRA adapter 'policy' (trainable)
 *   reference = base with adapters disabled (useAdapter(null))
 *   critic    = base + LoRA adapter 'critic' with its own value head
 *               (trainable), initialised from the reward model
 *   reward    = a RewardSource: reward-model folders, reward adapters on the
 *               same base, or a JS function.
 *
 * One iteration: take `batchSize` prompts, sample a response to each with the
 * policy, score the responses, read per-token log-probs of the responses
 * under the policy (old_logp) and the reference (ref_logp) and the critic's
 * values (old_values); rewards = -kl_coef * KL per token + the score at the
 * last token; GAE advantages (whitened) and returns; then `ppoEpochs` passes
 * over shuffled minibatches, each one critic update (clipped value loss) and
 * one policy update (clipped surrogate), both through the native `ppo_loss`
 * op, with gradient clipping and AdamW per adapter. All randomness of an
 * iteration (prompt order, sampling, minibatch shuffles) is a function of
 * (seed, iteration) only, so checkpoints at iteration boundaries resume
 * exactly.
 *
 * The parts: ppo/config.ts (options, defaults, result types), ppo/loss.ts
 * (the loss op and the gradients of one minibatch), ppo/rollout.ts
 * (sampling, scoring, advantages), ppo/update.ts (the PPO epochs),
 * ppo/reward-source.ts (reward models on the shared base), ppo/run.ts (the
 * stage on the online loop), ppo/stage.ts (the Stage object).
 */
export { PPO_DEFAULTS, PPO_OPTIONS, resolvePpoConfig } from './ppo/config';
export type { PpoConfig, ResolvedPpoConfig, PpoStepMetrics, PpoHooks, PpoEvalResult, PpoResult } from './ppo/config';
export { criticGradients, policyGradients } from './ppo/loss';
export type { Rollout, PpoUpdateOptions } from './ppo/loss';
export { runPpo, PPO_ADAPTERS } from './ppo/run';
export { ppoStage } from './ppo/stage';
export { mixSeed, iterationPrompts } from '../data/batches';
export { klPerToken, shapeRewards, gae, maskedWhiten } from '../ppo/gae';
export type { RewardKlEstimator } from '../ppo/gae';
export { klController, AdaptiveKlController, FixedKlController } from '../ppo/kl-controller';
export type { KlController } from '../ppo/kl-controller';
export { loadPrompts } from '../data/prompts';
export type { PromptRow, PromptIds } from '../data/prompts';
