/**
 * The rejection-sampling stage end to end on a tiny model: a policy first
 * finetuned to name colours at random, a programmatic reward counting the
 * word "blue"; rejection sampling must raise the policy's held-out mean
 * reward. Also: the stage folder, metrics, min-reward / accumulate, abort,
 * prompt formats, bad input (file:line errors, existing files kept) and the
 * CLI with a score-head reward model.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { openSafetensors, writeSafetensors } from '../lib/safetensors';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { seededRandom } from '../lib/data/sft-data';
import { runSft } from '../lib/stages/sft';
import { loadPrompts, resolveRsConfig, runRejectionSampling, RS_DEFAULTS, type RsConfig, type RsMetrics } from '../lib/stages/rejection';
import { functionReward, type RewardInput } from '../lib/reward/sources';
import { RlhfError } from '../lib/errors';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-rs-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const v1 = path.join(tmp, 'v1');
const prompts = path.join(tmp, 'prompts.jsonl');
const held = path.join(tmp, 'held.jsonl');
const rm = path.join(tmp, 'rm');
const COLOURS = ['red', 'blue', 'green', 'yellow', 'black', 'white'];

const blueCount = (s: string) => (s.match(/\bblue\b/g) ?? []).length;
const blue = () => functionReward((b) => b.map((x) => blueCount(x.response)), 'blue');

function rewrite(dir: string, edit: (name: string) => { fill?: { kind: 'const'; value: number } | { kind: 'normal'; std: number; seed: number }; drop?: boolean } | null, add: { name: string; shape: number[]; std: number }[] = []) {
  const file = path.join(dir, 'model.safetensors');
  const st = openSafetensors(file);
  const tensors = st.header.tensors.flatMap((x) => {
    const e = edit(x.name);
    if (e?.drop) return [];
    return [e?.fill ? { name: x.name, dtype: x.dtype, shape: x.shape, fill: e.fill } : { name: x.name, dtype: x.dtype, shape: x.shape, data: st.tensorBytes(x.name) }];
  });
  st.close();
  writeSafetensors(file, [...tensors, ...add.map((a) => ({ name: a.name, dtype: 'F32' as const, shape: a.shape, fill: { kind: 'normal' as const, std: a.std, seed: 9 } }))], { format: 'pt' });
}

t.before(async () => {
  // A random model cannot say anything confidently through its frozen output scale (see stage-sft-train.test.ts): a final-norm weight of 8 gives it head room.
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  rewrite(base, (n) => (n === 'model.norm.weight' ? { fill: { kind: 'const', value: 8 } } : null));
  // The starting policy ("v1"): fully finetuned to answer "Colours N:" with four random colour words.
  const rand = seededRandom(7);
  const rows = Array.from({ length: 48 }, (_, i) => ({ prompt: `Colours ${i}:`, completion: ' ' + Array.from({ length: 4 }, () => COLOURS[Math.floor(rand() * 6)]).join(' ') + '.' }));
  const sftData = path.join(tmp, 'sft.jsonl');
  fs.writeFileSync(sftData, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  await runSft({ model: base, data: sftData, out: v1, full: true, steps: 40, batchSize: 16, lr: 2e-3, lrSchedule: 'constant', device: 'cpu' }, { handleSigint: false });
  fs.writeFileSync(prompts, Array.from({ length: 32 }, (_, i) => JSON.stringify({ prompt: `Colours ${100 + i}:` })).join('\n') + '\n');
  fs.writeFileSync(held, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `Colours ${200 + i}:` })).join('\n') + '\n');
  // A score-head reward model on the same vocabulary (random scores: the CLI test checks plumbing, not learning).
  await initModel({ arch: 'llama', preset: 'tiny', outDir: rm, seed: 3 });
  const cfgFile = path.join(rm, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, architectures: ['LlamaForSequenceClassification'], num_labels: 1 }));
  rewrite(rm, (n) => (n === 'lm_head.weight' ? { drop: true } : null), [{ name: 'score.weight', shape: [1, cfg.hidden_size], std: 0.1 }]);
});

const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const quiet = { handleSigint: false };
const small: Partial<RsConfig> = { evalData: held, evalSamples: 4, k: 8, maxNewTokens: 8, temperature: 1, device: 'cpu', sft: { lr: 2e-3, epochs: 3, batchSize: 8, loraR: 8, loraAlpha: 16 } };

t.test('rejection sampling raises the held-out mean reward (LoRA created in round 1, continued in round 2)', async (t) => {
  const out = path.join(tmp, 'rs');
  const metrics: RsMetrics[] = [];
  const r = await runRejectionSampling({ model: v1, data: prompts, out, rounds: 2, ...small }, { ...quiet, reward: blue(), onMetrics: (m) => metrics.push(m) });
  t.comment(`held-out mean "blue" count: ${r.initialReward} -> ${r.finalReward}`);
  t.ok(r.initialReward! > 0 && r.initialReward! < 1, `the starting policy names blue now and then (${r.initialReward})`);
  t.ok(r.finalReward! > r.initialReward! + 0.5, `held-out mean reward ${r.initialReward} -> ${r.finalReward}`);
  t.equal(r.rounds, 2);
  t.equal(r.interrupted, false);
  t.equal(r.trainPrompts, 32);
  t.equal(r.evalPrompts, 16);
  t.same(r.policy, { model: v1, adapter: path.join(out, 'round-2') });
  t.ok(r.roundStats[1].meanReward > r.roundStats[0].meanReward, `round 2 samples score higher (${r.roundStats[0].meanReward} -> ${r.roundStats[1].meanReward})`);

  // metrics.jsonl: eval, then per round sample + sft steps + round, then eval.
  const lines = readJsonl(r.metricsFile);
  t.same(lines, JSON.parse(JSON.stringify(metrics)), 'onMetrics sees every metrics.jsonl record');
  const phases = lines.map((m) => `${m.phase}${m.round}`).filter((p, i, a) => p !== a[i - 1]);
  t.same(phases, ['eval0', 'sample1', 'sft1', 'round1', 'sample2', 'sft2', 'round2', 'eval2']);
  const s1 = lines.find((m) => m.phase === 'sample' && m.round === 1);
  t.match(s1, { prompts: 32, samples: 256, kept: 32, sft_rows: 32 });
  t.ok(s1.mean_best_reward >= s1.mean_reward && s1.max_reward >= s1.mean_best_reward && s1.samples_per_sec > 0 && s1.mean_response_tokens > 0);
  t.equal(lines.filter((m) => m.phase === 'sft' && m.round === 1).length, 12, '32 rows, batch 8, 3 epochs');
  t.equal(lines[0].mean_reward, r.initialReward);
  t.equal(lines[lines.length - 1].mean_reward, r.finalReward);

  // Each round's SFT data holds every prompt's best sample, token for token.
  const tok = loadTokenizer(v1);
  const samples = readJsonl(path.join(out, 'round-1', 'samples.jsonl'));
  const sft = readJsonl(path.join(out, 'round-1', 'sft.jsonl'));
  t.equal(samples.length, 256);
  t.equal(sft.length, 32);
  for (const row of sft) {
    const mine = samples.filter((s) => s.source_line === row.source_line);
    t.equal(mine.length, 8);
    if (row.reward !== Math.max(...mine.map((s) => s.reward))) t.fail(`line ${row.source_line}: kept reward ${row.reward} is not the best`);
    const p = tok.encode(row.prompt);
    if (JSON.stringify(row.input_ids.slice(0, p.length)) !== JSON.stringify(p) || row.labels.slice(0, p.length).some((l: number) => l !== -100)) t.fail(`line ${row.source_line}: prompt ids / labels`);
    if (blueCount(row.completion) !== row.reward) t.fail(`line ${row.source_line}: completion text vs reward`);
  }
  for (const f of ['round-1/adapter_config.json', 'round-1/adapter_model.safetensors', 'round-2/adapter_model.safetensors', 'rs_config.json', 'rs_result.json']) t.ok(fs.existsSync(path.join(out, f)), f);
  t.equal(JSON.parse(fs.readFileSync(path.join(out, 'round-1', 'sft_config.json'), 'utf8')).adapter, null, 'round 1 creates the adapter');
  t.equal(JSON.parse(fs.readFileSync(path.join(out, 'round-2', 'sft_config.json'), 'utf8')).adapter, path.join(out, 'round-1'), 'round 2 continues it');

  // The stage folder is not reused.
  const again = (await runRejectionSampling({ model: v1, data: prompts, out, ...small }, { ...quiet, reward: blue() }).catch((e) => e)) as RlhfError;
  t.equal(again.code, 'E_ARGUMENT');
  t.match(again.message, /already holds a rejection-sampling run/);
});

t.test('--min-reward keeps nothing (policy unchanged); accumulate keeps the best over rounds; safe flags reach the reward', async (t) => {
  const none = path.join(tmp, 'rs-none');
  const logs: string[] = [];
  const r = await runRejectionSampling({ model: v1, data: prompts, out: none, ...small, k: 2, evalData: null, evalFraction: 0, minReward: 100 }, { ...quiet, reward: blue(), log: (l) => logs.push(l) });
  t.equal(r.initialReward, null);
  t.equal(r.finalReward, null);
  t.same(r.policy, { model: v1, adapter: null });
  t.equal(fs.readFileSync(path.join(none, 'round-1', 'sft.jsonl'), 'utf8'), '');
  t.notOk(fs.existsSync(path.join(none, 'round-1', 'adapter_config.json')));
  t.ok(logs.some((l) => /no response reached --min-reward 100; the policy is unchanged/.test(l)));

  const acc = path.join(tmp, 'rs-acc');
  const seen: (boolean | undefined)[] = [];
  const flagged = path.join(tmp, 'flagged.jsonl');
  fs.writeFileSync(flagged, Array.from({ length: 8 }, (_, i) => JSON.stringify({ prompt: `Colours ${300 + i}:`, ...(i % 2 ? { safe: i % 4 === 1 } : {}) })).join('\n') + '\n');
  const src = functionReward((b: RewardInput[]) => {
    b.forEach((x) => seen.push(x.safe));
    return b.map((x) => blueCount(x.response));
  });
  await runRejectionSampling({ model: v1, data: flagged, out: acc, ...small, k: 2, rounds: 2, evalData: null, evalFraction: 0, accumulate: true, sft: { lr: 0, steps: 1 } }, { ...quiet, reward: src });
  t.same(seen.slice(0, 8), [undefined, undefined, true, true, undefined, undefined, false, false], 'prompt-major: K=2 samples per prompt carry its "safe" flag');
  const r1 = readJsonl(path.join(acc, 'round-1', 'samples.jsonl')), r2 = readJsonl(path.join(acc, 'round-2', 'samples.jsonl'));
  const sft2 = readJsonl(path.join(acc, 'round-2', 'sft.jsonl'));
  t.equal(sft2.length, 8);
  for (const row of sft2) {
    const best = Math.max(...[...r1, ...r2].filter((s) => s.source_line === row.source_line).map((s) => s.reward));
    if (row.reward !== best) t.fail(`line ${row.source_line}: ${row.reward} is not the best over both rounds (${best})`);
  }
  t.pass('round 2 trains on the best of both rounds');
});

t.test('abort during the first SFT: the round is saved, the run reports interrupted', async (t) => {
  const out = path.join(tmp, 'rs-abort');
  const ac = new AbortController();
  const r = await runRejectionSampling(
    { model: v1, data: prompts, out, ...small, rounds: 3 },
    { ...quiet, reward: blue(), signal: ac.signal, onMetrics: (m) => m.phase === 'sft' && m.step === 2 && ac.abort() },
  );
  t.equal(r.interrupted, true);
  t.equal(r.rounds, 0, 'no round completed');
  t.equal(r.finalReward, null);
  t.ok(r.initialReward !== null);
  t.equal(readJsonl(r.metricsFile).filter((m) => m.phase === 'sft').length, 2, 'SFT stopped after the current step');
  t.ok(fs.existsSync(path.join(out, 'round-1', 'adapter_model.safetensors')), 'the interrupted round was saved');
  t.notOk(fs.existsSync(path.join(out, 'round-2')));
});

t.test('prompt formats: string, conversational prompt, messages (a trailing assistant turn dropped)', async (t) => {
  const tok = loadTokenizer(v1);
  const f = path.join(tmp, 'formats.jsonl');
  const msgs = [{ role: 'user', content: 'Colours please' }];
  fs.writeFileSync(f, [{ prompt: 'Colours 1:', safe: false }, { prompt: msgs }, { messages: [...msgs, { role: 'assistant', content: 'red' }] }].map((x) => JSON.stringify(x)).join('\n') + '\n');
  const rows = loadPrompts(f, tok, { maxPromptTokens: 200, vocabSize: 512 });
  t.same(rows[0].ids, tok.encode('Colours 1:'));
  t.equal(rows[0].safe, false);
  const chat = tok.applyChatTemplate(msgs, { addGenerationPrompt: true });
  t.match(chat, /assistant\n$/);
  t.same(rows[1].ids, tok.encode(chat, { addSpecialTokens: false }));
  t.same(rows[2].ids, rows[1].ids);
  t.equal(rows[2].text, chat);
  t.same(rows[2].prompt, msgs);
});

t.test('bad input: one E_DATA naming file:line; the stage folder keeps its files and gets none', async (t) => {
  const out = path.join(tmp, 'rs-bad');
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, 'notes.txt'), 'keep me');
  const ok = JSON.stringify({ prompt: 'Colours 1:' });
  const cases: [string, string, RegExp][] = [
    ['malformed.jsonl', [ok, '{"prompt": "x"', ok].join('\n') + '\n', /malformed\.jsonl:2: invalid JSON/],
    ['missing.jsonl', [ok, ok, JSON.stringify({ question: 'x' })].join('\n') + '\n', /missing\.jsonl:3: expected \{"prompt": "\.\.\."\} or \{"messages": \[\.\.\.\]\} \(a prompt row; "prompt" is missing\)/],
    ['empty.jsonl', '\n\n', /empty\.jsonl: no data \(the file is empty\)/],
    ['emptyprompt.jsonl', [ok, JSON.stringify({ prompt: '' })].join('\n'), /emptyprompt\.jsonl:2: "prompt" is empty/],
    ['badsafe.jsonl', JSON.stringify({ prompt: 'x', safe: 'no' }), /badsafe\.jsonl:1: "safe" must be true or false/],
    ['long.jsonl', [ok, JSON.stringify({ prompt: 'red '.repeat(300) })].join('\n'), /long\.jsonl:2: the prompt is \d+ tokens, more than the 248 that the context leaves after --max-new-tokens/],
  ];
  for (const [name, text, re] of cases) {
    const file = path.join(tmp, name);
    fs.writeFileSync(file, text);
    const e = (await runRejectionSampling({ model: v1, data: file, out, ...small }, { ...quiet, reward: blue() }).catch((e) => e)) as RlhfError;
    t.equal(e.code, 'E_DATA', name);
    t.match(e.message, re, name);
  }
  const eHeld = (await runRejectionSampling({ model: v1, data: prompts, out, ...small, evalData: path.join(tmp, 'missing.jsonl') }, { ...quiet, reward: blue() }).catch((e) => e)) as RlhfError;
  t.match(eHeld.message, /missing\.jsonl:3:/, 'the held-out file is checked too');
  t.same(fs.readdirSync(out), ['notes.txt'], 'nothing written, nothing lost');
  t.equal(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8'), 'keep me');
});

t.test('config: defaults and E_ARGUMENT naming the flag', async (t) => {
  const c = resolveRsConfig({ model: 'm', data: 'd', out: 'o', rewardModel: 'r' });
  t.match(c, { ...RS_DEFAULTS, combine: 'helpfulness', minReward: null, evalData: null, adapter: null });
  t.match(c, { rounds: 1, k: 4, temperature: 1, topP: 1, maxNewTokens: 128, evalFraction: 0.1, seed: 42 });
  t.equal(resolveRsConfig({ model: 'm', data: 'd', out: 'o', rewardModel: 'r', safetyModel: 's' }).combine, 'llama2');
  t.equal(resolveRsConfig({ model: 'm', data: 'd', out: 'o', rewardModel: 'r', evalData: 'e' }).evalFraction, 0);
  const bad: [Partial<RsConfig>, RegExp][] = [
    [{ rewardModel: null }, /--reward-model is required/],
    [{ k: 0 }, /--k must be a positive integer/],
    [{ rounds: 1.5 }, /--rounds/],
    [{ temperature: 0 }, /--temperature must be > 0/],
    [{ topP: 1.5 }, /--top-p/],
    [{ maxNewTokens: 0 }, /--max-new-tokens/],
    [{ evalFraction: 0.2, evalData: 'e' }, /--eval-fraction and --eval-data cannot be combined/],
    [{ combine: 'llama2' }, /--combine llama2 needs --safety-model/],
    [{ safetyThreshold: 1 }, /--safety-threshold/],
    [{ full: true, adapter: 'a' }, /--adapter and --full cannot be combined/],
    [{ full: true, sft: { loraR: 4 } }, /LoRA options do not apply with --full: --lora-r/],
    [{ adapter: 'a', sft: { loraAlpha: 4 } }, /--lora-alpha cannot be given with --adapter/],
    [{ sft: { batchSize: 0 } }, /--batch-size/],
    [{ out: 'm' }, /--out must differ from --model/],
  ];
  for (const [cfg, re] of bad) {
    const e = t.throws(() => resolveRsConfig({ model: 'm', data: 'd', out: 'o', rewardModel: 'r', ...cfg })) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT');
    t.match(e.message, re);
  }
  const e = t.throws(() => resolveRsConfig({ model: 'm', data: 'd', out: 'o', rewardModel: 'r' }, { rewardSource: true })) as RlhfError;
  t.match(e.message, /cannot be given together with a reward source/);
});

t.test('CLI: rs with a score-head reward model', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const out = path.join(tmp, 'rs-cli');
  const r = runCli(['rs', '--model', v1, '--data', prompts, '--reward-model', rm, '--out', out, '--k', '2', '--max-new-tokens', '6', '--steps', '2', '--batch-size', '8', '--lora-r', '4', '--eval-fraction', '0.25', '--device', 'cpu']);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one summary line');
  t.match(lines[0], new RegExp(`^rs: 1 round of 24 prompts x 2 samples in \\S+s; held-out mean reward \\S+ -> \\S+ \\(8 prompts\\); policy: LoRA adapter ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/round-1$`));
  t.match(r.stderr, /rs round 1\/1: reward mean/);
  const samples = readJsonl(path.join(out, 'round-1', 'samples.jsonl'));
  t.equal(samples.length, 48);
  t.ok(samples.every((s) => typeof s.parts.helpfulness === 'number' && s.parts.helpfulness === s.reward), 'one reward model: reward = its raw score');
  const bad = runCli(['rs', '--model', v1, '--data', prompts, '--reward-model', v1, '--out', path.join(tmp, 'rs-cli-bad'), '--device', 'cpu']);
  t.equal(bad.status, 1);
  t.match(bad.stderr.trim(), /^rlhf-native: error E_MODEL: --reward-model .*: a reward model must be a \*ForSequenceClassification folder/);
});
