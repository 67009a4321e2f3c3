/**
 * `rlhf-native merge --model BASE --adapter DIR --out DIR`: folds a PEFT LoRA
 * adapter into its base and writes a plain Hugging Face model folder.
 */
import type { Argv } from 'yargs';
import { mergeAdapter } from '../../lib/engine/merge';
import { runCommand } from '../cli-util';
import { deviceOption } from './common';
import { EXAMPLES } from './examples';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'merge',
    'fold a LoRA adapter into its base model (a new model folder)',
    (a) =>
      deviceOption(a)
        .option('model', { type: 'string', demandOption: true, describe: 'base model folder' })
        .option('adapter', { type: 'string', demandOption: true, describe: 'PEFT LoRA adapter folder' })
        .option('out', { type: 'string', demandOption: true, describe: 'merged model folder (written atomically)' })
        .example(...EXAMPLES.merge),
    (argv) =>
      runCommand(argv, async () => {
        const r = await mergeAdapter({ model: argv.model, adapter: argv.adapter, out: argv.out, device: argv.device });
        process.stdout.write(`merged ${argv.adapter} into ${argv.model}: ${r.architecture}, ${r.parameters} parameters, saved to ${r.out}\n`);
      }),
  );
}
