/** `rlhf-native sft` through the CLI: a run, bad data, unsupported options, SIGINT. */
import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCli, cliBuilt, CLI, ROOT } from './helpers/cli';
import { initModel } from '../lib/model/init';

const skip = !cliBuilt() && 'CLI not compiled';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-sft-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const model = path.join(tmp, 'm');
const data = path.join(tmp, 'd.jsonl');
const rows = Array.from({ length: 8 }, (_, i) => JSON.stringify({ prompt: `Q${i}: sky?`, completion: ' Blue.' }));

t.before(async () => {
  await initModel({ arch: 'qwen2', preset: 'tiny', outDir: model, seed: 5 });
  fs.writeFileSync(data, rows.join('\n') + '\n');
});

t.test('a LoRA run: progress on stderr, one summary line on stdout, adapter + metrics written', { skip }, async (t) => {
  const out = path.join(tmp, 'o');
  const r = runCli(['sft', '--model', model, '--data', data, '--out', out, '--steps', '4', '--batch-size', '2', '--grad-accum', '2', '--lr', '1e-3', '--lora-r', '4', '--lora-targets', 'q_proj,v_proj', '--lora-dropout', '0.1', '--device', 'cpu', '--eval-fraction', '0.25', '--eval-steps', '2']);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one summary line');
  t.match(lines[0], /^sft: 4 steps \(.* epochs, 6 rows\) .* loss .* -> .*; eval loss .* \(2 rows\); LoRA adapter \(\d+ trainable parameters\) saved to /);
  const progress = r.stderr.split('\n').filter((l) => l.startsWith('sft step'));
  t.equal(progress.length, 4, r.stderr);
  t.match(progress[1], /^sft step 2\/4 {2}loss \S+ {2}lr \S+ {2}grad_norm \S+ {2}tok\/s \d+ {2}epoch \S+ {2}eval_loss \S+$/);
  const ac = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  t.same(ac.target_modules, ['q_proj', 'v_proj']);
  t.equal(ac.r, 4);
  t.equal(ac.lora_dropout, 0.1);
  t.equal(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length, 4);
  const sc = JSON.parse(fs.readFileSync(path.join(out, 'sft_config.json'), 'utf8'));
  t.match(sc, { steps: 4, batchSize: 2, gradAccum: 2, loraTargets: ['q_proj', 'v_proj'], total_steps: 4, steps_done: 4, interrupted: false });
});

t.test('a bad data line -> exit 1, one line naming file:line', { skip }, async (t) => {
  const bad = path.join(tmp, 'bad.jsonl');
  fs.writeFileSync(bad, [rows[0], rows[1], '{"prompt": "x", "completion": 5}', rows[2]].join('\n') + '\n');
  const r = runCli(['sft', '--model', model, '--data', bad, '--out', path.join(tmp, 'o-bad'), '--device', 'cpu']);
  t.equal(r.status, 1);
  const err = r.stderr.trim().split('\n');
  t.equal(err.length, 1, r.stderr);
  t.match(err[0], `rlhf-native: error E_DATA: ${bad}:3: "prompt" and "completion" must both be strings`);
  t.notOk(fs.existsSync(path.join(tmp, 'o-bad', 'adapter_model.safetensors')));
});

t.test('--lora-dropout 0.1 on a continued adapter -> E_UNSUPPORTED; conflicting options -> E_ARGUMENT', { skip }, async (t) => {
  const r = runCli(['sft', '--model', model, '--data', data, '--out', path.join(tmp, 'o2'), '--adapter', path.join(tmp, 'o'), '--lora-dropout', '0.1']);
  t.equal(r.status, 1);
  t.match(r.stderr.trim(), /^rlhf-native: error E_UNSUPPORTED: --lora-dropout 0\.1 with --adapter: the engine continues a saved adapter without dropout/);
  t.equal(r.stderr.trim().split('\n').length, 1);
  const r2 = runCli(['sft', '--model', model, '--data', data, '--out', path.join(tmp, 'o3'), '--full', '--lora-r', '4']);
  t.equal(r2.status, 1);
  t.match(r2.stderr, /E_ARGUMENT: LoRA options do not apply with --full: --lora-r/);
  const r5 = runCli(['sft', '--model', model, '--data', data, '--out', path.join(tmp, 'o5'), '--lora-targets', 'q_proj', 'wq']);
  t.equal(r5.status, 1);
  t.match(r5.stderr, /E_ARGUMENT: LoRA target 'wq' is not a linear module/);
  // Continuing the adapter without dropout works, and says the saved dropout is not applied.
  const r3 = runCli(['sft', '--model', model, '--data', data, '--out', path.join(tmp, 'o4'), '--adapter', path.join(tmp, 'o'), '--steps', '1', '--device', 'cpu']);
  t.equal(r3.status, 0, r3.stderr);
  t.match(r3.stderr, /was trained with lora_dropout 0\.1; it is continued without dropout/);
});

t.test('SIGINT: finishes the step, saves the adapter, exits 130', { skip }, async (t) => {
  const out = path.join(tmp, 'o-int');
  const child = spawn(process.execPath, [CLI, 'sft', '--model', model, '--data', data, '--out', out, '--steps', '100000', '--batch-size', '2', '--device', 'cpu', '--log-steps', '1'], {
    cwd: ROOT,
    env: { ...process.env, RLHF_DEBUG: '' },
  });
  let stderr = '', stdout = '', sent = false;
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    if (!sent && /sft step +3\//.test(stderr)) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const guard = setTimeout(() => child.kill('SIGKILL'), 120_000); // never hang the suite
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  clearTimeout(guard);
  t.equal(code, 130, stderr);
  t.match(stderr, /interrupted: finishing the current step, then saving/);
  t.match(stdout, /^sft: interrupted after \d+\/100000 steps/);
  t.ok(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'adapter saved');
  const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length;
  t.ok(steps >= 3 && steps < 100, `${steps} steps done`);
  t.match(JSON.parse(fs.readFileSync(path.join(out, 'sft_config.json'), 'utf8')), { interrupted: true, steps_done: steps });
});
