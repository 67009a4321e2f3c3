import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { parseModelConfig } from '../lib/model/config';
import { openModelFolder } from '../lib/model/folder';
import { initModel, tensorSeed } from '../lib/model/init';
import { PRESETS } from '../lib/model/presets';
import { checkTensors, expectedTensors } from '../lib/model/tensors';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';

type Tap = Parameters<Parameters<typeof t.test>[1]>[0];

function tmp(t: Tap): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-init-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// Decoders written out plainly here (test side only).
function f32(buf: Buffer): Float64Array {
  const out = new Float64Array(buf.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}
function bf16(buf: Buffer): Float64Array {
  const out = new Float64Array(buf.length / 2);
  const tmpBuf = Buffer.alloc(4);
  for (let i = 0; i < out.length; i++) {
    tmpBuf.writeUInt32LE(buf.readUInt16LE(i * 2) << 16 >>> 0);
    out[i] = tmpBuf.readFloatLE(0);
  }
  return out;
}
function stats(x: Float64Array): { mean: number; std: number; min: number; max: number } {
  let s = 0, min = Infinity, max = -Infinity;
  for (const v of x) { s += v; if (v < min) min = v; if (v > max) max = v; }
  const mean = s / x.length;
  let q = 0;
  for (const v of x) q += (v - mean) * (v - mean);
  return { mean, std: Math.sqrt(q / x.length), min, max };
}

for (const arch of ['llama', 'qwen2', 'gpt2'] as const) {
  t.test(`init tiny ${arch}`, async (t) => {
    const out = path.join(tmp(t), 'model');
    const r = await initModel({ arch, preset: 'tiny', outDir: out, seed: 1234 });
    t.same(r.files.map((f) => path.basename(f)).sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);

    const m = openModelFolder(out);
    t.teardown(() => m.close());
    const c = m.config;
    t.equal(c.arch, arch);
    t.match(c, { hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: arch === 'gpt2' ? 4 : 2, maxPositions: 256, torchDtype: 'float32' });
    t.equal(c.tieWordEmbeddings, arch !== 'llama');
    t.equal(m.tensors.length, expectedTensors(c).length, 'every expected tensor, nothing else');
    t.same(m.ignoredTensors, []);
    t.ok(checkTensors(c, m.tensors.map((x) => ({ name: x.name, dtype: x.dtype, shape: x.shape }))));
    if (arch === 'gpt2') t.ok(m.tensors.every((x) => x.name.startsWith('transformer.')), 'GPT2LMHeadModel names: transformer.*');
    t.equal(r.parameters, m.tensors.reduce((s, x) => s + x.shape.reduce((a, b) => a * b, 1), 0));

    // config.json round-trips through the parser.
    const raw = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    t.same(parseModelConfig(raw, 'config.json'), c);
    t.notOk('transformers_version' in raw, 'no transformers_version claimed');

    // Tokenizer: config vocab covers it, padded to a multiple of 64.
    const tok = loadTokenizer(out);
    t.equal(c.vocabSize % 64, 0);
    t.ok(c.vocabSize >= tok.vocabSize && c.vocabSize - tok.vocabSize < 64, `vocab ${c.vocabSize} covers the tokenizer's ${tok.vocabSize}`);
    t.equal(tok.vocabSize, r.tokenizerVocabSize);
    t.equal(tok.eosTokenId, c.eosTokenIds[0]);
    t.equal(tok.padTokenId, c.padTokenId);
    t.equal(tok.bosTokenId, c.bosTokenId);
    t.not(c.padTokenId, c.eosTokenIds[0], 'pad differs from eos (reward models find the last token by the first pad)');
    const s = 'The river runs past the old mill. Ünïcödé 🎉';
    t.equal(tok.decode(tok.encode(s)), s);
    const chat = tok.applyChatTemplate([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello.' }]);
    t.equal(chat, (arch === 'llama' ? '<s>' : '') + '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n');
    const gen = JSON.parse(fs.readFileSync(path.join(out, 'generation_config.json'), 'utf8'));
    t.same(gen.eos_token_id, [c.eosTokenIds[0], tok.specialTokens['<|im_end|>']], 'generation stops at eos and <|im_end|>');

    // Values: norms 1, biases 0, matrices N(0, 0.02) (GPT-2 residual projections 0.02 / sqrt(2 n_layer)).
    for (const x of m.tensors) {
      const v = f32(m.readTensor(x.name));
      const st = stats(v);
      if (x.kind === 'norm') t.ok(st.min === 1 && st.max === 1, `${x.name} all ones`);
      else if (x.kind === 'bias') t.ok(st.min === 0 && st.max === 0, `${x.name} all zeros`);
      else {
        const want = arch === 'gpt2' && x.name.endsWith('c_proj.weight') ? 0.02 / Math.sqrt(2 * c.numLayers) : 0.02;
        t.ok(Math.abs(st.std - want) < 0.1 * want, `${x.name} std ${st.std.toFixed(5)} ~ ${want.toFixed(5)}`);
        t.ok(Math.abs(st.mean) < 0.1 * want, `${x.name} mean ${st.mean.toFixed(5)} ~ 0`);
      }
    }
  });
}

t.test('deterministic per seed; distinct per tensor', async (t) => {
  const dir = tmp(t);
  await initModel({ arch: 'llama', preset: 'tiny', outDir: path.join(dir, 'a'), seed: 7 });
  await initModel({ arch: 'llama', preset: 'tiny', outDir: path.join(dir, 'b'), seed: 7 });
  await initModel({ arch: 'llama', preset: 'tiny', outDir: path.join(dir, 'c'), seed: 8 });
  const bytes = (d: string) => fs.readFileSync(path.join(dir, d, 'model.safetensors'));
  t.ok(bytes('a').equals(bytes('b')), 'same seed -> identical file');
  t.notOk(bytes('a').equals(bytes('c')), 'different seed -> different file');
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json'])
    t.ok(fs.readFileSync(path.join(dir, 'a', f)).equals(fs.readFileSync(path.join(dir, 'c', f))), `${f} does not depend on the seed`);
  const a = openModelFolder(path.join(dir, 'a'));
  const c = openModelFolder(path.join(dir, 'c'));
  t.teardown(() => { a.close(); c.close(); });
  const q = a.readTensor('model.layers.0.self_attn.q_proj.weight');
  t.notOk(q.equals(c.readTensor('model.layers.0.self_attn.q_proj.weight')), 'every tensor changes with the seed');
  t.notOk(q.equals(a.readTensor('model.layers.0.self_attn.o_proj.weight')), 'same-shape tensors differ');
  t.notOk(q.subarray(0, 64).equals(a.readTensor('model.layers.1.self_attn.q_proj.weight').subarray(0, 64)), 'layers differ');
  const seeds = new Set(expectedTensors(a.config).map((s) => tensorSeed(7, s.name)));
  t.equal(seeds.size, expectedTensors(a.config).length, 'one seed per tensor');
});

t.test('BF16 weights', async (t) => {
  const out = path.join(tmp(t), 'm');
  await initModel({ arch: 'qwen2', preset: 'tiny', outDir: out, seed: 3, dtype: 'BF16' });
  const m = openModelFolder(out);
  t.teardown(() => m.close());
  t.equal(m.config.torchDtype, 'bfloat16');
  t.ok(m.tensors.every((x) => x.dtype === 'BF16'));
  t.same([...bf16(m.readTensor('model.norm.weight'))], new Array(64).fill(1));
  t.equal(stats(bf16(m.readTensor('model.layers.0.self_attn.q_proj.bias'))).max, 0);
  const st = stats(bf16(m.readTensor('model.embed_tokens.weight')));
  t.ok(Math.abs(st.std - 0.02) < 0.002, `embedding std ${st.std}`);
});

t.test('presets: sizes', async (t) => {
  t.same(Object.keys(PRESETS), ['tiny', 'small', '125m']);
  const out = path.join(tmp(t), 'small');
  const r = await initModel({ arch: 'gpt2', preset: 'small', outDir: out, seed: 0 });
  t.ok(r.parameters > 10e6 && r.parameters < 20e6, `small gpt2 has ${r.parameters} parameters`);
  t.equal(r.weightsBytes, fs.statSync(path.join(out, 'model.safetensors')).size);
});

t.test('refuses a non-empty folder unless forced; argument errors', async (t) => {
  const dir = tmp(t);
  fs.writeFileSync(path.join(dir, 'keep.txt'), 'x');
  await t.rejects(initModel({ arch: 'llama', preset: 'tiny', outDir: dir }), { code: 'E_ARGUMENT', message: /not empty/ });
  t.notOk(fs.existsSync(path.join(dir, 'config.json')), 'nothing written');
  await initModel({ arch: 'llama', preset: 'tiny', outDir: dir, force: true });
  t.ok(fs.existsSync(path.join(dir, 'config.json')) && fs.existsSync(path.join(dir, 'keep.txt')), 'force writes beside existing files');
  for (const bad of [
    { arch: 'llama', preset: 'huge' },
    { arch: 'bert', preset: 'tiny' },
    { arch: 'llama', preset: 'tiny', seed: -1 },
    { arch: 'llama', preset: 'tiny', seed: 1.5 },
    { arch: 'llama', preset: 'tiny', dtype: 'I8' },
  ]) {
    try {
      await initModel({ outDir: path.join(dir, 'x'), ...(bad as object) } as Parameters<typeof initModel>[0]);
      t.fail(`accepted ${JSON.stringify(bad)}`);
    } catch (e) {
      t.equal((e as RlhfError).code, 'E_ARGUMENT', JSON.stringify(bad));
    }
  }
});
