/**
 * --threads (a shared training option): the first stage of a process sizes
 * the engine's thread pool (RLHF_NUM_THREADS, read when the engine starts);
 * a later stage asking for another count is told it was not applied.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runSft } from '../lib/stages/sft';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-threads-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

t.test('threads: 1 sizes the pool of a fresh process; a later different count is reported as not applied', async (t) => {
  delete process.env.RLHF_NUM_THREADS;
  const base = path.join(tmp, 'llama'), data = path.join(tmp, 'rows.jsonl');
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 3 });
  fs.writeFileSync(data, JSON.stringify({ prompt: 'Hi.', completion: ' Hello there.' }) + '\n');
  const cfg = { model: base, data, steps: 1, batchSize: 1, loraR: 2, device: 'cpu' as const };
  const first = await runSft({ ...cfg, out: path.join(tmp, 'a'), threads: 1 }, { handleSigint: false, keepModel: true });
  t.equal(first.model!.info().threads, 1, 'the engine runs one thread');
  first.model!.dispose();
  const logs: string[] = [];
  const second = await runSft({ ...cfg, out: path.join(tmp, 'b'), threads: 2 }, { handleSigint: false, keepModel: true, log: (l) => logs.push(l) });
  t.equal(second.model!.info().threads, 1, 'still one thread: the pool is sized once per process');
  t.ok(logs.some((l) => /--threads 2 not applied: the engine already runs 1 thread in this process/.test(l)), 'and the run says so');
  second.model!.dispose();
});
