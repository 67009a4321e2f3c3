/**
 * The HIR stage (lib/stages/hir/*) on a tiny model: a policy first finetuned
 * to name four colours at random, a programmatic checker ("correct" when the
 * output names blue). HIR must raise the held-out share of correct outputs
 * under the original instruction. Also: the relabelling rules, the buffer's
 * de-duplication, exact resume (metrics, buffer and adapter bits), a user
 * relabel module, bad options and modules (RlhfError naming the flag, the
 * module and the data file:line), SFT's --label-smoothing as a stage option,
 * and the CLI's options.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { openSafetensors, writeSafetensors } from '../lib/safetensors';
import { seededRandom } from '../lib/data/sft-data';
import { resolveSftConfig, runSft, type SftStepMetrics } from '../lib/stages/sft';
import { resolveHirConfig, type HirConfig, type HirMetrics } from '../lib/stages/hir/config';
import { runHir } from '../lib/stages/hir/run';
import { applyTemplate, loadRelabelModule, relabelByVerdict, relabelWithModule, SampleBuffer, type BufferEntry } from '../lib/stages/hir/relabel';
import { functionReward } from '../lib/reward/sources';
import { RlhfError } from '../lib/errors';
import { resolveRecipeConfig } from '../lib/recipes/config';
import { runRecipe } from '../lib/recipes/run';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-hir-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const v1 = path.join(tmp, 'v1');
const prompts = path.join(tmp, 'prompts.jsonl');
const held = path.join(tmp, 'held.jsonl');
const COLOURS = ['red', 'blue', 'green', 'yellow', 'black', 'white'];
const blue = () => functionReward((b) => b.map((x) => (/\bblue\b/.test(x.response) ? 1 : 0)), 'blue');
const quiet = { handleSigint: false };
const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  // A final-norm weight of 8 gives a random model's output scale head room (as in stage-rs.test.ts).
  const file = path.join(base, 'model.safetensors');
  const st = openSafetensors(file);
  const tensors = st.header.tensors.map((x) =>
    x.name === 'model.norm.weight' ? { name: x.name, dtype: x.dtype, shape: x.shape, fill: { kind: 'const' as const, value: 8 } } : { name: x.name, dtype: x.dtype, shape: x.shape, data: st.tensorBytes(x.name) },
  );
  st.close();
  writeSafetensors(file, tensors, { format: 'pt' });
  const rand = seededRandom(7);
  const rows = Array.from({ length: 48 }, (_, i) => ({ prompt: `Colours ${i}:`, completion: ' ' + Array.from({ length: 4 }, () => COLOURS[Math.floor(rand() * 6)]).join(' ') + '.' }));
  const sftData = path.join(tmp, 'sft.jsonl');
  fs.writeFileSync(sftData, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  await runSft({ model: base, data: sftData, out: v1, full: true, steps: 40, batchSize: 16, lr: 2e-3, lrSchedule: 'constant', device: 'cpu' }, quiet);
  fs.writeFileSync(prompts, Array.from({ length: 24 }, (_, i) => JSON.stringify({ prompt: `Colours ${100 + i}:`, id: 100 + i })).join('\n') + '\n');
  fs.writeFileSync(held, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `Colours ${200 + i}:` })).join('\n') + '\n');
});

const small: Partial<HirConfig> = { evalData: held, evalSamples: 4, samplesPerPrompt: 4, maxNewTokens: 8, loraR: 8, loraAlpha: 16, lr: 2e-3, batchSize: 16, device: 'cpu' };

t.test('relabelling rules', async (t) => {
  const W = '{prompt} (wrong)';
  t.same(relabelByVerdict('Q:', true, W, 'f:1'), { pos: 'Q:', neg: 'Q: (wrong)' }, 'a correct output keeps its instruction; its negative is the wrong-answer one');
  t.same(relabelByVerdict('Q:', false, W, 'f:1'), { pos: 'Q: (wrong)', neg: 'Q:' }, 'a wrong output gets the wrong-answer instruction; its negative is the original');
  const chat = [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: 'first' },
    { role: 'assistant', content: 'ok' },
    { role: 'user', content: 'second' },
  ];
  const r = applyTemplate(chat, W, 'f:2') as typeof chat;
  t.same(r.map((m) => m.content), ['be brief', 'first', 'ok', 'second (wrong)'], 'chat prompts: the template fills the last user message only');
  t.equal(applyTemplate('a {b}', '{prompt}|{prompt}', 'f:3'), 'a {b}|a {b}', 'every {prompt} is filled, other braces are left');
  t.throws(() => applyTemplate([{ role: 'system', content: 's' }], W, 'data.jsonl:7'), { code: 'E_DATA', message: /data\.jsonl:7: the chat prompt has no user message/ });
});

t.test('the buffer keeps each (prompt, output) once', async (t) => {
  const e = (prompt: number, output: number[], iteration = 1): BufferEntry => ({ prompt, output, text: '', reward: 1, correct: true, pos: [1], neg: [2], iteration });
  const b = new SampleBuffer();
  t.equal(b.add(e(0, [5, 6])), true, 'new');
  t.equal(b.add(e(0, [5, 6], 2)), false, 'the same output of the same prompt again: not added');
  t.equal(b.add(e(1, [5, 6])), true, 'the same output of another prompt: added');
  t.equal(b.add(e(0, [5, 6, 7])), true, 'a longer output: added');
  t.equal(b.add(e(0, [56])), true, 'ids are compared as lists ([56] is not [5, 6])');
  t.equal(b.size, 4);
  t.equal(b.entries[0].iteration, 1, 'the first sighting is kept');
  t.equal(new SampleBuffer([...b.entries, e(1, [5, 6])]).size, 4, 'restored from a list with a duplicate: de-duplicated');
});

t.test('relabel modules: loading, calls, and errors naming the module and file:line', async (t) => {
  const mod = (name: string, body: string) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, body);
    return f;
  };
  const cjs = mod('ok.cjs', 'exports.relabel = ({ prompt, completion, row, reward }) => ({ instruction: prompt + " -> " + completion + " #" + row.id + " r" + reward });');
  const fn = await loadRelabelModule(cjs);
  const x = { prompt: 'P', completion: 'C', row: { id: 3 }, reward: 0.5 };
  t.same(await relabelWithModule(fn, x, { module: cjs, where: 'd.jsonl:4', wrongTemplate: '{prompt}!' }), { pos: 'P -> C #3 r0.5', neg: 'P' }, 'without a negative: the original prompt');
  const same = await loadRelabelModule(mod('same.mjs', 'export async function relabel({ prompt }) { return { instruction: prompt }; }'));
  t.same(await relabelWithModule(same, x, { module: 'same.mjs', where: 'd.jsonl:4', wrongTemplate: '{prompt}!' }), { pos: 'P', neg: 'P!' }, 'the original kept (async, ESM): the negative is the template');
  const neg = await loadRelabelModule(mod('neg.js', 'module.exports = { relabel: () => ({ instruction: "A", negative: [{ role: "user", content: "B" }] }) };'));
  t.same(await relabelWithModule(neg, x, { module: 'neg.js', where: 'd.jsonl:4', wrongTemplate: '{prompt}!' }), { pos: 'A', neg: [{ role: 'user', content: 'B' }] }, 'a given negative (chat messages) is used');

  await t.rejects(loadRelabelModule(path.join(tmp, 'missing.js')), { code: 'E_ARGUMENT', message: /--relabel-module .*missing\.js: no such file/ });
  await t.rejects(loadRelabelModule(mod('x.txt', '')), { code: 'E_ARGUMENT', message: /expected a \.js, \.mjs or \.cjs file/ });
  await t.rejects(loadRelabelModule(mod('syntax.cjs', 'exports.relabel = (')), { code: 'E_ARGUMENT', message: /syntax\.cjs: cannot be loaded/ });
  await t.rejects(loadRelabelModule(mod('none.cjs', 'exports.other = 1;')), { code: 'E_ARGUMENT', message: /none\.cjs: exports no function relabel/ });
  const throws = await loadRelabelModule(mod('throws.cjs', 'exports.relabel = () => { throw new Error("boom"); };'));
  await t.rejects(relabelWithModule(throws, x, { module: 'throws.cjs', where: 'd.jsonl:9', wrongTemplate: '{prompt}!' }), { code: 'E_DATA', message: /--relabel-module throws\.cjs: relabel\(\) for d\.jsonl:9: threw: boom/ });
  const bad = await loadRelabelModule(mod('bad.cjs', 'exports.relabel = () => ({ instruction: 42 });'));
  await t.rejects(relabelWithModule(bad, x, { module: 'bad.cjs', where: 'd.jsonl:2', wrongTemplate: '{prompt}!' }), { code: 'E_DATA', message: /bad\.cjs: relabel\(\) for d\.jsonl:2: "instruction" must be/ });
});

t.test('bad options: E_ARGUMENT naming the flag', async (t) => {
  const c = { model: v1, data: prompts, out: path.join(tmp, 'never') };
  t.throws(() => resolveHirConfig(c), { code: 'E_ARGUMENT', message: /--reward-model is required \(or a --relabel-module/ });
  t.throws(() => resolveHirConfig({ ...c, relabelModule: 'x.py' }), { code: 'E_ARGUMENT', message: /--relabel-module x\.py: expected a \.js/ });
  t.throws(() => resolveHirConfig({ ...c, wrongTemplate: 'no placeholder' }, { rewardSource: true }), { code: 'E_ARGUMENT', message: /--wrong-template .*must contain \{prompt\}/ });
  t.throws(() => resolveHirConfig({ ...c, labelSmoothing: 1.5 }, { rewardSource: true }), { code: 'E_ARGUMENT', message: /--label-smoothing/ });
  t.throws(() => resolveHirConfig({ ...c, rewardModel: 'rm' }, { rewardSource: true }), { code: 'E_ARGUMENT', message: /cannot be given together with a reward source/ });
  t.throws(() => resolveHirConfig({ ...c, out: v1 }, { rewardSource: true }), { code: 'E_ARGUMENT', message: /--out must differ from --model/ });
  const r = resolveHirConfig(c, { rewardSource: true });
  t.match(r, { temperature: 1, lr: 5e-4, labelSmoothing: 0.2, contrastiveCoef: 1, entropyCoef: 0.001, threshold: 1, checkpointSteps: 1 }, "the paper's numbers are the defaults where the paper gives them");
  // A module error inside a run names the module and the data line, and nothing crashes.
  const mf = path.join(tmp, 'fails-on-103.cjs');
  fs.writeFileSync(mf, 'exports.relabel = ({ prompt, row }) => { if (row.id === 103) throw new Error("no rule for 103"); return { instruction: prompt }; };');
  const e = await runHir({ ...c, ...small, out: path.join(tmp, 'hir-module-error'), relabelModule: mf, iterations: 1, evalData: null, evalFraction: 0 }, quiet).catch((x) => x);
  t.ok(e instanceof RlhfError, 'an RlhfError');
  t.match(e, { code: 'E_DATA', message: new RegExp(`fails-on-103\\.cjs: relabel\\(\\) for ${prompts.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4: threw: no rule for 103`) });
});

t.test('HIR raises the held-out share of correct outputs; the run folder; exact resume', async (t) => {
  const out = path.join(tmp, 'hir');
  const metrics: HirMetrics[] = [];
  const r = await runHir({ model: v1, data: prompts, out, iterations: 3, epochs: 3, ...small }, { ...quiet, reward: blue(), onStep: (m) => metrics.push(m) });
  t.comment(`held-out share naming blue: ${r.evalBefore?.correct} -> ${r.evalAfter?.correct}; buffer ${r.buffer}`);
  t.ok(r.evalBefore!.correct > 0.1 && r.evalBefore!.correct < 0.9, `the starting policy names blue now and then (${r.evalBefore!.correct})`);
  t.ok(r.evalAfter!.correct >= r.evalBefore!.correct + 0.2, `held-out share correct ${r.evalBefore!.correct} -> ${r.evalAfter!.correct}`);
  t.equal(r.iterations, 3);
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'hir_config.json', 'hir_result.json', 'metrics.jsonl', 'buffer.jsonl']) t.ok(fs.existsSync(path.join(out, f)), `${f} written`);
  const its = metrics.filter((m) => m.phase === 'iteration');
  t.same(its.map((m) => m.iteration), [1, 2, 3], 'one iteration record each');
  t.ok(its.every((m, i) => m.buffer === (i ? its[i - 1].buffer : 0) + m.added), 'the buffer grows by the distinct new outputs');
  const buf = readJsonl(path.join(out, 'buffer.jsonl'));
  t.equal(buf.length, r.buffer);
  t.equal(new Set(buf.map((b) => `${b.source_line}:${b.output_ids.join(',')}`)).size, buf.length, 'no output twice for a prompt');
  const wrong = buf.find((b) => !b.correct), right = buf.find((b) => b.correct);
  t.ok(wrong && right, 'correct and wrong outputs in the buffer');
  t.ok(wrong.pos_ids.length > right.pos_ids.length && right.neg_ids.length > right.pos_ids.length, 'wrong outputs train under the longer wrong-answer instruction, correct ones under their own');

  // Stopped after iteration 1, then resumed: the same metrics (timings aside), buffer and adapter bits.
  const out2 = path.join(tmp, 'hir-resume');
  const ac = new AbortController();
  const cut = await runHir({ model: v1, data: prompts, out: out2, iterations: 3, epochs: 3, ...small }, { ...quiet, reward: blue(), signal: ac.signal, onStep: (m) => m.phase === 'iteration' && ac.abort() });
  t.equal(cut.interrupted, true);
  t.equal(cut.iterations, 1);
  const res = await runHir({ model: v1, data: prompts, out: out2, iterations: 3, epochs: 3, resume: true, ...small }, { ...quiet, reward: blue() });
  t.equal(res.resumedFrom, 1);
  const strip = (f: string) => readJsonl(f).map((m) => Object.fromEntries(Object.entries(m).filter(([k]) => !/_s$|seconds/.test(k))));
  t.same(strip(path.join(out2, 'metrics.jsonl')), strip(path.join(out, 'metrics.jsonl')), 'metrics.jsonl as uninterrupted');
  t.equal(fs.readFileSync(path.join(out2, 'buffer.jsonl'), 'utf8'), fs.readFileSync(path.join(out, 'buffer.jsonl'), 'utf8'), 'the same buffer');
  t.ok(fs.readFileSync(path.join(out2, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(out, 'adapter_model.safetensors'))), 'the same adapter, bit for bit');
  await t.rejects(runHir({ model: v1, data: prompts, out, ...small }, { ...quiet, reward: blue() }), { code: 'E_ARGUMENT', message: /already holds an HIR run/ });
});

t.test("SFT's --label-smoothing: the step loss is the smoothed one, nll and eval_nll beside it", async (t) => {
  const data = path.join(tmp, 'ls.jsonl');
  fs.writeFileSync(data, Array.from({ length: 12 }, (_, i) => JSON.stringify({ prompt: `Colours ${i}:`, completion: ' red blue.' })).join('\n') + '\n');
  const run = async (labelSmoothing: number) => {
    const m: SftStepMetrics[] = [];
    await runSft({ model: v1, data, out: path.join(tmp, `ls-${labelSmoothing}`), steps: 2, batchSize: 6, evalFraction: 0.25, labelSmoothing, device: 'cpu' }, { ...quiet, onStep: (x) => m.push(x) });
    return m;
  };
  const plain = await run(0), ls = await run(0.3);
  t.equal(plain[0].nll, undefined, 'eps 0: no nll field (loss is the NLL)');
  t.ok(Math.abs(ls[0].nll! - plain[0].loss) < 1e-6 * plain[0].loss, `the first step's NLL is the same (${ls[0].nll} vs ${plain[0].loss})`);
  t.ok(ls[0].loss > ls[0].nll! + 0.1, `the smoothed loss (${ls[0].loss}) exceeds the NLL of a confident model`);
  const ev = ls.find((m) => m.eval_loss !== undefined)!;
  t.ok(ev.eval_nll !== undefined && ev.eval_loss! > ev.eval_nll, 'eval_loss smoothed, eval_nll beside it');
  t.throws(() => resolveSftConfig({ model: v1, data, out: path.join(tmp, 'ls-bad'), labelSmoothing: -0.1 }), { code: 'E_ARGUMENT', message: /--label-smoothing/ });
});

t.test('the hir recipe: sft -> hir on the merged SFT model, the checker from the recipe run', async (t) => {
  const out = path.join(tmp, 'recipe');
  const rows = Array.from({ length: 12 }, (_, i) => ({ prompt: `Colours ${i}:`, completion: ' red blue green.' }));
  const sftData = path.join(tmp, 'recipe-sft.jsonl');
  fs.writeFileSync(sftData, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const cfg = resolveRecipeConfig({
    recipe: 'hir',
    model: base,
    out,
    seed: 3,
    device: 'cpu',
    sft: { data: sftData, steps: 2, batch_size: 6 },
    hir: { data: prompts, iterations: 1, epochs: 1, samples_per_prompt: 2, max_new_tokens: 6, eval_fraction: 0 },
  });
  const r = await runRecipe(cfg, { log: () => {}, progress: false, handleSigint: false, reward: blue() });
  t.same(r.stages.map((s) => s.name), ['sft', 'hir']);
  const hirCfg = JSON.parse(fs.readFileSync(path.join(out, 'hir', 'hir_config.json'), 'utf8'));
  t.equal(path.resolve(hirCfg.model), path.resolve(out, 'sft', 'merged'), 'hir samples from the merged SFT model');
  t.ok(fs.existsSync(path.join(out, 'hir', 'adapter_model.safetensors')), 'the policy adapter in the stage folder');
});

t.test('CLI: hir and sft list their options', { skip: !cliBuilt() && 'the CLI is not built' }, async (t) => {
  const h = runCli(['hir', '--help']);
  t.equal(h.status, 0);
  for (const f of ['--reward-model', '--relabel-module', '--wrong-template', '--threshold', '--label-smoothing', '--contrastive-coef', '--entropy-coef', '--iterations', '--epochs', '--resume']) t.match(h.stdout, f, `hir --help lists ${f}`);
  t.match(runCli(['sft', '--help']).stdout, '--label-smoothing', 'sft --help lists --label-smoothing');
  const bad = runCli(['hir', '--model', v1, '--data', prompts, '--out', path.join(tmp, 'cli-bad'), '--relabel-module', 'x.py']);
  t.not(bad.status, 0);
  t.match(bad.stderr, /--relabel-module x\.py: expected a \.js/);
});
