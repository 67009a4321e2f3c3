/**
 * What the reference `safetensors` library reads we read, and what it
 * refuses we refuse: every malformed case (safetensors-cases.ts), the edge
 * cases that must open, and 1500 seeded mutations of a valid file (the
 * fuzzer's kinds of input, safetensors-cases.ts `mutator`), each opened by
 * our reader and by `safe_open` (test/peers/safetensors_accepts.py). Any
 * disagreement is listed with its bytes.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openSafetensors } from '../lib/safetensors';
import { runPeer } from './helpers/peers';
import { MALFORMED_CASES, mutator, prng, stBytes, tmpDir, writeMutationBase } from './safetensors-cases';

const SEED = Number(process.env.RLHF_FUZZ_SEED ?? 20261208);
const MUTANTS = 1500;

t.test(`our reader and the reference agree on every file (seed ${SEED})`, async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const basePath = path.join(dir, 'base.safetensors');
  writeMutationBase(basePath);
  const inputs: [string, Buffer][] = [
    ['the valid base', fs.readFileSync(basePath)],
    ...MALFORMED_CASES.map((c): [string, Buffer] => [`malformed: ${c.name}`, c.bytes()]),
    ['whitespace before the header', stBytes(' \n{}')],
    ['an entry as an array', stBytes('{"a":["U8",[4],[0,4]]}', 4)],
    ['a repeated tensor name', stBytes('{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', 4)],
    ['a repeated key in an ignored value', stBytes('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":{"q":1,"q":2}}}', 4)],
  ];
  const mutate = mutator(fs.readFileSync(basePath), prng(SEED));
  for (let i = 0; i < MUTANTS; i++) inputs.push([`mutant ${i}`, mutate()]);
  const files = inputs.map(([, bytes], i) => {
    const f = path.join(dir, `in-${i}.safetensors`);
    fs.writeFileSync(f, bytes);
    return f;
  });
  const theirs = runPeer<(string | null)[]>('safetensors_accepts.py', { files });
  const disagree: string[] = [];
  let opened = 0;
  files.forEach((f, i) => {
    let ours: string | null = null;
    try {
      openSafetensors(f).close();
      opened++;
    } catch (e) {
      ours = (e as Error).message;
    }
    if ((ours === null) !== (theirs[i] === null))
      disagree.push(`${inputs[i][0]}: ours ${ours === null ? 'reads it' : `refuses it (${ours})`}, the reference ${theirs[i] === null ? 'reads it' : `refuses it (${theirs[i]})`}; header ${JSON.stringify(inputs[i][1].subarray(8, 200).toString('latin1'))}`);
  });
  t.same(disagree.slice(0, 8), [], `${files.length} files: ${opened} read, ${files.length - opened} refused, ${disagree.length} disagreements`);
  t.ok(opened > 50 && files.length - opened > 200, `both outcomes are well represented (${opened} read)`);
});
