/**
 * The KTO stage (`rlhf-native kto`): Kahneman-Tversky Optimization
 * (Ethayarajh et al. 2024) of a causal LM on unpaired examples (a prompt,
 * one completion and a desirable / undesirable label), with a LoRA adapter
 * (default, PEFT layout) or every weight (`full`); TRL KTOTrainer's
 * semantics (loss_type "kto") on the native engine. See docs/kto.md. The
 * loop is lib/train/supervised.ts; this file holds what is KTO's own.
 *
 * Policy and reference as in DPO (lib/stages/dpo.ts): the reference is the
 * model before the first step (the base with adapters off for a new
 * adapter; the base before training with `full`; base + adapter with
 * `adapter`). Its sequence log-probs are computed once, before training,
 * for every training and eval example and for every example's KL sequence
 * (its prompt with another example's completion, `klPairs`), so full
 * training keeps no second copy of the weights.
 *
 * One micro-batch: an inference forward of the rows' KL sequences under the
 * current policy gives the reference point kl = max(0, mean(policy - ref))
 * over the micro-batch (no gradient, as TRL detaches it); a training forward
 * of the rows -> `kto_loss` (the native op: paper eq. 7, statistics and the
 * gradients of the sums, each row's onto its completion tokens) scaled by
 * the micro-batch's share of the step's rows -> backward.
 */
import { RlhfError } from '../errors';
import type { Model } from '../engine/model';
import { spanMask } from '../engine/objectives';
import { splitEval } from '../data/sft-data';
import { identicalWarning } from '../data/preference-data';
import { klPairs, loadKtoData, type KtoDataset, type UnpairedDataStats, type UnpairedExample } from '../data/unpaired-data';
import { arg, defaultsOf, lrDefaults, describe, PREFERENCE_DATA_OPTIONS, SUPERVISED_OPTIONS, withDefaults, type OptionTable, type PreferenceStageOptions, type Resolved, type SupervisedOptions } from '../train/options';
import { preferenceDataOptions } from '../train/preference-data-options';
import { resolveSupervised, runSupervised, type SupervisedMethod, type SupervisedRun } from '../train/supervised';
import { policyOnBase, type Stage, type StageHooks } from '../train/stage';

/** KTO's own options beside the shared ones. */
export interface KtoOwnOptions {
  /** Inverse temperature of the implicit reward; higher stays closer to the reference. Default 0.1 (TRL's KTOConfig.beta). */
  beta?: number;
  /** Weight of the desirable examples' losses. Default 1 (TRL). */
  desirableWeight?: number;
  /** Weight of the undesirable examples' losses. Default 1 (TRL). */
  undesirableWeight?: number;
}
export type KtoConfig = SupervisedOptions & PreferenceStageOptions & KtoOwnOptions;
export type ResolvedKtoConfig = Resolved<KtoConfig>;

const positive = (v: number) => (Number.isFinite(v) && v > 0 ? null : `must be a positive number, got ${v}`);

/** The shared options with KTO's defaults (one epoch; lr 1e-6 full as TRL's KTOConfig, 1e-5 LoRA) and KTO's own rows. */
export const KTO_OPTIONS: OptionTable<KtoConfig> = {
  // Shuffled by default: a paired file unpairs into every chosen row, then every rejected row, and a batch of
  // one kind only would train on desirable (then undesirable) rows alone, with no balance inside a step.
  ...describe(withDefaults(SUPERVISED_OPTIONS, { epochs: 1, shuffle: true }, { lr: { derive: (r) => (r.full ? 1e-6 : 1e-5), defaultText: '1e-5 LoRA, 1e-6 --full' } }), {
    model: 'base model folder (Hugging Face layout); also the reference model',
    data: 'KTO JSONL: {prompt, completion, label} (TRL unpaired; strings, messages or *_ids), or preference pairs (unpaired automatically)',
    out: 'output folder: PEFT adapter (or full model), metrics.jsonl, kto_config.json',
    batchSize: 'examples per micro-batch (at least 2: the KL reference point is a mean over the micro-batch)',
    evalBatchSize: 'eval (and reference precompute) examples per micro-batch',
    shuffle: 'shuffle examples each epoch (seeded; on by default: a paired file unpairs into all chosen rows, then all rejected rows; --no-shuffle: file order)',
  }),
  ...PREFERENCE_DATA_OPTIONS,
  beta: { type: 'number', default: 0.1, check: positive, describe: 'KTO beta: inverse temperature of the implicit reward', group: 'KTO' },
  desirableWeight: { type: 'number', default: 1, check: positive, describe: 'loss weight of the desirable examples', group: 'KTO' },
  undesirableWeight: { type: 'number', default: 1, check: positive, describe: 'loss weight of the undesirable examples', group: 'KTO' },
};

/** The defaults of KTO_OPTIONS (lr: 1e-5 with LoRA, 1e-6 with full training). */
export const KTO_DEFAULTS: Record<string, unknown> = { ...defaultsOf(KTO_OPTIONS), ...lrDefaults(KTO_OPTIONS) };

/** Means over a set of examples (TRL's names without the prefix); a side with no example has null figures. */
export interface KtoMetrics {
  /** Mean weighted KTO loss over every example. */
  loss: number;
  /** beta (policy - reference) sequence log-prob, mean over the desirable / undesirable examples. */
  rewardsChosen: number | null;
  rewardsRejected: number | null;
  /** rewardsChosen - rewardsRejected (null unless both sides have examples). */
  margin: number | null;
  /** Policy sequence log-probs (sums over the completion tokens), likewise. */
  logpsChosen: number | null;
  logpsRejected: number | null;
  /** The KL reference point, mean over the micro-batches (row-weighted). */
  kl: number;
  desirable: number;
  undesirable: number;
  rows: number;
}

/** One line of metrics.jsonl (step 0: the eval before training, eval keys only). A side absent from the step has no rewards/logps keys. */
export interface KtoStepMetrics {
  step: number;
  epoch: number;
  loss?: number;
  'rewards/chosen'?: number;
  'rewards/rejected'?: number;
  'rewards/margins'?: number;
  'logps/chosen'?: number;
  'logps/rejected'?: number;
  kl?: number;
  lr?: number;
  grad_norm?: number;
  /** Examples in the step, and how many are desirable / undesirable. */
  rows?: number;
  desirable?: number;
  undesirable?: number;
  /** Real input tokens of the step's rows (the KL sequences' inference forwards not counted, as TRL's num_tokens). */
  input_tokens?: number;
  tokens_per_sec?: number;
  elapsed_s: number;
  eval_loss?: number;
  'eval_rewards/chosen'?: number;
  'eval_rewards/rejected'?: number;
  'eval_rewards/margins'?: number;
  'eval_logps/chosen'?: number;
  'eval_logps/rejected'?: number;
  eval_kl?: number;
}

export type KtoHooks = StageHooks<KtoStepMetrics>;

/** The loop's result (lib/train/supervised.ts) with the data statistics. */
export interface KtoResult extends SupervisedRun<ResolvedKtoConfig, KtoMetrics> {
  data: UnpairedDataStats & { source: KtoDataset['source'] };
}

// ------------------------------------------------------------------ rows, the KL estimate and the loss

/** An example with its fixed KL sequence (its prompt + another example's completion). */
export interface KtoExample extends UnpairedExample {
  kl: { ids: number[]; from: number };
}

/** A sequence scored over [from, ids.length): its completion. */
type Scored = { ids: readonly number[]; from: number };

/** The forward layout of scored sequences: logp[t] predicts ids[t+1], so a completion from `from` is scored at [from - 1, length - 1). */
function pack(rows: readonly Scored[]): { inputIds: number[][]; spans: [number, number][]; tokens: number } {
  return {
    inputIds: rows.map((r) => r.ids as number[]),
    spans: rows.map((r): [number, number] => [r.from - 1, r.ids.length - 1]),
    tokens: rows.reduce((s, r) => s + r.ids.length, 0),
  };
}

/** Completion log-prob sums of `rows` under the model as it is now (its active adapter, or none), in micro-batches of `batchSize`. */
export async function completionLogps(model: Model, rows: readonly Scored[], batchSize: number): Promise<Float32Array> {
  const out = new Float32Array(rows.length);
  for (let i = 0; i < rows.length; i += batchSize) {
    const b = pack(rows.slice(i, i + batchSize));
    const { seq } = await model.forward({ inputIds: b.inputIds, logp: true, download: false });
    out.set(await model.sequenceLogps({ mask: spanMask(seq, b.spans) }), i);
  }
  return out;
}

/** Reference sums of a set of examples: their completions and their KL sequences. */
export interface KtoRefLogps {
  logps: Float32Array;
  kl: Float32Array;
}

export async function ktoRefLogps(model: Model, examples: readonly KtoExample[], batchSize: number): Promise<KtoRefLogps> {
  return { logps: await completionLogps(model, examples, batchSize), kl: await completionLogps(model, examples.map((e) => e.kl), batchSize) };
}

/**
 * KTO's reference point z0 for a micro-batch: the policy's KL sequences
 * (inference forward, no gradient) against their reference sums,
 * max(0, mean(policy - ref)) over the micro-batch, as TRL's
 * (KL_logps - ref_KL_logps).mean().clamp(min=0).detach().
 */
export async function klEstimate(model: Model, examples: readonly KtoExample[], refKl: ArrayLike<number>): Promise<number> {
  const policy = await completionLogps(model, examples.map((e) => e.kl), examples.length);
  let s = 0;
  for (let i = 0; i < examples.length; i++) s += policy[i] - refKl[i];
  return Math.max(0, s / examples.length);
}

const labels = (examples: readonly KtoExample[]) => Float32Array.from(examples, (e) => (e.label ? 1 : 0));

/** Sums over micro-batches that make a KtoMetrics (`finish`). */
type Sums = { loss: number; rc: number; rr: number; lc: number; lr: number; nc: number; nr: number; kl: number; n: number };
const zero = (): Sums => ({ loss: 0, rc: 0, rr: 0, lc: 0, lr: 0, nc: 0, nr: 0, kl: 0, n: 0 });

/** A micro-batch's statistics (means per side, as the loss op gives them) added to the sums. */
function add(s: Sums, r: { loss: number; rewardsChosen: number; rewardsRejected: number; logpsChosen: number; logpsRejected: number; chosen: number; rejected: number }, kl: number, n: number): void {
  s.loss += r.loss * n;
  s.rc += r.rewardsChosen * r.chosen;
  s.rr += r.rewardsRejected * r.rejected;
  s.lc += r.logpsChosen * r.chosen;
  s.lr += r.logpsRejected * r.rejected;
  s.nc += r.chosen;
  s.nr += r.rejected;
  s.kl += kl * n;
  s.n += n;
}

function finish(s: Sums): KtoMetrics {
  const c = s.nc > 0, r = s.nr > 0;
  const rewardsChosen = c ? s.rc / s.nc : null, rewardsRejected = r ? s.rr / s.nr : null;
  return {
    loss: s.n ? s.loss / s.n : 0,
    rewardsChosen,
    rewardsRejected,
    margin: c && r ? rewardsChosen! - rewardsRejected! : null,
    logpsChosen: c ? s.lc / s.nc : null,
    logpsRejected: r ? s.lr / s.nr : null,
    kl: s.n ? s.kl / s.n : 0,
    desirable: s.nc,
    undesirable: s.nr,
    rows: s.n,
  };
}

export interface KtoLossOptions {
  beta: number;
  desirableWeight: number;
  undesirableWeight: number;
}

/** The KTO loss and statistics of `examples` under the model's current weights (no gradients), each eval micro-batch with its own KL estimate as in training. */
export async function evaluateKto(model: Model, examples: readonly KtoExample[], ref: KtoRefLogps, opts: KtoLossOptions & { batchSize: number }): Promise<KtoMetrics> {
  const s = zero();
  for (let i = 0; i < examples.length; i += opts.batchSize) {
    const rows = examples.slice(i, i + opts.batchSize), n = rows.length;
    const kl = await klEstimate(model, rows, ref.kl.subarray(i, i + n));
    const b = pack(rows);
    const { seq } = await model.forward({ inputIds: b.inputIds, logp: true, download: false });
    const r = await model.ktoLoss({ mask: spanMask(seq, b.spans), refLogps: ref.logps.subarray(i, i + n), desirable: labels(rows), kl, beta: opts.beta, desirableWeight: opts.desirableWeight, undesirableWeight: opts.undesirableWeight });
    add(s, r, kl, n);
  }
  return finish(s);
}

/** TRL's names for a KtoMetrics (`prefix` 'eval_' for held-out figures); a side without examples is left out. */
export function ktoFields(m: KtoMetrics, prefix = ''): Record<string, number> {
  const f: Record<string, number | null> = {
    [`${prefix}loss`]: m.loss,
    [`${prefix}rewards/chosen`]: m.rewardsChosen,
    [`${prefix}rewards/rejected`]: m.rewardsRejected,
    [`${prefix}rewards/margins`]: m.margin,
    [`${prefix}logps/chosen`]: m.logpsChosen,
    [`${prefix}logps/rejected`]: m.logpsRejected,
    [`${prefix}kl`]: m.kl,
  };
  return Object.fromEntries(Object.entries(f).filter(([, v]) => v !== null)) as Record<string, number>;
}

// ------------------------------------------------------------------ data

/**
 * TRL's check of the desirable / undesirable balance (KTO paper eq. 8):
 * desirable_weight n_D / (undesirable_weight n_U) should be in [1, 4/3].
 * The bounds are TRL's (1.33, rounded to 2 decimals). TRL skips the check
 * when the counts are equal; here equal counts with unequal weights are
 * checked too, since the ratio is then just as far off. A warning, not an
 * error: a deliberate imbalance is legitimate.
 */
export function weightWarning(nDesirable: number, nUndesirable: number, desirableWeight: number, undesirableWeight: number): string | null {
  if (nDesirable === 0 || nUndesirable === 0)
    return `every example is ${nDesirable === 0 ? 'undesirable' : 'desirable'}: only the ${nDesirable === 0 ? 'undesirable' : 'desirable'} term of the KTO loss is trained`;
  const round2 = (x: number) => Math.round(x * 100) / 100;
  const dLo = round2(nUndesirable * undesirableWeight / nDesirable), dHi = round2((nUndesirable * undesirableWeight / nDesirable) * 1.33);
  const uLo = round2(nDesirable * desirableWeight / nUndesirable / 1.33), uHi = round2(nDesirable * desirableWeight / nUndesirable);
  if ((dLo <= desirableWeight && desirableWeight <= dHi) || (uLo <= undesirableWeight && undesirableWeight <= uHi)) return null;
  const ratio = (desirableWeight * nDesirable) / (undesirableWeight * nUndesirable);
  return (
    `${nDesirable} desirable and ${nUndesirable} undesirable examples with --desirable-weight ${desirableWeight} and --undesirable-weight ${undesirableWeight}: ` +
    `desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = ${ratio.toFixed(3)} is outside [1, 4/3] (KTO paper eq. 8); ` +
    `use EITHER --desirable-weight in [${dLo}, ${dHi}] OR --undesirable-weight in [${uLo}, ${uHi}] (not both)`
  );
}

/** Examples with their KL sequences, drawn within the same set (train or eval). */
function withKl(examples: readonly UnpairedExample[], maxLen: number): KtoExample[] {
  const kl = klPairs(examples, maxLen);
  return examples.map((e, i) => ({ ...e, kl: kl[i] }));
}

function fmtData(d: KtoDataset): string {
  const s = d.stats;
  const formats = Object.entries(s.formats).map(([k, v]) => `${v} ${k}`).join(', ');
  return (
    `${s.rows} examples (${s.desirable} desirable, ${s.undesirable} undesirable; ${formats}${d.source === 'paired' ? `; unpaired from ${d.pairStats!.rows} preference pairs` : ''}), ` +
    `${s.tokens} tokens, ${s.completionTokens} completion tokens` +
    (s.truncatedRows ? `, ${s.truncatedRows} truncated` : '')
  );
}

// ------------------------------------------------------------------ the method

type KtoRefs = { train: KtoRefLogps; eval: KtoRefLogps | null };

/** The KTO method: its reference log-probs (examples and KL sequences) are computed once, before the first step (and before a checkpoint is restored). */
function ktoMethod(): SupervisedMethod<ResolvedKtoConfig, KtoExample, { rows: number }, KtoMetrics> {
  let refs: KtoRefs | null = null;
  const lossOpts = (cfg: ResolvedKtoConfig): KtoLossOptions => ({ beta: cfg.beta, desirableWeight: cfg.desirableWeight, undesirableWeight: cfg.undesirableWeight });
  return {
    name: 'kto',
    options: KTO_OPTIONS,
    check(cfg) {
      // TRL refuses it too: with one row a batch's KL reference point is a single sample (in TRL's in-batch rotation, the row's own reward).
      arg(cfg.batchSize >= 2, `--batch-size must be at least 2 for KTO, got ${cfg.batchSize}: the KL reference point is a mean over the micro-batch's mismatched prompt/completion pairs; for less memory per forward, use --batch-size 2 with a larger --grad-accum`);
    },
    checkModelFolder(cfg, mcfg) {
      if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: KTO needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
    },
    loadData(cfg, mcfg, log) {
      const dataOpts = {
        ...preferenceDataOptions(cfg, mcfg),
      };
      const { maxLen } = dataOpts;
      const load = (file: string) => {
        const d = loadKtoData(file, dataOpts);
        const w = d.pairStats ? identicalWarning(file, d.pairStats) : null;
        if (w) log(`kto: warning: ${w}`);
        return d;
      };
      const data = load(cfg.data);
      let train: UnpairedExample[] = data.examples, evalSet: UnpairedExample[] = [];
      if (cfg.evalFraction > 0) {
        const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
        train = split.train.map((i) => data.examples[i]);
        evalSet = split.eval.map((i) => data.examples[i]);
      } else if (cfg.evalData) evalSet = load(cfg.evalData).examples;
      log(`kto: ${cfg.data}: ${fmtData(data)}; max length ${maxLen}`);
      // One example would be its own KL sequence: its reference point would be its own implied reward.
      if (train.length < 2) throw new RlhfError('E_DATA', `${cfg.data}: KTO needs at least 2 training examples (the KL reference point pairs each prompt with another example's completion), got ${train.length}`, { where: cfg.data });
      const nd = train.filter((e) => e.label).length;
      const warn = weightWarning(nd, train.length - nd, cfg.desirableWeight, cfg.undesirableWeight);
      if (warn) log(`kto: warning: ${warn}`);
      if (evalSet.length) log(`kto: eval on ${evalSet.length} examples${cfg.evalData ? ` of ${cfg.evalData}` : ` held out (--eval-fraction ${cfg.evalFraction})`}`);
      const tr = withKl(train, maxLen), ev = evalSet.length ? withKl(evalSet, maxLen) : [];
      return { train: tr, eval: ev, stats: { ...data.stats, source: data.source }, longest: Math.max(2, ...[...tr, ...ev].flatMap((e) => [e.ids.length, e.kl.ids.length])) };
    },
    // The reference: the model before any step, as in DPO. A new adapter is
    // switched off (the frozen base alone); a continued adapter stays on (it
    // is the policy being improved); full training has not changed the base yet.
    async prepare({ cfg, model, trainer, log }, data) {
      const t0 = Date.now();
      const newAdapter = !cfg.full && !cfg.adapter;
      if (newAdapter) trainer.useAdapter(null);
      refs = {
        train: await ktoRefLogps(model, data.train, cfg.evalBatchSize),
        eval: data.eval.length ? await ktoRefLogps(model, data.eval, cfg.evalBatchSize) : null,
      };
      if (newAdapter) trainer.useAdapter('default');
      const n = data.train.length + data.eval.length;
      log(`kto: reference log-probs of ${n} examples and their ${n} KL sequences (${cfg.adapter ? `base + ${cfg.adapter}` : 'base model'}) in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
    },
    describeRun: (cfg) =>
      `${cfg.full ? 'full training' : cfg.adapter ? `continuing the LoRA adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`}` +
      ` (beta ${cfg.beta}${cfg.desirableWeight !== 1 || cfg.undesirableWeight !== 1 ? `, weights ${cfg.desirableWeight} desirable / ${cfg.undesirableWeight} undesirable` : ''})`,
    planStep: (micro) => ({ rows: micro.reduce((s, rows) => s + rows.length, 0) }),
    async microBatch({ cfg, model, trainer }, examples, plan, rows) {
      const n = rows.length;
      // The KL estimate first: an inference forward, so the training forward's activations are the last ones for backward.
      const kl = await klEstimate(model, examples, Float32Array.from(rows, (i) => refs!.train.kl[i]));
      const b = pack(examples);
      const { seq } = await trainer.forward({ inputIds: b.inputIds, download: false });
      const r = await trainer.ktoLoss({ mask: spanMask(seq, b.spans), refLogps: Float32Array.from(rows, (i) => refs!.train.logps[i]), desirable: labels(examples), kl, ...lossOpts(cfg), gradScale: n / plan.rows });
      await trainer.backward({});
      const s = zero();
      add(s, r, kl, n);
      return { inputTokens: b.tokens, ...s };
    },
    stepFigures: (x, { rows }) => {
      const m = finish(x as unknown as Sums);
      return { loss: m.loss, head: ktoFields(m), counts: { rows, desirable: m.desirable, undesirable: m.undesirable } };
    },
    evaluate: ({ cfg, model }, examples) => evaluateKto(model, examples, refs!.eval!, { ...lossOpts(cfg), batchSize: cfg.evalBatchSize }),
    evalFields: (e) => ktoFields(e, 'eval_'),
    evalAtStepZero: true,
    describeEval: (e, when) =>
      `${when === 'before' ? 'before' : 'after'} training: eval loss ${e.loss.toFixed(4)}, rewards desirable ${e.rewardsChosen?.toFixed(4) ?? '-'} / undesirable ${e.rewardsRejected?.toFixed(4) ?? '-'}, kl ${e.kl.toFixed(4)}`,
    configRecord: (r) => ({ reference: r.config.adapter ? `base + ${r.config.adapter}` : 'base', data_source: (r.data as KtoResult['data']).source, initial_eval: r.initialEval, final_eval: r.finalEval }),
  };
}

/** Fills in the defaults and checks every value (E_ARGUMENT naming the option; batch size 1 refused). */
export function resolveKtoConfig(cfg: KtoConfig): ResolvedKtoConfig {
  return resolveSupervised(ktoMethod(), cfg);
}

export async function runKto(config: KtoConfig, hooks: KtoHooks = {}): Promise<KtoResult> {
  const r = await runSupervised(ktoMethod(), config, hooks);
  return { ...r, data: r.data as KtoResult['data'] };
}

export const ktoStage: Stage<KtoConfig, KtoResult, KtoStepMetrics> = {
  name: 'kto',
  summary: 'Kahneman-Tversky Optimization (LoRA adapter or --full) on desirable / undesirable examples',
  options: KTO_OPTIONS,
  run: runKto,
};

/** In a recipe: KTO trains a policy on the base later stages share (SFT's merged model), which is also its reference. */
ktoStage.recipe = policyOnBase({
  summary: (r) => ({
    eval: r.finalEval ? { loss: r.finalEval.loss, margin: r.finalEval.margin, kl: r.finalEval.kl, loss_before: r.initialEval?.loss } : undefined,
    steps: r.steps,
  }),
  progress: (m) => ({ loss: m.loss as number | undefined, margin: m['rewards/margins'] as number | undefined, kl: m.kl as number | undefined }),
});
