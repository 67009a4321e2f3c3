/**
 * SL-CAI (Bai et al. 2022, section 3): for each red-team prompt the model
 * answers, then critiques its answer under a randomly drawn principle and
 * revises it, `rounds` times; the final revisions become SFT data (mixed
 * with helpfulness data by the command).
 *
 * Each round starts from the prompt and the current answer (the paper keeps
 * every earlier critique in the context; a small model's context does not
 * hold them). With a chat template the requests are user turns and the
 * critique and revision the assistant's; without one the text reads
 *
 *   Human: <prompt>
 *
 *   Assistant: <answer>
 *
 *   Critique request: <principle's critique>
 *
 *   Critique: <generated>
 *
 *   Revision request: <principle's revision>
 *
 *   Revision: <generated>
 *
 * Few-shot examples ({prompt, response, critique, revision}) come first, as
 * whole worked rounds. Generation stops at EOS, and (plain text) at a blank
 * line.
 */
import { RlhfError } from '../errors';
import { mixSeed, seededRandom } from '../data/batches';
import type { Model } from '../engine/model';
import type { ChatMessage } from '../tokenizer/chat-template';
import type { Tokenizer } from '../tokenizer/tokenizer';
import { tokenBytesTable } from '../tokenizer/token-bytes';
import type { Principle } from './constitution';

export interface CaiExample {
  prompt: string;
  response: string;
  critique: string;
  revision: string;
}

export interface SampleOptions {
  maxNewTokens: number;
  temperature: number;
  seed: number;
  batchSize: number;
}

/** One turn of the exchange, before rendering. */
type Turn = { role: 'user' | 'assistant'; content: string; label: string };

const PLAIN_LABEL = { prompt: 'Human', answer: 'Assistant', critiqueRequest: 'Critique request', critique: 'Critique', revisionRequest: 'Revision request', revision: 'Revision' };

/** A worked round (an example, or the current one up to where the model writes next) as turns. */
function roundTurns(prompt: string, answer: string, principle: Principle, critique?: string, revision?: string): Turn[] {
  const turns: Turn[] = [
    { role: 'user', content: prompt, label: PLAIN_LABEL.prompt },
    { role: 'assistant', content: answer, label: PLAIN_LABEL.answer },
    { role: 'user', content: principle.critique, label: PLAIN_LABEL.critiqueRequest },
  ];
  if (critique === undefined) return turns;
  turns.push({ role: 'assistant', content: critique, label: PLAIN_LABEL.critique }, { role: 'user', content: principle.revision, label: PLAIN_LABEL.revisionRequest });
  if (revision !== undefined) turns.push({ role: 'assistant', content: revision, label: PLAIN_LABEL.revision });
  return turns;
}

/** Renders turns and what the model writes next (`next`: the label of its turn) as one prompt text. */
export function renderTurns(tok: Tokenizer, turns: readonly Turn[], next: string): string {
  if (tok.chatTemplate) return tok.applyChatTemplate(turns.map(({ role, content }): ChatMessage => ({ role, content })), { addGenerationPrompt: true });
  return turns.map((t) => `${t.label}: ${t.content}`).join('\n\n') + `\n\n${next}:`;
}

const ids = (tok: Tokenizer, text: string) => tok.encode(text, { addSpecialTokens: !tok.chatTemplate });

/** Generates one continuation per prompt text (stop at EOS, and at a blank line for plain text), decoded and trimmed. */
export async function generateTexts(model: Model, tok: Tokenizer, texts: readonly string[], o: SampleOptions, salt: number): Promise<string[]> {
  const prompts = texts.map((t) => ids(tok, t));
  const ctx = model.config.maxSequenceLength;
  const long = prompts.findIndex((p) => p.length + o.maxNewTokens > ctx);
  if (long >= 0)
    throw new RlhfError('E_DATA', `a CAI prompt of ${prompts[long].length} tokens plus --max-new-tokens ${o.maxNewTokens} exceeds the model's context of ${ctx}; shorten the prompts, principles or examples, or lower --max-new-tokens`);
  const plain = !tok.chatTemplate;
  const bytes = plain ? tokenBytesTable(tok, model.config.vocabSize) : undefined;
  const out: string[] = [];
  for (let i = 0; i < prompts.length; i += o.batchSize) {
    const r = await model.generate({
      prompts: prompts.slice(i, i + o.batchSize),
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      seed: mixSeed(o.seed, salt, i),
      ...(plain ? { stopStrings: ['\n\n'], tokenBytes: bytes } : {}),
    });
    for (const t of r.tokens) {
      const text = tok.decode(Array.from(t), { skipSpecialTokens: true });
      out.push((plain ? text.split('\n\n')[0] : text).trim());
    }
  }
  return out;
}

export interface SlCaiTrace {
  prompt: string;
  initial: string;
  principles: string[];
  critiques: string[];
  revisions: string[];
}

/**
 * Answers every prompt, then runs `rounds` critique -> revision rounds under
 * principles drawn at random (seeded by the seed and the prompt's index).
 */
export async function critiqueAndRevise(
  model: Model,
  tok: Tokenizer,
  prompts: readonly string[],
  principles: readonly Principle[],
  o: SampleOptions & { rounds: number; examples?: readonly CaiExample[] },
): Promise<SlCaiTrace[]> {
  const examples = (o.examples ?? []).flatMap((e, i) => roundTurns(e.prompt, e.response, principles[i % principles.length], e.critique, e.revision));
  const initial = await generateTexts(model, tok, prompts.map((p) => renderTurns(tok, [{ role: 'user', content: p, label: PLAIN_LABEL.prompt }], PLAIN_LABEL.answer)), o, 0x51);
  const traces: SlCaiTrace[] = prompts.map((p, i) => ({ prompt: p, initial: initial[i], principles: [], critiques: [], revisions: [] }));
  for (let round = 0; round < o.rounds; round++) {
    const drawn = prompts.map((_, i) => principles[Math.floor(seededRandom(mixSeed(o.seed, 0xca1, i, round))() * principles.length)]);
    const answer = (i: number) => traces[i].revisions[round - 1] ?? traces[i].initial;
    const critiques = await generateTexts(model, tok, prompts.map((p, i) => renderTurns(tok, [...examples, ...roundTurns(p, answer(i), drawn[i])], PLAIN_LABEL.critique)), o, 0x52 + 2 * round);
    const revisions = await generateTexts(model, tok, prompts.map((p, i) => renderTurns(tok, [...examples, ...roundTurns(p, answer(i), drawn[i], critiques[i])], PLAIN_LABEL.revision)), o, 0x53 + 2 * round);
    traces.forEach((t, i) => {
      t.principles.push(drawn[i].name);
      t.critiques.push(critiques[i]);
      t.revisions.push(revisions[i]);
    });
  }
  return traces;
}
