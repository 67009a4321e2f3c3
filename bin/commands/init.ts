/** `rlhf-native init --arch llama|qwen2|gpt2 --preset NAME --out DIR [--seed N]`: a random-initialised model folder in Hugging Face layout. */
import type { Argv } from 'yargs';
import { initModel } from '../../lib/model/init';
import { PRESET_NAMES } from '../../lib/model/presets';
import { runCommand } from '../cli-util';
import { EXAMPLES } from './examples';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'init',
    'write a random-initialised model folder (config, safetensors, BPE tokenizer)',
    (a) =>
      a
        .option('arch', { choices: ['llama', 'qwen2', 'gpt2'] as const, demandOption: true, describe: 'architecture' })
        .option('preset', { type: 'string', default: 'tiny', choices: PRESET_NAMES as readonly string[], describe: 'size preset' })
        .option('out', { type: 'string', demandOption: true, describe: 'output folder (must be empty or absent)' })
        .option('seed', { type: 'number', default: 0, describe: 'random seed' })
        .option('dtype', { choices: ['F32', 'F16', 'BF16'] as const, default: 'F32' as const, describe: 'weight dtype on disk' })
        .option('force', { type: 'boolean', default: false, describe: 'write into a non-empty folder' })
        .example(...EXAMPLES.init),
    (argv) =>
      runCommand(argv, async () => {
        const r = await initModel({ arch: argv.arch, preset: argv.preset, outDir: argv.out, seed: argv.seed, dtype: argv.dtype, force: argv.force });
        process.stdout.write(`wrote ${argv.out}: ${JSON.stringify(r)}\n`);
      }),
  );
}
