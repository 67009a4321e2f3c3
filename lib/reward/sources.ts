/**
 * Reward sources: what scores a (prompt, response) pair for PPO and
 * rejection sampling. Two kinds:
 *
 * - `functionReward(fn)`: any JS function of the batch (a programmatic
 *   labeler, a rule, a call to another service).
 * - `rewardModels({helpfulness, safety})`: one or two reward models in
 *   Hugging Face `*ForSequenceClassification` layout (`score.weight`,
 *   `num_labels` 1), or PEFT LoRA adapters with their own score head on a
 *   base model (SEQ_CLS, what the `rm` stage saves by default). A sequence's score is the score head's value at the last
 *   real token of prompt + response (the response's EOS included when it
 *   ended with one), read from the policy's own token ids; two models are
 *   combined as in Llama 2 (Touvron et al. 2023, section 3.2.3, PPO paragraph).
 *
 * The combination, the logit transform and whitening are the pure functions
 * `combineRewards` and `whiten` below; docs/rewards.md states what each does
 * and why.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { loadModel, type Model } from '../engine/model';
import { openModelFolder } from '../model/folder';
import { ADAPTER_HEAD_TENSOR, adapterHead, isAdapterDir, readAdapterConfig } from '../model/peft';
import { openSafetensors } from '../safetensors';
import type { ModelConfig } from '../model/config';
import { loadTokenizer } from '../tokenizer/tokenizer';
import type { Device } from '../info';
import type { PromptIds } from '../data/prompts';

export interface RewardInput {
  prompt: string;
  promptIds: number[];
  response: string;
  /** The generated ids, EOS included when generation ended with it. */
  responseIds: number[];
  /** The prompt is marked safe (true) or unsafe (false), when the data says. */
  safe?: boolean;
  /** The prompt's whole JSONL object (reference answers, tests), when it came from a prompt file. */
  row?: Record<string, unknown>;
  /** The prompt's file and 1-based line there, for messages that name the row. */
  file?: string;
  line?: number;
}

export interface RewardScores {
  /** The reward of each input. */
  reward: Float64Array;
  /** The raw score of each named part (e.g. helpfulness, safety), per input. */
  parts: Record<string, Float64Array>;
}

export interface RewardSource {
  /** Names of the parts, e.g. ['helpfulness', 'safety']. */
  names: string[];
  score(batch: RewardInput[]): Promise<RewardScores>;
  /** Longest prompt + response (tokens) the source can score, when it has a limit. */
  maxTokens?: number;
  dispose(): void;
}

/** The reward input of a response to a loaded prompt: its text and ids, and the row it came from (safe, row, file, line). */
export function promptRewardInput(p: PromptIds, response: string, responseIds: number[]): RewardInput {
  const x: RewardInput = { prompt: p.text, promptIds: p.ids, response, responseIds };
  if (p.safe !== undefined) x.safe = p.safe;
  if (p.row !== undefined) x.row = p.row;
  if (p.file !== undefined) x.file = p.file;
  x.line = p.line;
  return x;
}

/** A reward computed by a JS function: one finite number per input. */
export function functionReward(fn: (batch: RewardInput[]) => number[] | Promise<number[]>, name = 'reward'): RewardSource {
  return {
    names: [name],
    async score(batch) {
      const out = await fn(batch);
      if (!Array.isArray(out) && !ArrayBuffer.isView(out))
        throw new RlhfError('E_ARGUMENT', `reward function "${name}" must return an array of numbers, got ${typeof out}`);
      const arr = Array.from(out as ArrayLike<number>);
      if (arr.length !== batch.length) throw new RlhfError('E_ARGUMENT', `reward function "${name}" returned ${arr.length} values for ${batch.length} inputs`);
      const bad = arr.findIndex((x) => typeof x !== 'number' || !Number.isFinite(x));
      if (bad >= 0) throw new RlhfError('E_ARGUMENT', `reward function "${name}" returned ${String(arr[bad])} for input ${bad} (rewards must be finite numbers)`);
      const reward = Float64Array.from(arr);
      return { reward, parts: { [name]: Float64Array.from(arr) } };
    },
    dispose() {},
  };
}

// ------------------------------------------------------------------ the Llama 2 combination

export const LLAMA2_SAFETY_THRESHOLD = 0.15;

export const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

export interface CombineOptions {
  /**
   * 'llama2': the safety score where the prompt is marked unsafe or the
   * safety score (sigmoid scale) is below `safetyThreshold`, else the
   * helpfulness score. 'helpfulness': the helpfulness score alone.
   */
  combine: 'llama2' | 'helpfulness';
  /** On the sigmoid scale. Default 0.15 (Llama 2). */
  safetyThreshold?: number;
  /**
   * true (default): the reward is logit(g) of the chosen sigmoid-scale score
   * g = sigmoid(raw), which is the raw score itself; false: g, in (0, 1).
   */
  logitTransform?: boolean;
  /** Whiten the rewards over the batch (see `whiten`). Default false. */
  whiten?: boolean;
}

/**
 * Whitening as TRL's `whiten(values, shift_mean=True)`: (x - mean) / sqrt(var
 * + 1e-8) with the unbiased (n - 1) variance, as torch.var computes it. A
 * batch of one has no spread: it becomes 0.
 */
export function whiten(x: Float64Array): Float64Array {
  const n = x.length;
  const out = new Float64Array(n);
  if (n === 0) return out;
  let mean = 0;
  for (const v of x) mean += v;
  mean /= n;
  if (n < 2) return out;
  let ss = 0;
  for (const v of x) ss += (v - mean) * (v - mean);
  const scale = 1 / Math.sqrt(ss / (n - 1) + 1e-8);
  for (let i = 0; i < n; i++) out[i] = (x[i] - mean) * scale;
  return out;
}

/**
 * Combines raw (linear) reward-model scores into rewards, following Llama 2
 * section 3.2.3 (the PPO paragraph; the reward models are section 3.2.2):
 *
 *   g_h = sigmoid(r_h), g_s = sigmoid(r_s)                    (sigmoid scale)
 *   g_c = g_s  if the prompt is marked unsafe or g_s < threshold, else g_h
 *   R   = whiten(logit(g_c))
 *
 * logit(sigmoid(r)) is r, so the logit transform returns the chosen model's
 * raw score exactly (a float round trip through sigmoid would saturate to 0
 * or 1 for |r| > ~37 and give infinities). `safe[i] === false` marks an
 * unsafe prompt; true or undefined leaves the decision to the threshold.
 * Returns the rewards and, per input, whether the safety score was chosen.
 */
export function combineRewards(
  helpfulness: Float64Array,
  safety: Float64Array | null,
  safe: readonly (boolean | undefined)[],
  opts: CombineOptions,
): { reward: Float64Array; usedSafety: Uint8Array } {
  const n = helpfulness.length;
  const threshold = opts.safetyThreshold ?? LLAMA2_SAFETY_THRESHOLD;
  const logit = opts.logitTransform ?? true;
  if (opts.combine === 'llama2' && !safety) throw new RlhfError('E_ARGUMENT', "combine 'llama2' needs a safety reward model (--safety-model)");
  if (safety && safety.length !== n) throw new RlhfError('E_ARGUMENT', `combineRewards: ${n} helpfulness scores but ${safety.length} safety scores`);
  const reward = new Float64Array(n);
  const usedSafety = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let raw = helpfulness[i];
    if (opts.combine === 'llama2') {
      const rs = safety![i];
      if (safe[i] === false || sigmoid(rs) < threshold) {
        raw = rs;
        usedSafety[i] = 1;
      }
    }
    reward[i] = logit ? raw : sigmoid(raw);
  }
  return { reward: opts.whiten ? whiten(reward) : reward, usedSafety };
}

// ------------------------------------------------------------------ reward models

/**
 * The reward model scores the policy's token ids, so both must share one
 * vocabulary: the reward model's embedding must cover every id the policy
 * can emit, and when both folders have a tokenizer.json, every id must name
 * the same token. E_MODEL otherwise.
 */
export function checkSameVocab(policyDir: string, rewardDir: string, what = 'reward model'): void {
  const cfgOf = (dir: string) => {
    const f = openModelFolder(dir);
    const out = { config: f.config, hasTokenizer: f.tokenizer.json !== null };
    f.close();
    return out;
  };
  const p = cfgOf(policyDir), r = cfgOf(rewardDir);
  if (r.config.vocabSize < p.config.vocabSize)
    throw new RlhfError(
      'E_MODEL',
      `${rewardDir}: the ${what} has ${r.config.vocabSize} embedding rows but the policy (${policyDir}) has ${p.config.vocabSize}: it cannot score every token the policy can emit; the ${what} must share the policy's vocabulary (it scores the policy's token ids)`,
      { where: rewardDir },
    );
  if (!p.hasTokenizer || !r.hasTokenizer) return;
  const tp = loadTokenizer(policyDir), tr = loadTokenizer(rewardDir);
  const n = Math.max(tp.vocabSize, tr.vocabSize);
  for (let id = 0; id < n; id++) {
    const a = tr.idToToken(id), b = tp.idToToken(id);
    if (a !== b)
      throw new RlhfError(
        'E_MODEL',
        `${rewardDir}: the ${what}'s tokenizer differs from the policy's (${policyDir}): token id ${id} is ${a === undefined ? 'unused' : JSON.stringify(a)} there and ${b === undefined ? 'unused' : JSON.stringify(b)} in the policy; the ${what} must share the policy's vocabulary (it scores the policy's token ids)`,
        { where: rewardDir },
      );
  }
}

export interface RewardModelsOptions {
  /** Helpfulness reward model: a *ForSequenceClassification folder, or a LoRA adapter folder with a score head. Required. */
  helpfulness: string;
  /** Safety reward model folder; null/absent: helpfulness only. */
  safety?: string | null;
  /** Default 'llama2' with a safety model, else 'helpfulness'. */
  combine?: 'llama2' | 'helpfulness';
  /** Sigmoid-scale threshold under which the safety score is used. Default 0.15 (Llama 2). */
  safetyThreshold?: number;
  /** Reward = logit of the chosen sigmoid-scale score (= its raw score). Default true (Llama 2). */
  logitTransform?: boolean;
  /** Whiten the rewards over each scored batch. Default false (see docs/rewards.md). */
  whiten?: boolean;
  /** Sequences per reward-model forward. Default 8. */
  batchSize?: number;
  device?: Device;
  /** The policy model folder: when given, each reward model's vocabulary is checked against it. */
  policy?: string;
}

/** Score-head value at each sequence's last token, `batchSize` sequences per forward. */
export async function lastTokenValues(model: Model, seqs: readonly number[][], batchSize: number): Promise<Float64Array> {
  const out = new Float64Array(seqs.length);
  for (let i = 0; i < seqs.length; i += batchSize) {
    const rows = seqs.slice(i, i + batchSize);
    const f = await model.forward({ inputIds: rows as number[][], values: true, logp: false });
    rows.forEach((ids, b) => (out[i + b] = f.values![b][ids.length - 1]));
  }
  return out;
}

function checkRewardModel(cfg: ModelConfig, dir: string, flag: string): void {
  if (cfg.head !== 'score')
    throw new RlhfError(
      'E_MODEL',
      `${flag} ${dir}: a reward model must be a *ForSequenceClassification folder with a score head, or a PEFT adapter with one (this is a ${cfg.architecture})`,
      { where: dir },
    );
  if (cfg.numLabels !== 1)
    throw new RlhfError('E_MODEL', `${flag} ${dir}: a reward model has num_labels 1 (one scalar score); this one has ${cfg.numLabels}`, { where: dir });
}

/**
 * Where a reward model's weights are: a *ForSequenceClassification folder
 * itself, or a PEFT LoRA adapter with its own score head (SEQ_CLS, as the
 * `rm` stage saves by default) on the base named by its adapter_config.json.
 */
export function rewardModelWeights(dir: string, flag = '--reward-model'): { base: string; adapter: string | null } {
  const isAdapter = isAdapterDir(dir);
  if (!isAdapter) {
    const f = openModelFolder(dir);
    const cfg = f.config;
    f.close();
    checkRewardModel(cfg, dir, flag);
    return { base: dir, adapter: null };
  }
  const ac = readAdapterConfig(dir);
  const head = adapterHead(dir);
  if (!head)
    throw new RlhfError('E_MODEL', `${flag} ${dir}: this LoRA adapter has no score head (${ADAPTER_HEAD_TENSOR}), so it is not a reward model`, { where: dir });
  const st = openSafetensors(head[0]);
  const shape = st.header.tensors.find((x) => x.name === head[1])?.shape ?? [];
  st.close();
  if (shape[0] !== 1) throw new RlhfError('E_MODEL', `${flag} ${dir}: a reward model has one score (a [1, hidden] head); this adapter's head is [${shape.join(', ')}]`, { where: dir });
  const base = ac.baseModel;
  if (!base || !fs.existsSync(path.join(base, 'config.json')))
    throw new RlhfError(
      'E_MODEL',
      `${flag} ${dir}: adapter_config.json names the base model ${JSON.stringify(base)}, which is not a model folder here (base_model_name_or_path must be the base model's folder)`,
      { where: dir },
    );
  return { base, adapter: dir };
}

/** One or two reward models as a RewardSource (Llama 2's combination with two). */
export async function rewardModels(opts: RewardModelsOptions): Promise<RewardSource> {
  const arg = (ok: boolean, msg: string) => {
    if (!ok) throw new RlhfError('E_ARGUMENT', msg);
  };
  arg(typeof opts.helpfulness === 'string' && opts.helpfulness.length > 0, '--reward-model is required');
  const safetyDir = opts.safety ?? null;
  const combine = opts.combine ?? (safetyDir ? 'llama2' : 'helpfulness');
  arg(combine === 'llama2' || combine === 'helpfulness', `--combine must be llama2 or helpfulness, got ${combine}`);
  arg(combine !== 'llama2' || safetyDir !== null, "--combine llama2 needs a safety reward model (--safety-model)");
  const threshold = opts.safetyThreshold ?? LLAMA2_SAFETY_THRESHOLD;
  arg(Number.isFinite(threshold) && threshold > 0 && threshold < 1, `--safety-threshold must be in (0, 1) (a sigmoid-scale score), got ${threshold}`);
  const batchSize = opts.batchSize ?? 8;
  arg(Number.isInteger(batchSize) && batchSize > 0, `--reward-batch-size must be a positive integer, got ${batchSize}`);

  const dirs: [string, string, string][] = [['helpfulness', opts.helpfulness, '--reward-model']];
  if (safetyDir) dirs.push(['safety', safetyDir, '--safety-model']);
  const weights = dirs.map(([, dir, flag]) => {
    const w = rewardModelWeights(dir, flag);
    if (opts.policy) checkSameVocab(opts.policy, w.base, `${flag.slice(2).replace('-model', '')} model`);
    return w;
  });
  const models: Model[] = [];
  try {
    for (const w of weights) models.push(await loadModel(w.base, { device: opts.device ?? 'auto', ...(w.adapter ? { adapter: w.adapter, head: 'score' as const } : {}) }));
  } catch (e) {
    models.forEach((m) => m.dispose());
    throw e;
  }
  const names = dirs.map(([n]) => n);
  const maxTokens = Math.min(...models.map((m) => m.config.maxSequenceLength));
  const vocab = Math.min(...models.map((m) => m.config.vocabSize));
  let disposed = false;
  return {
    names,
    maxTokens,
    async score(batch) {
      if (disposed) throw new RlhfError('E_ARGUMENT', 'the reward models were disposed');
      const seqs = batch.map((x, i) => {
        const ids = [...x.promptIds, ...x.responseIds];
        if (ids.length === 0) throw new RlhfError('E_ARGUMENT', `reward input ${i}: the prompt and the response are both empty`);
        if (ids.length > maxTokens) throw new RlhfError('E_ARGUMENT', `reward input ${i}: ${ids.length} tokens is longer than the reward model's context (${maxTokens})`);
        const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
        if (bad !== undefined) throw new RlhfError('E_ARGUMENT', `reward input ${i}: token id ${bad} is outside the reward model's vocabulary (size ${vocab})`);
        return ids;
      });
      const parts: Record<string, Float64Array> = {};
      for (let m = 0; m < models.length; m++) parts[names[m]] = batch.length ? await lastTokenValues(models[m], seqs, batchSize) : new Float64Array(0);
      const { reward } = combineRewards(
        parts.helpfulness,
        parts.safety ?? null,
        batch.map((x) => x.safe),
        { combine, safetyThreshold: threshold, logitTransform: opts.logitTransform ?? true, whiten: opts.whiten ?? false },
      );
      return { reward, parts };
    },
    dispose() {
      disposed = true;
      models.forEach((m) => m.dispose());
    },
  };
}
