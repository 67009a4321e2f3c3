/**
 * Malformed .safetensors files, one per validation rule, shared by
 * safetensors-malformed.test.ts (the library) and safetensors-cli.test.ts
 * (`rlhf-native inspect`). Each case builds its bytes in memory; `message`
 * is a substring the native error must contain.
 *
 * Run directly (tap runs every .ts under test/), this file checks the list itself.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSafetensors } from '../lib/safetensors';

/** u64 little-endian header length + header + data. `length` overrides the length field. */
export function stBytes(header: string | Buffer, data: Buffer | number = 0, length?: bigint): Buffer {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header;
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(length ?? BigInt(h.length));
  const d = typeof data === 'number' ? Buffer.alloc(data, 0xab) : data;
  return Buffer.concat([n, h, d]);
}

/** One header entry as JSON text: "name":{"dtype":..,"shape":..,"data_offsets":..}. */
export function entry(name: string, dtype: string, shape: string, offsets: string): string {
  return `${JSON.stringify(name)}:{"dtype":"${dtype}","shape":${shape},"data_offsets":${offsets}}`;
}

export interface MalformedCase {
  name: string;
  bytes: () => Buffer;
  /** Substring of the RlhfError message (besides the file path, which every message starts with). */
  message: string;
}

const obj = (...entries: string[]) => `{${entries.join(',')}}`;

export const MALFORMED_CASES: MalformedCase[] = [
  { name: 'truncated: file shorter than 8 bytes', bytes: () => Buffer.from([1, 2, 3]), message: 'file too small: 3 bytes' },
  { name: 'empty file', bytes: () => Buffer.alloc(0), message: 'file too small: 0 bytes' },
  {
    name: 'header longer than file',
    bytes: () => stBytes('{}', 0, 100n),
    message: 'header longer than file: header length 100 needs 108 bytes but the file has 10',
  },
  {
    // Only the 8-byte length: the reference checks the cap before the file size.
    name: 'header length over the 100 MB cap',
    bytes: () => stBytes(Buffer.alloc(0), 0, 100_000_001n),
    message: 'header too large: header length 100000001 exceeds the 100000000-byte limit',
  },
  {
    name: 'header length of 2^64-1',
    bytes: () => stBytes(Buffer.alloc(0), 0, 0xffff_ffff_ffff_ffffn),
    message: 'header too large',
  },
  {
    name: 'header not valid UTF-8',
    bytes: () => stBytes(Buffer.concat([Buffer.from('{"a'), Buffer.from([0xff]), Buffer.from('":{}}')])),
    message: 'header is not valid UTF-8 (bad byte at header offset 3, file offset 11)',
  },
  {
    name: 'header with an overlong UTF-8 encoding',
    bytes: () => stBytes(Buffer.concat([Buffer.from('{"'), Buffer.from([0xc0, 0xaf]), Buffer.from('":{}}')])),
    message: 'header is not valid UTF-8',
  },
  { name: 'header not JSON (truncated object)', bytes: () => stBytes('{"a":'), message: 'invalid JSON in header at header byte 5' },
  { name: 'header not JSON (single quotes)', bytes: () => stBytes("{'a':1}"), message: 'invalid JSON in header' },
  { name: 'header not a JSON object', bytes: () => stBytes('[{"a":1}]'), message: 'header must be a JSON object, found an array' },
  { name: 'empty header', bytes: () => stBytes(''), message: 'the header is empty' },
  { name: 'header of only whitespace', bytes: () => stBytes(' \n\t '), message: 'the header holds only whitespace' },
  { name: '__metadata__ twice', bytes: () => stBytes('{"__metadata__":{"a":"b"},"__metadata__":{"a":"c"}}'), message: 'duplicate "__metadata__" key in header' },
  { name: 'trailing garbage after the JSON', bytes: () => stBytes('{} x'), message: 'trailing characters after the JSON value' },
  {
    name: 'raw control character in a string',
    bytes: () => stBytes('{"a\u0001b":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'),
    message: 'control character (\\u0000-\\u001F) in string; it must be escaped',
  },
  {
    name: 'lone surrogate escape',
    bytes: () => stBytes(`{"\\ud800":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`),
    message: 'lone leading surrogate',
  },
  {
    name: 'nesting bomb',
    bytes: () => stBytes('{"a":' + '['.repeat(100_000) + ']'.repeat(100_000) + '}'),
    message: 'nesting deeper than 127 levels',
  },
  { name: 'unknown dtype', bytes: () => stBytes(obj(entry('w', 'F128', '[1]', '[0,16]')), 16), message: 'tensor "w": unknown dtype "F128"' },
  { name: 'dtype in lowercase', bytes: () => stBytes(obj(entry('w', 'f32', '[1]', '[0,4]')), 4), message: 'unknown dtype "f32"' },
  {
    name: 'dtype not a string',
    bytes: () => stBytes('{"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}', 4),
    message: 'tensor "w": dtype must be a string, found 7',
  },
  {
    name: 'shape does not match the byte size',
    bytes: () => stBytes(obj(entry('w', 'F32', '[2,2]', '[0,12]')), 12),
    message: 'tensor "w": data_offsets [0, 12) hold 12 bytes but shape [2, 2] of F32 needs 16 bytes',
  },
  {
    name: 'hole between tensors',
    bytes: () => stBytes(obj(entry('a', 'U8', '[4]', '[0,4]'), entry('b', 'U8', '[4]', '[8,12]')), 12),
    message: 'hole in the data section: tensor "b" begins at byte 8 but the previous tensor "a" ends at byte 4',
  },
  {
    name: 'hole at the start of the data section',
    bytes: () => stBytes(obj(entry('a', 'U8', '[4]', '[4,8]')), 8),
    message: 'hole in the data section: tensor "a" begins at byte 4 but the data section starts at byte 0',
  },
  {
    name: 'overlapping tensors',
    bytes: () => stBytes(obj(entry('a', 'U8', '[8]', '[0,8]'), entry('b', 'U8', '[8]', '[4,12]')), 12),
    message: 'overlap in the data section: tensor "b" [4, 12) begins before the previous tensor "a" ends at byte 8',
  },
  {
    name: 'offset past the end of the file',
    bytes: () => stBytes(obj(entry('a', 'U8', '[16]', '[0,16]')), 8),
    message: 'tensor "a" ends at byte 16 of the data section, past the end of the file (the data section has 8 bytes)',
  },
  {
    name: 'trailing bytes after the last tensor',
    bytes: () => stBytes(obj(entry('a', 'U8', '[4]', '[0,4]')), 8),
    message: 'metadata incomplete buffer: the tensors cover 4 bytes but the data section has 8 (4 trailing bytes',
  },
  {
    name: 'data without any tensor',
    bytes: () => stBytes('{}', 3),
    message: '3 trailing bytes',
  },
  {
    // As the reference: the last entry of a repeated name is the tensor, here leaving bytes 0..4 uncovered.
    name: 'a tensor name given twice, the last entry leaving a hole',
    bytes: () => stBytes(obj(entry('a', 'U8', '[4]', '[0,4]'), entry('a', 'U8', '[4]', '[4,8]')), 8),
    message: 'hole in the data section: tensor "a" begins at byte 4',
  },
  {
    name: 'duplicate key inside an entry',
    bytes: () => stBytes('{"a":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}}', 4),
    message: 'tensor "a": duplicate "dtype" in the entry',
  },
  { name: 'negative dimension', bytes: () => stBytes(obj(entry('a', 'U8', '[-1]', '[0,0]'))), message: 'tensor "a": shape[0] = -1 is not a non-negative integer (negative)' },
  { name: 'negative zero dimension', bytes: () => stBytes(obj(entry('a', 'U8', '[-0]', '[0,0]'))), message: 'shape[0] = -0 is not a non-negative integer (negative)' },
  { name: 'fractional dimension', bytes: () => stBytes(obj(entry('a', 'U8', '[2.5]', '[0,0]'))), message: 'shape[0] = 2.5 is not a non-negative integer (not an integer' },
  { name: 'integral float dimension', bytes: () => stBytes(obj(entry('a', 'U8', '[2.0]', '[0,2]')), 2), message: 'shape[0] = 2.0 is not a non-negative integer' },
  { name: 'exponent-form dimension', bytes: () => stBytes(obj(entry('a', 'U8', '[1e2]', '[0,100]')), 100), message: 'shape[0] = 1e2 is not a non-negative integer (not an integer' },
  {
    name: 'dimension too large for u64',
    bytes: () => stBytes(obj(entry('a', 'U8', '[18446744073709551616]', '[0,0]'))),
    message: 'too large for a 64-bit unsigned integer',
  },
  {
    name: 'shape product overflows 64 bits',
    bytes: () => stBytes(obj(entry('a', 'U8', '[4294967296,4294967296,2]', '[0,0]'))),
    message: 'tensor "a": shape [4294967296, 4294967296, 2] of U8: the element count overflows 64 bits',
  },
  {
    name: 'size in bits overflows 64 bits',
    bytes: () => stBytes(obj(entry('a', 'F32', '[2305843009213693952]', '[0,0]'))),
    message: 'the size in bits (elements x 32) overflows 64 bits',
  },
  {
    name: 'sub-byte tensor not a whole number of bytes',
    bytes: () => stBytes(obj(entry('a', 'F4', '[3]', '[0,1]')), 1),
    message: '3 elements of F4 are not a whole number of bytes',
  },
  {
    name: 'non-string metadata value',
    bytes: () => stBytes('{"__metadata__":{"ok":"x","k":1}}'),
    message: '__metadata__ value for key "k" is 1, not a string',
  },
  { name: '__metadata__ not an object', bytes: () => stBytes('{"__metadata__":["a"]}'), message: '__metadata__ must be an object mapping strings to strings, found an array' },
  {
    name: 'entry missing data_offsets',
    bytes: () => stBytes('{"a":{"dtype":"U8","shape":[4]}}', 4),
    message: 'tensor "a": missing "data_offsets"',
  },
  { name: 'entry missing shape', bytes: () => stBytes('{"a":{"dtype":"U8","data_offsets":[0,4]}}', 4), message: 'tensor "a": missing "shape"' },
  {
    // Other keys are ignored (as the reference does), so a misspelt data_offsets is a missing one.
    name: 'entry with a misspelt key',
    bytes: () => stBytes('{"a":{"dtype":"U8","shape":[4],"data_offset":[0,4]}}', 4),
    message: 'tensor "a": missing "data_offsets"',
  },
  { name: 'entry as an array of two', bytes: () => stBytes('{"a":["U8",[4]]}', 4), message: 'tensor "a": an entry written as an array must hold [dtype, shape, data_offsets], found an array of 2' },
  { name: 'entry neither object nor array', bytes: () => stBytes('{"a":"U8"}', 4), message: 'tensor "a": entry must be an object with dtype, shape and data_offsets, found' },
  { name: 'shape not an array', bytes: () => stBytes('{"a":{"dtype":"U8","shape":4,"data_offsets":[0,4]}}', 4), message: 'tensor "a": shape must be an array' },
  { name: 'data_offsets with begin after end', bytes: () => stBytes(obj(entry('a', 'U8', '[0]', '[8,4]')), 8), message: 'data_offsets [8, 4] has begin after end' },
  { name: 'data_offsets with three numbers', bytes: () => stBytes(obj(entry('a', 'U8', '[4]', '[0,4,4]')), 4), message: 'data_offsets must be an array of two non-negative integers [begin, end], found an array of 3' },
  { name: 'negative data offset', bytes: () => stBytes(obj(entry('a', 'U8', '[0]', '[-4,0]'))), message: 'data_offsets[0] = -4 is not a non-negative integer (negative)' },
];

/** Writes a case's bytes to a fresh file in `dir`; returns the path. */
export function writeCase(dir: string, c: MalformedCase, index: number): string {
  const file = path.join(dir, `case-${String(index).padStart(2, '0')}.safetensors`);
  fs.writeFileSync(file, c.bytes());
  return file;
}

export function tmpDir(prefix = 'rlhf-st-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

if (require.main === module) {
  t.test('the malformed-file case list is well formed', async (t) => {
    t.ok(MALFORMED_CASES.length >= 17, `${MALFORMED_CASES.length} cases`);
    t.equal(new Set(MALFORMED_CASES.map((c) => c.name)).size, MALFORMED_CASES.length, 'case names are unique');
    for (const c of MALFORMED_CASES) t.ok(Buffer.isBuffer(c.bytes()) && c.message.length > 0, c.name);
  });
}

/** mulberry32: a tiny deterministic PRNG for the mutations. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Random mutations of a valid file (shared by safetensors-fuzz.test.ts and
 * safetensors-reference.test.ts): truncations, bit flips, JSON characters,
 * a wrong length field, deleted or inserted bytes, rewritten numbers, and
 * the format's edge cases (whitespace around the header, repeated members,
 * extra or misspelt keys in an entry, entries written as arrays), each new
 * header with its length field fixed.
 */
export function mutator(base: Buffer, rand: () => number): () => Buffer {
  const headerEnd = 8 + Number(base.readBigUInt64LE(0));
  const int = (n: number) => Math.floor(rand() * n);
  const JSONISH = Buffer.from('{}[]",:0123456789-+.eE \\u\t\nFIUBS_x\u00ff');
  const header = (b: Buffer) => b.subarray(8, headerEnd).toString('latin1');
  const withHeader = (text: string, b: Buffer) => {
    const hb = Buffer.from(text, 'latin1');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(hb.length));
    return Buffer.concat([len, hb, b.subarray(headerEnd)]);
  };

  return (): Buffer => {
    const b = Buffer.from(base);
    const inHeader = () => 8 + int(headerEnd - 8);
    switch (int(12)) {
      case 0: // truncate anywhere
        return b.subarray(0, int(b.length));
      case 1: // flip random bits, mostly in the header
        for (let k = 1 + int(4); k > 0; k--) b[rand() < 0.85 ? inHeader() : int(b.length)] ^= 1 << int(8);
        return b;
      case 2: // JSON-significant characters into the header
        for (let k = 1 + int(3); k > 0; k--) b[inHeader()] = JSONISH[int(JSONISH.length)];
        return b;
      case 3: { // change the header length field
        const n = rand() < 0.7 ? BigInt(Math.max(0, headerEnd - 8 + int(33) - 16)) : BigInt.asUintN(64, BigInt(int(2 ** 32)) * BigInt(int(2 ** 32)));
        b.writeBigUInt64LE(n);
        return b;
      }
      case 4: { // delete a run of bytes
        const at = int(b.length), len = 1 + int(16);
        return Buffer.concat([b.subarray(0, at), b.subarray(at + len)]);
      }
      case 5: { // insert random bytes
        const at = int(b.length);
        const ins = Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256)));
        return Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
      }
      case 6: { // rewrite a number in the header
        const text = header(b);
        const nums = [...text.matchAll(/\d+/g)];
        if (!nums.length) return b;
        const m = nums[int(nums.length)];
        const repl = ['0', '1', '-1', '2.5', '1e3', '18446744073709551615', '18446744073709551616', '4294967296', String(int(1000))][int(9)];
        return withHeader(text.slice(0, m.index) + repl + text.slice(m.index! + m[0].length), b);
      }
      case 8: { // JSON whitespace before, inside or after the header text
        const ws = [' ', '\n', '\t', '\r\n '][int(4)];
        const text = header(b), at = [0, text.length, int(text.length + 1)][int(3)];
        return withHeader(text.slice(0, at) + ws + text.slice(at), b);
      }
      case 9: { // repeat a member of the top object or of an entry (same or changed value)
        const text = header(b);
        const members = [...text.matchAll(/"([^"\\]+)":(\{[^{}]*\}|\[[^\]]*\]|"[^"]*")/g)];
        if (!members.length) return b;
        const m = members[int(members.length)];
        const copy = rand() < 0.5 ? m[0] : m[0].replace(/\d+/, String(int(64)));
        const at = m.index! + m[0].length;
        return withHeader(text.slice(0, at) + ',' + copy + text.slice(at), b);
      }
      case 10: { // an extra key in an entry, or a key misspelt
        const text = header(b);
        const keys = [...text.matchAll(/"(dtype|shape|data_offsets)":/g)];
        if (!keys.length) return b;
        const k = keys[int(keys.length)];
        const repl = rand() < 0.5 ? `"extra":${['1', 'null', '[1,{"a":2,"a":3}]', '"x"'][int(4)]},${k[0]}` : `"${k[1]}_"` + ':';
        return withHeader(text.slice(0, k.index) + repl + text.slice(k.index! + k[0].length), b);
      }
      case 11: { // an entry as an array [dtype, shape, data_offsets] (sometimes of the wrong length)
        const text = header(b);
        const entries = [...text.matchAll(/\{"dtype":("[^"]*"),"shape":(\[[^\]]*\]),"data_offsets":(\[[^\]]*\])\}/g)];
        if (!entries.length) return b;
        const e = entries[int(entries.length)];
        const parts = [e[1], e[2], e[3]].slice(0, rand() < 0.8 ? 3 : 1 + int(2));
        return withHeader(text.slice(0, e.index) + `[${parts.join(',')}]` + text.slice(e.index! + e[0].length), b);
      }
      default: { // append or drop data bytes
        return rand() < 0.5 ? Buffer.concat([b, Buffer.alloc(1 + int(9))]) : b.subarray(0, b.length - 1 - int(9));
      }
    }
  };

}

/** The valid file the mutations start from: one tensor of several dtypes, an empty one, a scalar, metadata. */
export function writeMutationBase(file: string): void {
  writeSafetensors(
    file,
    [
      { name: 'model.layers.0.w', dtype: 'F32', shape: [3, 4], fill: { kind: 'normal', std: 1, seed: 1 } },
      { name: 'b', dtype: 'BF16', shape: [5], fill: { kind: 'ones' } },
      { name: 'ids', dtype: 'I64', shape: [2], data: new BigInt64Array([1n, -2n]) },
      { name: 'mask', dtype: 'BOOL', shape: [3], data: Buffer.from([1, 0, 1]) },
      { name: 'empty', dtype: 'F16', shape: [0, 2], data: Buffer.alloc(0) },
      { name: 'scalar', dtype: 'F64', shape: [], data: new Float64Array([2.5]) },
    ],
    { format: 'pt', note: 'x' },
  );
}
