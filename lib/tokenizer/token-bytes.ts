/**
 * The bytes each token id stands for, so generation can match stop strings
 * natively on raw bytes (a token may end in the middle of a UTF-8 character).
 * Byte-level BPE (GPT-2, Llama 3, Qwen2): each vocab symbol maps to one byte.
 * SentencePiece-style vocabularies (Llama 2): '\u2581' is a space and
 * '<0xNN>' a raw byte.
 */
import * as fs from 'node:fs';
import type { Tokenizer } from './tokenizer';
import { bytesToUnicode } from './bpe-train';

export function tokenBytesTable(tok: Tokenizer, vocabRows: number): Buffer[] {
  const json = JSON.parse(fs.readFileSync(tok.file, 'utf8')) as { decoder?: { type?: string; decoders?: { type?: string }[] } };
  const d = json.decoder;
  const byteLevel = d?.type === 'ByteLevel' || (d?.type === 'Sequence' && (d.decoders ?? []).some((x) => x.type === 'ByteLevel'));
  const special = new Set(Object.values(tok.specialTokens));
  const unicodeToByte = new Map<string, number>();
  bytesToUnicode().forEach((u, b) => unicodeToByte.set(u, b));
  const out: Buffer[] = [];
  for (let id = 0; id < vocabRows; id++) {
    const t = tok.idToToken(id);
    if (t === undefined) {
      out.push(Buffer.alloc(0));
    } else if (special.has(id)) {
      out.push(Buffer.from(t, 'utf8'));
    } else if (byteLevel) {
      const bytes: number[] = [];
      for (const ch of t) {
        const b = unicodeToByte.get(ch);
        if (b === undefined) bytes.push(...Buffer.from(ch, 'utf8'));
        else bytes.push(b);
      }
      out.push(Buffer.from(bytes));
    } else {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
      out.push(m ? Buffer.from([parseInt(m[1], 16)]) : Buffer.from(t.replace(/\u2581/g, ' '), 'utf8'));
    }
  }
  return out;
}
