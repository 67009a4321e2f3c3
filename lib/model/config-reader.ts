/**
 * Typed reads of one JSON object (a config.json or a part of it), each
 * failure an E_CONFIG naming the file and the key.
 */
import { RlhfError } from '../errors';

export type Json = Record<string, unknown>;

export function fail(file: string, message: string, key?: string): never {
  throw new RlhfError('E_CONFIG', `${file}: ${message}`, { where: key ? `${file}:${key}` : file });
}

/** Reads typed keys from one JSON object, with messages naming the key and the file. */
export class Reader {
  constructor(
    readonly obj: Json,
    readonly file: string,
    readonly prefix = '',
  ) {}

  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }

  private name(key: string): string {
    return this.prefix + key;
  }

  /** A positive integer; `fallback` undefined means required. */
  posInt(key: string, fallback?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) fail(this.file, `required key "${this.name(key)}" is missing`, this.name(key));
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0)
      fail(this.file, `"${this.name(key)}" must be a positive integer, got ${JSON.stringify(v)}`, this.name(key));
    return v;
  }

  posNum(key: string, fallback?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) fail(this.file, `required key "${this.name(key)}" is missing`, this.name(key));
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      fail(this.file, `"${this.name(key)}" must be a positive number, got ${JSON.stringify(v)}`, this.name(key));
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.obj[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') fail(this.file, `"${this.name(key)}" must be true or false, got ${JSON.stringify(v)}`, this.name(key));
    return v;
  }

  str(key: string, fallback: string): string {
    const v = this.obj[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string') fail(this.file, `"${this.name(key)}" must be a string, got ${JSON.stringify(v)}`, this.name(key));
    return v;
  }

  /** A token id: non-negative integer or null. */
  tokenId(key: string): number | null {
    const v = this.obj[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
      fail(this.file, `"${this.name(key)}" must be a token id (integer >= 0), got ${JSON.stringify(v)}`, this.name(key));
    return v;
  }

  tokenIds(key: string): number[] {
    const v = this.obj[key];
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    for (const x of list)
      if (typeof x !== 'number' || !Number.isInteger(x) || x < 0)
        fail(this.file, `"${this.name(key)}" must be a token id or a list of them, got ${JSON.stringify(v)}`, this.name(key));
    return list as number[];
  }

  /** A non-empty list of positive numbers. */
  posNumList(key: string): number[] {
    const v = this.obj[key];
    if (v === undefined || v === null) fail(this.file, `required key "${this.name(key)}" is missing`, this.name(key));
    if (!Array.isArray(v) || v.length === 0 || v.some((x) => typeof x !== 'number' || !Number.isFinite(x) || x <= 0))
      fail(this.file, `"${this.name(key)}" must be a non-empty list of positive numbers`, this.name(key));
    return v as number[];
  }

  /** One value read under either of two names (e.g. GPT-2's n_embd / hidden_size); both present and different is an error. */
  alias<T>(a: string, b: string, read: (key: string) => T): T {
    if (this.has(a) && this.has(b) && this.obj[a] !== this.obj[b])
      fail(this.file, `contradictory keys "${this.name(a)}" (${JSON.stringify(this.obj[a])}) and "${this.name(b)}" (${JSON.stringify(this.obj[b])})`, this.name(a));
    return read(this.has(a) || !this.has(b) ? a : b);
  }
}
