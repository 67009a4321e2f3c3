/**
 * Folding a PEFT LoRA adapter into its base: W += scale * B A for every
 * adapted weight, written as a new Hugging Face model folder (F32) that
 * `transformers` loads without `peft`. An adapter with a score head
 * (task_type SEQ_CLS) gives a *ForSequenceClassification folder. This is how
 * a LoRA SFT model becomes the base that later stages share (the "v1" model
 * of the InstructGPT pipeline). The folder is written beside its final name
 * and swapped in, so an existing folder is only replaced by a complete one.
 */
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { replaceDirAtomic } from '../run/atomic';
import { loadModel } from './model';
import type { Device } from '../info';

export interface MergeOptions {
  /** The base model folder the adapter was trained on. */
  model: string;
  /** The PEFT adapter folder. */
  adapter: string;
  /** The merged model folder. Must differ from the base and the adapter. */
  out: string;
  device?: Device;
}

export async function mergeAdapter(opts: MergeOptions): Promise<{ out: string; architecture: string; parameters: number }> {
  const out = path.resolve(opts.out);
  if (out === path.resolve(opts.model) || out === path.resolve(opts.adapter))
    throw new RlhfError('E_ARGUMENT', '--out must differ from --model and --adapter (nothing is merged in place)');
  const model = await loadModel(opts.model, { device: opts.device ?? 'cpu', adapter: opts.adapter });
  try {
    await replaceDirAtomic(out, (tmp) => model.trainer().saveModel(tmp, opts.model));
    return { out, architecture: model.config.architecture, parameters: model.info().parameters };
  } finally {
    model.dispose();
  }
}
