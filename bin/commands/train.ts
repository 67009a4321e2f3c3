/**
 * `rlhf-native train --config run.yaml` runs a recipe (instructgpt, llama2)
 * in a run folder; `--resume RUN_DIR` continues a stopped one; any stage
 * option can be overridden as `--<stage>.<option> value` (e.g. `--sft.lr
 * 1e-4`). See docs/recipes.md.
 *
 * `rlhf-native train` with no config: the main job. The full pipeline (pretrain, SFT, reward
 * models, rejection sampling, PPO on the built-in task) is filled in by the
 * stage modules as they land; until then it runs what exists end to end: it
 * reports the runtime, writes a tiny random-initialised base model in Hugging
 * Face layout, checks it through the native reader, fine-tunes it with the
 * SFT stage on a small generated word-reversal task, and shows the loss
 * falling and a greedy completion before and after; it says plainly which
 * stages are not built yet.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { runtimeInfo, resolveDevice } from '../../lib/info';
import { initModel } from '../../lib/model/init';
import { openModelFolder } from '../../lib/model/folder';
import { runCommand } from '../cli-util';
import { deviceOption } from './common';
import { runSft } from '../../lib/stages/sft';
import { loadModel } from '../../lib/engine/model';
import { loadTokenizer } from '../../lib/tokenizer/tokenizer';
import { runTrainConfig } from './train-config';

/** A small generated SFT task: reverse a short word. */
function reversalRows(n: number, seed: number): { prompt: string; completion: string }[] {
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  let x = seed * 2654435761 + 1;
  const rnd = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
  return Array.from({ length: n }, () => {
    const len = 3 + Math.floor(rnd() * 3);
    const w = Array.from({ length: len }, () => letters[Math.floor(rnd() * 26)]).join('');
    return { prompt: `Reverse ${w}:`, completion: ` ${[...w].reverse().join('')}` };
  });
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'train',
    'run the RLHF pipeline on the built-in task (what exists so far: see README)',
    (a) =>
      deviceOption(a)
        .option('config', { type: 'string', describe: 'recipe config (YAML or JSON): recipe, model, out, seed and each stage\'s options' })
        .option('resume', { type: 'string', describe: 'continue the stopped run in this folder (its run.json holds the config)' })
        .option('recipe', { choices: ['instructgpt', 'llama2'] as const, describe: 'overrides the config\'s recipe' })
        .option('model', { type: 'string', describe: 'overrides the config\'s model folder' })
        .option('out', { type: 'string', describe: 'run folder [default: rlhf-run]' })
        .option('seed', { type: 'number' })
        .parserConfiguration({ 'dot-notation': true })
        .strict(false),
    (argv) =>
      runCommand(argv, async () => {
        if (argv.config || argv.resume) return runTrainConfig(argv as unknown as Record<string, unknown>);
        const out = argv.out ?? 'rlhf-run', seed = argv.seed ?? 0;
        const info = runtimeInfo();
        const device = resolveDevice(argv.device);
        process.stdout.write(`rlhf-native ${info.version}: device ${device} (cpu ${info.cpu.simd}, ${info.cpu.threads} threads; backends ${info.backends.join(', ')})\n`);
        const base = path.join(out, 'base');
        const exists = fs.existsSync(base) && fs.readdirSync(base).length > 0;
        if (!exists) {
          await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: seed, dtype: 'F32', force: false });
          process.stdout.write(`wrote a tiny random-initialised Llama base model to ${base}\n`);
        } else {
          process.stdout.write(`using the existing base model in ${base}\n`);
        }
        const model = openModelFolder(base);
        const params = model.tensors.reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
        process.stdout.write(`checked ${base}: ${model.config.arch}, ${model.tensors.length} tensors, ${(params / 1e6).toFixed(2)}M parameters\n`);
        model.close?.();

        // Supervised finetuning on a generated task, through the SFT stage.
        const data = path.join(out, 'sft-data.jsonl');
        const rows = reversalRows(64, seed + 1);
        fs.writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
        const tok = loadTokenizer(base);
        const probe = rows[0];
        const greedy = async (dir: string) => {
          const m = await loadModel(dir, { device: 'cpu' });
          const g = await m.generate({ prompts: [tok.encode(probe.prompt)], maxNewTokens: 8, temperature: 0 });
          m.dispose();
          return JSON.stringify(tok.decode(Array.from(g.tokens[0]), { skipSpecialTokens: true }));
        };
        const before = await greedy(base);
        const sftOut = path.join(out, 'sft');
        process.stdout.write(`SFT: ${rows.length} generated "Reverse <word>:" examples, full fine-tuning, 80 steps\n`);
        const r = await runSft(
          { model: base, data, out: sftOut, full: true, lr: 3e-3, steps: 80, batchSize: 16, lrSchedule: 'constant', maxGradNorm: 1, seed: seed, device: 'cpu' },
          { log: (line: string) => process.stderr.write(line + '\n') },
        );
        const after = await greedy(sftOut);
        process.stdout.write(
          [
            `SFT loss ${r.initialLoss?.toFixed(3)} -> ${r.finalLoss?.toFixed(3)} in ${r.steps} steps (${r.tokensPerSec.toFixed(0)} tokens/s); model written to ${sftOut}`,
            `"${probe.prompt}" (expected ${JSON.stringify(probe.completion)}): before ${before}, after ${after}`,
            'Not built yet in this version: reward models, rejection sampling and PPO (the rest of the pipeline).',
          ].join('\n') + '\n',
        );
      }),
  );
}
