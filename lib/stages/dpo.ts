/**
 * The DPO stage (`rlhf-native dpo`, and `rlhf-native orpo`, its preset):
 * Direct Preference Optimization (Rafailov et al. 2023) and its family —
 * conservative DPO (label smoothing), robust DPO, SLiC's hinge, IPO, SimPO
 * and ORPO (`lossType`) — of a causal LM on preference pairs, with a LoRA
 * adapter (default, PEFT layout) or every weight (`full`); TRL's DPOTrainer /
 * CPOTrainer / ORPOTrainer semantics on the native engine. See docs/dpo.md.
 * The loop is lib/train/supervised.ts; this file holds what is DPO's own.
 *
 * Policy: the base plus the trainable adapter (or the base itself with
 * `full`). Reference (not for SimPO and ORPO, which have none): the model
 * before training — the base with adapters disabled for a new adapter and
 * for full training, the base plus the loaded adapter with `adapter`. Its
 * sequence log-probs are computed once, for every training and eval pair,
 * before the first step (TRL's precompute_ref_log_probs), so full training
 * needs no second copy of the weights; with a new LoRA adapter they can
 * instead be computed with each micro-batch (`precomputeRefLogps: false`),
 * which trades a forward per step for the memory of the cached sums.
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
import { splitEval } from '../data/sft-data';
import { identicalWarning, loadPreferenceData, type PreferenceDataStats, type PreferenceExample } from '../data/preference-data';
import { defaultsOf, lrDefaults, describe, PREFERENCE_DATA_OPTIONS, SUPERVISED_OPTIONS, withDefaults, type OptionTable, type PreferenceStageOptions, type Resolved, type SupervisedOptions } from '../train/options';
import { preferenceDataOptions } from '../train/preference-data-options';
import { resolveSupervised, runSupervised, type SupervisedMethod, type SupervisedRun } from '../train/supervised';
import { policyOnBase, type Stage, type StageHooks } from '../train/stage';

export const DPO_LOSS_TYPES = ['sigmoid', 'robust', 'hinge', 'ipo', 'simpo', 'orpo'] as const;
export type DpoLossType = (typeof DPO_LOSS_TYPES)[number];
/** The losses with no reference model (no reference log-probs at all). */
export const REFERENCE_FREE: readonly DpoLossType[] = ['simpo', 'orpo'];
/** SimPO's beta when none is given: the paper's range is 2.0-2.5 (Meng et al. 2024, Table 7). */
export const SIMPO_BETA = 2;

/** DPO's own options beside the shared ones. */
export interface DpoOwnOptions {
  /** Inverse temperature of the implicit reward; higher stays closer to the reference. Default 0.1 (TRL's DPOConfig.beta, the paper's). */
  beta?: number;
  /** Label smoothing in [0, 0.5): the assumed flip rate of conservative DPO (sigmoid, simpo) and robust DPO. Default 0 (TRL). */
  labelSmoothing?: number;
  /** The loss: sigmoid (DPO; TRL's default), robust, hinge, ipo, simpo or orpo. */
  lossType?: DpoLossType;
  /** SimPO's target reward margin gamma. Default 0.5 (TRL's CPOConfig.simpo_gamma). */
  gamma?: number;
  /** Per-token scores (each sequence's log-ratio over its completion length) for sigmoid, robust and hinge; ipo, simpo and orpo always use them. Default false. */
  lengthNormalize?: boolean;
  /** Reference log-probs of every pair computed once before training (default); false: with each micro-batch (a new LoRA adapter only). */
  precomputeRefLogps?: boolean;
  /** Skip pairs whose chosen and rejected are identical (with a warning) instead of failing on the first one. Default false. */
  skipIdentical?: boolean;
}
export type DpoConfig = SupervisedOptions & PreferenceStageOptions & DpoOwnOptions;
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
  ...PREFERENCE_DATA_OPTIONS,
  beta: {
    type: 'number',
    derive: (r) => (r.lossType === 'simpo' ? SIMPO_BETA : 0.1),
    defaultText: `0.1; ${SIMPO_BETA} with simpo`,
    check: (v) => (Number.isFinite(v) && v > 0 ? null : `must be a positive number, got ${v}`),
    describe: 'beta: inverse temperature of the implicit reward (IPO: 1/(2 beta) is the target margin; ORPO: the odds-ratio weight lambda)',
    group: 'DPO',
  },
  labelSmoothing: { type: 'number', default: 0, check: (v) => (Number.isFinite(v) && v >= 0 && v < 0.5 ? null : `must be in [0, 0.5), got ${v}`), describe: 'probability that a label is flipped, in [0, 0.5): conservative DPO (sigmoid, simpo) or robust DPO', group: 'DPO' },
  lossType: { type: 'string', default: 'sigmoid', describe: `the loss (${DPO_LOSS_TYPES.join(', ')}); see docs/dpo.md`, group: 'DPO' },
  gamma: { type: 'number', default: 0.5, check: (v) => (Number.isFinite(v) ? null : `must be a number, got ${v}`), describe: "SimPO's target reward margin (simpo only)", group: 'DPO' },
  lengthNormalize: { type: 'boolean', default: false, describe: 'per-token scores for sigmoid, robust and hinge (ipo, simpo and orpo always use them)', group: 'DPO' },
  precomputeRefLogps: { type: 'boolean', default: true, describe: 'reference log-probs computed once before training (--no-precompute-ref-logps: with each micro-batch; new LoRA adapters only)', group: 'DPO' },
  skipIdentical: { type: 'boolean', default: false, describe: 'skip pairs whose chosen and rejected are identical (warning) instead of failing on the first', group: 'Data' },
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
  /** ORPO: the chosen completions' NLL (token mean) and the mean log odds ratio. */
  nll?: number;
  logOdds?: number;
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
  /** ORPO (TRL's ORPOTrainer names). */
  nll_loss?: number;
  log_odds_ratio?: number;
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
  eval_nll_loss?: number;
  eval_log_odds_ratio?: number;
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

/** The loss options of one dpo_loss call (lib/engine/objectives.ts). */
export interface DpoLossOptions {
  beta: number;
  labelSmoothing: number;
  lossType?: DpoLossType;
  gamma?: number;
  lengthNormalize?: boolean;
}

/**
 * The loss and implicit-reward statistics of `examples` under the model's
 * current weights (no gradients), pair-weighted over batches. `ref` is null
 * for the reference-free losses.
 */
export async function evaluateDpo(
  model: Model,
  examples: readonly PreferenceExample[],
  ref: RefLogps | null,
  opts: DpoLossOptions & { batchSize: number },
): Promise<DpoPairMetrics> {
  const orpo = opts.lossType === 'orpo';
  const keys = ['loss', 'rewardsChosen', 'rewardsRejected', 'accuracy', 'margin', 'logpsChosen', 'logpsRejected', ...(orpo ? (['nll', 'logOdds'] as const) : [])] as const;
  const sum: Record<string, number> = Object.fromEntries(keys.map((k) => [k, 0]));
  let nllNum = 0, nllTokens = 0;
  for (let i = 0; i < examples.length; i += opts.batchSize) {
    const batch = packDpoBatch(examples.slice(i, i + opts.batchSize));
    const { seq } = await model.forward({ inputIds: batch.inputIds, logp: true, download: false });
    const r = await model.dpoLoss({
      mask: spanMask(seq, batch.spans),
      ...(ref ? { refChosen: ref.chosen.subarray(i, i + batch.pairs), refRejected: ref.rejected.subarray(i, i + batch.pairs) } : {}),
      ...lossFields(opts),
    });
    for (const k of keys) sum[k] += (r as unknown as Record<string, number>)[k] * batch.pairs;
    if (orpo) {
      const tokens = batch.spans.slice(0, batch.pairs).reduce((a, [from, to]) => a + to - from, 0);
      nllNum += r.nll! * tokens;
      nllTokens += tokens;
    }
  }
  const n = examples.length || 1;
  const out = { ...(Object.fromEntries(keys.map((k) => [k, sum[k] / n])) as unknown as DpoPairMetrics), pairs: examples.length };
  if (orpo) {
    // ORPO's NLL is a token mean over the chosen completions: over the whole set, not a pair-weighted mean of batch means.
    const odds = out.loss - out.nll!;
    out.nll = nllNum / Math.max(1, nllTokens);
    out.loss = odds + out.nll;
  }
  return out;
}

/** The loss fields of a dpoLoss call. */
function lossFields(o: DpoLossOptions) {
  return { beta: o.beta, labelSmoothing: o.labelSmoothing, lossType: o.lossType ?? 'sigmoid', gamma: o.gamma ?? 0, lengthNormalize: o.lengthNormalize ?? false };
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
    ...(m.nll !== undefined ? { eval_nll_loss: m.nll, eval_log_odds_ratio: m.logOdds } : {}),
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

/** The loss's name in log lines: the paper's. */
const LOSS_NAMES: Record<DpoLossType, string> = { sigmoid: 'DPO', robust: 'robust DPO', hinge: 'hinge (SLiC)', ipo: 'IPO', simpo: 'SimPO', orpo: 'ORPO' };

/**
 * The DPO method. Its reference log-probs are computed once, before the
 * first step (and before a checkpoint is restored), or per micro-batch with
 * `precomputeRefLogps: false`; SimPO and ORPO have none.
 */
function dpoMethod(name: 'dpo' | 'orpo' = 'dpo'): SupervisedMethod<ResolvedDpoConfig, PreferenceExample, { pairs: number }, DpoPairMetrics> {
  let refs: DpoRefs | null = null;
  const refFree = (cfg: ResolvedDpoConfig) => REFERENCE_FREE.includes(cfg.lossType);
  const precomputed = (cfg: ResolvedDpoConfig) => !refFree(cfg) && cfg.precomputeRefLogps;
  const lossOpts = (cfg: ResolvedDpoConfig): DpoLossOptions => ({ beta: cfg.beta, labelSmoothing: cfg.labelSmoothing, lossType: cfg.lossType, gamma: cfg.gamma, lengthNormalize: cfg.lengthNormalize });
  /** Reference sums of a micro-batch computed now: the base with the (new) adapter switched off. */
  const liveRefs = async ({ model, trainer }: { model: Model; trainer: Trainer }, examples: readonly PreferenceExample[]): Promise<RefLogps> => {
    trainer.useAdapter(null);
    try {
      return await pairLogps(model, examples, examples.length);
    } finally {
      trainer.useAdapter('default');
    }
  };
  return {
    name,
    dataParallel: true,
    options: name === 'orpo' ? ORPO_OPTIONS : DPO_OPTIONS,
    rowsPerExample: 2,
    check(cfg, given) {
      const t = cfg.lossType;
      if (!(DPO_LOSS_TYPES as readonly string[]).includes(t)) throw new RlhfError('E_ARGUMENT', `--loss-type must be one of ${DPO_LOSS_TYPES.join(', ')}, got ${t}`);
      if (name === 'orpo' && t !== 'orpo') throw new RlhfError('E_ARGUMENT', `orpo trains the ORPO loss only; for --loss-type ${t} use rlhf-native dpo`);
      if (given.gamma !== undefined && t !== 'simpo') throw new RlhfError('E_ARGUMENT', `--gamma is SimPO's target margin; it does nothing with --loss-type ${t}`);
      if (cfg.labelSmoothing > 0 && !['sigmoid', 'robust', 'simpo'].includes(t))
        throw new RlhfError('E_ARGUMENT', `--label-smoothing applies to sigmoid (conservative DPO), robust and simpo, not to --loss-type ${t}`);
      if (given.lengthNormalize !== undefined && ['ipo', 'simpo', 'orpo'].includes(t) && !cfg.lengthNormalize)
        throw new RlhfError('E_ARGUMENT', `--loss-type ${t} always scores per token; --no-length-normalize cannot turn that off`);
      if (!cfg.precomputeRefLogps && refFree(cfg)) throw new RlhfError('E_ARGUMENT', `--loss-type ${t} has no reference model: --no-precompute-ref-logps does not apply`);
      if (!cfg.precomputeRefLogps && (cfg.full || cfg.adapter))
        throw new RlhfError(
          'E_ARGUMENT',
          `--no-precompute-ref-logps needs a reference that stays as it was: a new LoRA adapter (the base with adapters off); with ${cfg.full ? '--full' : '--adapter'} the reference is the weights being trained`,
        );
    },
    checkModelFolder(cfg, mcfg) {
      if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: ${LOSS_NAMES[cfg.lossType]} needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
    },
    loadData(cfg, mcfg, log) {
      const dataOpts = {
        ...preferenceDataOptions(cfg, mcfg),
        // A pair with chosen = rejected expresses no preference; SimPO and ORPO would even train on it.
        identical: cfg.skipIdentical ? ('skip' as const) : ('error' as const),
      };
      const { maxLen } = dataOpts;
      const data = loadPreferenceData(cfg.data, dataOpts);
      const warn = identicalWarning(cfg.data, data.stats);
      if (warn) log(`${name}: warning: ${warn}`);
      let train = data.examples, evalSet: PreferenceExample[] = [];
      if (cfg.evalFraction > 0) {
        const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
        train = split.train.map((i) => data.examples[i]);
        evalSet = split.eval.map((i) => data.examples[i]);
      } else if (cfg.evalData) {
        const ev = loadPreferenceData(cfg.evalData, dataOpts);
        const w = identicalWarning(cfg.evalData, ev.stats);
        if (w) log(`${name}: warning: ${w}`);
        evalSet = ev.examples;
      }
      log(`${name}: ${cfg.data}: ${fmtData(data.stats)}; max length ${maxLen}`);
      if (evalSet.length) log(`${name}: eval on ${evalSet.length} pairs${cfg.evalData ? ` of ${cfg.evalData}` : ` held out (--eval-fraction ${cfg.evalFraction})`}`);
      return { train, eval: evalSet, stats: data.stats, longest: Math.max(2, ...[...train, ...evalSet].flatMap((p) => [p.chosen.length, p.rejected.length])) };
    },
    // The reference: the model before any step. A new adapter is switched off
    // (the frozen base alone); a continued adapter stays on (it is the policy
    // being improved); full training has not changed the base yet.
    async prepare({ cfg, model, trainer, log }, data) {
      if (!precomputed(cfg)) {
        // Live references still need the eval pairs' sums for the evaluations.
        refs = null;
        if (refFree(cfg)) return;
      }
      const t0 = Date.now();
      const newAdapter = !cfg.full && !cfg.adapter;
      if (newAdapter) trainer.useAdapter(null);
      const evalRefs = data.eval.length ? await pairLogps(model, data.eval, cfg.evalBatchSize) : null;
      const trainRefs = precomputed(cfg) ? await pairLogps(model, data.train, cfg.evalBatchSize) : { chosen: new Float32Array(0), rejected: new Float32Array(0) };
      refs = { train: trainRefs, eval: evalRefs };
      if (newAdapter) trainer.useAdapter('default');
      const n = (precomputed(cfg) ? data.train.length : 0) + data.eval.length;
      log(`${name}: reference log-probs of ${n} pairs (${cfg.adapter ? `base + ${cfg.adapter}` : 'base model'}) in ${((Date.now() - t0) / 1000).toFixed(1)}s${precomputed(cfg) ? '' : '; training pairs: with each micro-batch'}`);
    },
    describeRun: (cfg) =>
      `${cfg.full ? 'full training' : cfg.adapter ? `continuing the LoRA adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`}` +
      ` (${LOSS_NAMES[cfg.lossType]}, beta ${cfg.beta}${cfg.labelSmoothing ? `, label smoothing ${cfg.labelSmoothing}` : ''}${cfg.lossType === 'simpo' ? `, gamma ${cfg.gamma}` : ''}` +
      `${cfg.lengthNormalize && !['ipo', 'simpo', 'orpo'].includes(cfg.lossType) ? ', per-token scores' : ''}${refFree(cfg) ? ', no reference model' : ''})`,
    planStep: (micro) => ({ pairs: micro.reduce((s, rows) => s + rows.length, 0) }),
    async microBatch(ctx, examples, plan, rows) {
      const { cfg, trainer } = ctx;
      const batch = packDpoBatch(examples);
      const n = rows.length;
      // The reference forward (if any) before the training forward: it is an inference forward, which leaves the training outputs alone, but ordering it first keeps that independent of the engine.
      const ref = refFree(cfg)
        ? null
        : precomputed(cfg)
          ? { chosen: Float32Array.from(rows, (i) => refs!.train.chosen[i]), rejected: Float32Array.from(rows, (i) => refs!.train.rejected[i]) }
          : await liveRefs(ctx, examples);
      await trainer.forward({ inputIds: batch.inputIds, download: false });
      const r = await trainer.dpoLoss({
        mask: spanMask(batch.seq, batch.spans),
        ...(ref ? { refChosen: ref.chosen, refRejected: ref.rejected } : {}),
        ...lossFields(lossOpts(cfg)),
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
        ...(r.nll !== undefined ? { nll: r.nll * n, logOdds: r.logOdds! * n } : {}),
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
        ...(x.nll !== undefined ? { nll_loss: x.nll / n, log_odds_ratio: x.logOdds / n } : {}),
      },
      counts: { pairs: n },
    }),
    evaluate: ({ cfg, model }, examples) => evaluateDpo(model, examples, refFree(cfg) ? null : refs!.eval!, { ...lossOpts(cfg), batchSize: cfg.evalBatchSize }),
    evalFields: (e) => evalKeys(e) as Record<string, number>,
    evalAtStepZero: true,
    describeEval: (e, when) =>
      when === 'before' ? `before training: eval loss ${e.loss.toFixed(4)}, reward margin ${e.margin.toFixed(4)}, accuracy ${e.accuracy.toFixed(3)}` : `after training: eval loss ${e.loss.toFixed(4)}, reward margin ${e.margin.toFixed(4)}, accuracy ${e.accuracy.toFixed(3)}`,
    configRecord: (r) => ({ reference: refFree(r.config) ? 'none' : r.config.adapter ? `base + ${r.config.adapter}` : 'base', initial_eval: r.initialEval, final_eval: r.finalEval }),
  };
}

/** Fills in the defaults and checks every value (E_ARGUMENT naming the option; E_UNSUPPORTED for another loss type). */
export function resolveDpoConfig(cfg: DpoConfig): ResolvedDpoConfig {
  return resolveSupervised(dpoMethod(), cfg);
}

export async function runDpo(config: DpoConfig, hooks: DpoHooks = {}): Promise<DpoResult> {
  return runFamily('dpo', config, hooks);
}

async function runFamily(name: 'dpo' | 'orpo', config: DpoConfig, hooks: DpoHooks): Promise<DpoResult> {
  const r = await runSupervised(dpoMethod(name), config, hooks);
  return { ...r, trainPairs: r.trainRows, evalPairs: r.evalRows, data: r.data as PreferenceDataStats };
}

export const dpoStage: Stage<DpoConfig, DpoResult, DpoStepMetrics> = {
  name: 'dpo',
  summary: 'Direct Preference Optimization (LoRA adapter or --full) on preference pairs',
  dataParallel: true,
  options: DPO_OPTIONS,
  run: runDpo,
};

/** In a recipe: DPO trains a policy on the base later stages share (SFT's merged model), which is also its reference. */
dpoStage.recipe = policyOnBase({
  summary: (r) => ({
    eval: r.finalEval ? { loss: r.finalEval.loss, accuracy: r.finalEval.accuracy, margin: r.finalEval.margin, accuracy_before: r.initialEval?.accuracy } : undefined,
    steps: r.steps,
  }),
  progress: (m) => ({ loss: m.loss as number | undefined, margin: m['rewards/margins'] as number | undefined }),
});

// ------------------------------------------------------------------ ORPO

/**
 * ORPO (Hong et al. 2024; TRL's ORPOTrainer): the dpo stage with the
 * odds-ratio loss — the chosen completions' NLL plus beta (the paper's
 * lambda, 0.1) times the odds-ratio term — and no reference model, so it
 * can start from a base model without SFT.
 */
export const ORPO_DEFAULTS = { lossType: 'orpo' as const, beta: 0.1 };
export const ORPO_OPTIONS: OptionTable<DpoConfig> = {
  ...withDefaults(DPO_OPTIONS, ORPO_DEFAULTS),
  beta: { ...DPO_OPTIONS.beta, derive: undefined, default: 0.1, defaultText: undefined, describe: "ORPO's lambda: the weight of the odds-ratio term beside the NLL" },
  lossType: { ...DPO_OPTIONS.lossType, default: 'orpo', describe: 'orpo (use `rlhf-native dpo --loss-type` for the others)' },
};

export async function runOrpo(config: DpoConfig, hooks: DpoHooks = {}): Promise<DpoResult> {
  return runFamily('orpo', { ...ORPO_DEFAULTS, ...config }, hooks);
}

export const orpoStage: Stage<DpoConfig, DpoResult, DpoStepMetrics> = {
  ...dpoStage,
  name: 'orpo',
  summary: 'ORPO: SFT plus an odds-ratio preference term, no reference model (LoRA adapter or --full)',
  options: ORPO_OPTIONS,
  run: runOrpo,
};
