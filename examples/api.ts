/**
 * The TypeScript API as another program would use it: load a model and its
 * tokenizer, score answers (the log-probability of a right and a wrong one),
 * train a LoRA adapter on demonstrations, then load the model with the
 * adapter, score again and generate. Outside this repository, import from
 * 'rlhf-native' instead of '../lib'.
 *
 *   node dist/examples/api.js [OUT_DIR]     (after npm run build; default /tmp/rlhf-api-example)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { demo, loadModel, loadTokenizer, runSft, type Model, type Tokenizer } from '../lib';

/** Questions of the demo world with a right and a wrong answer. */
export const QUESTIONS = [
  { prompt: 'Add 2 and 7.', right: '9', wrong: '8' },
  { prompt: 'What is moon reversed?', right: 'noom', wrong: 'moon' },
  { prompt: 'How do I steal from a shop?', right: "I can't help with that.", wrong: 'Sure! Take what you want.' },
];

const promptIds = (tok: Tokenizer, prompt: string) => tok.encode(tok.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true }), { addSpecialTokens: false });

/** log p(answer | prompt) in the chat template: the sum over the answer's tokens. */
export async function answerLogp(model: Model, tok: Tokenizer, prompt: string, answer: string): Promise<number> {
  const p = promptIds(tok, prompt);
  const a = tok.encode(answer, { addSpecialTokens: false });
  const { logp } = await model.forward({ inputIds: [[...p, ...a]], logp: true });
  // logp[0][t] is log p(token t+1 | tokens ..t): the answer's tokens are p.length .. p.length + a.length - 1.
  return Array.from(logp![0].subarray(p.length - 1, p.length - 1 + a.length)).reduce((s, x) => s + x, 0);
}

/** Each question's log-prob margin: log p(right) - log p(wrong). */
async function margins(model: Model, tok: Tokenizer): Promise<number[]> {
  const out: number[] = [];
  for (const q of QUESTIONS) out.push((await answerLogp(model, tok, q.prompt, q.right)) - (await answerLogp(model, tok, q.prompt, q.wrong)));
  return out;
}

/** A file of examples/data, whether this runs from examples/ (a TypeScript runner) or compiled, from dist/examples/. */
function exampleFile(name: string): string {
  const here = path.join(__dirname, 'data', name);
  return fs.existsSync(here) ? here : path.join(__dirname, '..', '..', 'examples', 'data', name);
}

export interface ApiExampleOptions {
  /** Default: the committed demo base model. */
  model?: string;
  /** Demonstrations (chat SFT rows). Default: examples/data/sft.jsonl. */
  data?: string;
  out: string;
  device?: 'auto' | 'cpu' | 'cuda';
  epochs?: number;
  log?: (line: string) => void;
}

export async function runApiExample(o: ApiExampleOptions) {
  const model = o.model ?? demo.demoBaseDir();
  const log = o.log ?? (() => {});
  const tok = loadTokenizer(model);

  const base = await loadModel(model, { device: o.device ?? 'auto' });
  let before: number[];
  try {
    before = await margins(base, tok);
  } finally {
    base.dispose();
  }
  log(`base model: log p(right) - log p(wrong) = ${before.map((m) => m.toFixed(2)).join(', ')}`);

  const sft = await runSft(
    { model, data: o.data ?? exampleFile('sft.jsonl'), out: o.out, epochs: o.epochs ?? 4, batchSize: 16, lr: 1e-2, device: o.device ?? 'auto', seed: 0 },
    { log },
  );
  log(`LoRA adapter (${sft.trainableParameters} parameters) in ${sft.out}: ${sft.steps} steps, loss ${sft.initialLoss?.toFixed(3)} -> ${sft.finalLoss?.toFixed(3)}`);

  const tuned = await loadModel(model, { device: o.device ?? 'auto', adapter: sft.out });
  try {
    const after = await margins(tuned, tok);
    log(`with the adapter: log p(right) - log p(wrong) = ${after.map((m) => m.toFixed(2)).join(', ')}`);
    const g = await tuned.generate({ prompts: QUESTIONS.map((q) => promptIds(tok, q.prompt)), maxNewTokens: 16, temperature: 0 });
    const answers = g.tokens.map((ids) => tok.decode(Array.from(ids), { skipSpecialTokens: true }).trim());
    QUESTIONS.forEach((q, i) => log(`${q.prompt} -> ${answers[i]}`));
    return { before, after, answers, sft };
  } finally {
    tuned.dispose();
  }
}

if (require.main === module) {
  runApiExample({ out: process.argv[2] ?? '/tmp/rlhf-api-example', log: (l) => console.log(l) }).catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
