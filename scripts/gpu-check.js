#!/usr/bin/env node
// GPU check of the CUDA backend, in one run (scripts/gpu-check.sh wraps it):
//   1. parity: every op of the op table, CUDA vs CPU, on fresh random inputs
//      (odd sizes included; cases in scripts/gpu-check-cases.js) -> parity.json
//   2. training: 20 LoRA and 20 full SFT steps and one PPO iteration of the
//      stages on the device against the CPU, same seed and data, and one
//      micro-batch of each loss kind through the loss API
//      (scripts/gpu-check-train.js) -> training.json
//   3. benchmarks: the fused kernels (below), and the whole model
//      (scripts/gpu-check-model.js: forward, LoRA step, full step, decode on a
//      1.1B Llama) against transformers + peft -> model.json; and of the fused kernels on device-resident data (GEMM bf16
//      4096^3, attention forward + backward, fused LM head, PPO loss) and, when
//      python3 with a CUDA torch is there, the same shapes in PyTorch on the
//      same card (torch.matmul, scaled_dot_product_attention, matmul +
//      log_softmax + gather) -> bench.json, torch.json
//   4. a short table, printed last; summary.json.
// Dry run (--dry-run, or no usable GPU): the same path with device
// 'cpu-copy' (the CPU backend through runOp's copy-in/copy-out path) in place
// of CUDA for the ops, and 'cpu-guarded' (the model's device-memory path on
// guarded host memory, exact) for the training stages; GPU-only benchmarks
// are skipped with a line saying so. Exit status: 0 when every parity case
// and every training check passes.
//
// Runs from the package's dist/ and build/ and its production node_modules
// only (no TypeScript, no dev dependencies). Usage:
//   node scripts/gpu-check.js OUT_DIR [--dry-run] [--quick] [--no-torch] [--no-train] [--no-model]
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const argv = process.argv.slice(2);
const outDir = argv.find((a) => !a.startsWith('--'));
if (!outDir) {
  process.stderr.write('usage: node scripts/gpu-check.js OUT_DIR [--dry-run] [--quick] [--no-torch] [--no-train] [--no-model]\n');
  process.exit(2);
}
const flag = (f) => argv.includes(f);
const started = Date.now();
const DEADLINE_MS = Number(process.env.GPU_CHECK_DEADLINE_S || 330) * 1000;  // stays under 6 minutes
const elapsed = () => (Date.now() - started) / 1000;
const log = (s) => process.stdout.write(s + '\n');
fs.mkdirSync(outDir, { recursive: true });
const writeJson = (name, obj) => fs.writeFileSync(path.join(outDir, name), JSON.stringify(obj, null, 2) + '\n');

function loadNative() {
  const dist = path.join(root, 'dist', 'lib', 'native.js');
  if (fs.existsSync(dist)) return require(dist).native();
  return require(path.join(root, 'build', 'Release', 'rlhf_native.node'));  // no dist/: the addon itself
}

async function main() {
  const native = loadNative();
  const { makeCases, checkCase } = require('./gpu-check-cases.js');
  const info = native.info();
  const gpu = info.cuda.devices.length > 0;
  const dry = flag('--dry-run') || !gpu;
  const device = dry ? 'cpu-copy' : 'cuda';
  const env = {
    node: process.version,
    cpu: info.cpu,
    cuda: info.cuda,
    mode: dry ? 'dry-run' : 'gpu',
    device,
    started: new Date(started).toISOString(),
  };
  log(`rlhf-native gpu-check: ${dry ? 'DRY RUN' : 'GPU'} -> ${path.resolve(outDir)}`);
  if (gpu) for (const d of info.cuda.devices) log(`  device ${d.index}: ${d.name} (sm_${d.computeCapability ? d.computeCapability.replace('.', '') : '?'})`);
  if (dry) {
    const why = flag('--dry-run') ? '--dry-run given' : `no usable GPU: ${info.cuda.error || (info.cuda.compiled ? 'no device' : 'addon built without CUDA')}`;
    log(`  ${why}; comparing the CPU backend with itself through runOp's copy-in/copy-out path (device 'cpu-copy')`);
    try {
      native.runOp('add', { n: 1, dim: 1, x: new Float32Array(1), y: new Float32Array(1), device: 'cuda' });
      log('  note: the CUDA backend ran although no GPU was reported');
    } catch (e) {
      log(`  device 'cuda' refuses cleanly: ${e.code}: ${String(e.message).split('\n')[0]}`);
      env.cudaError = { code: e.code, message: e.message };
    }
  }
  writeJson('env.json', env);

  // ------------------------------------------------------------------ 1. parity
  const run = (name, args) => native.runOp(name, args);
  const cases = makeCases(run, flag('--quick') ? 'small' : 'full');
  const results = [];
  log(`\n[1/3] parity: ${cases.length} cases over ${new Set(cases.map((c) => c.op)).size} ops, ${device} vs cpu`);
  for (const c of cases) {
    let r;
    try {
      r = checkCase(c, run, device);
    } catch (e) {
      r = { op: c.op, case: c.label, device, tol: c.tol, pass: false, error: `${e.code || 'Error'}: ${e.message}` };
    }
    results.push(r);
    if (!r.pass) log(`  FAIL ${c.op} [${c.label}]: ${r.error || JSON.stringify(r.outputs)}`);
  }
  writeJson('parity.json', { device, results });
  const failed = results.filter((r) => !r.pass);
  log(`  ${results.length - failed.length}/${results.length} cases pass (${elapsed().toFixed(1)} s)`);

  // ------------------------------------------------------------------ 2. training
  const trainDevice = dry ? 'cpu-guarded' : 'cuda';
  let training = [];
  log(`\n[2/3] training stages: ${trainDevice} vs cpu`);
  if (flag('--no-train')) {
    log('  skipped (--no-train)');
  } else {
    try {
      const { runTrainingParity } = require('./gpu-check-train.js');
      training = await runTrainingParity({ device: trainDevice, workDir: path.join(outDir, 'train-work'), log, exact: dry });
    } catch (e) {
      training = [{ what: 'training stages', pass: false, error: `${e.code || 'Error'}: ${e.message}` }];
      log(`  FAIL: ${e.code || 'Error'}: ${e.message}`);
    }
    log(`  (${elapsed().toFixed(1)} s)`);
  }
  writeJson('training.json', { device: trainDevice, checks: training });
  const trainFailed = training.filter((c) => !c.pass);

  // ------------------------------------------------------------------ 3. benchmarks
  const benches = [
    { name: 'gemm_bf16', params: { m: 4096, n: 4096, k: 4096, repeat: 20 }, what: 'GEMM bf16 4096^3 (A B^T)' },
    { name: 'gemm_f32', params: { m: 4096, n: 4096, k: 4096, repeat: 10 }, what: 'GEMM op, fp32 in -> bf16 tensor cores, 4096^3' },
    { name: 'attention', params: { batch: 4, seq: 2048, heads: 32, kvHeads: 8, headDim: 128, repeat: 3 }, what: 'attention causal b4 T2048 h32/8 d128' },
    { name: 'attention', params: { batch: 8, seq: 1024, heads: 16, kvHeads: 16, headDim: 64, repeat: 3 }, what: 'attention causal b8 T1024 h16 d64' },
    { name: 'lm_head', params: { n: 4096, dim: 2048, vocab: 32000, repeat: 5 }, what: 'LM head logp n4096 d2048 V32000 (fp32 W)' },
    { name: 'lm_head', params: { n: 4096, dim: 2048, vocab: 32000, bf16: true, repeat: 5 }, what: 'LM head logp n4096 d2048 V32000 (bf16 W)' },
    { name: 'ppo_loss', params: { n: 1 << 20, repeat: 20 }, what: 'PPO loss fwd+bwd, 1M tokens' },
  ];
  const benchResults = [];
  log(`\n[3/3] benchmarks`);
  if (dry) {
    log('  skipped: the kernel benchmarks are GPU-only (no CUDA device in this run)');
  } else {
    for (const b of benches) {
      if (Date.now() - started > DEADLINE_MS - 60000) {
        log(`  skipped ${b.what}: time budget`);
        continue;
      }
      try {
        const r = native.cudaBench(b.name, b.params);
        benchResults.push({ ...b, result: r });
        log(`  ${b.what}: ${JSON.stringify(r)}`);
      } catch (e) {
        benchResults.push({ ...b, error: `${e.code || 'Error'}: ${e.message}` });
        log(`  ${b.what}: ERROR ${e.code}: ${e.message}`);
      }
    }
  }
  writeJson('bench.json', { device: dry ? null : info.cuda.devices[0], results: benchResults, skipped: dry ? 'GPU-only' : undefined });

  // PyTorch on the same card, same shapes.
  let torch = null;
  const python = process.env.PYTHON || 'python3';
  if (dry) {
    log('  skipped: PyTorch comparison (GPU-only)');
  } else if (flag('--no-torch')) {
    log('  skipped: PyTorch comparison (--no-torch)');
  } else if (Date.now() - started > DEADLINE_MS - 45000) {
    log('  skipped: PyTorch comparison (time budget)');
  } else {
    const r = spawnSync(python, [path.join(__dirname, 'gpu-check-torch.py')], {
      encoding: 'utf8',
      timeout: Math.max(10000, DEADLINE_MS - (Date.now() - started) - 15000),
    });
    if (r.error || r.status !== 0) {
      log(`  skipped: PyTorch comparison (${r.error ? r.error.message : (r.stderr || '').trim().split('\n').pop() || `exit ${r.status}`})`);
    } else {
      try {
        torch = JSON.parse(r.stdout.trim().split('\n').pop());
        log(`  torch ${torch.version} on ${torch.device}: ${JSON.stringify(torch.results)}`);
      } catch (e) {
        log(`  skipped: PyTorch comparison (unreadable output: ${e.message})`);
      }
    }
  }
  writeJson('torch.json', torch || { skipped: true });

  // Whole model: ours on the device, then transformers + peft on the same card.
  let modelBench = null, torchModel = null;
  log(`\n  whole model (${dry ? "tiny, 'cpu-guarded'" : '1.1B Llama, cuda'}):`);
  if (flag('--no-model')) {
    log('  skipped (--no-model)');
  } else {
    try {
      const { runModelBench } = require('./gpu-check-model.js');
      modelBench = await runModelBench({
        device: trainDevice, size: dry ? 'dry' : 'gpu', workDir: path.join(outDir, 'model-work'), log,
        deadline: () => Date.now() - started > DEADLINE_MS - 75000,
      });
    } catch (e) {
      log(`  ERROR ${e.code || ''} ${e.message}`);
    }
    if (dry || flag('--no-torch')) {
      log(`  skipped: transformers + peft on the same card (${dry ? 'GPU-only' : '--no-torch'})`);
    } else if (!modelBench || Date.now() - started > DEADLINE_MS - 40000) {
      log('  skipped: transformers + peft (no model of ours, or time budget)');
    } else {
      const r = spawnSync(python, [path.join(__dirname, 'gpu-check-torch-model.py'), modelBench.dir, modelBench.idsFile], {
        encoding: 'utf8',
        timeout: Math.max(10000, DEADLINE_MS - (Date.now() - started) - 10000),
      });
      try {
        torchModel = JSON.parse((r.stdout || '').trim().split('\n').pop());
        log(`  torch ${torchModel.torch}, transformers ${torchModel.transformers}, peft ${torchModel.peft || '-'}: ${JSON.stringify(torchModel.rows)}`);
      } catch (e) {
        log(`  skipped: transformers + peft (${r.error ? r.error.message : (r.stderr || '').trim().split('\n').pop() || `exit ${r.status}`})`);
      }
    }
  }
  writeJson('model.json', { ours: modelBench && { device: trainDevice, config: modelBench.config, params: modelBench.params, rows: modelBench.rows }, torch: torchModel });

  // ------------------------------------------------------------------ 3. table
  const byOp = new Map();
  for (const r of results) {
    const s = byOp.get(r.op) || { cases: 0, pass: 0, worst: 0, tol: r.tol };
    s.cases += 1;
    s.pass += r.pass ? 1 : 0;
    s.worst = Math.max(s.worst, r.worst || 0);
    s.tol = Math.max(s.tol, r.tol);
    byOp.set(r.op, s);
  }
  const pad = (s, n) => String(s).padEnd(n);
  const lpad = (s, n) => String(s).padStart(n);
  log(`\n==== parity (${device} vs cpu): max |err| / max |ref| per op ====`);
  log(`${pad('op', 24)}${lpad('cases', 6)}${lpad('worst', 11)}${lpad('tol', 9)}  status`);
  for (const [op, s] of byOp)
    log(`${pad(op, 24)}${lpad(s.cases, 6)}${lpad(s.worst.toExponential(2), 11)}${lpad(s.tol.toExponential(0), 9)}  ${s.pass === s.cases ? 'ok' : `FAIL (${s.cases - s.pass})`}`);
  log(`\n==== training (${trainDevice} vs cpu) ====`);
  for (const c of training) log(`${pad(c.what, 30)}${c.pass ? 'ok' : 'FAIL'}${c.worstRel !== undefined ? `  worst rel loss diff ${c.worstRel.toExponential(2)} (tol ${c.tol})` : ''}${c.diff ? `  d(reward) ${c.diff.reward.toExponential(2)}` : ''}${c.error ? '  ' + c.error : ''}`);
  log(`\n==== whole model, tokens/s (${trainDevice}${torchModel ? ' vs transformers + peft' : ''}) ====`);
  if (modelBench) {
    log(`${pad('workload', 14)}${lpad('ours', 12)}${lpad('torch', 12)}${lpad('ours/torch', 12)}${lpad('loss ours', 11)}${lpad('torch', 9)}`);
    for (const r of modelBench.rows) {
      const t = torchModel ? torchModel.rows.find((x) => x.name === r.name) : null;
      const ours = r.tokens_per_sec, theirs = t && t.tokens_per_sec;
      const f = (x, d = 0) => (x === undefined || x === null ? '-' : Number(x).toFixed(d));
      log(`${pad(r.name, 14)}${lpad(r.error ? 'ERROR' : f(ours), 12)}${lpad(f(theirs), 12)}${lpad(ours && theirs ? (ours / theirs).toFixed(2) : '-', 12)}${lpad(f(r.loss, 4), 11)}${lpad(f(t && t.loss, 4), 9)}`);
    }
  } else log('not run');
  log(`\n==== kernel benchmarks ====`);
  if (dry) {
    log('GPU-only: skipped in the dry run');
  } else {
    const tq = (key) => (torch && torch.results ? torch.results[key] : undefined);
    const fmt = (x, d = 1) => (x === undefined || x === null ? '-' : Number(x).toFixed(d));
    log(`${pad('kernel', 46)}${lpad('ours', 12)}${lpad('torch', 12)}`);
    for (const b of benchResults) {
      if (b.error) {
        log(`${pad(b.what, 46)}  ERROR`);
        continue;
      }
      const r = b.result;
      if (b.name === 'gemm_bf16') log(`${pad(b.what + ' TFLOP/s', 46)}${lpad(fmt(r.tflops), 12)}${lpad(fmt(tq('matmul_bf16_tflops')), 12)}`);
      else if (b.name === 'gemm_f32') log(`${pad(b.what + ' TFLOP/s', 46)}${lpad(fmt(r.tflops), 12)}${lpad('-', 12)}`);
      else if (b.name === 'attention') {
        const key = `sdpa_b${b.params.batch}_t${b.params.seq}_h${b.params.heads}_${b.params.kvHeads}_d${b.params.headDim}`;
        log(`${pad(b.what + ' fwd ms', 46)}${lpad(fmt(r.fwdMs, 2), 12)}${lpad(fmt(tq(key + '_fwd_ms'), 2), 12)}`);
        log(`${pad(b.what + ' bwd ms', 46)}${lpad(fmt(r.bwdMs, 2), 12)}${lpad(fmt(tq(key + '_bwd_ms'), 2), 12)}`);
      } else if (b.name === 'lm_head') {
        const key = b.params.bf16 ? 'lm_head_bf16' : 'lm_head_f32';
        log(`${pad(b.what + ' fwd ms', 46)}${lpad(fmt(r.fwdMs, 2), 12)}${lpad(fmt(tq(key + '_fwd_ms'), 2), 12)}`);
        log(`${pad(b.what + ' bwd ms', 46)}${lpad(fmt(r.bwdMs, 2), 12)}${lpad(fmt(tq(key + '_bwd_ms'), 2), 12)}`);
      } else if (b.name === 'ppo_loss') log(`${pad(b.what + ' ms', 46)}${lpad(fmt(r.ms, 3), 12)}${lpad(fmt(tq('ppo_loss_ms'), 3), 12)}`);
    }
  }
  const summary = {
    mode: env.mode,
    device,
    cases: results.length,
    passed: results.length - failed.length,
    failed: failed.map((r) => `${r.op} [${r.case}]`),
    training: training.map((c) => ({ what: c.what, pass: c.pass })),
    ops: Object.fromEntries([...byOp].map(([op, s]) => [op, s])),
    seconds: elapsed(),
  };
  writeJson('summary.json', summary);
  log(`\n${summary.passed}/${summary.cases} parity cases pass; ${training.length - trainFailed.length}/${training.length} training checks pass; ${elapsed().toFixed(1)} s; results in ${path.resolve(outDir)}`);
  process.exit(failed.length || trainFailed.length ? 1 : 0);
}

main().catch((e) => {
  log(`gpu-check: ${e.code || 'Error'}: ${e.stack || e.message}`);
  process.exit(1);
});
