/**
 * The shape of lib/ that the structure rests on: no import circle (type
 * imports included), no file over 600 lines, and no stage or method calling
 * the synchronous op hook `runOp` (the losses run on the model's device,
 * lib/engine/objectives.ts; runOp is for tests). Read from the sources.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

const LIB = path.resolve(__dirname, '..', 'lib');
const files: string[] = [];
(function walk(d: string) {
  for (const f of fs.readdirSync(d)) {
    const p = path.join(d, f);
    if (fs.statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.ts')) files.push(p);
  }
})(LIB);
const rel = (f: string) => path.relative(LIB, f);
const source = new Map(files.map((f) => [f, fs.readFileSync(f, 'utf8')]));

/** Relative imports and re-exports of a file (`import type` too), resolved to files. */
function imports(f: string): string[] {
  const out: string[] = [];
  for (const m of source.get(f)!.matchAll(/^(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gms)) {
    const p = path.join(path.dirname(f), m[1]);
    const hit = [`${p}.ts`, path.join(p, 'index.ts')].find((x) => source.has(x));
    if (hit) out.push(hit);
  }
  return out;
}

t.test('no import circle in lib/', async (t) => {
  t.ok(files.length > 50, `${files.length} files read`);
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const circles: string[] = [];
  const visit = (u: string) => {
    state.set(u, 1);
    stack.push(u);
    for (const v of imports(u)) {
      if (state.get(v) === 1) circles.push([...stack.slice(stack.indexOf(v)), v].map(rel).join(' -> '));
      else if (!state.has(v)) visit(v);
    }
    stack.pop();
    state.set(u, 2);
  };
  for (const f of files) if (!state.has(f)) visit(f);
  t.same(circles, [], 'no file reaches itself through its imports');
});

t.test('no file in lib/ is over 600 lines', async (t) => {
  const long = files.map((f) => [rel(f), source.get(f)!.split('\n').length - 1] as const).filter(([, n]) => n > 600);
  t.same(long, [], 'every file at most 600 lines');
});

t.test('only lib/native.ts names runOp (its declaration)', async (t) => {
  const callers = files.filter((f) => rel(f) !== 'native.ts' && /\brunOp\s*\(/.test(source.get(f)!.replace(/^\s*(\*|\/\/).*$/gm, '')));
  t.same(callers.map(rel), [], 'no stage, method or engine file calls runOp');
});
