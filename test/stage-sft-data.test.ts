/**
 * SFT data formats: exact ids, labels and loss masks, computed by hand from
 * the tokenizer; truncation; every bad row -> E_DATA naming file:line; batch
 * packing and the step plan (order, accumulation, shuffle, epochs, eval split).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadTokenizer, type Tokenizer } from '../lib/tokenizer/tokenizer';
import { RlhfError } from '../lib/errors';
import { loadSftData, packSftBatch, planSteps, splitEval, stepsPerEpoch, lossMaskFromLabels, type SftDataOptions } from '../lib/data/sft-data';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-sft-data-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
function jsonl(rows: unknown[]): string {
  const f = path.join(tmp, `d${n++}.jsonl`);
  fs.writeFileSync(f, rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n');
  return f;
}
const I = -100;

let llama: Tokenizer, gpt2: Tokenizer;
// These tests pin `--tokenize separate` (prompt and completion encoded apart); the default, TRL's
// tokenization, is checked against TRL itself in test/trl-data-parity.test.ts.
const opts = (tok: Tokenizer, extra: Partial<SftDataOptions> = {}): SftDataOptions => ({ tokenizer: tok, maxLen: 256, vocabSize: 512, tokenize: 'separate', ...extra });

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: path.join(tmp, 'llama') });
  await initModel({ arch: 'gpt2', preset: 'tiny', outDir: path.join(tmp, 'gpt2') });
  llama = loadTokenizer(path.join(tmp, 'llama'));
  gpt2 = loadTokenizer(path.join(tmp, 'gpt2'));
});

t.test('{prompt, completion}: prompt with special tokens, completion without, + EOS; loss on the completion', async (t) => {
  for (const tok of [llama, gpt2]) {
    const prompt = 'What colour is the sky?', completion = ' The sky is blue.';
    const p = tok.encode(prompt, { addSpecialTokens: true }), c = tok.encode(completion, { addSpecialTokens: false });
    const eos = tok.eosTokenId!;
    t.ok(p.length > 1 && c.length > 1);
    const [e] = loadSftData(jsonl([{ prompt, completion }]), opts(tok)).examples;
    t.same(e.ids, [...p, ...c, eos]);
    t.same(e.labels, [...p.map(() => I), ...c, eos]);
    // logp[t] predicts ids[t+1]: the first completion token is predicted at t = p.length - 1.
    const mask = Array.from({ length: p.length + c.length }, (_, i) => (i + 1 >= p.length ? 1 : 0));
    t.same(Array.from(e.lossMask), mask);
    t.equal(e.targets, c.length + 1);
    t.equal(e.format, 'prompt_completion');
    t.equal(e.line, 1);
  }
  // A completion that already ends in EOS does not get a second one.
  const tok = gpt2;
  const [e] = loadSftData(jsonl([{ prompt: 'a', completion: ' b<|endoftext|>' }]), opts(tok)).examples;
  t.equal(e.ids.filter((x) => x === tok.eosTokenId).length, 1);
  // eosTokenId: null appends nothing
  const [f] = loadSftData(jsonl([{ prompt: 'a', completion: ' b' }]), opts(tok, { eosTokenId: null })).examples;
  t.same(f.ids, [...tok.encode('a'), ...tok.encode(' b', { addSpecialTokens: false })]);
});

t.test('{text}: every token is a target, EOS appended', async (t) => {
  const text = 'Once upon a time there was a cat.';
  const ids = [...llama.encode(text, { addSpecialTokens: true }), llama.eosTokenId!];
  const [e] = loadSftData(jsonl([{ text }]), opts(llama)).examples;
  t.same(e.ids, ids);
  t.same(e.labels, ids);
  t.same(Array.from(e.lossMask), ids.slice(1).map(() => 1));
  t.equal(e.targets, ids.length - 1, 'the first token is never predicted');
});

t.test('{messages}: chat template, loss on assistant turns only (content + end-of-turn)', async (t) => {
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'What is 2+2?' },
    { role: 'assistant', content: 'It is 4.' },
    { role: 'user', content: 'And 3+3?' },
    { role: 'assistant', content: 'Six.' },
  ];
  // The ChatML template `init` writes (with BOS for Llama), cut by hand into
  // the pieces that are / are not assistant output.
  const pieces: [string, boolean][] = [
    ['<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n', false],
    ['It is 4.<|im_end|>\n', true],
    ['<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n', false],
    ['Six.<|im_end|>\n', true],
  ];
  t.equal(llama.applyChatTemplate(messages), pieces.map((p) => p[0]).join(''));
  const ids: number[] = [], labels: number[] = [];
  for (const [text, train] of pieces) {
    const x = llama.encode(text, { addSpecialTokens: false });
    ids.push(...x);
    labels.push(...x.map((id) => (train ? id : I)));
  }
  t.same(ids, llama.encode(pieces.map((p) => p[0]).join(''), { addSpecialTokens: false }), 'the pieces tokenise like the whole');
  const [e] = loadSftData(jsonl([{ messages }]), opts(llama)).examples;
  t.same(e.ids, ids);
  t.same(e.labels, labels);
  t.same(Array.from(e.lossMask), labels.slice(1).map((l) => (l === I ? 0 : 1)));
  t.equal(e.targets, labels.filter((l) => l !== I).length);
  t.equal(e.ids.filter((x) => x === llama.eosTokenId).length, 0, 'no EOS added: the template ends turns');
  const imEnd = llama.tokenToId('<|im_end|>')!;
  t.equal(e.labels.filter((x) => x === imEnd).length, 2, "each assistant turn's <|im_end|> is a target");

  // Conversational prompt/completion: loss on everything after the prompt's generation prompt.
  const [c] = loadSftData(jsonl([{ prompt: messages.slice(0, 4), completion: messages.slice(4) }]), opts(llama)).examples;
  t.same(c.ids, ids);
  const start = ids.length - llama.encode('Six.<|im_end|>\n', { addSpecialTokens: false }).length;
  t.same(c.labels, ids.map((id, i) => (i >= start ? id : I)));
  t.equal(c.format, 'conversational_prompt_completion');
});

t.test('{input_ids, labels}: -100 ignored, shifted mask, labels must equal ids', async (t) => {
  const f = jsonl([
    { input_ids: [5, 6, 7, 8, 9], labels: [I, I, 7, 8, I] },
    { input_ids: [5, 6, 7] },
    { input_ids: [5, 6, 7], labels: [5, I, 7] },
  ]);
  const d = loadSftData(f, { tokenizer: null, maxLen: 256, vocabSize: 512 });
  const [a, b, c] = d.examples;
  t.same(a.ids, [5, 6, 7, 8, 9]);
  t.same(Array.from(a.lossMask), [0, 1, 1, 0], 'logp[t] counts when labels[t+1] != -100');
  t.equal(a.targets, 2);
  t.same(b.labels, [5, 6, 7], 'no labels: every token');
  t.same(Array.from(b.lossMask), [1, 1]);
  t.same(Array.from(c.lossMask), [0, 1], 'labels[0] is never a target');
  t.equal(c.targets, 1);
  t.same(d.stats, { rows: 3, tokens: 11, targets: 5, truncatedRows: 0, noTargetRows: 0, formats: { tokens: 3 } });
  t.same(Array.from(lossMaskFromLabels([1, I, 3])), [0, 1]);

  const bad = jsonl([{ input_ids: [5, 6, 7] }, { input_ids: [5, 6, 7], labels: [I, 7, 6] }]);
  const e = t.throws(() => loadSftData(bad, { tokenizer: null, maxLen: 256, vocabSize: 512 })) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${bad}:2: labels[1] = 7 differs from input_ids[1] = 6`);
});

t.test('truncation to maxLen keeps the start; rows without targets are counted', async (t) => {
  const f = jsonl([{ input_ids: [1, 2, 3, 4, 5, 6], labels: [I, I, I, I, 5, 6] }, { input_ids: [1, 2, 3, 4, 5, 6] }]);
  const d = loadSftData(f, { tokenizer: null, maxLen: 4, vocabSize: 512 });
  t.same(d.examples[0].ids, [1, 2, 3, 4]);
  t.equal(d.examples[0].targets, 0);
  t.equal(d.examples[0].truncated, 2);
  t.same(d.examples[1].ids, [1, 2, 3, 4]);
  t.equal(d.examples[1].targets, 3);
  t.equal(d.stats.truncatedRows, 2);
  t.equal(d.stats.noTargetRows, 1);
});

t.test('bad rows -> E_DATA naming file:line', async (t) => {
  const good = { input_ids: [1, 2, 3] };
  const cases: [unknown, RegExp, SftDataOptions?][] = [
    ['{"prompt": "a", ', /invalid JSON/],
    [[1, 2], /must be a JSON object/],
    [{ foo: 1 }, /expected one of/],
    [{ prompt: 'a', completion: 3 }, /"prompt" and "completion" must both be strings/],
    [{ text: 7 }, /"text" must be a string/],
    [{ messages: [{ role: 'user' }] }, /"messages" must be a non-empty list/],
    [{ messages: [{ role: 'user', content: 'hi' }] }, /no assistant message/],
    [{ input_ids: [1, 2.5] }, /"input_ids" must be a list of integers/],
    [{ input_ids: [1, 2], labels: [1] }, /"labels" has 1 entries but "input_ids" has 2/],
    [{ input_ids: [1, 999] }, /token id 999 is outside the model's vocabulary \(size 512\)/],
    [{ input_ids: [1] }, /at least 2 are needed/],
    [{ text: 'hello' }, /needs the model folder to have a tokenizer/, { tokenizer: null, maxLen: 256, vocabSize: 512 }],
  ];
  for (const [row, re, o] of cases) {
    const f = jsonl([good, good, typeof row === 'string' ? row : JSON.stringify(row)]);
    const e = t.throws(() => loadSftData(f, o ?? opts(llama)), `${JSON.stringify(row)}`) as RlhfError;
    t.equal(e.code, 'E_DATA');
    t.ok(e.message.startsWith(`${f}:3: `), e.message);
    t.match(e.message, re);
  }
  // A template that cannot be cut into prefixes is reported, not mis-masked.
  const odd = { ...llama, applyChatTemplate: (m: readonly { content: string }[], o?: { addGenerationPrompt?: boolean }) => m.map((x) => x.content).reverse().join('|') + (o?.addGenerationPrompt ? '>' : '') };
  const f = jsonl([{ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }]);
  const e = t.throws(() => loadSftData(f, opts(odd as Tokenizer))) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${f}:1: the chat template does not render`);
});

t.test('packSftBatch: ragged rows, the flat [B, T-1] mask at the right offsets', async (t) => {
  const d = loadSftData(jsonl([{ input_ids: [1, 2, 3, 4], labels: [I, I, 3, 4] }, { input_ids: [5, 6] }]), { tokenizer: null, maxLen: 256, vocabSize: 512 });
  const b = packSftBatch(d.examples);
  t.equal(b.seq, 4);
  t.same(b.inputIds, [[1, 2, 3, 4], [5, 6]]);
  t.same(Array.from(b.mask), [0, 1, 1, 1, 0, 0]);
  t.equal(b.targets, 3);
  t.equal(b.tokens, 6);
});

t.test('step plan: file order, accumulation groups, epochs, seeded shuffle', async (t) => {
  t.equal(stepsPerEpoch(10, 4, 1), 3);
  t.equal(stepsPerEpoch(10, 2, 2), 3, '5 micro-batches -> 3 steps, the last with one');
  const plan = [...planSteps(10, 4, { batchSize: 2, gradAccum: 2, shuffle: false, seed: 0 })];
  t.same(plan.map((p) => p.micro), [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9]], [[0, 1], [2, 3]]]);
  t.same(plan.map((p) => p.epoch), [0, 0, 0, 1]);
  t.same(plan.map((p) => +p.epochProgress.toFixed(4)), [0.3333, 0.6667, 1, 1.3333]);
  const sh = (seed: number) => [...planSteps(10, 6, { batchSize: 5, gradAccum: 1, shuffle: true, seed })].map((p) => p.micro[0]);
  const a = sh(1);
  t.same(a, sh(1), 'same seed, same order');
  t.notSame(a, sh(2), 'another seed, another order');
  t.same([...a[0], ...a[1]].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'an epoch is a permutation');
  t.notSame([...a[0], ...a[1]], [...a[2], ...a[3]], 'epochs are shuffled differently');
  const s = splitEval(20, 0.25, 3);
  t.equal(s.eval.length, 5);
  t.same([...s.train, ...s.eval].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i));
  t.same(s, splitEval(20, 0.25, 3));
  t.same(s.eval, [...s.eval].sort((x, y) => x - y), 'file order kept');
  t.throws(() => splitEval(2, 0.9, 0), /leaves no training rows/);
});
