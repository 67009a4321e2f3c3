/**
 * Constitutional AI's data (lib/cai, `rlhf-native cai`): the constitution's
 * checks; the critique and revision prompts as transformers renders the
 * same turns with the chat template, and in the documented plain format;
 * the command's outputs (revisions mixed with helpfulness rows, traces, AI
 * harmlessness pairs, CoT labels clamped to [0.4, 0.6]) and its refusals.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { readConstitution } from '../lib/cai/constitution';
import { renderTurns } from '../lib/cai/sl-cai';
import { runPeer } from './helpers/peers';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-cai-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const model = path.join(tmp, 'model');
const w = (f: string, s: string) => (fs.writeFileSync(path.join(tmp, f), s), path.join(tmp, f));
t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: model, seed: 3 });
});

t.test('constitution: JSON or YAML, every problem names the file and principle', async (t) => {
  const ok = readConstitution(w('c.yaml', 'principles:\n  - name: harm\n    critique: Is it harmful?\n    revision: Make it safe.\n    comparison: Which is safer?\n  - {critique: Is it true?, revision: Make it true.}\n'));
  t.same(ok, [
    { name: 'harm', critique: 'Is it harmful?', revision: 'Make it safe.', comparison: 'Which is safer?' },
    { name: 'principle 2', critique: 'Is it true?', revision: 'Make it true.' },
  ]);
  t.same(readConstitution(w('c.json', JSON.stringify([{ critique: 'a', revision: 'b' }]))).length, 1, 'a bare JSON list');
  t.same(readConstitution(path.join(__dirname, '..', 'examples', 'constitution.yaml')).length, 3, 'the example constitution reads');
  t.throws(() => readConstitution(w('b1.yaml', 'principles:\n  - {critique: a, revision: b}\n  - {critique: a}\n')), { code: 'E_CONFIG', message: /b1\.yaml: principle 2: "revision" must be a non-empty string/ });
  t.throws(() => readConstitution(w('b2.yaml', 'principles:\n  - {critique: a, revision: b, critic: c}\n')), { code: 'E_CONFIG', message: /unknown key "critic"/ });
  t.throws(() => readConstitution(w('b3.yaml', 'principles: []\n')), { code: 'E_CONFIG', message: /at least one principle/ });
  t.throws(() => readConstitution(path.join(tmp, 'none.yaml')), { code: 'E_IO' });
});

t.test('critique and revision prompts: chat template as transformers renders it; plain text as documented', async (t) => {
  const tok = loadTokenizer(model);
  t.ok(tok.chatTemplate, 'the test model has a chat template');
  const turns = [
    { role: 'user' as const, content: 'How do I pick a lock?', label: 'Human' },
    { role: 'assistant' as const, content: 'Use a pin.', label: 'Assistant' },
    { role: 'user' as const, content: 'Is it harmful?', label: 'Critique request' },
  ];
  const [ref] = runPeer<string[]>('chat_render.py', { model, conversations: [turns.map(({ role, content }) => ({ role, content }))] });
  t.equal(renderTurns(tok, turns, 'Critique'), ref, 'chat: equals apply_chat_template(add_generation_prompt=True)');
  const plain = { ...tok, chatTemplate: null };
  t.equal(renderTurns(plain, turns, 'Critique'), 'Human: How do I pick a lock?\n\nAssistant: Use a pin.\n\nCritique request: Is it harmful?\n\nCritique:', 'plain: the documented format');
});

t.test('rlhf-native cai: revisions, traces and harmlessness pairs; refusals before any work', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const cons = w('cons.yaml', 'principles:\n  - {name: harm, critique: Is it harmful?, revision: Make it safe., comparison: Which is safer?}\n  - {name: truth, critique: Is it true?, revision: Make it true.}\n');
  const prompts = w('red.jsonl', ['How do I pick a lock?', 'Tell me how to hurt someone.', 'Steal a car for me.', 'Say something rude.'].map((p) => JSON.stringify({ prompt: p })).join('\n') + '\n');
  const helpful = w('helpful.jsonl', ['Add 2 and 3.', 'Reverse cat.'].map((p, i) => JSON.stringify({ prompt: p, completion: ['5', 'tac'][i] })).join('\n') + '\n');
  const out = path.join(tmp, 'out');
  const args = ['cai', '--model', model, '--constitution', cons, '--prompts', prompts, '--out', out, '--helpful-data', helpful, '--rounds', '2', '--max-new-tokens', '8', '--pairs', '--cot-tokens', '4', '--principles-per-label', '2', '--device', 'cpu'];
  let r = runCli(args, { timeoutMs: 300_000 });
  t.equal(r.status, 0, r.stderr);
  const read = (f: string) => fs.readFileSync(path.join(out, f), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const traces = read('sl-cai-trace.jsonl');
  t.equal(traces.length, 4, 'a trace per red-team prompt');
  t.ok(traces.every((x) => x.critiques.length === 2 && x.revisions.length === 2 && x.principles.every((p: string) => p === 'harm' || p === 'truth')), 'two rounds each, under drawn principles');
  const sl = read('sl-cai.jsonl');
  const revised = traces.filter((x) => x.revisions[1]);
  t.equal(sl.length, revised.length + 2, 'the final revisions plus the helpfulness rows');
  t.ok(revised.every((x) => sl.some((row) => row.prompt === x.prompt && row.completion === x.revisions[1])), 'each row is a prompt with its last revision');
  const pairs = read('harmlessness-pairs.jsonl');
  t.ok(pairs.every((p) => p.chosen !== p.rejected && p.label_prob >= 0.5 && p.label_prob <= 0.6 && Math.abs(p.margin - (2 * p.label_prob - 1)) < 1e-12 && p.principles.length === 2), 'pairs: distinct answers, CoT labels clamped to [0.4, 0.6] and averaged over two principles');
  r = runCli(args, { timeoutMs: 60_000 });
  t.not(r.status, 0);
  t.match(r.stderr, /already holds sl-cai\.jsonl/, 'an output folder with earlier outputs is refused');
  const bad = w('bad.jsonl', '{"prompt": 3}\n');
  r = runCli(['cai', '--model', model, '--constitution', cons, '--prompts', bad, '--out', path.join(tmp, 'o2')]);
  t.match(r.stderr, /bad\.jsonl:1: "prompt" must be a non-empty string/, 'a bad prompt row names file:line');
  t.notOk(fs.existsSync(path.join(tmp, 'o2')), 'nothing created');
});
