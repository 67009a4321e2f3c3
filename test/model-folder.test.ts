import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { openModelFolder } from '../lib/model/folder';
import { parseModelConfig } from '../lib/model/config';
import { expectedTensors } from '../lib/model/tensors';

interface T {
  name: string;
  shape: number[];
  dtype?: string;
  /** Every element of the tensor (F32). */
  value?: number;
}

/** A plain safetensors writer (format spec: u64 LE header size, JSON header padded with spaces to 8 bytes, data). */
function writeSafetensorsPlain(file: string, tensors: T[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const blobs: Buffer[] = [];
  let offset = 0;
  for (const tn of tensors) {
    const n = tn.shape.reduce((a, b) => a * b, 1);
    const bytes = Buffer.alloc(n * 4);
    for (let i = 0; i < n; i++) bytes.writeFloatLE(tn.value ?? i, i * 4);
    header[tn.name] = { dtype: tn.dtype ?? 'F32', shape: tn.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    blobs.push(bytes);
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), ...blobs]));
}

const LLAMA = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 16, hidden_size: 8, intermediate_size: 12,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, torch_dtype: 'float32',
};
const GPT2 = { architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', vocab_size: 16, n_embd: 8, n_layer: 1, n_head: 2, n_positions: 4 };
const specsOf = (json: object): T[] => expectedTensors(parseModelConfig(json, 'config.json')).map((s) => ({ name: s.name, shape: s.shape }));

function folder(t: Tap, config: object | null): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-folder-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  if (config) fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}
type Tap = Parameters<Parameters<typeof t.test>[1]>[0];

function expectError(t: Tap, dir: string, code: string, ...needles: (string | RegExp)[]): void {
  const err = t.throws(() => openModelFolder(dir)) as RlhfError;
  t.type(err, RlhfError);
  t.equal(err.code, code);
  for (const n of needles) t.match(err.message, n);
}

/** Splits the tensors of `json` into shards (layer 0 / rest) with a matching index. */
function sharded(dir: string, json: object, edit?: (map: Record<string, string>) => void): void {
  const all = specsOf(json);
  const a = all.filter((x) => x.name.includes('layers.0.'));
  const b = all.filter((x) => !x.name.includes('layers.0.'));
  writeSafetensorsPlain(path.join(dir, 'model-00001-of-00002.safetensors'), a);
  writeSafetensorsPlain(path.join(dir, 'model-00002-of-00002.safetensors'), b);
  const map: Record<string, string> = {};
  for (const x of a) map[x.name] = 'model-00001-of-00002.safetensors';
  for (const x of b) map[x.name] = 'model-00002-of-00002.safetensors';
  edit?.(map);
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: map }));
}

t.test('single-file folder', async (t) => {
  const dir = folder(t, LLAMA);
  writeSafetensorsPlain(path.join(dir, 'model.safetensors'), specsOf(LLAMA).map((x) => ({ ...x, value: x.name === 'model.norm.weight' ? 1.5 : undefined })));
  fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [1, 2] }));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{}');
  const m = openModelFolder(dir);
  t.teardown(() => m.close());
  t.equal(m.dir, path.resolve(dir));
  t.equal(m.config.arch, 'llama');
  t.equal(m.tensors.length, specsOf(LLAMA).length);
  t.same(m.weightFiles, [path.join(m.dir, 'model.safetensors')]);
  t.ok(m.tensors.every((x) => x.file === path.join(m.dir, 'model.safetensors') && x.dtype === 'F32'));
  const norm = m.tensors.find((x) => x.name === 'model.norm.weight')!;
  t.same(norm.shape, [8]);
  t.equal(norm.kind, 'norm');
  t.same(m.tokenizer, { json: path.join(m.dir, 'tokenizer.json'), config: null });
  t.same(m.generationConfig, { eos_token_id: [1, 2] });
  const bytes = m.readTensor('model.norm.weight');
  t.equal(bytes.length, 32);
  t.equal(bytes.readFloatLE(28), 1.5);
  t.equal(m.readTensor('model.layers.0.self_attn.k_proj.weight').readFloatLE(4 * 5), 5, 'element 5 of an arange tensor');
  const noSuch = t.throws(() => m.readTensor('nope')) as RlhfError;
  t.equal(noSuch.code, 'E_ARGUMENT');
});

t.test('sharded folder through model.safetensors.index.json', async (t) => {
  const dir = folder(t, LLAMA);
  sharded(dir, LLAMA);
  const m = openModelFolder(dir);
  t.teardown(() => m.close());
  t.equal(m.tensors.length, specsOf(LLAMA).length);
  t.equal(m.weightFiles.length, 2);
  t.equal(m.tensors.find((x) => x.name === 'model.layers.0.mlp.up_proj.weight')!.file, path.join(m.dir, 'model-00001-of-00002.safetensors'));
  t.equal(m.tensors.find((x) => x.name === 'lm_head.weight')!.file, path.join(m.dir, 'model-00002-of-00002.safetensors'));
  t.equal(m.readTensor('lm_head.weight').readFloatLE(4 * 7), 7);
});

t.test('GPT-2 file without the transformer. prefix, with old mask buffers', async (t) => {
  const dir = folder(t, GPT2);
  const bare = specsOf(GPT2).map((x) => ({ ...x, name: x.name.replace(/^transformer\./, '') }));
  bare.push({ name: 'h.0.attn.bias', shape: [1, 1, 4, 4] });
  writeSafetensorsPlain(path.join(dir, 'model.safetensors'), bare);
  const m = openModelFolder(dir);
  t.teardown(() => m.close());
  t.equal(m.tensors.length, 16);
  t.same(m.ignoredTensors, ['h.0.attn.bias']);
  t.equal(m.readTensor('transformer.wpe.weight').length, 4 * 8 * 4, 'readable by canonical name');
  t.equal(m.readTensor('wpe.weight').length, 4 * 8 * 4, 'and by file name');
});

t.test('bad folders', async (t) => {
  t.test('no such folder -> E_IO', async (t) => expectError(t, '/nonexistent/model/dir', 'E_IO', '/nonexistent/model/dir'));
  t.test('a file, not a folder -> E_IO', async (t) => {
    const dir = folder(t, null);
    fs.writeFileSync(path.join(dir, 'f'), 'x');
    expectError(t, path.join(dir, 'f'), 'E_IO', /not a folder/);
  });
  t.test('no config.json -> E_MODEL naming it', async (t) => {
    const dir = folder(t, null);
    expectError(t, dir, 'E_MODEL', path.join(dir, 'config.json'));
  });
  t.test('no weights -> E_MODEL', async (t) => {
    const dir = folder(t, LLAMA);
    expectError(t, dir, 'E_MODEL', /no weights/, 'model.safetensors');
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'x');
    expectError(t, dir, 'E_MODEL', /pytorch_model\.bin: convert them to safetensors/);
  });
  t.test('bad config -> E_CONFIG', async (t) => {
    const dir = folder(t, { ...LLAMA, num_key_value_heads: 3 });
    expectError(t, dir, 'E_CONFIG', 'num_key_value_heads', path.join(dir, 'config.json'));
  });
  t.test('wrong shape -> E_MODEL naming the tensor and both shapes', async (t) => {
    const dir = folder(t, LLAMA);
    writeSafetensorsPlain(path.join(dir, 'model.safetensors'), specsOf(LLAMA).map((x) => (x.name === 'lm_head.weight' ? { ...x, shape: [15, 8] } : x)));
    expectError(t, dir, 'E_MODEL', 'tensor lm_head.weight has shape [15, 8], expected [16, 8]');
  });
  t.test('corrupt safetensors -> the reader error', async (t) => {
    const dir = folder(t, LLAMA);
    fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.from([1, 2, 3]));
    const err = t.throws(() => openModelFolder(dir)) as RlhfError;
    t.type(err, RlhfError);
    t.match(err.message, 'model.safetensors');
  });
  t.test('index names a missing shard', async (t) => {
    const dir = folder(t, LLAMA);
    sharded(dir, LLAMA, (map) => (map['model.norm.weight'] = 'model-00003-of-00003.safetensors'));
    expectError(t, dir, 'E_MODEL', 'shard model-00003-of-00003.safetensors is listed but', 'does not exist');
  });
  t.test('index places a tensor in the wrong shard', async (t) => {
    const dir = folder(t, LLAMA);
    sharded(dir, LLAMA, (map) => (map['model.norm.weight'] = 'model-00001-of-00002.safetensors'));
    expectError(t, dir, 'E_MODEL', 'model-00002-of-00002.safetensors holds model.norm.weight, which the index places in model-00001-of-00002.safetensors');
  });
  t.test('index lists a tensor no shard holds', async (t) => {
    const dir = folder(t, LLAMA);
    sharded(dir, LLAMA, (map) => (map['model.extra.weight'] = 'model-00001-of-00002.safetensors'));
    expectError(t, dir, 'E_MODEL', 'the index places model.extra.weight in model-00001-of-00002.safetensors, which does not hold it');
  });
  t.test('a shard holds a tensor the index omits', async (t) => {
    const dir = folder(t, LLAMA);
    sharded(dir, LLAMA, (map) => delete map['lm_head.weight']);
    expectError(t, dir, 'E_MODEL', 'holds lm_head.weight, which the index does not list');
  });
  t.test('index escaping the folder', async (t) => {
    const dir = folder(t, LLAMA);
    sharded(dir, LLAMA, (map) => (map['lm_head.weight'] = '../x.safetensors'));
    expectError(t, dir, 'E_MODEL', /must be a \.safetensors file name/);
  });
  t.test('index without weight_map / invalid JSON', async (t) => {
    const dir = folder(t, LLAMA);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {} }));
    expectError(t, dir, 'E_MODEL', 'weight_map');
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{');
    expectError(t, dir, 'E_MODEL', /invalid JSON/);
  });
});
