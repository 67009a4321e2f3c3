// The CUDA backend at the op level.
//
// Everywhere: the CUDA op listing is complete (every op of the op table has a
// kernel in kernels/<family>.cu, twin of native/cpu/<family>.cc, and
// supports() says so), and runOp's device path (copy in, run, copy back) gives
// exactly the CPU's results when it runs the CPU backend ('cpu-copy'), views
// of one buffer included.
// Without a GPU: device 'cuda' and cudaBench fail cleanly with E_CUDA, and
// the addon keeps working. With a GPU: every op on the CUDA backend matches
// its CPU twin within the bf16/fp32 tolerances of scripts/gpu-check-cases.js.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../lib/native';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const cases = require('../scripts/gpu-check-cases.js') as {
  makeCases(run: (name: string, args: Record<string, unknown>) => void, size: 'small' | 'full'): Case[];
  checkCase(c: Case, run: (name: string, args: Record<string, unknown>) => unknown, device: string): CaseResult;
};
interface Case {
  op: string;
  label: string;
  args: Record<string, unknown>;
  outputs: string[];
  tol: number;
}
interface CaseResult {
  op: string;
  case: string;
  pass: boolean;
  worst: number;
  outputs: Record<string, { err: number; mismatches: number; ok: boolean }>;
}

const root = path.resolve(__dirname, '..');
const addon = native();
const info = addon.info();
const hasGpu = info.cuda.devices.length > 0;
const run = (name: string, args: Record<string, unknown>) => addon.runOp(name, args);

t.test('cudaOps lists every op of the op table, each with a CUDA kernel in the file named after its CPU twin', async (t) => {
  const { ops } = addon.opKernels();
  const cuda = addon.cudaOps();
  t.equal(cuda.compiled, info.cuda.compiled, 'compiled flag agrees with info()');
  t.same(cuda.ops.map((o) => o.name), ops, 'same ops, same order as the op table');
  const families = new Set(cuda.ops.map((o) => o.family));
  t.ok(families.size >= 10, `${families.size} op families`);
  for (const fam of families) {
    t.ok(fs.existsSync(path.join(root, 'native', 'cpu', `${fam}.cc`)), `native/cpu/${fam}.cc exists`);
    t.ok(fs.existsSync(path.join(root, 'kernels', `${fam}.cu`)), `kernels/${fam}.cu exists`);
  }
  for (const o of cuda.ops) {
    t.ok(o.f32, `supports(${o.name}, F32)`);
    const src = fs.readFileSync(path.join(root, 'kernels', `${o.family}.cu`), 'utf8');
    t.match(src, new RegExp(`void CudaBackend::${o.name}\\(`), `kernels/${o.family}.cu defines CudaBackend::${o.name}`);
  }
  const bf16 = cuda.ops.filter((o) => o.bf16).map((o) => o.name).sort();
  t.same(bf16, ['embedding', 'gemm', 'lm_head_logp', 'lm_head_logp_backward', 'lora'], 'bf16 weights: the ops whose args take them');
});

t.test("runOp device 'cpu-copy' (the device path on the CPU backend) reproduces the CPU exactly on every op", async (t) => {
  const all = cases.makeCases(run, 'small');
  t.same([...new Set(all.map((c) => c.op))].sort(), [...addon.opKernels().ops].sort(), 'the cases cover every op');
  for (const c of all) {
    const r = cases.checkCase(c, run, 'cpu-copy');
    const exact = Object.values(r.outputs).every((o) => o.err === 0 && o.mismatches === 0);
    t.ok(r.pass && exact, `${c.op} [${c.label}]`, exact ? undefined : { outputs: r.outputs });
  }
  // The copies go back into views of one buffer without clobbering the rest of it.
  const buf = new Float32Array([1, 2, 3, 4, 5, 6]);
  const x = new Float32Array([10, 20]);
  const r = addon.runOp('add', { n: 1, dim: 2, x, y: buf.subarray(2, 4), device: 'cpu-copy' });
  t.same(r, { device: 'cpu-copy' });
  t.same([...buf], [1, 2, 13, 24, 5, 6], 'only the view was written');
});

t.test('runOp refuses devices it does not know', async (t) => {
  const args = { n: 1, dim: 1, x: new Float32Array(1), y: new Float32Array(1) };
  t.throws(() => addon.runOp('add', { ...args, device: 'tpu' }), { code: 'E_ARGUMENT', message: /device/ });
  t.throws(() => addon.runOp('add', { ...args, device: 3 }), { code: 'E_ARGUMENT' });
  t.equal(addon.runOp('add', { ...args, device: 'cpu' }), undefined, "device 'cpu' is the plain path");
});

t.test('without a GPU, the CUDA entry points fail with E_CUDA and the addon keeps working', { skip: hasGpu && 'a GPU is present' }, async (t) => {
  const y = new Float32Array([1, 2]);
  const err = (() => {
    try {
      addon.runOp('add', { n: 1, dim: 2, x: new Float32Array([1, 1]), y, device: 'cuda' });
    } catch (e) {
      return e as Error & { code?: string };
    }
    return null;
  })();
  t.ok(err, 'runOp on cuda throws');
  t.equal(err?.code, 'E_CUDA');
  t.match(err?.message ?? '', info.cuda.compiled ? /no usable CUDA device/ : /no CUDA backend/, 'says why');
  if (info.cuda.error) t.ok(err?.message.includes(info.cuda.error), 'with the runtime reason from info()');
  t.same([...y], [1, 2], 'the arrays are untouched');
  for (const name of ['gemm_bf16', 'attention', 'lm_head', 'ppo_loss'] as const)
    t.throws(() => addon.cudaBench(name, { repeat: 1 }), { code: 'E_CUDA' }, `cudaBench ${name}`);
  // Every op refuses the same way (argument parsing happens first, so a bad call still says E_ARGUMENT).
  for (const c of cases.makeCases(run, 'small').filter((_, i) => i % 7 === 0))
    t.throws(() => addon.runOp(c.op, { ...c.args, device: 'cuda' }), { code: 'E_CUDA' }, `${c.op} on cuda`);
  addon.runOp('add', { n: 1, dim: 2, x: new Float32Array([1, 1]), y });
  t.same([...y], [2, 3], 'the CPU backend still runs afterwards');
});

t.test('with a GPU, every CUDA op matches its CPU twin', { skip: !hasGpu && `no GPU: ${info.cuda.error ?? 'none found'}` }, async (t) => {
  for (const c of cases.makeCases(run, 'small')) {
    const r = cases.checkCase(c, run, 'cuda');
    t.ok(r.pass, `${c.op} [${c.label}]: worst ${r.worst.toExponential(2)} (tol ${c.tol})`, r.pass ? undefined : { outputs: r.outputs });
  }
  const g = addon.cudaBench('gemm_bf16', { m: 256, n: 256, k: 256, repeat: 2 });
  t.ok(Number(g.ms) > 0 && Number(g.tflops) > 0, 'cudaBench times a kernel');
});
