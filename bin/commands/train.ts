/**
 * `rlhf-native train`: the main job. The full pipeline (pretrain, SFT, reward
 * models, rejection sampling, PPO on the built-in task) is filled in by the
 * stage modules as they land; until then it runs what exists end to end: it
 * reports the runtime, writes a tiny random-initialised base model in Hugging
 * Face layout, and re-reads and checks it through the native safetensors
 * reader, saying plainly that the training stages are not built yet.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { runtimeInfo, resolveDevice } from '../../lib/info';
import { initModel } from '../../lib/model/init';
import { openModelFolder } from '../../lib/model/folder';
import { runCommand } from '../cli-util';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'train',
    'run the whole RLHF pipeline on the built-in task (default) or a config file',
    (a) =>
      a
        .option('out', { type: 'string', default: 'rlhf-run', describe: 'run folder' })
        .option('device', { choices: ['auto', 'cpu', 'cuda'] as const, default: 'auto' as const, describe: 'compute device' })
        .option('seed', { type: 'number', default: 0 }),
    (argv) =>
      runCommand(argv, async () => {
        const info = runtimeInfo();
        const device = resolveDevice(argv.device);
        process.stdout.write(`rlhf-native ${info.version}: device ${device} (cpu ${info.cpu.simd}, ${info.cpu.threads} threads; backends ${info.backends.join(', ')})\n`);
        const base = path.join(argv.out, 'base');
        const exists = fs.existsSync(base) && fs.readdirSync(base).length > 0;
        if (!exists) {
          await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: argv.seed, dtype: 'F32', force: false });
          process.stdout.write(`wrote a tiny random-initialised Llama base model to ${base}\n`);
        } else {
          process.stdout.write(`using the existing base model in ${base}\n`);
        }
        const model = openModelFolder(base);
        const params = model.tensors.reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
        process.stdout.write(`checked ${base}: ${model.config.arch}, ${model.tensors.length} tensors, ${(params / 1e6).toFixed(2)}M parameters\n`);
        model.close?.();
        process.stdout.write(
          'The training stages (SFT, reward models, rejection sampling, PPO) are not built in this version yet; nothing was trained.\n',
        );
      }),
  );
}
