/**
 * Data-parallel training over MPI (docs/distributed.md): `mpirun -np 2` runs
 * of SFT (LoRA and full), RM and DPO against the single-process run of the
 * same global batch (the reference): the saved weights and every step's
 * figures agree within 1e-5 relative; rank 1 writes nothing and prints
 * nothing; a stage that cannot split its work refuses; a killed rank ends
 * the job with an error instead of leaving the other rank waiting; a stop
 * by SIGTERM ends every rank after the same step and resumes.
 * Skipped, with the reason, where mpirun is not installed.
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliBuilt, runCli, CLI, ROOT } from './helpers/cli';
import { initModel } from '../lib/model/init';
import { readSafetensorsAsF64, openSafetensors } from '../lib/safetensors';

const mpirunFound = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0;
const skip = !cliBuilt() ? 'CLI not compiled' : !mpirunFound ? 'mpirun not found (install OpenMPI: apt-get install openmpi-bin)' : false;
const MPIRUN = ['--allow-run-as-root', '--oversubscribe', '--bind-to', 'none'];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-dist-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const model = path.join(tmp, 'm');
const sftData = path.join(tmp, 'sft.jsonl');
const pairData = path.join(tmp, 'pairs.jsonl');

t.before(async () => {
  if (!cliBuilt()) return;
  await initModel({ arch: 'qwen2', preset: 'tiny', outDir: model, seed: 5 });
  // Rows of different lengths (padding differs between the shards and the whole), 10 rows:
  // with --batch-size 3 the last micro-batch of an epoch has one row, so one rank's shard of it is empty.
  fs.writeFileSync(sftData, Array.from({ length: 10 }, (_, i) => JSON.stringify({ prompt: `Q${i}: the sky${' is'.repeat(i % 4)}?`, completion: ` Blue${'.'.repeat(1 + (i % 3))}` })).join('\n') + '\n');
  fs.writeFileSync(
    pairData,
    Array.from({ length: 10 }, (_, i) => JSON.stringify({ prompt: `Tell me about item ${i}${' now'.repeat(i % 3)}.`, chosen: ` Gladly, item ${i} is fine${'!'.repeat(i % 2)}`, rejected: ` No.${' no'.repeat(i % 4)}` })).join('\n') + '\n',
  );
});

/** The run as one process and as `mpirun -np 2`, each rank on one thread. */
function runBoth(args: string[], tag: string, device2 = 'cpu'): { one: string; two: string; stdout: string; stderr: string } {
  const one = path.join(tmp, `${tag}-1`), two = path.join(tmp, `${tag}-2`);
  const r1 = runCli([...args, '--out', one, '--device', 'cpu', '--threads', '1']);
  if (r1.status !== 0) throw new Error(`single process: ${r1.stderr}`);
  const r2 = spawnSync('mpirun', [...MPIRUN, '-np', '2', process.execPath, CLI, ...args, '--out', two, '--device', device2, '--threads', '1'], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 180_000,
    env: { ...process.env, RLHF_DEBUG: '' },
  });
  if (r2.status !== 0) throw new Error(`mpirun -np 2 (status ${r2.status}, signal ${r2.signal}): ${r2.stderr}`);
  return { one, two, stdout: r2.stdout, stderr: r2.stderr };
}

/**
 * Keys' biases get a gradient that is zero in exact arithmetic (a query's
 * scores all move by the same q.b_k, which softmax ignores): what they hold
 * after AdamW is rounding noise scaled up to lr-sized steps, in one process
 * as in two, so they are left out of the comparison.
 */
const NOISE_ONLY = /k_proj\.bias$/;

/**
 * The largest per-tensor relative difference ||a - b|| / ||b - base|| over a
 * file's tensors (b: the single-process run; base: zero, or the initial
 * weights to compare updates), and the smallest ||b - base|| (how far the
 * reference moved, so that a tensor nothing touched cannot pass unnoticed).
 */
function relDiff(t: Tap.Test, fileA: string, fileB: string, base?: string): { rel: number; worst: string; moved: number } {
  const names = openSafetensors(fileB).header.tensors.map((x) => x.name);
  t.same(openSafetensors(fileA).header.tensors.map((x) => x.name), names, 'the same tensors');
  let rel = 0, worst = '', moved = Infinity;
  for (const n of names.filter((x) => !NOISE_ONLY.test(x))) {
    const a = readSafetensorsAsF64(fileA, n).values, b = readSafetensorsAsF64(fileB, n).values;
    const z = base ? readSafetensorsAsF64(base, n).values : null;
    let d2 = 0, b2 = 0;
    for (let i = 0; i < b.length; i++) {
      d2 += (a[i] - b[i]) ** 2;
      b2 += (b[i] - (z ? z[i] : 0)) ** 2;
    }
    const r = b2 > 0 ? Math.sqrt(d2 / b2) : Math.sqrt(d2);
    if (r > rel) [rel, worst] = [r, n];
    moved = Math.min(moved, Math.sqrt(b2));
  }
  return { rel, worst, moved };
}

function metrics(dir: string): Record<string, number>[] {
  return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

/** Every figure of every step but the timings, within 1e-5 relative. */
function sameMetrics(t: Tap.Test, one: string, two: string): void {
  const a = metrics(one), b = metrics(two);
  t.equal(b.length, a.length, 'as many metrics lines');
  let worst = 0, what = '';
  for (let i = 0; i < a.length; i++)
    for (const [k, v] of Object.entries(a[i])) {
      if (k === 'elapsed_s' || k === 'tokens_per_sec') continue;
      const d = Math.abs((b[i][k] as number) - v) / Math.max(Math.abs(v), 1e-12);
      if (!(d <= worst)) [worst, what] = [d, `${k} at line ${i + 1}: ${b[i][k]} vs ${v}`];
    }
  t.ok(worst <= 1e-5, `metrics agree within 1e-5 relative (worst ${worst.toExponential(2)}${what ? `, ${what}` : ''})`);
}

/** Rank 0 alone prints the summary; the output folders hold the same files. */
function rankZeroOnly(t: Tap.Test, r: { one: string; two: string; stdout: string; stderr: string }, stage: string): void {
  const summary = r.stdout.trim().split('\n');
  t.equal(summary.length, 1, `one summary line: ${r.stdout}`);
  t.match(summary[0], new RegExp(`^${stage}: `));
  t.match(r.stderr, /data-parallel over 2 ranks/);
  t.equal(r.stderr.split('\n').filter((l) => / step 1\/\d+ /.test(l)).length, 1, 'one progress line per step');
  t.same(fs.readdirSync(r.two).sort(), fs.readdirSync(r.one).sort(), 'the same files');
}

const COMMON = ['--model', model, '--steps', '3', '--batch-size', '3', '--grad-accum', '2', '--seed', '3'];

t.test('SFT with a LoRA adapter: 2 ranks give the weights and figures of one process', { skip }, async (t) => {
  const r = runBoth(['sft', ...COMMON, '--data', sftData, '--lr', '1e-3', '--lora-r', '4'], 'sft-lora');
  rankZeroOnly(t, r, 'sft');
  sameMetrics(t, r.one, r.two);
  const f = (d: string) => path.join(d, 'adapter_model.safetensors');
  const w = relDiff(t, f(r.two), f(r.one));
  t.ok(w.rel <= 1e-5, `adapter within 1e-5 relative (max ${w.rel.toExponential(2)}, ${w.worst})`);
  // lora_B starts at zero, so each has moved only by training; an untouched one would show here.
  const b = relDiff(t, f(r.one), f(r.one), undefined);
  t.ok(b.moved > 1e-3, `every tensor is away from zero (smallest norm ${b.moved.toExponential(2)})`);
});

t.test('SFT full fine-tuning: 2 ranks give the weights of one process', { skip }, async (t) => {
  const r = runBoth(['sft', ...COMMON, '--data', sftData, '--lr', '1e-4', '--full'], 'sft-full');
  rankZeroOnly(t, r, 'sft');
  sameMetrics(t, r.one, r.two);
  const f = (d: string) => path.join(d, 'model.safetensors');
  const init = path.join(model, 'model.safetensors');
  const w = relDiff(t, f(r.two), f(r.one));
  t.ok(w.rel <= 1e-5, `weights within 1e-5 relative (max ${w.rel.toExponential(2)}, ${w.worst})`);
  // The updates themselves (the weights would hide a wrong update under their size): AdamW turns rounding into
  // lr-sized steps where a gradient element is near zero, hence the looser bound.
  const u = relDiff(t, f(r.two), f(r.one), init);
  t.ok(u.moved > 0, `every tensor moved (smallest update norm ${u.moved.toExponential(2)})`);
  t.ok(u.rel <= 1e-4, `updates within 1e-4 relative (max ${u.rel.toExponential(2)}, ${u.worst})`);
});

t.test('device memory (cpu-guarded: the gradient slab staged through the host, as a CUDA model does it): 2 ranks give the weights of one process', { skip }, async (t) => {
  const r = runBoth(['sft', ...COMMON, '--data', sftData, '--lr', '1e-3', '--lora-r', '4'], 'sft-guarded', 'cpu-guarded');
  sameMetrics(t, r.one, r.two);
  const w = relDiff(t, path.join(r.two, 'adapter_model.safetensors'), path.join(r.one, 'adapter_model.safetensors'));
  t.ok(w.rel <= 1e-5, `adapter within 1e-5 relative (max ${w.rel.toExponential(2)}, ${w.worst})`);
});

t.test('RM: 2 ranks give the adapter and score head of one process', { skip }, async (t) => {
  const r = runBoth(['rm', ...COMMON, '--data', pairData, '--lr', '1e-3', '--lora-r', '4'], 'rm');
  rankZeroOnly(t, r, 'rm');
  sameMetrics(t, r.one, r.two);
  const w = relDiff(t, path.join(r.two, 'adapter_model.safetensors'), path.join(r.one, 'adapter_model.safetensors'));
  t.ok(w.rel <= 1e-5, `adapter within 1e-5 relative (max ${w.rel.toExponential(2)}, ${w.worst})`);
});

t.test('DPO: 2 ranks give the adapter of one process', { skip }, async (t) => {
  const r = runBoth(['dpo', ...COMMON, '--data', pairData, '--lr', '1e-3', '--lora-r', '4'], 'dpo');
  rankZeroOnly(t, r, 'dpo');
  sameMetrics(t, r.one, r.two);
  const w = relDiff(t, path.join(r.two, 'adapter_model.safetensors'), path.join(r.one, 'adapter_model.safetensors'));
  t.ok(w.rel <= 1e-5, `adapter within 1e-5 relative (max ${w.rel.toExponential(2)}, ${w.worst})`);
});

t.test('a stage that cannot split its work refuses a world of 2 (E_UNSUPPORTED), on every rank', { skip }, async (t) => {
  const kto = path.join(tmp, 'kto.jsonl');
  fs.writeFileSync(kto, Array.from({ length: 4 }, (_, i) => JSON.stringify({ prompt: `P${i}`, completion: ` C${i}`, label: i % 2 === 0 })).join('\n') + '\n');
  const r = spawnSync('mpirun', [...MPIRUN, '-np', '2', process.execPath, CLI, 'kto', '--model', model, '--data', kto, '--out', path.join(tmp, 'kto'), '--device', 'cpu'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.not(r.status, 0);
  t.equal(r.signal, null, 'ended by itself, not by the test timeout');
  t.match(r.stderr, /E_UNSUPPORTED: kto does not train data-parallel yet \(world of 2 ranks from openmpi\)/);
  t.notOk(fs.existsSync(path.join(tmp, 'kto', 'adapter_model.safetensors')));
});

t.test('a killed rank ends the job with an error within seconds (no rank left waiting)', { skip }, async (t) => {
  // Rank 1 is SIGKILLed 3 s into a long run; rank 0 is then inside (or next enters) an all-reduce.
  const args = ['sft', '--model', model, '--data', sftData, '--out', path.join(tmp, 'killed'), '--steps', '100000', '--batch-size', '2', '--lora-r', '4', '--device', 'cpu', '--threads', '1'];
  const script = `if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then (sleep 3; kill -9 $$) & fi; exec "${process.execPath}" "${CLI}" ${args.map((a) => `'${a}'`).join(' ')}`;
  const started = Date.now();
  const child = spawn('mpirun', [...MPIRUN, '-np', '2', 'bash', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.on('data', (d) => (stderr += d)); // mpirun reports on either stream
  const limit = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  clearTimeout(limit);
  const seconds = (Date.now() - started) / 1000;
  t.equal(signal, null, `mpirun ended by itself (after ${seconds.toFixed(1)} s), not by the test's 60 s limit`);
  t.not(code, 0, 'a non-zero exit status');
  t.ok(seconds < 45, `ended within seconds of the kill (${seconds.toFixed(1)} s in all)`);
  t.match(stderr, /signal 9|Killed|exited on signal/i, 'mpirun names the killed rank');
});

t.test('a rank that fails with an error ends every rank (mpirun ends the job), the error on stderr', { skip }, async (t) => {
  // Rank 1 is given data that does not exist: it fails after MPI is up, while rank 0 goes on to its first all-reduce.
  const common = ['sft', '--model', model, '--out', path.join(tmp, 'one-fails'), '--steps', '50', '--batch-size', '2', '--lora-r', '4', '--device', 'cpu', '--threads', '1'];
  const started = Date.now();
  const r = spawnSync('mpirun', [...MPIRUN, '-np', '1', process.execPath, CLI, ...common, '--data', sftData, ':', '-np', '1', process.execPath, CLI, ...common, '--data', path.join(tmp, 'missing.jsonl')], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  const seconds = (Date.now() - started) / 1000;
  t.equal(r.signal, null, `ended by itself after ${seconds.toFixed(1)} s, not by the test's 60 s limit`);
  t.ok(seconds < 45, 'within seconds');
  t.not(r.status, 0);
  t.match(r.stderr, /rlhf-native: error E_IO: cannot read .*missing\.jsonl/);
  t.notOk(fs.existsSync(path.join(tmp, 'one-fails', 'adapter_model.safetensors')), 'nothing saved');
});

t.test('info --json: world_size and rank of each rank under mpirun', { skip }, async (t) => {
  const r = spawnSync('mpirun', [...MPIRUN, '-np', '2', process.execPath, CLI, 'info', '--json'], { encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 0, r.stderr);
  // Two JSON objects, one per rank, in either order.
  const objs = r.stdout.split(/\n(?=\{)/).map((s) => JSON.parse(s));
  t.same(objs.map((o) => [o.world_size, o.rank]).sort(), [[2, 0], [2, 1]]);
  t.same(objs.map((o) => o.distributed.local_rank).sort(), [0, 1]);
  t.match(objs[0].distributed, { launcher: 'openmpi', mpi: { library: /libmpi/, version: /Open MPI/ } });
});

t.test('info --json without a launcher: a world of one, MPI not loaded', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const env: NodeJS.ProcessEnv = {};
  for (const k of ['OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'SLURM_STEP_NUM_TASKS']) env[k] = '';
  const info = JSON.parse(runCli(['info', '--json'], { env }).stdout);
  t.equal(info.world_size, 1);
  t.equal(info.rank, 0);
  t.same(info.distributed, { launcher: null, local_rank: 0, mpi: null });
});

/** Runs a command until `until` shows on stderr, then sends it SIGTERM; resolves with its exit and output. */
function runUntil(cmd: string, args: string[], until: RegExp): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RLHF_DEBUG: '' } });
    let stdout = '', stderr = '', sent = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      if (!sent && until.test(stderr)) {
        sent = true;
        child.kill('SIGTERM');
      }
    });
    const limit = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('close', (code, signal) => {
      clearTimeout(limit);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

t.test('SIGTERM to mpirun: every rank stops after the same step, rank 0 checkpoints, and one process resumes from it', { skip }, async (t) => {
  const out = path.join(tmp, 'stopped');
  const args = ['sft', '--model', model, '--data', sftData, '--out', out, '--steps', '100000', '--batch-size', '2', '--lora-r', '4', '--device', 'cpu', '--threads', '1', '--log-steps', '1000000'];
  const r = await runUntil('mpirun', [...MPIRUN, '-np', '2', process.execPath, CLI, ...args], /sft step +1\//);
  t.equal(r.signal, null, 'mpirun ended by itself');
  const m = /interrupted after (\d+)\/100000 steps/.exec(r.stdout);
  t.ok(m, `one summary line says where it stopped: ${r.stdout}`);
  const k = Number(m?.[1]);
  t.equal(r.stdout.trim().split('\n').length, 1, 'rank 0 alone prints the summary');
  t.same(fs.readdirSync(path.join(out, 'checkpoints')), [`checkpoint-${k}`], 'the checkpoint of the last step');
  t.equal(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length, k, 'one metrics line per step, written once');
  t.ok(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'the adapter saved');
  // Resumed by one process (another world size): it continues after that step.
  const again = await runUntil(process.execPath, [CLI, ...args, '--resume'], /resuming after step \d+/);
  t.match(again.stderr, new RegExp(`sft: resuming after step ${k} `), again.stderr);
  t.equal(again.code, 143, 'then stopped by its own SIGTERM');
});

t.test('a library that is not OpenMPI is refused (E_UNSUPPORTED), never guessed at', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  // A launcher's environment with a world of 2, and libm as the "MPI library": it loads but has no OpenMPI objects.
  const r = runCli(['sft', '--model', model, '--data', sftData, '--out', path.join(tmp, 'not-mpi'), '--device', 'cpu'], {
    env: { OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '0', RLHF_MPI_LIB: 'libm.so.6' },
    timeoutMs: 60_000,
  });
  t.equal(r.status, 1, r.stderr);
  t.match(r.stderr.trim(), /^rlhf-native: error E_UNSUPPORTED: libm\.so\.6 has no symbol ompi_mpi_comm_world: rlhf-native supports OpenMPI \(libmpi\.so\.40\) only/);
});
