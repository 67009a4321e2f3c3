#!/usr/bin/env node
// `npm run build:prebuild [-- --cpu-only]` (not `prebuild`: npm would run that
// before every `npm run build` as its pre-hook): builds the binary that ships in the npm
// package, so installing needs no compiler (docs/build.md, "Prebuilt binaries").
//
// Drives the same CMake build as the install (cmake-js), with RLHF_PORTABLE=ON
// (static libstdc++/libgcc, glibc symbols pinned to versions <= 2.28), in its
// own folder build-prebuild/<variant> so a rerun only recompiles what changed.
// The result goes where node-gyp-build looks, named as prebuildify names a
// Node-API build tagged with its libc: prebuilds/linux-x64/node.napi.glibc.node.
// Then it checks the binary: no library outside glibc, no glibc symbol newer
// than the floor, and that it loads and carries the backends asked for.
//
//   --cpu-only   the CPU backend alone (no nvcc needed; a faster build)
//   --dest DIR   put prebuilds/ under DIR instead of the package root (the
//                install test stages a package copy this way)
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { GLIBC_FLOOR, elfNeeds, portabilityProblems } = require('./elf-needs');
const { checkPrebuild } = require('./prebuilds');

const root = path.resolve(__dirname, '..');
const log = (msg) => process.stderr.write(`rlhf-native prebuild: ${msg}\n`);
const fail = (msg) => {
  log(msg);
  process.exit(1);
};

/** node-gyp-build's file name for a Node-API binary on glibc (prebuildify --napi --tag-libc). */
const PREBUILD_NAME = 'node.napi.glibc.node';
/** The architectures the CUDA variant must carry (CMakeLists.txt's RLHF_CUDA_ARCHS default). */
const CUDA_ARCHS = ['80-real', '90-real', '90a-real', '90-virtual'];

function findNvcc() {
  for (const p of [process.env.CUDACXX, ...String(process.env.PATH || '').split(':').map((d) => d && path.join(d, 'nvcc')), '/usr/local/cuda/bin/nvcc']) {
    if (p && fs.existsSync(p)) return p;
  }
  return null;
}

function main() {
  const cpuOnly = process.argv.includes('--cpu-only');
  const variant = cpuOnly ? 'cpu' : 'cuda';
  if (process.platform !== 'linux' || process.arch !== 'x64')
    fail(`builds linux-x64 prebuilds only (this is ${process.platform}-${process.arch}); elsewhere the install compiles the addon`);
  const nvcc = cpuOnly ? null : findNvcc();
  if (!cpuOnly && !nvcc) fail('nvcc not found ($CUDACXX, PATH, /usr/local/cuda/bin); install the CUDA toolkit, or pass --cpu-only for the CPU-only variant');

  const out = path.join('build-prebuild', variant);
  const args = [require.resolve('cmake-js/bin/cmake-js'), 'compile', '--directory', root, '--out', out,
    '--parallel', String(Math.max(2, os.cpus().length)), '--CDRLHF_PORTABLE=ON'];
  if (cpuOnly) args.push('--CDRLHF_CUDA=OFF');
  else args.push(`--CDCMAKE_CUDA_COMPILER=${nvcc}`);
  log(`building the ${variant} variant in ${out}/`);
  const started = Date.now();
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) fail(`the CMake build failed (exit status ${r.status})`);
  const built = path.join(root, out, 'Release', 'rlhf_native.node');
  if (!fs.existsSync(built)) fail(`the build finished but ${path.relative(root, built)} is missing`);

  const destIndex = process.argv.indexOf('--dest');
  const destRoot = destIndex > 0 ? path.resolve(process.argv[destIndex + 1] || fail('--dest needs a folder')) : root;
  const dir = path.join(destRoot, 'prebuilds', `${process.platform}-${process.arch}`);
  fs.mkdirSync(dir, { recursive: true });
  const dest = path.join(dir, PREBUILD_NAME);
  const tmp = `${dest}.tmp`;
  fs.copyFileSync(built, tmp);
  // Symbols are of no use to a user and are most of a static build's size.
  const s = spawnSync('strip', ['--strip-all', tmp], { encoding: 'utf8' });
  if (s.status !== 0) log(`strip failed (${s.error ? s.error.message : s.stderr.trim()}); shipping the binary unstripped`);

  const problems = portabilityProblems(tmp);
  if (problems.length) {
    fs.rmSync(tmp);
    fail(`the binary would not load on every glibc >= ${GLIBC_FLOOR} system:\n  ${problems.join('\n  ')}`);
  }
  fs.renameSync(tmp, dest);

  const loaded = checkPrebuild(destRoot);
  if (!loaded.loads || loaded.file !== dest) fail(`${dest} does not load: ${loaded.error ?? `node-gyp-build picked ${loaded.file}`}`);
  const wantBackends = cpuOnly ? ['cpu'] : ['cpu', 'cuda'];
  if (wantBackends.some((b) => !loaded.backends.includes(b))) fail(`the binary carries backends ${loaded.backends} but ${wantBackends} were asked for`);
  if (!cpuOnly && CUDA_ARCHS.some((a) => !loaded.cudaArchs.includes(a))) fail(`the binary carries CUDA archs ${loaded.cudaArchs}, not ${CUDA_ARCHS}`);

  const { maxGlibc } = elfNeeds(dest);
  const manifest = { variant, glibc: maxGlibc, built: new Date().toISOString(), node: process.version, backends: loaded.backends, cudaArchs: loaded.cudaArchs };
  fs.writeFileSync(`${dest}.json`, JSON.stringify(manifest, null, 2) + '\n');
  const mb = (fs.statSync(dest).size / 1e6).toFixed(1);
  log(`${dest}: ${mb} MB, backends ${loaded.backends.join(', ')}${loaded.cudaArchs.length ? ` (${loaded.cudaArchs.join(', ')})` : ''}, needs glibc >= ${maxGlibc}, ${Math.round((Date.now() - started) / 1000)} s`);
}

main();
