/**
 * `rlhf-native bench --smoke` through the CLI: every workload runs on a tiny
 * model and reports well-formed JSON lines. Benchmarks are not tests: no
 * speed is asserted here, only that the fields are there and make sense.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCli, cliBuilt } from './helpers/cli';
import { runtimeInfo } from '../lib/info';

const skip = !cliBuilt() && 'CLI not compiled';

const STAGES = ['forward', 'decode_b1', 'decode_b8', 'sft_full', 'sft_lora', 'rm_step', 'ppo_rollout', 'ppo_update'];
const KERNELS = ['gemm', 'attention_fwd', 'attention_bwd', 'lm_head_fwd', 'lm_head_bwd', 'ppo_loss', 'adamw'];

type Row = Record<string, any>;
const lines = (stdout: string): Row[] => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const isNum = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);

t.test('bench --smoke --json: every workload, with its fields', { skip }, async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-bench-'));
  try {
    const r = runCli(['bench', '--smoke', '--json', '--out', out], { env: { RLHF_NUM_THREADS: '2' } });
    t.equal(r.status, 0, r.stderr);
    const all = lines(r.stdout);
    t.equal(all[0].name, 'meta', 'meta first');
    t.equal(all[0].smoke, true);
    t.equal(all[all.length - 1].name, 'done', 'done last');
    t.ok(isNum(all[all.length - 1].seconds));
    const peak = all.find((x) => x.name === 'peak');
    t.ok(peak && isNum(peak.peak_gflops) && peak.peak_gflops > 0, 'a matmul peak measured in the run');
    const rows = all.filter((x) => x.kind === 'stage' || x.kind === 'kernel');
    t.same([...new Set(rows.map((x) => x.name))].sort(), [...STAGES, ...KERNELS].sort(), 'one row (or more: gemm shapes) per workload');
    for (const x of rows) {
      const id = `${x.name} (${x.workload})`;
      t.equal(x.kind, STAGES.includes(x.name) ? 'stage' : 'kernel', `${id}: kind`);
      t.equal(x.device, 'cpu', `${id}: device`);
      t.equal(x.config, 'tiny', `${id}: config`);
      t.notOk(x.error, `${id}: no error (${x.error})`);
      t.ok(isNum(x.median_ms) && isNum(x.min_ms) && isNum(x.max_ms), `${id}: times`);
      t.ok(x.min_ms <= x.median_ms && x.median_ms <= x.max_ms, `${id}: min <= median <= max`);
      t.ok(isNum(x.tokens_per_sec) || isNum(x.gflops) || isNum(x.elements_per_sec), `${id}: a rate`);
      t.ok(x.mfu === null || isNum(x.mfu), `${id}: mfu is a number or null`);
      if (isNum(x.flops)) t.ok(isNum(x.mfu) && isNum(x.gflops), `${id}: counted FLOPs give GFLOP/s and MFU`);
      t.equal(x.peer, null, `${id}: no peer in smoke mode`);
      t.equal(x.ratio, null, `${id}: no ratio without a peer`);
      if (x.check) t.not(x.check.ok, false, `${id}: ${x.check.what}: ${x.check.text}`);
    }
    for (const n of STAGES) t.ok(isNum(rows.find((x) => x.name === n)?.tokens_per_sec), `${n}: tokens/sec`);
    for (const n of ['gemm', 'attention_fwd', 'attention_bwd', 'lm_head_fwd', 'lm_head_bwd']) t.ok(isNum(rows.find((x) => x.name === n)?.gflops), `${n}: GFLOP/s`);
    for (const n of ['attention_fwd', 'attention_bwd', 'lm_head_fwd', 'lm_head_bwd', 'ppo_loss', 'adamw']) {
      const x = rows.find((y) => y.name === n)!;
      t.ok(x.unfused && isNum(x.unfused.median_ms) && isNum(x.fused_speedup), `${n}: the unfused baseline is timed`);
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

t.test('bench --only picks workloads; the table is printed without --json', { skip }, async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-bench-'));
  try {
    const r = runCli(['bench', '--smoke', '--json', '--only', 'decode,adamw', '--out', out]);
    t.equal(r.status, 0, r.stderr);
    const names = lines(r.stdout).filter((x) => x.kind).map((x) => x.name);
    t.same(names, ['decode_b1', 'decode_b8', 'adamw']);
    const table = runCli(['bench', '--smoke', '--only', 'forward', '--out', out]);
    t.equal(table.status, 0, table.stderr);
    t.match(table.stdout, /\| config \| workload \|/);
    t.match(table.stdout, /\| tiny \| forward b2x32 \|/);
    const bad = runCli(['bench', '--smoke', '--only', 'nonsense']);
    t.equal(bad.status, 1);
    t.match(bad.stderr, /^rlhf-native: error E_ARGUMENT: --only: unknown workload 'nonsense'/);
    t.equal(bad.stderr.trim().split('\n').length, 1, 'one line');
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

t.test('bench --device cuda', { skip }, async (t) => {
  const gpu = runtimeInfo().cuda.devices.length > 0;
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-bench-'));
  try {
    const r = runCli(['bench', '--smoke', '--json', '--device', 'cuda', '--out', out]);
    if (!gpu) {
      t.equal(r.status, 1, 'no GPU: an error');
      t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
      t.match(r.stderr, /^rlhf-native: error E_CUDA: --device cuda: /);
      t.equal(r.stdout, '');
    } else {
      t.equal(r.status, 0, r.stderr);
      const rows = lines(r.stdout).filter((x) => x.kind);
      t.ok(rows.length > 0);
      for (const x of rows) t.equal(x.device, 'cuda');
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
