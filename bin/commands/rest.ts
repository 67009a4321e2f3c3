/**
 * `rlhf-native rest --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * ReST (Gulcehre et al. 2023) or, with --variant em, ReST-EM (Singh et al.
 * 2023): Grow (N samples per prompt, scored), then Improve (finetune on the
 * samples at or above rising reward thresholds); repeat for --grow-steps.
 * Options: lib/stages/rest/config.ts (REST_OPTIONS); see docs/rest.md.
 */
import type { Argv } from 'yargs';
import { restStage, type RestMetrics } from '../../lib/stages/rest/stage';
import { fmt as g, registerStage } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: restStage,
    cliOverrides: { rewardModel: { required: true } },
    logSteps: { default: 10, unit: 'SFT steps of an Improve step' },
    lines: (m: RestMetrics, logEvery) => [
      ...(m.phase === 'sft' && (m.step === 1 || m.step % logEvery === 0) ? [`rest grow ${m.grow} improve ${m.improve} sft step ${m.step}  loss ${g(m.loss)}  lr ${m.lr.toExponential(2)}  tok/s ${Math.round(m.tokens_per_sec)}`] : []),
      ...(m.phase === 'improve'
        ? [`rest grow ${m.grow} improve ${m.improve}: reward ${m.strict ? '>' : '>='} ${g(m.threshold)} keeps ${m.kept} samples of ${m.prompts_kept} prompts` + (m.sft_steps > 0 ? `; ${m.sft_steps} SFT steps, loss ${g(m.sft_initial_loss!)} -> ${g(m.sft_final_loss!)}` : '')]
        : []),
    ],
    summary: (r, argv) => {
      const evalPart =
        r.initialReward === null ? 'no held-out evaluation' : `held-out mean reward ${g(r.initialReward)} -> ${r.finalReward === null ? '(not measured)' : g(r.finalReward)} (${r.evalPrompts} prompts)`;
      const policy = r.policy.adapter ? `LoRA adapter ${r.policy.adapter}` : r.policy.model === argv.model ? `unchanged ${r.policy.model}` : `model ${r.policy.model}`;
      const steps = `${r.interrupted ? `interrupted after ${r.growSteps}/${r.config.growSteps}` : r.growSteps} Grow step${r.growSteps === 1 ? '' : 's'}`;
      return `rest${r.config.variant === 'em' ? ' (em)' : ''}: ${steps} of ${r.trainPrompts} prompts x ${r.config.samplesPerPrompt} samples in ${r.seconds.toFixed(1)}s; ${evalPart}; policy: ${policy}`;
    },
  });
}
