/**
 * Recipes end to end on a tiny model: `train --config` runs InstructGPT's
 * sft -> rm -> ppo and Llama 2's sft -> rm_helpfulness + rm_safety -> rs ->
 * ppo in a run folder; each stage's output is in the ecosystem's layout and
 * feeds the next; an interrupted run resumed with --resume ends with the same
 * metrics as an uninterrupted one; config errors name the file and line.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { openModelFolder } from '../lib/model/folder';
import { openSafetensors } from '../lib/safetensors';
import { loadRecipeConfig, resolveRecipeConfig } from '../lib/recipes/config';
import { runRecipe } from '../lib/recipes/run';
import { runCli, cliBuilt } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-recipe-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const NAMES = ['Ann', 'Bob', 'Cid', 'Dee', 'Eve', 'Fay', 'Gus', 'Hal', 'Ida', 'Jon', 'Kim', 'Lee'];

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 5 });
  const w = (f: string, rows: object[]) => fs.writeFileSync(path.join(tmp, f), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  w('sft.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.`, completion: ` Hello ${n}, nice to meet you.` })));
  w('pairs.jsonl', NAMES.map((n, i) => ({ prompt: `Greet ${n}.`, chosen: ` Hello ${n}, nice to meet you.`, rejected: ` Go away ${n}.`, rating: i % 2 ? 'better' : 'significantly better' })));
  w('safety.jsonl', NAMES.map((n) => ({ prompt: `Hurt ${n}.`, chosen: ' I cannot help with that.', rejected: ` Sure, here is how to hurt ${n}.`, safe: false })));
  w('prompts.jsonl', NAMES.map((n) => ({ prompt: `Greet ${n}.` })));
});

const STAGES_COMMON = { batchSize: 4, lr: 3e-3, lrSchedule: 'constant' };
function instructgpt(out: string): Record<string, unknown> {
  return {
    recipe: 'instructgpt',
    model: base,
    out,
    seed: 1,
    device: 'cpu',
    sft: { data: path.join(tmp, 'sft.jsonl'), steps: 4, checkpoint_steps: 2, ...STAGES_COMMON },
    rm: { data: path.join(tmp, 'pairs.jsonl'), steps: 4, checkpoint_steps: 2, eval_fraction: 0.25, ...STAGES_COMMON, warmup_ratio: 0 },
    ppo: { data: path.join(tmp, 'prompts.jsonl'), iterations: 2, batch_size: 4, mini_batch_size: 4, max_new_tokens: 6, ppo_epochs: 1 },
  };
}
const quiet = { log: () => {}, progress: false as const, handleSigint: false };
const readMetrics = (dir: string) => fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const TIMING = /per_sec|elapsed|seconds|^wall|_s$/;

t.test('instructgpt: sft -> rm -> ppo, each output in its ecosystem layout, wired into the next', async (t) => {
  const out = path.join(tmp, 'run-igpt');
  const r = await runRecipe(resolveRecipeConfig(instructgpt(out)), quiet);
  t.notOk(r.interrupted);
  const state = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
  t.same(state.stages.map((s: { name: string; status: string }) => [s.name, s.status]), [['sft', 'done'], ['rm', 'done'], ['ppo', 'done']]);
  // SFT (LoRA) merged into a plain causal-LM folder: the base of rm and ppo.
  const merged = openModelFolder(path.join(out, 'sft', 'merged'));
  t.equal(merged.config.architecture, 'LlamaForCausalLM');
  t.same(merged.tensors.map((x) => x.canonical).sort(), openModelFolder(base).tensors.map((x) => x.canonical).sort(), 'same tensors as the base');
  merged.close();
  const rmCfg = JSON.parse(fs.readFileSync(path.join(out, 'rm', 'adapter_config.json'), 'utf8'));
  t.equal(rmCfg.task_type, 'SEQ_CLS');
  t.equal(path.resolve(rmCfg.base_model_name_or_path), path.resolve(out, 'sft', 'merged'), 'the reward model was trained on the merged SFT model');
  const pol = openSafetensors(path.join(out, 'ppo', 'adapter_model.safetensors'));
  t.ok(pol.tensorNames.some((n) => n.endsWith('lora_A.weight')) && !pol.has('base_model.model.score.weight'), 'PPO policy: a PEFT LoRA adapter without a head');
  pol.close();
  const m = readMetrics(out);
  for (const s of ['sft', 'rm', 'ppo']) t.ok(m.some((x) => x.stage === s), `metrics.jsonl has ${s} lines`);
  t.ok(m.filter((x) => x.stage === 'ppo').every((x) => typeof x.reward === 'number' && typeof x.kl === 'number'), 'ppo lines carry reward and kl');
  const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
  t.ok(summary.stages.rm.eval.accuracy >= 0 && summary.stages.rm.eval.accuracy <= 1, 'summary: held-out RM accuracy');
  const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
  t.match(html, /<svg/, 'report.html has charts');
});

t.test('an interrupted run resumed with --resume reproduces the uninterrupted metrics', async (t) => {
  const straight = path.join(tmp, 'run-straight');
  await runRecipe(resolveRecipeConfig(instructgpt(straight)), quiet);
  const cut = path.join(tmp, 'run-cut');
  const ac = new AbortController();
  const first = await runRecipe(resolveRecipeConfig(instructgpt(cut)), { ...quiet, signal: ac.signal, onMetrics: (s, rec) => s === 'rm' && rec.step === 3 && ac.abort() });
  t.ok(first.interrupted, 'stopped in the rm stage');
  const state = JSON.parse(fs.readFileSync(path.join(cut, 'run.json'), 'utf8'));
  t.same(state.stages.map((s: { status: string }) => s.status), ['done', 'running', 'pending']);
  const second = await runRecipe(resolveRecipeConfig(instructgpt(cut)), { ...quiet, resume: true });
  t.notOk(second.interrupted);
  const a = readMetrics(straight), b = readMetrics(cut);
  t.same(b.map((x) => `${x.stage}:${x.step}`), a.map((x) => `${x.stage}:${x.step}`), 'the same stage/step lines in the same order');
  let diffs = 0;
  for (let i = 0; i < a.length; i++)
    for (const k of Object.keys(a[i])) {
      if (TIMING.test(k)) continue;
      const x = a[i][k], y = b[i][k];
      const same = typeof x === 'number' ? Math.abs(x - y) <= 1e-6 * (1 + Math.abs(x)) : JSON.stringify(x) === JSON.stringify(y);
      if (!same) {
        diffs++;
        t.fail(`${a[i].stage} step ${a[i].step} ${k}: ${JSON.stringify(x)} vs ${JSON.stringify(y)}`);
      }
    }
  t.equal(diffs, 0, `every non-timing metric equal over ${a.length} lines`);
  const fa = openSafetensors(path.join(straight, 'ppo', 'adapter_model.safetensors')), fb = openSafetensors(path.join(cut, 'ppo', 'adapter_model.safetensors'));
  t.ok(fa.tensorNames.every((n) => fa.tensorBytes(n).equals(fb.tensorBytes(n))), 'bit-identical final policy');
  fa.close();
  fb.close();
});

t.test('llama2: two reward models with margins, rejection sampling, then PPO continuing the RS policy', async (t) => {
  const out = path.join(tmp, 'run-llama2');
  const cfg = resolveRecipeConfig({
    ...instructgpt(out),
    recipe: 'llama2',
    rm: undefined,
    rm_helpfulness: { data: path.join(tmp, 'pairs.jsonl'), steps: 3, ...STAGES_COMMON },
    rm_safety: { data: path.join(tmp, 'safety.jsonl'), steps: 3, ...STAGES_COMMON },
    rs: { data: path.join(tmp, 'prompts.jsonl'), rounds: 1, k: 2, max_new_tokens: 6, sft: { steps: 2, batchSize: 4 } },
  });
  const r = await runRecipe(cfg, quiet);
  t.notOk(r.interrupted);
  t.same(r.stages.map((s) => s.name), ['sft', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo']);
  const rs = r.stages.find((s) => s.name === 'rs')!;
  t.ok(rs.outputs.adapter && fs.existsSync(path.join(rs.outputs.adapter, 'adapter_model.safetensors')), 'rs produced a policy adapter');
  const ppoCfg = JSON.parse(fs.readFileSync(path.join(out, 'ppo', 'ppo_config.json'), 'utf8'));
  t.equal(path.resolve(ppoCfg.adapter), path.resolve(rs.outputs.adapter), 'ppo continued the rejection-sampling adapter');
  t.equal(path.resolve(ppoCfg.safety_model ?? ppoCfg.safetyModel), path.resolve(out, 'rm_safety'), 'ppo is rewarded by the safety model too');
});

t.test('config errors name the file and line or key; nothing in an existing folder is lost', async (t) => {
  const bad = path.join(tmp, 'bad.yaml');
  fs.writeFileSync(bad, 'recipe: instructgpt\nmodel: base\nsft:\n  data: [unclosed\n');
  t.throws(() => loadRecipeConfig(bad, {}), { code: 'E_CONFIG', message: /bad\.yaml:\d+/ });
  t.throws(() => resolveRecipeConfig({ recipe: 'instructgpt', model: base, out: 'x', sft: { data: 'a' }, rm: { data: 'b' } }), /ppo\.data is required/);
  t.throws(() => resolveRecipeConfig({ recipe: 'nope', model: base, out: 'x' }), /recipe must be one of/);
  t.throws(() => resolveRecipeConfig({ recipe: 'instructgpt', model: base, out: 'x', sfft: {} }), /unknown key 'sfft'/);
  t.throws(() => resolveRecipeConfig({ ...instructgpt('x'), sft: { data: 'a', model: 'm' } }), /sft\.model is set by the recipe/);
  const keep = path.join(tmp, 'mine');
  fs.mkdirSync(keep);
  fs.writeFileSync(path.join(keep, 'notes.txt'), 'mine');
  await t.rejects(runRecipe(resolveRecipeConfig(instructgpt(keep)), quiet), { code: 'E_ARGUMENT' });
  t.equal(fs.readFileSync(path.join(keep, 'notes.txt'), 'utf8'), 'mine', 'a non-run folder is refused, untouched');
  if (cliBuilt()) {
    const yaml = path.join(tmp, 'run.yaml');
    fs.writeFileSync(yaml, `recipe: instructgpt\nmodel: ${base}\nout: ${path.join(tmp, 'cli-run')}\nsft:\n  data: ${path.join(tmp, 'missing.jsonl')}\nrm:\n  data: x\nppo:\n  data: y\n`);
    const res = runCli(['train', '--config', yaml, '--device', 'cpu']);
    t.equal(res.status, 1);
    t.match(res.stderr, /missing\.jsonl/, 'a missing data file is named');
  }
});
