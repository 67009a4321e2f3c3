/**
 * Recipe configs: which stages run in which order, and each stage's options.
 * Read from YAML or JSON (`train --config run.yaml`), merged with command-line
 * overrides (`--sft.lr 1e-4`, `--ppo.iterations 20`), checked before anything
 * runs. Layout and defaults: docs/recipes.md.
 *
 * ```yaml
 * recipe: llama2            # or instructgpt
 * model: ./base             # Hugging Face causal-LM folder
 * out: runs/first           # the run folder
 * seed: 0
 * sft: { data: demos.jsonl }
 * rm_helpfulness: { data: helpful-pairs.jsonl }
 * rm_safety: { data: safety-pairs.jsonl }
 * rs: { data: prompts.jsonl, rounds: 2 }
 * ppo: { data: prompts.jsonl, iterations: 20 }
 * ```
 *
 * Option names may be written camelCase (`batchSize`), snake_case or
 * kebab-case; they are the stage's own options (lib/stages/*.ts). The model,
 * output folder, seed and device of each stage come from the recipe; the
 * recipe wires each stage's output into the next.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseDocument } from 'yaml';
import { RlhfError } from '../errors';
import type { Device } from '../info';

export const RECIPES = {
  /** Ouyang et al. 2022: SFT -> reward model -> PPO. */
  instructgpt: ['sft', 'rm', 'ppo'],
  /** Touvron et al. 2023: SFT -> helpfulness and safety reward models (margin loss) -> rejection sampling -> PPO. */
  llama2: ['sft', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo'],
  /** Rafailov et al. 2023: SFT -> DPO on preference pairs (no reward model, no sampling). */
  dpo: ['sft', 'dpo'],
  /** Gulcehre et al. 2023: SFT (behaviour cloning) -> reward model -> ReST (Grow and Improve steps). */
  rest: ['sft', 'rm', 'rest'],
  /** Zhang et al. 2023: SFT -> hindsight instruction relabelling (a checker instead of a reward model). */
  hir: ['sft', 'hir'],
  /** Ethayarajh et al. 2024: SFT -> KTO on completions labelled desirable or not (or on pairs, unpaired). */
  kto: ['sft', 'kto'],
  /** Hong et al. 2024: ORPO straight from the base model (its NLL term does SFT's work; no reference model). */
  orpo: ['orpo'],
  /**
   * Every method side by side (`train --methods`): each policy stage starts
   * from the same SFT model (none continues another's policy); the sections
   * a run does not ask for are skipped.
   */
  methods: ['sft', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo', 'dpo', 'dpo_cdpo', 'dpo_ipo', 'dpo_simpo', 'orpo', 'kto', 'grpo', 'rloo', 'rest', 'hir'],
} as const;
export type RecipeName = keyof typeof RECIPES;
/** Stage sections; `dpo_<name>` sections are more dpo stages (another loss of the family), as rm_helpfulness is an rm stage. */
export type StageKey = 'sft' | 'rm' | 'rm_helpfulness' | 'rm_safety' | 'rs' | 'ppo' | 'dpo' | 'dpo_cdpo' | 'dpo_ipo' | 'dpo_simpo' | 'orpo' | 'kto' | 'rest' | 'grpo' | 'rloo' | 'hir';
export const STAGE_KEYS: readonly StageKey[] = ['sft', 'rm', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo', 'dpo', 'dpo_cdpo', 'dpo_ipo', 'dpo_simpo', 'orpo', 'kto', 'rest', 'grpo', 'rloo', 'hir'];

/** Recipes whose policy stages build on each other (ppo continues rs's policy); in the others each starts from SFT's model. */
export const CHAINED_RECIPES: ReadonlySet<RecipeName> = new Set(['instructgpt', 'llama2', 'dpo', 'rest', 'hir', 'kto', 'orpo']);

/** A stage's own options, as given (camelCase keys after normalising). `skip: true` leaves it out. */
export type StageOptions = Record<string, unknown> & { skip?: boolean };

export interface RecipeConfig {
  recipe: RecipeName;
  /** The starting model folder (causal LM). */
  model: string;
  /** The run folder. */
  out: string;
  seed: number;
  device: Device;
  stages: Partial<Record<StageKey, StageOptions>>;
}

/** Stage keys in the order the recipe runs them (those with `skip: true` left out). */
export function recipeStages(cfg: RecipeConfig): StageKey[] {
  return (RECIPES[cfg.recipe] as readonly StageKey[]).filter((k) => !cfg.stages[k]?.skip);
}

const camel = (k: string) => k.replace(/[-_]+([a-z0-9])/g, (_, c: string) => c.toUpperCase());

function normaliseKeys(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[camel(k)] = v;
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads a YAML or JSON recipe file; syntax errors name the file and line. */
export function readRecipeFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new RlhfError('E_IO', `${file}: cannot read the config (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { where: file });
  }
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length) {
    const e = doc.errors[0];
    const line = e.linePos?.[0]?.line ?? (e.pos?.[0] !== undefined ? text.slice(0, e.pos[0]).split('\n').length : undefined);
    throw new RlhfError('E_CONFIG', `${file}${line ? `:${line}` : ''}: ${e.message.split('\n')[0]}`, { where: file });
  }
  const v = doc.toJS();
  if (!isObject(v)) throw new RlhfError('E_CONFIG', `${file}: the config must be a mapping of keys (recipe, model, out, stages ...)`, { where: file });
  return v;
}

/** camelCase keys at the top level and inside each section (what the stages' option names are). */
export function normaliseTree(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[camel(k)] = isObject(v) ? normaliseKeys(v) : v;
  return out;
}

/** Deep merge: `over`'s keys win; objects merge, everything else replaces. */
export function mergeOptions(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    out[k] = isObject(v) && isObject(out[k]) ? mergeOptions(out[k] as Record<string, unknown>, v) : v;
  }
  return out;
}

/**
 * Checks and normalises a raw config (file contents merged with overrides).
 * `where` names the source in errors. Unknown top-level keys are errors
 * (a misspelt stage would otherwise be silently ignored).
 */
export function resolveRecipeConfig(raw: Record<string, unknown>, where = 'config'): RecipeConfig {
  const bad = (msg: string) => new RlhfError('E_CONFIG', `${where}: ${msg}`, { where });
  const top = normaliseKeys(raw);
  // Stage sections are looked up by their snake_case names; accept the camelCase spellings too.
  const stageKey = (k: string) => STAGE_KEYS.find((s) => camel(s) === k);
  const known = new Set(['recipe', 'model', 'out', 'seed', 'device']);
  for (const k of Object.keys(top)) if (!known.has(k) && !stageKey(k)) throw bad(`unknown key '${k}' (expected recipe, model, out, seed, device or a stage: ${STAGE_KEYS.join(', ')})`);
  const recipe = top.recipe ?? 'instructgpt';
  if (typeof recipe !== 'string' || !(recipe in RECIPES)) throw bad(`recipe must be one of ${Object.keys(RECIPES).join(', ')}, got ${JSON.stringify(recipe)}`);
  for (const k of ['model', 'out'] as const) if (typeof top[k] !== 'string' || !(top[k] as string).length) throw bad(`'${k}' is required (a folder path)`);
  const seed = top.seed ?? 0;
  if (!Number.isInteger(seed) || (seed as number) < 0) throw bad(`seed must be a non-negative integer, got ${JSON.stringify(seed)}`);
  const device = top.device ?? 'auto';
  if (!['auto', 'cpu', 'cuda'].includes(device as string)) throw bad(`device must be auto, cpu or cuda, got ${JSON.stringify(device)}`);
  const stages: Partial<Record<StageKey, StageOptions>> = {};
  for (const [k, v] of Object.entries(top)) {
    const s = stageKey(k);
    if (!s || v === undefined) continue;
    if (v === false) {
      stages[s] = { skip: true };
      continue;
    }
    if (!isObject(v)) throw bad(`'${s}' must be a mapping of the stage's options`);
    const opts = normaliseKeys(v);
    for (const fixed of ['model', 'out'])
      if (fixed in opts) throw bad(`${s}.${fixed} is set by the recipe (each stage's ${fixed === 'model' ? 'model is the previous stage\'s output' : 'output goes in the run folder'})`);
    stages[s] = opts as StageOptions;
  }
  const cfg: RecipeConfig = { recipe: recipe as RecipeName, model: top.model as string, out: top.out as string, seed: seed as number, device: device as RecipeConfig['device'], stages };
  for (const s of recipeStages(cfg)) {
    const data = cfg.stages[s]?.data;
    if (typeof data !== 'string' || !data) throw bad(`${s}.data is required for the ${cfg.recipe} recipe (${['rs', 'ppo', 'rest', 'grpo', 'rloo'].includes(s) ? 'prompts' : s === 'sft' ? 'demonstrations' : s === 'kto' ? 'labelled completions or preference pairs' : 'preference pairs'} JSONL)`);
  }
  return cfg;
}

/** Reads `file` (when given), merges the overrides, resolves. Relative data paths in a file are relative to the file's folder. */
export function loadRecipeConfig(file: string | null, overrides: Record<string, unknown>): RecipeConfig {
  let raw: Record<string, unknown> = {};
  if (file) {
    raw = readRecipeFile(file);
    const dir = path.dirname(path.resolve(file));
    const rel = (p: unknown) => (typeof p === 'string' && p && !path.isAbsolute(p) ? path.join(dir, p) : p);
    raw = { ...raw, model: rel(raw.model), out: rel(raw.out) };
    for (const [k, v] of Object.entries(raw))
      if (isObject(v)) {
        const o: Record<string, unknown> = { ...v };
        for (const pk of ['data', 'eval_data', 'evalData', 'eval-data', 'adapter', 'reward_model', 'rewardModel', 'safety_model', 'safetyModel', 'reward_module', 'rewardModule']) if (pk in o) o[pk] = rel(o[pk]);
        raw[k] = o;
      }
  }
  return resolveRecipeConfig(mergeOptions(normaliseTree(raw), normaliseTree(overrides)), file ?? 'command line');
}
