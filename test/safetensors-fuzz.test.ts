// Robustness: ~2000 random mutations and truncations of a valid file. Each
// must either open (and then be self-consistent and fully readable) or throw
// RlhfError E_SAFETENSORS; the process must never crash. Seeded, so a
// failure is reproducible; bounded in time.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { openSafetensors, writeSafetensors } from '../lib/safetensors';
import { tmpDir } from './safetensors-cases';

const SEED = Number(process.env.RLHF_FUZZ_SEED ?? 20240601);
const ITERATIONS = 2000;
const TIME_BUDGET_MS = 8000;

// mulberry32: tiny deterministic PRNG for the mutations.
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

t.test(`random mutations never crash the reader (seed ${SEED})`, async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const basePath = path.join(dir, 'base.safetensors');
  writeSafetensors(
    basePath,
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
  const base = fs.readFileSync(basePath);
  const headerEnd = 8 + Number(base.readBigUInt64LE(0));
  const rand = prng(SEED);
  const int = (n: number) => Math.floor(rand() * n);
  const JSONISH = Buffer.from('{}[]",:0123456789-+.eE \\u\t\nFIUBS_x\u00ff');

  const mutate = (): Buffer => {
    const b = Buffer.from(base);
    const inHeader = () => 8 + int(headerEnd - 8);
    switch (int(8)) {
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
        const text = b.subarray(8, headerEnd).toString('latin1');
        const nums = [...text.matchAll(/\d+/g)];
        if (!nums.length) return b;
        const m = nums[int(nums.length)];
        const repl = ['0', '1', '-1', '2.5', '1e3', '18446744073709551615', '18446744073709551616', '4294967296', String(int(1000))][int(9)];
        const out = text.slice(0, m.index) + repl + text.slice(m.index! + m[0].length);
        const hb = Buffer.from(out, 'latin1');
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(hb.length));
        return Buffer.concat([len, hb, b.subarray(headerEnd)]);
      }
      default: { // append or drop data bytes
        return rand() < 0.5 ? Buffer.concat([b, Buffer.alloc(1 + int(9))]) : b.subarray(0, b.length - 1 - int(9));
      }
    }
  };

  const file = path.join(dir, 'mutant.safetensors');
  let opened = 0, rejected = 0, iterations = 0;
  const unexpected: string[] = [];
  const started = Date.now();
  for (; iterations < ITERATIONS && Date.now() - started < TIME_BUDGET_MS; iterations++) {
    const bytes = mutate();
    fs.writeFileSync(file, bytes);
    try {
      const f = openSafetensors(file);
      opened++;
      // Accepted: the tensors must tile the data section exactly and be readable.
      let covered = 0;
      for (const x of f.header.tensors) {
        covered += f.tensorBytes(x.name).length;
        f.isAligned(x.name);
      }
      if (covered !== f.header.fileSize - f.header.dataStart || f.header.fileSize !== bytes.length)
        unexpected.push(`iteration ${iterations}: accepted an inconsistent file`);
      f.close();
    } catch (e) {
      rejected++;
      if (!(e instanceof RlhfError) || e.code !== 'E_SAFETENSORS' || e.message.includes('\n'))
        unexpected.push(`iteration ${iterations}: ${e instanceof RlhfError ? e.code : typeof e}: ${(e as Error).message}`);
    }
  }
  t.same(unexpected.slice(0, 10), [], 'every outcome is a clean open or an E_SAFETENSORS error');
  t.ok(iterations >= 500, `${iterations} mutations in ${Date.now() - started} ms (${opened} opened, ${rejected} rejected)`);
  t.ok(opened > 0 && rejected > 0, 'both outcomes occur');
});
