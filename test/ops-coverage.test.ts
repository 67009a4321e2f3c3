// Every op of the op table has a float64-reference test, on every kernel this
// CPU has: an op added to native/ops/op_list.h without a test fails here. The
// ops listed in OP_TEST_FILES (test/helpers/ref.ts) must be run by their
// file; any other op must be run by some test file (op('<name>', ...) or
// runOp('<name>', ...)), so ops whose tests live elsewhere count too.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../lib/native';
import { KERNELS, OP_TEST_FILES, op, opKernels, Rng } from './helpers/ref';

const { ops, kernels } = opKernels();

t.test('opKernels() lists the op table and the kernels this CPU can run', async (t) => {
  t.ok(ops.length >= 13, `${ops.length} ops: ${ops.join(', ')}`);
  t.equal(new Set(ops).size, ops.length, 'op names are unique');
  t.equal(kernels[0], 'scalar', 'the scalar kernel is always there, first');
  t.ok(kernels.every((k) => ['scalar', 'avx2', 'avx512'].includes(k)), `kernels: ${kernels.join(', ')}`);
  t.same(KERNELS, kernels);
});

t.test('every op has a test that runs it, and the list of covered ops is up to date', async (t) => {
  // Test files that run an op: through the helper, op('<name>', args, isa), or runOp('<name>', ...) directly.
  const files = fs.readdirSync(__dirname).filter((f) => f.endsWith('.test.ts') && f !== path.basename(__filename));
  const sources = new Map(files.map((f) => [f, fs.readFileSync(path.join(__dirname, f), 'utf8')]));
  const runs = (src: string, name: string) => new RegExp(`\\b(op|runOp)\\(\\s*'${name}'`).test(src);
  for (const name of ops) {
    const listed = OP_TEST_FILES[name];
    const found = files.filter((f) => runs(sources.get(f)!, name));
    if (listed) {
      // The ops of the list (test/helpers/ref.ts): their file must exist and run them.
      t.ok(sources.has(listed) && runs(sources.get(listed)!, name), `'${name}' is run by ${listed}`);
    } else {
      // An op outside the list must at least be run by some test file.
      t.ok(found.length > 0, `'${name}' has a test: ${found.length ? found.join(', ') : 'NONE: write one (test/ops-<family>.test.ts)'}`);
    }
    // ... on every kernel (through acrossKernels or a loop over KERNELS) in at
    // least one file: model-level tests may call an op once, on the default kernel.
    const loops = (f: string) => sources.has(f) && /acrossKernels\(|of KERNELS\)/.test(sources.get(f)!);
    const candidates = listed ? [listed] : found;
    if (candidates.length) t.ok(candidates.some(loops), `'${name}' is tested on every kernel by ${candidates.filter(loops).join(', ') || 'NO FILE'}`);
  }
  for (const name of Object.keys(OP_TEST_FILES)) t.ok(ops.includes(name), `'${name}' in OP_TEST_FILES is an op of the table`);
});

t.test('runOp refuses a kernel this CPU cannot run, and unknown ops', async (t) => {
  for (const isa of ['avx2', 'avx512'].filter((k) => !kernels.includes(k)))
    t.throws(() => native().runOp('add', { n: 1, dim: 1, x: new Float32Array(1), y: new Float32Array(1), isa }), /cannot run/, `${isa} refused`);
  t.throws(() => native().runOp('no_such_op', {}), /unknown op/);
  t.throws(() => native().runOp('add', { n: 1, dim: 1, x: new Float64Array(1), y: new Float32Array(1) }), /wrong typed-array type/);
  // A refused call leaves the kernel choice on auto: the next call still works.
  const y = new Float32Array([1]);
  native().runOp('add', { n: 1, dim: 1, x: new Float32Array([2]), y });
  t.equal(y[0], 3);
});

t.test('forcing a kernel takes effect: SIMD results differ from scalar in the last bits (different summation order)', { skip: KERNELS.length < 2 && 'only the scalar kernel on this CPU' }, async (t) => {
  const rng = new Rng(7);
  const m = 20, n = 40, k = 300;
  const a = rng.normals(m * k), b = rng.normals(n * k);
  const run = (isa: string) => {
    const c = new Float32Array(m * n), value = new Float32Array(m);
    op('gemm', { transB: true, m, n, k, a, lda: k, b, ldb: k, c, ldc: n }, isa);
    op('value_head', { n: m, dim: k, hidden: a, weight: b.subarray(0, k), value }, isa);
    return { c, value };
  };
  const s = run('scalar');
  for (const isa of KERNELS.slice(1)) {
    const r = run(isa);
    t.ok(r.c.some((v, i) => v !== s.c[i]), `${isa}: gemm differs from scalar somewhere (the GEMM kernel was switched)`);
    t.ok(r.value.some((v, i) => v !== s.value[i]), `${isa}: value_head differs from scalar somewhere (the row kernels were switched)`);
  }
});
