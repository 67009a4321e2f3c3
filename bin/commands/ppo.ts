/**
 * `rlhf-native ppo --model DIR --data PROMPTS.jsonl --out DIR (--reward-model DIR | --reward-function exact | --reward-module FILE ...) [options]`:
 * PPO against reward models, a reward module and/or built-in verifiable
 * rewards (LoRA policy and critic on one base).
 * Options: lib/stages/ppo/config.ts (PPO_OPTIONS); see docs/ppo.md.
 */
import type { Argv } from 'yargs';
import { ppoStage, type PpoStepMetrics } from '../../lib/stages/ppo';
import { fmt as g, registerStage, stepOf } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: ppoStage,
    logSteps: { default: 1, unit: 'iterations' },
    progress: (m: PpoStepMetrics, total) =>
      `ppo step ${stepOf(m.step, total)}  reward ${g(m.reward)}  kl ${g(m.kl)}  kl_coef ${g(m.kl_coef)}  approxkl ${g(m.approxkl)}  ` +
      `clipfrac ${g(m.clipfrac)}  value_loss ${g(m.value_loss)}  len ${m.response_length.toFixed(1)}  tok/s ${Math.round(m.tokens_per_sec)}`,
    summary: (r) =>
      `ppo: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} iterations (${r.optimizerSteps} optimizer steps, ${r.prompts} prompts) in ${r.seconds.toFixed(1)}s; ` +
      (r.initialReward === null ? 'no iteration done' : `reward ${g(r.initialReward)} -> ${g(r.finalReward!)}, kl ${g(r.finalKl!)}`) +
      (r.eval ? `; eval reward ${g(r.eval.before.reward)} -> ${g(r.eval.after.reward)}, kl ${g(r.eval.after.kl)}` : '') +
      `; policy adapter saved to ${r.out}, critic to ${r.out}/critic`,
  });
}
