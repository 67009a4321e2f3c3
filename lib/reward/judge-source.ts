/**
 * Direct RLAIF (Lee et al. 2023, section 2.4): a judge model rates each
 * response from 1 to 10 and the reward is its expected score,
 * sum_s s * p(s), normalised to [-1, 1]; no reward model is trained.
 *
 * p(s) is the softmax over the judge's log-probabilities of the answers
 * " 1/10" ... " 10/10" after the cue "Score:" (lib/label/judge.ts). Writing
 * the scale after the number keeps the answers from being prefixes of one
 * another (" 1" would also count the mass of " 10"), whatever the
 * tokenizer does with digits.
 */
import * as fs from 'node:fs';
import { RlhfError } from '../errors';
import { loadModel } from '../engine/model';
import type { Device } from '../info';
import { loadTokenizer } from '../tokenizer/tokenizer';
import { answerLogps, checkAnswers, expectedScore, renderJudgePrompt } from '../label/judge';
import type { RewardSource } from './sources';

export const DEFAULT_SCORE_TEMPLATE = [
  'Rate the response to the request from 1 (worst) to 10 (best). A good response does what was asked correctly and helpfully, and refuses a request for something harmful.',
  'Request: {prompt}',
  'Response: {response}',
].join('\n');
export const SCORE_CUE = 'Score:';
export const SCORES = Array.from({ length: 10 }, (_, i) => i + 1);
export const SCORE_ANSWERS = SCORES.map((s) => ` ${s}/10`);

/** The judge's body for one response. */
export const scoreBody = (template: string, prompt: string, response: string) => template.replace(/\{(prompt|response)\}/g, (_m, k: string) => (k === 'prompt' ? prompt : response));

/** Reads and checks a score template file ({prompt} and {response} required). */
export function readScoreTemplate(file: string): string {
  let t: string;
  try {
    t = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new RlhfError('E_IO', `cannot read --judge-template ${file}: ${(e as Error).message}`, { where: file, cause: e });
  }
  for (const k of ['{prompt}', '{response}']) if (!t.includes(k)) throw new RlhfError('E_ARGUMENT', `${file}: the judge template has no ${k}; it needs {prompt} and {response}`, { where: file });
  return t;
}

/** A RewardSource of one part, `judge`: the expected 1-10 score normalised to [-1, 1] (1 -> -1, 10 -> 1), which is also its reward. */
export async function openJudgeSource(dir: string, o: { device: Device; template?: string; batchSize?: number }): Promise<RewardSource> {
  const tok = loadTokenizer(dir);
  checkAnswers(tok, SCORE_ANSWERS, 'the 1-10 scores of --judge-model');
  const template = o.template ?? DEFAULT_SCORE_TEMPLATE;
  const model = await loadModel(dir, { device: o.device, head: 'lm' });
  return {
    names: ['judge'],
    maxTokens: model.config.maxSequenceLength,
    async score(batch) {
      const queries = batch.map((x) => ({ prompt: renderJudgePrompt(tok, scoreBody(template, x.prompt, x.response), SCORE_CUE), answers: SCORE_ANSWERS }));
      const lps = await answerLogps(model, tok, queries, o.batchSize ?? 8);
      const scored = lps.map((l) => expectedScore(l, SCORES));
      const reward = Float64Array.from(scored, (s) => s.reward);
      return { reward, parts: { judge: Float64Array.from(reward) } };
    },
    dispose: () => model.dispose(),
  };
}
