'use strict';
// Install-time decisions about the prebuilt binaries in prebuilds/ (made by
// scripts/prebuild.js, shipped in the npm package): whether the user asked
// for a build from source, and whether a prebuild for this system loads.
const { spawnSync } = require('child_process');
const path = require('path');

const TRUE_WORDS = ['1', 'true', 'yes', 'on'];

/**
 * Why to compile even when a prebuild would do, or null. npm turns
 * `npm install --build-from-source` into npm_config_build_from_source=true
 * (the value may also name packages, as node-pre-gyp allows).
 */
function fromSourceReason(env = process.env) {
  const own = String(env.RLHF_BUILD_FROM_SOURCE ?? '').toLowerCase();
  if (TRUE_WORDS.includes(own)) return 'RLHF_BUILD_FROM_SOURCE is set';
  const npmFlag = String(env.npm_config_build_from_source ?? '').toLowerCase();
  if (TRUE_WORDS.includes(npmFlag) || npmFlag.split(',').map((s) => s.trim()).includes('rlhf-native'))
    return '--build-from-source was given';
  return null;
}

/**
 * Looks for a prebuild for this platform and loads it in a child process.
 * Returns { found: false } | { found: true, loads: true, file, backends, cudaArchs }
 * | { found: true, loads: false, file, error }.
 */
function checkPrebuild(root) {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'check-prebuild.js'), root], {
    encoding: 'utf8',
    env: { ...process.env, PREBUILDS_ONLY: '1' },
    timeout: 120_000,
  });
  const line = (r.stdout || '').trim().split('\n').pop();
  if (r.status === 0 && line) {
    try {
      return JSON.parse(line);
    } catch {
      /* fall through: report what happened below */
    }
  }
  const how = r.error ? r.error.message : r.signal ? `the process was killed by ${r.signal}` : `exit status ${r.status}`;
  const err = (r.stderr || '').trim().split('\n').filter(Boolean).pop();
  return { found: true, loads: false, file: null, error: `loading it stopped the checking process (${how}${err ? `: ${err}` : ''})` };
}

module.exports = { fromSourceReason, checkPrebuild };
