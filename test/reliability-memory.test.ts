/**
 * Resources: the memory estimate of lib/engine/memory.ts against known
 * sizes, a model too large for the limit refused with E_RESOURCE before its
 * weights are read (the folder has none), a stage refused with its estimate
 * and the limit named, and a native allocation that fails becoming
 * E_RESOURCE with the process (and the model) still usable.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { estimateMemory, checkMemory, memoryLimit, parseBytes, loraParameters } from '../lib/engine/memory';
import { parseModelConfig, readModelConfig } from '../lib/model/config';
import { countParameters } from '../lib/model/tensors';
import { loadModel } from '../lib/engine/model';
import { initModel } from '../lib/model/init';
import { runSft } from '../lib/stages/sft';
import { native } from '../lib/native';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-memory-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const LLAMA2_7B = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 4096,
  intermediate_size: 11008,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  num_hidden_layers: 32,
  vocab_size: 32000,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  bos_token_id: 1,
  eos_token_id: 2,
  torch_dtype: 'float16',
};

/** Runs `fn` with RLHF_MEMORY_LIMIT set (restored afterwards). */
async function withLimit<T>(limit: string | undefined, fn: () => Promise<T> | T): Promise<T> {
  const old = process.env.RLHF_MEMORY_LIMIT;
  if (limit === undefined) delete process.env.RLHF_MEMORY_LIMIT;
  else process.env.RLHF_MEMORY_LIMIT = limit;
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env.RLHF_MEMORY_LIMIT;
    else process.env.RLHF_MEMORY_LIMIT = old;
  }
}

t.test('the estimate follows the model and the stage shape', async (t) => {
  const cfg = parseModelConfig(LLAMA2_7B, 'config.json');
  const params = countParameters(cfg);
  t.ok(Math.abs(params - 6.738e9) < 0.01e9, `Llama-2-7B has ${params} parameters`);
  const inf = estimateMemory(cfg, { batch: 1, seq: 128 });
  t.equal(inf.parts.weights, params * 4, 'fp32 weights: 4 bytes a parameter');
  t.equal(inf.parts.gradients + inf.parts.optimizer + inf.parts.adapters + inf.parts.kvCache, 0, 'inference holds no training state');
  const bf16 = estimateMemory(cfg, { weightsDtype: 'bf16' });
  t.ok(bf16.parts.weights < 0.51 * inf.parts.weights && bf16.parts.weights > 0.49 * inf.parts.weights, 'bf16 halves the matrices (norms stay fp32)');
  const full = estimateMemory(cfg, { train: 'full', batch: 1, seq: 512 });
  t.equal(full.parts.gradients, params * 4, 'full training: a gradient per weight');
  t.equal(full.parts.optimizer, params * 8, 'AdamW: two moments per weight');
  t.equal(estimateMemory(cfg, { train: 'full', optimizer: 'sgd' }).parts.optimizer, 0, 'SGD without momentum keeps none');
  const lora = estimateMemory(cfg, { train: 'lora', lora: { r: 16 }, batch: 4, seq: 1024 });
  // PEFT reports 39,976,960 trainable parameters for r=16 on all seven Llama-2-7B projections (+ our 4096-value head row).
  t.equal(loraParameters(cfg, 16), 39976960 + 4096);
  t.equal(lora.parts.adapters, (39976960 + 4096) * 4);
  t.equal(lora.parts.optimizer, 2 * lora.parts.adapters);
  const a1 = estimateMemory(cfg, { train: 'lora', lora: { r: 16 }, batch: 1, seq: 1024 }).parts.activations;
  const a4 = lora.parts.activations;
  t.ok(a4 > 3.9 * a1 - 1e8 && a4 < 4.1 * a1, 'activations grow with the batch');
  const gen = estimateMemory(cfg, { generate: { batch: 8, tokens: 1024 } });
  t.ok(gen.parts.kvCache >= 2 * 32 * 8 * 1024 * 4096 * 4, 'KV cache: 2 x layers x batch x tokens x kv width x 4 bytes');
  t.equal(parseBytes('16G'), 16 * 2 ** 30);
  t.equal(parseBytes('512MiB'), 512 * 2 ** 20);
  t.equal(parseBytes('1000'), 1000);
  t.ok(Number.isNaN(parseBytes('lots')));
  await withLimit('off', () => t.equal(memoryLimit().bytes, Infinity));
  await withLimit('lots', () => t.throws(() => memoryLimit(), { code: 'E_ARGUMENT', message: /RLHF_MEMORY_LIMIT=lots/ }));
  await withLimit(undefined, () => t.ok(memoryLimit().bytes > 0 && memoryLimit().bytes <= os.totalmem(), 'default: available memory'));
});

t.test('a config.json claiming a huge model is refused before any weight is read', async (t) => {
  const dir = path.join(tmp, 'huge');
  fs.mkdirSync(dir);
  // 70B-class shapes; no weight files at all: the refusal must come first.
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...LLAMA2_7B, hidden_size: 8192, intermediate_size: 28672, num_attention_heads: 64, num_key_value_heads: 8, num_hidden_layers: 80 }));
  for (const limit of [undefined, '64G']) {
    const e = (await withLimit(limit, () => loadModel(dir, { device: 'cpu' }).catch((x) => x))) as RlhfError;
    t.type(e, RlhfError);
    t.equal(e.code, 'E_RESOURCE', `limit ${limit ?? 'from the system'}`);
    t.match(e.message, new RegExp(`^loading ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} needs about \\d+\\.\\d GiB of memory \\(weights \\d+\\.\\d GiB`));
    t.match(e.message, /but the limit is [\d.]+ [GM]iB/);
    t.match(e.message, /RLHF_MEMORY_LIMIT/, 'says how to override');
  }
  // With the check off, the next problem shows: there are no weights.
  const e2 = (await withLimit('off', () => loadModel(dir, { device: 'cpu' }).catch((x) => x))) as RlhfError;
  t.equal(e2.code, 'E_MODEL');
  t.match(e2.message, /no weights/);
});

t.test('a stage that cannot fit is refused with its estimate and the limit; nothing is written', async (t) => {
  const base = path.join(tmp, 'tiny');
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  const data = path.join(tmp, 'rows.jsonl');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ input_ids: [1, 5 + i, 9, 12, 40 + i] })).join('\n') + '\n');
  const out = path.join(tmp, 'sft-out');
  const e = (await withLimit('1M', () => runSft({ model: base, data, out, steps: 1, batchSize: 4, device: 'cpu' }, { log: () => {}, handleSigint: false }).catch((x) => x))) as RlhfError;
  t.equal(e.code, 'E_RESOURCE');
  t.match(e.message, /^sft on .* needs about [\d.]+ [KMG]iB of memory \(weights [\d.]+ [KMG]iB, adapters .*, gradients .*, optimizer state .*, activations .*\) but the limit is 1\.0 MiB \(RLHF_MEMORY_LIMIT=1M\)/);
  t.notOk(fs.existsSync(out), 'the output folder was not created');
  // The same run fits the machine.
  const r = await runSft({ model: base, data, out, steps: 1, batchSize: 4, device: 'cpu' }, { log: () => {}, handleSigint: false });
  t.equal(r.steps, 1);
  const est = checkMemory(readModelConfig(base), { train: 'lora', lora: { r: 16 }, batch: 4, seq: 5 }, 'x');
  t.ok(est.estimate.total < 64 * 2 ** 20, `a tiny LoRA run is estimated at ${(est.estimate.total / 2 ** 20).toFixed(1)} MiB`);
});

t.test('CLI: E_RESOURCE is one line and exit 1', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const base = path.join(tmp, 'tiny');
  const data = path.join(tmp, 'rows.jsonl');
  const r = runCli(['sft', '--model', base, '--data', data, '--out', path.join(tmp, 'cli-out'), '--steps', '1', '--device', 'cpu'], { env: { RLHF_MEMORY_LIMIT: '100K' } });
  t.equal(r.status, 1, r.stderr);
  t.equal(r.signal, null);
  const last = r.stderr.trim().split('\n').pop()!;
  t.match(last, /^rlhf-native: error E_RESOURCE: sft on .* needs about .* but the limit is 100\.0 KiB/, 'the error is the last line, one line');
  t.notMatch(r.stderr, /^\s+at /m, 'no stack trace');
});

// ASan's operator new reports out-of-memory and aborts rather than throwing std::bad_alloc, so this one
// cannot run against the sanitizer build (scripts/sanitize-native.sh).
const sanitized = native().info().sanitize === true;
t.test('a native allocation that fails is E_RESOURCE, and the process and the model go on', { skip: sanitized && 'AddressSanitizer build: new aborts on failure' }, async (t) => {
  const base = path.join(tmp, 'tiny');
  const model = await loadModel(base, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const trainer = model.trainer();
  // Rank 2^28 on every projection: terabytes, which no allocator will give.
  const e = t.throws(() => trainer.createLora({ name: 'huge', r: 2 ** 28, alpha: 16, targets: ['q_proj', 'v_proj'], seed: 1 })) as RlhfError;
  t.type(e, RlhfError);
  t.equal(e.code, 'E_RESOURCE');
  t.match(e.message, /out of memory: a native allocation failed/);
  // Still usable: a normal adapter, a forward, a training step.
  trainer.createLora({ name: 'ok', r: 4, alpha: 8, targets: ['q_proj', 'v_proj'], seed: 1 });
  const f = await trainer.forward({ inputIds: [[1, 5, 9, 12]] });
  t.ok(Array.from(f.logp![0]).every(Number.isFinite), 'forward after the failure');
  await trainer.backward({ dlogp: new Float32Array(f.flat.logp!.length).fill(-0.1) });
  const s = await trainer.step({ optimizer: 'adamw', lr: 1e-3 });
  t.ok(Number.isFinite(s.gradNorm) && !s.skipped, 'a step after the failure');
});
