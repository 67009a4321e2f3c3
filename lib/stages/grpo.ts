/**
 * The GRPO family (`rlhf-native grpo`): GRPO (Shao et al. 2024) with
 * Dr. GRPO's and DAPO's options, RLOO (Ahmadian et al. 2024) and REINFORCE++
 * (Hu 2025) on the online loop (lib/train/online.ts): G samples per prompt,
 * advantages relative to the group (or the batch), PPO's clipped ratio, no
 * critic. One base serves every role: policy = base + LoRA 'policy',
 * reference = base with adapters off (read only when beta > 0). See
 * docs/grpo.md.
 */
export { grpoStage, rlooStage } from './grpo/stage';
export { runGrpo } from './grpo/run';
export * from './grpo/config';
