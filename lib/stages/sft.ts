/**
 * The SFT stage (`rlhf-native sft`): supervised finetuning of a causal LM on
 * JSONL data, with a LoRA adapter (default, PEFT layout) or every weight
 * (`full`), TRL's SFTTrainer semantics on the native engine. See docs/sft.md.
 * The loop is lib/train/supervised.ts; this file holds what is SFT's own.
 *
 * One optimizer step: for each of `gradAccum` micro-batches of `batchSize`
 * rows, forward -> masked NLL -> backward (gradients accumulate); then the
 * optimizer step. The loss of a step is token-weighted: every micro-batch
 * divides by the number of target tokens of the whole step (`denom`), so the
 * accumulated gradient is exactly that of one big batch holding all the rows
 * (transformers' `num_items_in_batch`).
 */
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { mergeAdapter } from '../engine/merge';
import { scatterTokens } from '../engine/objectives';
import type { Device } from '../info';
import type { Model } from '../engine/model';
import { readAdapterConfig } from '../model/peft';
import { tokenizerSemantics } from '../data/trl-tokens';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';
import { loadSftData, packSftBatch, splitEval, type SftDataStats, type SftExample } from '../data/sft-data';
import { checks, defaultsOf, lrDefaults, SUPERVISED_OPTIONS, withDefaults, describe, type OptionTable, type Resolved, type SupervisedOptions } from '../train/options';
import { noDecayNames, resolveSupervised, runSupervised, type SupervisedMethod, type SupervisedRun } from '../train/supervised';
import type { Stage, StageHooks } from '../train/stage';
import type { Trainer } from '../engine/train';

export { noDecayNames };

/** SFT's options: the shared training options with SFT's defaults (TRL's SFTConfig), and label smoothing. */
export interface SftConfig extends SupervisedOptions {
  /**
   * Label smoothing eps in [0, 1] (transformers' label_smoothing_factor,
   * torch's CrossEntropyLoss(label_smoothing)): each target token's loss is
   * (1 - eps)(-log p_y) + eps(-(1/V) sum_v log p_v). Default 0 (the NLL).
   */
  labelSmoothing?: number;
  /** {"messages"} rows: loss on the assistant turns only (TRL's assistant_only_loss); otherwise every token, as TRL. Default false. */
  assistantOnlyLoss?: boolean;
}
export type ResolvedSftConfig = Resolved<SftConfig>;

const SFT_ROWS: OptionTable<SftConfig> = {
  ...SUPERVISED_OPTIONS,
  labelSmoothing: {
    type: 'number',
    default: 0,
    check: checks.unitClosed(),
    describe: 'label smoothing eps: each target token costs (1-eps)(-log p) + eps(mean over the vocabulary of -log p)',
    group: 'Optimizer',
  },
  assistantOnlyLoss: { type: 'boolean', default: false, describe: '{messages} rows: loss on the assistant turns only (always so with --tokenize separate); otherwise on every token, as TRL', group: 'Data' },
};

export const SFT_OPTIONS: OptionTable<SftConfig> = describe(
  withDefaults(SFT_ROWS, { epochs: 3, shuffle: false }, { lr: { derive: (r) => (r.full ? 2e-5 : 2e-4), defaultText: '2e-4 LoRA, 2e-5 --full' } }),
  {
    data: 'JSONL rows: {prompt, completion}, {messages}, {text} or {input_ids, labels}',
    out: 'output folder: PEFT adapter (or full model), metrics.jsonl, sft_config.json',
    shuffle: 'shuffle rows each epoch (seeded; otherwise file order)',
    gradAccum: 'micro-batches per optimizer step (token-weighted)',
  },
);

/** The defaults of SFT_OPTIONS (lr: 2e-4 with LoRA, 2e-5 with full training). */
export const SFT_DEFAULTS: Record<string, unknown> = { ...defaultsOf(SFT_OPTIONS), ...lrDefaults(SFT_OPTIONS) };

/** One line of metrics.jsonl. */
export interface SftStepMetrics {
  step: number;
  /** Epochs completed (fractional). */
  epoch: number;
  /** Token-weighted mean NLL of the step's target tokens (label-smoothed with --label-smoothing). */
  loss: number;
  /** With --label-smoothing: the step's token-weighted mean NLL, unsmoothed. */
  nll?: number;
  /** Learning rate this step ran with. */
  lr: number;
  /** Global gradient norm before clipping. */
  grad_norm: number;
  /** Target (loss) tokens in the step. */
  tokens: number;
  /** Real input tokens (forward + backward) of the step. */
  input_tokens: number;
  /** input_tokens / seconds of the step (forward, loss, backward, optimizer). */
  tokens_per_sec: number;
  /** Seconds since training began. */
  elapsed_s: number;
  /** Present on steps where the eval set was scored. */
  eval_loss?: number;
  eval_tokens?: number;
  /** With --label-smoothing: the held-out mean NLL, unsmoothed (eval_loss is smoothed as the training loss is). */
  eval_nll?: number;
}

export type SftHooks = StageHooks<SftStepMetrics>;
type SftEval = { loss: number; tokens: number; nll: number; smoothed: boolean };

/** The loop's result (lib/train/supervised.ts) with SFT's held-out losses and data statistics. */
export interface SftResult extends SupervisedRun<ResolvedSftConfig, SftEval> {
  /** Held-out loss before the first step (null without an eval set). */
  initialEvalLoss: number | null;
  evalLoss: number | null;
  data: SftDataStats;
}

/**
 * Token-weighted mean NLL of `examples` under the model's current weights,
 * measured on the model's device; with label smoothing eps, `loss` is the
 * smoothed loss (as the training loss) and `nll` the plain mean NLL.
 */
export async function evaluateSft(model: Model, examples: readonly SftExample[], batchSize: number, labelSmoothing = 0): Promise<SftEval> {
  let nll = 0, smooth = 0, tokens = 0;
  for (let i = 0; i < examples.length; i += batchSize) {
    const rows = examples.slice(i, i + batchSize);
    const { seq } = await model.forward({ inputIds: rows.map((e) => e.ids), logp: true, download: false });
    const s = await model.sftLoss({ mask: scatterTokens(seq, rows.map((e) => ({ start: 0, values: e.lossMask }))), ...(labelSmoothing ? { labelSmoothing } : {}) });
    nll += s.nllSum;
    smooth += s.smoothSum ?? 0;
    tokens += s.tokens;
  }
  const eps = labelSmoothing;
  const mean = (x: number) => (tokens > 0 ? x / tokens : 0);
  return { loss: eps ? mean((1 - eps) * nll + eps * smooth) : mean(nll), tokens, nll: mean(nll), smoothed: eps !== 0 };
}

function fmtRows(s: SftDataStats): string {
  // 'tokens' is the pre-tokenised format: named as such, so "256 rows (256 tokens)" does not read as a token count.
  const formats = Object.entries(s.formats).map(([k, v]) => `${v} ${k === 'tokens' ? 'pre-tokenised' : k}`).join(', ');
  return `${s.rows} rows (${formats}), ${s.tokens} tokens, ${s.targets} target tokens` + (s.truncatedRows ? `, ${s.truncatedRows} truncated` : '') + (s.noTargetRows ? `, ${s.noTargetRows} with no target token` : '');
}

export const SFT_METHOD: SupervisedMethod<ResolvedSftConfig, SftExample, { denom: number }, SftEval> = {
  name: 'sft',
  dataParallel: true,
  options: SFT_OPTIONS,
  checkModelFolder(cfg, mcfg) {
    if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: SFT needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
  },
  loadData(cfg, mcfg, log) {
    const maxLen = Math.min(cfg.maxLen, mcfg.maxSequenceLength);
    let tok: Tokenizer | undefined;
    const dataOpts = {
      tokenizer: () => (tok ??= loadTokenizer(cfg.model, { semantics: tokenizerSemantics(cfg.tokenize) })),
      maxLen,
      vocabSize: mcfg.vocabSize,
      fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null,
      tokenize: cfg.tokenize,
      assistantOnlyLoss: cfg.assistantOnlyLoss,
      truncationMode: cfg.truncationMode,
    };
    const data = loadSftData(cfg.data, dataOpts);
    let train = data.examples, evalSet: SftExample[] = [];
    if (cfg.evalFraction > 0) {
      const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
      train = split.train.map((i) => data.examples[i]);
      evalSet = split.eval.map((i) => data.examples[i]);
    } else if (cfg.evalData) {
      evalSet = loadSftData(cfg.evalData, dataOpts).examples;
    }
    log(`sft: ${cfg.data}: ${fmtRows(data.stats)}; max length ${maxLen}`);
    if (evalSet.length) log(`sft: eval on ${evalSet.length} rows${cfg.evalData ? ` of ${cfg.evalData}` : ` held out (--eval-fraction ${cfg.evalFraction})`}`);
    return { train, eval: evalSet, stats: data.stats, longest: Math.max(2, ...train.map((e) => e.ids.length), ...evalSet.map((e) => e.ids.length)) };
  },
  checkTrainable({ cfg, log }) {
    const saved = cfg.adapter ? readAdapterConfig(cfg.adapter).loraDropout : 0;
    if (saved > 0) log(`sft: note: ${cfg.adapter} was trained with lora_dropout ${saved}; it is continued without dropout`);
  },
  planStep(micro) {
    // The step's target tokens (what packSftBatch sums per micro-batch), without packing twice.
    return { denom: micro.reduce((s, rows) => s + rows.reduce((t, e) => t + e.targets, 0), 0) };
  },
  async microBatch({ trainer, cfg }, examples, { denom }) {
    const b = packSftBatch(examples);
    // The masked mean NLL's gradient, -mask / denom, does not depend on the
    // log-probs: given to the forward, the LM head computes its gradient in
    // the same pass over the logits (no recomputation); the loss call then
    // measures the NLL on the device.
    const eps = cfg.labelSmoothing;
    await trainer.forward({ inputIds: b.inputIds, sftLoss: { mask: b.mask, denom, ...(eps ? { labelSmoothing: eps } : {}) }, download: false });
    const s = await trainer.sftLoss();
    await trainer.backward({});
    // lossSum: the micro-batch's share of the step's (smoothed) loss numerator.
    return { inputTokens: b.tokens, nll: s.nllSum, ...(eps ? { lossSum: (1 - eps) * s.nllSum + eps * (s.smoothSum ?? 0) } : {}) };
  },
  stepFigures(sums, { denom }): { loss: number; head: Record<string, number>; counts: Record<string, number> } {
    const mean = (x: number) => (denom > 0 ? x / denom : 0);
    if (sums.lossSum === undefined) return { loss: mean(sums.nll), head: {}, counts: { tokens: denom } };
    return { loss: mean(sums.lossSum), head: { nll: mean(sums.nll) }, counts: { tokens: denom } };
  },
  evaluate: ({ model, cfg }, examples) => evaluateSft(model, examples, cfg.evalBatchSize, cfg.labelSmoothing),
  evalFields: (e) => ({ eval_loss: e.loss, eval_tokens: e.tokens, ...(e.smoothed ? { eval_nll: e.nll } : {}) }),
  describeEval: (e, when) => (when === 'before' ? `held-out loss before training ${e.loss.toFixed(4)}` : `held-out loss after training ${e.loss.toFixed(4)}`),
  configRecord: (r) => ({ initial_eval_loss: r.initialEval?.loss ?? null, eval_loss: r.finalEval?.loss ?? null }),
};

/** Fills in the defaults and checks every value (E_ARGUMENT naming the option; E_UNSUPPORTED for dropout on a continued adapter). */
export function resolveSftConfig(cfg: SftConfig): ResolvedSftConfig {
  return resolveSupervised(SFT_METHOD, cfg);
}

export async function runSft(config: SftConfig, hooks: SftHooks = {}): Promise<SftResult> {
  const r = await runSupervised(SFT_METHOD, config, hooks);
  return { ...r, initialEvalLoss: r.initialEval?.loss ?? null, evalLoss: r.finalEval?.loss ?? null, data: r.data as SftDataStats };
}

export const sftStage: Stage<SftConfig, SftResult, SftStepMetrics> = {
  name: 'sft',
  summary: 'supervised finetuning (LoRA adapter or --full) on JSONL data',
  dataParallel: true,
  options: SFT_OPTIONS,
  run: runSft,
};

/** In a recipe: SFT trains on the recipe's model; a LoRA adapter is merged into `sft/merged`, the base of every later stage. */
sftStage.recipe = {
  defaults: { checkpointSteps: 50 },
  checkpoints: true,
  inputs: (ctx) => ({ model: ctx.model }),
  async outputs(r, ctx): Promise<Record<string, string>> {
    if (r.saved === 'model') return { model: ctx.dir };
    const merged = path.join(ctx.dir, 'merged');
    await mergeAdapter({ model: ctx.model, adapter: ctx.dir, out: merged, device: ctx.device as Device });
    ctx.log(`train: sft: merged the adapter into ${merged} (the base of the later stages)`);
    return { adapter: ctx.dir, model: merged };
  },
  summary: (r) => ({ eval: r.evalLoss !== null ? { eval_loss: r.evalLoss } : undefined, steps: r.steps }),
  progress: (m) => ({ loss: m.loss as number, eval_loss: m.eval_loss as number | undefined }),
};
