/**
 * The rejection-sampling stage (`rlhf-native rs`), Llama 2 section 3.2.3:
 * for each round, sample K responses per prompt from the current policy,
 * score them with a reward source, keep the best response of each prompt,
 * and finetune the policy on the kept pairs with the SFT stage; on the
 * online loop (lib/train/online.ts), one round per iteration. See docs/rs.md.
 *
 * The parts: rejection/config.ts (options, defaults, metrics and result
 * types), rejection/run.ts (the stage on the online loop),
 * rejection/stage.ts (the Stage object); shared with ReST:
 * self-training/sampling.ts (K samples per prompt, rewards, held-out
 * evaluation, SFT rows), self-training/setup.ts (prompts and policy checks),
 * self-training/sft-options.ts (the per-round SFT options).
 */
export { RS_DEFAULTS, RS_OPTIONS, RS_SFT_KEYS, resolveRsConfig } from './rejection/config';
export type { RsConfig, ResolvedRsConfig, RsHooks, RsMetrics, RsResult, RsRoundSummary, RsSftOptions } from './rejection/config';
export { evaluatePolicy, rewardInputs, samplePolicy, stopTokenIds } from './self-training/sampling';
export type { PolicyEvaluation, Sample, SampleOptions } from './self-training/sampling';
export { runRejectionSampling } from './rejection/run';
export { rsStage } from './rejection/stage';
export { loadPrompts } from '../data/prompts';
export type { PromptRow } from '../data/prompts';
export { mixSeed } from '../data/batches';
