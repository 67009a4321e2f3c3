/**
 * Prompt data for the online stages (PPO, rejection sampling, and the
 * sampling methods to come), JSONL in TRL's prompt-only formats:
 *
 *   {"prompt": "..."}             encoded with the tokenizer's special tokens
 *                                 (as SFT encodes prompts);
 *   {"prompt": [messages]}        conversational prompt-only;
 *   {"messages": [messages]}      a conversation: a trailing assistant turn,
 *                                 as in SFT data, is dropped;
 *
 * messages are rendered with the chat template and the generation prompt.
 * Optional "safe": true/false marks the prompt for a safety reward model.
 * Other keys are not read here but travel with the prompt (`row`): the
 * rewards read them (a reference answer, a test case). Every problem is an
 * E_DATA error naming file:line.
 */
import { dataError, isMessages, readJsonl } from './jsonl';
import { RlhfError } from '../errors';
import type { ChatMessage } from '../tokenizer/chat-template';
import type { Tokenizer } from '../tokenizer/tokenizer';

/** What a stage needs of a prompt to sample from it and score the result. */
export interface PromptIds {
  /** 1-based line in its file. */
  line: number;
  /** What the model sees, as text: the string, or the rendered chat template. */
  text: string;
  ids: number[];
  safe?: boolean;
  /** The file the prompt was read from (for messages naming file:line). */
  file?: string;
  /** The whole JSONL object of the line, for the rewards (reference answers, tests). */
  row?: Record<string, unknown>;
}

export interface PromptRow extends PromptIds {
  /** The prompt as given: a string or chat messages. */
  prompt: string | ChatMessage[];
  file: string;
  row: Record<string, unknown>;
}

export interface LoadPromptsOptions {
  tokenizer: Tokenizer;
  /** Longest prompt allowed, in tokens (the context minus the response budget). */
  maxPromptTokens: number;
  /** Why the limit is what it is, for the error message ("the model's context 256 minus --max-new-tokens 200"). */
  limitReason?: string;
  /** The whole message of a prompt over the limit, instead of the one built from `limitReason`. */
  tooLong?: (tokens: number, max: number) => string;
  /** The message of a row with neither "prompt" nor "messages". */
  missing?: string;
  vocabSize: number;
}

const MISSING = 'expected {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]} ("prompt" is missing)';

/** Reads a prompt file: `loadPrompts(file, opts)`, or `loadPrompts(file, tokenizer, opts)`. */
export function loadPrompts(file: string, opts: LoadPromptsOptions): PromptRow[];
export function loadPrompts(file: string, tokenizer: Tokenizer, opts: Omit<LoadPromptsOptions, 'tokenizer'>): PromptRow[];
export function loadPrompts(file: string, a: LoadPromptsOptions | Tokenizer, b?: Omit<LoadPromptsOptions, 'tokenizer'>): PromptRow[] {
  const opts: LoadPromptsOptions = b ? { ...b, tokenizer: a as Tokenizer } : (a as LoadPromptsOptions);
  const tok = opts.tokenizer;
  const tooLong = opts.tooLong ?? ((n: number, max: number) => `the prompt is ${n} tokens, longer than ${max}${opts.limitReason ? ` (${opts.limitReason})` : ''}`);
  return readJsonl(file).map((row) => {
    const v = row.value;
    const err = (msg: string) => dataError(file, row.line, msg);
    let prompt: string | ChatMessage[], text: string, ids: number[];
    try {
      if (typeof v.prompt === 'string') {
        if (v.prompt.length === 0) throw err('"prompt" is empty');
        prompt = text = v.prompt;
        ids = tok.encode(text, { addSpecialTokens: true });
      } else {
        let msgs: ChatMessage[];
        if ('prompt' in v) {
          if (!isMessages(v.prompt)) throw err('"prompt" must be a string or a non-empty list of {"role": string, "content": string} messages');
          msgs = v.prompt;
        } else if ('messages' in v) {
          if (!isMessages(v.messages)) throw err('"messages" must be a non-empty list of {"role": string, "content": string}');
          msgs = [...v.messages];
          while (msgs.length && msgs[msgs.length - 1].role === 'assistant') msgs.pop();
          if (msgs.length === 0) throw err('"messages" has only assistant messages: there is no prompt');
        } else {
          throw err(opts.missing ?? MISSING);
        }
        prompt = msgs;
        text = tok.applyChatTemplate(msgs, { addGenerationPrompt: true });
        ids = tok.encode(text, { addSpecialTokens: false });
      }
    } catch (e) {
      if (e instanceof RlhfError && !e.message.startsWith(`${file}:`)) throw err(e.message);
      throw e;
    }
    if (v.safe !== undefined && v.safe !== null && typeof v.safe !== 'boolean') throw err('"safe" must be true or false');
    if (ids.length === 0) throw err('the prompt encodes to no tokens');
    if (ids.length > opts.maxPromptTokens) throw err(tooLong(ids.length, opts.maxPromptTokens));
    const bad = ids.find((id) => id < 0 || id >= opts.vocabSize);
    if (bad !== undefined) throw err(`token id ${bad} is outside the model's vocabulary (${opts.vocabSize})`);
    const out: PromptRow = { line: row.line, file, row: v, prompt, text, ids };
    if (typeof v.safe === 'boolean') out.safe = v.safe;
    return out;
  });
}
