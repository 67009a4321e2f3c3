import t from 'tap';
import { RlhfError } from '../lib/errors';
import { parseModelConfig } from '../lib/model/config';
import { checkTensors, countParameters, expectedTensors, type TensorHeaderEntry } from '../lib/model/tensors';

const llamaJson = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 10, hidden_size: 8, intermediate_size: 12,
  num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2,
};
const gpt2Json = { architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', vocab_size: 10, n_embd: 8, n_layer: 1, n_head: 2, n_positions: 6 };
const cfg = (j: object) => parseModelConfig(j, 'config.json');
const table = (c: object) => expectedTensors(cfg(c)).map((s) => `${s.name} ${s.shape.join('x')} ${s.kind}`);

t.test('llama tensors, by hand', async (t) => {
  // H=8, 4 heads of 2, 2 KV heads -> k/v have 4 rows; nn.Linear weights are [out, in].
  t.same(table(llamaJson), [
    'model.embed_tokens.weight 10x8 embedding',
    'model.layers.0.input_layernorm.weight 8 norm',
    'model.layers.0.self_attn.q_proj.weight 8x8 matrix',
    'model.layers.0.self_attn.k_proj.weight 4x8 matrix',
    'model.layers.0.self_attn.v_proj.weight 4x8 matrix',
    'model.layers.0.self_attn.o_proj.weight 8x8 matrix',
    'model.layers.0.post_attention_layernorm.weight 8 norm',
    'model.layers.0.mlp.gate_proj.weight 12x8 matrix',
    'model.layers.0.mlp.up_proj.weight 12x8 matrix',
    'model.layers.0.mlp.down_proj.weight 8x12 matrix',
    'model.norm.weight 8 norm',
    'lm_head.weight 10x8 head',
  ]);
  const tied = table({ ...llamaJson, tie_word_embeddings: true });
  t.notOk(tied.some((x) => x.startsWith('lm_head')), 'tied: no lm_head');
  const biased = table({ ...llamaJson, attention_bias: true, mlp_bias: true });
  for (const b of ['q_proj.bias 8', 'k_proj.bias 4', 'v_proj.bias 4', 'o_proj.bias 8', 'gate_proj.bias 12', 'up_proj.bias 12', 'down_proj.bias 8'])
    t.ok(biased.some((x) => x.includes(b + ' bias')), b);
  const hd = table({ ...llamaJson, head_dim: 4 });
  t.ok(hd.includes('model.layers.0.self_attn.q_proj.weight 16x8 matrix') && hd.includes('model.layers.0.self_attn.o_proj.weight 8x16 matrix'), 'explicit head_dim');
});

t.test('qwen2: q/k/v bias, no o_proj bias', async (t) => {
  const q = table({ ...llamaJson, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' });
  t.ok(q.includes('model.layers.0.self_attn.q_proj.bias 8 bias'));
  t.ok(q.includes('model.layers.0.self_attn.k_proj.bias 4 bias'));
  t.ok(q.includes('model.layers.0.self_attn.v_proj.bias 4 bias'));
  t.notOk(q.some((x) => x.includes('o_proj.bias') || x.includes('mlp') && x.includes('bias')));
});

t.test('gpt2 tensors, by hand (transformer. prefix, Conv1D [in, out])', async (t) => {
  t.same(table(gpt2Json), [
    'transformer.wte.weight 10x8 embedding',
    'transformer.wpe.weight 6x8 embedding',
    'transformer.h.0.ln_1.weight 8 norm',
    'transformer.h.0.ln_1.bias 8 bias',
    'transformer.h.0.attn.c_attn.weight 8x24 matrix',
    'transformer.h.0.attn.c_attn.bias 24 bias',
    'transformer.h.0.attn.c_proj.weight 8x8 matrix',
    'transformer.h.0.attn.c_proj.bias 8 bias',
    'transformer.h.0.ln_2.weight 8 norm',
    'transformer.h.0.ln_2.bias 8 bias',
    'transformer.h.0.mlp.c_fc.weight 8x32 matrix',
    'transformer.h.0.mlp.c_fc.bias 32 bias',
    'transformer.h.0.mlp.c_proj.weight 32x8 matrix',
    'transformer.h.0.mlp.c_proj.bias 8 bias',
    'transformer.ln_f.weight 8 norm',
    'transformer.ln_f.bias 8 bias',
  ]);
});

t.test('reward model heads', async (t) => {
  const l = table({ ...llamaJson, architectures: ['LlamaForSequenceClassification'], num_labels: 1 });
  t.equal(l[l.length - 1], 'score.weight 1x8 head');
  t.notOk(l.some((x) => x.startsWith('lm_head')), 'no lm_head on a reward model');
  const g = table({ ...gpt2Json, architectures: ['GPT2ForSequenceClassification'], num_labels: 1 });
  t.equal(g[g.length - 1], 'score.weight 1x8 head');
});

t.test('parameter counts of published models', async (t) => {
  const llama2 = { architectures: ['LlamaForCausalLM'], vocab_size: 32000, hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32 };
  t.equal(countParameters(cfg(llama2)), 6738415616, 'Llama-2-7b');
  const gpt2 = { architectures: ['GPT2LMHeadModel'], vocab_size: 50257, n_embd: 768, n_layer: 12, n_head: 12, n_positions: 1024 };
  t.equal(countParameters(cfg(gpt2)), 124439808, 'gpt2');
  const qwen = {
    architectures: ['Qwen2ForCausalLM'], vocab_size: 151936, hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24,
    num_attention_heads: 14, num_key_value_heads: 2, tie_word_embeddings: true,
  };
  t.equal(countParameters(cfg(qwen)), 494032768, 'Qwen2-0.5B');
  const smol = {
    architectures: ['LlamaForCausalLM'], vocab_size: 49152, hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30,
    num_attention_heads: 9, num_key_value_heads: 3, tie_word_embeddings: true,
  };
  t.equal(countParameters(cfg(smol)), 134515008, 'SmolLM-135M');
});

const entries = (c: object, dtype = 'F32'): TensorHeaderEntry[] => expectedTensors(cfg(c)).map((s) => ({ name: s.name, dtype, shape: [...s.shape] }));

function expectModelError(t: Tap, c: object, tensors: TensorHeaderEntry[], ...needles: (string | RegExp)[]): void {
  const err = t.throws(() => checkTensors(cfg(c), tensors, '/m/folder')) as RlhfError;
  t.equal(err.code, 'E_MODEL');
  t.match(err.message, '/m/folder');
  for (const n of needles) t.match(err.message, n);
}
type Tap = Parameters<Parameters<typeof t.test>[1]>[0];

t.test('checkTensors', async (t) => {
  const ok = checkTensors(cfg(llamaJson), entries(llamaJson));
  t.equal(ok.tensors.length, 12);
  t.same(ok.ignored, []);
  t.ok(checkTensors(cfg(llamaJson), { tensors: entries(llamaJson, 'BF16') }), 'header form, BF16');

  const noUp = entries(llamaJson).filter((e) => !e.name.endsWith('up_proj.weight'));
  expectModelError(t, llamaJson, noUp, 'missing tensor model.layers.0.mlp.up_proj.weight: expected shape [12, 8], actual: absent');
  const extra = [...entries(llamaJson), { name: 'model.layers.0.extra.weight', dtype: 'F32', shape: [3] }];
  expectModelError(t, llamaJson, extra, 'unexpected tensor model.layers.0.extra.weight F32 [3]');
  const transposed = entries(llamaJson).map((e) => (e.name.endsWith('down_proj.weight') ? { ...e, shape: [12, 8] } : e));
  expectModelError(t, llamaJson, transposed, 'tensor model.layers.0.mlp.down_proj.weight has shape [12, 8], expected [8, 12]');
  expectModelError(t, llamaJson, entries(llamaJson, 'I8'), /dtype I8; supported: F32, F16, BF16/);
  const many = entries(llamaJson).map((e) => ({ ...e, shape: [1] }));
  expectModelError(t, llamaJson, many, /12 problems/);
  expectModelError(t, { ...llamaJson, tie_word_embeddings: true }, entries(llamaJson).filter((e) => e.name !== 'model.norm.weight'), 'model.norm.weight');

  // Tied lm_head and Llama's old inv_freq buffers are tolerated and reported as ignored.
  const tiedWithHead = checkTensors(cfg({ ...llamaJson, tie_word_embeddings: true }), [
    ...entries(llamaJson),
    { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', dtype: 'F32', shape: [1] },
  ]);
  t.same(tiedWithHead.ignored, ['lm_head.weight', 'model.layers.0.self_attn.rotary_emb.inv_freq']);
});

t.test('checkTensors: GPT-2 with and without the transformer. prefix', async (t) => {
  const prefixed = entries(gpt2Json);
  t.equal(checkTensors(cfg(gpt2Json), prefixed).tensors.length, 16);
  // openai-community/gpt2's own file: no prefix, plus the old causal-mask buffers.
  const bare = prefixed.map((e) => ({ ...e, name: e.name.replace(/^transformer\./, '') }));
  bare.push({ name: 'h.0.attn.bias', dtype: 'F32', shape: [1, 1, 6, 6] }, { name: 'h.0.attn.masked_bias', dtype: 'F32', shape: [] });
  const r = checkTensors(cfg(gpt2Json), bare);
  t.equal(r.tensors.length, 16);
  t.equal(r.tensors[0].name, 'wte.weight');
  t.equal(r.tensors[0].canonical, 'transformer.wte.weight');
  t.same(r.ignored, ['h.0.attn.bias', 'h.0.attn.masked_bias']);
  expectModelError(t, gpt2Json, [...prefixed, { name: 'wte.weight', dtype: 'F32', shape: [10, 8] }], 'transformer.wte.weight appears twice');
  const rm = { ...gpt2Json, architectures: ['GPT2ForSequenceClassification'], num_labels: 1 };
  t.equal(checkTensors(cfg(rm), [...bare, { name: 'score.weight', dtype: 'F32', shape: [1, 8] }]).tensors.length, 17);
  expectModelError(t, rm, bare, 'missing tensor score.weight: expected shape [1, 8]');
});
