/**
 * Preference data: exact ids of every format (computed by hand from the
 * tokenizer), the implicit prompt, EOS, Llama 2's rating -> margin tables,
 * pass-through fields, truncation, identical pairs, and every bad row ->
 * E_DATA naming file:line.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadTokenizer, type Tokenizer } from '../lib/tokenizer/tokenizer';
import { RlhfError } from '../lib/errors';
import { identicalWarning, LLAMA2_MARGINS, loadPreferenceData, normalizeRating, type PreferenceDataOptions } from '../lib/data/preference-data';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-pref-data-'));
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
const opts = (tok: Tokenizer | null, extra: Partial<PreferenceDataOptions> = {}): PreferenceDataOptions => ({ tokenizer: tok, maxLen: 256, vocabSize: 512, tokenize: 'separate', ...extra });

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: path.join(tmp, 'llama') });
  await initModel({ arch: 'gpt2', preset: 'tiny', outDir: path.join(tmp, 'gpt2') });
  llama = loadTokenizer(path.join(tmp, 'llama'));
  gpt2 = loadTokenizer(path.join(tmp, 'gpt2'));
});

t.test('{prompt, chosen, rejected} strings: prompt with special tokens, completions without, + EOS', async (t) => {
  for (const tok of [llama, gpt2]) {
    const prompt = 'What colour is the sky?', chosen = ' It is blue.', rejected = ' It is green, mostly.';
    const p = tok.encode(prompt, { addSpecialTokens: true });
    const c = tok.encode(chosen, { addSpecialTokens: false }), r = tok.encode(rejected, { addSpecialTokens: false });
    const eos = tok.eosTokenId!;
    const d = loadPreferenceData(jsonl([{ prompt, chosen, rejected }]), opts(tok));
    const [e] = d.examples;
    t.same(e.prompt, p);
    t.same(e.chosen, [...p, ...c, eos]);
    t.same(e.rejected, [...p, ...r, eos]);
    t.equal(e.chosenFrom, p.length);
    t.equal(e.rejectedFrom, p.length);
    t.equal(e.format, 'standard');
    t.equal(e.line, 1);
    t.equal(e.margin, null);
    t.equal(e.promptText, prompt);
    t.same(e.truncated, { chosen: 0, rejected: 0 });
    t.same(d.stats, {
      rows: 1,
      tokens: 2 * p.length + c.length + r.length + 2,
      completionTokens: c.length + r.length + 2,
      truncatedRows: 0,
      identicalRows: 0,
      identicalLines: [],
      marginRows: 0,
      safeRows: 0,
      unsafeRows: 0,
      formats: { standard: 1 },
    });
  }
  // appendEos: false, and an explicit eosTokenId.
  const [a] = loadPreferenceData(jsonl([{ prompt: 'a', chosen: ' b', rejected: ' c' }]), opts(gpt2, { appendEos: false })).examples;
  t.same(a.chosen, [...gpt2.encode('a'), ...gpt2.encode(' b', { addSpecialTokens: false })]);
  const [b] = loadPreferenceData(jsonl([{ prompt: 'a', chosen: ' b', rejected: ' c' }]), opts(gpt2, { eosTokenId: 7 })).examples;
  t.equal(b.chosen[b.chosen.length - 1], 7);
  t.equal(b.rejected[b.rejected.length - 1], 7);
  // A completion already ending in EOS gets no second one.
  const [c] = loadPreferenceData(jsonl([{ prompt: 'a', chosen: ' b<|endoftext|>', rejected: ' c' }]), opts(gpt2)).examples;
  t.equal(c.chosen.filter((x) => x === gpt2.eosTokenId).length, 1);
});

t.test('implicit prompt: {chosen, rejected} whole texts; the prompt is the common token prefix', async (t) => {
  const chosen = 'Q: name a colour. A: blue', rejected = 'Q: name a colour. A: a dog';
  const c = [...llama.encode(chosen, { addSpecialTokens: true }), llama.eosTokenId!], r = [...llama.encode(rejected, { addSpecialTokens: true }), llama.eosTokenId!];
  let k = 0;
  while (c[k] === r[k]) k++;
  t.ok(k > 3, 'the texts share a prefix of several tokens');
  const [e] = loadPreferenceData(jsonl([{ chosen, rejected }]), opts(llama)).examples;
  t.same(e.chosen, c);
  t.same(e.rejected, r);
  t.equal(e.chosenFrom, k);
  t.same(e.prompt, c.slice(0, k));
  t.equal(e.format, 'implicit_prompt');
  t.equal(e.promptText, undefined);
  // One text a prefix of the other: the shorter keeps one completion token (its EOS).
  const [f] = loadPreferenceData(jsonl([{ chosen: 'one two', rejected: 'one two three' }]), opts(gpt2)).examples;
  t.equal(f.chosen.length - f.chosenFrom, 1);
  t.equal(f.chosen[f.chosenFrom], gpt2.eosTokenId);
});

t.test('conversational: chat template, completion after the generation prompt; implicit prompt = common messages', async (t) => {
  const prompt = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'What is 2+2?' },
  ];
  const chosen = [{ role: 'assistant', content: 'It is 4.' }], rejected = [{ role: 'assistant', content: 'Five, I think.' }];
  const head = '<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n';
  t.equal(llama.applyChatTemplate(prompt, { addGenerationPrompt: true }), head);
  const p = llama.encode(head, { addSpecialTokens: false });
  const c = llama.encode(head + 'It is 4.<|im_end|>\n', { addSpecialTokens: false });
  const r = llama.encode(head + 'Five, I think.<|im_end|>\n', { addSpecialTokens: false });
  t.same(c.slice(0, p.length), p, 'the prompt tokenises as a prefix');
  const d = loadPreferenceData(jsonl([{ prompt, chosen, rejected }, { chosen: [...prompt, ...chosen], rejected: [...prompt, ...rejected] }]), opts(llama));
  for (const e of d.examples) {
    t.same(e.chosen, c);
    t.same(e.rejected, r);
    t.equal(e.chosenFrom, p.length);
    t.same(e.prompt, p);
    t.equal(e.promptText, head);
    t.equal(e.chosen.filter((x) => x === llama.eosTokenId).length, 0, 'no EOS added: the template ends the turn');
  }
  t.same(d.stats.formats, { conversational: 1, conversational_implicit_prompt: 1 });
});

t.test('pre-tokenised rows: {prompt_ids, chosen_ids, rejected_ids}, whole sequences, TRL RewardTrainer columns', async (t) => {
  const d = loadPreferenceData(
    jsonl([
      { prompt_ids: [1, 2, 3], chosen_ids: [4, 5], rejected_ids: [6] },
      { chosen_ids: [1, 2, 3, 4], rejected_ids: [1, 2, 9] },
      { input_ids_chosen: [1, 7, 8], input_ids_rejected: [1, 9] },
    ]),
    opts(null),
  );
  const [a, b, c] = d.examples;
  t.same([a.chosen, a.rejected, a.chosenFrom, a.prompt], [[1, 2, 3, 4, 5], [1, 2, 3, 6], 3, [1, 2, 3]], 'no EOS appended to ids');
  t.same([b.chosen, b.rejected, b.chosenFrom], [[1, 2, 3, 4], [1, 2, 9], 2]);
  t.same([c.chosen, c.rejected, c.chosenFrom], [[1, 7, 8], [1, 9], 1]);
  t.same(d.stats.formats, { tokens: 3 });
  t.equal(d.stats.tokens, 5 + 4 + 4 + 3 + 3 + 2);
  t.equal(d.stats.completionTokens, 2 + 1 + 2 + 1 + 2 + 1);
});

t.test('margin, rating (Llama 2 Table 27, small and large), safe and category pass through', async (t) => {
  t.same(LLAMA2_MARGINS.small, { 'significantly better': 1, better: 2 / 3, 'slightly better': 1 / 3, 'negligibly better': 0, unsure: 0 });
  t.same(LLAMA2_MARGINS.large, { 'significantly better': 3, better: 2, 'slightly better': 1, 'negligibly better': 0, unsure: 0 });
  t.equal(normalizeRating(' Significantly_Better '), 'significantly better');
  t.equal(normalizeRating('much better'), null);
  const base = { prompt_ids: [1, 2], chosen_ids: [3], rejected_ids: [4] };
  const ratings = ['significantly better', 'better', 'slightly better', 'negligibly better', 'unsure'];
  const f = jsonl([
    { ...base, margin: 2.5, safe: true, category: 'violence' },
    { ...base, safe: false },
    ...ratings.map((rating) => ({ ...base, rating })),
    { ...base, rating: 'Slightly Better' },
    base,
  ]);
  for (const scale of ['small', 'large'] as const) {
    const d = loadPreferenceData(f, opts(null, scale === 'small' ? {} : { marginScale: scale }));
    const m = d.examples.map((e) => e.margin);
    const table = LLAMA2_MARGINS[scale];
    t.same(m, [2.5, null, table['significantly better'], table.better, table['slightly better'], 0, 0, table['slightly better'], null], `${scale} margins`);
    t.equal(d.examples[0].safe, true);
    t.equal(d.examples[0].category, 'violence');
    t.equal(d.examples[1].safe, false);
    t.equal(d.examples[1].category, undefined);
    t.equal(d.examples[8].safe, undefined);
    t.equal(d.examples[7].rating, 'Slightly Better');
    t.match(d.stats, { marginRows: 7, safeRows: 1, unsafeRows: 1 });
  }
  t.same(
    loadPreferenceData(f, opts(null, { marginScale: 'large' })).examples.slice(2, 7).map((e) => e.margin),
    [3, 2, 1, 0, 0],
  );
});

t.test('truncation: sequences cut at the end to maxLen and counted; a prompt that fills maxLen is an error', async (t) => {
  const f = jsonl([
    { prompt_ids: [1, 2, 3], chosen_ids: [4, 5, 6, 7], rejected_ids: [8] },
    { prompt_ids: [1, 2], chosen_ids: [3], rejected_ids: [4] },
  ]);
  const d = loadPreferenceData(f, opts(null, { maxLen: 5 }));
  const [a, b] = d.examples;
  t.same(a.chosen, [1, 2, 3, 4, 5]);
  t.same(a.rejected, [1, 2, 3, 8]);
  t.same(a.truncated, { chosen: 2, rejected: 0 });
  t.same(b.truncated, { chosen: 0, rejected: 0 });
  t.equal(d.stats.truncatedRows, 1);
  t.equal(d.stats.tokens, 5 + 4 + 3 + 3);
  // The prompt alone reaches maxLen: nothing left to compare.
  const e = t.throws(() => loadPreferenceData(f, opts(null, { maxLen: 3 }))) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${f}:1: the prompt has 3 tokens, which leaves no room for a completion within the maximum length 3`);
  // Text rows: the EOS is appended before the cut.
  const g = jsonl([{ prompt: 'a', chosen: ' one two three four five six seven', rejected: ' x' }]);
  const [c] = loadPreferenceData(g, opts(gpt2, { maxLen: 4 })).examples;
  t.equal(c.chosen.length, 4);
  t.not(c.chosen[3], gpt2.eosTokenId, 'the cut removes the EOS');
  t.ok(c.truncated.chosen > 0);
});

t.test('--max-prompt-length keeps the prompt\'s last tokens; --truncation-mode keep_end cuts the start', async (t) => {
  const f = jsonl([{ prompt_ids: [1, 2, 3, 4, 5], chosen_ids: [6, 7], rejected_ids: [8] }]);
  const [a] = loadPreferenceData(f, opts(null, { maxPromptLength: 2 })).examples;
  t.same(a.chosen, [4, 5, 6, 7], 'chosen: the last 2 prompt tokens, then the completion');
  t.same(a.rejected, [4, 5, 8]);
  t.equal(a.chosenFrom, 2);
  t.same(a.prompt, [4, 5]);
  // The prompt alone fills maxLen: keep_start refuses the row (naming the ways out), keep_end keeps each sequence's end.
  const e = t.throws(() => loadPreferenceData(f, opts(null, { maxLen: 5 }))) as RlhfError;
  t.match(e.message, /--max-prompt-length or --truncation-mode keep_end/);
  const [b] = loadPreferenceData(f, opts(null, { maxLen: 4, truncationMode: 'keep_end' })).examples;
  t.same(b.chosen, [4, 5, 6, 7]);
  t.equal(b.chosenFrom, 2, 'chosen: 3 tokens cut, the completion starts at 5 - 3');
  t.same(b.rejected, [3, 4, 5, 8]);
  t.equal(b.rejectedFrom, 3, 'rejected: 2 tokens cut');
  const [c] = loadPreferenceData(f, opts(null, { maxLen: 2, truncationMode: 'keep_end' })).examples;
  t.same(c.chosen, [6, 7]);
  t.equal(c.chosenFrom, 1, 'a completion cut to its last tokens: the first kept token is never a target');
});

t.test('identical chosen and rejected: skipped and reported by default, E_DATA with identical: error', async (t) => {
  const good = { prompt_ids: [1], chosen_ids: [2], rejected_ids: [3] };
  const f = jsonl([good, { prompt_ids: [1], chosen_ids: [2, 3], rejected_ids: [2, 3] }, good, { prompt: 'a', chosen: ' b', rejected: ' b' }]);
  const d = loadPreferenceData(f, opts(gpt2));
  t.equal(d.examples.length, 2);
  t.same(d.examples.map((e) => e.line), [1, 3]);
  t.equal(d.stats.identicalRows, 2);
  t.same(d.stats.identicalLines, [2, 4]);
  t.equal(identicalWarning(f, d.stats), `skipped 2 pairs whose chosen and rejected are identical (${f}:2, ${f}:4)`);
  t.equal(identicalWarning(f, { ...d.stats, identicalRows: 0 }), null);
  const e = t.throws(() => loadPreferenceData(f, opts(gpt2, { identical: 'error' }))) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${f}:2: chosen and rejected are identical: the pair expresses no preference`);
  // Completions that differ only past the cut become identical.
  const g = jsonl([good, { prompt_ids: [1], chosen_ids: [2, 3, 4], rejected_ids: [2, 3, 5] }]);
  const e2 = t.throws(() => loadPreferenceData(g, opts(null, { maxLen: 3, identical: 'error' }))) as RlhfError;
  t.match(e2.message, `${g}:2: chosen and rejected are identical after truncation to 3 tokens`);
  // Nothing left at all.
  const h = jsonl([{ prompt_ids: [1], chosen_ids: [2], rejected_ids: [2] }]);
  const e3 = t.throws(() => loadPreferenceData(h, opts(null))) as RlhfError;
  t.equal(e3.code, 'E_DATA');
  t.match(e3.message, `${h}: no usable rows`);
});

t.test('bad rows -> E_DATA naming file:line', async (t) => {
  const good = { prompt: 'Hi', chosen: ' yes', rejected: ' no' };
  const msgs = [{ role: 'user', content: 'hi' }];
  const cases: [unknown, RegExp | string, Partial<PreferenceDataOptions>?][] = [
    ['{"prompt": "a", ', /invalid JSON/],
    [[1, 2], /must be a JSON object/],
    [{ prompt: 'a', chosen: ' b' }, /missing "rejected"/],
    [{ prompt: 'a', rejected: ' b' }, /missing "chosen"/],
    [{ prompt: 'a', chosen: ' b', rejected: 3 }, /"chosen" and "rejected" must both be strings or both non-empty lists .* \(got a string and number\)/],
    [{ prompt: 'a', chosen: ' b', rejected: msgs }, /got a string and a message list/],
    [{ prompt: 5, chosen: ' b', rejected: ' c' }, /"prompt" must be a string when "chosen" and "rejected" are strings/],
    [{ prompt: 'a', chosen: msgs, rejected: msgs }, /"prompt" must be a non-empty list of \{"role": string, "content": string\}/],
    [{ chosen: [{ role: 'user', content: 'x' }], rejected: [{ role: 'user', content: 'y' }] }, /share no leading message/],
    [{ chosen: [{ role: 'user' }], rejected: msgs }, /both non-empty lists/],
    [{ prompt_ids: [1], chosen_ids: [2] }, /missing "rejected_ids"/],
    [{ prompt_ids: [1], chosen_ids: [2.5], rejected_ids: [3] }, /"chosen_ids" must be a list of integers/],
    [{ prompt_ids: 'x', chosen_ids: [2], rejected_ids: [3] }, /"prompt_ids" must be a list of integers/],
    [{ prompt_ids: [1], chosen_ids: [], rejected_ids: [3] }, /"chosen_ids" is empty/],
    [{ prompt_ids: [], chosen_ids: [2], rejected_ids: [3] }, /the prompt has no tokens/],
    [{ chosen_ids: [1, 2], rejected_ids: [3, 4] }, /share no leading token/],
    [{ input_ids_chosen: [1, 2] }, /missing "input_ids_rejected"/],
    [{ prompt_ids: [1], chosen_ids: [2, 999], rejected_ids: [3] }, /chosen: token id 999 is outside the model's vocabulary \(size 512\)/],
    [{ prompt_ids: [-1], chosen_ids: [2], rejected_ids: [3] }, /token id -1 is outside/],
    [{ ...good, margin: 'big' }, /"margin" must be a finite number, got "big"/],
    [{ ...good, rating: 'much better' }, /"rating" must be one of "significantly better", "better", "slightly better", "negligibly better", "unsure", got "much better"/],
    [{ ...good, rating: 3 }, /"rating" must be one of/],
    [{ ...good, margin: 1, rating: 'better' }, /give "margin" or "rating", not both/],
    [{ ...good, safe: 'yes' }, /"safe" must be true or false/],
    [{ ...good, category: 3 }, /"category" must be a string/],
    [{ prompt: 'x'.repeat(40), chosen: ' b', rejected: ' c' }, /the prompt has \d+ tokens, which leaves no room for a completion within the maximum length 8/, { maxLen: 8 }],
    [good, /needs the model folder to have a tokenizer/, { tokenizer: null }],
  ];
  for (const [row, re, o] of cases) {
    const f = jsonl([{ prompt_ids: [1], chosen_ids: [2], rejected_ids: [3] }, { prompt_ids: [1], chosen_ids: [2], rejected_ids: [3] }, typeof row === 'string' ? row : JSON.stringify(row)]);
    const e = t.throws(() => loadPreferenceData(f, opts(gpt2, o)), JSON.stringify(row)) as RlhfError;
    t.equal(e.code, 'E_DATA', JSON.stringify(row));
    t.ok(e.message.startsWith(`${f}:3: `), e.message);
    t.match(e.message, re);
  }
  const empty = jsonl([]);
  fs.writeFileSync(empty, '\n\n');
  const e = t.throws(() => loadPreferenceData(empty, opts(gpt2))) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, `${empty}: no data (the file is empty)`);
  const missing = t.throws(() => loadPreferenceData(path.join(tmp, 'nope.jsonl'), opts(gpt2))) as RlhfError;
  t.equal(missing.code, 'E_IO');
  t.throws(() => loadPreferenceData(empty, opts(gpt2, { maxLen: 1 })), { code: 'E_ARGUMENT' });
  t.throws(() => loadPreferenceData(empty, opts(gpt2, { marginScale: 'huge' as never })), { code: 'E_ARGUMENT' });
  // A chat template that cannot be cut at the prompt is reported with the row.
  const odd = { ...llama, applyChatTemplate: (m: readonly { content: string }[], o?: { addGenerationPrompt?: boolean }) => m.map((x) => x.content).reverse().join('|') + (o?.addGenerationPrompt ? '>' : '') };
  const f = jsonl([{ prompt: msgs, chosen: [{ role: 'assistant', content: 'a' }], rejected: [{ role: 'assistant', content: 'b' }] }]);
  const e2 = t.throws(() => loadPreferenceData(f, opts(odd as Tokenizer))) as RlhfError;
  t.equal(e2.code, 'E_DATA');
  t.match(e2.message, `${f}:1: the chat template does not render`);
});
