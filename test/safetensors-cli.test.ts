// `rlhf-native inspect FILE` on every malformed file of safetensors-cases.ts:
// exit code 1 and exactly one line on stderr that names the file.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MALFORMED_CASES, tmpDir, writeCase } from './safetensors-cases';

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'dist', 'bin', 'rlhf-native.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function inspect(file: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'inspect', file], { cwd: ROOT, env: { ...process.env, RLHF_DEBUG: '' } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

if (!fs.existsSync(CLI)) {
  t.skip(`dist/bin/rlhf-native.js is not built (run \`npx tsc -p tsconfig.json\`); the CLI checks need it`);
} else {
  const dir = tmpDir('rlhf-st-cli-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files = MALFORMED_CASES.map((c, i) => writeCase(dir, c, i));
  // Start every CLI up front, a few at a time, then report one test per case.
  const runs: Array<Promise<Run>> = [];
  const lanes: Array<Promise<unknown>> = [Promise.resolve(), Promise.resolve(), Promise.resolve(), Promise.resolve()];
  files.forEach((file, i) => {
    const lane = i % lanes.length;
    const p = lanes[lane].then(() => inspect(file));
    lanes[lane] = p.catch(() => undefined);
    runs.push(p);
  });

  MALFORMED_CASES.forEach((c, i) => {
    t.test(`inspect: ${c.name}`, async (t) => {
      const r = await runs[i];
      t.equal(r.code, 1, 'exit code 1');
      const lines = r.stderr.split('\n').filter((l) => l.length > 0);
      t.equal(lines.length, 1, `exactly one line on stderr\n  got: ${JSON.stringify(r.stderr)}`);
      t.ok(lines[0]?.includes(files[i]), 'the line names the file');
      t.ok(lines[0]?.includes(c.message), `the line says what is wrong ("${c.message}")`);
    });
  });

  t.test('inspect: a valid file still exits 0', async (t) => {
    const r = await inspect(path.join(__dirname, 'fixtures', 'safetensors', 'reference.safetensors'));
    t.equal(r.code, 0);
    t.match(r.stdout, 'model.embed.weight');
  });
}
