/**
 * The DPO stage (`rlhf-native dpo`): Direct Preference Optimization
 * (Rafailov et al. 2023) of a causal LM on preference pairs, with a LoRA
 * adapter (default, PEFT layout) or every weight (`full`); TRL's DPOTrainer
 * semantics (loss_type "sigmoid" with label smoothing) on the native engine.
 * See docs/dpo.md. The loop is lib/train/supervised.ts; this file holds what is DPO's own.
 *
 * Policy: the base plus the trainable adapter (or the base itself with
 * `full`). Reference: the model before training — the base with adapters
 * disabled for a new adapter and for full training, the base plus the
 * loaded adapter with `adapter`. Its sequence log-probs are computed once,
 * for every training and eval pair, before the first step (TRL's
 * precompute_ref_log_probs), so full training needs no second copy of the
 * weights.
 *
 * One optimizer step: for each of `gradAccum` micro-batches of `batchSize`
 * pairs, one training forward over the chosen rows followed by the rejected
 * rows -> sequence log-prob sums over the completion tokens -> `dpo_loss`
 * (native op: loss, statistics and the gradients of the sums) -> each
 * pair's gradient broadcast onto its completion tokens' dlogp -> backward;
 * then step (AdamW or SGD, global-norm clipping, the scheduled learning
 * rate) and zeroGrad. Each micro-batch's gradient is scaled by its share of
 * the step's pairs, so the accumulated gradient is that of the mean loss
 * over every pair of the step.
 */
import { RlhfError } from '../errors';
import type { Model } from '../engine/model';
import type { Trainer } from '../engine/train';
import { spanMask } from '../engine/objectives';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';
import { splitEval } from '../data/sft-data';
import { identicalWarning, loadPreferenceData, type PreferenceDataStats, type PreferenceExample } from '../data/preference-data';
import { defaultsOf, lrDefaults, describe, SUPERVISED_OPTIONS, withDefaults, type OptionTable, type Resolved, type SupervisedOptions } from '../train/options';
import { resolveSupervised, runSupervised, type SupervisedMethod, type SupervisedRun } from '../train/supervised';
import type { Stage, StageHooks } from '../train/stage';

export const DPO_LOSS_TYPES = ['sigmoid'] as const;
export type DpoLossType = (typeof DPO_LOSS_TYPES)[number];

/** DPO's own options beside the shared ones. */
export interface DpoOwnOptions {
  /** Inverse temperature of the implicit reward; higher stays closer to the reference. Default 0.1 (TRL's DPOConfig.beta, the paper's). */
  beta?: number;
  /** Conservative-DPO label smoothing in [0, 0.5). Default 0 (TRL). */
  labelSmoothing?: number;
  /** Only 'sigmoid' (the paper's loss; TRL's default). */
  lossType?: DpoLossType;
}
export type DpoConfig = SupervisedOptions & DpoOwnOptions;
export type ResolvedDpoConfig = Resolved<DpoConfig>;

/** The shared options with DPO's defaults (TRL's scripts: one epoch; lr 5e-6 LoRA, 5e-7 full) and DPO's own rows. */
export const DPO_OPTIONS: OptionTable<DpoConfig> = {
  ...describe(withDefaults(SUPERVISED_OPTIONS, { epochs: 1 }, { lr: { derive: (r) => (r.full ? 5e-7 : 5e-6), defaultText: '5e-6 LoRA, 5e-7 --full' } }), {
    model: 'base model folder (Hugging Face layout); also the reference model',
    data: 'preference JSONL: {prompt, chosen, rejected} (TRL), {chosen, rejected} or {prompt: [messages], chosen: [turns], rejected: [turns]}',
    out: 'output folder: PEFT adapter (or full model), metrics.jsonl, dpo_config.json',
    batchSize: 'pairs per micro-batch (two sequences each)',
    evalBatchSize: 'eval (and reference precompute) pairs per micro-batch',
    shuffle: 'shuffle pairs each epoch (seeded; otherwise file order)',
  }),
  beta: { type: 'number', default: 0.1, check: (v) => (Number.isFinite(v) && v > 0 ? null : `must be a positive number, got ${v}`), describe: 'DPO beta: inverse temperature of the implicit reward', group: 'DPO' },
  labelSmoothing: { type: 'number', default: 0, check: (v) => (Number.isFinite(v) && v >= 0 && v < 0.5 ? null : `must be in [0, 0.5), got ${v}`), describe: 'conservative DPO: probability that a label is flipped, in [0, 0.5)', group: 'DPO' },
  lossType: { type: 'string', default: 'sigmoid', describe: `DPO loss (${DPO_LOSS_TYPES.join(', ')})`, group: 'DPO' },
};

/** The defaults of DPO_OPTIONS (lr: 5e-6 with LoRA, 5e-7 with full training). */
export const DPO_DEFAULTS: Record<string, unknown> = { ...defaultsOf(DPO_OPTIONS), ...lrDefaults(DPO_OPTIONS) };

/** Means over pairs (TRL's names without the prefix). */
export interface DpoPairMetrics {
  loss: number;
  /** beta (policy - reference) sequence log-prob of the chosen / rejected completions. */
  rewardsChosen: number;
  rewardsRejected: number;
  /** Fraction of pairs whose chosen reward is above the rejected one. */
  accuracy: number;
  /** rewardsChosen - rewardsRejected. */
  margin: number;
  /** Policy sequence log-probs (sums over the completion tokens). */
  logpsChosen: number;
  logpsRejected: number;
  pairs: number;
}

/** One line of metrics.jsonl (step 0: the eval before training, eval keys only). */
export interface DpoStepMetrics {
  step: number;
  epoch: number;
  loss?: number;
  'rewards/chosen'?: number;
  'rewards/rejected'?: number;
  'rewards/accuracies'?: number;
  'rewards/margins'?: number;
  'logps/chosen'?: number;
  'logps/rejected'?: number;
  lr?: number;
  grad_norm?: number;
  /** Pairs in the step. */
  pairs?: number;
  /** Real input tokens (chosen + rejected sequences) of the step. */
  input_tokens?: number;
  tokens_per_sec?: number;
  elapsed_s: number;
  eval_loss?: number;
  'eval_rewards/chosen'?: number;
  'eval_rewards/rejected'?: number;
  'eval_rewards/accuracies'?: number;
  'eval_rewards/margins'?: number;
  'eval_logps/chosen'?: number;
  'eval_logps/rejected'?: number;
}

export type DpoHooks = StageHooks<DpoStepMetrics>;

/** The loop's result (lib/train/supervised.ts), with the row counts as pairs and the data statistics. */
export interface DpoResult extends SupervisedRun<ResolvedDpoConfig, DpoPairMetrics> {
  trainPairs: number;
  evalPairs: number;
  data: PreferenceDataStats;
}

// ------------------------------------------------------------------ batches and the loss

/**
 * A micro-batch for one forward: the chosen sequences (rows 0..b-1), then
 * the rejected ones (rows b..2b-1), right-padded by the engine to `seq`.
 * Row r's completion is scored by logp positions [spans[r][0], spans[r][1])
 * of its row: logp[t] predicts ids[t+1], so the first completion token
 * (index from) is predicted at t = from - 1 and the last at t = length - 2.
 */
export interface DpoBatch {
  inputIds: number[][];
  pairs: number;
  seq: number;
  spans: [number, number][];
  /** Real (non-padding) input tokens. */
  tokens: number;
}

export function packDpoBatch(examples: readonly PreferenceExample[]): DpoBatch {
  if (examples.length === 0) throw new RlhfError('E_ARGUMENT', 'a DPO batch needs at least one pair');
  const inputIds = [...examples.map((e) => e.chosen), ...examples.map((e) => e.rejected)];
  const spans: [number, number][] = [
    ...examples.map((e): [number, number] => [e.chosenFrom - 1, e.chosen.length - 1]),
    ...examples.map((e): [number, number] => [e.rejectedFrom - 1, e.rejected.length - 1]),
  ];
  return { inputIds, pairs: examples.length, seq: Math.max(...inputIds.map((r) => r.length)), spans, tokens: inputIds.reduce((s, r) => s + r.length, 0) };
}

/** Reference sequence log-probs, per pair. */
export interface RefLogps {
  chosen: Float32Array;
  rejected: Float32Array;
}

/** Sequence log-probs of every pair under the model as it is now (its active adapter, or none), in micro-batches of `batchSize` pairs, summed on the model's device. */
export async function pairLogps(model: Model, examples: readonly PreferenceExample[], batchSize: number): Promise<RefLogps> {
  const out: RefLogps = { chosen: new Float32Array(examples.length), rejected: new Float32Array(examples.length) };
  for (let i = 0; i < examples.length; i += batchSize) {
    const batch = packDpoBatch(examples.slice(i, i + batchSize));
    const { seq } = await model.forward({ inputIds: batch.inputIds, logp: true, download: false });
    const sums = await model.sequenceLogps({ mask: spanMask(seq, batch.spans) });
    out.chosen.set(sums.subarray(0, batch.pairs), i);
    out.rejected.set(sums.subarray(batch.pairs), i);
  }
  return out;
}

/** The DPO loss and implicit-reward statistics of `examples` under the model's current weights (no gradients), pair-weighted over batches. */
export async function evaluateDpo(
  model: Model,
  examples: readonly PreferenceExample[],
  ref: RefLogps,
  opts: { beta: number; labelSmoothing: number; batchSize: number },
): Promise<DpoPairMetrics> {
  const keys = ['loss', 'rewardsChosen', 'rewardsRejected', 'accuracy', 'margin', 'logpsChosen', 'logpsRejected'] as const;
  const sum = Object.fromEntries(keys.map((k) => [k, 0])) as Record<(typeof keys)[number], number>;
  for (let i = 0; i < examples.length; i += opts.batchSize) {
    const batch = packDpoBatch(examples.slice(i, i + opts.batchSize));
    const { seq } = await model.forward({ inputIds: batch.inputIds, logp: true, download: false });
    const r = await model.dpoLoss({
      mask: spanMask(seq, batch.spans),
      refChosen: ref.chosen.subarray(i, i + batch.pairs),
      refRejected: ref.rejected.subarray(i, i + batch.pairs),
      beta: opts.beta,
      labelSmoothing: opts.labelSmoothing,
    });
    for (const k of keys) sum[k] += r[k] * batch.pairs;
  }
  const n = examples.length || 1;
  return { ...(Object.fromEntries(keys.map((k) => [k, sum[k] / n])) as Record<(typeof keys)[number], number>), pairs: examples.length };
}

function evalKeys(m: DpoPairMetrics): Partial<DpoStepMetrics> {
  return {
    eval_loss: m.loss,
    'eval_rewards/chosen': m.rewardsChosen,
    'eval_rewards/rejected': m.rewardsRejected,
    'eval_rewards/accuracies': m.accuracy,
    'eval_rewards/margins': m.margin,
    'eval_logps/chosen': m.logpsChosen,
    'eval_logps/rejected': m.logpsRejected,
  };
}

function fmtData(s: PreferenceDataStats): string {
  const formats = Object.entries(s.formats).map(([k, v]) => `${v} ${k}`).join(', ');
  return (
    `${s.rows} pairs (${formats}), ${s.tokens} tokens, ${s.completionTokens} completion tokens` +
    (s.truncatedRows ? `, ${s.truncatedRows} truncated` : '') +
    (s.marginRows ? `, ${s.marginRows} with a margin (DPO does not use it)` : '')
  );
}

type DpoRefs = { train: RefLogps; eval: RefLogps | null };

/** The DPO method: its reference log-probs are computed once, before the first step (and before a checkpoint is restored). */
function dpoMethod(): SupervisedMethod<ResolvedDpoConfig, PreferenceExample, { pairs: number }, DpoPairMetrics> {
  let refs: DpoRefs | null = null;
  const lossOpts = (cfg: ResolvedDpoConfig) => ({ beta: cfg.beta, labelSmoothing: cfg.labelSmoothing });
  return {
    name: 'dpo',
    options: DPO_OPTIONS,
    rowsPerExample: 2,
    check(cfg) {
      if (!(DPO_LOSS_TYPES as readonly string[]).includes(cfg.lossType))
        throw new RlhfError('E_UNSUPPORTED', `--loss-type ${cfg.lossType} is not supported: only sigmoid (the DPO paper's loss; use --label-smoothing for conservative DPO)`);
    },
    checkModelFolder(cfg, mcfg) {
      if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: DPO needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
    },
    loadData(cfg, mcfg, log) {
      const maxLen = Math.min(cfg.maxLen, mcfg.maxSequenceLength);
      let tok: Tokenizer | undefined;
      const dataOpts = { tokenizer: () => (tok ??= loadTokenizer(cfg.model)), maxLen, vocabSize: mcfg.vocabSize, fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null, stopTokenIds: mcfg.eosTokenIds };
      const data = loadPreferenceData(cfg.data, dataOpts);
      const warn = identicalWarning(cfg.data, data.stats);
      if (warn) log(`dpo: warning: ${warn}`);
      let train = data.examples, evalSet: PreferenceExample[] = [];
      if (cfg.evalFraction > 0) {
        const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
        train = split.train.map((i) => data.examples[i]);
        evalSet = split.eval.map((i) => data.examples[i]);
      } else if (cfg.evalData) {
        const ev = loadPreferenceData(cfg.evalData, dataOpts);
        const w = identicalWarning(cfg.evalData, ev.stats);
        if (w) log(`dpo: warning: ${w}`);
        evalSet = ev.examples;
      }
      log(`dpo: ${cfg.data}: ${fmtData(data.stats)}; max length ${maxLen}`);
      if (evalSet.length) log(`dpo: eval on ${evalSet.length} pairs${cfg.evalData ? ` of ${cfg.evalData}` : ` held out (--eval-fraction ${cfg.evalFraction})`}`);
      return { train, eval: evalSet, stats: data.stats, longest: Math.max(2, ...[...train, ...evalSet].flatMap((p) => [p.chosen.length, p.rejected.length])) };
    },
    // The reference: the model before any step. A new adapter is switched off
    // (the frozen base alone); a continued adapter stays on (it is the policy
    // being improved); full training has not changed the base yet.
    async prepare({ cfg, model, trainer, log }, data) {
      const t0 = Date.now();
      const newAdapter = !cfg.full && !cfg.adapter;
      if (newAdapter) trainer.useAdapter(null);
      refs = {
        train: await pairLogps(model, data.train, cfg.evalBatchSize),
        eval: data.eval.length ? await pairLogps(model, data.eval, cfg.evalBatchSize) : null,
      };
      if (newAdapter) trainer.useAdapter('default');
      log(`dpo: reference log-probs of ${data.train.length + data.eval.length} pairs (${cfg.adapter ? `base + ${cfg.adapter}` : 'base model'}) in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
    },
    describeRun: (cfg) =>
      `${cfg.full ? 'full training' : cfg.adapter ? `continuing the LoRA adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`}` +
      ` (beta ${cfg.beta}${cfg.labelSmoothing ? `, label smoothing ${cfg.labelSmoothing}` : ''})`,
    planStep: (micro) => ({ pairs: micro.reduce((s, rows) => s + rows.length, 0) }),
    async microBatch({ cfg, trainer }, examples, plan, rows) {
      const batch = packDpoBatch(examples);
      const n = rows.length;
      await trainer.forward({ inputIds: batch.inputIds, download: false });
      const r = await trainer.dpoLoss({
        mask: spanMask(batch.seq, batch.spans),
        refChosen: Float32Array.from(rows, (i) => refs!.train.chosen[i]),
        refRejected: Float32Array.from(rows, (i) => refs!.train.rejected[i]),
        ...lossOpts(cfg),
        gradScale: n / plan.pairs,
      });
      await trainer.backward({});
      return {
        inputTokens: batch.tokens,
        loss: r.loss * n,
        rewardsChosen: r.rewardsChosen * n,
        rewardsRejected: r.rewardsRejected * n,
        accuracy: r.accuracy * n,
        margin: r.margin * n,
        logpsChosen: r.logpsChosen * n,
        logpsRejected: r.logpsRejected * n,
      };
    },
    stepFigures: (x, { pairs: n }) => ({
      loss: x.loss / n,
      head: {
        'rewards/chosen': x.rewardsChosen / n,
        'rewards/rejected': x.rewardsRejected / n,
        'rewards/accuracies': x.accuracy / n,
        'rewards/margins': x.margin / n,
        'logps/chosen': x.logpsChosen / n,
        'logps/rejected': x.logpsRejected / n,
      },
      counts: { pairs: n },
    }),
    evaluate: ({ cfg, model }, examples) => evaluateDpo(model, examples, refs!.eval!, { ...lossOpts(cfg), batchSize: cfg.evalBatchSize }),
    evalFields: (e) => evalKeys(e) as Record<string, number>,
    evalAtStepZero: true,
    describeEval: (e, when) =>
      when === 'before' ? `before training: eval loss ${e.loss.toFixed(4)}, reward margin ${e.margin.toFixed(4)}, accuracy ${e.accuracy.toFixed(3)}` : `after training: eval loss ${e.loss.toFixed(4)}, reward margin ${e.margin.toFixed(4)}, accuracy ${e.accuracy.toFixed(3)}`,
    configRecord: (r) => ({ reference: r.config.adapter ? `base + ${r.config.adapter}` : 'base', initial_eval: r.initialEval, final_eval: r.finalEval }),
  };
}

/** Fills in the defaults and checks every value (E_ARGUMENT naming the option; E_UNSUPPORTED for another loss type). */
export function resolveDpoConfig(cfg: DpoConfig): ResolvedDpoConfig {
  return resolveSupervised(dpoMethod(), cfg);
}

export async function runDpo(config: DpoConfig, hooks: DpoHooks = {}): Promise<DpoResult> {
  const r = await runSupervised(dpoMethod(), config, hooks);
  return { ...r, trainPairs: r.trainRows, evalPairs: r.evalRows, data: r.data as PreferenceDataStats };
}

export const dpoStage: Stage<DpoConfig, DpoResult, DpoStepMetrics> = {
  name: 'dpo',
  summary: 'Direct Preference Optimization (LoRA adapter or --full) on preference pairs',
  options: DPO_OPTIONS,
  run: runDpo,
};

/** In a recipe: DPO trains a policy on the base later stages share (SFT's merged model), which is also its reference. */
dpoStage.recipe = {
  defaults: { checkpointSteps: 50 },
  checkpoints: true,
  inputs: (ctx) => ({ model: ctx.base }),
  outputs: async (r, ctx): Promise<Record<string, string>> => (r.saved === 'model' ? { model: ctx.dir } : { model: ctx.base, adapter: ctx.dir }),
  summary: (r) => ({
    eval: r.finalEval ? { loss: r.finalEval.loss, accuracy: r.finalEval.accuracy, margin: r.finalEval.margin, accuracy_before: r.initialEval?.accuracy } : undefined,
    steps: r.steps,
  }),
  progress: (m) => ({ loss: m.loss as number | undefined, margin: m['rewards/margins'] as number | undefined }),
};
