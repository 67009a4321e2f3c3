/**
 * Memory estimate of a stage before anything is allocated: the engine's
 * weights (fp32, or bf16 matrices), LoRA adapters, gradients and optimizer
 * state of what trains, the activations a training forward keeps for the
 * backward pass (or an inference forward's scratch), and the KV cache of
 * generation. Compared with the memory the system can give (available
 * memory, a cgroup limit, or RLHF_MEMORY_LIMIT); a stage that cannot fit is
 * refused with E_RESOURCE naming the estimate, its parts and the limit,
 * before its weights are read. See docs/reliability.md.
 *
 * The figures follow the engine's own buffers (native/model/train.h,
 * transformer.cc): they are estimates, within tens of percent, not a bound.
 */
import * as os from 'node:os';
import { RlhfError } from '../errors';
import type { ModelConfig } from '../model/config';
import { expectedTensors } from '../model/tensors';

export interface MemoryShape {
  /** What trains: nothing (forward / generate only), LoRA adapters, or every weight. Default 'none'. */
  train?: 'none' | 'lora' | 'full';
  /** Rows of the largest forward the stage runs at once. Default 1. */
  batch?: number;
  /** Tokens in the longest of those rows. Default min(context, 512). */
  seq?: number;
  /** LoRA rank and target modules (PEFT names or 'all-linear'), and how many adapters of that size are held. */
  lora?: { r: number; targets?: readonly string[] | 'all-linear'; adapters?: number };
  /** 'adamw' keeps two moments per trainable value, 'sgd' one (momentum) or none. Default 'adamw'. */
  optimizer?: 'adamw' | 'sgd';
  momentum?: number;
  /** Generation: rows decoded together and the KV cache length (prompt + new tokens). */
  generate?: { batch: number; tokens: number };
  /** How frozen matrices are kept. Default 'f32'. */
  weightsDtype?: 'f32' | 'bf16';
  /** Further copies of the base weights held at the same time (a full-training reference, separate reward models). Default 0. */
  extraBases?: number;
}

export interface MemoryEstimate {
  /** Bytes in all. */
  total: number;
  parts: { weights: number; adapters: number; gradients: number; optimizer: number; activations: number; kvCache: number };
}

const F32 = 4;

/** Linear modules per layer and their [in, out], by PEFT name. */
function linearModules(c: ModelConfig): { name: string; in: number; out: number }[] {
  const H = c.hiddenSize, I = c.intermediateSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  if (c.arch === 'gpt2')
    return [
      { name: 'c_attn', in: H, out: 3 * H },
      { name: 'c_proj', in: H, out: H },
      { name: 'c_fc', in: H, out: I },
      { name: 'c_proj', in: I, out: H },
    ];
  if (c.fusedProj)
    return [
      { name: 'qkv_proj', in: H, out: q + 2 * kv },
      { name: 'o_proj', in: q, out: H },
      { name: 'gate_up_proj', in: H, out: 2 * I },
      { name: 'down_proj', in: I, out: H },
    ];
  return [
    { name: 'q_proj', in: H, out: q },
    { name: 'k_proj', in: H, out: kv },
    { name: 'v_proj', in: H, out: kv },
    { name: 'o_proj', in: q, out: H },
    { name: 'gate_proj', in: H, out: I },
    { name: 'up_proj', in: H, out: I },
    { name: 'down_proj', in: I, out: H },
  ];
}

/** Parameters of one LoRA adapter of rank r on `targets` (plus a score head row). */
export function loraParameters(c: ModelConfig, r: number, targets: readonly string[] | 'all-linear' = 'all-linear'): number {
  const mods = linearModules(c).filter((m) => targets === 'all-linear' || targets.includes(m.name));
  return c.numLayers * mods.reduce((s, m) => s + r * (m.in + m.out), 0) + c.hiddenSize;
}

/** Floats a training forward keeps per token (every layer's saved activations, the final norm, the LM head's statistics). */
function trainActsPerToken(c: ModelConfig, loraR: number): number {
  const H = c.hiddenSize, I = c.intermediateSize;
  const qkv = (c.numHeads + 2 * c.numKvHeads) * c.headDim, q = c.numHeads * c.headDim;
  const mlp = c.arch === 'gpt2' ? I : 2 * I;
  // LayerActs: x1, xn1, stats (2), qkv, att, lse (heads), x2, xn2, stats (2), mlp, act; LoRA inputs u per module;
  // with q/k norm (Qwen3) the q and k heads before it and one rstd per head.
  const qkNorm = c.qkNorm ? (c.numHeads + c.numKvHeads) * (c.headDim + 1) : 0;
  // Gemma: the two block outputs before their post norms, and their rstd.
  const sandwich = c.gemma ? 2 * H + 2 : 0;
  const perLayer = 4 * H + 4 + qkv + q + c.numHeads + mlp + I + loraR * linearModules(c).length + qkNorm + sandwich;
  return c.numLayers * perLayer + 2 * H + 8;
}

/** Floats of scratch per token for one forward (the engine's layer buffers) and for the backward's gradient buffers. */
function scratchPerToken(c: ModelConfig): number {
  const H = c.hiddenSize, I = c.intermediateSize;
  const qkv = (c.numHeads + 2 * c.numKvHeads) * c.headDim, q = c.numHeads * c.headDim;
  const mlp = c.arch === 'gpt2' ? I : 2 * I;
  // q/k norm (Qwen3): the gathered heads in and out, forward and backward.
  const qkNorm = c.qkNorm ? 2 * (c.numHeads + c.numKvHeads) * c.headDim : 0;
  return 3 * H + qkv + q + mlp + I + qkNorm;
}

/** The estimate for `cfg` running `shape` (see MemoryShape). */
export function estimateMemory(cfg: ModelConfig, shape: MemoryShape = {}): MemoryEstimate {
  const train = shape.train ?? 'none';
  const batch = Math.max(1, shape.batch ?? 1);
  const seq = Math.max(1, shape.seq ?? Math.min(cfg.maxSequenceLength, 512));
  const tensors = expectedTensors(cfg);
  let weights = 0;
  let params = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    params += n;
    weights += n * (shape.weightsDtype === 'bf16' && (t.kind === 'matrix' || t.kind === 'head') ? 2 : F32);
  }
  weights *= 1 + Math.max(0, shape.extraBases ?? 0);
  const moments = (shape.optimizer ?? 'adamw') === 'adamw' ? 2 : (shape.momentum ?? 0) > 0 ? 1 : 0;
  let adapters = 0, gradients = 0, optimizer = 0, loraR = 0;
  if (shape.lora) {
    const n = loraParameters(cfg, shape.lora.r, shape.lora.targets) * Math.max(1, shape.lora.adapters ?? 1);
    adapters = n * F32;
    loraR = shape.lora.r;
    if (train === 'lora') {
      gradients = n * F32;
      optimizer = moments * n * F32;
    }
  }
  if (train === 'full') {
    gradients = params * F32;
    optimizer = moments * params * F32;
  }
  const tokens = batch * seq;
  const perToken = train === 'none' ? scratchPerToken(cfg) : trainActsPerToken(cfg, loraR) + 2 * scratchPerToken(cfg);
  // Attention scores of one block of queries per thread, and one chunk of the LM head's logits.
  const fixed = os.availableParallelism() * 64 * seq * F32 + 64 * cfg.vocabSize * F32;
  const activations = tokens * perToken * F32 + fixed;
  const g = shape.generate;
  const kvCache = g ? 2 * cfg.numLayers * g.batch * g.tokens * cfg.numKvHeads * cfg.headDim * F32 + g.batch * scratchPerToken(cfg) * F32 : 0;
  const parts = { weights, adapters, gradients, optimizer, activations, kvCache };
  return { total: Object.values(parts).reduce((a, b) => a + b, 0), parts };
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** '16G', '512M', '1.5GiB', '1000000' -> bytes; NaN when unreadable. */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return NaN;
  return Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()]);
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

export interface MemoryLimit {
  /** Bytes the stage may use; Infinity when the check is off. */
  bytes: number;
  /** Where the figure comes from, for messages. */
  source: string;
}

/**
 * The memory a stage may count on: RLHF_MEMORY_LIMIT when set ('16G', bytes,
 * or 'off'), else the memory the system reports available (os.freemem(),
 * MemAvailable on Linux), capped by a cgroup limit when there is one.
 */
export function memoryLimit(): MemoryLimit {
  const env = process.env.RLHF_MEMORY_LIMIT?.trim();
  if (env) {
    if (/^(off|none|0)$/i.test(env)) return { bytes: Infinity, source: 'RLHF_MEMORY_LIMIT=off' };
    const b = parseBytes(env);
    if (!(b > 0)) throw new RlhfError('E_ARGUMENT', `RLHF_MEMORY_LIMIT=${env}: not a size (give bytes, or a number with K, M, G or T, or 'off')`, { where: 'RLHF_MEMORY_LIMIT' });
    return { bytes: b, source: `RLHF_MEMORY_LIMIT=${env}` };
  }
  const free = os.freemem();
  const constrained = typeof process.constrainedMemory === 'function' ? (process.constrainedMemory() ?? 0) : 0;
  // A cgroup limit larger than the machine reads as "none".
  if (constrained > 0 && constrained < os.totalmem()) {
    const left = Math.max(0, constrained - process.memoryUsage.rss());
    if (left < free) return { bytes: left, source: `the cgroup memory limit (${formatBytes(constrained)}) less this process's ${formatBytes(process.memoryUsage.rss())}` };
  }
  return { bytes: free, source: `available system memory (of ${formatBytes(os.totalmem())})` };
}

function describe(e: MemoryEstimate): string {
  const names: Record<keyof MemoryEstimate['parts'], string> = {
    weights: 'weights',
    adapters: 'adapters',
    gradients: 'gradients',
    optimizer: 'optimizer state',
    activations: 'activations',
    kvCache: 'KV cache',
  };
  return (Object.keys(names) as (keyof MemoryEstimate['parts'])[])
    .filter((k) => e.parts[k] > 0)
    .map((k) => `${names[k]} ${formatBytes(e.parts[k])}`)
    .join(', ');
}

/**
 * Throws E_RESOURCE when the estimate for `shape` does not fit the limit.
 * `what` names the work (e.g. "sft on models/llama-7b"); `hint` says what to
 * change. Returns the estimate and the limit otherwise.
 */
export function checkMemory(cfg: ModelConfig, shape: MemoryShape, what: string, hint?: string): { estimate: MemoryEstimate; limit: MemoryLimit } {
  const estimate = estimateMemory(cfg, shape);
  const limit = memoryLimit();
  if (estimate.total > limit.bytes) {
    const advice =
      hint ??
      (shape.train === 'full'
        ? 'train a LoRA adapter instead of every weight, or use a smaller batch, --max-len or model'
        : 'use a smaller batch, --max-len or model' + (shape.weightsDtype !== 'bf16' ? ', or keep the weights in bf16' : ''));
    throw new RlhfError(
      'E_RESOURCE',
      `${what} needs about ${formatBytes(estimate.total)} of memory (${describe(estimate)}) but the limit is ${formatBytes(limit.bytes)} (${limit.source}); ` +
        `${advice}; RLHF_MEMORY_LIMIT overrides the limit ('off' disables the check)`,
    );
  }
  return { estimate, limit };
}
