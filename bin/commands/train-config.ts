/**
 * `train --config FILE` / `train --resume RUN_DIR`: loads and checks the
 * recipe config, runs it (lib/recipes/run.ts) and prints a table of the
 * stages' results with the run folder's paths.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../../lib/errors';
import { loadRecipeConfig, resolveRecipeConfig, mergeOptions, normaliseTree, RECIPES } from '../../lib/recipes/config';
import { exitCodeFor } from '../../lib/run/signals';
import { runRecipe } from '../../lib/recipes/run';

const STAGE_ARGS = ['sft', 'rm', 'rm_helpfulness', 'rm-helpfulness', 'rmHelpfulness', 'rm_safety', 'rm-safety', 'rmSafety', 'rs', 'ppo', 'dpo', 'dpo_cdpo', 'dpo-cdpo', 'dpoCdpo', 'dpo_ipo', 'dpo-ipo', 'dpoIpo', 'dpo_simpo', 'dpo-simpo', 'dpoSimpo', 'orpo', 'kto', 'rest', 'grpo', 'rloo', 'hir'];
const fmt = (v: unknown) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? v.toFixed(4) : v.toExponential(3)) : v === null || v === undefined ? '-' : String(v));

/** The command line's recipe-level and per-stage overrides. */
function overridesOf(argv: Record<string, unknown>): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const k of ['recipe', 'model', 'out', 'seed', 'device']) if (argv[k] !== undefined) o[k] = argv[k];
  if (o.device === 'auto' && (argv.config || argv.resume)) delete o.device; // yargs' default must not beat the file or the run's saved config
  for (const k of STAGE_ARGS) if (argv[k] !== undefined) o[k.replace(/-/g, '_')] = argv[k];
  return o;
}

export async function runTrainConfig(argv: Record<string, unknown>): Promise<void> {
  const overrides = overridesOf(argv);
  let cfg;
  if (argv.resume) {
    const dir = String(argv.resume);
    const runFile = path.join(dir, 'run.json');
    if (!fs.existsSync(runFile)) throw new RlhfError('E_ARGUMENT', `--resume ${dir}: not a run folder (no run.json)`, { where: dir });
    if (argv.config) throw new RlhfError('E_ARGUMENT', '--resume takes the config from the run folder; drop --config');
    const saved = JSON.parse(fs.readFileSync(runFile, 'utf8')).config;
    const stages: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(saved.stages ?? {})) stages[k] = v;
    const raw = { recipe: saved.recipe, model: saved.model, out: dir, seed: saved.seed, device: saved.device, ...stages };
    cfg = resolveRecipeConfig(mergeOptions(normaliseTree(raw), normaliseTree({ ...overrides, out: dir })), runFile);
  } else {
    cfg = loadRecipeConfig(String(argv.config), overrides);
  }
  const log = (l: string) => void process.stderr.write(l + '\n');
  log(`train: ${cfg.recipe} (${RECIPES[cfg.recipe].join(' -> ')}) on ${cfg.model}; run folder ${cfg.out}${argv.resume ? ' (resuming)' : ''}`);
  const r = await runRecipe(cfg, { resume: !!argv.resume, log });
  const rows = r.stages.map((s) => {
    const ev = (s.summary?.eval ?? {}) as Record<string, unknown>;
    const key = Object.entries(ev)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => `${k} ${fmt(v)}`)
      .join(', ');
    return [s.name, s.summary ? 'done' : r.interrupted ? 'stopped' : '-', s.summary ? fmt(s.summary.steps) : '-', s.summary ? `${fmt(s.summary.wall_s)}s` : '-', key || '-'];
  });
  const head = ['stage', 'status', 'steps', 'wall', 'held-out'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => String(row[i]).length)));
  const line = (cells: string[]) => cells.map((c, i) => String(c).padEnd(w[i])).join('  ').trimEnd();
  process.stdout.write([line(head), ...rows.map(line)].join('\n') + '\n');
  process.stdout.write(`run folder: ${r.run}\nsummary: ${r.summaryFile}\nreport: ${r.reportFile}\n`);
  if (r.interrupted) {
    process.stdout.write(`stopped before the end; continue with: rlhf-native train --resume ${r.run}\n`);
    process.exitCode = exitCodeFor(r.signal);
  }
}
