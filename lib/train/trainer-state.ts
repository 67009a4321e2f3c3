/**
 * trainer_state.json: the summary transformers' Trainer (and so TRL) writes
 * beside its checkpoints, written into every supervised stage's output
 * folder, so that the tools and habits of a TRL user find the step count,
 * the epoch and the log history where they look for them. The history is
 * metrics.jsonl's records, with transformers' name `learning_rate` beside
 * our `lr`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface TrainerStateInput {
  out: string;
  metricsFile: string;
  globalStep: number;
  maxSteps: number;
  /** Epochs completed (fractional). */
  epoch: number;
  numTrainEpochs: number;
  trainBatchSize: number;
  gradientAccumulationSteps: number;
  /** Whether the run stopped before maxSteps (a signal). */
  interrupted: boolean;
}

export function writeTrainerState(s: TrainerStateInput): string {
  const history = fs.existsSync(s.metricsFile)
    ? fs
        .readFileSync(s.metricsFile, 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .map((m) => ('lr' in m ? { ...m, learning_rate: m.lr } : m))
    : [];
  const file = path.join(s.out, 'trainer_state.json');
  const state = {
    global_step: s.globalStep,
    max_steps: s.maxSteps,
    epoch: s.epoch,
    num_train_epochs: s.numTrainEpochs,
    train_batch_size: s.trainBatchSize,
    gradient_accumulation_steps: s.gradientAccumulationSteps,
    should_training_stop: !s.interrupted,
    log_history: history,
  };
  fs.writeFileSync(file, JSON.stringify(state, null, 2) + '\n');
  return file;
}
