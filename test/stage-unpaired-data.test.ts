/**
 * Unpaired (KTO) data: each format tokenises exactly as the pair loader
 * tokenises the same prompt and completion (checked by loading the same
 * text as a {prompt, chosen, rejected} row), labels and stats, truncation,
 * every bad row -> E_DATA naming file:line, unpairing of pair files, the
 * per-file shape detection, and the mismatched KL sequences.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadTokenizer, type Tokenizer } from '../lib/tokenizer/tokenizer';
import { openModelFolder } from '../lib/model/folder';
import { RlhfError } from '../lib/errors';
import { loadPreferenceData } from '../lib/data/preference-data';
import { klPairs, loadKtoData, loadUnpairedData, unpairPreferences, type UnpairedDataOptions, type UnpairedExample } from '../lib/data/unpaired-data';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-unpaired-data-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
function jsonl(rows: unknown[]): string {
  const f = path.join(tmp, `d${n++}.jsonl`);
  fs.writeFileSync(f, rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n');
  return f;
}

let llama: Tokenizer, gpt2: Tokenizer;
// These tests pin `--tokenize separate` (prompt and completion encoded apart); the default, TRL's
// tokenization, is checked against TRL itself in test/trl-data-parity.test.ts.
const opts = (tok: Tokenizer | null, extra: Partial<UnpairedDataOptions> = {}): UnpairedDataOptions => ({ tokenizer: tok, maxLen: 256, vocabSize: 512, tokenize: 'separate', ...extra });

/** The pair loader's chosen sequence for the same prompt and completion: the independent reference. */
function pairedChosen(prompt: unknown, completion: unknown, o: UnpairedDataOptions, other: unknown) {
  const [e] = loadPreferenceData(jsonl([{ prompt, chosen: completion, rejected: other }]), o).examples;
  return { ids: e.chosen, from: e.chosenFrom, promptText: e.promptText };
}

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: path.join(tmp, 'llama') });
  await initModel({ arch: 'gpt2', preset: 'tiny', outDir: path.join(tmp, 'gpt2') });
  llama = loadTokenizer(path.join(tmp, 'llama'));
  gpt2 = loadTokenizer(path.join(tmp, 'gpt2'));
});

t.test('{prompt, completion, label} strings: the pair loader\'s ids (prompt with special tokens, completion without, + EOS)', async (t) => {
  for (const tok of [llama, gpt2]) {
    const prompt = 'What colour is the sky?', good = ' It is blue.', bad = ' It is green, mostly.';
    const d = loadUnpairedData(jsonl([{ prompt, completion: good, label: true }, { prompt, completion: bad, label: false }]), opts(tok));
    const [a, b] = d.examples;
    const ref = pairedChosen(prompt, good, opts(tok), bad), refBad = pairedChosen(prompt, bad, opts(tok), good);
    t.same(a.ids, ref.ids);
    t.same(b.ids, refBad.ids);
    t.equal(a.from, ref.from);
    // And by hand, so both loaders are not wrong together.
    const p = tok.encode(prompt, { addSpecialTokens: true });
    t.same(a.ids, [...p, ...tok.encode(good, { addSpecialTokens: false }), tok.eosTokenId!]);
    t.same(a.prompt, p);
    t.equal(a.from, p.length);
    t.same([a.label, b.label], [true, false]);
    t.same([a.line, b.line], [1, 2]);
    t.equal(a.format, 'standard');
    t.equal(a.promptText, prompt);
    t.equal(a.truncated, 0);
    t.same(d.stats, {
      rows: 2,
      desirable: 1,
      undesirable: 1,
      tokens: a.ids.length + b.ids.length,
      completionTokens: a.ids.length + b.ids.length - 2 * p.length,
      truncatedRows: 0,
      formats: { standard: 2 },
    });
  }
  // EOS options behave as in the pair loader.
  for (const extra of [{ appendEos: false }, { eosTokenId: 7 }, { eosTokenId: null }]) {
    const [e] = loadUnpairedData(jsonl([{ prompt: 'a', completion: ' b', label: true }]), opts(gpt2, extra)).examples;
    t.same(e.ids, pairedChosen('a', ' b', opts(gpt2, extra), ' c').ids, JSON.stringify(extra));
  }
  const [e] = loadUnpairedData(jsonl([{ prompt: 'a', completion: ' b<|endoftext|>', label: true }]), opts(gpt2)).examples;
  t.equal(e.ids.filter((x) => x === gpt2.eosTokenId).length, 1, 'no second EOS');
  // The fixture tokenizers add no special tokens on encode; one that adds a BOS (id 1) shows where they go.
  const bos = { ...gpt2, encode: (s: string, o?: { addSpecialTokens?: boolean }) => [...(o?.addSpecialTokens ?? true ? [1] : []), ...gpt2.encode(s, { addSpecialTokens: false })] };
  const [w] = loadUnpairedData(jsonl([{ prompt: 'Hi', completion: ' there', label: true }]), opts(bos)).examples;
  t.same(w.ids, pairedChosen('Hi', ' there', opts(bos), ' you').ids);
  t.same(w.ids, [1, ...gpt2.encode('Hi', { addSpecialTokens: false }), ...gpt2.encode(' there', { addSpecialTokens: false }), gpt2.eosTokenId!], 'BOS before the prompt, none before the completion');
});

t.test('conversational rows: the pair loader\'s chat-template ids, and its cut after the last stop token', async (t) => {
  const prompt = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'What is 2+2?' },
  ];
  const good = [{ role: 'assistant', content: 'It is 4.' }], bad = [{ role: 'assistant', content: 'Five, I think.' }];
  const [e] = loadUnpairedData(jsonl([{ prompt, completion: good, label: false }]), opts(llama)).examples;
  const ref = pairedChosen(prompt, good, opts(llama), bad);
  t.same(e.ids, ref.ids);
  t.equal(e.from, ref.from);
  t.equal(e.promptText, ref.promptText);
  t.equal(e.format, 'conversational');
  t.equal(e.label, false);
  const head = llama.applyChatTemplate(prompt, { addGenerationPrompt: true });
  t.same(e.ids, llama.encode(head + 'It is 4.<|im_end|>\n', { addSpecialTokens: false }), 'by hand');
  t.same(e.prompt, llama.encode(head, { addSpecialTokens: false }));

  // A model whose stop ids include the end-of-turn token: the template's trailing newline is dropped, as for pairs.
  const base = path.join(__dirname, '..', 'models', 'demo-base');
  const tok = loadTokenizer(base);
  const folder = openModelFolder(base);
  const eos = folder.config.eosTokenIds, vocabSize = folder.config.vocabSize;
  folder.close();
  const o = opts(tok, { vocabSize, maxLen: 128, fallbackEosTokenId: eos[0], stopTokenIds: eos });
  const row = { prompt: [{ role: 'user', content: 'Spell cat backwards.' }], completion: [{ role: 'assistant', content: 'tac' }], label: true };
  const [cut] = loadUnpairedData(jsonl([row]), o).examples;
  const [plain] = loadUnpairedData(jsonl([row]), { ...o, stopTokenIds: undefined }).examples;
  t.same(cut.ids, pairedChosen(row.prompt, row.completion, o, [{ role: 'assistant', content: 'cat' }]).ids);
  t.equal(cut.ids[cut.ids.length - 1], tok.tokenToId('<|im_end|>'));
  t.ok(plain.ids.length > cut.ids.length, 'without stop ids the template\'s tail stays');
});

t.test('pre-tokenised {prompt_ids, completion_ids, label}: used as given, as the pair loader does', async (t) => {
  const d = loadUnpairedData(jsonl([{ prompt_ids: [1, 2, 3], completion_ids: [4, 5], label: true }, { prompt_ids: [1], completion_ids: [6], label: false }]), opts(null));
  const [a, b] = d.examples;
  t.same([a.ids, a.from, a.prompt], [[1, 2, 3, 4, 5], 3, [1, 2, 3]], 'no EOS appended to ids');
  const [ref] = loadPreferenceData(jsonl([{ prompt_ids: [1, 2, 3], chosen_ids: [4, 5], rejected_ids: [6] }]), opts(null)).examples;
  t.same([a.ids, a.from], [ref.chosen, ref.chosenFrom], 'the pair loader\'s ids');
  t.same([b.ids, b.from], [[1, 6], 1]);
  t.same(d.stats, { rows: 2, desirable: 1, undesirable: 1, tokens: 7, completionTokens: 3, truncatedRows: 0, formats: { tokens: 2 } });
  // A file of one label only is allowed; the stats show it.
  const only = loadUnpairedData(jsonl([{ prompt_ids: [1], completion_ids: [2], label: true }, { prompt_ids: [1], completion_ids: [3], label: true }]), opts(null));
  t.match(only.stats, { rows: 2, desirable: 2, undesirable: 0 });
});

t.test('truncation: cut at the end to maxLen and counted; a prompt that fills maxLen is an error naming the line', async (t) => {
  const f = jsonl([{ prompt_ids: [1, 2, 3], completion_ids: [4, 5, 6, 7], label: true }, { prompt_ids: [1, 2], completion_ids: [3], label: false }]);
  const d = loadUnpairedData(f, opts(null, { maxLen: 5 }));
  t.same(d.examples[0].ids, [1, 2, 3, 4, 5]);
  t.same(d.examples.map((e) => e.truncated), [2, 0]);
  t.match(d.stats, { truncatedRows: 1, tokens: 8, completionTokens: 3 });
  const e = t.throws(() => loadUnpairedData(f, opts(null, { maxLen: 3 }))) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${f}:1: the prompt has 3 tokens, which leaves no room for a completion within the maximum length 3`);
  // Text rows: EOS appended before the cut, as for pairs.
  const [c] = loadUnpairedData(jsonl([{ prompt: 'a', completion: ' one two three four five six seven', label: true }]), opts(gpt2, { maxLen: 4 })).examples;
  t.same(c.ids, pairedChosen('a', ' one two three four five six seven', opts(gpt2, { maxLen: 4 }), ' x').ids);
  t.equal(c.ids.length, 4);
  t.ok(c.truncated > 0);
  t.throws(() => loadUnpairedData(f, opts(null, { maxLen: 1 })), { code: 'E_ARGUMENT' });
});

t.test('bad rows -> E_DATA naming file:line', async (t) => {
  const msgs = [{ role: 'user', content: 'hi' }], reply = [{ role: 'assistant', content: 'yo' }];
  const cases: [unknown, RegExp, Partial<UnpairedDataOptions>?][] = [
    ['{"prompt": "a", ', /invalid JSON/],
    [{ prompt: 'a', completion: ' b' }, /missing "label": each row needs "label": true/],
    [{ prompt: 'a', completion: ' b', label: 1 }, /"label" must be true or false, got 1/],
    [{ prompt: 'a', completion: ' b', label: 'true' }, /"label" must be true or false, got "true"/],
    [{ prompt: 'a', completion: ' b', label: null }, /"label" must be true or false, got null/],
    [{ prompt: 'a', label: true }, /missing "completion"/],
    [{ prompt: 'a', completion: null, label: true }, /missing "completion"/],
    [{ prompt: 'a', completion: '', label: true }, /"completion" is empty/],
    [{ prompt: msgs, completion: [], label: true }, /"completion" is empty/],
    [{ completion: ' b', label: true }, /missing "prompt": KTO scores a completion given its prompt/],
    [{ completion: reply, label: false }, /missing "prompt"/],
    [{ prompt: 'a', completion: reply, label: true }, /must both be strings or both non-empty lists .* \(got a string and a message list\)/],
    [{ prompt: 5, completion: ' b', label: true }, /got number and a string/],
    [{ prompt_ids: [1], label: true }, /missing "completion_ids"/],
    [{ completion_ids: [2], label: true }, /missing "prompt_ids"/],
    [{ prompt_ids: [1], completion_ids: [], label: true }, /"completion_ids" is empty/],
    [{ prompt_ids: [], completion_ids: [2], label: true }, /the prompt has no tokens/],
    [{ prompt_ids: [1], completion_ids: [2.5], label: true }, /"completion_ids" must be a list of integers/],
    [{ prompt_ids: [1], completion_ids: [2, 999], label: true }, /token id 999 is outside the model's vocabulary \(size 512\)/],
    [{ prompt_ids: [-1], completion_ids: [2], label: true }, /token id -1 is outside/],
    [{ prompt: 'x'.repeat(40), completion: ' b', label: true }, /the prompt has \d+ tokens, which leaves no room .* maximum length 8/, { maxLen: 8 }],
    [{ prompt: 'a', completion: ' b', label: true }, /needs the model folder to have a tokenizer/, { tokenizer: null }],
  ];
  for (const [row, re, o] of cases) {
    const good = { prompt_ids: [1], completion_ids: [2], label: true };
    const f = jsonl([good, good, typeof row === 'string' ? row : JSON.stringify(row)]);
    for (const load of [loadUnpairedData, loadKtoData]) {
      const e = t.throws(() => load(f, opts(gpt2, o)), JSON.stringify(row)) as RlhfError;
      t.equal(e.code, 'E_DATA', JSON.stringify(row));
      t.ok(e.message.startsWith(`${f}:3: `), e.message);
      t.match(e.message, re);
    }
  }
  // A chat template that cannot be cut at the prompt is reported with the row.
  const odd = { ...llama, applyChatTemplate: (m: readonly { content: string }[], o?: { addGenerationPrompt?: boolean }) => m.map((x) => x.content).reverse().join('|') + (o?.addGenerationPrompt ? '>' : '') };
  const f = jsonl([{ prompt: msgs, completion: reply, label: true }]);
  const e = t.throws(() => loadUnpairedData(f, opts(odd as Tokenizer))) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${f}:1: the chat template does not render`);
});

t.test('unpairPreferences: every chosen row (label true), then every rejected row (label false), lines kept', async (t) => {
  const pairs = loadPreferenceData(
    jsonl([
      { prompt_ids: [1, 2], chosen_ids: [3], rejected_ids: [4, 5] },
      { prompt: 'Hi', chosen: ' yes', rejected: ' no' },
      { prompt_ids: [9], chosen_ids: [6, 7, 8], rejected_ids: [5] },
    ]),
    opts(gpt2, { maxLen: 3 }),
  ).examples;
  const u = unpairPreferences(pairs);
  t.equal(u.length, 6);
  t.same(u.map((e) => [e.line, e.label]), [[1, true], [2, true], [3, true], [1, false], [2, false], [3, false]]);
  pairs.forEach((p, i) => {
    t.same([u[i].ids, u[i].from, u[i].prompt, u[i].truncated], [p.chosen, p.chosenFrom, p.prompt, p.truncated.chosen]);
    const r = u[i + pairs.length];
    t.same([r.ids, r.from, r.prompt, r.truncated], [p.rejected, p.rejectedFrom, p.prompt, p.truncated.rejected]);
  });
  t.same(u.map((e) => e.format), ['tokens', 'standard', 'tokens', 'tokens', 'standard', 'tokens']);
  t.equal(u[1].promptText, 'Hi');
  t.equal(u[2].truncated, 1);
  // The same prompt and completion, unpaired from a pair or written as a row, give the same example.
  const [row] = loadUnpairedData(jsonl([{ prompt: 'Hi', completion: ' no', label: false }]), opts(gpt2, { maxLen: 3 })).examples;
  t.same(u[4], { ...row, line: 2 });
  t.same(unpairPreferences([]), []);
});

t.test('loadKtoData: unpaired or paired per file; a file mixing both is an error naming the first row of the other kind', async (t) => {
  const un = jsonl([{ prompt_ids: [1], completion_ids: [2], label: true }, { prompt: 'a', completion: ' b', label: false }]);
  const a = loadKtoData(un, opts(gpt2));
  t.equal(a.source, 'unpaired');
  t.equal(a.pairStats, undefined);
  t.same(a, { ...loadUnpairedData(un, opts(gpt2)), source: 'unpaired' });

  const pair = jsonl([
    { prompt_ids: [1], chosen_ids: [2], rejected_ids: [3] },
    { prompt_ids: [1], chosen_ids: [2], rejected_ids: [2] },
    { prompt: 'a', chosen: ' b', rejected: ' c' },
  ]);
  const b = loadKtoData(pair, opts(gpt2));
  t.equal(b.source, 'paired');
  t.same(b.examples, unpairPreferences(loadPreferenceData(pair, opts(gpt2)).examples));
  t.same(b.examples.map((e) => e.line), [1, 3, 1, 3], 'the identical pair of line 2 is skipped, as for DPO');
  t.same(b.pairStats!.identicalLines, [2]);
  t.match(b.stats, { rows: 4, desirable: 2, undesirable: 2, formats: { tokens: 2, standard: 2 } });
  t.throws(() => loadKtoData(pair, { ...opts(gpt2), identical: 'error' }), /:2: chosen and rejected are identical/);

  const mixed1 = jsonl([{ prompt: 'a', completion: ' b', label: true }, { prompt: 'a', completion: ' b', label: false }, { prompt: 'a', chosen: ' b', rejected: ' c' }, { prompt: 'a', chosen: ' b', rejected: ' d' }]);
  const e1 = t.throws(() => loadKtoData(mixed1, opts(gpt2))) as RlhfError;
  t.equal(e1.code, 'E_DATA');
  t.match(e1.message, `${mixed1}:3: a preference pair ("chosen"/"rejected") in a file whose line 1 is an unpaired row ("label")`);
  const mixed2 = jsonl([{ prompt_ids: [1], chosen_ids: [2], rejected_ids: [3] }, { prompt_ids: [1], completion_ids: [2], label: true }]);
  const e2 = t.throws(() => loadKtoData(mixed2, opts(gpt2))) as RlhfError;
  t.match(e2.message, `${mixed2}:2: an unpaired row ("label") in a file whose line 1 is a preference pair`);
  // A row of neither kind in a pair file is the pair loader's error.
  const e3 = t.throws(() => loadKtoData(jsonl([{ prompt: 'a', chosen: ' b', rejected: ' c' }, { prompt: 'a', completion: ' b' }]), opts(gpt2))) as RlhfError;
  t.match(e3.message, /:2: missing "chosen"/);
});

t.test('klPairs: prompt i with the completion of example (i + 1) mod N, cut to maxLen', async (t) => {
  const ex = (line: number, prompt: number[], completion: number[], label = true): UnpairedExample => ({ line, format: 'tokens', prompt, ids: [...prompt, ...completion], from: prompt.length, label, truncated: 0 });
  const xs = [ex(1, [1, 2], [10, 11]), ex(2, [3], [12], false), ex(3, [4, 5, 6], [13, 14, 15])];
  t.same(klPairs(xs, 16), [
    { ids: [1, 2, 12], from: 2 },
    { ids: [3, 13, 14, 15], from: 1 },
    { ids: [4, 5, 6, 10, 11], from: 3 },
  ]);
  t.same(klPairs(xs, 4), [
    { ids: [1, 2, 12], from: 2 },
    { ids: [3, 13, 14, 15], from: 1 },
    { ids: [4, 5, 6, 10], from: 3 },
  ], 'cut at the end, keeping the prompt');
  t.same(klPairs([xs[0]], 16), [{ ids: [1, 2, 10, 11], from: 2 }], 'one example: its own completion');
  t.same(klPairs([], 16), []);
  t.throws(() => klPairs(xs, 3), { code: 'E_ARGUMENT', message: /line 3: the prompt has 3 tokens/ });
  // Unpaired pairs: each KL sequence takes its completion from another pair.
  const u = unpairPreferences(loadPreferenceData(jsonl([{ prompt_ids: [1], chosen_ids: [2], rejected_ids: [3] }, { prompt_ids: [4], chosen_ids: [5], rejected_ids: [6] }]), opts(null)).examples);
  t.same(klPairs(u, 16).map((k) => k.ids), [[1, 5], [4, 3], [1, 6], [4, 2]]);
});
