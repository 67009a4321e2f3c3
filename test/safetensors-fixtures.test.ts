// The native reader against files made by an independent implementation
// (test/fixtures/make_safetensors_fixtures.py, Python stdlib only) and the
// values Python decoded from them (expected.json).
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { decodeTensorBytes, dtypeBits, dtypeSize, isDtype, openSafetensors, readSafetensorsAsF64 } from '../lib/safetensors';
import { tmpDir } from './safetensors-cases';

const FIXTURES = path.join(__dirname, 'fixtures', 'safetensors');

interface ExpectedTensor {
  name: string;
  dtype: string;
  shape: number[];
  dataOffsets: [number, number];
  aligned: boolean;
  hex: string;
  values: Array<number | string>;
}
interface ExpectedFile {
  headerLength: number;
  dataStart: number;
  fileSize: number;
  metadata: Record<string, string> | null;
  tensors: ExpectedTensor[];
}
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8')) as {
  files: Record<string, ExpectedFile>;
};

const special: Record<string, number> = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

for (const [fileName, exp] of Object.entries(expected.files)) {
  t.test(`${fileName}: header, names, dtypes, shapes, bytes and values match Python`, async (t) => {
    const file = path.join(FIXTURES, fileName);
    const f = openSafetensors(file);
    t.teardown(() => f.close());
    t.equal(f.header.headerLength, exp.headerLength, 'header length');
    t.equal(f.header.dataStart, exp.dataStart, 'data start');
    t.equal(f.header.fileSize, exp.fileSize, 'file size');
    t.same(f.metadata, exp.metadata, 'metadata');
    t.same(f.tensorNames, exp.tensors.map((x) => x.name), 'tensors in data-offset order');
    for (const e of exp.tensors) {
      const info = f.tensor(e.name);
      t.same({ dtype: info.dtype, shape: info.shape, dataOffsets: info.dataOffsets }, { dtype: e.dtype, shape: e.shape, dataOffsets: e.dataOffsets }, `${e.name}: header entry`);
      const bytes = f.tensorBytes(e.name);
      t.equal(bytes.toString('hex'), e.hex, `${e.name}: raw bytes`);
      t.equal(f.isAligned(e.name), e.aligned, `${e.name}: ${e.aligned ? 'aligned (zero-copy)' : 'unaligned (copied)'}`);
      if (e.dtype === 'I64' || e.dtype === 'U64') {
        // Exact 64-bit values, compared as decimal strings.
        const got: string[] = [];
        for (let i = 0; i < bytes.length; i += 8) got.push(String(e.dtype === 'I64' ? bytes.readBigInt64LE(i) : bytes.readBigUInt64LE(i)));
        t.same(got, e.values, `${e.name}: values`);
        continue;
      }
      const got = decodeTensorBytes(info.dtype, bytes);
      const want = e.values.map((v) => (typeof v === 'string' ? special[v] : v));
      t.equal(got.length, want.length, `${e.name}: element count`);
      t.ok(
        got.every((v, i) => Object.is(v, want[i])),
        `${e.name}: values (bit-exact, -0 and NaN included)\n  got ${JSON.stringify(got.map(String))}\n  want ${JSON.stringify(want.map(String))}`,
      );
    }
  });
}

t.test('unaligned.safetensors: misaligned tensors are reported as such, aligned ones as zero-copy', async (t) => {
  const f = openSafetensors(path.join(FIXTURES, 'unaligned.safetensors'));
  t.teardown(() => f.close());
  t.not(f.header.headerLength % 8, 0, 'header length is not a multiple of 8');
  t.equal(f.header.dataStart % 8, 2);
  t.same(
    f.tensorNames.filter((n) => !f.isAligned(n)),
    ['b_f32', 'c_f16', 'h_i64', 'i_i32'],
  );
  t.same(readSafetensorsAsF64(path.join(FIXTURES, 'unaligned.safetensors'), 'b_f32').values, [1.5, -2.25]);
  t.same(readSafetensorsAsF64(path.join(FIXTURES, 'unaligned.safetensors'), 'h_i64').values, [-5, 2 ** 40]);
});

t.test('reference.safetensors: scalars, empty tensors and escaped names', async (t) => {
  const file = path.join(FIXTURES, 'reference.safetensors');
  t.same(readSafetensorsAsF64(file, 'scalar'), { name: 'scalar', dtype: 'F32', shape: [], values: [42.5] });
  t.same(readSafetensorsAsF64(file, 'empty'), { name: 'empty', dtype: 'F32', shape: [0, 3], values: [] });
  t.same(readSafetensorsAsF64(file, 'q"uote\\back\nline\u0001').values, [-3]);
  t.same(readSafetensorsAsF64(file, 'bool').values, [1, 0, 0, 1, 1]);
  const f = openSafetensors(file);
  t.equal(f.tensorBytes('empty').length, 0);
  t.ok(f.isAligned('empty'));
  f.close();
});

t.test('unknown tensor names and closed files are E_ARGUMENT naming the tensor and the file', async (t) => {
  const file = path.join(FIXTURES, 'reference.safetensors');
  const f = openSafetensors(file);
  let err = t.throws(() => f.tensorBytes('nope')) as RlhfError;
  t.equal(err.code, 'E_ARGUMENT');
  t.match(err.message, `${file}: no tensor named "nope"`);
  err = t.throws(() => f.isAligned('nope')) as RlhfError;
  t.equal(err.code, 'E_ARGUMENT');
  err = t.throws(() => f.tensor('nope')) as RlhfError;
  t.equal(err.code, 'E_ARGUMENT');
  t.match(err.message, file);
  t.equal(f.has('i32'), true);
  t.equal(f.has('nope'), false);
  f.close();
  f.close(); // idempotent
  err = t.throws(() => f.tensorBytes('i32')) as RlhfError;
  t.equal(err.code, 'E_ARGUMENT');
  t.match(err.message, 'closed');
  t.equal(f.header.tensors.length, expected.files['reference.safetensors'].tensors.length, 'header still readable');
});

t.test('opening what is not a readable file is E_IO naming the path', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let err = t.throws(() => openSafetensors(path.join(dir, 'missing.safetensors'))) as RlhfError;
  t.equal(err.code, 'E_IO');
  t.match(err.message, `${dir}/missing.safetensors: cannot open: No such file or directory`);
  err = t.throws(() => openSafetensors(dir)) as RlhfError;
  t.equal(err.code, 'E_IO');
  t.match(err.message, 'not a regular file');
});

t.test('dtype sizes', async (t) => {
  t.same(
    ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'].map(dtypeSize),
    [1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8],
  );
  t.equal(dtypeBits('F4'), 4);
  t.equal(dtypeSize('C64'), 8);
  t.equal(isDtype('F32'), true);
  t.equal(isDtype('f32'), false);
  t.throws(() => dtypeSize('F128'), { code: 'E_ARGUMENT' });
  t.throws(() => decodeTensorBytes('F8_E4M3', Buffer.alloc(1)), { code: 'E_UNSUPPORTED' });
});
