/**
 * Size presets for `init` (random-initialised models), and the special tokens
 * each architecture's tokenizer gets.
 *
 * Parameter counts (F32 bytes = 4x), with the built-in tokenizer's vocab
 * (padded to a multiple of 64):
 *   tiny  — test model: hidden 64, 2 layers, 4 heads (2 KV heads for
 *           llama/qwen2), MLP 160 (gpt2 256), 256 positions, ~0.1M params.
 *   small — hidden 384, 6 layers, 6 heads (2 KV), MLP 1024 (gpt2 1536),
 *           1024 positions, ~10-11M params.
 *   125m  — hidden 768, 12 layers, 12 heads, MLP 3072, 2048 positions (gpt2
 *           1024): GPT-2-small-shaped body, ~86M (gpt2) / ~115M (llama) params;
 *           the rest of GPT-2's 124M is its 50k-token embedding.
 */
import { RlhfError } from '../errors';
import { architectureName, type ModelArch, type ModelConfig, type TorchDtype } from './config';

export const PRESET_NAMES = ['tiny', 'small', '125m'] as const;
export type PresetName = (typeof PRESET_NAMES)[number];
export const INIT_ARCHS = ['llama', 'qwen2', 'gpt2'] as const;
export type InitArch = (typeof INIT_ARCHS)[number];

export interface ModelPreset {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  /** KV heads for llama/qwen2 (GPT-2 has no GQA). */
  numKvHeads: number;
  /** SwiGLU inner size for llama/qwen2. */
  intermediateSize: number;
  /** GPT-2 MLP inner size. */
  gpt2Inner: number;
  maxPositions: number;
  gpt2MaxPositions: number;
  /** BPE training target; the built-in corpus may stop it earlier. */
  tokenizerVocab: number;
}

export const PRESETS: Record<PresetName, ModelPreset> = {
  // Distinct sizes (64, 160, 256, 512) so that a transposed shape cannot pass unnoticed in tests.
  tiny: { hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, intermediateSize: 160, gpt2Inner: 256, maxPositions: 256, gpt2MaxPositions: 256, tokenizerVocab: 512 },
  small: { hiddenSize: 384, numLayers: 6, numHeads: 6, numKvHeads: 2, intermediateSize: 1024, gpt2Inner: 1536, maxPositions: 1024, gpt2MaxPositions: 1024, tokenizerVocab: 2048 },
  '125m': { hiddenSize: 768, numLayers: 12, numHeads: 12, numKvHeads: 12, intermediateSize: 3072, gpt2Inner: 3072, maxPositions: 2048, gpt2MaxPositions: 1024, tokenizerVocab: 4096 },
};

export interface ArchTokens {
  /** In id order: they get ids 0..k-1. */
  special: string[];
  bos: string | null;
  eos: string;
  pad: string;
  /** Chat markers (ChatML). */
  imStart: string;
  imEnd: string;
}

/**
 * Special tokens, following each family's convention: GPT-2's
 * `<|endoftext|>` as bos = eos; Llama's `<s>` / `</s>`; Qwen2's
 * `<|endoftext|>` eos and no bos. All get a pad token of their own (a reward
 * model finds the last real token by the first pad, so pad must differ from
 * eos) and the ChatML markers.
 */
export function archTokens(arch: InitArch): ArchTokens {
  const chat = { imStart: '<|im_start|>', imEnd: '<|im_end|>' };
  switch (arch) {
    case 'gpt2':
      return { special: ['<|endoftext|>', '<|pad|>', chat.imStart, chat.imEnd], bos: '<|endoftext|>', eos: '<|endoftext|>', pad: '<|pad|>', ...chat };
    case 'llama':
      return { special: ['<s>', '</s>', '<pad>', chat.imStart, chat.imEnd], bos: '<s>', eos: '</s>', pad: '<pad>', ...chat };
    case 'qwen2':
      return { special: ['<|endoftext|>', '<|pad|>', chat.imStart, chat.imEnd], bos: null, eos: '<|endoftext|>', pad: '<|pad|>', ...chat };
  }
}

export function getPreset(name: string): ModelPreset {
  if (!(PRESET_NAMES as readonly string[]).includes(name))
    throw new RlhfError('E_ARGUMENT', `unknown preset "${name}"; presets: ${PRESET_NAMES.join(', ')}`);
  return PRESETS[name as PresetName];
}

/** The embedding has a multiple of 64 rows (at least the tokenizer's vocab) — friendlier to GEMM tiling. */
export function paddedVocab(tokenizerVocab: number): number {
  return Math.ceil(tokenizerVocab / 64) * 64;
}

/**
 * The ModelConfig of a preset. Llama is untied (as Llama 2/3), Qwen2 and
 * GPT-2 tie the LM head to the embedding (as Qwen2-0.5B and GPT-2).
 */
export function presetModelConfig(
  arch: InitArch,
  preset: ModelPreset,
  ids: { vocabSize: number; bos: number | null; eos: number[]; pad: number | null },
  torchDtype: TorchDtype,
): ModelConfig {
  const gpt2 = arch === 'gpt2';
  const headDim = preset.hiddenSize / preset.numHeads;
  return {
    arch: arch as ModelArch,
    architecture: architectureName(arch, 'lm'),
    head: 'lm',
    numLabels: null,
    vocabSize: ids.vocabSize,
    hiddenSize: preset.hiddenSize,
    intermediateSize: gpt2 ? preset.gpt2Inner : preset.intermediateSize,
    numLayers: preset.numLayers,
    numHeads: preset.numHeads,
    numKvHeads: gpt2 ? preset.numHeads : preset.numKvHeads,
    headDim,
    maxPositions: gpt2 ? preset.gpt2MaxPositions : preset.maxPositions,
    maxSequenceLength: gpt2 ? preset.gpt2MaxPositions : preset.maxPositions,
    normEps: gpt2 ? 1e-5 : 1e-6,
    rope: gpt2 ? null : { theta: arch === 'qwen2' ? 1000000 : 10000, scaling: { type: 'none' } },
    qkvBias: gpt2 || arch === 'qwen2',
    rotaryDim: headDim,
    fusedProj: false,
    qkNorm: false,
    gemma: null,
    oBias: gpt2,
    mlpBias: gpt2,
    tieWordEmbeddings: arch !== 'llama',
    hiddenAct: gpt2 ? 'gelu_new' : 'silu',
    slidingWindow: null,
    torchDtype,
    initializerRange: 0.02,
    bosTokenId: ids.bos,
    eosTokenIds: ids.eos,
    padTokenId: ids.pad,
    warnings: [],
  };
}
