/**
 * Recipes chain any registered stage: the dpo recipe (sft -> dpo) runs in a
 * run folder with DPO trained on the merged SFT model; a run stopped inside a
 * stage (dpo here, ppo in the instructgpt recipe) and resumed with
 * `resume: true` continues that stage from its checkpoint and ends with the
 * uninterrupted run's metrics and weights; a recipe section is checked
 * against the stage's option table.
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
