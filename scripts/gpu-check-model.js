// Part 3b of the GPU check: whole-model throughput on the device, ours, and
// the same work in PyTorch (transformers + peft, SDPA attention, bf16) on the
// same card from the same model folder and token ids
// (scripts/gpu-check-torch-model.py).
//
// Workloads (tokens per second; batch x seq tokens per step):
//   forward     log-probs of every next token (frozen weights in bf16)
//   lora_step   LoRA r 16 on all seven projections over a bf16 frozen base:
//               training forward, SFT loss, backward, AdamW
//   full_step   full fine-tuning: fp32 master weights, AdamW
//   decode      greedy generation, new tokens per second
// Size 'gpu': a TinyLlama-shaped model (1.1B parameters: hidden 2048, 22
// layers, 32 heads / 4 KV heads, FFN 5632, vocabulary 32000), batch 8 x 512
// tokens, decode 8 prompts x 64 + 128 new. Size 'dry': a tiny model, to run
// the script end to end without a GPU.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const lib = (p) => require(path.join(root, 'dist', 'lib', p));

const SIZES = {
  gpu: {
    model: { hidden: 2048, layers: 22, heads: 32, kvHeads: 4, ffn: 5632, vocab: 32000, maxPositions: 2048 },
    batch: 8, seq: 512, decodeBatch: 8, prompt: 64, newTokens: 128, repeats: 3,
  },
  dry: {
    model: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 160, vocab: 512, maxPositions: 256 },
    batch: 2, seq: 32, decodeBatch: 2, prompt: 8, newTokens: 8, repeats: 1,
  },
};

// The model folder and token ids come from bench/common.js (the CPU
// benchmarks' LCG ids and random folders), so both engines read the same.
const { median, prepareFolder, randomIds } = require('../bench/common.js');

async function timeIt(repeats, fn) {
  await fn();  // warm-up (allocations, kernel caches)
  const ms = [];
  let last;
  for (let i = 0; i < repeats; i++) {
    const t0 = process.hrtime.bigint();
    last = await fn();
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return { ms: median(ms), last };
}

async function sftStep(model, ids) {
  const { native } = lib('native.js');
  const tr = model.trainer();
  const f = await tr.forward({ inputIds: ids });
  const n = f.flat.logp.length;
  const loss = new Float32Array(1), dlogp = new Float32Array(n);
  native().runOp('sft_loss', { n, logp: f.flat.logp, loss, dlogp });
  await tr.backward({ dlogp });
  await tr.step({ optimizer: 'adamw', lr: 1e-5, maxGradNorm: 1 });
  await tr.zeroGrad();
  return loss[0];
}

// Returns { config, params, rows: [{name, tokens, ms, tokens_per_sec, loss?, error?}], dir, idsFile }.
async function runModelBench({ device, size, workDir, log, deadline = () => false }) {
  const { loadModel } = lib('engine/model.js');
  const S = SIZES[size];
  const t0 = Date.now();
  const dir = prepareFolder(lib('index.js'), `gpu-check-${size}`, S.model, workDir, 'BF16');
  const file = lib('index.js').openSafetensors(path.join(dir, 'model.safetensors'));
  let params = 0;
  for (const t of file.header.tensors) params += t.shape.reduce((a, b) => a * b, 1);
  file.close();
  log(`  model: ${(params / 1e9).toFixed(3)}B parameters (bf16 file), ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const ids = randomIds(S.batch, S.seq, S.model.vocab, 1);
  const prompts = randomIds(S.decodeBatch, S.prompt, S.model.vocab, 2);
  const idsFile = path.join(workDir, 'ids.json');
  fs.writeFileSync(idsFile, JSON.stringify({ ids, prompts, newTokens: S.newTokens, repeats: S.repeats }));
  const rows = [];
  const tokens = S.batch * S.seq;
  const row = async (name, n, fn) => {
    if (deadline()) {
      rows.push({ name, error: 'skipped: time budget' });
      log(`  ${name}: skipped (time budget)`);
      return;
    }
    try {
      const r = await timeIt(S.repeats, fn);
      const out = { name, tokens: n, ms: r.ms, tokens_per_sec: (n * 1000) / r.ms, ...(typeof r.last === 'number' ? { loss: r.last } : {}) };
      rows.push(out);
      log(`  ${name}: ${out.tokens_per_sec.toFixed(0)} tok/s (${r.ms.toFixed(1)} ms median of ${S.repeats})${out.loss !== undefined ? `, loss ${out.loss.toFixed(4)}` : ''}`);
    } catch (e) {
      rows.push({ name, error: `${e.code || 'Error'}: ${e.message}` });
      log(`  ${name}: ERROR ${e.code || ''} ${e.message}`);
    }
  };
  let m = null;
  try {
    m = await loadModel(dir, { device, weightsDtype: 'bf16' });
    await row('forward', tokens, async () => {
      const f = await m.forward({ inputIds: ids });
      let sum = 0;
      for (const x of f.flat.logp) sum += x;
      return -sum / f.flat.logp.length;  // mean NLL: the same number PyTorch's cross-entropy gives
    });
    await row('decode', S.decodeBatch * S.newTokens, async () => {
      await m.generate({ prompts, maxNewTokens: S.newTokens, temperature: 0, eosIds: [] });
    });
    const tr = m.trainer();
    tr.createLora({ r: 16, alpha: 32, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], seed: 1 });
    await row('lora_step', tokens, () => sftStep(m, ids));
  } catch (e) {
    rows.push({ name: 'load (bf16)', error: `${e.code || 'Error'}: ${e.message}` });
    log(`  loading on ${device}: ERROR ${e.code || ''} ${e.message}`);
  } finally {
    if (m) m.dispose();
  }
  m = null;
  try {
    if (!deadline()) {
      m = await loadModel(dir, { device, weightsDtype: 'f32' });
      m.trainer().enableFullTraining();
    }
    await row('full_step', tokens, () => sftStep(m, ids));
  } catch (e) {
    rows.push({ name: 'full_step', error: `${e.code || 'Error'}: ${e.message}` });
    log(`  full_step: ERROR ${e.code || ''} ${e.message}`);
  } finally {
    if (m) m.dispose();
  }
  return { config: S, params, rows, dir, idsFile };
}

module.exports = { runModelBench, SIZES };
