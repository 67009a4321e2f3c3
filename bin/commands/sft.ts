/**
 * `rlhf-native sft --model DIR --data FILE.jsonl --out DIR [options]`:
 * supervised finetuning (LoRA by default, --full for every weight); see
 * docs/sft.md. Options: lib/stages/sft.ts (SFT_OPTIONS).
 */
import type { Argv } from 'yargs';
import { sftStage, type SftStepMetrics } from '../../lib/stages/sft';
import { fmt as g, registerStage, stepOf } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: sftStage,
    progress: (m: SftStepMetrics, total) =>
      `sft step ${stepOf(m.step, total)}  loss ${g(m.loss)}  lr ${m.lr.toExponential(2)}  grad_norm ${g(m.grad_norm)}  ` +
      `tok/s ${Math.round(m.tokens_per_sec)}  epoch ${m.epoch.toFixed(2)}` +
      (m.eval_loss !== undefined ? `  eval_loss ${g(m.eval_loss)}` : ''),
    always: (m) => m.eval_loss !== undefined,
    summary: (r) =>
      `sft: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.epochs.toFixed(2)} epochs, ${r.trainRows} rows) in ${r.seconds.toFixed(1)}s, ` +
      `${Math.round(r.tokensPerSec)} tok/s; ${r.initialLoss === null ? 'no step taken' : `loss ${g(r.initialLoss)} -> ${g(r.finalLoss!)}`}` +
      (r.evalLoss !== null ? `; eval loss ${g(r.evalLoss)} (${r.evalRows} rows)` : '') +
      `; ${r.saved === 'model' ? 'full model' : 'LoRA adapter'} (${r.trainableParameters} trainable parameters) saved to ${r.out}`,
  });
}
