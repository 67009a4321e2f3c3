/** The score and generate commands, end to end through the CLI. */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCli, cliBuilt } from './helpers/cli';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';

const GOLD = path.join(__dirname, 'fixtures', 'golden');
const skip = !cliBuilt() && 'CLI not compiled';

t.test('score: input_ids rows give the reference log-probs; score heads give rewards', { skip }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-score-'));
  const exp = JSON.parse(fs.readFileSync(path.join(GOLD, 'llama_gqa_tied', 'expected.json'), 'utf8'));
  const data = path.join(tmp, 'd.jsonl');
  fs.writeFileSync(data, exp.unpadded.map((u: { input_ids: number[] }) => JSON.stringify({ input_ids: u.input_ids })).join('\n') + '\n');
  const out = path.join(tmp, 'out.jsonl');
  const r = runCli(['score', '--model', path.join(GOLD, 'llama_gqa_tied'), '--data', data, '--out', out, '--device', 'cpu']);
  t.equal(r.status, 0, r.stderr);
  const rows = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.equal(rows.length, exp.unpadded.length);
  rows.forEach((row, i) => {
    const ref: number[] = exp.unpadded[i].logprobs;
    t.equal(row.logprobs.length, ref.length);
    t.ok(row.logprobs.every((x: number, j: number) => Math.abs(x - ref[j]) < 1e-4 * Math.max(1, Math.abs(ref[j]))), `row ${i} matches PyTorch`);
    t.ok(Math.abs(row.sum - ref.reduce((a, b) => a + b, 0)) < 1e-3, 'sum');
    t.notOk('reward' in row);
  });
  const sexp = JSON.parse(fs.readFileSync(path.join(GOLD, 'llama_score', 'expected.json'), 'utf8'));
  fs.writeFileSync(data, sexp.unpadded.map((u: { input_ids: number[] }) => JSON.stringify({ input_ids: u.input_ids })).join('\n'));
  const r2 = runCli(['score', '--model', path.join(GOLD, 'llama_score'), '--data', data, '--device', 'cpu']);
  t.equal(r2.status, 0, r2.stderr);
  r2.stdout.trim().split('\n').forEach((l, i) => {
    const vals: number[] = sexp.unpadded[i].values;
    t.ok(Math.abs(JSON.parse(l).reward - vals[vals.length - 1]) < 1e-4, `reward ${i} = value at the last token`);
  });
  fs.rmSync(tmp, { recursive: true, force: true });
});

t.test('score: rows tokenised as sft tokenises them (TRL: prompt + completion + EOS as one string), only the trained tokens scored', { skip }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-score-'));
  const model = path.join(tmp, 'm');
  t.equal(runCli(['init', '--arch', 'qwen2', '--preset', 'tiny', '--out', model, '--seed', '3']).status, 0);
  const tok = loadTokenizer(model);
  const prompt = 'Reverse the word cat.', completion = ' The answer is tac.';
  // TRL's rule, written here from its documentation: the whole string with EOS, the prompt's own encoding as the boundary.
  const full = tok.encode(prompt + completion + tok.eosToken!, { addSpecialTokens: true });
  const from = tok.encode(prompt, { addSpecialTokens: true }).length;
  const chat = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello.' }];
  const chatIds = tok.encode(tok.applyChatTemplate(chat, { addGenerationPrompt: false }), { addSpecialTokens: false });
  const data = path.join(tmp, 'd.jsonl');
  fs.writeFileSync(data, [{ prompt, completion }, { input_ids: full }, { text: prompt + completion }, { messages: chat }, { input_ids: chatIds }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const r = runCli(['score', '--model', model, '--data', data, '--device', 'cpu']);
  t.equal(r.status, 0, r.stderr);
  const [pc, ids, text, msgs, msgIds] = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.equal(pc.logprobs.length, full.length - from, 'one log-prob per completion token (EOS included)');
  t.same(pc.logprobs, ids.logprobs.slice(from - 1), 'the tail of the full sequence scores');
  t.same(text.logprobs, ids.logprobs, '{"text"}: the same string, every token after the first');
  t.same(msgs.logprobs, msgIds.logprobs, '{"messages"}: the rendered conversation, every token');
  fs.rmSync(tmp, { recursive: true, force: true });
});

t.test('score: bad data fails with one line naming the file and line', { skip }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-score-'));
  const data = path.join(tmp, 'd.jsonl');
  const model = path.join(GOLD, 'llama_gqa_tied');
  for (const [body, msg] of [
    ['{"input_ids": [1, 2]}\n{"input_ids": [1, 99999]}\n', /d\.jsonl:2: token id 99999 is outside the (model's )?vocabulary/],
    ['{"input_ids": [1, 2]}\nnot json\n', /d\.jsonl:2: invalid JSON/],
    ['{"txt": "x"}\n', /d\.jsonl:1: expected/],
    ['', /no data/],
  ] as const) {
    fs.writeFileSync(data, body);
    const r = runCli(['score', '--model', model, '--data', data, '--device', 'cpu']);
    t.equal(r.status, 1);
    t.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.match(r.stderr, msg);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

t.test('generate: greedy is deterministic, sampling follows the seed, stop strings cut the text', { skip }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-gen-'));
  const model = path.join(tmp, 'm');
  t.equal(runCli(['init', '--arch', 'llama', '--preset', 'tiny', '--out', model, '--seed', '5']).status, 0);
  const run = (...extra: string[]) => {
    const r = runCli(['generate', '--model', model, '--prompt', 'Hello there', '--max-new-tokens', '16', '--device', 'cpu', ...extra]);
    t.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim());
  };
  const g1 = run(), g2 = run();
  t.same(g1, g2);
  t.equal(g1.tokens, 16);
  t.equal(g1.finish, 'length');
  const s1 = run('--temperature', '1', '--seed', '1'), s2 = run('--temperature', '1', '--seed', '1');
  t.same(s1, s2);
  const full = run('--temperature', '1', '--seed', '2');
  const stop = full.completion.slice(3, 5);
  if (stop.length === 2 && !stop.includes('\ufffd')) {
    const cut = run('--temperature', '1', '--seed', '2', '--stop', stop);
    t.equal(cut.finish, 'stop');
    t.equal(cut.completion, full.completion.slice(0, full.completion.indexOf(stop)), 'text ends before the stop string');
  }
  const chat = path.join(tmp, 'chat.jsonl');
  const hi = [{ role: 'user', content: 'hi' }];
  const rows = [{ messages: hi }, { prompt: 'abc' }, { text: 'abc' }, { messages: [...hi, { role: 'assistant', content: 'yo' }] }, { prompt: hi, completion: [{ role: 'assistant', content: 'yo' }] }];
  fs.writeFileSync(chat, rows.map((x) => JSON.stringify(x)).join('\n') + '\n');
  const r = runCli(['generate', '--model', model, '--data', chat, '--max-new-tokens', '4', '--device', 'cpu']);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.equal(lines.length, 5);
  t.match(lines[0].prompt, /<\|im_start\|>user\nhi<\|im_end\|>\n<\|im_start\|>assistant\n$/);
  t.equal(lines[2].prompt, lines[1].prompt, '{"text"} is a prompt');
  t.equal(lines[3].prompt, lines[0].prompt, "{\"messages\"}: a trailing assistant turn is dropped");
  t.equal(lines[4].prompt, lines[0].prompt, '{"prompt": [messages]} with a completion: the prompt');
  fs.rmSync(tmp, { recursive: true, force: true });
});
