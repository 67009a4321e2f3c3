// The writer: byte layout identical to the reference writer, round trips,
// native fills, argument errors and the atomic temp-file + rename.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { decodeTensorBytes, dtypeBits, openSafetensors, writeSafetensors, type SafetensorsDtype, type TensorToWrite } from '../lib/safetensors';
import { tmpDir } from './safetensors-cases';

const FIXTURES = path.join(__dirname, 'fixtures', 'safetensors');
const dir = tmpDir();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const tmp = (name = 'f') => path.join(dir, `${name}-${counter++}.safetensors`);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}
const f32s = (...v: number[]) => Buffer.from(new Float32Array(v).buffer);

/** Reads every tensor of a file back as TensorToWrite (raw bytes) plus its metadata. */
function readAll(file: string): { tensors: TensorToWrite[]; metadata: Record<string, string> | null } {
  const f = openSafetensors(file);
  try {
    const tensors = f.header.tensors.map((x) => ({ name: x.name, dtype: x.dtype as SafetensorsDtype, shape: x.shape, data: f.tensorBytes(x.name) }));
    return { tensors, metadata: f.metadata };
  } finally {
    f.close();
  }
}

function headerText(file: string): string {
  const b = fs.readFileSync(file);
  return b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString('utf8');
}

t.test('the reference crate unit-test vectors are reproduced exactly', async (t) => {
  // From safetensors/src/tensor.rs tests: test_serialization, test_empty,
  // test_serialization_forced_alignement.
  let p = tmp();
  writeSafetensors(p, [{ name: 'attn.0', dtype: 'F32', shape: [1, 2, 3], data: f32s(0, 1, 2, 3, 4, 5) }]);
  t.same(fs.readFileSync(p), Buffer.concat([u64(64), Buffer.from('{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}'), f32s(0, 1, 2, 3, 4, 5)]));
  p = tmp();
  writeSafetensors(p, []);
  t.same([...fs.readFileSync(p)], [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
  p = tmp();
  writeSafetensors(p, [], { framework: 'pt' });
  t.same(fs.readFileSync(p), Buffer.concat([u64(40), Buffer.from('{"__metadata__":{"framework":"pt"}}     ')]));
  p = tmp();
  writeSafetensors(p, [{ name: 'attn0', dtype: 'F32', shape: [1, 1, 2, 3], data: f32s(0, 1, 2, 3, 4, 5) }]);
  t.same(fs.readFileSync(p), Buffer.concat([u64(72), Buffer.from('{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       '), f32s(0, 1, 2, 3, 4, 5)]));
});

const ALL_DTYPES: SafetensorsDtype[] = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64', 'F4', 'F8_E8M0', 'C64'];

t.test('a written file reads back exactly and re-writes byte-identically', async (t) => {
  const rnd = (n: number) => crypto.randomBytes(n);
  const tensors: TensorToWrite[] = ALL_DTYPES.map((dtype, i) => {
    const shape = [i % 3 + 1, 4];
    return { name: `t.${dtype}.${i}`, dtype, shape, data: rnd((shape[0] * shape[1] * dtypeBits(dtype)) / 8) };
  });
  tensors.push({ name: 'empty', dtype: 'F32', shape: [3, 0], data: Buffer.alloc(0) });
  tensors.push({ name: 'scalar', dtype: 'F64', shape: [], data: Buffer.from(new Float64Array([Math.PI]).buffer) });
  tensors.push({ name: 'typed', dtype: 'I32', shape: [3], data: new Int32Array([-1, 0, 7]) });
  tensors.push({ name: 'filled', dtype: 'BF16', shape: [5, 7], fill: { kind: 'normal', std: 0.02, seed: 3 } });
  const metadata = { format: 'pt', 'z-last': 'é ✓ "q" \\', a: '' };
  const p1 = tmp('rt');
  const size = writeSafetensors(p1, tensors, metadata);
  t.equal(size, fs.statSync(p1).size, 'returns the file size');

  const back = readAll(p1);
  t.same(back.metadata, metadata);
  t.equal(back.tensors.length, tensors.length);
  for (const w of tensors) {
    const r = back.tensors.find((x) => x.name === w.name)!;
    t.same({ dtype: r.dtype, shape: r.shape }, { dtype: w.dtype, shape: w.shape }, w.name);
    if (w.data) {
      const want = Buffer.from(ArrayBuffer.isView(w.data) ? new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength) : new Uint8Array(w.data));
      t.ok((r.data as Buffer).equals(want), `${w.name}: bytes`);
    }
  }
  const f = openSafetensors(p1);
  t.ok(f.tensorNames.every((n) => f.isAligned(n)), 'the writer aligns every tensor');
  f.close();

  const p2 = tmp('rt');
  writeSafetensors(p2, back.tensors.reverse(), back.metadata);
  t.ok(fs.readFileSync(p2).equals(fs.readFileSync(p1)), 're-written file is byte-identical');
});

t.test('a Python file that follows the reference writer rules is reproduced byte for byte', async (t) => {
  const src = path.join(FIXTURES, 'reference.safetensors');
  const { tensors, metadata } = readAll(src);
  const p = tmp('ref');
  writeSafetensors(p, tensors, metadata);
  const a = fs.readFileSync(p);
  const b = fs.readFileSync(src);
  t.equal(a.length, b.length, 'same size');
  t.ok(a.equals(b), 'same bytes');
});

t.test('a file breaking the writer-only rules is normalised: same tensors, aligned, padded', async (t) => {
  const src = path.join(FIXTURES, 'unaligned.safetensors');
  const orig = readAll(src);
  const p = tmp('norm');
  writeSafetensors(p, orig.tensors, orig.metadata);
  const again = readAll(p);
  t.equal(again.metadata, null);
  for (const x of orig.tensors) {
    const y = again.tensors.find((z) => z.name === x.name)!;
    t.ok((y.data as Buffer).equals(x.data as Buffer), `${x.name}: bytes kept`);
  }
  const f = openSafetensors(p);
  t.equal(f.header.headerLength % 8, 0);
  t.ok(f.tensorNames.every((n) => f.isAligned(n)));
  t.same(f.tensorNames, ['h_i64', 'f_f64', 'b_f32', 'e_f32', 'i_i32', 'g_bf16', 'c_f16', 'a_u8', 'd_u8']);
  f.close();
});

t.test('data order: dtype descending in the reference enum order, then name byte-wise', async (t) => {
  const names = ['b', 'a', 'B', 'é', 'z', 'a.b', 'a_b'];
  const dtypes: SafetensorsDtype[] = ['U8', 'F16', 'BF16', 'I64', 'F64', 'U64', 'BOOL', 'I8', 'F32', 'I32', 'U32', 'U16', 'I16'];
  const tensors: TensorToWrite[] = [];
  for (const dt of dtypes) for (const n of names) tensors.push({ name: `${n}`.concat(':', dt), dtype: dt, shape: [1], fill: undefined, data: Buffer.alloc(dtypeBits(dt) / 8) });
  tensors.sort(() => Math.random() - 0.5);
  const p = tmp('order');
  writeSafetensors(p, tensors);
  const f = openSafetensors(p);
  const order = ['U64', 'I64', 'F64', 'F32', 'U32', 'I32', 'BF16', 'F16', 'U16', 'I16', 'I8', 'U8', 'BOOL'];
  const byteSort = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  const want = order.flatMap((dt) => names.map((n) => `${n}:${dt}`).sort(byteSort));
  t.same(f.tensorNames, want);
  // Header keys are in data order too.
  const keys = Object.keys(JSON.parse(headerText(p)));
  t.same(keys, want);
  f.close();
});

t.test('header JSON: __metadata__ first with sorted keys, serde escaping, space padding', async (t) => {
  const p = tmp('json');
  writeSafetensors(
    p,
    [{ name: 'n"\\\n\t\r\b\f\u0001\u001f\u007f/é😀', dtype: 'U8', shape: [2], data: Buffer.from([1, 2]) }],
    { zeta: '2', alpha: '1\u0000', '10': 'ten', '9': 'nine' },
  );
  const h = headerText(p);
  t.equal(
    h.trimEnd(),
    '{"__metadata__":{"10":"ten","9":"nine","alpha":"1\\u0000","zeta":"2"},' +
      '"n\\"\\\\\\n\\t\\r\\b\\f\\u0001\\u001f\u007f/é😀":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}',
  );
  t.equal(Buffer.byteLength(h) % 8, 0);
  t.match(h, /} *$/);
  const r = openSafetensors(p);
  t.same(r.tensorNames, ['n"\\\n\t\r\b\f\u0001\u001f\u007f/é😀']);
  t.same(r.metadata, { zeta: '2', alpha: '1\u0000', '10': 'ten', '9': 'nine' });
  r.close();
  // An empty metadata object is written (as the reference does for Some({})); null/undefined omits it.
  const q = tmp('json');
  writeSafetensors(q, [], {});
  t.equal(headerText(q).trimEnd(), '{"__metadata__":{}}');
  writeSafetensors(q, [], null);
  t.equal(headerText(q).trimEnd(), '{}');
});

t.test('metadata: own enumerable keys only, and "__proto__" survives as a plain key', async (t) => {
  const m = Object.create({ inherited: 'no' }) as Record<string, string>;
  Object.defineProperty(m, '__proto__', { value: 'p', enumerable: true, writable: true, configurable: true });
  m.k = 'v';
  Object.defineProperty(m, 'hidden', { value: 'h', enumerable: false });
  const p = tmp('meta');
  writeSafetensors(p, [], m);
  t.equal(headerText(p).trimEnd(), '{"__metadata__":{"__proto__":"p","k":"v"}}');
  const f = openSafetensors(p);
  t.same(Object.keys(f.metadata!), ['__proto__', 'k']);
  t.equal(Object.getPrototypeOf(f.metadata), Object.prototype);
  f.close();
});

t.test('fills: zeros, ones and const are exact; F16/BF16 round to nearest even like Python', async (t) => {
  const p = tmp('fill');
  writeSafetensors(p, [
    { name: 'z', dtype: 'F32', shape: [70000], fill: { kind: 'zeros' } },
    { name: 'o', dtype: 'BF16', shape: [3, 3], fill: { kind: 'ones' } },
    { name: 'h', dtype: 'F16', shape: [2], fill: { kind: 'ones' } },
    { name: 'c', dtype: 'F32', shape: [4], fill: { kind: 'const', value: 0.1 } },
  ]);
  const f = openSafetensors(p);
  t.ok(f.tensorBytes('z').equals(Buffer.alloc(280000)), 'zeros across chunk boundaries');
  t.same([...new Uint16Array(new Uint8Array(f.tensorBytes('o')).buffer)], Array(9).fill(0x3f80));
  t.same([...new Uint16Array(new Uint8Array(f.tensorBytes('h')).buffer)], [0x3c00, 0x3c00]);
  t.same(decodeTensorBytes('F32', f.tensorBytes('c')), Array(4).fill(Math.fround(0.1)));
  f.close();

  const conv = (JSON.parse(fs.readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8')) as {
    conversions: Array<{ f32hex: string; f16: number; bf16: number }>;
  }).conversions;
  const tensors: TensorToWrite[] = [];
  conv.forEach((c, i) => {
    const value = Buffer.from(c.f32hex, 'hex').readFloatLE(0);
    tensors.push({ name: `h${i}`, dtype: 'F16', shape: [1], fill: { kind: 'const', value } });
    tensors.push({ name: `b${i}`, dtype: 'BF16', shape: [1], fill: { kind: 'const', value } });
  });
  const q = tmp('conv');
  writeSafetensors(q, tensors);
  const g = openSafetensors(q);
  const bad: string[] = [];
  conv.forEach((c, i) => {
    const h = g.tensorBytes(`h${i}`).readUInt16LE(0);
    const b = g.tensorBytes(`b${i}`).readUInt16LE(0);
    if (h !== c.f16) bad.push(`f16(${c.f32hex}) = ${h.toString(16)}, want ${c.f16.toString(16)}`);
    if (b !== c.bf16) bad.push(`bf16(${c.f32hex}) = ${b.toString(16)}, want ${c.bf16.toString(16)}`);
  });
  g.close();
  t.same(bad, [], `${conv.length} values converted as Python does`);
});

function stats(v: number[]): { mean: number; std: number; min: number; max: number } {
  let s = 0, s2 = 0, min = Infinity, max = -Infinity;
  for (const x of v) {
    s += x;
    s2 += x * x;
    min = Math.min(min, x);
    max = Math.max(max, x);
  }
  const mean = s / v.length;
  return { mean, std: Math.sqrt(s2 / v.length - mean * mean), min, max };
}

t.test('fills: normal and uniform are deterministic per seed, with the asked-for distribution', async (t) => {
  const n = 200_001; // odd, and spans several generation chunks
  const mk = (seed: number): TensorToWrite[] => [
    { name: 'n', dtype: 'F32', shape: [n], fill: { kind: 'normal', mean: 0.5, std: 2, seed } },
    { name: 'u', dtype: 'F32', shape: [n], fill: { kind: 'uniform', low: -1, high: 3, seed } },
    { name: 'bn', dtype: 'BF16', shape: [n], fill: { kind: 'normal', mean: 0.5, std: 2, seed } },
    { name: 'hn', dtype: 'F16', shape: [n], fill: { kind: 'normal', mean: 0.5, std: 2, seed } },
    { name: 's', dtype: 'F32', shape: [1000], fill: { kind: 'normal', std: 1, seed } },
  ];
  const a = tmp('rng'), b = tmp('rng'), c = tmp('rng');
  writeSafetensors(a, mk(42));
  writeSafetensors(b, mk(42));
  writeSafetensors(c, mk(43));
  t.ok(fs.readFileSync(a).equals(fs.readFileSync(b)), 'same seed, same file');
  const fa = openSafetensors(a), fc = openSafetensors(c);
  t.notOk(fa.tensorBytes('n').equals(fc.tensorBytes('n')), 'another seed, other values');
  const normal = decodeTensorBytes('F32', fa.tensorBytes('n'));
  const ns = stats(normal);
  t.ok(Math.abs(ns.mean - 0.5) < 0.03, `normal mean ${ns.mean}`);
  t.ok(Math.abs(ns.std - 2) < 0.03, `normal std ${ns.std}`);
  const us = stats(decodeTensorBytes('F32', fa.tensorBytes('u')));
  t.ok(us.min >= -1 && us.max <= 3, `uniform within [-1, 3]: ${us.min}..${us.max}`);
  t.ok(Math.abs(us.mean - 1) < 0.02, `uniform mean ${us.mean}`);
  t.ok(Math.abs(us.std - 4 / Math.sqrt(12)) < 0.02, `uniform std ${us.std}`);
  // One stream per seed, whatever the size and parameters: the 1000-element
  // N(0, 1) fill is the prefix of the N(0.5, 2) one, up to float rounding.
  const std1 = decodeTensorBytes('F32', fa.tensorBytes('s'));
  t.ok(std1.every((x, i) => Math.abs(0.5 + 2 * x - normal[i]) <= 1e-6 * (1 + Math.abs(normal[i]))), 'same stream for the same seed');
  // BF16 / F16 fills are the F32 values rounded to nearest even.
  const bf = new Uint16Array(new Uint8Array(fa.tensorBytes('bn')).buffer);
  const f32bits = new Uint32Array(new Float32Array(normal).buffer);
  let mismatches = 0;
  for (let i = 0; i < n; i++) {
    const u = f32bits[i];
    const want = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
    if (bf[i] !== want) mismatches++;
  }
  t.equal(mismatches, 0, 'BF16 normal = RNE(F32 normal) element for element');
  const hv = decodeTensorBytes('F16', fa.tensorBytes('hn'));
  let worst = 0;
  for (let i = 0; i < n; i++) if (Math.abs(normal[i]) > 1e-3) worst = Math.max(worst, Math.abs(hv[i] - normal[i]) / Math.abs(normal[i]));
  t.ok(worst <= 2 ** -11, `F16 normal within half an ulp of F32 (worst relative error ${worst})`);
  fa.close();
  fc.close();
});

t.test('bad arguments are E_ARGUMENT with a specific message, and write nothing', async (t) => {
  const cases: Array<[string, TensorToWrite[], Record<string, string> | null, string]> = [
    ['data size mismatch', [{ name: 'a', dtype: 'F32', shape: [2], data: Buffer.alloc(3) }], null, 'tensor "a": data has 3 bytes but shape [2] of F32 needs 8'],
    ['data and fill', [{ name: 'a', dtype: 'F32', shape: [2], data: Buffer.alloc(8), fill: { kind: 'zeros' } }], null, 'needs exactly one of data or fill'],
    ['neither data nor fill', [{ name: 'a', dtype: 'F32', shape: [2] }], null, 'needs exactly one of data or fill'],
    ['fill of an integer dtype', [{ name: 'a', dtype: 'I32', shape: [2], fill: { kind: 'zeros' } }], null, 'fill supports F32, F16 and BF16, not I32'],
    ['duplicate names', [{ name: 'a', dtype: 'U8', shape: [1], data: Buffer.alloc(1) }, { name: 'a', dtype: 'U8', shape: [1], data: Buffer.alloc(1) }], null, 'duplicate tensor name "a"'],
    ['reserved name', [{ name: '__metadata__', dtype: 'U8', shape: [1], data: Buffer.alloc(1) }], null, 'reserved for metadata'],
    ['negative dim', [{ name: 'a', dtype: 'U8', shape: [-1], data: Buffer.alloc(0) }], null, 'tensors[0].shape[0] must be a non-negative safe integer'],
    ['fractional dim', [{ name: 'a', dtype: 'U8', shape: [1.5], data: Buffer.alloc(0) }], null, 'tensors[0].shape[0] must be a non-negative safe integer'],
    ['unknown dtype', [{ name: 'a', dtype: 'F128' as SafetensorsDtype, shape: [1], data: Buffer.alloc(16) }], null, 'tensors[0].dtype must be a safetensors dtype name'],
    ['shape overflow', [{ name: 'a', dtype: 'U8', shape: [2 ** 40, 2 ** 40], fill: { kind: 'zeros' } }], null, 'the element count overflows 64 bits'],
    ['sub-byte odd count', [{ name: 'a', dtype: 'F4', shape: [3], data: Buffer.alloc(1) }], null, '3 elements of F4 are not a whole number of bytes'],
    ['normal without seed', [{ name: 'a', dtype: 'F32', shape: [1], fill: { kind: 'normal', std: 1 } as never }], null, 'fill.seed must be a non-negative integer'],
    ['negative std', [{ name: 'a', dtype: 'F32', shape: [1], fill: { kind: 'normal', std: -1, seed: 1 } }], null, 'finite std >= 0'],
    ['low above high', [{ name: 'a', dtype: 'F32', shape: [1], fill: { kind: 'uniform', low: 2, high: 1, seed: 1 } }], null, 'finite low <= high'],
    ['unknown fill kind', [{ name: 'a', dtype: 'F32', shape: [1], fill: { kind: 'gaussian' } as never }], null, "fill.kind must be one of zeros, ones, const, normal, uniform; got 'gaussian'"],
    ['non-string metadata', [], { k: 1 as unknown as string }, "metadata['k'] must be a string"],
    ['tensors not an array', {} as TensorToWrite[], null, 'tensors must be an array'],
  ];
  for (const [name, tensors, metadata, message] of cases) {
    const p = tmp('arg');
    const err = t.throws(() => writeSafetensors(p, tensors, metadata), name) as RlhfError;
    t.equal(err?.code, 'E_ARGUMENT', `${name}: code`);
    t.ok(err?.message.includes(message), `${name}: "${message}"\n  got: ${err?.message}`);
    t.ok(err?.message.includes(p), `${name}: names the path`);
    t.notOk(fs.existsSync(p), `${name}: no file written`);
  }
  t.same(fs.readdirSync(dir).filter((f) => f.includes('.tmp-')), [], 'no temporary files left');
});

t.test('an unwritable destination is E_IO naming the path', async (t) => {
  const missing = path.join(dir, 'no-such-dir', 'x.safetensors');
  let err = t.throws(() => writeSafetensors(missing, [])) as RlhfError;
  t.equal(err.code, 'E_IO');
  t.match(err.message, `${missing}: cannot write`);
  const notDir = tmp('plain');
  fs.writeFileSync(notDir, 'x');
  err = t.throws(() => writeSafetensors(path.join(notDir, 'x.safetensors'), [])) as RlhfError;
  t.equal(err.code, 'E_IO');
  t.match(err.message, 'Not a directory');
});

t.test('atomic replace: overwrites, keeps the old file when the rename fails, leaves no temp file', async (t) => {
  const p = tmp('atomic');
  writeSafetensors(p, [{ name: 'a', dtype: 'U8', shape: [1], data: Buffer.from([1]) }]);
  writeSafetensors(p, [{ name: 'b', dtype: 'U8', shape: [2], data: Buffer.from([2, 3]) }]);
  t.same(readAll(p).tensors.map((x) => x.name), ['b'], 'overwritten');
  // A failed argument check keeps the existing file untouched.
  const before = fs.readFileSync(p);
  t.throws(() => writeSafetensors(p, [{ name: 'c', dtype: 'U8', shape: [2], data: Buffer.alloc(1) }]));
  t.ok(fs.readFileSync(p).equals(before), 'unchanged after a failed write');
  // The target is a non-empty directory: the rename fails, nothing is destroyed.
  const d = path.join(dir, 'is-a-dir');
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'keep'), 'k');
  const err = t.throws(() => writeSafetensors(d, [])) as RlhfError;
  t.equal(err.code, 'E_IO');
  t.match(err.message, `${d}: cannot rename`);
  t.equal(fs.readFileSync(path.join(d, 'keep'), 'utf8'), 'k');
  t.same(fs.readdirSync(dir).filter((f) => f.includes('.tmp-')), [], 'no temporary files left');
});

t.test('a write killed midway leaves the previous file intact', async (t) => {
  const p = tmp('killed');
  writeSafetensors(p, [{ name: 'old', dtype: 'U8', shape: [3], data: Buffer.from([7, 8, 9]) }]);
  const before = fs.readFileSync(p);
  // The addon directly (no TypeScript loader needed in the child): 256 MB of
  // normal fill takes long enough to be killed in the middle.
  // RLHF_NATIVE_PATH: the addon under test when it is not the package's own build (the sanitizer run).
  const script = `
    const addon = process.env.RLHF_NATIVE_PATH ? require(process.env.RLHF_NATIVE_PATH) : require('node-gyp-build')(${JSON.stringify(path.join(__dirname, '..'))});
    addon.writeSafetensors(${JSON.stringify(p)}, [{ name: 'big', dtype: 'F32', shape: [64, 1024, 1024], fill: { kind: 'normal', std: 1, seed: 1 } }], null);
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: 'ignore', cwd: path.join(__dirname, '..') });
  const tmpName = `${p}.tmp-${child.pid}`;
  const started = Date.now();
  while (!(fs.existsSync(tmpName) && fs.statSync(tmpName).size > 0) && Date.now() - started < 20_000 && child.exitCode === null) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const wasWriting = fs.existsSync(tmpName);
  const exited = child.exitCode !== null || child.signalCode !== null;
  child.kill('SIGKILL');
  if (!exited) await new Promise((r) => child.once('exit', r));
  t.ok(wasWriting, 'the child was killed while writing its temporary file');
  t.ok(fs.readFileSync(p).equals(before), 'the target still holds the previous file');
  fs.rmSync(tmpName, { force: true });
});
