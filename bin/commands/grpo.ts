/**
 * `rlhf-native grpo --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * GRPO, RLOO (--estimator rloo) or REINFORCE++ (--estimator reinforce_pp)
 * with a LoRA policy. Options: lib/stages/grpo/config.ts (GRPO_OPTIONS); see docs/grpo.md.
 */
import type { Argv } from 'yargs';
import { grpoStage, type GrpoConfig, type GrpoResult, type GrpoStepMetrics } from '../../lib/stages/grpo';
import type { Stage } from '../../lib/train/stage';
import { fmt as g, registerStage, stepOf } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return groupCommand(y, grpoStage);
}

/** The command of the grpo stage or one of its presets (rloo). */
export function groupCommand<T>(y: Argv<T>, stage: Stage<GrpoConfig, GrpoResult>): Argv<T> {
  return registerStage(y, {
    stage,
    logSteps: { default: 1, unit: 'iterations' },
    progress: (m: GrpoStepMetrics, total) =>
      `${stage.name} step ${stepOf(m.step, total)}  reward ${g(m.reward)}  reward_std ${g(m.reward_std)}  kl ${g(m.kl)}  clipfrac ${g(m.clipfrac)}  ` +
      `entropy ${g(m.entropy)}  len ${m.response_length.toFixed(1)}  tok/s ${Math.round(m.tokens_per_sec)}`,
    summary: (r) =>
      `${stage.name} (${r.config.estimator}): ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} iterations (${r.optimizerSteps} optimizer steps, ${r.prompts} prompts) in ${r.seconds.toFixed(1)}s; ` +
      (r.initialReward === null ? 'no iteration done' : `reward ${g(r.initialReward)} -> ${g(r.finalReward!)}`) +
      (r.eval ? `; eval reward ${g(r.eval.before.reward)} -> ${g(r.eval.after.reward)}` : '') +
      `; policy adapter saved to ${r.out}`,
  });
}
