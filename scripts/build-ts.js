#!/usr/bin/env node
// Compiles the TypeScript (tsc -p tsconfig.json) and marks the CLI entry
// point executable: tsc writes files without the x bit, and `npx rlhf-native`
// runs dist/bin/rlhf-native.js through its shebang, which a fresh clone's
// `npm install` (the prepare script) must therefore leave executable.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const r = spawnSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
fs.chmodSync(path.join(root, 'dist', 'bin', 'rlhf-native.js'), 0o755);
