/**
 * The reward options every sampling stage shares (PPO, rejection sampling
 * and the methods to come), as one option table, and `openRewardSource`,
 * which turns them into one RewardSource: any mix of
 *
 *   - the reward model(s) (`rewardModel`, `safetyModel`, Llama 2's
 *     combination), or a RewardSource passed as hooks.reward in their place;
 *   - a judge model's expected 1-10 score (`judgeModel`, direct RLAIF,
 *     lib/reward/judge-source.ts);
 *   - a user's reward module (`rewardModule`, lib/reward/module.ts);
 *   - built-in verifiable rewards (`rewardFunction`: exact, numeric;
 *     lib/reward/verifiable.ts) against the row's `answerField`;
 *
 * summed with `rewardWeights` (one per source in that order, default 1).
 * docs/rewards.md states the rules.
 */
import { RlhfError } from '../errors';
import type { Model } from '../engine/model';
import type { Device } from '../info';
import { arg, checks, type OptionTable, type Resolved } from '../train/options';
import { checkModuleFile, moduleSource } from './module';
import { openJudgeSource, readScoreTemplate } from './judge-source';
import { openRewardModels } from './model-source';
import { mixRewards, type WeightedSource } from './mix';
import type { RewardSource } from './sources';
import { referenceOf, VERIFIERS, verifierSource, type VerifierName } from './verifiable';

export interface RewardOptions {
  /** Helpfulness (or only) reward model: a *ForSequenceClassification folder, or a PEFT adapter with a score head. */
  rewardModel?: string | null;
  /** Safety reward model (the same kinds); two models combine as in Llama 2. */
  safetyModel?: string | null;
  /** How two reward models combine: 'llama2' (default with a safety model) or 'helpfulness'. */
  combine?: 'llama2' | 'helpfulness';
  /** Llama 2's safety threshold on the sigmoid scale. Default 0.15. */
  safetyThreshold?: number;
  /** Direct RLAIF: a judge model (causal LM folder) whose expected 1-10 score, normalised to [-1, 1], is a reward. Default none. */
  judgeModel?: string | null;
  /** The judge's template file with {prompt} and {response}. Default: a built-in rubric (lib/reward/judge-source.ts). */
  judgeTemplate?: string | null;
  /** A reward module: a .js/.cjs/.mjs/.ts file exporting reward({prompt, completion, row}). Default none. */
  rewardModule?: string | null;
  /** Built-in verifiable rewards: 'exact', 'numeric'. Default none. */
  rewardFunction?: readonly VerifierName[];
  /** The row field holding the reference answer of the built-ins. Default 'answer'. */
  answerField?: string;
  /** One weight per reward source, in the order reward model(s), judge, module, each built-in. Default all 1. */
  rewardWeights?: readonly number[] | null;
}

export type ResolvedRewardOptions = Resolved<RewardOptions>;

const G = 'Rewards';
/** Numbers given on the CLI arrive as strings; a string that is not a number is kept for the check to name. */
const toNumbers = (v: unknown) => (Array.isArray(v) ? v : [v]).map((x) => (typeof x === 'string' && x.trim() !== '' && Number.isFinite(Number(x)) ? Number(x) : x));

export const REWARD_OPTIONS: OptionTable<RewardOptions> = {
  rewardModel: { type: 'string', describe: 'helpfulness reward model: *ForSequenceClassification folder or PEFT adapter with a score head', group: G },
  safetyModel: { type: 'string', describe: 'safety reward model, the same kinds (Llama 2 combination)', group: G },
  combine: { type: 'string', choices: ['llama2', 'helpfulness'], derive: (r) => (r.safetyModel ? 'llama2' : 'helpfulness'), defaultText: 'llama2 with --safety-model', describe: 'how two reward models combine', group: G },
  safetyThreshold: { type: 'number', default: 0.15, check: checks.openUnit(), describe: 'Llama 2 safety threshold (sigmoid scale)', group: G },
  judgeModel: { type: 'string', describe: "direct RLAIF: a judge model folder; reward = its expected 1-10 score, normalised to [-1, 1]", group: G },
  judgeTemplate: { type: 'string', describe: "the judge's template file with {prompt} and {response} (default: a built-in rubric)", group: G },
  rewardModule: { type: 'string', describe: 'reward module: a .js/.cjs/.mjs/.ts file exporting reward({prompt, completion, row}) -> number', group: G },
  rewardFunction: {
    type: 'list',
    default: [],
    defaultText: 'none',
    coerce: (v: unknown) => (Array.isArray(v) ? v : [v]),
    check: (v: unknown[]) => {
      const bad = v.find((x) => !(VERIFIERS as readonly unknown[]).includes(x));
      if (bad !== undefined) return `must name built-in rewards (${VERIFIERS.join(', ')}), got ${JSON.stringify(bad)}`;
      const twice = v.find((x, i) => v.indexOf(x) !== i);
      return twice === undefined ? null : `names ${twice} twice`;
    },
    describe: `built-in verifiable rewards against the row's --answer-field: ${VERIFIERS.join(', ')}`,
    group: G,
  },
  answerField: { type: 'string', default: 'answer', check: (v) => (typeof v === 'string' && v.length > 0 ? null : 'must be a field name'), describe: 'the row field holding the reference answer (MATH: solution)', group: G },
  rewardWeights: {
    type: 'list',
    coerce: toNumbers,
    check: (v: unknown[]) => {
      const bad = v.find((x) => typeof x !== 'number' || !Number.isFinite(x));
      return bad === undefined ? null : `must be numbers, got ${JSON.stringify(bad)}`;
    },
    defaultText: 'all 1',
    describe: 'one weight per reward source, in the order: reward model(s), judge, module, each --reward-function',
    group: G,
  },
};

/** The reward sources a config names, in the weights' order ('reward model' stands for hooks.reward when one is given). */
export function rewardSourceLabels(r: ResolvedRewardOptions, hook: boolean): string[] {
  return [...(hook ? ['hooks.reward'] : r.rewardModel ? ['reward model'] : []), ...(r.judgeModel ? ['judge'] : []), ...(r.rewardModule ? ['module'] : []), ...r.rewardFunction];
}

/**
 * The checks across rows (E_ARGUMENT): --safety-model only with
 * --reward-model, llama2 only with a safety model; once it is known whether
 * a RewardSource is passed as hooks.reward (`hook`), also at least one
 * reward and one weight per source.
 */
export function checkRewardOptions(r: ResolvedRewardOptions, hook?: boolean): void {
  arg(!r.safetyModel || !!r.rewardModel, '--safety-model needs --reward-model (the helpfulness reward model)');
  arg(r.combine !== 'llama2' || r.safetyModel !== null, '--combine llama2 needs --safety-model (a safety reward model)');
  if (hook === undefined) return;
  const labels = rewardSourceLabels(r, hook);
  arg(labels.length > 0, '--reward-model is required unless --judge-model, --reward-function, --reward-module or hooks.reward (a RewardSource) gives the reward');
  arg(!r.judgeTemplate || !!r.judgeModel, '--judge-template needs --judge-model');
  if (r.rewardModule) checkModuleFile(r.rewardModule);
  if (r.rewardWeights !== null)
    arg(
      r.rewardWeights.length === labels.length,
      `--reward-weights has ${r.rewardWeights.length} weight${r.rewardWeights.length === 1 ? '' : 's'} for ${labels.length} reward source${labels.length === 1 ? '' : 's'} (${labels.join(', ')}: one weight each, in that order)`,
    );
}

/**
 * Every row has what the built-in rewards read (E_DATA naming file:line and
 * the field): called on the prompts as they load, before any weights.
 */
export function checkRewardData(r: ResolvedRewardOptions, rows: readonly { row?: Record<string, unknown>; file?: string; line: number }[]): void {
  for (const v of r.rewardFunction) for (const p of rows) referenceOf(p.row ?? {}, r.answerField, v, p.file ?? '(prompt data)', p.line);
}

/** What `openRewardSource` reads of a stage's resolved config. */
export type RewardSourceConfig = ResolvedRewardOptions & { model: string; device: Device };

export interface OpenRewardOptions {
  /** A RewardSource given through the API (hooks.reward): it takes the reward models' place; the caller disposes it. */
  hook?: RewardSource;
  /** Sequences per reward-model forward. Default 8. */
  batchSize?: number;
  /** The stage's name, for log lines. */
  stage?: string;
}

/**
 * One RewardSource of the config's rewards: with `model` (the policy's
 * loaded base), reward adapters are loaded on it (see model-source.ts).
 * Disposing it disposes what it opened, never `hook`.
 */
export async function openRewardSource(cfg: RewardSourceConfig, model: Model | null, log: (l: string) => void, opts: OpenRewardOptions = {}): Promise<RewardSource> {
  checkRewardOptions(cfg, opts.hook !== undefined);
  const stage = opts.stage ?? 'reward';
  const weights = cfg.rewardWeights ?? rewardSourceLabels(cfg, opts.hook !== undefined).map(() => 1);
  const sources: WeightedSource[] = [];
  const add = (source: RewardSource, owned: boolean) => sources.push({ source, owned, weight: weights[sources.length] });
  try {
    if (opts.hook) add(opts.hook, false);
    else if (cfg.rewardModel) {
      const m = cfg as RewardSourceConfig & { rewardModel: string };
      add(await openRewardModels(m, model, log, opts.batchSize ?? 8, stage), true);
    }
    if (cfg.judgeModel) {
      const template = cfg.judgeTemplate ? readScoreTemplate(cfg.judgeTemplate) : undefined;
      add(await openJudgeSource(cfg.judgeModel, { device: cfg.device, template, batchSize: opts.batchSize }), true);
      log(`${stage}: judge ${cfg.judgeModel} (direct RLAIF: expected 1-10 score)`);
    }
    if (cfg.rewardModule) {
      add(await moduleSource(cfg.rewardModule), true);
      log(`${stage}: reward module ${cfg.rewardModule}`);
    }
    for (const v of cfg.rewardFunction) add(verifierSource(v, cfg.answerField), true);
  } catch (e) {
    for (const s of sources) if (s.owned) s.source.dispose();
    throw e;
  }
  if (sources.length > 1 || weights.some((w) => w !== 1)) log(`${stage}: reward = ${sources.map((s, i) => `${s.weight} x ${rewardSourceLabels(cfg, opts.hook !== undefined)[i]}`).join(' + ')}`);
  return mixRewards(sources);
}

/** Every prompt plus `maxNewTokens` fits the reward source's context, when it has one (E_DATA naming file:line). */
export function checkRewardContext(reward: RewardSource, files: readonly (readonly [string | null, readonly { ids: readonly number[]; line: number }[]])[], maxNewTokens: number): void {
  if (reward.maxTokens === undefined) return;
  for (const [file, rows] of files) {
    const tooLong = rows.find((p) => p.ids.length + maxNewTokens > reward.maxTokens!);
    if (tooLong)
      throw new RlhfError('E_DATA', `${file}:${tooLong.line}: the prompt is ${tooLong.ids.length} tokens; with --max-new-tokens ${maxNewTokens} it exceeds the reward model's context (${reward.maxTokens})`, {
        where: `${file}:${tooLong.line}`,
      });
  }
}
