/**
 * Bad input everywhere it enters, beyond the per-module tests (config.json
 * keys: model-config.test.ts; data rows: stage-*-data.test.ts; safetensors
 * rules: safetensors-malformed.test.ts): the tokenizer against its model,
 * token ids out of range, sequences longer than the context, empty and
 * malformed datasets, missing files, unwritable output folders, and a broken
 * config.json or weights file reaching a stage. Each is an RlhfError with its
 * code and a message naming the file (and line or key) and what to do; run
 * through the CLI, each exits 1 with one line on stderr: the process ends
 * normally, it is never killed by a signal from native code.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { runSft } from '../lib/stages/sft';
import { checkWritableDir } from '../lib/run/atomic';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-input-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'tiny');
const big = path.join(tmp, 'small');
const rows = path.join(tmp, 'rows.jsonl');
const root = process.getuid?.() === 0;

/** A copy of the tiny model folder with `edit` applied to it. */
function variant(name: string, edit: (dir: string) => void): string {
  const dir = path.join(tmp, name);
  fs.cpSync(base, dir, { recursive: true });
  edit(dir);
  return dir;
}
const editJson = (file: string, f: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(fs.readFileSync(file, 'utf8'));
  f(j);
  fs.writeFileSync(file, JSON.stringify(j, null, 2));
};
const file = (name: string, text: string) => {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, text);
  return p;
};

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 4 });
  await initModel({ arch: 'llama', preset: 'small', outDir: big, seed: 4 });
  fs.writeFileSync(rows, Array.from({ length: 6 }, (_, i) => JSON.stringify({ prompt: `Say ${i}:`, completion: ` ${i} ${i}` })).join('\n') + '\n');
});

t.test('tokenizer vs model: vocabulary and special tokens', async (t) => {
  const tok = loadTokenizer(base);
  t.ok(tok.vocabSize > 0, 'the model and its own tokenizer agree');
  // A tokenizer from another model with a larger vocabulary.
  const foreign = variant('foreign-tokenizer', (d) => {
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(big, f), path.join(d, f));
  });
  const e1 = t.throws(() => loadTokenizer(foreign)) as RlhfError;
  t.equal(e1.code, 'E_TOKENIZER');
  t.match(e1.message, /tokenizer\.json: the tokenizer has ids up to \d+ but .*config\.json has vocab_size \d+: those ids have no embedding row; use the tokenizer the model was trained with/);
  // The EOS of tokenizer_config.json is not the model's eos_token_id.
  const eos = variant('eos-mismatch', (d) =>
    editJson(path.join(d, 'tokenizer_config.json'), (j) => {
      j.eos_token = j.pad_token ?? j.bos_token;
    }),
  );
  const e2 = t.throws(() => loadTokenizer(eos)) as RlhfError;
  t.equal(e2.code, 'E_TOKENIZER');
  t.match(e2.message, /tokenizer_config\.json: eos_token is id \d+ but .*config\.json has eos_token_id \d+: .*make eos_token in tokenizer_config\.json and eos_token_id in config\.json name the same token/);
  // generation_config.json may list further EOS ids (Llama 3 chat models): then it is fine.
  editJson(path.join(eos, 'generation_config.json'), (j) => {
    j.eos_token_id = [JSON.parse(fs.readFileSync(path.join(base, 'config.json'), 'utf8')).eos_token_id, loadTokenizer(base).padTokenId ?? loadTokenizer(base).bosTokenId];
  });
  t.doesNotThrow(() => loadTokenizer(eos), 'an EOS listed in generation_config.json is accepted');
  // The stage meets it when it tokenizes the data, before any weight is loaded.
  const e3 = (await runSft({ model: foreign, data: rows, out: path.join(tmp, 'o-tok'), steps: 1, device: 'cpu' }, { handleSigint: false }).catch((x) => x)) as RlhfError;
  t.equal(e3.code, 'E_TOKENIZER');
  t.notOk(fs.existsSync(path.join(tmp, 'o-tok')), 'nothing written');
});

t.test('token ids out of range and sequences longer than the context', async (t) => {
  const model = await loadModel(base, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const V = model.config.vocabSize, ctx = model.config.maxSequenceLength;
  await t.rejects(model.forward({ inputIds: [[1, V]] }), { code: 'E_ARGUMENT', message: /outside the vocabulary/ });
  await t.rejects(model.forward({ inputIds: [[1, -3]] }), { code: 'E_ARGUMENT' });
  await t.rejects(model.generate({ prompts: [[1, V + 5]], maxNewTokens: 2 }), { code: 'E_ARGUMENT' });
  const tr = model.trainer();
  tr.createLora({ r: 2, alpha: 4, targets: ['q_proj'], seed: 1 });
  await t.rejects(tr.forward({ inputIds: [[1, 2, V]] }), { code: 'E_ARGUMENT', message: /outside the vocabulary/ }, 'the training forward too');
  const long = Array.from({ length: ctx + 1 }, (_, i) => 1 + (i % 50));
  await t.rejects(model.forward({ inputIds: [long] }), { code: 'E_ARGUMENT', message: new RegExp(`a sequence of ${ctx + 1} tokens is longer than the model's context of ${ctx} tokens; cut the rows`) });
  await t.rejects(tr.forward({ inputIds: [long] }), { code: 'E_ARGUMENT', message: /longer than the model's context/ });
  await t.rejects(model.generate({ prompts: [long] }), { code: 'E_ARGUMENT', message: /a prompt of \d+ tokens is longer than the model's context/ });
  await t.rejects(model.generate({ prompts: [long.slice(0, ctx - 4)], maxNewTokens: 10 }), {
    code: 'E_ARGUMENT',
    message: new RegExp(`plus 10 new tokens exceeds the model's context of ${ctx} tokens; shorten the prompts to ${ctx - 10} tokens or ask for at most 4 new tokens`),
  });
  // Still usable after every refusal.
  const ok = await model.forward({ inputIds: [long.slice(0, ctx)] });
  t.equal(ok.seq, ctx, 'a sequence of exactly the context runs');
});

t.test('unwritable output folders are refused before any work', async (t) => {
  const aFile = file('a-file', 'x');
  const e = t.throws(() => checkWritableDir(path.join(aFile, 'sub', 'out'))) as RlhfError;
  t.equal(e.code, 'E_IO');
  t.match(e.message, /--out .*a-file\/sub\/out: cannot be created: .*a-file is a file, not a folder; choose another output folder/);
  t.doesNotThrow(() => checkWritableDir(path.join(tmp, 'new', 'deeper')), 'a folder that can be created');
  t.notOk(fs.existsSync(path.join(tmp, 'new')), 'the check creates nothing');
  if (!root) {
    const ro = path.join(tmp, 'read-only');
    fs.mkdirSync(ro, { mode: 0o555 });
    const e2 = t.throws(() => checkWritableDir(path.join(ro, 'out'))) as RlhfError;
    t.equal(e2.code, 'E_IO');
    t.match(e2.message, /its parent .*read-only is not writable \(EACCES\)/);
  }
  const e3 = (await runSft({ model: base, data: rows, out: path.join(aFile, 'out'), steps: 1, device: 'cpu' }, { handleSigint: false }).catch((x) => x)) as RlhfError;
  t.equal(e3.code, 'E_IO', 'the stage checks before loading anything');
});

interface CliCase {
  name: string;
  args: () => string[];
  code: string;
  message: RegExp;
}

t.test('CLI: every class exits 1 with one line naming the file and what to do', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const out = (n: string) => path.join(tmp, `cli-${n}`);
  const sft = (model: string, data: string, o: string, ...more: string[]) => ['sft', '--model', model, '--data', data, '--out', o, '--steps', '1', '--device', 'cpu', ...more];
  const cases: CliCase[] = [
    { name: 'empty dataset', args: () => sft(base, file('empty.jsonl', ''), out('empty')), code: 'E_DATA', message: /empty\.jsonl: no data \(the file is empty\); give one JSON object per line/ },
    { name: 'malformed JSONL line', args: () => sft(base, file('bad.jsonl', '{"prompt": "a", "completion": "b"}\n{"prompt": \n'), out('bad')), code: 'E_DATA', message: /bad\.jsonl:2: invalid JSON/ },
    { name: 'a row of the wrong shape', args: () => sft(base, file('shape.jsonl', '{"question": "a"}\n'), out('shape')), code: 'E_DATA', message: /shape\.jsonl:1: / },
    { name: 'token id out of range', args: () => sft(base, file('ids.jsonl', '{"input_ids": [1, 2, 99999]}\n'), out('ids')), code: 'E_DATA', message: /ids\.jsonl:1: token id 99999 is outside the model's vocabulary/ },
    { name: 'missing data file', args: () => sft(base, path.join(tmp, 'nope.jsonl'), out('nodata')), code: 'E_IO', message: /nope\.jsonl: no such file; check the path/ },
    { name: 'missing model folder', args: () => sft(path.join(tmp, 'no-model'), rows, out('nomodel')), code: 'E_IO', message: /no-model: no such model folder/ },
    {
      name: 'missing tokenizer',
      args: () => sft(variant('no-tok', (d) => fs.rmSync(path.join(d, 'tokenizer.json'))), rows, out('notok')),
      code: 'E_TOKENIZER',
      message: /tokenizer\.json does not exist/,
    },
    {
      name: 'tokenizer from another model',
      args: () => sft(path.join(tmp, 'foreign-tokenizer'), rows, out('foreign')),
      code: 'E_TOKENIZER',
      message: /those ids have no embedding row/,
    },
    {
      name: 'config.json: head counts that do not divide',
      args: () => sft(variant('kv3', (d) => editJson(path.join(d, 'config.json'), (j) => void (j.num_key_value_heads = 3))), rows, out('kv3')),
      code: 'E_CONFIG',
      message: /config\.json: "num_attention_heads" \(4\) must be a multiple of "num_key_value_heads" \(3\)/,
    },
    {
      name: 'config.json: unsupported architecture',
      args: () => sft(variant('bert', (d) => editJson(path.join(d, 'config.json'), (j) => void (j.architectures = ['BertModel']))), rows, out('bert')),
      code: 'E_CONFIG',
      message: /config\.json: unsupported architecture "BertModel"/,
    },
    {
      name: 'config.json: missing key',
      args: () => sft(variant('nohidden', (d) => editJson(path.join(d, 'config.json'), (j) => void delete j.hidden_size)), rows, out('nohidden')),
      code: 'E_CONFIG',
      message: /config\.json: required key "hidden_size" is missing/,
    },
    {
      name: 'truncated weights file',
      args: () =>
        sft(
          variant('trunc', (d) => {
            const f = path.join(d, 'model.safetensors');
            fs.truncateSync(f, fs.statSync(f).size - 100);
          }),
          rows,
          out('trunc'),
        ),
      code: 'E_SAFETENSORS',
      message: /model\.safetensors: .*(past the end of the file|incomplete)/,
    },
    { name: 'unwritable output folder', args: () => sft(base, rows, path.join(file('plain-file', 'x'), 'out')), code: 'E_IO', message: /plain-file is a file, not a folder; choose another output folder/ },
    { name: 'a bad option value', args: () => sft(base, rows, out('opt'), '--nan-policy', 'skip', '--lora-r', '0'), code: 'E_ARGUMENT', message: /--lora-r must be a positive integer, got 0/ },
    {
      name: 'a prompt longer than the context (generate)',
      args: () => ['generate', '--model', base, '--prompt', 'word '.repeat(400), '--max-new-tokens', '4', '--device', 'cpu'],
      code: 'E_ARGUMENT',
      message: /longer than the model's context|exceeds the model's context/,
    },
  ];
  for (const c of cases) {
    const r = runCli(c.args());
    t.equal(r.signal, null, `${c.name}: not killed by a signal`);
    t.equal(r.status, 1, `${c.name}: exit 1\n${r.stderr}`);
    const last = r.stderr.trim().split('\n').pop()!;
    t.match(last, new RegExp(`^rlhf-native: error ${c.code}: `), `${c.name}: ${c.code}, one line, last`);
    t.match(last, c.message, `${c.name}: the message`);
    t.notMatch(r.stderr, /^\s+at /m, `${c.name}: no stack trace`);
  }
});
