/**
 * `rlhf-native rm --model DIR --data PAIRS.jsonl --out DIR [options]`:
 * reward-model training (LoRA + score head by default, --full for every
 * weight) with the pairwise loss and Llama 2's optional margin; see
 * docs/rm.md. Options: lib/stages/reward.ts (RM_OPTIONS).
 */
import type { Argv } from 'yargs';
import { rmStage, type RmStepMetrics } from '../../lib/stages/reward';
import { fmt as g, registerStage, stepOf } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: rmStage,
    progress: (m: RmStepMetrics, total) =>
      `rm step ${stepOf(m.step, total)}  loss ${g(m.loss)}  accuracy ${m.accuracy.toFixed(3)}  margin ${g(m.margin)}  lr ${m.lr.toExponential(2)}  ` +
      `tok/s ${Math.round(m.tokens_per_sec)}` +
      (m.eval_accuracy !== undefined ? `  eval_accuracy ${m.eval_accuracy.toFixed(3)}  eval_loss ${g(m.eval_loss!)}` : ''),
    always: (m) => m.eval_accuracy !== undefined,
    summary: (r) =>
      `rm: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.trainPairs} pairs) in ${r.seconds.toFixed(1)}s, ${Math.round(r.tokensPerSec)} tok/s` +
      (r.finalLoss !== null ? `; loss ${g(r.finalLoss)}` : '') +
      (r.finalEval ? `; held-out accuracy ${r.initialEval ? `${r.initialEval.accuracy.toFixed(3)} -> ` : ''}${r.finalEval.accuracy.toFixed(3)} (${r.evalPairs} pairs)` : '') +
      `; ${r.saved === 'model' ? 'reward model' : 'LoRA adapter + score head'} saved to ${r.out}`,
  });
}
