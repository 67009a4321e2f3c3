/**
 * What `train` accepts. Its command turns off yargs' strict mode so that
 * `--<stage>.<option>` overrides parse (dot notation), so nothing else would
 * catch a misspelt flag: this check does, before anything runs, and names
 * the nearest valid spelling. Each stage override is checked against that
 * stage's option table (lib/train/registry.ts), the same rows a recipe file's
 * section is checked against.
 */
import { RlhfError } from '../../lib/errors';
import type { OptionSpec } from '../../lib/train/options';
import { stageOf } from '../../lib/train/registry';
import { STAGE_KEYS } from '../../lib/recipes/config';

/** train's own options (and the global ones), camelCase. */
export const TRAIN_OPTIONS = ['config', 'resume', 'recipe', 'model', 'out', 'seed', 'scale', 'methods', 'device'] as const;
const GLOBAL = ['debug', 'help', 'version'];
/** Options that only mean something to a recipe run (--config or --resume of one), and those only the built-in demo reads. */
const RECIPE_ONLY = ['recipe', 'model'];
const DEMO_ONLY = ['scale', 'methods'];

const camel = (k: string) => k.replace(/[-_]+([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()).replace(/_/g, '-');

/** Levenshtein distance (insertions, deletions, substitutions). */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur.push(Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1)));
    prev = cur;
  }
  return prev[b.length];
}

/** The closest candidate within a third of the word's length (at least 1, at most 3 edits), or null. */
export function nearest(word: string, candidates: readonly string[]): string | null {
  const limit = Math.min(3, Math.max(1, Math.floor(word.length / 3)));
  let best: string | null = null, bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  return bestD <= limit ? best : null;
}

/** The recipe section a stage argument names (`rm-helpfulness`, `rmHelpfulness` -> rm_helpfulness), or null. */
function sectionOf(key: string): string | null {
  return STAGE_KEYS.find((s) => camel(s) === camel(key)) ?? null;
}

/** The keys the user typed, once each (yargs adds a camelCase twin of every kebab-case key). */
function typed(o: Record<string, unknown>): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const k of Object.keys(o)) {
    if (seen.has(camel(k))) continue;
    seen.add(camel(k));
    out.push(k);
  }
  return out;
}

const fail = (msg: string) => new RlhfError('E_ARGUMENT', `train: ${msg}`);
const hint = (s: string | null) => (s ? ` (did you mean ${s}?)` : '');

/** Checks one `--<section>.<option>` group against the stage's option table. */
function checkSection(section: string, given: string, value: unknown): void {
  if (value === false) return; // --no-<stage>: skip the stage, as `<stage>: false` in a recipe file
  const stage = stageOf(section)!;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw fail(`--${given} needs an option: --${given}.<option> VALUE (e.g. --${given}.lr 1e-4), or --no-${given} to skip the stage`);
  // A recipe section holds option keys (useMargin), not a stage command's flag spellings (--margin).
  const rows = stage.options as Record<string, OptionSpec>;
  const names = Object.keys(rows).map(kebab);
  for (const k of typed(value as Record<string, unknown>)) {
    if (camel(k) === 'skip' || rows[camel(k)]) continue;
    const near = nearest(kebab(k), names);
    throw fail(`unknown option --${given}.${k}: the ${stage.name} stage has no such option${hint(near && `--${given}.${near}`)}; its options: rlhf-native ${stage.name} --help`);
  }
}

/** How `train` runs: the built-in demo, continuing a stopped demo, or a recipe (--config, or --resume of a recipe run). */
export type TrainMode = 'demo' | 'demo-resume' | 'recipe';

/**
 * Throws E_ARGUMENT (one line) for an argument `train` would otherwise
 * ignore: an unknown flag, a stage option the stage does not have, a
 * positional argument, or an option the chosen mode does not read.
 */
export function checkTrainArgs(argv: Record<string, unknown>, mode: TrainMode): void {
  const extra = ((argv._ as unknown[]) ?? []).slice(1);
  if (extra.length) throw fail(`unexpected argument '${extra[0]}' (options are --name value; see rlhf-native train --help)`);
  const known = new Set<string>([...TRAIN_OPTIONS, ...GLOBAL]);
  const sections: [string, string, unknown][] = [];
  for (const k of typed(argv)) {
    if (k === '_' || k === '$0' || known.has(camel(k))) continue;
    const section = sectionOf(k);
    if (section) {
      sections.push([section, k, argv[k]]);
      continue;
    }
    const v = argv[k];
    const isGroup = typeof v === 'object' && v !== null && !Array.isArray(v);
    const sub = isGroup ? Object.keys(v as object)[0] : undefined;
    const near = isGroup ? nearest(kebab(k), STAGE_KEYS.map(kebab)) : nearest(kebab(k), [...TRAIN_OPTIONS, ...STAGE_KEYS].map(kebab));
    const shown = isGroup ? `--${k}.${sub}` : `--${kebab(k)}`;
    const suggestion = near && (isGroup ? `--${near.replace(/-/g, '_')}.${sub}` : `--${near}`);
    throw fail(`unknown option ${shown}${hint(suggestion)}`);
  }
  for (const [section, given, value] of sections) checkSection(section, given, value);

  const isSet = (k: string) => argv[k] !== undefined;
  const overrides = sections.map(([, g, v]) => (v === false ? `--no-${g}` : `--${g}.*`));
  const first = (keys: string[], more: string[] = []) => [...keys.filter(isSet).map((k) => `--${k}`), ...more][0];
  let bad: string | undefined;
  if (mode === 'demo' && (bad = first(RECIPE_ONLY, overrides)))
    throw fail(`${bad} applies to a recipe run (--config FILE or --resume RUN_DIR); the built-in demo takes --scale, --methods, --seed, --out and --device`);
  if (mode === 'demo-resume' && (bad = first([...RECIPE_ONLY, ...DEMO_ONLY, 'seed', 'out'], overrides)))
    throw fail(`${bad}: --resume continues the demo with the settings it started with`);
  if (mode === 'recipe' && (bad = first(DEMO_ONLY)))
    throw fail(`${bad} applies to the built-in demo (no --config); ${isSet('config') ? 'a recipe file sets its stages itself' : '--resume continues a run with its own settings'}`);
}
