/**
 * `rlhf-native rs --model DIR --data PROMPTS.jsonl --out DIR (--reward-model DIR | --reward-function ... | --reward-module FILE ...) [options]`:
 * rejection sampling (Llama 2 section 3.2.3): sample K responses per prompt,
 * keep the best under the reward model(s), finetune on them; repeat for
 * --rounds. Options: lib/stages/rejection/config.ts (RS_OPTIONS); see docs/rs.md.
 */
import type { Argv } from 'yargs';
import { rsStage, type RsMetrics } from '../../lib/stages/rejection';
import { fmt as g, registerStage } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: rsStage,
    logSteps: { default: 10, unit: 'SFT steps of a round' },
    lines: (m: RsMetrics, logEvery) => [
      ...(m.phase === 'sft' && (m.step === 1 || m.step % logEvery === 0) ? [`rs round ${m.round} sft step ${m.step}  loss ${g(m.loss)}  lr ${m.lr.toExponential(2)}  tok/s ${Math.round(m.tokens_per_sec)}`] : []),
      ...(m.phase === 'round' && m.sft_steps > 0 ? [`rs round ${m.round}: ${m.sft_steps} SFT steps, loss ${g(m.sft_initial_loss!)} -> ${g(m.sft_final_loss!)}; round took ${m.seconds.toFixed(1)}s`] : []),
    ],
    summary: (r, argv) => {
      const evalPart =
        r.initialReward === null ? 'no held-out evaluation' : `held-out mean reward ${g(r.initialReward)} -> ${r.finalReward === null ? '(not measured)' : g(r.finalReward)} (${r.evalPrompts} prompts)`;
      const policy = r.policy.adapter ? `LoRA adapter ${r.policy.adapter}` : r.policy.model === argv.model ? `unchanged ${r.policy.model}` : `model ${r.policy.model}`;
      return (
        `rs: ${r.interrupted ? `interrupted after ${r.rounds}/${r.config.rounds}` : r.rounds} round${r.rounds === 1 ? '' : 's'} of ${r.trainPrompts} prompts x ${r.config.k} samples in ${r.seconds.toFixed(1)}s; ` +
        `${evalPart}; policy: ${policy}`
      );
    },
  });
}
