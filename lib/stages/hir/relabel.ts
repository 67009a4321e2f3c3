/**
 * HIR's hindsight relabelling and its sample buffer.
 *
 * The rule (the paper's): an output the checker calls correct keeps its
 * instruction, and its negative is the "wrong answer" instruction; a wrong
 * output is relabelled with the "wrong answer" instruction (what it
 * achieved), and its negative is the original one. The "wrong answer"
 * instruction comes from a template whose {prompt} is the original
 * instruction: the plain prompt, or the content of a chat prompt's last user
 * message (the other messages are kept).
 *
 * For other tasks a user module (--relabel-module, .js/.mjs/.cjs) exports
 * `relabel({prompt, completion, row, reward})` returning `{instruction,
 * negative?}` (each a string or chat messages; sync or async). Without a
 * negative: the original prompt when the instruction differs from it, else
 * the template's. Every problem with a module is an RlhfError naming the
 * module and, for a call, the data file:line of the prompt.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { RlhfError } from '../../errors';
import { isMessages } from '../../data/jsonl';
import type { ChatMessage } from '../../tokenizer/chat-template';
import type { Tokenizer } from '../../tokenizer/tokenizer';

export type Instruction = string | ChatMessage[];

/** The template applied to an instruction: {prompt} replaced by the plain prompt, or by the last user message's content. */
export function applyTemplate(prompt: Instruction, template: string, where: string): Instruction {
  const fill = (s: string) => template.split('{prompt}').join(s);
  if (typeof prompt === 'string') return fill(prompt);
  let last = -1;
  prompt.forEach((m, i) => m.role === 'user' && (last = i));
  if (last < 0) throw new RlhfError('E_DATA', `${where}: the chat prompt has no user message to relabel`, { where });
  return prompt.map((m, i) => (i === last ? { ...m, content: fill(m.content) } : m));
}

/** The positive and negative instruction of an output by the checker's verdict. */
export function relabelByVerdict(prompt: Instruction, correct: boolean, wrongTemplate: string, where: string): { pos: Instruction; neg: Instruction } {
  const wrong = applyTemplate(prompt, wrongTemplate, where);
  return correct ? { pos: prompt, neg: wrong } : { pos: wrong, neg: prompt };
}

/** Token ids of an instruction as the prompt loader encodes prompts (plain: with special tokens; chat: the template with the generation prompt). */
export function instructionIds(tok: Tokenizer, x: Instruction): number[] {
  if (typeof x === 'string') return tok.encode(x, { addSpecialTokens: true });
  return tok.encode(tok.applyChatTemplate(x, { addGenerationPrompt: true }), { addSpecialTokens: false });
}

export interface RelabelInput {
  /** The prompt as the data gives it (string or chat messages). */
  prompt: Instruction;
  /** The sampled output, decoded. */
  completion: string;
  /** The prompt's JSON row, as in the data file. */
  row: Record<string, unknown>;
  /** The checker's reward, or null without a checker. */
  reward: number | null;
}
export type RelabelFn = (x: RelabelInput) => { instruction: Instruction; negative?: Instruction } | Promise<{ instruction: Instruction; negative?: Instruction }>;

/** Loads a user relabel module: its `relabel` export (or the default export's). */
export async function loadRelabelModule(file: string): Promise<RelabelFn> {
  const abs = path.resolve(file);
  const bad = (why: string, cause?: unknown) => new RlhfError('E_ARGUMENT', `--relabel-module ${file}: ${why}`, { where: file, ...(cause ? { cause } : {}) });
  if (!/\.(c|m)?js$/.test(abs)) throw bad('expected a .js, .mjs or .cjs file');
  if (!fs.existsSync(abs)) throw bad('no such file; check the path');
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(abs).href)) as Record<string, unknown>;
  } catch (e) {
    throw bad(`cannot be loaded: ${(e as Error).message}`, e);
  }
  const fn = typeof mod.relabel === 'function' ? mod.relabel : typeof (mod.default as Record<string, unknown> | undefined)?.relabel === 'function' ? (mod.default as Record<string, unknown>).relabel : null;
  if (!fn) throw bad('exports no function relabel({prompt, completion, row, reward})');
  return fn as RelabelFn;
}

const isInstruction = (v: unknown): v is Instruction => (typeof v === 'string' && v.length > 0) || isMessages(v);

/** Runs the module on one output; its errors and bad results name the module and the prompt's file:line. */
export async function relabelWithModule(
  fn: RelabelFn,
  x: RelabelInput,
  o: { module: string; where: string; wrongTemplate: string },
): Promise<{ pos: Instruction; neg: Instruction }> {
  const fail = (why: string, cause?: unknown) => new RlhfError('E_DATA', `--relabel-module ${o.module}: relabel() for ${o.where}: ${why}`, { where: o.where, ...(cause ? { cause } : {}) });
  let r: unknown;
  try {
    r = await fn(x);
  } catch (e) {
    throw fail(`threw: ${(e as Error)?.message ?? String(e)}`, e);
  }
  if (!r || typeof r !== 'object') throw fail(`must return {instruction, negative?}, got ${JSON.stringify(r)}`);
  const { instruction, negative } = r as { instruction?: unknown; negative?: unknown };
  if (!isInstruction(instruction)) throw fail(`"instruction" must be a non-empty string or a list of {role, content} messages, got ${JSON.stringify(instruction)}`);
  if (negative !== undefined && negative !== null && !isInstruction(negative))
    throw fail(`"negative" must be a non-empty string or a list of {role, content} messages, got ${JSON.stringify(negative)}`);
  if (negative) return { pos: instruction, neg: negative as Instruction };
  const same = JSON.stringify(instruction) === JSON.stringify(x.prompt);
  return { pos: instruction, neg: same ? applyTemplate(x.prompt, o.wrongTemplate, o.where) : x.prompt };
}

/** One distinct sampled output with its relabelled instructions (token ids), as the buffer and the checkpoints hold it. */
export interface BufferEntry {
  /** Index of the prompt among the training prompts. */
  prompt: number;
  output: number[];
  text: string;
  reward: number | null;
  correct: boolean;
  pos: number[];
  neg: number[];
  /** The iteration that first sampled it. */
  iteration: number;
}

/** The growing buffer: outputs de-duplicated per prompt (the same ids for the same prompt are kept once, the first time). */
export class SampleBuffer {
  readonly entries: BufferEntry[] = [];
  private readonly seen = new Set<string>();

  constructor(entries: readonly BufferEntry[] = []) {
    for (const e of entries) this.add(e);
  }

  static key(prompt: number, output: readonly number[]): string {
    return `${prompt}:${output.join(',')}`;
  }

  has(prompt: number, output: readonly number[]): boolean {
    return this.seen.has(SampleBuffer.key(prompt, output));
  }

  /** Adds the entry unless its (prompt, output) is there already; true when added. */
  add(e: BufferEntry): boolean {
    const k = SampleBuffer.key(e.prompt, e.output);
    if (this.seen.has(k)) return false;
    this.seen.add(k);
    this.entries.push(e);
    return true;
  }

  get size(): number {
    return this.entries.length;
  }
}
