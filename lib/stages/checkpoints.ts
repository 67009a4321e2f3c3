/**
 * Resumable checkpoints of a training stage: `<dir>/checkpoint-<step>/`
 * written atomically (lib/run/atomic.ts), holding
 *   trainable.safetensors  every trainable tensor of the active set (LoRA
 *                          A/B and head, or every base weight), by the
 *                          names the trainer lists them under
 *   optimizer.safetensors  AdamW moments (or SGD momentum) and step count
 *   trainer_state.json     {step, extra}: what the stage needs to continue
 *                          exactly (held-out figures so far, elapsed time,
 *                          LoRA dropout forward count, KL coefficient, ...)
 * The data position is not stored: every stage plans its batches as a pure
 * function of (seed, step), so it skips the steps a checkpoint covers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import type { Trainer } from '../engine/train';
import { openSafetensors, writeSafetensors } from '../safetensors';
import { latestCheckpoint, saveCheckpoint, writeFileAtomic } from '../run/atomic';

export interface ResumeState {
  step: number;
  dir: string;
  extra: Record<string, unknown>;
}

export class StageCheckpoints {
  constructor(
    readonly dir: string,
    private readonly keep = 2,
  ) {}

  /** Writes checkpoint-<step> (atomically) and prunes older ones beyond `keep`. */
  async save(step: number, trainer: Trainer, opts: { full?: boolean; sourceModel?: string; extra?: Record<string, unknown> } = {}): Promise<string> {
    const ck = await saveCheckpoint(
      this.dir,
      step,
      async (tmp) => {
        const tensors = trainer.trainable().map((t) => ({ name: t.name, dtype: 'F32' as const, shape: t.shape, data: trainer.read(t.name) }));
        writeSafetensors(path.join(tmp, 'trainable.safetensors'), tensors, { format: 'rlhf-native-trainable' });
        await trainer.saveOptimizerState(path.join(tmp, 'optimizer.safetensors'));
        writeFileAtomic(path.join(tmp, 'trainer_state.json'), JSON.stringify({ step, extra: opts.extra ?? {} }, null, 2) + '\n');
      },
      { keep: this.keep },
    );
    return ck.dir;
  }

  /** The newest complete checkpoint, or null. */
  latest(): ResumeState | null {
    const ck = latestCheckpoint(this.dir);
    if (!ck) return null;
    const stateFile = path.join(ck.dir, 'trainer_state.json');
    let state: { step?: unknown; extra?: unknown };
    try {
      state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
    } catch (e) {
      throw new RlhfError('E_IO', `${stateFile}: cannot read the checkpoint state (${(e as Error).message})`, { where: stateFile });
    }
    if (state.step !== ck.step) throw new RlhfError('E_IO', `${stateFile}: step ${String(state.step)} does not match the folder name`, { where: stateFile });
    return { step: ck.step, dir: ck.dir, extra: (state.extra as Record<string, unknown>) ?? {} };
  }

  /** Puts the checkpoint's trainable values and optimizer state into the trainer's active set. */
  restore(state: ResumeState, trainer: Trainer): void {
    const file = path.join(state.dir, 'trainable.safetensors');
    const st = openSafetensors(file);
    try {
      for (const t of trainer.trainable()) {
        if (!st.has(t.name)) throw new RlhfError('E_ARGUMENT', `${file}: no '${t.name}': the checkpoint is for another model or trainable set`, { where: file });
        const info = st.tensor(t.name);
        if (info.dtype !== 'F32' || info.shape.join(',') !== t.shape.join(','))
          throw new RlhfError('E_ARGUMENT', `${file}: '${t.name}' is ${info.dtype} [${info.shape}], expected F32 [${t.shape}]`, { where: file });
        const bytes = st.tensorBytes(t.name);
        trainer.write(t.name, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
      }
    } finally {
      st.close();
    }
    trainer.loadOptimizerState(path.join(state.dir, 'optimizer.safetensors'));
  }
}
