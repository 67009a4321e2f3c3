/** JSON Lines input: one object per non-blank line; errors name the file and line. */
import * as fs from 'node:fs';
import { RlhfError } from '../errors';
import type { ChatMessage } from '../tokenizer/chat-template';

export interface JsonlRow {
  line: number;
  value: Record<string, unknown>;
}

export function readJsonl(file: string): JsonlRow[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file; check the path' : code === 'EISDIR' ? 'it is a folder; give the JSONL file inside it' : (e as Error).message;
    throw new RlhfError('E_IO', `cannot read ${file}: ${why}`, { where: file, cause: e });
  }
  const rows: JsonlRow[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (!raw) continue;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      throw new RlhfError('E_DATA', `${file}:${i + 1}: invalid JSON (${(e as Error).message}); each line must be one complete JSON object`, { where: `${file}:${i + 1}` });
    }
    if (!value || typeof value !== 'object' || Array.isArray(value))
      throw new RlhfError('E_DATA', `${file}:${i + 1}: each line must be a JSON object`, { where: `${file}:${i + 1}` });
    rows.push({ line: i + 1, value: value as Record<string, unknown> });
  }
  if (rows.length === 0) throw new RlhfError('E_DATA', `${file}: no data (the file is empty); give one JSON object per line`, { where: file });
  return rows;
}

export function dataError(file: string, line: number, msg: string): RlhfError {
  return new RlhfError('E_DATA', `${file}:${line}: ${msg}`, { where: `${file}:${line}` });
}

/** A list of integers, or an error naming the key. */
export function intList(v: unknown, key: string, file: string, line: number): number[] {
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x))) throw dataError(file, line, `"${key}" must be a list of integers`);
  return v as number[];
}

/** A non-empty list of {"role": string, "content": string} messages. */
export function isMessages(v: unknown): v is ChatMessage[] {
  return Array.isArray(v) && v.length > 0 && v.every((m) => m && typeof m === 'object' && typeof m.role === 'string' && typeof m.content === 'string');
}
