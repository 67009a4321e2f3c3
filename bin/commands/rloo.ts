/**
 * `rlhf-native rloo --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * RLOO (Ahmadian et al. 2024), the grpo stage with the leave-one-out
 * estimator and RLOO's defaults. Options: lib/stages/grpo/config.ts; see docs/grpo.md.
 */
import type { Argv } from 'yargs';
import { rlooStage } from '../../lib/stages/grpo';
import { groupCommand } from './grpo';

export function register<T>(y: Argv<T>): Argv<T> {
  return groupCommand(y, rlooStage);
}
