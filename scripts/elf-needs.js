'use strict';
// What a Linux shared object asks of the system that loads it: the libraries
// it links (DT_NEEDED) and the symbol versions it needs from each (GLIBC_2.x,
// GLIBCXX_3.4.x ...), read with binutils' objdump. The prebuilt binaries must
// load on glibc >= GLIBC_FLOOR, so scripts/prebuild.js and
// test/prebuild-install.test.ts check these against that floor.
const { spawnSync } = require('child_process');

/** The oldest glibc the shipped binaries support (RHEL 8, Debian 10, Ubuntu 20.04 and later). */
const GLIBC_FLOOR = '2.28';
/** Libraries every glibc system has; anything else (libstdc++, libcudart ...) must be linked in. */
const SYSTEM_LIBS = ['libc.so.6', 'libm.so.6', 'libdl.so.2', 'libpthread.so.0', 'librt.so.1', 'ld-linux-x86-64.so.2', 'libgcc_s.so.1'];
/** The newest libgcc_s symbol version allowed: GCC 8's runtime, the one glibc 2.28 systems (RHEL 8) have. */
const LIBGCC_FLOOR = '7.0.0';

function compareVersions(a, b) {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function objdump(args, file) {
  const r = spawnSync('objdump', [...args, file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr || '').trim().split('\n')[0];
    throw new Error(`objdump ${args.join(' ')} ${file} failed: ${why} (binutils is needed to check a prebuilt binary)`);
  }
  return r.stdout;
}

/**
 * { needed: ['libc.so.6', ...], versions: { 'libc.so.6': ['GLIBC_2.2.5', ...] },
 *   maxGlibc: '2.17', tooNew: [{ symbol, version }] (dynamic symbols needing a glibc above the floor),
 *   unresolvedWraps: ['__wrap_NAME', ...] }
 */
function elfNeeds(file, floor = GLIBC_FLOOR) {
  const headers = objdump(['-p'], file);
  const needed = [...headers.matchAll(/^\s+NEEDED\s+(\S+)/gm)].map((m) => m[1]);
  const versions = {};
  let lib = null;
  for (const line of headers.split('\n')) {
    const from = /^\s+required from (\S+):/.exec(line);
    if (from) {
      lib = from[1];
      versions[lib] = [];
      continue;
    }
    const v = /^\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ (\S+)/.exec(line);
    if (lib && v) versions[lib].push(v[1]);
    else if (lib && line.trim() && !v) lib = null;
  }
  const glibc = Object.values(versions).flat().filter((v) => v.startsWith('GLIBC_2.')).map((v) => v.slice('GLIBC_'.length));
  const maxGlibc = glibc.sort(compareVersions).pop() ?? null;
  const tooNew = [];
  const dynamic = objdump(['-T'], file);
  // A --wrap=NAME with no __wrap_NAME defined links anyway (a shared object may
  // leave symbols undefined) and fails only when NAME is first called.
  const unresolvedWraps = [...dynamic.matchAll(/\*UND\*.*\s(__wrap_\S+)\s*$/gm)].map((m) => m[1]);
  for (const m of dynamic.matchAll(/\s\(?GLIBC_(2[.\d]+)\)?\s+(\S+)\s*$/gm)) {
    if (compareVersions(m[1], floor) > 0) tooNew.push({ symbol: m[2], version: `GLIBC_${m[1]}` });
  }
  return { needed, versions, maxGlibc, tooNew, unresolvedWraps };
}

/** Every reason the binary would not load on a system with glibc >= floor and no extra libraries ([] when none). */
function portabilityProblems(file, floor = GLIBC_FLOOR) {
  const n = elfNeeds(file, floor);
  const problems = [];
  for (const lib of n.needed) if (!SYSTEM_LIBS.includes(lib)) problems.push(`links ${lib}, which a system without a compiler or CUDA toolkit may not have`);
  for (const [lib, vs] of Object.entries(n.versions)) {
    for (const v of vs) {
      if (v.startsWith('GLIBC_')) continue;
      if (lib === 'libgcc_s.so.1' && /^GCC_[\d.]+$/.test(v) && compareVersions(v.slice(4), LIBGCC_FLOOR) <= 0) continue;
      problems.push(`needs ${v} from ${lib}`);
    }
  }
  for (const w of n.unresolvedWraps) problems.push(`${w} is undefined (a glibc wrapper missing from native/portable/glibc_compat.cc)`);
  if (n.maxGlibc && compareVersions(n.maxGlibc, floor) > 0) {
    const syms = n.tooNew.map((s) => `${s.symbol}@${s.version}`).join(', ');
    problems.push(`needs glibc ${n.maxGlibc} > ${floor}${syms ? ` (${syms})` : ''}`);
  }
  return problems;
}

module.exports = { GLIBC_FLOOR, LIBGCC_FLOOR, SYSTEM_LIBS, compareVersions, elfNeeds, portabilityProblems };
