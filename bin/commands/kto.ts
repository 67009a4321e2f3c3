/**
 * `rlhf-native kto --model DIR --data EXAMPLES.jsonl --out DIR [options]`:
 * Kahneman-Tversky Optimization on desirable / undesirable examples (LoRA by
 * default, --full for every weight); see docs/kto.md. Options:
 * lib/stages/kto.ts (KTO_OPTIONS).
 */
import type { Argv } from 'yargs';
import { ktoStage, type KtoStepMetrics } from '../../lib/stages/kto';
import { registerStage, stepOf } from './stage-command';

// KTO's figures start at exactly 0 (policy = reference): print it as 0; a side absent from a step as '-'.
const g = (x: number | undefined) => (x === undefined ? '-' : Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x === 0 ? '0' : x.toExponential(3));

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: ktoStage,
    progress: (m: KtoStepMetrics, total) =>
      `kto step ${stepOf(m.step, total)}  loss ${g(m.loss)}  margin ${g(m['rewards/margins'])}  kl ${g(m.kl)}  ` +
      `lr ${m.lr!.toExponential(2)}  grad_norm ${g(m.grad_norm)}  tok/s ${Math.round(m.tokens_per_sec!)}  epoch ${m.epoch.toFixed(2)}` +
      (m.eval_loss !== undefined ? `  eval_loss ${g(m.eval_loss)}  eval_margin ${g(m['eval_rewards/margins'])}  eval_kl ${g(m.eval_kl)}` : ''),
    always: (m) => m.eval_loss !== undefined,
    summary: (r) =>
      `kto: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.epochs.toFixed(2)} epochs, ${r.trainRows} examples) in ${r.seconds.toFixed(1)}s, ` +
      `${Math.round(r.tokensPerSec)} tok/s; ${r.initialLoss === null ? 'no step taken' : `loss ${g(r.initialLoss)} -> ${g(r.finalLoss!)}`}` +
      (r.initialEval && r.finalEval
        ? `; eval loss ${g(r.initialEval.loss)} -> ${g(r.finalEval.loss)}, reward margin ${g(r.initialEval.margin ?? undefined)} -> ${g(r.finalEval.margin ?? undefined)} (${r.evalRows} examples)`
        : '') +
      `; ${r.saved === 'model' ? 'full model' : 'LoRA adapter'} (${r.trainableParameters} trainable parameters) saved to ${r.out}`,
  });
}
