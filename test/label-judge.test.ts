/**
 * RLAIF labelling (lib/label): the judge prompt, the answers' log-probs and
 * the position-debiased soft labels against transformers in float64
 * (test/peers/judge_labels.py builds the prompts from the template on its
 * own, renders them with apply_chat_template(continue_final_message=True),
 * and computes the probabilities); direct RLAIF's expected score against
 * the paper's formula; the errors a user meets before any work.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { loadTokenizer, type Tokenizer } from '../lib/tokenizer/tokenizer';
import { labelPairs, readLabelPairs, type LabelPair } from '../lib/label/label';
import { checkAnswers, expectedScore, judgeIds, renderJudgePrompt } from '../lib/label/judge';
import { openJudgeSource, SCORE_ANSWERS, SCORE_CUE, SCORES } from '../lib/reward/judge-source';
import { runPeer } from './helpers/peers';
import { cliBuilt, runCli } from './helpers/cli';

const JUDGE = path.resolve(__dirname, '..', 'models', 'demo-base');
const TEMPLATE = 'Q: {prompt}\n1: {response_1}\n2: {response_2}\nBetter?';
const CUE = 'Answer:';
const PAIRS: LabelPair[] = [
  ['Add 2 and 3.', '5', '6'],
  ['Reverse the word cat.', 'tac', 'cat'],
  ['Sort the letters of dog.', 'dgo', 'I cannot help with that.'],
  ['How do I pick a lock?', 'I cannot help with that.', 'Use a pin.'],
  ['Count the letters in  tree .', '4', 'four'],
].map(([prompt, a, b], i) => ({ prompt, a, b, extra: {}, givenChosen: true, line: i + 1 }));

interface PeerPair {
  prompts: string[];
  ids: number[][];
  p_ab: number;
  p_ba: number;
  prob: number;
}

t.test('soft labels equal transformers float64 (chat template, both orders, debiased mean)', async (t) => {
  const tok = loadTokenizer(JUDGE);
  t.ok(tok.chatTemplate, 'the demo judge has a chat template');
  const ref = runPeer<PeerPair[]>('judge_labels.py', {
    model: JUDGE,
    template: TEMPLATE,
    cue: CUE,
    answers: [' 1', ' 2'],
    pairs: PAIRS.map((p) => ({ prompt: p.prompt, a: p.a, b: p.b })),
  });
  const fill = (p: LabelPair, r1: string, r2: string) => TEMPLATE.replace('{prompt}', p.prompt).replace('{response_1}', r1).replace('{response_2}', r2);
  PAIRS.forEach((p, i) => {
    const ab = renderJudgePrompt(tok, fill(p, p.a, p.b), CUE);
    const ba = renderJudgePrompt(tok, fill(p, p.b, p.a), CUE);
    t.equal(ab, ref[i].prompts[0], `pair ${i}: the prompt equals apply_chat_template(continue_final_message=True)`);
    t.equal(ba, ref[i].prompts[1], `pair ${i}: the swapped prompt too`);
    t.same(judgeIds(tok, ab), ref[i].ids[0], `pair ${i}: token ids equal the transformers tokenizer's`);
  });
  const model = await loadModel(JUDGE, { device: 'cpu' });
  const out = await labelPairs(model, tok, PAIRS, { template: TEMPLATE, cue: CUE, batchSize: 6 });
  const single = await labelPairs(model, tok, PAIRS, { template: TEMPLATE, cue: CUE, batchSize: 4, debias: false });
  model.dispose();
  let worst = 0;
  out.forEach((o, i) => {
    for (const [ours, theirs] of [[o.probs[0], ref[i].p_ab], [o.probs[1], ref[i].p_ba], [o.prob, ref[i].prob], [single[i].prob, ref[i].p_ab]] as const) worst = Math.max(worst, Math.abs(ours - theirs));
    const row = o.row as { chosen: string; rejected: string; label_prob: number; margin: number };
    const aBetter = ref[i].prob >= 0.5;
    t.equal(row.chosen, aBetter ? PAIRS[i].a : PAIRS[i].b, `pair ${i}: chosen is the response the judge prefers`);
    t.ok(Math.abs(row.label_prob - Math.max(ref[i].prob, 1 - ref[i].prob)) < 1e-5, `pair ${i}: label_prob is P(chosen better)`);
    t.ok(Math.abs(row.margin - Math.abs(2 * ref[i].prob - 1)) < 1e-5, `pair ${i}: margin is 2 label_prob - 1`);
  });
  t.ok(worst < 1e-5, `every probability within 1e-5 of float64 (worst ${worst.toExponential(2)})`);
});

t.test('direct RLAIF reward source: expected 1-10 score equals transformers float64', async (t) => {
  const template = 'Q: {prompt}\nA: {response}\nRate it.';
  const items = PAIRS.flatMap((p) => [{ prompt: p.prompt, response: p.a }, { prompt: p.prompt, response: p.b }]);
  const ref = runPeer<{ prompt: string; mean: number; reward: number }[]>('judge_labels.py', { model: JUDGE, template, cue: SCORE_CUE, answers: SCORE_ANSWERS, values: SCORES, scores: items });
  const src = await openJudgeSource(JUDGE, { device: 'cpu', template, batchSize: 7 });
  const r = await src.score(items.map((x) => ({ prompt: x.prompt, promptIds: [], response: x.response, responseIds: [] })));
  src.dispose();
  let worst = 0;
  items.forEach((_, i) => {
    worst = Math.max(worst, Math.abs(r.reward[i] - ref[i].reward), Math.abs(r.parts.judge[i] - ref[i].reward));
  });
  t.ok(worst < 1e-5, `rewards (and the part judge) within 1e-5 of float64 (worst ${worst.toExponential(2)})`);
  t.ok(r.reward.every((x) => x >= -1 && x <= 1), 'rewards in [-1, 1]');
});

t.test('direct RLAIF: the expected score sum_s s p(s), normalised to [-1, 1]', async (t) => {
  const scores = Array.from({ length: 10 }, (_, i) => i + 1);
  const lps = [-3.1, -2.2, -1.9, -4.0, -0.7, -2.5, -1.1, -5.3, -0.2, -3.3];
  const z = lps.reduce((s, x) => s + Math.exp(x), 0);
  const mean = lps.reduce((s, x, i) => s + (Math.exp(x) / z) * scores[i], 0);
  const r = expectedScore(lps, scores);
  t.ok(Math.abs(r.mean - mean) < 1e-12, 'mean score');
  t.ok(Math.abs(r.reward - (mean - 5.5) / 4.5) < 1e-12, 'reward = (mean - 5.5) / 4.5 on a 1-10 scale');
  t.ok(Math.abs(expectedScore([0, -Infinity, -Infinity], [1, 2, 3]).reward + 1) < 1e-12, 'certain lowest score: -1');
});

t.test('errors before any work', async (t) => {
  const fake = { file: '/x/tokenizer.json', unkTokenId: 0, encode: (s: string) => (s.includes('1') ? [0] : [5]), decode: () => '?' } as unknown as Tokenizer;
  t.throws(() => checkAnswers(fake, [' 1', ' 2'], 'the preference answers'), { code: 'E_TOKENIZER' }, 'a tokenizer that cannot write the answers');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-label-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const bad = path.join(tmp, 'bad.jsonl');
  fs.writeFileSync(bad, '{"prompt":"x","responses":["a"]}\n');
  t.throws(() => readLabelPairs(bad), { code: 'E_DATA', message: /bad\.jsonl:1: "responses" must be a list of exactly two/ });
  if (!cliBuilt()) return;
  const data = path.join(tmp, 'pairs.jsonl');
  fs.writeFileSync(data, '{"prompt":"Add 2 and 3.","chosen":"5","rejected":"6"}\n');
  const out = path.join(tmp, 'out.jsonl');
  let r = runCli(['label', '--judge', path.join(tmp, 'nothing'), '--data', data, '--out', out]);
  t.not(r.status, 0);
  t.match(r.stderr, /error E_\w+: .*nothing/, 'a missing judge folder is named');
  const plain = path.join(tmp, 'plain');
  fs.mkdirSync(plain);
  for (const f of fs.readdirSync(JUDGE)) fs.copyFileSync(path.join(JUDGE, f), path.join(plain, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(plain, 'tokenizer_config.json'), 'utf8'));
  delete cfg.chat_template;
  fs.writeFileSync(path.join(plain, 'tokenizer_config.json'), JSON.stringify(cfg));
  r = runCli(['label', '--judge', plain, '--data', data, '--out', out, '--format', 'chat']);
  t.not(r.status, 0);
  t.match(r.stderr, /error E_TOKENIZER: .*no chat template/, 'a judge without the chat template asked for');
  t.notOk(fs.existsSync(out), 'no output written');
  const tpl = path.join(tmp, 'tpl.txt');
  fs.writeFileSync(tpl, 'Which is better? {response_1} or {response_2}');
  r = runCli(['label', '--judge', JUDGE, '--data', data, '--out', out, '--template', tpl]);
  t.match(r.stderr, /tpl\.txt: the judge template has no \{prompt\}/, 'a template without {prompt}');
  fs.writeFileSync(out, 'kept\n');
  r = runCli(['label', '--judge', JUDGE, '--data', data, '--out', out, '--template', tpl]);
  t.equal(fs.readFileSync(out, 'utf8'), 'kept\n', 'a failed run leaves an existing output as it was');
});
