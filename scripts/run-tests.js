#!/usr/bin/env node
// The project's test command (`npm test`): compiles the TypeScript, runs every
// node-tap test file, streams tap's TAP output, and ends with one plain line
// `N passed, N failed[, N skipped]` counting leaf tests (a t.test() with no
// subtests of its own, or a file with none). Exit code 1 if anything failed.
'use strict';
const { spawn, spawnSync } = require('child_process');
const path = require('path');
const readline = require('readline');

const root = path.resolve(__dirname, '..');
// The same compile as `npm run build` (scripts/build-ts.js: tsc, then the CLI made executable for npx).
const tsc = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-ts.js')], { cwd: root, stdio: 'inherit' });
if (tsc.status !== 0) {
  console.log('TypeScript compilation failed');
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const files = process.argv.slice(2);
const tapBin = path.join(path.dirname(require.resolve('tap/package.json')), 'dist', 'esm', 'run.mjs');
const child = spawn(process.execPath, [tapBin, '--reporter=tap', '--no-color', ...files], {
  cwd: root,
  env: { ...process.env, FORCE_COLOR: '0' },
  stdio: ['ignore', 'pipe', 'inherit'],
});

let passed = 0, failed = 0, skipped = 0;
const stack = []; // open subtests: { indent, hasChild }
const failures = [];
const rl = readline.createInterface({ input: child.stdout });
rl.on('line', (line) => {
  process.stdout.write(line + '\n');
  const indent = line.length - line.trimStart().length;
  const text = line.trim();
  const sub = /^# Subtest: (.*)$/.exec(text);
  if (sub) {
    if (stack.length) stack[stack.length - 1].hasChild = true;
    stack.push({ indent, hasChild: false, name: sub[1] });
    return;
  }
  const point = /^(not ok|ok)\b(.*)$/.exec(text);
  if (!point || !stack.length || stack[stack.length - 1].indent !== indent) return; // an assertion, not a test
  const t = stack.pop();
  if (t.hasChild) return;
  if (/#\s*(SKIP|TODO)\b/i.test(point[2])) skipped++;
  else if (point[1] === 'ok') passed++;
  else { failed++; failures.push(stack.map((s) => s.name).concat(t.name).join(' > ')); }
});

child.on('close', (code) => {
  if (failures.length) {
    console.log('\nFailed tests:');
    for (const f of failures) console.log(`  - ${f}`);
  }
  if (code !== 0 && failed === 0) failed = 1; // tap itself failed (crash, timeout) without a failing point
  console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(failed ? 1 : 0);
});
