/**
 * `rlhf-native hir --model DIR --data PROMPTS.jsonl (--reward-model DIR | --relabel-module FILE) --out DIR [options]`:
 * hindsight instruction relabelling (Zhang et al. 2023): sample outputs,
 * relabel each with the instruction it fulfilled, train on the growing
 * buffer with HIR's loss; repeat for --iterations. Options:
 * lib/stages/hir/config.ts (HIR_OPTIONS); see docs/hir.md.
 */
import type { Argv } from 'yargs';
import type { HirMetrics } from '../../lib/stages/hir/config';
import { hirStage } from '../../lib/stages/hir/stage';
import { fmt as g, registerStage } from './stage-command';

export function register<T>(y: Argv<T>): Argv<T> {
  return registerStage(y, {
    stage: hirStage,
    logSteps: { default: 1, unit: 'iterations' },
    lines: (m: HirMetrics, logEvery) => [
      ...(m.phase === 'iteration' && (m.iteration === 1 || m.iteration % logEvery === 0)
        ? [`hir iteration ${m.iteration}  correct ${g(m.correct)}  buffer ${m.buffer}  loss ${g(m.loss)}  nll ${g(m.nll)}  contrastive ${g(m.contrastive)}`]
        : []),
    ],
    summary: (r) => {
      const evalPart =
        r.evalBefore === null ? 'no held-out evaluation' : `held-out share correct ${g(r.evalBefore.correct)} -> ${r.evalAfter === null ? '(not measured)' : g(r.evalAfter.correct)} (${r.evalPrompts} prompts)`;
      return `hir: ${r.interrupted ? `interrupted after ${r.iterations}/${r.config.iterations}` : r.iterations} iteration${r.iterations === 1 ? '' : 's'} of ${r.trainPrompts} prompts in ${r.seconds.toFixed(1)}s; buffer ${r.buffer} outputs; ${evalPart}; policy: LoRA adapter ${r.policy.adapter}`;
    },
  });
}
