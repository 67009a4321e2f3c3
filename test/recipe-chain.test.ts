/**
 * Recipes chain any registered stage: the dpo recipe (sft -> dpo) runs in a
 * run folder with DPO trained on the merged SFT model; a run stopped inside a
 * stage (dpo; ppo in the instructgpt recipe, in process and by SIGINT to
 * `rlhf-native train`) and resumed (`resume: true`, `train --resume DIR`)
 * continues that stage from its checkpoint and ends with the uninterrupted
 * run's metrics and weights; a recipe section is checked against the
 * stage's option table.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { openSafetensors } from '../lib/safetensors';
import { resolveRecipeConfig } from '../lib/recipes/config';
import { runRecipe } from '../lib/recipes/run';
import { RlhfError } from '../lib/errors';
import { spawn } from 'node:child_process';
import { CLI, ROOT, cliBuilt } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-chain-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const NAMES = ['Ann', 'Bob', 'Cid', 'Dee', 'Eve', 'Fay', 'Gus', 'Hal', 'Ida', 'Jon', 'Kim', 'Lee'];

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 6 });
  const w = (f: string, rows: object[]) => fs.writeFileSync(path.join(tmp, f), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  w('sft.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.`, completion: ` Hello ${n}, nice to meet you.` })));
  w('pairs.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.`, chosen: ` Hello ${n}, nice to meet you.`, rejected: ` Go away ${n}.` })));
  w('prompts.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.` })));
});

const quiet = { log: () => {}, progress: false as const, handleSigint: false };
const TIMING = /per_sec|elapsed|seconds|^wall|_s$/;
const readMetrics = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !TIMING.test(k))));

function dpoRecipe(out: string, dpo: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    recipe: 'dpo',
    model: base,
    out,
    seed: 2,
    device: 'cpu',
    sft: { data: path.join(tmp, 'sft.jsonl'), steps: 3, batch_size: 4, lr: 3e-3 },
    dpo: { data: path.join(tmp, 'pairs.jsonl'), steps: 4, batch_size: 3, lr: 5e-3, eval_fraction: 0.25, checkpoint_steps: 2, ...dpo },
  };
}

t.test('the dpo recipe: sft -> dpo on the merged SFT model; stopped inside dpo and resumed, the same metrics and adapter', async (t) => {
  const straight = path.join(tmp, 'dpo-straight');
  const r = await runRecipe(resolveRecipeConfig(dpoRecipe(straight)), quiet);
  t.notOk(r.interrupted);
  t.same(r.stages.map((s) => s.name), ['sft', 'dpo']);
  const adapterCfg = JSON.parse(fs.readFileSync(path.join(straight, 'dpo', 'adapter_config.json'), 'utf8'));
  t.equal(path.resolve(adapterCfg.base_model_name_or_path), path.resolve(straight, 'sft', 'merged'), 'DPO trained on the merged SFT model');
  const summary = JSON.parse(fs.readFileSync(path.join(straight, 'summary.json'), 'utf8'));
  t.ok(summary.stages.dpo.eval.accuracy >= 0 && summary.stages.dpo.eval.accuracy <= 1, 'summary: held-out DPO accuracy');
  const m = readMetrics(straight);
  t.ok(m.some((x) => x.stage === 'dpo' && typeof x['rewards/margins'] === 'number'), 'metrics.jsonl has dpo steps');

  const cut = path.join(tmp, 'dpo-cut');
  const ac = new AbortController();
  const first = await runRecipe(resolveRecipeConfig(dpoRecipe(cut)), { ...quiet, signal: ac.signal, onMetrics: (s, rec) => s === 'dpo' && rec.step === 3 && ac.abort() });
  t.ok(first.interrupted, 'stopped inside dpo');
  t.ok(fs.existsSync(path.join(cut, 'dpo', 'checkpoint-3')), 'the stop wrote a checkpoint in the stage folder');
  const second = await runRecipe(resolveRecipeConfig(dpoRecipe(cut)), { ...quiet, resume: true });
  t.notOk(second.interrupted);
  t.same(readMetrics(cut), m, 'the resumed run wrote the uninterrupted metrics (timings aside)');
  const fa = openSafetensors(path.join(straight, 'dpo', 'adapter_model.safetensors')), fb = openSafetensors(path.join(cut, 'dpo', 'adapter_model.safetensors'));
  t.ok(fa.tensorNames.every((n) => fa.tensorBytes(n).equals(fb.tensorBytes(n))), 'bit-identical DPO adapter');
  fa.close();
  fb.close();
});

t.test("a recipe section is checked against the stage's options", async (t) => {
  const bad = async (dpo: Record<string, unknown>) => (await runRecipe(resolveRecipeConfig(dpoRecipe(path.join(tmp, `bad-${Object.keys(dpo)[0]}`), dpo)), quiet).catch((e) => e)) as RlhfError;
  const e1 = await bad({ betta: 0.2 });
  t.equal(e1.code, 'E_CONFIG');
  t.match(e1.message, /dpo: unknown option 'betta'/);
  const e2 = await bad({ beta: 'high' });
  t.equal(e2.code, 'E_CONFIG');
  t.match(e2.message, /dpo\.beta must be a number, got "high"/);
  t.notOk(fs.existsSync(path.join(tmp, 'bad-beta', 'sft', 'adapter_model.safetensors')), 'refused before the sft stage ran');
});

function instructgpt(out: string): Record<string, unknown> {
  return {
    recipe: 'instructgpt',
    model: base,
    out,
    seed: 4,
    device: 'cpu',
    sft: { data: path.join(tmp, 'sft.jsonl'), steps: 2, batch_size: 4, lr: 3e-3 },
    rm: { data: path.join(tmp, 'pairs.jsonl'), steps: 2, batch_size: 4, lr: 3e-3 },
    ppo: { data: path.join(tmp, 'prompts.jsonl'), iterations: 4, batch_size: 4, mini_batch_size: 2, max_new_tokens: 4, ppo_epochs: 1, lora_r: 4, lr: 1e-3 },
  };
}
const sameFile = (a: string, b: string) => fs.readFileSync(a).equals(fs.readFileSync(b));

t.test('instructgpt stopped inside ppo and resumed: ppo continues from its checkpoint, the same metrics and adapters', async (t) => {
  const straight = path.join(tmp, 'igpt-straight');
  await runRecipe(resolveRecipeConfig(instructgpt(straight)), quiet);
  const cut = path.join(tmp, 'igpt-cut');
  const ac = new AbortController();
  const first = await runRecipe(resolveRecipeConfig(instructgpt(cut)), { ...quiet, signal: ac.signal, onMetrics: (s, rec) => s === 'ppo' && rec.step === 2 && ac.abort() });
  t.ok(first.interrupted, 'stopped inside ppo');
  t.ok(fs.existsSync(path.join(cut, 'ppo', 'checkpoint-2')), 'ppo wrote its checkpoint in the stage folder');
  const logs: string[] = [];
  const second = await runRecipe(resolveRecipeConfig(instructgpt(cut)), { ...quiet, log: (l) => logs.push(l), resume: true });
  t.notOk(second.interrupted);
  t.ok(logs.some((l) => /ppo: resuming after iteration 2/.test(l)), 'ppo resumed from its checkpoint, not from the start');
  t.same(readMetrics(cut), readMetrics(straight), 'the run metrics equal the uninterrupted run (timings aside)');
  for (const f of ['adapter_model.safetensors', 'critic/adapter_model.safetensors']) t.ok(sameFile(path.join(cut, 'ppo', f), path.join(straight, 'ppo', f)), `ppo/${f}: bit-identical`);
});

t.test('train --config stopped by SIGINT inside ppo; train --resume finishes with the uninterrupted metrics', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const run = (args: string[], onOut: (out: string, kill: () => void) => void = () => {}) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, RLHF_DEBUG: '' } });
      let stdout = '', stderr = '';
      const seen = () => onOut(stderr, () => child.kill('SIGINT'));
      child.stdout.on('data', (d) => ((stdout += d), seen()));
      child.stderr.on('data', (d) => ((stderr += d), seen()));
      const guard = setTimeout(() => child.kill('SIGKILL'), 300_000);
      child.on('close', (code) => (clearTimeout(guard), resolve({ code, stdout, stderr })));
    });
  const cfgFile = (out: string) => {
    const f = path.join(tmp, `${path.basename(out)}.json`);
    fs.writeFileSync(f, JSON.stringify(instructgpt(out)));
    return f;
  };
  const straight = path.join(tmp, 'cli-straight'), cut = path.join(tmp, 'cli-cut');
  const a = await run(['train', '--config', cfgFile(straight)]);
  t.equal(a.code, 0, a.stderr);
  let sent = false;
  // Interrupt once ppo has written its first iteration to the run's metrics.
  const b1 = await run(['train', '--config', cfgFile(cut)], (_err, kill) => {
    if (sent || !fs.existsSync(path.join(cut, 'metrics.jsonl'))) return;
    if (fs.readFileSync(path.join(cut, 'metrics.jsonl'), 'utf8').includes('"stage":"ppo"')) {
      sent = true;
      kill();
    }
  });
  t.equal(b1.code, 130, b1.stderr);
  const state = JSON.parse(fs.readFileSync(path.join(cut, 'run.json'), 'utf8'));
  t.same(state.stages.map((s: { status: string }) => s.status), ['done', 'done', 'running'], 'stopped inside ppo');
  const b2 = await run(['train', '--resume', cut]);
  t.equal(b2.code, 0, b2.stderr);
  t.match(b2.stderr, /ppo: resuming after iteration \d+/);
  t.same(readMetrics(cut), readMetrics(straight), 'metrics.jsonl equal line for line, timings aside');
  t.ok(sameFile(path.join(cut, 'ppo', 'adapter_model.safetensors'), path.join(straight, 'ppo', 'adapter_model.safetensors')), 'bit-identical policy');
});
