/**
 * The rejection-sampling stage (`rlhf-native rs`), Llama 2 section 3.2.3:
 * for each round, sample K responses per prompt from the current policy,
 * score them with a reward source, keep the best response of each prompt,
 * and finetune the policy on the kept pairs with the SFT stage. See docs/rs.md.
 *
 * Round r, in the stage folder `out`:
 *   1. load the policy (base + adapter merged, or the full model of round r-1);
 *   2. sample K responses for every training prompt (batched, seeded);
 *   3. score every (prompt, response) with the RewardSource;
 *   4. keep the best of each prompt's K (optionally only >= minReward; with
 *      `accumulate`, the best seen over every round so far);
 *   5. write `round-r/samples.jsonl` (all samples) and `round-r/sft.jsonl`
 *      (the kept pairs, pre-tokenised so the SFT stage trains on exactly the
 *      sampled ids) and run SFT into `round-r/` (LoRA: a new adapter in round
 *      1, continued via `adapter` later; full: a new model folder).
 * The held-out mean reward (fixed seed) is measured before round 1 and
 * after the last round.
 */
import { arg, finite, nonNegInt, posInt } from './options';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RlhfError } from '../errors';
import { loadModel, type Model } from '../engine/model';
import { openModelFolder } from '../model/folder';
import { readAdapterConfig } from '../model/peft';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';
import type { ChatMessage } from '../tokenizer/chat-template';
import { dataError, readJsonl } from '../data/jsonl';
import { IGNORE_INDEX, splitEval } from '../data/sft-data';
import { rewardModels, type RewardInput, type RewardSource } from '../reward/sources';
import { resolveSftConfig, runSft, type SftConfig, type SftStepMetrics } from './sft';
import { packageVersion } from '../info';
import { checkWritableDir } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { DEVICES, type Device } from '../info';

/** SFT options applied to each round's finetuning (lib/stages/sft.ts documents each). */
export type RsSftOptions = Partial<
  Pick<
    SftConfig,
    | 'loraR'
    | 'loraAlpha'
    | 'loraDropout'
    | 'loraTargets'
    | 'rslora'
    | 'optimizer'
    | 'lr'
    | 'adamBeta1'
    | 'adamBeta2'
    | 'adamEpsilon'
    | 'momentum'
    | 'weightDecay'
    | 'maxGradNorm'
    | 'lrSchedule'
    | 'warmupSteps'
    | 'steps'
    | 'epochs'
    | 'batchSize'
    | 'gradAccum'
    | 'maxLen'
    | 'shuffle'
  >
>;

export interface RsConfig {
  /** Policy model folder (Hugging Face causal LM). Required. */
  model: string;
  /** Prompts, JSONL: {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]}, optional "safe": bool. Required. */
  data: string;
  /** Stage folder: rs_config.json, metrics.jsonl, round-N/. Required. */
  out: string;
  /** The starting policy's PEFT LoRA adapter (round 1 continues it). Default none. */
  adapter?: string | null;
  /** Finetune every weight instead of a LoRA adapter. Default false. */
  full?: boolean;
  /** Helpfulness reward model: a *ForSequenceClassification folder or a LoRA adapter with a score head. Required unless a RewardSource is passed in the hooks. */
  rewardModel?: string | null;
  /** Safety reward model folder (Llama 2's combination). Default none. */
  safetyModel?: string | null;
  /** 'llama2' (default with a safety model) or 'helpfulness'. */
  combine?: 'llama2' | 'helpfulness';
  /** Sigmoid-scale safety threshold. Default 0.15 (Llama 2). */
  safetyThreshold?: number;
  /** Sequences per reward-model forward. Default 8. */
  rewardBatchSize?: number;
  /** Sample / select / finetune rounds. Default 1. */
  rounds?: number;
  /** Samples per prompt (K). Default 4. */
  k?: number;
  /** Sampling temperature. Default 1.0. */
  temperature?: number;
  /** Nucleus sampling. Default 1.0 (off). */
  topP?: number;
  /** Top-k sampling; 0 is off. Default 0. */
  topK?: number;
  /** Longest response, in tokens. Default 128. */
  maxNewTokens?: number;
  /** Sequences per generate call. Default 16. */
  genBatchSize?: number;
  /** Keep a prompt's best response only when its reward is >= this. Default null (always keep). */
  minReward?: number | null;
  /** Each round trains on the best response of every prompt over all rounds so far. Default false. */
  accumulate?: boolean;
  /** Held-out prompt JSONL for the before/after evaluation. Default none (use evalFraction). */
  evalData?: string | null;
  /** Hold out this fraction of the prompts (seeded) for evaluation; 0 disables. Default 0.1. */
  evalFraction?: number;
  /** Samples per held-out prompt. Default 1. */
  evalSamples?: number;
  /** Sampling, the eval split and each round's SFT seed. Default 42. */
  seed?: number;
  /** Per-round finetuning options (SFT's defaults otherwise). */
  sft?: RsSftOptions;
  device?: Device;
}

export type ResolvedRsConfig = Required<Omit<RsConfig, 'adapter' | 'rewardModel' | 'safetyModel' | 'combine' | 'minReward' | 'evalData' | 'sft'>> & {
  adapter: string | null;
  rewardModel: string | null;
  safetyModel: string | null;
  combine: 'llama2' | 'helpfulness';
  minReward: number | null;
  evalData: string | null;
  sft: RsSftOptions;
};

export const RS_DEFAULTS = {
  full: false,
  safetyThreshold: 0.15,
  rewardBatchSize: 8,
  rounds: 1,
  k: 4,
  temperature: 1.0,
  topP: 1.0,
  topK: 0,
  maxNewTokens: 128,
  genBatchSize: 16,
  accumulate: false,
  evalFraction: 0.1,
  evalSamples: 1,
  seed: 42,
  device: 'auto' as const,
};

/** One line of metrics.jsonl. */
export type RsMetrics =
  | {
      phase: 'eval';
      /** 0: before round 1; N: after round N. */
      round: number;
      mean_reward: number;
      prompts: number;
      samples: number;
      mean_response_tokens: number;
      /** Mean raw score of each part of the reward source. */
      parts: Record<string, number>;
      seconds: number;
    }
  | {
      phase: 'sample';
      round: number;
      prompts: number;
      samples: number;
      /** Mean reward of every sample. */
      mean_reward: number;
      /** Mean reward of each prompt's best sample. */
      mean_best_reward: number;
      max_reward: number;
      min_reward: number;
      /** Prompts whose best sample was kept (>= minReward). */
      kept: number;
      /** Rows of this round's SFT data (more than `kept` with accumulate). */
      sft_rows: number;
      mean_response_tokens: number;
      /** Fraction of samples that ended with an EOS token (the rest hit maxNewTokens). */
      eos_fraction: number;
      samples_per_sec: number;
      generate_s: number;
      score_s: number;
      parts: Record<string, number>;
    }
  | ({ phase: 'sft'; round: number } & SftStepMetrics)
  | {
      phase: 'round';
      round: number;
      sft_steps: number;
      sft_initial_loss: number | null;
      sft_final_loss: number | null;
      seconds: number;
    };

export interface RsHooks {
  /** A reward source to use instead of --reward-model (e.g. functionReward). The caller disposes it. */
  reward?: RewardSource;
  /** Called with every metrics.jsonl record. */
  onMetrics?: (m: RsMetrics) => void;
  log?: (line: string) => void;
  /** Stop as after the first SIGINT. */
  signal?: AbortSignal;
  /** Install SIGINT and SIGTERM handlers (default true): the first stops after saving the current SFT (a round being sampled is dropped), a second exits at once (130 / 143). */
  handleSigint?: boolean;
}

export interface RsRoundSummary {
  round: number;
  meanReward: number;
  meanBestReward: number;
  maxReward: number;
  kept: number;
  sftRows: number;
  sftSteps: number;
  sftFinalLoss: number | null;
  samplesPerSec: number;
}

export interface RsResult {
  out: string;
  /** Rounds completed (sampled and finetuned). */
  rounds: number;
  interrupted: boolean;
  /** The signal that stopped the run (SIGINT, SIGTERM), or null. */
  signal: NodeJS.Signals | null;
  /** Held-out mean reward of the starting policy (null without an eval set). */
  initialReward: number | null;
  /** Held-out mean reward after the last round (null without an eval set, or when interrupted). */
  finalReward: number | null;
  trainPrompts: number;
  evalPrompts: number;
  roundStats: RsRoundSummary[];
  /** The final policy: the base folder plus an adapter, or a full model folder (adapter null). */
  policy: { model: string; adapter: string | null };
  metricsFile: string;
  seconds: number;
  config: ResolvedRsConfig;
}


/** Fills in the defaults and checks every value (E_ARGUMENT naming the flag). */
export function resolveRsConfig(cfg: RsConfig, opts: { rewardSource?: boolean } = {}): ResolvedRsConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const rewardModel = cfg.rewardModel ?? null, safetyModel = cfg.safetyModel ?? null;
  if (opts.rewardSource) arg(rewardModel === null && safetyModel === null, '--reward-model / --safety-model cannot be given together with a reward source (hooks.reward)');
  else arg(rewardModel !== null && rewardModel.length > 0, '--reward-model is required (or pass a RewardSource as hooks.reward)');
  arg(safetyModel === null || rewardModel !== null, '--safety-model needs --reward-model (the helpfulness model)');
  const combine = cfg.combine ?? (safetyModel ? 'llama2' : 'helpfulness');
  const r: ResolvedRsConfig = {
    model: cfg.model,
    data: cfg.data,
    out: cfg.out,
    adapter: cfg.adapter ?? null,
    full: cfg.full ?? RS_DEFAULTS.full,
    rewardModel,
    safetyModel,
    combine,
    safetyThreshold: cfg.safetyThreshold ?? RS_DEFAULTS.safetyThreshold,
    rewardBatchSize: cfg.rewardBatchSize ?? RS_DEFAULTS.rewardBatchSize,
    rounds: cfg.rounds ?? RS_DEFAULTS.rounds,
    k: cfg.k ?? RS_DEFAULTS.k,
    temperature: cfg.temperature ?? RS_DEFAULTS.temperature,
    topP: cfg.topP ?? RS_DEFAULTS.topP,
    topK: cfg.topK ?? RS_DEFAULTS.topK,
    maxNewTokens: cfg.maxNewTokens ?? RS_DEFAULTS.maxNewTokens,
    genBatchSize: cfg.genBatchSize ?? RS_DEFAULTS.genBatchSize,
    minReward: cfg.minReward ?? null,
    accumulate: cfg.accumulate ?? RS_DEFAULTS.accumulate,
    evalData: cfg.evalData ?? null,
    evalFraction: cfg.evalData ? 0 : (cfg.evalFraction ?? RS_DEFAULTS.evalFraction),
    evalSamples: cfg.evalSamples ?? RS_DEFAULTS.evalSamples,
    seed: cfg.seed ?? RS_DEFAULTS.seed,
    sft: { ...(cfg.sft ?? {}) },
    device: cfg.device ?? RS_DEFAULTS.device,
  };
  arg(combine === 'llama2' || combine === 'helpfulness', `--combine must be llama2 or helpfulness, got ${combine}`);
  arg(combine !== 'llama2' || safetyModel !== null, '--combine llama2 needs --safety-model');
  arg(finite(r.safetyThreshold) && r.safetyThreshold > 0 && r.safetyThreshold < 1, `--safety-threshold must be in (0, 1) (a sigmoid-scale score), got ${r.safetyThreshold}`);
  arg(posInt(r.rewardBatchSize), `--reward-batch-size must be a positive integer, got ${r.rewardBatchSize}`);
  arg(posInt(r.rounds), `--rounds must be a positive integer, got ${r.rounds}`);
  arg(posInt(r.k), `--k must be a positive integer (samples per prompt), got ${r.k}`);
  arg(finite(r.temperature) && r.temperature > 0, `--temperature must be > 0 (rejection sampling needs varied samples), got ${r.temperature}`);
  arg(finite(r.topP) && r.topP > 0 && r.topP <= 1, `--top-p must be in (0, 1], got ${r.topP}`);
  arg(nonNegInt(r.topK), `--top-k must be a non-negative integer (0: off), got ${r.topK}`);
  arg(posInt(r.maxNewTokens), `--max-new-tokens must be a positive integer, got ${r.maxNewTokens}`);
  arg(posInt(r.genBatchSize), `--gen-batch-size must be a positive integer, got ${r.genBatchSize}`);
  arg(r.minReward === null || finite(r.minReward), `--min-reward must be a number, got ${r.minReward}`);
  arg(finite(r.evalFraction) && r.evalFraction >= 0 && r.evalFraction < 1, `--eval-fraction must be in [0, 1), got ${r.evalFraction}`);
  arg(!(cfg.evalData && cfg.evalFraction), '--eval-fraction and --eval-data cannot be combined');
  arg(posInt(r.evalSamples), `--eval-samples must be a positive integer, got ${r.evalSamples}`);
  arg(nonNegInt(r.seed) && r.seed < 2 ** 31, `--seed must be an integer in [0, 2^31), got ${r.seed}`);
  arg(DEVICES.includes(r.device), `--device must be auto, cpu or cuda, got ${r.device}`);
  arg(!(r.full && r.adapter), '--adapter and --full cannot be combined (full training trains the base weights; merge the adapter first)');
  const outAbs = path.resolve(r.out);
  arg(outAbs !== path.resolve(r.model), '--out must differ from --model (the policy model folder is never overwritten)');
  arg(!r.adapter || outAbs !== path.resolve(r.adapter), '--out must differ from --adapter');
  // The per-round SFT options, checked now (with SFT's own flag names) rather than after the first round's sampling.
  sftRoundConfig(r, 1, r.model, r.adapter, 'data.jsonl', path.join(r.out, 'round-1'));
  return r;
}

const LORA_KEYS = ['loraR', 'loraAlpha', 'loraDropout', 'loraTargets', 'rslora'] as const;

/** The SFT config of one round: LoRA shape options only when the adapter is created (round 1 without --adapter). */
function sftRoundConfig(cfg: ResolvedRsConfig, round: number, model: string, adapter: string | null, data: string, out: string): SftConfig {
  const sft: RsSftOptions = { ...cfg.sft };
  if (cfg.full || adapter) for (const k of LORA_KEYS) delete sft[k];
  const given = LORA_KEYS.filter((k) => cfg.sft[k] !== undefined).map((k) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()));
  arg(!cfg.full || given.length === 0, `LoRA options do not apply with --full: ${given.join(', ')}`);
  arg(!cfg.adapter || given.length === 0, `${given.join(', ')} cannot be given with --adapter: r, alpha and targets come from the adapter's adapter_config.json`);
  const c: SftConfig = { ...sft, model, data, out, adapter, full: cfg.full, seed: (cfg.seed + round) % 2 ** 31, device: cfg.device };
  resolveSftConfig(c);
  return c;
}

// ------------------------------------------------------------------ prompts

export interface PromptRow {
  /** 1-based line in its file. */
  line: number;
  /** The prompt as given: a string or chat messages. */
  prompt: string | ChatMessage[];
  /** What the model sees: the string, or the chat template rendered with a generation prompt. */
  text: string;
  ids: number[];
  safe?: boolean;
}

function isMessages(v: unknown): v is ChatMessage[] {
  return Array.isArray(v) && v.length > 0 && v.every((m) => m && typeof m === 'object' && typeof m.role === 'string' && typeof m.content === 'string');
}

/**
 * Reads a prompt JSONL file: {"prompt": "..."} (encoded with special tokens,
 * as SFT encodes prompts), {"prompt": [messages]} or {"messages": [...]}
 * (chat template with a generation prompt; a trailing assistant message, as
 * in SFT data, is dropped); optional "safe": true/false marks the prompt for
 * the safety reward. E_DATA naming file:line.
 */
export function loadPrompts(file: string, tok: Tokenizer, opts: { maxPromptTokens: number; vocabSize: number }): PromptRow[] {
  const rows = readJsonl(file);
  return rows.map((row) => {
    const v = row.value;
    const err = (msg: string) => dataError(file, row.line, msg);
    let prompt: string | ChatMessage[], text: string, ids: number[];
    try {
      if (typeof v.prompt === 'string') {
        if (v.prompt.length === 0) throw err('"prompt" is empty');
        prompt = text = v.prompt;
        ids = tok.encode(text, { addSpecialTokens: true });
      } else {
        let msgs: ChatMessage[];
        if ('prompt' in v) {
          if (!isMessages(v.prompt)) throw err('"prompt" must be a string or a non-empty list of {"role": string, "content": string} messages');
          msgs = v.prompt;
        } else if ('messages' in v) {
          if (!isMessages(v.messages)) throw err('"messages" must be a non-empty list of {"role": string, "content": string}');
          msgs = [...v.messages];
          while (msgs.length && msgs[msgs.length - 1].role === 'assistant') msgs.pop();
          if (msgs.length === 0) throw err('"messages" has only assistant messages: there is no prompt');
        } else {
          throw err('expected {"prompt": "..."} or {"messages": [...]} (a prompt row; "prompt" is missing)');
        }
        prompt = msgs;
        text = tok.applyChatTemplate(msgs, { addGenerationPrompt: true });
        ids = tok.encode(text, { addSpecialTokens: false });
      }
    } catch (e) {
      if (e instanceof RlhfError && !e.message.startsWith(`${file}:`)) throw err(e.message);
      throw e;
    }
    if (v.safe !== undefined && v.safe !== null && typeof v.safe !== 'boolean') throw err(`"safe" must be true or false, got ${JSON.stringify(v.safe)}`);
    if (ids.length === 0) throw err('the prompt encodes to no tokens');
    if (ids.length > opts.maxPromptTokens) throw err(`the prompt is ${ids.length} tokens, more than the ${opts.maxPromptTokens} that the context leaves after --max-new-tokens`);
    const bad = ids.find((x) => x < 0 || x >= opts.vocabSize);
    if (bad !== undefined) throw err(`token id ${bad} is outside the model's vocabulary (size ${opts.vocabSize})`);
    const out: PromptRow = { line: row.line, prompt, text, ids };
    if (typeof v.safe === 'boolean') out.safe = v.safe;
    return out;
  });
}

// ------------------------------------------------------------------ sampling and scoring

/** FNV-1a over a few integers: a distinct sampling seed in [0, 2^31) per (seed, round, chunk). */
export function mixSeed(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) {
    let v = x >>> 0;
    for (let i = 0; i < 4; i++) {
      h ^= v & 0xff;
      h = Math.imul(h, 0x01000193) >>> 0;
      v >>>= 8;
    }
  }
  return h >>> 1;
}

/** The ids generation stops at: config.json's eos_token_id plus generation_config.json's. */
export function stopTokenIds(dir: string): number[] {
  const f = openModelFolder(dir);
  const ids = new Set(f.config.eosTokenIds);
  const g = f.generationConfig?.eos_token_id;
  f.close();
  for (const x of Array.isArray(g) ? g : [g]) if (Number.isInteger(x)) ids.add(x as number);
  return [...ids];
}

export interface SampleOptions {
  k: number;
  temperature: number;
  topP: number;
  topK: number;
  maxNewTokens: number;
  batchSize: number;
  seed: number;
  eosIds: number[];
  /** Checked between generate calls: true stops early (the result is then incomplete). */
  shouldStop?: () => boolean;
}

export interface Sample {
  /** Index of the prompt in the list sampled from. */
  prompt: number;
  /** 0..k-1 */
  index: number;
  ids: number[];
  text: string;
  finish: string;
}

/** K samples per prompt, prompt-major, in generate calls of `batchSize` sequences; call c is seeded mixSeed(seed, c). */
export async function samplePolicy(model: Model, tok: Tokenizer, prompts: readonly PromptRow[], o: SampleOptions): Promise<{ samples: Sample[]; complete: boolean }> {
  const jobs: { prompt: number; index: number }[] = [];
  prompts.forEach((_, p) => {
    for (let j = 0; j < o.k; j++) jobs.push({ prompt: p, index: j });
  });
  const samples: Sample[] = [];
  for (let i = 0, c = 0; i < jobs.length; i += o.batchSize, c++) {
    if (o.shouldStop?.()) return { samples, complete: false };
    const chunk = jobs.slice(i, i + o.batchSize);
    const g = await model.generate({
      prompts: chunk.map((j) => prompts[j.prompt].ids),
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topP: o.topP,
      topK: o.topK,
      seed: mixSeed(o.seed, c),
      eosIds: o.eosIds,
    });
    chunk.forEach((j, b) => {
      const ids = Array.from(g.tokens[b]);
      samples.push({ ...j, ids, text: tok.decode(ids, { skipSpecialTokens: true }), finish: g.finish[b] });
    });
  }
  return { samples, complete: true };
}

export function rewardInputs(prompts: readonly PromptRow[], samples: readonly Sample[]): RewardInput[] {
  return samples.map((s) => {
    const p = prompts[s.prompt];
    const x: RewardInput = { prompt: p.text, promptIds: p.ids, response: s.text, responseIds: s.ids };
    if (p.safe !== undefined) x.safe = p.safe;
    return x;
  });
}

async function scoreAll(reward: RewardSource, inputs: RewardInput[]): Promise<{ reward: Float64Array; parts: Record<string, Float64Array> }> {
  const r = await reward.score(inputs);
  if (!(r.reward instanceof Float64Array) || r.reward.length !== inputs.length)
    throw new RlhfError('E_ARGUMENT', `the reward source returned ${r.reward?.length} rewards for ${inputs.length} samples`);
  const bad = r.reward.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new RlhfError('E_ARGUMENT', `the reward source returned ${r.reward[bad]} for sample ${bad} (rewards must be finite)`);
  return r;
}

const mean = (xs: ArrayLike<number>) => (xs.length ? Array.from(xs).reduce((a, b) => a + b, 0) / xs.length : 0);
const partMeans = (parts: Record<string, Float64Array>) => Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, mean(v)]));

export interface PolicyEvaluation {
  meanReward: number;
  prompts: number;
  samples: number;
  meanResponseTokens: number;
  parts: Record<string, number>;
}

/** Mean reward of the policy's samples on `prompts` (seeded: the same seed samples with the same random numbers). */
export async function evaluatePolicy(model: Model, tok: Tokenizer, prompts: readonly PromptRow[], reward: RewardSource, o: SampleOptions): Promise<PolicyEvaluation> {
  const { samples } = await samplePolicy(model, tok, prompts, { ...o, shouldStop: undefined });
  const r = await scoreAll(reward, rewardInputs(prompts, samples));
  return { meanReward: mean(r.reward), prompts: prompts.length, samples: samples.length, meanResponseTokens: mean(samples.map((s) => s.ids.length)), parts: partMeans(r.parts) };
}

// ------------------------------------------------------------------ the stage

interface Kept {
  prompt: number;
  round: number;
  reward: number;
  sample: Sample;
}

function sftRow(p: PromptRow, k: Kept): Record<string, unknown> {
  const ids = [...p.ids, ...k.sample.ids];
  const labels = [...new Array<number>(p.ids.length).fill(IGNORE_INDEX), ...k.sample.ids];
  const head = typeof p.prompt === 'string' ? { prompt: p.prompt, completion: k.sample.text } : { messages: [...p.prompt, { role: 'assistant', content: k.sample.text }] };
  // "input_ids" wins in the SFT loader: training sees exactly the sampled ids; the text is for people.
  return { ...head, input_ids: ids, labels, reward: k.reward, round: k.round, source_line: p.line };
}

function checkOutFolder(out: string): void {
  if (!fs.existsSync(out)) return;
  if (!fs.statSync(out).isDirectory()) throw new RlhfError('E_ARGUMENT', `--out ${out} exists and is not a folder`, { where: out });
  const earlier = fs.readdirSync(out).filter((f) => f === 'rs_config.json' || f === 'metrics.jsonl' || /^round-\d+$/.test(f));
  if (earlier.length)
    throw new RlhfError('E_ARGUMENT', `--out ${out} already holds a rejection-sampling run (${earlier.slice(0, 3).join(', ')}); choose a new folder (nothing there was changed)`, { where: out });
}

export async function runRejectionSampling(config: RsConfig, hooks: RsHooks = {}): Promise<RsResult> {
  const cfg = resolveRsConfig(config, { rewardSource: hooks.reward !== undefined });
  const log = hooks.log ?? (() => {});
  checkOutFolder(cfg.out);
  checkWritableDir(cfg.out);
  if (cfg.adapter) readAdapterConfig(cfg.adapter);

  // The policy's config and tokenizer, then the data: bad rows fail before any weights load or anything is written.
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `--model ${cfg.model}: the policy needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
  const tok = loadTokenizer(cfg.model);
  const eosIds = stopTokenIds(cfg.model);
  let maxPromptTokens = mcfg.maxSequenceLength - cfg.maxNewTokens;
  if (maxPromptTokens < 1) throw new RlhfError('E_ARGUMENT', `--max-new-tokens ${cfg.maxNewTokens} leaves no room for a prompt in the model's context (${mcfg.maxSequenceLength})`);
  const reward0 = hooks.reward;
  if (reward0?.maxTokens !== undefined) maxPromptTokens = Math.min(maxPromptTokens, reward0.maxTokens - cfg.maxNewTokens);
  const popts = { maxPromptTokens, vocabSize: mcfg.vocabSize };
  const all = loadPrompts(cfg.data, tok, popts);
  let train = all, held: PromptRow[] = [];
  if (cfg.evalData) held = loadPrompts(cfg.evalData, tok, popts);
  else if (cfg.evalFraction > 0) {
    const split = splitEval(all.length, cfg.evalFraction, cfg.seed);
    train = split.train.map((i) => all[i]);
    held = split.eval.map((i) => all[i]);
  }

  const reward =
    reward0 ??
    (await rewardModels({
      helpfulness: cfg.rewardModel!,
      safety: cfg.safetyModel,
      combine: cfg.combine,
      safetyThreshold: cfg.safetyThreshold,
      batchSize: cfg.rewardBatchSize,
      device: cfg.device,
      policy: cfg.model,
    }));
  const ownReward = reward0 === undefined;
  if (ownReward && reward.maxTokens !== undefined) {
    const worst = Math.max(...train.map((p) => p.ids.length), ...held.map((p) => p.ids.length)) + cfg.maxNewTokens;
    if (worst > reward.maxTokens) {
      reward.dispose();
      throw new RlhfError('E_ARGUMENT', `a prompt plus --max-new-tokens ${cfg.maxNewTokens} is ${worst} tokens, longer than the reward model's context (${reward.maxTokens})`);
    }
  }
  log(
    `rs: ${train.length} prompts x ${cfg.k} samples, ${cfg.rounds} round${cfg.rounds > 1 ? 's' : ''}` +
      (held.length ? `; ${held.length} held-out prompts${cfg.evalData ? ` from ${cfg.evalData}` : ` (--eval-fraction ${cfg.evalFraction})`}` : '; no held-out evaluation') +
      `; reward: ${reward.names.join(' + ')}`,
  );

  const abort = new AbortController();

  const t0 = performance.now();
  fs.mkdirSync(cfg.out, { recursive: true });
  fs.writeFileSync(path.join(cfg.out, 'rs_config.json'), JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, train_prompts: train.length, eval_prompts: held.length, reward_parts: reward.names }, null, 2) + '\n');
  const metricsFile = path.join(cfg.out, 'metrics.jsonl');
  const metricsFd = fs.openSync(metricsFile, 'w');
  const emit = (m: RsMetrics) => {
    fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
    hooks.onMetrics?.(m);
  };
  const stopper = stopOnSignals({
    label: 'rs',
    log,
    handleSignals: hooks.handleSigint ?? true,
    abort: hooks.signal,
    then: 'stopping after the current step (a round still sampling is dropped)',
    onStop: () => abort.abort(),
  });

  const sampling = (seed: number, k: number): SampleOptions => ({
    k,
    temperature: cfg.temperature,
    topP: cfg.topP,
    topK: cfg.topK,
    maxNewTokens: cfg.maxNewTokens,
    batchSize: cfg.genBatchSize,
    seed,
    eosIds,
    shouldStop: () => stopper.requested,
  });
  const evalSeed = mixSeed(cfg.seed, 0x0e7a1);
  const evaluate = async (model: Model, round: number): Promise<number> => {
    const te = performance.now();
    const e = await evaluatePolicy(model, tok, held, reward, sampling(evalSeed, cfg.evalSamples));
    emit({ phase: 'eval', round, mean_reward: e.meanReward, prompts: e.prompts, samples: e.samples, mean_response_tokens: e.meanResponseTokens, parts: e.parts, seconds: (performance.now() - te) / 1000 });
    log(`rs: held-out mean reward ${round === 0 ? 'before round 1' : `after round ${round}`}: ${e.meanReward.toFixed(4)} (${e.samples} samples, ${e.meanResponseTokens.toFixed(1)} tokens each)`);
    return e.meanReward;
  };

  // The policy: base + adapter (LoRA) or a model folder (full).
  let policyModel = cfg.model, policyAdapter = cfg.adapter;
  const loadPolicy = () => loadModel(policyModel, { device: cfg.device, adapter: policyAdapter ?? undefined });
  let initialReward: number | null = null, finalReward: number | null = null, done = 0;
  const roundStats: RsRoundSummary[] = [];
  const best = new Map<number, Kept>();
  try {
    for (let round = 1; round <= cfg.rounds && !stopper.requested; round++) {
      const tr = performance.now();
      const dir = path.join(cfg.out, `round-${round}`);
      // 1-3: sample and score.
      const policy = await loadPolicy();
      let samples: Sample[], complete: boolean, genS: number;
      try {
        if (round === 1 && held.length) initialReward = await evaluate(policy, 0);
        const tg = performance.now();
        ({ samples, complete } = await samplePolicy(policy, tok, train, sampling(mixSeed(cfg.seed, round), cfg.k)));
        genS = (performance.now() - tg) / 1000;
      } finally {
        policy.dispose();
      }
      if (!complete || stopper.requested) break;
      const ts = performance.now();
      const scored = await scoreAll(reward, rewardInputs(train, samples));
      const scoreS = (performance.now() - ts) / 1000;

      // 4: the best of each prompt's K.
      const roundBest = new Map<number, Kept>();
      samples.forEach((s, i) => {
        const b = roundBest.get(s.prompt);
        if (!b || scored.reward[i] > b.reward) roundBest.set(s.prompt, { prompt: s.prompt, round, reward: scored.reward[i], sample: s });
      });
      const passes = (k: Kept) => cfg.minReward === null || k.reward >= cfg.minReward;
      const keptNow = [...roundBest.values()].filter(passes);
      for (const k of keptNow) {
        const prev = best.get(k.prompt);
        if (!prev || k.reward > prev.reward) best.set(k.prompt, k);
      }
      const rows = (cfg.accumulate ? [...best.values()] : keptNow).sort((a, b) => a.prompt - b.prompt);

      // 5: write the samples and the SFT data.
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(
        path.join(dir, 'samples.jsonl'),
        samples
          .map((s, i) =>
            JSON.stringify({
              source_line: train[s.prompt].line,
              sample: s.index,
              completion: s.text,
              tokens: s.ids.length,
              finish: s.finish,
              reward: scored.reward[i],
              parts: Object.fromEntries(Object.entries(scored.parts).map(([k, v]) => [k, v[i]])),
            }),
          )
          .join('\n') + '\n',
      );
      const sftData = path.join(dir, 'sft.jsonl');
      fs.writeFileSync(sftData, rows.map((k) => JSON.stringify(sftRow(train[k.prompt], k))).join('\n') + (rows.length ? '\n' : ''));
      const bests = [...roundBest.values()].map((k) => k.reward);
      const sm: RsMetrics = {
        phase: 'sample',
        round,
        prompts: train.length,
        samples: samples.length,
        mean_reward: mean(scored.reward),
        mean_best_reward: mean(bests),
        max_reward: Math.max(...scored.reward),
        min_reward: Math.min(...scored.reward),
        kept: keptNow.length,
        sft_rows: rows.length,
        mean_response_tokens: mean(samples.map((s) => s.ids.length)),
        eos_fraction: samples.filter((s) => s.finish === 'eos').length / samples.length,
        samples_per_sec: genS > 0 ? samples.length / genS : 0,
        generate_s: genS,
        score_s: scoreS,
        parts: partMeans(scored.parts),
      };
      emit(sm);
      log(
        `rs round ${round}/${cfg.rounds}: reward mean ${sm.mean_reward.toFixed(4)}, best-of-${cfg.k} mean ${sm.mean_best_reward.toFixed(4)}, max ${sm.max_reward.toFixed(4)}; ` +
          `kept ${sm.kept}/${train.length}; ${sm.mean_response_tokens.toFixed(1)} tokens per response; ${sm.samples_per_sec.toFixed(1)} samples/s`,
      );

      // 6: finetune on the kept pairs.
      let sftSteps = 0, sftInitial: number | null = null, sftFinal: number | null = null;
      if (rows.length === 0) {
        log(`rs round ${round}: no response reached --min-reward ${cfg.minReward}; the policy is unchanged this round`);
      } else {
        const sc = sftRoundConfig(cfg, round, policyModel, cfg.full ? null : policyAdapter, sftData, dir);
        const r = await runSft(sc, {
          handleSigint: false,
          signal: abort.signal,
          log: (l) => log(`rs round ${round}: ${l}`),
          onStep: (m) => emit({ phase: 'sft', round, ...m }),
        });
        sftSteps = r.steps;
        sftInitial = r.initialLoss;
        sftFinal = r.finalLoss;
        if (cfg.full) policyModel = dir;
        else policyAdapter = dir;
      }
      emit({ phase: 'round', round, sft_steps: sftSteps, sft_initial_loss: sftInitial, sft_final_loss: sftFinal, seconds: (performance.now() - tr) / 1000 });
      roundStats.push({
        round,
        meanReward: sm.mean_reward,
        meanBestReward: sm.mean_best_reward,
        maxReward: sm.max_reward,
        kept: sm.kept,
        sftRows: rows.length,
        sftSteps,
        sftFinalLoss: sftFinal,
        samplesPerSec: sm.samples_per_sec,
      });
      if (!stopper.requested) done = round;
    }
    if (!stopper.requested && held.length) {
      const policy = await loadPolicy();
      try {
        finalReward = await evaluate(policy, done);
      } finally {
        policy.dispose();
      }
    }
  } finally {
    fs.closeSync(metricsFd);
    stopper.dispose();
    if (ownReward) reward.dispose();
  }
  const result: RsResult = {
    out: cfg.out,
    rounds: done,
    interrupted: stopper.requested,
    signal: stopper.signal,
    initialReward,
    finalReward,
    trainPrompts: train.length,
    evalPrompts: held.length,
    roundStats,
    policy: { model: policyModel, adapter: cfg.full ? null : policyAdapter },
    metricsFile,
    seconds: (performance.now() - t0) / 1000,
    config: cfg,
  };
  fs.writeFileSync(
    path.join(cfg.out, 'rs_result.json'),
    JSON.stringify({ ...result, config: undefined, policy: { model: path.resolve(policyModel), adapter: result.policy.adapter && path.resolve(result.policy.adapter) } }, null, 2) + '\n',
  );
  return result;
}
