/**
 * `rlhf-native dpo --model DIR --data PAIRS.jsonl --out DIR [options]`:
 * Direct Preference Optimization (LoRA by default, --full for every weight);
 * see docs/dpo.md. Options: lib/stages/dpo.ts (DPO_OPTIONS).
 */
import type { Argv } from 'yargs';
import { dpoStage, orpoStage, type DpoResult, type DpoStepMetrics } from '../../lib/stages/dpo';
import type { Stage } from '../../lib/train/stage';
import type { DpoConfig } from '../../lib/stages/dpo';
import { registerStage, stepOf } from './stage-command';

// DPO's figures start at exactly 0 (policy = reference): print it as 0.
const g = (x: number) => (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x === 0 ? '0' : x.toExponential(3));

export function register<T>(y: Argv<T>): Argv<T> {
  return familyCommand(y, dpoStage);
}

/** The command of a stage of the DPO family (dpo, orpo): its name leads each line. */
export function familyCommand<T>(y: Argv<T>, stage: Stage<DpoConfig, DpoResult, DpoStepMetrics>): Argv<T> {
  const n = stage.name;
  return registerStage(y, {
    stage,
    progress: (m: DpoStepMetrics, total) =>
      `${n} step ${stepOf(m.step, total)}  loss ${g(m.loss!)}  margin ${g(m['rewards/margins']!)}  acc ${m['rewards/accuracies']!.toFixed(3)}  ` +
      (m.nll_loss !== undefined ? `nll ${g(m.nll_loss)}  log_odds ${g(m.log_odds_ratio!)}  ` : '') +
      `lr ${m.lr!.toExponential(2)}  grad_norm ${g(m.grad_norm!)}  tok/s ${Math.round(m.tokens_per_sec!)}  epoch ${m.epoch.toFixed(2)}` +
      (m.eval_loss !== undefined ? `  eval_loss ${g(m.eval_loss)}  eval_margin ${g(m['eval_rewards/margins']!)}  eval_acc ${m['eval_rewards/accuracies']!.toFixed(3)}` : ''),
    always: (m) => m.eval_loss !== undefined,
    summary: (r) =>
      `${n}: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.epochs.toFixed(2)} epochs, ${r.trainPairs} pairs) in ${r.seconds.toFixed(1)}s, ` +
      `${Math.round(r.tokensPerSec)} tok/s; ${r.initialLoss === null ? 'no step taken' : `loss ${g(r.initialLoss)} -> ${g(r.finalLoss!)}`}` +
      (r.initialEval && r.finalEval
        ? `; eval reward margin ${g(r.initialEval.margin)} -> ${g(r.finalEval.margin)}, accuracy ${r.initialEval.accuracy.toFixed(3)} -> ${r.finalEval.accuracy.toFixed(3)} (${r.evalPairs} pairs)`
        : '') +
      `; ${r.saved === 'model' ? 'full model' : 'LoRA adapter'} (${r.trainableParameters} trainable parameters) saved to ${r.out}`,
  });
}
