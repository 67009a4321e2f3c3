/**
 * Hugging Face `config.json` -> one normalised ModelConfig, and back.
 *
 * Supported: Llama family (LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, Gemma3ForCausalLM;
 * SmolLM and TinyLlama are llama) and GPT-2
 * (GPT2LMHeadModel), plus their *ForSequenceClassification twins (reward
 * models, `score` head). Everything else is rejected with E_CONFIG naming the
 * file, what was seen and what is supported, so a user learns at load time,
 * not from a shape error deep in the engine.
 *
 * Optional keys take transformers' own defaults (so a config transformers
 * accepts means the same thing here); the keys that fix tensor shapes are
 * required.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { fail, Reader, type Json } from './config-reader';
import { parseRope, ropeToHf } from './rope';

export type ModelArch = 'llama' | 'qwen2' | 'qwen3' | 'mistral' | 'phi3' | 'gemma3' | 'gpt2';
/** `lm`: causal LM head (tied or `lm_head.weight`); `score`: `score.weight [numLabels, H]` (reward model). */
export type ModelHead = 'lm' | 'score';
export type TorchDtype = 'float32' | 'float16' | 'bfloat16';

export type { RopeConfig, RopeScaling } from './rope';
import type { RopeConfig } from './rope';

/** Gemma 3 text: what its block does beyond the Llama family's. */
export interface GemmaParts {
  /** Embeddings are multiplied by sqrt(hidden_size), rounded as the checkpoint's dtype (transformers' embed_scale). */
  embedScale: number;
  /** Attention scores scale query_pre_attn_scalar^-1/2. */
  queryPreAttnScalar: number;
  /** Per layer: `sliding_attention` layers use the local RoPE base and the window. */
  layerTypes: ('sliding_attention' | 'full_attention')[];
  /** RoPE base of the sliding-window layers (rope_local_base_freq). */
  localRopeTheta: number;
}

export interface ModelConfig {
  arch: ModelArch;
  /** The transformers class, e.g. `LlamaForCausalLM`. */
  architecture: string;
  head: ModelHead;
  /** Outputs of the score head (1 for reward models); null for `lm`. */
  numLabels: number | null;
  vocabSize: number;
  hiddenSize: number;
  /** MLP inner size (GPT-2: n_inner, default 4 * hidden). */
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** Grouped-query attention: K/V heads (= numHeads without GQA). */
  numKvHeads: number;
  headDim: number;
  /** Position-embedding table (GPT-2) or RoPE's trained context. */
  maxPositions: number;
  /** Longest sequence the engine runs: min(maxPositions, slidingWindow). */
  maxSequenceLength: number;
  normEps: number;
  /** null for GPT-2 (learned absolute positions). */
  rope: RopeConfig | null;
  /** Bias on q/k/v projections (Qwen2 always; Llama `attention_bias`; GPT-2 c_attn). */
  qkvBias: boolean;
  /** Bias on the attention output projection (Llama `attention_bias`; GPT-2 c_proj). */
  oBias: boolean;
  mlpBias: boolean;
  /** Leading dims of each head that RoPE rotates: headDim, or less with Phi-3's `partial_rotary_factor`. */
  rotaryDim: number;
  /** Phi-3: q|k|v saved as one `qkv_proj` and gate|up as one `gate_up_proj` (tensors and LoRA modules). */
  fusedProj: boolean;
  /**
   * Gemma 3 (else null): (1 + w) RMSNorm everywhere, a norm on each block
   * output before the residual add, GeGLU (hiddenAct gelu_pytorch_tanh), q/k
   * norm, and the parts below; `rope` is the global layers' RoPE.
   */
  gemma: GemmaParts | null;
  /** Qwen3: RMSNorm over each q and k head (`q_norm` / `k_norm`, weights [headDim]) before RoPE. */
  qkNorm: boolean;
  tieWordEmbeddings: boolean;
  /** `silu` (Llama family) or `gelu_new` / `gelu_pytorch_tanh` (GPT-2; the same tanh approximation). */
  hiddenAct: string;
  /** Mistral / Qwen2 sliding-window attention span when it is active and shorter than maxPositions, else null. */
  slidingWindow: number | null;
  torchDtype: TorchDtype | null;
  initializerRange: number;
  bosTokenId: number | null;
  /** `eos_token_id` may be one id or a list; always a list here. */
  eosTokenIds: number[];
  padTokenId: number | null;
  /** Things accepted but worth telling the user (e.g. sliding window caps the sequence length). */
  warnings: string[];
}

interface ArchEntry {
  arch: ModelArch;
  head: ModelHead;
}

const ARCHITECTURES: Record<string, ArchEntry> = {
  LlamaForCausalLM: { arch: 'llama', head: 'lm' },
  MistralForCausalLM: { arch: 'mistral', head: 'lm' },
  Qwen2ForCausalLM: { arch: 'qwen2', head: 'lm' },
  Qwen3ForCausalLM: { arch: 'qwen3', head: 'lm' },
  Phi3ForCausalLM: { arch: 'phi3', head: 'lm' },
  Gemma3ForCausalLM: { arch: 'gemma3', head: 'lm' },
  GPT2LMHeadModel: { arch: 'gpt2', head: 'lm' },
  LlamaForSequenceClassification: { arch: 'llama', head: 'score' },
  MistralForSequenceClassification: { arch: 'mistral', head: 'score' },
  Qwen2ForSequenceClassification: { arch: 'qwen2', head: 'score' },
  Qwen3ForSequenceClassification: { arch: 'qwen3', head: 'score' },
  Phi3ForSequenceClassification: { arch: 'phi3', head: 'score' },
  GPT2ForSequenceClassification: { arch: 'gpt2', head: 'score' },
};

const MODEL_TYPES: Record<string, ModelArch> = { llama: 'llama', mistral: 'mistral', qwen2: 'qwen2', qwen3: 'qwen3', phi3: 'phi3', gemma3_text: 'gemma3', gpt2: 'gpt2' };
/** config.json's model_type of each arch. */
const MODEL_TYPE_OF: Record<ModelArch, string> = { llama: 'llama', mistral: 'mistral', qwen2: 'qwen2', qwen3: 'qwen3', phi3: 'phi3', gemma3: 'gemma3_text', gpt2: 'gpt2' };

/** Architectures asked for but not implemented yet, and what they lack. */
const NOT_YET: Record<string, string> = {
  BloomForCausalLM: ': Bloom needs ALiBi attention, its per-head interleaved query_key_value and the embedding LayerNorm, which the engine does not have yet',
};

export const SUPPORTED_ARCHITECTURES: readonly string[] = Object.keys(ARCHITECTURES);

/** The class name transformers uses for an (arch, head) pair. */
export function architectureName(arch: ModelArch, head: ModelHead): string {
  for (const [name, e] of Object.entries(ARCHITECTURES)) if (e.arch === arch && e.head === head) return name;
  throw new RlhfError('E_ARGUMENT', `no architecture for arch ${arch} with head ${head}`);
}

function identify(r: Reader): { architecture: string; entry: ArchEntry } {
  const supported = `supported: ${SUPPORTED_ARCHITECTURES.join(', ')} (model_type ${Object.keys(MODEL_TYPES).join(', ')})`;
  const archs = r.obj.architectures;
  const modelType = r.obj.model_type;
  if (modelType !== undefined && typeof modelType !== 'string') fail(r.file, `"model_type" must be a string`, 'model_type');
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== 'string')
      fail(r.file, `"architectures" must be a non-empty list of class names, got ${JSON.stringify(archs)}`, 'architectures');
    const name = archs[0] as string;
    const entry = ARCHITECTURES[name];
    if (!entry) fail(r.file, `unsupported architecture "${name}" (architectures)${NOT_YET[name] ?? ''}; ${supported}`, 'architectures');
    // transformers builds the class from model_type when auto-loading, so the two must agree.
    if (modelType !== undefined && MODEL_TYPES[modelType] !== entry.arch)
      fail(r.file, `contradictory keys "architectures" (${name}) and "model_type" (${modelType})`, 'model_type');
    return { architecture: name, entry };
  }
  if (modelType === undefined) fail(r.file, `required key "architectures" (or "model_type") is missing; ${supported}`, 'architectures');
  const arch = MODEL_TYPES[modelType];
  if (!arch) fail(r.file, `unsupported model_type "${modelType}"; ${supported}`, 'model_type');
  const entry: ArchEntry = { arch, head: 'lm' };
  return { architecture: architectureName(arch, 'lm'), entry };
}

function parseDtype(r: Reader): TorchDtype | null {
  // transformers v5 renamed torch_dtype to dtype.
  const key = r.has('torch_dtype') ? 'torch_dtype' : 'dtype';
  const v = r.alias('torch_dtype', 'dtype', (k) => r.str(k, ''));
  if (v === '' || v === 'auto') return null;
  if (v === 'float32' || v === 'float16' || v === 'bfloat16') return v;
  return fail(r.file, `unsupported "${key}" "${v}"; supported: float32, float16, bfloat16`, key);
}

function parseNumLabels(r: Reader, head: ModelHead): number | null {
  if (head !== 'score') return null;
  const id2label = r.obj.id2label;
  const fromMap = id2label && typeof id2label === 'object' ? Object.keys(id2label).length : undefined;
  const explicit = r.has('num_labels') ? r.posInt('num_labels') : undefined;
  if (explicit !== undefined && fromMap !== undefined && explicit !== fromMap)
    fail(r.file, `contradictory keys "num_labels" (${explicit}) and "id2label" (${fromMap} labels)`, 'num_labels');
  // transformers' PretrainedConfig default is 2 labels.
  return explicit ?? fromMap ?? 2;
}

/** Normalises a parsed config.json. `file` is only used in messages. */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail(file, 'config must be a JSON object');
  const r = new Reader(json as Json, file);
  const { architecture, entry } = identify(r);
  if (r.has('quantization_config')) fail(file, 'quantized checkpoints ("quantization_config") are not supported', 'quantization_config');
  const common = {
    architecture,
    head: entry.head,
    numLabels: parseNumLabels(r, entry.head),
    torchDtype: parseDtype(r),
    initializerRange: r.posNum('initializer_range', 0.02),
    bosTokenId: r.tokenId('bos_token_id'),
    eosTokenIds: r.tokenIds('eos_token_id'),
    padTokenId: r.tokenId('pad_token_id'),
  };
  const cfg = entry.arch === 'gpt2' ? parseGpt2(r, common) : parseLlama(r, entry.arch, common);
  for (const [k, id] of [['bos_token_id', cfg.bosTokenId], ['pad_token_id', cfg.padTokenId], ...cfg.eosTokenIds.map((e) => ['eos_token_id', e])] as [string, number | null][])
    if (id !== null && id >= cfg.vocabSize) fail(file, `"${k}" ${id} is outside the vocabulary (vocab_size ${cfg.vocabSize})`, k);
  return cfg;
}

type Common = Pick<
  ModelConfig,
  'architecture' | 'head' | 'numLabels' | 'torchDtype' | 'initializerRange' | 'bosTokenId' | 'eosTokenIds' | 'padTokenId'
>;

function parseLlama(r: Reader, arch: Exclude<ModelArch, 'gpt2'>, common: Common): ModelConfig {
  const file = r.file;
  const hiddenSize = r.posInt('hidden_size');
  const numHeads = r.posInt('num_attention_heads');
  const numKvHeads = r.posInt('num_key_value_heads', numHeads);
  if (numKvHeads > numHeads)
    fail(file, `contradictory keys: "num_key_value_heads" (${numKvHeads}) > "num_attention_heads" (${numHeads})`, 'num_key_value_heads');
  if (numHeads % numKvHeads !== 0)
    fail(file, `"num_attention_heads" (${numHeads}) must be a multiple of "num_key_value_heads" (${numKvHeads})`, 'num_key_value_heads');
  let headDim: number;
  if (r.has('head_dim')) {
    headDim = r.posInt('head_dim');
    if (headDim % 2 !== 0) fail(file, `"head_dim" (${headDim}) must be even for RoPE`, 'head_dim');
  } else if (arch === 'qwen3' || arch === 'gemma3') {
    headDim = arch === 'qwen3' ? 128 : 256; // the configs' defaults: head_dim does not follow hidden_size
  } else {
    if (hiddenSize % numHeads !== 0)
      fail(file, `"hidden_size" (${hiddenSize}) must be divisible by "num_attention_heads" (${numHeads}) when "head_dim" is absent`, 'num_attention_heads');
    headDim = hiddenSize / numHeads;
    if (headDim % 2 !== 0)
      fail(file, `head_dim = "hidden_size" / "num_attention_heads" = ${headDim} must be even for RoPE`, 'num_attention_heads');
  }
  // transformers' per-class defaults for max_position_embeddings.
  const defaultMaxPos = { llama: 2048, mistral: 4096 * 32, qwen2: 32768, qwen3: 32768, phi3: 4096, gemma3: 131072 }[arch];
  const maxPositions = r.posInt('max_position_embeddings', defaultMaxPos);
  const actKey = arch === 'gemma3' ? 'hidden_activation' : 'hidden_act';
  const hiddenAct = r.str(actKey, arch === 'gemma3' ? 'gelu_pytorch_tanh' : 'silu');
  const acts = arch === 'gemma3' ? ['gelu_pytorch_tanh', 'gelu_new'] : ['silu', 'swish'];
  if (!acts.includes(hiddenAct)) fail(file, `unsupported "${actKey}" "${hiddenAct}" for ${arch}; supported: ${acts.join(', ')}`, actKey);
  // Qwen2: q/k/v always biased, o_proj never; Llama and Qwen3: attention_bias on all four; Mistral: none.
  const attnBias = arch === 'llama' || arch === 'qwen3' || arch === 'gemma3' ? r.bool('attention_bias', false) : false;
  const qkvBias = arch === 'qwen2' ? true : attnBias;
  const warnings: string[] = [];
  let slidingWindow: number | null = null;
  const gemma = arch === 'gemma3' ? parseGemma3(r, hiddenSize, r.posInt('num_hidden_layers'), common.torchDtype) : null;
  const windowActive = gemma ? gemma.layerTypes.includes('sliding_attention') : arch === 'mistral' || arch === 'phi3' ? r.has('sliding_window') : arch === 'qwen2' || arch === 'qwen3' ? r.bool('use_sliding_window', false) : false;
  if (windowActive) {
    const w = r.posInt('sliding_window', arch === 'gemma3' ? 4096 : undefined);
    if (w < maxPositions) {
      slidingWindow = w;
      warnings.push(
        `sliding-window attention (window ${w} < max_position_embeddings ${maxPositions}) is not implemented; sequences are capped at ${w} tokens, where full causal attention is identical to it`,
      );
    }
  }
  // Partial rotary (Phi-3, Phi-4-mini): top level or inside the rope dict, as transformers reads it.
  const ropeDict = [r.obj.rope_parameters, r.obj.rope_scaling].find((d) => d && typeof d === 'object' && !Array.isArray(d)) as Record<string, unknown> | undefined;
  const prfKey = r.has('partial_rotary_factor') ? 'partial_rotary_factor' : undefined;
  const prf = prfKey ? r.posNum(prfKey) : typeof ropeDict?.partial_rotary_factor === 'number' ? ropeDict.partial_rotary_factor : 1;
  if (prf !== 1 && arch !== 'phi3') fail(file, `"partial_rotary_factor" is not supported for ${arch}`, 'partial_rotary_factor');
  const rotaryDim = Math.floor(headDim * prf);
  if (!(prf > 0 && prf <= 1) || rotaryDim < 2 || rotaryDim % 2 !== 0)
    fail(file, `"partial_rotary_factor" ${prf} gives rotary dim ${rotaryDim} of head_dim ${headDim}; it must be even, between 2 and head_dim`, 'partial_rotary_factor');
  const rope = gemma ? parseGemma3Rope(r, maxPositions) : parseRope(r, maxPositions, arch === 'phi3');
  if (rope.scaling.type === 'longrope')
    for (const k of ['shortFactor', 'longFactor'] as const)
      if (rope.scaling[k].length !== rotaryDim / 2)
        fail(file, `longrope "${k === 'shortFactor' ? 'short_factor' : 'long_factor'}" has ${rope.scaling[k].length} entries; rotary dim ${rotaryDim} needs ${rotaryDim / 2}`, 'rope_scaling');
  return {
    arch,
    ...common,
    vocabSize: r.posInt('vocab_size'),
    hiddenSize,
    intermediateSize: r.posInt('intermediate_size'),
    numLayers: r.posInt('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions,
    maxSequenceLength: slidingWindow ?? maxPositions,
    normEps: r.posNum('rms_norm_eps', arch === 'phi3' ? 1e-5 : 1e-6),
    rope,
    rotaryDim,
    fusedProj: arch === 'phi3',
    qkvBias,
    oBias: attnBias,
    mlpBias: arch === 'llama' ? r.bool('mlp_bias', false) : false,
    qkNorm: arch === 'qwen3' || arch === 'gemma3',
    gemma,
    tieWordEmbeddings: r.bool('tie_word_embeddings', arch === 'gemma3'),
    hiddenAct: arch === 'gemma3' ? 'gelu_pytorch_tanh' : 'silu',
    slidingWindow,
    warnings,
  };
}

/** sqrt(x) as a float32, then rounded to bfloat16 / float16 when the checkpoint is in that dtype (nearest even). */
function roundAs(x: number, dtype: TorchDtype | null): number {
  const f = Math.fround(x);
  if (dtype === 'bfloat16') {
    const b = new Uint32Array(new Float32Array([f]).buffer)[0];
    const r = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
    return new Float32Array(new Uint32Array([r >>> 0]).buffer)[0];
  }
  if (dtype === 'float16') {
    const e = Math.floor(Math.log2(f));
    const q = 2 ** (e - 10);
    const m = f / q, lo = Math.floor(m);
    return (m - lo > 0.5 || (m - lo === 0.5 && lo % 2 === 1) ? lo + 1 : lo) * q;
  }
  return f;
}

function parseGemma3(r: Reader, hiddenSize: number, numLayers: number, dtype: TorchDtype | null): GemmaParts {
  const file = r.file;
  for (const k of ['final_logit_softcapping', 'attn_logit_softcapping'])
    if (r.has(k)) fail(file, `"${k}" (soft-capping) is not implemented; only configs with it null are supported`, k);
  if (r.bool('use_bidirectional_attention', false)) fail(file, `"use_bidirectional_attention": true is not supported`, 'use_bidirectional_attention');
  let layerTypes: GemmaParts['layerTypes'];
  const lt = r.obj.layer_types;
  if (lt !== undefined && lt !== null) {
    if (!Array.isArray(lt) || lt.length !== numLayers || lt.some((x) => x !== 'sliding_attention' && x !== 'full_attention'))
      fail(file, `"layer_types" must list "sliding_attention" or "full_attention" for each of the ${numLayers} layers`, 'layer_types');
    layerTypes = lt as GemmaParts['layerTypes'];
  } else {
    const pattern = r.posInt('sliding_window_pattern', 6); // every pattern-th layer is global
    layerTypes = Array.from({ length: numLayers }, (_, i) => ((i + 1) % pattern ? 'sliding_attention' : 'full_attention'));
  }
  const params = r.obj.rope_parameters as Json | undefined;
  const local = params && typeof params === 'object' ? (params.sliding_attention as Json | undefined) : undefined;
  let localRopeTheta = r.posNum('rope_local_base_freq', 10000);
  if (local && typeof local === 'object') {
    const lr = new Reader(local, file, 'rope_parameters.sliding_attention.');
    if (lr.str('rope_type', 'default') !== 'default') fail(file, `only default RoPE is supported for the sliding-window layers`, 'rope_parameters');
    if (lr.has('rope_theta')) localRopeTheta = lr.posNum('rope_theta');
  }
  return { embedScale: roundAs(Math.sqrt(hiddenSize), dtype), queryPreAttnScalar: r.posNum('query_pre_attn_scalar', 256), layerTypes, localRopeTheta };
}

/** Gemma 3's global RoPE: rope_parameters.full_attention (v5) or rope_theta + rope_scaling (v4); base 1e6 by default. */
function parseGemma3Rope(r: Reader, maxPositions: number) {
  const params = r.obj.rope_parameters as Json | undefined;
  const full = params && typeof params === 'object' && 'full_attention' in params ? (params.full_attention as Json) : undefined;
  const obj: Json = full ? { rope_parameters: full } : { rope_theta: r.obj.rope_theta, rope_scaling: r.obj.rope_scaling };
  const rope = parseRope(new Reader(obj, r.file), maxPositions, false);
  const given = full ? (full as Json).rope_theta : r.obj.rope_theta;
  return given === undefined || given === null ? { ...rope, theta: 1_000_000 } : rope;
}

function parseGpt2(r: Reader, common: Common): ModelConfig {
  const file = r.file;
  const hiddenSize = r.alias('n_embd', 'hidden_size', (k) => r.posInt(k));
  const numLayers = r.alias('n_layer', 'num_hidden_layers', (k) => r.posInt(k));
  const numHeads = r.alias('n_head', 'num_attention_heads', (k) => r.posInt(k));
  const maxPositions = r.alias('n_positions', 'max_position_embeddings', (k) => r.posInt(k, 1024));
  if (hiddenSize % numHeads !== 0)
    fail(file, `"n_embd" (${hiddenSize}) must be divisible by "n_head" (${numHeads})`, 'n_head');
  const act = r.str('activation_function', 'gelu_new');
  if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh')
    fail(file, `unsupported "activation_function" "${act}" for gpt2; supported: gelu_new, gelu_pytorch_tanh`, 'activation_function');
  for (const k of ['scale_attn_by_inverse_layer_idx', 'add_cross_attention'])
    if (r.bool(k, false)) fail(file, `"${k}": true is not supported`, k);
  if (!r.bool('scale_attn_weights', true)) fail(file, `"scale_attn_weights": false is not supported`, 'scale_attn_weights');
  return {
    arch: 'gpt2',
    ...common,
    vocabSize: r.posInt('vocab_size'),
    hiddenSize,
    intermediateSize: r.alias('n_inner', 'intermediate_size', (k) => r.posInt(k, 4 * hiddenSize)),
    numLayers,
    numHeads,
    numKvHeads: numHeads,
    headDim: hiddenSize / numHeads,
    maxPositions,
    maxSequenceLength: maxPositions,
    normEps: r.posNum('layer_norm_epsilon', 1e-5),
    rope: null,
    qkvBias: true,
    oBias: true,
    mlpBias: true,
    rotaryDim: hiddenSize / numHeads,
    fusedProj: false,
    qkNorm: false,
    gemma: null,
    tieWordEmbeddings: r.bool('tie_word_embeddings', true),
    hiddenAct: act,
    slidingWindow: null,
    warnings: [],
  };
}

/** Reads and normalises `<dir>/config.json` (or a config file path). */
export function readModelConfig(dirOrFile: string): ModelConfig {
  const file = dirOrFile.endsWith('.json') ? dirOrFile : path.join(dirOrFile, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new RlhfError('E_MODEL', `no config.json: ${file} does not exist (not a Hugging Face model folder?)`, { where: file, cause: e });
    throw new RlhfError('E_IO', `cannot read ${file}: ${(e as Error).message}`, { where: file, cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new RlhfError('E_CONFIG', `${file}: invalid JSON: ${(e as Error).message}`, { where: file, cause: e });
  }
  return parseModelConfig(json, file);
}

/**
 * The standard transformers config.json for a ModelConfig (transformers v4
 * key names, which v5 still reads: `torch_dtype`, `rope_theta` +
 * `rope_scaling`). Dropouts are written as 0: the engine has none, and a
 * model trained without them should not grow them when loaded elsewhere.
 */
export function modelConfigToHf(cfg: ModelConfig): Json {
  const out: Json = { architectures: [cfg.architecture], model_type: MODEL_TYPE_OF[cfg.arch] };
  if (cfg.arch === 'gpt2') {
    Object.assign(out, {
      vocab_size: cfg.vocabSize,
      n_embd: cfg.hiddenSize,
      n_layer: cfg.numLayers,
      n_head: cfg.numHeads,
      n_positions: cfg.maxPositions,
      n_ctx: cfg.maxPositions,
      n_inner: cfg.intermediateSize === 4 * cfg.hiddenSize ? null : cfg.intermediateSize,
      activation_function: cfg.hiddenAct,
      layer_norm_epsilon: cfg.normEps,
      attn_pdrop: 0.0,
      embd_pdrop: 0.0,
      resid_pdrop: 0.0,
      scale_attn_weights: true,
    });
  } else {
    Object.assign(out, {
      vocab_size: cfg.vocabSize,
      hidden_size: cfg.hiddenSize,
      intermediate_size: cfg.intermediateSize,
      num_hidden_layers: cfg.numLayers,
      num_attention_heads: cfg.numHeads,
      num_key_value_heads: cfg.numKvHeads,
      head_dim: cfg.headDim,
      max_position_embeddings: cfg.maxPositions,
      rms_norm_eps: cfg.normEps,
      rope_theta: cfg.rope?.theta ?? 10000,
      rope_scaling: cfg.rope ? ropeToHf(cfg.rope) : null,
      hidden_act: cfg.hiddenAct,
      attention_dropout: 0.0,
    });
    if (cfg.arch === 'llama') Object.assign(out, { attention_bias: cfg.oBias, mlp_bias: cfg.mlpBias });
    if (cfg.arch === 'mistral') out.sliding_window = cfg.slidingWindow;
    if (cfg.gemma)
      Object.assign(out, {
        hidden_activation: cfg.hiddenAct,
        attention_bias: cfg.oBias,
        query_pre_attn_scalar: cfg.gemma.queryPreAttnScalar,
        layer_types: cfg.gemma.layerTypes,
        sliding_window: cfg.slidingWindow ?? cfg.maxPositions,
        rope_local_base_freq: cfg.gemma.localRopeTheta,
        final_logit_softcapping: null,
        attn_logit_softcapping: null,
      });
    if (cfg.arch === 'phi3') {
      out.sliding_window = cfg.slidingWindow;
      out.partial_rotary_factor = cfg.rotaryDim / cfg.headDim;
      if (cfg.rope?.scaling.type === 'longrope') out.original_max_position_embeddings = cfg.rope.scaling.originalMaxPositions;
    }
    if (cfg.arch === 'qwen3') out.attention_bias = cfg.oBias;
    if (cfg.arch === 'qwen2' || cfg.arch === 'qwen3')
      Object.assign(out, {
        use_sliding_window: cfg.slidingWindow !== null,
        sliding_window: cfg.slidingWindow,
        max_window_layers: cfg.numLayers,
      });
  }
  Object.assign(out, {
    tie_word_embeddings: cfg.tieWordEmbeddings,
    initializer_range: cfg.initializerRange,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds.length ? cfg.eosTokenIds : null,
    pad_token_id: cfg.padTokenId,
    use_cache: true,
  });
  if (cfg.torchDtype) out.torch_dtype = cfg.torchDtype;
  if (cfg.head === 'score') {
    const n = cfg.numLabels ?? 1;
    const id2label: Record<string, string> = {};
    const label2id: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      id2label[String(i)] = `LABEL_${i}`;
      label2id[`LABEL_${i}`] = i;
    }
    Object.assign(out, { num_labels: n, id2label, label2id });
  }
  return out;
}
