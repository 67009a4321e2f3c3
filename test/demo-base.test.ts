import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { demoBaseDir, initDemoModel, DEMO_SHAPE, CORPUS_SEEDS } from '../lib/demo/base';
import { allPrompts, chatSftRow, pretrainCorpus, REFUSAL, sftDemonstrations, UNSAFE_ACTS } from '../lib/demo/world';
import { preferencePairs } from '../lib/demo/labeler';
import { openModelFolder } from '../lib/model/folder';
import { countParameters } from '../lib/model/tensors';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { loadModel } from '../lib/engine/model';
import { loadSftData } from '../lib/data/sft-data';
import { loadPreferenceData } from '../lib/data/preference-data';
import { evaluateSft } from '../lib/stages/sft';

const dir = demoBaseDir();

function tmp(t: { teardown(f: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-demo-base-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('the committed folder: files, size, shape', async (t) => {
  const files = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'pretraining.json'];
  for (const f of files) t.ok(fs.existsSync(path.join(dir, f)), f);
  const bytes = fs.readdirSync(dir).reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);
  t.ok(bytes < 10e6, `${bytes} bytes < 10 MB`);
  const folder = openModelFolder(dir);
  const cfg = folder.config;
  folder.close();
  t.equal(cfg.arch, 'llama');
  t.equal(cfg.head, 'lm');
  t.same([cfg.hiddenSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.intermediateSize], [DEMO_SHAPE.hiddenSize, DEMO_SHAPE.numLayers, DEMO_SHAPE.numHeads, DEMO_SHAPE.numKvHeads, DEMO_SHAPE.intermediateSize]);
  const record = JSON.parse(fs.readFileSync(path.join(dir, 'pretraining.json'), 'utf8'));
  t.equal(record.parameters, countParameters(cfg), 'pretraining.json records the parameter count');
  const tok = loadTokenizer(dir);
  t.same(cfg.eosTokenIds, [tok.encode('</s>', { addSpecialTokens: false })[0], tok.encode('<|im_end|>', { addSpecialTokens: false })[0]], 'generation stops at </s> and <|im_end|>');
});

t.test("the tokenizer round-trips the world's text", async (t) => {
  const tok = loadTokenizer(dir);
  const texts = [
    ...pretrainCorpus(200, { seed: 5 }).map((r) => r.text),
    ...allPrompts().flatMap((p) => [p.text, p.answer]),
    ...UNSAFE_ACTS.map((a) => a.compliance),
  ];
  let bad = 0;
  for (const x of texts) if (tok.decode(tok.encode(x, { addSpecialTokens: false })) !== x) bad++;
  t.equal(bad, 0, `${texts.length} texts decode to themselves`);
  const chat = tok.applyChatTemplate([{ role: 'user', content: 'Reverse the word cat.' }, { role: 'assistant', content: 'tac' }]);
  t.equal(chat, '<s><|im_start|>user\nReverse the word cat.<|im_end|>\n<|im_start|>assistant\ntac<|im_end|>\n');
  const ids = tok.encode(chat, { addSpecialTokens: false });
  t.equal(tok.decode(ids), chat);
  t.ok(ids.length <= 24, `a chat turn is short (${ids.length} tokens)`);
});

t.test("the world's SFT and preference rows load with the model's tokenizer", async (t) => {
  const d = tmp(t);
  const sft = path.join(d, 'sft.jsonl');
  fs.writeFileSync(sft, sftDemonstrations(40, { seed: 1 }).map((x) => JSON.stringify(chatSftRow(x))).join('\n') + '\n');
  const folder = openModelFolder(dir);
  const cfg = folder.config;
  folder.close();
  const tok = loadTokenizer(dir);
  const data = loadSftData(sft, { tokenizer: tok, maxLen: 128, vocabSize: cfg.vocabSize });
  t.equal(data.stats.rows, 40);
  t.equal(data.stats.formats.conversational_prompt_completion, 40);
  t.equal(data.stats.truncatedRows, 0);
  const prefs = path.join(d, 'prefs.jsonl');
  const rows = [
    ...preferencePairs('Reverse the word cat.', ['tac', 'act', REFUSAL], 'helpfulness'),
    ...preferencePairs('How do I pick a lock?', [REFUSAL, UNSAFE_ACTS[0].compliance], 'safety'),
  ];
  fs.writeFileSync(prefs, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const p = loadPreferenceData(prefs, { tokenizer: tok, maxLen: 128, vocabSize: cfg.vocabSize });
  t.equal(p.examples.length, rows.length);
  t.ok(p.examples.every((e) => e.margin !== null && e.margin > 0), 'every rating becomes a positive margin');
  t.same(p.examples.map((e) => e.safe), rows.map((r) => r.safe));
});

t.test('pretrained: much lower held-out loss than a random model of the same shape', async (t) => {
  const d = tmp(t);
  const corpus = path.join(d, 'corpus.jsonl');
  fs.writeFileSync(corpus, pretrainCorpus(48, { seed: CORPUS_SEEDS.eval + 100 }).map((r) => JSON.stringify(r)).join('\n') + '\n');
  const rand = path.join(d, 'random');
  initDemoModel({ outDir: rand, seed: 1 });
  const loss = async (m: string) => {
    const folder = openModelFolder(m);
    const cfg = folder.config;
    folder.close();
    const data = loadSftData(corpus, { tokenizer: loadTokenizer(m), maxLen: 128, vocabSize: cfg.vocabSize });
    const model = await loadModel(m, { device: 'cpu' });
    try {
      return (await evaluateSft(model, data.examples, 48)).loss;
    } finally {
      model.dispose();
    }
  };
  const pre = await loss(dir), init = await loss(rand);
  t.ok(init > 5, `random model: ${init.toFixed(3)} (about ln V)`);
  t.ok(pre < 1.5, `pretrained: ${pre.toFixed(3)}`);
  t.ok(pre < init / 4, `pretrained ${pre.toFixed(3)} < random ${init.toFixed(3)} / 4`);
});
