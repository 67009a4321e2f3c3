// Robustness: ~2000 random mutations and truncations of a valid file. Each
// must either open (and then be self-consistent and fully readable) or throw
// RlhfError E_SAFETENSORS; the process must never crash. Seeded, so a
// failure is reproducible; bounded in time.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { openSafetensors } from '../lib/safetensors';
import { mutator, prng, tmpDir, writeMutationBase } from './safetensors-cases';

const SEED = Number(process.env.RLHF_FUZZ_SEED ?? 20240601);
const ITERATIONS = 2000;
const TIME_BUDGET_MS = 8000;

t.test(`random mutations never crash the reader (seed ${SEED})`, async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const basePath = path.join(dir, 'base.safetensors');
  writeMutationBase(basePath);
  const base = fs.readFileSync(basePath);
  const rand = prng(SEED);
  const mutate = mutator(base, rand);

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
