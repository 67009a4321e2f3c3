/** HIR as a registered stage: its options, its run, and how a recipe wires it (lib/train/stage.ts). */
import type { Stage } from '../../train/stage';
import { HIR_OPTIONS, type HirConfig, type HirHooks, type HirResult } from './config';
import { runHir } from './run';

export const hirStage: Stage<HirConfig, HirResult> = {
  name: 'hir',
  summary: 'hindsight instruction relabelling: sample, relabel each output with the instruction it fulfilled, train with a contrastive loss',
  options: HIR_OPTIONS,
  run: (config, hooks = {}) => runHir(config, hooks as HirHooks),
  recipe: {
    /**
     * Samples from the recipe's base (SFT's merged or full model); the checker
     * is the recipe's reward source or reward model(s), unless the section
     * names its own reward model or a relabel module.
     */
    inputs: (ctx, given) => ({ ...(given.relabelModule ? {} : ctx.rewardOptions()), model: ctx.base }),
    /** A checkpoint after every iteration: a recipe stopped inside hir resumes after the last finished one. */
    defaults: { checkpointSteps: 1 },
    checkpoints: true,
    outputs: async (r) => ({ model: r.policy.model, adapter: r.policy.adapter }),
    summary: (r) => ({ eval: { correct_before: r.evalBefore?.correct ?? null, correct_after: r.evalAfter?.correct ?? null }, steps: r.iterations }),
    progress: (m) => ({ loss: m.loss as number | undefined, correct: m.correct as number | undefined }),
    /** In the run's metrics an hir record's step is its iteration (0: the evaluation before iteration 1). */
    record: (m) => ({ ...m, step: Number(m.iteration ?? 0) }),
  },
};
