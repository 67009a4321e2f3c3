/**
 * Tokenization as TRL 1.13's trainers do it (SFTTrainer, DPOTrainer,
 * RewardTrainer, KTOTrainer), shared by the SFT, preference and unpaired
 * loaders. See docs/trl.md.
 *
 *  - A string completion (or text) gets the EOS token's *text* appended
 *    unless it already ends with it, and prompt + completion is encoded as
 *    ONE string with the tokenizer's special tokens (BOS where the tokenizer
 *    adds it). The prompt/completion boundary is the length of the prompt
 *    encoded alone. Encoding the two parts separately instead (the
 *    `separate` mode) splits words differently at the seam: a SentencePiece
 *    tokenizer such as Llama 2's puts a lone "▁" before a completion that
 *    starts with a space.
 *  - A conversation is rendered with the chat template and encoded without
 *    special tokens (the template writes them); the prompt's boundary is
 *    the prompt rendered alone with the generation prompt.
 */
import type { Tokenizer } from '../tokenizer/tokenizer';
import type { ChatMessage } from '../tokenizer/chat-template';

/** 'trl': TRL 1.13's tokenization (the default); 'separate': prompt and completion encoded apart and concatenated. */
export type TokenizeMode = 'trl' | 'separate';
export const TOKENIZE_MODES: readonly TokenizeMode[] = ['trl', 'separate'];

/** Which end of a too-long sequence is kept (TRL's truncation_mode). */
export type TruncationMode = 'keep_start' | 'keep_end';
export const TRUNCATION_MODES: readonly TruncationMode[] = ['keep_start', 'keep_end'];

/**
 * How EOS is added to a string in TRL mode: as text when the id is a special
 * token of the tokenizer (TRL's `add_eos` appends `eos_token`), else (a
 * tokenizer without eos_token, the model config's id used instead) as an id
 * after encoding.
 */
export interface EosPlan {
  text: string | null;
  id: number | null;
}

export function eosPlan(tok: Tokenizer, id: number | null): EosPlan {
  if (id === null) return { text: null, id: null };
  const text = tok.idToToken(id);
  if (text !== undefined && tok.specialTokens[text] === id) return { text, id: null };
  return { text: null, id };
}

/** TRL's add_eos on one string: EOS text appended unless the string already ends with it. */
export function withEosText(s: string, eos: EosPlan): string {
  return eos.text !== null && !s.endsWith(eos.text) ? s + eos.text : s;
}

/** The id-level half of the plan: the EOS id appended when it could not go in as text. */
export function withEosId(ids: number[], eos: EosPlan): number[] {
  return eos.id !== null && ids[ids.length - 1] !== eos.id ? [...ids, eos.id] : ids;
}

/** Prompt ids and whole-sequence ids of a string prompt and completion, TRL's way. */
export function trlTextPair(tok: Tokenizer, prompt: string, completion: string, eos: EosPlan): { promptIds: number[]; ids: number[] } {
  const promptIds = tok.encode(prompt, { addSpecialTokens: true });
  const ids = withEosId(tok.encode(prompt + withEosText(completion, eos), { addSpecialTokens: true }), eos);
  return { promptIds, ids };
}

/** Prompt ids and whole-conversation ids of a conversational prompt and completion, TRL's way (no EOS: the template ends the turn). */
export function trlChatPair(tok: Tokenizer, prompt: readonly ChatMessage[], completion: readonly ChatMessage[]): { promptIds: number[]; ids: number[] } {
  const promptIds = tok.encode(tok.applyChatTemplate(prompt, { addGenerationPrompt: true }), { addSpecialTokens: false });
  const ids = tok.encode(tok.applyChatTemplate([...prompt, ...completion], { addGenerationPrompt: false }), { addSpecialTokens: false });
  return { promptIds, ids };
}

/**
 * TRL's extract_prompt on two strings: the longest common character prefix,
 * moved back by one when the character before the first difference is a
 * space (so the completions start with their space). When neither string
 * differs within the shorter one, the prompt stops one character short of
 * it, as TRL's loop leaves it. Returns the prompt's length in characters.
 */
export function extractPromptChars(chosen: string, rejected: string): number {
  const n = Math.min(chosen.length, rejected.length);
  let idx = 0;
  for (idx = 0; idx < n; idx++) {
    if (chosen[idx] !== rejected[idx]) {
      if (idx > 0 && chosen[idx - 1] === ' ') idx -= 1;
      return idx;
    }
  }
  return Math.max(0, n - 1);
}

/** A sequence and its mask/labels cut to maxLen at the end (keep_start) or at the start (keep_end). */
export function truncate<T>(xs: T[], maxLen: number, mode: TruncationMode): T[] {
  if (xs.length <= maxLen) return xs;
  return mode === 'keep_end' ? xs.slice(xs.length - maxLen) : xs.slice(0, maxLen);
}

/** The tokenizer a mode reads: 'separate' keeps tokenizer.json as written, 'trl' builds it as transformers does. */
export function tokenizerSemantics(mode: TokenizeMode): 'transformers' | 'raw' {
  return mode === 'separate' ? 'raw' : 'transformers';
}
