/**
 * A policy's responses to world prompts: the chat template's user turn and
 * generation prompt, batched generation, the decoded text up to the end of
 * the assistant turn. What the labeler scores.
 */
import type { Model } from '../engine/model';
import type { Tokenizer } from '../tokenizer/tokenizer';
import { chatPrompt, type WorldPrompt } from './world';

export interface RespondOptions {
  /** Default 16 (every ideal response is at most 12 tokens). */
  maxNewTokens?: number;
  /** 0 = greedy (default). */
  temperature?: number;
  topP?: number;
  seed?: number;
  /** Prompts per generate call. Default 64. */
  batchSize?: number;
}

/** The token ids of a world prompt as the policy sees it (chat template, generation prompt). */
export function promptIds(tok: Tokenizer, p: WorldPrompt): number[] {
  return tok.encode(tok.applyChatTemplate(chatPrompt(p), { addGenerationPrompt: true }), { addSpecialTokens: false });
}

/** Generated responses, one per prompt, decoded without special tokens and trimmed. */
export async function respond(model: Model, tok: Tokenizer, prompts: readonly WorldPrompt[], opts: RespondOptions = {}): Promise<string[]> {
  const bs = opts.batchSize ?? 64;
  const out: string[] = [];
  for (let i = 0; i < prompts.length; i += bs) {
    const chunk = prompts.slice(i, i + bs);
    const g = await model.generate({
      prompts: chunk.map((p) => promptIds(tok, p)),
      maxNewTokens: opts.maxNewTokens ?? 16,
      temperature: opts.temperature ?? 0,
      topP: opts.topP ?? 1,
      seed: (opts.seed ?? 0) + i,
    });
    for (const ids of g.tokens) out.push(tok.decode(Array.from(ids), { skipSpecialTokens: true }).trim());
  }
  return out;
}
