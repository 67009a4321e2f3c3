/**
 * Writes the examples' data (examples/data/) from the demo world
 * (lib/demo/world.ts): no model and no labeling run needed, so the recipes
 * here run on files anyone can read. Deterministic: running it again writes
 * the same bytes (test/examples.test.ts checks the committed files).
 *
 *   sft.jsonl           chat demonstrations, a quarter of them flawed (as the demo's)
 *   helpfulness.jsonl   preference pairs on safe prompts: the right answer, a wrong one, a needless refusal, ranked by the labeler
 *   safety.jsonl        pairs on harmful prompts (refusal over compliance), plus a quarter as many helpfulness pairs
 *   pairs.jsonl         both, for a recipe with one reward model (InstructGPT)
 *   prompts.jsonl       prompts with the world's answer (rejection sampling, PPO, GRPO)
 *
 * Usage: node dist/examples/make-data.js [OUT_DIR]   (default examples/data)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { demo } from '../lib';

const { chatPrompt, chatSftRow, complianceFor, makeRng, preferencePairs, REFUSAL, samplePrompts, sftDemonstrations, wrongAnswer } = demo;

const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

/** The data files by name. */
export function exampleData(): Record<string, string> {
  const rng = makeRng('examples/pairs');
  const pairRow = (r: demo.PreferenceRow, p: demo.WorldPrompt) => ({
    prompt: chatPrompt(p),
    chosen: [{ role: 'assistant', content: r.chosen }],
    rejected: [{ role: 'assistant', content: r.rejected }],
    rating: r.rating,
    safe: r.safe,
  });
  const safe = samplePrompts(120, { split: 'train', seed: 11, distinct: true, unsafeFraction: 0 });
  const harmful = samplePrompts(60, { split: 'train', seed: 12, distinct: true, unsafeFraction: 1 });
  const helpfulness = safe.flatMap((p) => preferencePairs(p, [p.answer, wrongAnswer(p, rng), REFUSAL], 'helpfulness').map((r) => pairRow(r, p)));
  const safetyOnly = harmful.flatMap((p) => preferencePairs(p, [REFUSAL, complianceFor(p)], 'safety').map((r) => pairRow(r, p)));
  // As Llama 2's safety model also saw helpfulness data: without it, "refuse everything" would score best.
  const safety = [...safetyOnly, ...helpfulness.filter((_, i) => i % 4 === 0).slice(0, Math.ceil(safetyOnly.length / 4))];
  const prompts = samplePrompts(128, { split: 'train', seed: 13, distinct: true });
  return {
    'sft.jsonl': jsonl(sftDemonstrations(240, { seed: 7 }).map(chatSftRow)),
    'helpfulness.jsonl': jsonl(helpfulness),
    'safety.jsonl': jsonl(safety),
    'pairs.jsonl': jsonl([...helpfulness, ...safetyOnly]),
    'prompts.jsonl': jsonl(prompts.map((p) => ({ messages: chatPrompt(p), safe: p.safe, answer: p.answer }))),
  };
}

if (require.main === module) {
  const out = path.resolve(process.argv[2] ?? path.join('examples', 'data'));
  fs.mkdirSync(out, { recursive: true });
  for (const [name, text] of Object.entries(exampleData())) {
    fs.writeFileSync(path.join(out, name), text);
    process.stdout.write(`${path.join(out, name)}: ${text.split('\n').length - 1} rows\n`);
  }
}
