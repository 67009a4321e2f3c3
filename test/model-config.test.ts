import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { modelConfigToHf, parseModelConfig, readModelConfig, type ModelConfig } from '../lib/model/config';

// Published configs, written out from the model cards' config.json files.
const LLAMA2_7B = {
  architectures: ['LlamaForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096,
  initializer_range: 0.02, intermediate_size: 11008, max_position_embeddings: 4096, model_type: 'llama',
  num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 32, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: null, tie_word_embeddings: false, torch_dtype: 'float16', transformers_version: '4.31.0.dev0',
  use_cache: true, vocab_size: 32000,
};
const LLAMA31_8B = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 128000,
  eos_token_id: 128001, hidden_act: 'silu', hidden_size: 4096, initializer_range: 0.02, intermediate_size: 14336,
  max_position_embeddings: 131072, mlp_bias: false, model_type: 'llama', num_attention_heads: 32, num_hidden_layers: 32,
  num_key_value_heads: 8, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0, tie_word_embeddings: false, torch_dtype: 'bfloat16', transformers_version: '4.43.0.dev0',
  use_cache: true, vocab_size: 128256,
};
const MISTRAL_7B = {
  architectures: ['MistralForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096,
  initializer_range: 0.02, intermediate_size: 14336, max_position_embeddings: 32768, model_type: 'mistral',
  num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0,
  sliding_window: 4096, tie_word_embeddings: false, torch_dtype: 'bfloat16', transformers_version: '4.34.0.dev0',
  use_cache: true, vocab_size: 32000,
};
const QWEN2_05B = {
  architectures: ['Qwen2ForCausalLM'], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151643,
  hidden_act: 'silu', hidden_size: 896, initializer_range: 0.02, intermediate_size: 4864, max_position_embeddings: 131072,
  max_window_layers: 24, model_type: 'qwen2', num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2,
  rms_norm_eps: 1e-6, rope_theta: 1000000.0, sliding_window: 131072, tie_word_embeddings: true, torch_dtype: 'bfloat16',
  transformers_version: '4.40.1', use_cache: true, use_sliding_window: false, vocab_size: 151936,
};
const SMOLLM_135M = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 0, eos_token_id: 0,
  hidden_act: 'silu', hidden_size: 576, initializer_range: 0.02, intermediate_size: 1536, max_position_embeddings: 2048,
  model_type: 'llama', num_attention_heads: 9, num_hidden_layers: 30, num_key_value_heads: 3, pretraining_tp: 1,
  rms_norm_eps: 1e-5, rope_scaling: null, rope_theta: 10000.0, tie_word_embeddings: true, torch_dtype: 'float32',
  transformers_version: '4.40.1', use_cache: true, vocab_size: 49152,
};
const TINYLLAMA_11B = {
  architectures: ['LlamaForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 2048,
  initializer_range: 0.02, intermediate_size: 5632, max_position_embeddings: 2048, model_type: 'llama',
  num_attention_heads: 32, num_hidden_layers: 22, num_key_value_heads: 4, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: null, rope_theta: 10000.0, tie_word_embeddings: false, torch_dtype: 'bfloat16',
  transformers_version: '4.35.0', use_cache: true, vocab_size: 32000,
};
const GPT2 = {
  activation_function: 'gelu_new', architectures: ['GPT2LMHeadModel'], attn_pdrop: 0.1, bos_token_id: 50256,
  embd_pdrop: 0.1, eos_token_id: 50256, initializer_range: 0.02, layer_norm_epsilon: 1e-5, model_type: 'gpt2',
  n_ctx: 1024, n_embd: 768, n_head: 12, n_layer: 12, n_positions: 1024, resid_pdrop: 0.1, summary_activation: null,
  summary_first_dropout: 0.1, summary_proj_to_labels: true, summary_type: 'cls_index', summary_use_proj: true,
  task_specific_params: { 'text-generation': { do_sample: true, max_length: 50 } }, vocab_size: 50257,
};

const parse = (json: unknown) => parseModelConfig(json, 'config.json');

t.test('Llama-2-7b', async (t) => {
  const c = parse(LLAMA2_7B);
  t.match(c, {
    arch: 'llama', architecture: 'LlamaForCausalLM', head: 'lm', numLabels: null, vocabSize: 32000, hiddenSize: 4096,
    intermediateSize: 11008, numLayers: 32, numHeads: 32, numKvHeads: 32, headDim: 128, maxPositions: 4096,
    maxSequenceLength: 4096, normEps: 1e-5, qkvBias: false, oBias: false, mlpBias: false, tieWordEmbeddings: false,
    hiddenAct: 'silu', slidingWindow: null, torchDtype: 'float16', bosTokenId: 1, eosTokenIds: [2], padTokenId: null,
  });
  t.same(c.rope, { theta: 10000, scaling: { type: 'none' } }, 'rope_theta absent: transformers default 10000');
  t.same(c.warnings, []);
});

t.test('Meta-Llama-3.1-8B: GQA and llama3 rope scaling', async (t) => {
  const c = parse(LLAMA31_8B);
  t.match(c, { arch: 'llama', numHeads: 32, numKvHeads: 8, headDim: 128, maxPositions: 131072, vocabSize: 128256, torchDtype: 'bfloat16' });
  t.same(c.rope, { theta: 500000, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 } });
  const instruct = parse({ ...LLAMA31_8B, eos_token_id: [128001, 128008, 128009] });
  t.same(instruct.eosTokenIds, [128001, 128008, 128009], 'eos list');
});

t.test('Mistral-7B-v0.1: sliding window caps the sequence length', async (t) => {
  const c = parse(MISTRAL_7B);
  t.match(c, { arch: 'mistral', numKvHeads: 8, headDim: 128, maxPositions: 32768, slidingWindow: 4096, maxSequenceLength: 4096, qkvBias: false });
  t.equal(c.warnings.length, 1);
  t.match(c.warnings[0], /sliding-window.*4096/);
  const v02 = parse({ ...MISTRAL_7B, sliding_window: null, rope_theta: 1000000.0 });
  t.equal(v02.slidingWindow, null, 'Mistral v0.2: sliding_window null');
  t.equal(v02.maxSequenceLength, 32768);
  t.equal(v02.rope?.theta, 1000000);
});

t.test('Qwen2-0.5B: qkv bias, tied, sliding window off', async (t) => {
  const c = parse(QWEN2_05B);
  t.match(c, {
    arch: 'qwen2', hiddenSize: 896, numHeads: 14, numKvHeads: 2, headDim: 64, qkvBias: true, oBias: false, mlpBias: false,
    tieWordEmbeddings: true, slidingWindow: null, maxSequenceLength: 131072, normEps: 1e-6,
  });
  t.equal(c.rope?.theta, 1000000);
  const windowed = parse({ ...QWEN2_05B, use_sliding_window: true, sliding_window: 4096 });
  t.equal(windowed.slidingWindow, 4096);
});

t.test('SmolLM-135M and TinyLlama-1.1B are llama', async (t) => {
  const s = parse(SMOLLM_135M);
  t.match(s, { arch: 'llama', hiddenSize: 576, numHeads: 9, numKvHeads: 3, headDim: 64, numLayers: 30, tieWordEmbeddings: true, bosTokenId: 0, eosTokenIds: [0], torchDtype: 'float32' });
  const tl = parse(TINYLLAMA_11B);
  t.match(tl, { arch: 'llama', hiddenSize: 2048, numHeads: 32, numKvHeads: 4, headDim: 64, intermediateSize: 5632, numLayers: 22, tieWordEmbeddings: false });
});

t.test('gpt2', async (t) => {
  const c = parse(GPT2);
  t.match(c, {
    arch: 'gpt2', architecture: 'GPT2LMHeadModel', head: 'lm', vocabSize: 50257, hiddenSize: 768, intermediateSize: 3072,
    numLayers: 12, numHeads: 12, numKvHeads: 12, headDim: 64, maxPositions: 1024, normEps: 1e-5, rope: null,
    qkvBias: true, oBias: true, mlpBias: true, tieWordEmbeddings: true, hiddenAct: 'gelu_new', bosTokenId: 50256, eosTokenIds: [50256],
  });
  t.equal(parse({ ...GPT2, n_inner: 1000 }).intermediateSize, 1000, 'n_inner');
  t.equal(parse({ ...GPT2, activation_function: 'gelu_pytorch_tanh' }).hiddenAct, 'gelu_pytorch_tanh');
  t.equal(parse({ ...GPT2, hidden_size: 768 }).hiddenSize, 768, 'an alias with the same value is fine');
  const noArch = { ...GPT2 } as Record<string, unknown>;
  delete noArch.architectures;
  t.equal(parse(noArch).architecture, 'GPT2LMHeadModel', 'model_type alone identifies it');
});

t.test('transformers v5 rope_parameters', async (t) => {
  const v5 = { ...LLAMA31_8B } as Record<string, unknown>;
  delete v5.rope_theta;
  delete v5.rope_scaling;
  v5.rope_parameters = { rope_type: 'llama3', rope_theta: 500000.0, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
  v5.dtype = 'bfloat16';
  delete v5.torch_dtype;
  const c = parse(v5);
  t.same(c.rope, parse(LLAMA31_8B).rope);
  t.equal(c.torchDtype, 'bfloat16');
  const plain = { ...LLAMA2_7B, rope_parameters: { rope_type: 'default', rope_theta: 10000.0 } };
  t.same(parse(plain).rope, { theta: 10000, scaling: { type: 'none' } });
  const lin = { ...LLAMA2_7B, rope_scaling: { type: 'linear', factor: 4.0 } };
  t.same(parse(lin).rope?.scaling, { type: 'linear', factor: 4 }, 'old-style "type" key');
  const both = { ...LLAMA31_8B, rope_parameters: { ...(v5.rope_parameters as object) } };
  t.same(parse(both).rope, parse(LLAMA31_8B).rope, 'both forms, agreeing');
});

t.test('reward models: *ForSequenceClassification', async (t) => {
  const rm = parse({ ...LLAMA2_7B, architectures: ['LlamaForSequenceClassification'], id2label: { '0': 'LABEL_0' }, label2id: { LABEL_0: 0 }, pad_token_id: 0 });
  t.match(rm, { arch: 'llama', head: 'score', numLabels: 1, padTokenId: 0 });
  t.equal(parse({ ...QWEN2_05B, architectures: ['Qwen2ForSequenceClassification'], num_labels: 1 }).numLabels, 1);
  const g = parse({ ...GPT2, architectures: ['GPT2ForSequenceClassification'] });
  t.match(g, { arch: 'gpt2', head: 'score', numLabels: 2 }, 'transformers default: 2 labels');
});

function expectConfigError(t: Tap, json: unknown, ...needles: (string | RegExp)[]): void {
  const err = t.throws(() => parseModelConfig(json, '/models/x/config.json')) as RlhfError;
  t.type(err, RlhfError);
  t.equal(err.code, 'E_CONFIG');
  t.match(err.message, '/models/x/config.json', 'names the file');
  for (const n of needles) t.match(err.message, n);
}
type Tap = Parameters<Parameters<typeof t.test>[1]>[0];

const without = (obj: Record<string, unknown>, key: string) => {
  const o = { ...obj };
  delete o[key];
  return o;
};

t.test('malformed configs -> E_CONFIG naming the key and the file', async (t) => {
  for (const key of ['hidden_size', 'num_attention_heads', 'num_hidden_layers', 'intermediate_size', 'vocab_size'])
    t.test(`missing ${key}`, async (t) => expectConfigError(t, without(LLAMA2_7B, key), `"${key}"`, /missing/));
  t.test('missing n_embd (gpt2)', async (t) => expectConfigError(t, without(GPT2, 'n_embd'), '"n_embd"'));
  t.test('missing architectures and model_type', async (t) => expectConfigError(t, without(without(LLAMA2_7B, 'architectures'), 'model_type'), 'architectures'));
  t.test('unsupported architecture', async (t) =>
    expectConfigError(t, { ...LLAMA2_7B, architectures: ['FalconForCausalLM'], model_type: 'falcon' }, 'FalconForCausalLM', 'LlamaForCausalLM', 'GPT2LMHeadModel'));
  t.test('unsupported model_type', async (t) => expectConfigError(t, { model_type: 'bert', hidden_size: 8 }, '"bert"', 'qwen2'));
  t.test('hidden not divisible by heads', async (t) =>
    expectConfigError(t, { ...LLAMA2_7B, hidden_size: 4000, num_attention_heads: 48, num_key_value_heads: 48 }, 'num_attention_heads', 'hidden_size'));
  t.test('heads not a multiple of kv heads', async (t) => expectConfigError(t, { ...LLAMA2_7B, num_key_value_heads: 5 }, 'num_key_value_heads', /multiple/));
  t.test('kv heads > heads', async (t) => expectConfigError(t, { ...LLAMA2_7B, num_key_value_heads: 64 }, 'num_key_value_heads', /contradictory/));
  t.test('odd head dim', async (t) => expectConfigError(t, { ...LLAMA2_7B, hidden_size: 96, num_attention_heads: 32, num_key_value_heads: 32 }, /even/, 'head_dim'));
  t.test('explicit odd head_dim', async (t) => expectConfigError(t, { ...LLAMA2_7B, head_dim: 127 }, 'head_dim'));
  t.test('gpt2 n_embd vs hidden_size', async (t) => expectConfigError(t, { ...GPT2, hidden_size: 1024 }, /contradictory/, 'n_embd', 'hidden_size'));
  t.test('architectures vs model_type', async (t) => expectConfigError(t, { ...LLAMA2_7B, model_type: 'gpt2' }, /contradictory/, 'model_type'));
  t.test('rope yarn', async (t) =>
    expectConfigError(t, { ...LLAMA2_7B, rope_scaling: { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 4096 } }, '"yarn"', 'rope_scaling', /not implemented/));
  t.test('rope dynamic (old "type" key)', async (t) => expectConfigError(t, { ...LLAMA2_7B, rope_scaling: { type: 'dynamic', factor: 2.0 } }, '"dynamic"', 'rope_scaling'));
  t.test('rope longrope in rope_parameters', async (t) => expectConfigError(t, { ...LLAMA2_7B, rope_parameters: { rope_type: 'longrope', rope_theta: 10000 } }, '"longrope"', 'rope_parameters'));
  t.test('llama3 rope without low_freq_factor', async (t) =>
    expectConfigError(t, { ...LLAMA31_8B, rope_scaling: without(LLAMA31_8B.rope_scaling, 'low_freq_factor') }, 'rope_scaling.low_freq_factor'));
  t.test('linear rope without factor', async (t) => expectConfigError(t, { ...LLAMA2_7B, rope_scaling: { rope_type: 'linear' } }, 'rope_scaling.factor'));
  t.test('rope_theta vs rope_parameters', async (t) =>
    expectConfigError(t, { ...LLAMA2_7B, rope_theta: 10000, rope_parameters: { rope_type: 'default', rope_theta: 500000 } }, /contradictory/, 'rope_theta'));
  t.test('num_labels vs id2label', async (t) =>
    expectConfigError(t, { ...LLAMA2_7B, architectures: ['LlamaForSequenceClassification'], num_labels: 1, id2label: { '0': 'a', '1': 'b' } }, 'num_labels', 'id2label'));
  t.test('zero layers', async (t) => expectConfigError(t, { ...LLAMA2_7B, num_hidden_layers: 0 }, 'num_hidden_layers', /positive integer/));
  t.test('fractional size', async (t) => expectConfigError(t, { ...LLAMA2_7B, intermediate_size: 11008.5 }, 'intermediate_size'));
  t.test('string size', async (t) => expectConfigError(t, { ...LLAMA2_7B, vocab_size: '32000' }, 'vocab_size'));
  t.test('eos outside vocab', async (t) => expectConfigError(t, { ...LLAMA2_7B, eos_token_id: [2, 32000] }, 'eos_token_id', '32000'));
  t.test('bad eos type', async (t) => expectConfigError(t, { ...LLAMA2_7B, eos_token_id: 'x' }, 'eos_token_id'));
  t.test('non-silu llama', async (t) => expectConfigError(t, { ...LLAMA2_7B, hidden_act: 'gelu' }, 'hidden_act', '"gelu"'));
  t.test('gpt2 relu', async (t) => expectConfigError(t, { ...GPT2, activation_function: 'relu' }, 'activation_function'));
  t.test('quantized', async (t) => expectConfigError(t, { ...LLAMA2_7B, quantization_config: { quant_method: 'gptq' } }, 'quantization_config'));
  t.test('unknown dtype', async (t) => expectConfigError(t, { ...LLAMA2_7B, torch_dtype: 'int8' }, 'torch_dtype', '"int8"'));
  t.test('torch_dtype vs dtype', async (t) => expectConfigError(t, { ...LLAMA2_7B, dtype: 'bfloat16' }, /contradictory/, 'dtype'));
  t.test('not an object', async (t) => expectConfigError(t, [1, 2], /JSON object/));
});

// Shapes of published checkpoints (Qwen3-0.6B, Phi-3-mini-128k-instruct, gemma-3-1b-it), token ids and factor lists shortened.
const QWEN3_06B = {
  architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: 151936, hidden_size: 1024, intermediate_size: 3072,
  num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128, max_position_embeddings: 40960,
  rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true, attention_bias: false, use_sliding_window: false, sliding_window: null,
};
const PHI3_MINI_128K = {
  architectures: ['Phi3ForCausalLM'], model_type: 'phi3', vocab_size: 32064, hidden_size: 3072, intermediate_size: 8192,
  num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 32, max_position_embeddings: 131072,
  original_max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 262144, tie_word_embeddings: false,
  rope_scaling: { type: 'longrope', short_factor: Array.from({ length: 48 }, (_, i) => 1 + i / 100), long_factor: Array.from({ length: 48 }, (_, i) => 1 + i) },
  bos_token_id: 1, eos_token_id: 32000, pad_token_id: 32000,
};
const GEMMA3_1B = {
  architectures: ['Gemma3ForCausalLM'], model_type: 'gemma3_text', vocab_size: 262144, hidden_size: 1152, intermediate_size: 6912,
  num_hidden_layers: 26, num_attention_heads: 4, num_key_value_heads: 1, head_dim: 256, max_position_embeddings: 32768,
  query_pre_attn_scalar: 256, sliding_window: 512, sliding_window_pattern: 6, rope_theta: 1000000, rope_local_base_freq: 10000,
  rope_scaling: null, hidden_activation: 'gelu_pytorch_tanh', final_logit_softcapping: null, attn_logit_softcapping: null, torch_dtype: 'bfloat16',
};

t.test('Qwen3, Phi-3 and Gemma 3 configs', async (t) => {
  const q = parse(QWEN3_06B);
  t.match(q, { arch: 'qwen3', headDim: 128, qkNorm: true, qkvBias: false, tieWordEmbeddings: true, rotaryDim: 128, fusedProj: false });
  t.equal(parse(without(QWEN3_06B, 'head_dim')).headDim, 128, "Qwen3Config's head_dim default, not hidden / heads");
  const p = parse(PHI3_MINI_128K);
  t.match(p, { arch: 'phi3', headDim: 96, rotaryDim: 96, fusedProj: true, normEps: 1e-5, slidingWindow: null });
  t.match(p.rope!.scaling, { type: 'longrope', originalMaxPositions: 4096 });
  t.equal((p.rope!.scaling as { attentionFactor: number }).attentionFactor, Math.sqrt(1 + Math.log(32) / Math.log(4096)), 'attention factor from 131072 / 4096');
  t.equal(parse({ ...PHI3_MINI_128K, partial_rotary_factor: 0.5, rope_scaling: null }).rotaryDim, 48);
  const g = parse(GEMMA3_1B);
  t.match(g, { arch: 'gemma3', headDim: 256, qkNorm: true, tieWordEmbeddings: true, hiddenAct: 'gelu_pytorch_tanh', slidingWindow: 512, maxSequenceLength: 512 });
  t.equal(g.gemma!.embedScale, 34, 'sqrt(1152) = 33.94 rounded to bfloat16 (the checkpoint dtype) is 34');
  t.equal(parse({ ...GEMMA3_1B, torch_dtype: 'float32' }).gemma!.embedScale, Math.fround(Math.sqrt(1152)));
  t.same(g.gemma!.layerTypes.map((x, i) => (x === 'full_attention' ? i : -1)).filter((i) => i >= 0), [5, 11, 17, 23], 'every 6th layer global');
  t.match(g.rope, { theta: 1000000 });
  t.equal(g.gemma!.localRopeTheta, 10000);
  t.equal(g.warnings.length, 1, 'the sliding window caps the sequence length');
  t.test('soft-capping refused', async (t) => expectConfigError(t, { ...GEMMA3_1B, final_logit_softcapping: 30 }, 'final_logit_softcapping', /not implemented/));
  t.test('attention soft-capping refused', async (t) => expectConfigError(t, { ...GEMMA3_1B, attn_logit_softcapping: 50 }, 'attn_logit_softcapping'));
  t.test('bad layer_types', async (t) => expectConfigError(t, { ...GEMMA3_1B, layer_types: ['full_attention'] }, 'layer_types'));
  t.test('longrope factors of the wrong length', async (t) =>
    expectConfigError(t, { ...PHI3_MINI_128K, rope_scaling: { ...PHI3_MINI_128K.rope_scaling, short_factor: [1, 2] } }, 'short_factor', /48/));
  t.test('partial rotary outside Phi-3', async (t) => expectConfigError(t, { ...LLAMA2_7B, partial_rotary_factor: 0.5 }, 'partial_rotary_factor'));
  t.test('Bloom stays refused', async (t) => expectConfigError(t, { ...GPT2, architectures: ['BloomForCausalLM'], model_type: 'bloom' }, 'BloomForCausalLM', /unsupported/, /ALiBi/));
});

t.test('modelConfigToHf round-trips through parseModelConfig', async (t) => {
  const all: [string, Record<string, unknown>][] = [
    ['llama2', LLAMA2_7B], ['llama3.1', LLAMA31_8B], ['mistral', MISTRAL_7B], ['qwen2', QWEN2_05B], ['smollm', SMOLLM_135M],
    ['tinyllama', TINYLLAMA_11B], ['gpt2', GPT2], ['linear', { ...LLAMA2_7B, rope_scaling: { type: 'linear', factor: 2.0 }, attention_bias: true, mlp_bias: true }],
    ['qwen2 window', { ...QWEN2_05B, use_sliding_window: true, sliding_window: 4096 }],
    ['llama rm', { ...LLAMA2_7B, architectures: ['LlamaForSequenceClassification'], num_labels: 1, pad_token_id: 0 }],
    ['gpt2 rm', { ...GPT2, architectures: ['GPT2ForSequenceClassification'], num_labels: 1, n_inner: 2000 }],
    ['gpt2 untied', { ...GPT2, tie_word_embeddings: false }],
    ['qwen3', QWEN3_06B], ['phi3', PHI3_MINI_128K], ['phi3 partial', { ...PHI3_MINI_128K, partial_rotary_factor: 0.75, rope_scaling: null }],
    ['gemma3', GEMMA3_1B],
  ];
  for (const [name, json] of all) {
    const c = parse(json);
    const hf = modelConfigToHf(c);
    const back = parse(JSON.parse(JSON.stringify(hf)));
    t.same(back, c, name);
    t.same(hf.architectures, [c.architecture], `${name}: architectures`);
    t.equal(hf.model_type, c.arch === 'gemma3' ? 'gemma3_text' : c.arch, `${name}: model_type`);
  }
  const gpt = modelConfigToHf(parse(GPT2));
  t.match(gpt, { n_embd: 768, n_layer: 12, n_head: 12, n_positions: 1024, n_inner: null, activation_function: 'gelu_new', layer_norm_epsilon: 1e-5 });
  t.notOk('hidden_size' in gpt, 'gpt2 keys, not llama keys');
  const l3 = modelConfigToHf(parse(LLAMA31_8B));
  t.same(l3.rope_scaling, LLAMA31_8B.rope_scaling, 'llama3 rope_scaling written as published');
  t.equal(l3.rope_theta, 500000);
});

t.test('readModelConfig: files and errors', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-config-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(SMOLLM_135M));
  const c: ModelConfig = readModelConfig(dir);
  t.equal(c.hiddenSize, 576);
  t.equal(readModelConfig(path.join(dir, 'config.json')).hiddenSize, 576, 'a file path works too');
  const missing = t.throws(() => readModelConfig(path.join(dir, 'nope'))) as RlhfError;
  t.equal(missing.code, 'E_MODEL');
  t.match(missing.message, path.join(dir, 'nope', 'config.json'));
  fs.writeFileSync(path.join(dir, 'bad.json'), '{"hidden_size": 12,');
  const bad = t.throws(() => readModelConfig(path.join(dir, 'bad.json'))) as RlhfError;
  t.equal(bad.code, 'E_CONFIG');
  t.match(bad.message, /bad\.json: invalid JSON/);
});
