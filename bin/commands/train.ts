/**
 * `rlhf-native train`: the main job. With no config it runs the built-in
 * demo (lib/recipes/demo.ts): Llama 2's recipe on the committed demo base
 * model and the demo world, a simulated labeler in place of human raters,
 * then a table of what each stage achieved on held-out prompts.
 *
 * `rlhf-native train --config run.yaml` runs a recipe (instructgpt, llama2, dpo, rest)
 * in a run folder; `--resume RUN_DIR` continues a stopped one; any stage
 * option can be overridden as `--<stage>.<option> value` (e.g. `--sft.lr
 * 1e-4`). See docs/recipes.md and docs/demo.md.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { runtimeInfo, resolveDevice } from '../../lib/info';
import { runCommand } from '../cli-util';
import { launcherWorld } from '../../lib/engine/distributed';
import { RlhfError } from '../../lib/errors';
import { deviceOption } from './common';
import { runTrainConfig } from './train-config';
import { checkTrainArgs } from './train-args';
import { exitCodeFor } from '../../lib/run/signals';
import { runDemo, DEMO_SIZES, type DemoResult, type DemoScale } from '../../lib/recipes/demo';
import { DEMO_METHODS, parseMethods, type DemoMethod } from '../../lib/recipes/demo-methods';
import { demoComparison, DEMO_TABLE_CAPTION, formatTable } from '../../lib/recipes/demo-table';
import { EXAMPLES } from './examples';

/** A fresh run folder: `base`, or `base-2`, `base-3`, ... when it is taken (nothing a user has is touched). */
function freeRunFolder(base: string): string {
  if (!fs.existsSync(base) || fs.readdirSync(base).length === 0) return base;
  for (let i = 2; ; i++) {
    const d = `${base}-${i}`;
    if (!fs.existsSync(d) || fs.readdirSync(d).length === 0) return d;
  }
}

/** The demo's final table: one row per stage (lib/recipes/demo-table.ts). */
export function demoTable(r: DemoResult): string {
  return formatTable(demoComparison(r));
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'train',
    'run the RLHF pipeline: the built-in demo with no arguments, or a recipe with --config',
    (a) =>
      deviceOption(a)
        .option('config', { type: 'string', describe: "recipe config (YAML or JSON): recipe, model, out, seed and each stage's options" })
        .option('resume', { type: 'string', describe: 'continue the stopped run in this folder (its run.json holds the config)' })
        .option('recipe', { choices: ['instructgpt', 'llama2', 'dpo', 'rest', 'hir', 'kto', 'orpo', 'methods'] as const, describe: "overrides the config's recipe [default: the config's, else instructgpt]" })
        .option('model', { type: 'string', describe: "overrides the config's model folder [default: the config's]" })
        .option('out', { type: 'string', describe: 'run folder [default: rlhf-run, or rlhf-run-N when taken]' })
        .option('seed', { type: 'number', describe: "the run's seed [default: the config's seed, or 0]" })
        .option('scale', { choices: Object.keys(DEMO_SIZES) as DemoScale[], describe: 'demo size (no --config): full, or quick (about half the time) [default: full]' })
        .option('methods', { type: 'string', describe: `demo: these methods side by side, each from the same SFT model (${DEMO_METHODS.join(', ')}, or all) [default: none, Llama 2's recipe]` })
        .parserConfiguration({ 'dot-notation': true })
        // Not strict, so that --<stage>.<option> parses; checkTrainArgs refuses what strict mode would (and more).
        .strict(false)
        .example(...EXAMPLES.train),
    (argv) =>
      runCommand(argv, async () => {
        const lw = launcherWorld();
        // A recipe chains stages (online ones among them) into one run folder: N copies would race on it.
        if (lw.size > 1)
          throw new RlhfError('E_UNSUPPORTED', `train (recipes and the demo) does not run data-parallel yet (world of ${lw.size} ranks from ${lw.launcher}); run its sft, rm or dpo stages under mpirun one by one (docs/distributed.md)`);
        const demoMarker = argv.resume ? path.join(String(argv.resume), 'data', 'demo.json') : null;
        const recipeRun = !!argv.config || (!!argv.resume && !(demoMarker && fs.existsSync(demoMarker)));
        checkTrainArgs(argv as unknown as Record<string, unknown>, recipeRun ? 'recipe' : argv.resume ? 'demo-resume' : 'demo');
        if (recipeRun) return runTrainConfig(argv as unknown as Record<string, unknown>);
        const info = runtimeInfo();
        const device = resolveDevice(argv.device);
        let out: string, seed: number, scale: DemoScale, methods: DemoMethod[] | undefined;
        if (argv.resume) {
          const m = JSON.parse(fs.readFileSync(demoMarker!, 'utf8'));
          out = String(argv.resume);
          seed = m.seed;
          scale = m.scale;
          methods = m.methods ? parseMethods(m.methods) : undefined;
        } else {
          methods = argv.methods !== undefined ? parseMethods(String(argv.methods)) : undefined;
          out = argv.out ?? freeRunFolder('rlhf-run');
          seed = argv.seed ?? 0;
          scale = (argv.scale as DemoScale | undefined) ?? 'full';
        }
        process.stdout.write(
          `rlhf-native ${info.version}: device ${device} (cpu ${info.cpu.simd}, ${info.cpu.threads} threads)\n` +
            (methods
              ? `The built-in demo, methods side by side: ${methods.join(', ')}, each from the same SFT model, on a `
              : `The built-in demo: Llama 2's recipe (SFT -> helpfulness and safety reward models -> rejection sampling -> PPO) on a `) +
            `0.85M-parameter Llama pretrained on a small assistant world; a simulated labeler plays the human raters. Run folder: ${out}\n`,
        );
        const r = await runDemo(
          { out, seed, scale, device: argv.device, resume: !!argv.resume, methods },
          { log: (l) => void process.stderr.write(l + '\n'), onStage: (stage, ev) => ev === 'start' && process.stderr.write(`== ${stage}\n`) },
        );
        if (r.interrupted) {
          process.stdout.write(`stopped; continue with: rlhf-native train --resume ${r.run}\n`);
          process.exitCode = exitCodeFor(r.signal);
          return;
        }
        process.stdout.write(
          `\n${DEMO_TABLE_CAPTION}:\n\n` +
            demoTable(r) +
            `\nPreference pairs from the labeler: ${r.labelPairs.helpfulness} helpfulness, ${r.labelPairs.safety} safety. ` +
            `Total ${r.seconds.toFixed(0)}s.\nrun folder: ${r.run}\nsummary: ${r.summaryFile}\nreport: ${r.reportFile}\n`,
        );
      }),
  );
}
