/**
 * The CLI as shells, supervisors and pipes expect it:
 *   - `npx rlhf-native train` sent SIGTERM by its process id (not the
 *     process group: npm passes it to its `sh -c`, which exits without
 *     passing it on), and a `bash -c` launcher killed outright: the training
 *     process notices its launcher is gone, saves and exits (129);
 *     `npx rlhf-native train` sent SIGINT by its process id (npm passes it
 *     to its `sh -c`, which keeps it and waits): the training process sees
 *     its shell woken, saves and exits (130); in every case no
 *     process of the run is left within 10 s, and `train --resume` finishes
 *     the run;
 *   - `score ... | head -1` ends quietly (status 141, no stack trace);
 *   - on a machine without an NVIDIA GPU, `--device auto` says nothing about
 *     CUDA.
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { gpuVisible } from '../lib/info';
import { CLI, ROOT, cliBuilt, runCli } from './helpers/cli';

const skip = !cliBuilt() && 'CLI not compiled';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-supervisors-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const NAMES = ['Ann', 'Bob', 'Cid', 'Dee', 'Eve', 'Fay', 'Gus', 'Hal'];

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 2 });
  const w = (f: string, rows: object[]) => fs.writeFileSync(path.join(tmp, f), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  w('sft.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.`, completion: ` Hello ${n}, nice to meet you.` })));
  w('pairs.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.`, chosen: ` Hello ${n}.`, rejected: ` Go away ${n}.` })));
});

/** Processes whose command line mentions `needle` (this test's run folders), from /proc. */
function processesWith(needle: string): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(needle)) out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

const launchers: [string, string, string[], NodeJS.Signals][] = [
  ['npx rlhf-native train sent SIGTERM by pid', 'npx', ['--offline', 'rlhf-native', 'train', '--config'], 'SIGTERM'],
  // npm passes SIGINT to its `sh -c`, which keeps it while it waits: the run sees the shell woken
  ['npx rlhf-native train sent SIGINT by pid', 'npx', ['--offline', 'rlhf-native', 'train', '--config'], 'SIGINT'],
  // (a command after it keeps bash from exec'ing node in its place)
  ['a bash -c launcher killed (SIGKILL)', 'bash', ['-c', `node "${CLI}" train --config "$0"; exit $?`], 'SIGKILL'],
];
for (const [what, cmd, args, sig] of launchers) {
  t.test(`${what}: the training stops, no process left within 10 s; train --resume finishes`, { skip }, async (t) => {
    const out = path.join(tmp, `run-${cmd}-${sig}`);
    const cfg = path.join(tmp, `cfg-${cmd}-${sig}.json`);
    fs.writeFileSync(
      cfg,
      JSON.stringify({
        recipe: 'dpo',
        model: base,
        out,
        seed: 1,
        device: 'cpu',
        sft: { data: path.join(tmp, 'sft.jsonl'), steps: 400, batch_size: 4, lr: 1e-3, checkpoint_steps: 50 },
        dpo: { data: path.join(tmp, 'pairs.jsonl'), steps: 2, batch_size: 4 },
      }),
    );
    const launcher = spawn(cmd, [...args, cfg], { cwd: ROOT, env: { ...process.env, RLHF_DEBUG: '' }, stdio: 'ignore' });
    const metrics = path.join(out, 'metrics.jsonl');
    const t0 = Date.now();
    while (!(fs.existsSync(metrics) && fs.readFileSync(metrics, 'utf8').includes('"step":2,')) && Date.now() - t0 < 120_000) await new Promise((r) => setTimeout(r, 100));
    const running = processesWith(cfg).filter((p) => p !== launcher.pid);
    t.ok(running.length > 0, `training is running under ${cmd}`);
    launcher.kill(sig); // the launcher only, not its group
    const sent = Date.now();
    while (processesWith(cfg).length > 0 && Date.now() - sent < 10_000) await new Promise((r) => setTimeout(r, 100));
    t.same(processesWith(cfg), [], `no process of the run left ${((Date.now() - sent) / 1000).toFixed(1)} s after the signal`);
    if (sig === 'SIGINT') {
      const [code, signal] = launcher.exitCode !== null || launcher.signalCode !== null ? [launcher.exitCode, launcher.signalCode] : await new Promise<[number | null, string | null]>((r) => launcher.on('exit', (c, s) => r([c, s])));
      t.ok(code === 130 || signal === 'SIGINT', `npx ends as interrupted (exit ${code}, signal ${signal})`);
    }
    const state = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    t.equal(state.stages[0].status, 'running', 'sft was stopped, not finished');
    t.ok(fs.readdirSync(path.join(out, 'sft')).some((f) => /^checkpoint-\d+$/.test(f)), 'the stop wrote a checkpoint');
    const r = runCli(['train', '--resume', out], { timeoutMs: 300_000 });
    t.equal(r.status, 0, r.stderr);
    t.match(r.stderr, /sft: resuming after step \d+/);
    const done = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    t.same(done.stages.map((s: { status: string }) => s.status), ['done', 'done']);
    const steps = fs.readFileSync(metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.stage === 'sft').map((m) => m.step);
    t.same(steps, Array.from({ length: 400 }, (_, i) => i + 1), 'every sft step once in metrics.jsonl');
  });
}

t.test('score | head -1: the first line, then a quiet exit (141, no stack trace)', { skip }, async (t) => {
  const data = path.join(tmp, 'many.jsonl');
  fs.writeFileSync(data, Array.from({ length: 3000 }, (_, i) => JSON.stringify({ prompt: `Hello number ${i},`, completion: ' nice to meet you.' })).join('\n') + '\n');
  const r = spawnSync('bash', ['-c', `node "${CLI}" score --model "${base}" --data "${data}" --device cpu | head -1; echo "status \${PIPESTATUS[0]}" >&2`], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  t.equal(r.stdout.trim().split('\n').length, 1, 'one line through head');
  t.ok(JSON.parse(r.stdout), 'a JSON line');
  t.match(r.stderr, /status 141/, 'the status of a process stopped by a closed pipe');
  t.notMatch(r.stderr, /EPIPE|\n\s+at /, 'no error text, no stack trace');
});

t.test('no CUDA line with --device auto on a machine without an NVIDIA GPU', { skip: skip || (gpuVisible() && 'a GPU is visible here') }, async (t) => {
  const r = runCli(['sft', '--model', base, '--data', path.join(tmp, 'sft.jsonl'), '--out', path.join(tmp, 'auto'), '--steps', '1', '--batch-size', '2', '--device', 'auto']);
  t.equal(r.status, 0, r.stderr);
  t.notMatch(r.stderr, /CUDA/, 'nothing about CUDA');
  const info = runCli(['info']);
  t.match(info.stdout, /no CUDA device: |CUDA backend not compiled|cuda: not compiled/i, 'info still says why CUDA is off');
});
