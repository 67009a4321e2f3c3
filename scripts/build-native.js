#!/usr/bin/env node
// The package's `install` script. When a prebuilt binary for this system
// ships in prebuilds/ (scripts/prebuild.js) and loads, nothing is compiled.
// Otherwise, or when asked (`npm install --build-from-source`,
// RLHF_BUILD_FROM_SOURCE=1, or --force as in `npm run build:native`), it
// builds the addon into build/Release, which node-gyp-build then loads ahead
// of any prebuild:
//
//   1. CMake through cmake-js (main build): CPU backend, plus CUDA when nvcc is
//      found. RLHF_CUDA=0 in the environment forces a CPU-only build.
//   2. node-gyp (fallback where CMake is missing or failed): CPU backend only.
//
// A clone of the repository has no prebuilds (they are build outputs), so
// `npm install` there compiles. Writes build/build-info.json so
// `rlhf-native info` can say how a local build was made.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { fromSourceReason, checkPrebuild } = require('./prebuilds');

const root = path.resolve(__dirname, '..');
const force = process.argv.includes('--force');
const log = (msg) => process.stderr.write(`rlhf-native: ${msg}\n`);

function which(cmd) {
  const r = spawnSync(process.platform === 'win32' ? 'where' : 'which', [cmd], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : null;
}

function run(cmd, args) {
  log(`$ ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  return r.status === 0;
}

function findNvcc() {
  if (process.env.CUDACXX && fs.existsSync(process.env.CUDACXX)) return process.env.CUDACXX;
  const onPath = which('nvcc');
  if (onPath) return onPath;
  for (const p of ['/usr/local/cuda/bin/nvcc', '/opt/cuda/bin/nvcc']) if (fs.existsSync(p)) return p;
  return null;
}

function cmakeBuild() {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const wantCuda = !['0', 'off', 'false', 'no'].includes(String(process.env.RLHF_CUDA ?? '').toLowerCase());
  const nvcc = wantCuda ? findNvcc() : null;
  const args = [cmakeJs, 'compile', '--directory', root, '--out', 'build', '--parallel', String(Math.max(2, require('os').cpus().length))];
  if (!wantCuda) args.push('--CDRLHF_CUDA=OFF');
  else if (nvcc) args.push(`--CDCMAKE_CUDA_COMPILER=${nvcc}`);
  const ok = run(process.execPath, args);
  return { ok, cuda: Boolean(nvcc) };
}

function gypBuild() {
  // npm exports the path of its bundled node-gyp to install scripts; outside
  // npm, look for it beside the npm that ships with this node.
  const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const gyp = process.env.npm_config_node_gyp || which('node-gyp') || (fs.existsSync(bundled) ? bundled : null);
  if (!gyp) return false;
  // Build against this node's own headers when they are installed beside it
  // (no download); npm passes its `nodedir` setting through the environment.
  const args = ['rebuild'];
  const localHeaders = path.resolve(path.dirname(process.execPath), '..');
  if (!process.env.npm_config_nodedir && fs.existsSync(path.join(localHeaders, 'include', 'node', 'node_api.h')))
    args.push(`--nodedir=${localHeaders}`);
  return gyp.endsWith('.js') ? run(process.execPath, [gyp, ...args]) : run(gyp, args);
}

function main() {
  const binary = path.join(root, 'build', 'Release', 'rlhf_native.node');
  if (!force && process.env.RLHF_SKIP_NATIVE_BUILD === '1' && fs.existsSync(binary)) {
    log('RLHF_SKIP_NATIVE_BUILD=1 and a binary exists; not rebuilding');
    return;
  }
  if (force) log('building from source: --force');
  if (force || needsLocalBuild(binary)) buildLocally(binary);
}

/** Whether the addon is to be compiled here (else a prebuild loads); logs one line saying why. */
function needsLocalBuild(binary) {
  const asked = fromSourceReason();
  if (asked) {
    log(`building from source: ${asked}`);
    return true;
  }
  // A local build, once made, loads before any prebuild (node-gyp-build looks
  // in build/Release first), so keep it current rather than leave it stale.
  if (fs.existsSync(binary)) {
    log(`a local build exists (${path.relative(root, binary)}, loaded ahead of prebuilds/); rebuilding it`);
    return true;
  }
  const p = checkPrebuild(root);
  const tuple = `${process.platform}-${process.arch}`;
  if (!p.found) {
    log(`no prebuilt binary for ${tuple} in prebuilds/; building from source`);
    return true;
  }
  const rel = p.file ? path.relative(root, p.file) : `the prebuilt binary for ${tuple}`;
  if (!p.loads) {
    log(`${rel} does not load here (${p.error}); building from source`);
    return true;
  }
  const archs = p.cudaArchs && p.cudaArchs.length ? ` ${p.cudaArchs.join(',')}` : '';
  log(`using the prebuilt binary ${rel} (backends: ${p.backends.join(', ')}${archs}); nothing to compile`);
  return false;
}

function buildLocally(binary) {
  let system = null;
  let cuda = false;
  if (which('cmake')) {
    const r = cmakeBuild();
    if (r.ok) { system = 'cmake'; cuda = r.cuda; }
    else log('the CMake build failed; trying node-gyp (CPU backend only)');
  } else {
    log('cmake not found on PATH; building the CPU backend with node-gyp');
  }
  if (!system) {
    if (gypBuild()) system = 'node-gyp';
  }
  if (!system || !fs.existsSync(binary)) {
    log('could not build the native addon. Install CMake (>= 3.18) and a C++17 compiler (g++ >= 9 or clang >= 10), then run `npm rebuild rlhf-native`.');
    process.exit(1);
  }
  fs.writeFileSync(path.join(root, 'build', 'build-info.json'),
    JSON.stringify({ system, cudaRequested: cuda, node: process.version, date: new Date().toISOString() }, null, 2) + '\n');
  log(`built ${path.relative(root, binary)} with ${system}${cuda ? ' (CUDA backend included)' : ''}`);
}

main();
