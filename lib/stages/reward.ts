/**
 * The reward-model stage (`rlhf-native rm`): a scalar score head on the SFT
 * model trained on preference pairs with the pairwise (Bradley-Terry) loss,
 * optionally with Llama 2's margin: loss = -log sigmoid(r_chosen - r_rejected
 * - margin). The reward of a sequence is the head's value at its last token
 * (TRL's RewardTrainer, transformers' *ForSequenceClassification). See
 * docs/rm.md.
 *
 * Two ways to hold the reward model, as DESIGN.md section 2 lays out:
 *   - LoRA (default): a LoRA adapter that owns the score head, on the frozen
 *     SFT base, saved in PEFT's SEQ_CLS layout (adapter_config.json +
 *     adapter_model.safetensors with `base_model.model.score.weight`); PPO
 *     later loads it onto the policy's own base as its critic and reward
 *     model, so one copy of the base serves every role.
 *   - full: every weight plus a fresh head, saved as a
 *     `*ForSequenceClassification` folder (`score.weight`, `num_labels: 1`).
 *
 * One optimizer step: for each of `gradAccum` micro-batches of `batchSize`
 * pairs, one forward over the 2 x batchSize sequences (chosen rows, then
 * rejected rows) -> rewards at each row's last token -> `pairwise_loss`
 * (native op) -> backward of the rewards' gradient; then the optimizer step.
 * Every micro-batch scales its gradient by its share of the step's pairs, so
 * the accumulated gradient is that of the mean over all of them.
 */
import { RlhfError } from '../errors';
import type { Model } from '../engine/model';
import type { Trainer } from '../engine/train';
import { loadPreferenceData, identicalWarning, type MarginScale, type PreferenceExample } from '../data/preference-data';
import { splitEval } from '../data/sft-data';
import { checks, defaultsOf, lrDefaults, describe, PREFERENCE_DATA_OPTIONS, SUPERVISED_OPTIONS, withDefaults, type OptionTable, type PreferenceStageOptions, type Resolved, type SupervisedOptions } from '../train/options';
import { preferenceDataOptions } from '../train/preference-data-options';
import { resolveSupervised, runSupervised, type SupervisedMethod, type SupervisedRun } from '../train/supervised';
import type { Stage, StageHooks } from '../train/stage';

/** RM's own options beside the shared ones. */
export interface RmOwnOptions {
  /** Std of the fresh score head. Default: the model's initializer_range (0.02), as transformers initialises it. */
  headStd?: number | null;
  /** Use each pair's margin (given, or mapped from its rating) in the loss: Llama 2's margin loss. Default true. */
  useMargin?: boolean;
  /** Column of Llama 2's Table 27 mapping ratings to margins. Default 'small'. */
  marginScale?: MarginScale;
  /** Train on each pair's soft label "label_prob" where it has one (cross-entropy against P(chosen better); its margin is then not used). Default true. */
  softLabels?: boolean;
}
export type RmConfig = SupervisedOptions & PreferenceStageOptions & RmOwnOptions;
export type ResolvedRmConfig = Resolved<RmConfig>;

/**
 * The shared options with Llama 2's reward-model defaults (one epoch, cosine
 * schedule, 3% warmup, shuffled pairs; lr 1e-5 full / 1e-4 LoRA) and RM's own rows.
 */
export const RM_OPTIONS: OptionTable<RmConfig> = {
  ...describe(
    withDefaults(SUPERVISED_OPTIONS, { epochs: 1, shuffle: true, lrSchedule: 'cosine', warmupRatio: 0.03 }, { lr: { derive: (r) => (r.full ? 1e-5 : 1e-4), defaultText: '1e-4 LoRA, 1e-5 --full' } }),
    {
      model: 'the SFT model folder (causal LM; its LM head is not used), or a reward model to continue',
      data: 'preference JSONL: {prompt, chosen, rejected} (+ margin or rating), or {chosen, rejected}',
      out: 'output folder: PEFT adapter with score head (or a *ForSequenceClassification folder), metrics.jsonl, rm_config.json',
      batchSize: 'pairs per micro-batch',
    },
  ),
  ...PREFERENCE_DATA_OPTIONS,
  headStd: { type: 'number', check: checks.nonNeg(), defaultText: "the model's initializer_range", describe: 'std of the fresh score head', group: 'LoRA' },
  useMargin: { type: 'boolean', default: true, flag: 'margin', describe: "use each pair's margin (Llama 2's margin loss); --no-margin ignores it", group: 'Reward model' },
  marginScale: { type: 'string', choices: ['small', 'large'], default: 'small', describe: 'Llama 2 Table 27 column mapping ratings to margins', group: 'Reward model' },
  softLabels: { type: 'boolean', default: true, describe: "train on each pair's soft label label_prob (AI feedback) where it has one, instead of its margin; --no-soft-labels ignores them", group: 'Reward model' },
};

/** The defaults of RM_OPTIONS (lr: 1e-4 with LoRA, 1e-5 with full training). */
export const RM_DEFAULTS: Record<string, unknown> = { ...defaultsOf(RM_OPTIONS), ...lrDefaults(RM_OPTIONS) };

/** One line of metrics.jsonl. */
export interface RmStepMetrics {
  step: number;
  epoch: number;
  /** Mean pairwise loss of the step's pairs (with their margins). */
  loss: number;
  /** Fraction of the step's pairs with r_chosen > r_rejected. */
  accuracy: number;
  /** Mean r_chosen - r_rejected. */
  margin: number;
  reward_chosen: number;
  reward_rejected: number;
  lr: number;
  grad_norm: number;
  pairs: number;
  input_tokens: number;
  tokens_per_sec: number;
  elapsed_s: number;
  eval_loss?: number;
  eval_accuracy?: number;
  eval_margin?: number;
}

export interface RmEval {
  loss: number;
  accuracy: number;
  margin: number;
  pairs: number;
}

export type RmHooks = StageHooks<RmStepMetrics>;

/** The loop's result (lib/train/supervised.ts), with the row counts as pairs. */
export interface RmResult extends SupervisedRun<ResolvedRmConfig, RmEval> {
  trainPairs: number;
  evalPairs: number;
}

/** Rows of one micro-batch as a forward input: chosen sequences then rejected ones, and each row's last index. */
function pairBatch(pairs: readonly PreferenceExample[]): { ids: number[][]; last: number[]; tokens: number } {
  const ids = [...pairs.map((p) => p.chosen), ...pairs.map((p) => p.rejected)];
  return { ids, last: ids.map((s) => s.length - 1), tokens: ids.reduce((s, x) => s + x.length, 0) };
}

/** Pairs with a soft label are trained on it (and not on their margin) when soft labels are on. */
const isSoft = (p: PreferenceExample, soft: boolean) => soft && p.labelProb !== undefined;

function marginsOf(pairs: readonly PreferenceExample[], use: boolean, soft: boolean): Float32Array | null {
  if (!use || !pairs.some((p) => p.margin !== null && !isSoft(p, soft))) return null;
  return Float32Array.from(pairs, (p) => (isSoft(p, soft) ? 0 : (p.margin ?? 0)));
}

/** Soft labels P(chosen better) of the pairs (1 for a pair without one), or null when none has one. */
function targetsOf(pairs: readonly PreferenceExample[], soft: boolean): Float32Array | null {
  if (!pairs.some((p) => isSoft(p, soft))) return null;
  return Float32Array.from(pairs, (p) => (isSoft(p, soft) ? p.labelProb! : 1));
}

/** Rewards (score head at each sequence's last token) of preference pairs, in batches: held-out loss, accuracy, margin. */
export async function evaluateRm(model: Model, pairs: readonly PreferenceExample[], batchSize: number, useMargin: boolean, softLabels = true): Promise<RmEval> {
  let loss = 0, correct = 0, margin = 0;
  for (let i = 0; i < pairs.length; i += batchSize) {
    const part = pairs.slice(i, i + batchSize);
    const b = pairBatch(part);
    await model.forward({ inputIds: b.ids, values: true, logp: false, download: false });
    const s = await model.pairwiseLoss({ last: b.last, margins: marginsOf(part, useMargin, softLabels), targets: targetsOf(part, softLabels) });
    const n = part.length;
    loss += s.loss * n;
    correct += s.accuracy * n;
    margin += s.margin * n;
  }
  const n = pairs.length;
  return { loss: n ? loss / n : 0, accuracy: n ? correct / n : 0, margin: n ? margin / n : 0, pairs: n };
}

type PairSums = { n: number };

export const RM_METHOD: SupervisedMethod<ResolvedRmConfig, PreferenceExample, PairSums, RmEval> = {
  name: 'rm',
  dataParallel: true,
  options: RM_OPTIONS,
  adapterShapeKeys: ['headStd'],
  rowsPerExample: 2,
  loadData(cfg, mcfg, log) {
    const dataOpts = {
      ...preferenceDataOptions(cfg, mcfg),
      marginScale: cfg.marginScale,
      // RewardTrainer encodes each whole sequence (prompt + completion + EOS) as one string.
      wholeSequence: true,
    };
    const { maxLen } = dataOpts;
    const data = loadPreferenceData(cfg.data, dataOpts);
    const skipped = identicalWarning(cfg.data, data.stats);
    if (skipped) log(`rm: ${skipped}`);
    let train = data.examples, evalSet: PreferenceExample[] = [];
    if (cfg.evalFraction > 0) {
      const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
      train = split.train.map((i) => data.examples[i]);
      evalSet = split.eval.map((i) => data.examples[i]);
    } else if (cfg.evalData) {
      evalSet = loadPreferenceData(cfg.evalData, dataOpts).examples;
    }
    log(`rm: ${cfg.data}: ${data.stats.rows} pairs, ${data.stats.tokens} tokens` + (data.stats.marginRows ? `, ${data.stats.marginRows} with a margin` : '') + `; max length ${maxLen}`);
    if (evalSet.length) log(`rm: held-out evaluation on ${evalSet.length} pairs`);
    return { train, eval: evalSet, stats: data.stats, longest: Math.max(2, ...[...train, ...evalSet].flatMap((p) => [p.chosen.length, p.rejected.length])) };
  },
  // A causal LM gets a fresh head (on the adapter with LoRA, on the model with --full).
  modelOptions: (cfg, mcfg) => ({ head: cfg.full ? 'score' : undefined, scoreInit: { std: cfg.headStd ?? mcfg.initializerRange, seed: cfg.seed } }),
  adapterName: 'reward',
  newAdapterHead: (cfg, mcfg) => ({ std: cfg.headStd ?? mcfg.initializerRange }),
  checkTrainable({ cfg, model, trainer }) {
    if (cfg.full) return;
    if (cfg.adapter) {
      if (!trainer.trainable().some((t) => t.name.endsWith('score.weight')))
        throw new RlhfError('E_MODEL', `${cfg.adapter}: the adapter has no score head (base_model.model.score.weight); it is not a reward model`, { where: cfg.adapter });
    } else if (model.config.head === 'score') {
      throw new RlhfError('E_ARGUMENT', `${cfg.model} is already a reward model (${model.config.architecture}); continue it with --full, or give the SFT model`);
    }
  },
  describeRun: (cfg) => (cfg.full ? 'full training' : cfg.adapter ? `continuing ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha} + score head`),
  planStep: (micro) => ({ n: micro.reduce((s, m) => s + m.length, 0) }),
  async microBatch({ cfg, trainer }, part, plan) {
    const b = pairBatch(part);
    const n = part.length;
    // Chosen rows then rejected rows; the reward of a row is its value at its last token.
    await trainer.forward({ inputIds: b.ids, values: true, logp: false, download: false });
    const s = await trainer.pairwiseLoss({ last: b.last, margins: marginsOf(part, cfg.useMargin, cfg.softLabels), targets: targetsOf(part, cfg.softLabels), gradScale: n / plan.n });
    await trainer.backward({});
    return { inputTokens: b.tokens, loss: s.loss * n, accuracy: s.accuracy * n, margin: s.margin * n, chosen: s.chosen * n, rejected: s.rejected * n };
  },
  stepFigures: (x, { n }) => ({
    loss: x.loss / n,
    head: { accuracy: x.accuracy / n, margin: x.margin / n, reward_chosen: x.chosen / n, reward_rejected: x.rejected / n },
    counts: { pairs: n },
  }),
  evaluate: ({ model, cfg }, pairs) => evaluateRm(model, pairs, cfg.evalBatchSize, cfg.useMargin, cfg.softLabels),
  evalFields: (e) => ({ eval_loss: e.loss, eval_accuracy: e.accuracy, eval_margin: e.margin }),
  describeEval: (e, when) => `held-out ${when} training: accuracy ${e.accuracy.toFixed(3)}, loss ${e.loss.toFixed(4)}`,
  configRecord: (r) => ({ initial_eval: r.initialEval, final_eval: r.finalEval }),
};

export function resolveRmConfig(cfg: RmConfig): ResolvedRmConfig {
  return resolveSupervised(RM_METHOD, cfg);
}

export async function runRm(config: RmConfig, hooks: RmHooks = {}): Promise<RmResult> {
  const r = await runSupervised(RM_METHOD, config, hooks);
  return { ...r, trainPairs: r.trainRows, evalPairs: r.evalRows };
}

export const rmStage: Stage<RmConfig, RmResult, RmStepMetrics> = {
  name: 'rm',
  summary: 'train a reward model (pairwise loss, Llama 2 margin) on preference pairs',
  dataParallel: true,
  options: RM_OPTIONS,
  run: runRm,
};

/**
 * In a recipe: reward models train on the base later stages share (SFT's
 * merged model), and their chat pairs end at the stop token (endAtStop):
 * rejection sampling and PPO score sampled answers that stop there.
 */
rmStage.recipe = {
  defaults: { checkpointSteps: 50, endAtStop: true },
  checkpoints: true,
  inputs: (ctx) => ({ model: ctx.base }),
  outputs: async (_r, ctx) => ({ reward_model: ctx.dir }),
  summary: (r) => ({
    eval: r.finalEval ? { accuracy: r.finalEval.accuracy, loss: r.finalEval.loss, margin: r.finalEval.margin, accuracy_before: r.initialEval?.accuracy } : undefined,
    steps: r.steps,
  }),
  progress: (m) => ({ loss: m.loss as number, acc: m.accuracy as number }),
};
