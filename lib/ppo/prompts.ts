/**
 * Prompt data for on-policy stages, JSONL in TRL's prompt-only formats:
 *
 *   {"prompt": "..."}             encoded with the tokenizer's special tokens
 *                                 (as SFT encodes prompts);
 *   {"prompt": [messages]}        conversational prompt-only;
 *   {"messages": [messages]}      a conversation: a trailing assistant turn,
 *                                 as in SFT data, is dropped;
 *
 * messages are rendered with the chat template and the generation prompt.
 * Optional "safe": true/false marks the prompt for a safety reward model.
 * Every problem is an E_DATA error naming file:line.
 */
import { dataError, readJsonl } from '../data/jsonl';
import { RlhfError } from '../errors';
import type { ChatMessage } from '../tokenizer/chat-template';
import type { Tokenizer } from '../tokenizer/tokenizer';

export interface PromptRow {
  /** 1-based line in its file. */
  line: number;
  /** What the model sees, as text: the string, or the rendered chat template. */
  text: string;
  ids: number[];
  safe?: boolean;
}

export interface LoadPromptsOptions {
  tokenizer: Tokenizer;
  /** Longest prompt allowed, in tokens (the context minus the response budget). */
  maxPromptTokens: number;
  /** Why the limit is what it is, for the error message. */
  limitReason: string;
  vocabSize: number;
}

function isMessages(v: unknown): v is ChatMessage[] {
  return Array.isArray(v) && v.length > 0 && v.every((m) => m && typeof m === 'object' && typeof m.role === 'string' && typeof m.content === 'string');
}

export function loadPrompts(file: string, opts: LoadPromptsOptions): PromptRow[] {
  const rows = readJsonl(file);
  const tok = opts.tokenizer;
  return rows.map((row) => {
    const v = row.value;
    const err = (msg: string) => dataError(file, row.line, msg);
    let text: string, ids: number[];
    try {
      if (typeof v.prompt === 'string') {
        if (v.prompt.length === 0) throw err('"prompt" is empty');
        text = v.prompt;
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
          throw err('expected {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]} ("prompt" is missing)');
        }
        text = tok.applyChatTemplate(msgs, { addGenerationPrompt: true });
        ids = tok.encode(text, { addSpecialTokens: false });
      }
    } catch (e) {
      if (e instanceof RlhfError && !e.message.startsWith(`${file}:`)) throw err(e.message);
      throw e;
    }
    if ('safe' in v && v.safe !== null && typeof v.safe !== 'boolean') throw err('"safe" must be true or false');
    if (ids.length === 0) throw err('the prompt encodes to no tokens');
    if (ids.length > opts.maxPromptTokens) throw err(`the prompt is ${ids.length} tokens, longer than ${opts.maxPromptTokens} (${opts.limitReason})`);
    const bad = ids.find((id) => id < 0 || id >= opts.vocabSize);
    if (bad !== undefined) throw err(`token id ${bad} is outside the model's vocabulary (${opts.vocabSize})`);
    const out: PromptRow = { line: row.line, text, ids };
    if (typeof v.safe === 'boolean') out.safe = v.safe;
    return out;
  });
}
