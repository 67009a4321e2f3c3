'use strict';
// Run in a child process by scripts/prebuilds.js: finds the prebuilt binary
// node-gyp-build would load from prebuilds/ for this platform (build/ is left
// out: PREBUILDS_ONLY is set by the parent), loads it and asks it what it
// carries. Prints one JSON line. A child, because a binary that does not load
// here can fail in ways (a missing symbol, a crash) the installer must survive.
//
//   node scripts/check-prebuild.js PACKAGE_DIR
const path = require('path');

const root = path.resolve(process.argv[2] || path.join(__dirname, '..'));
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

let file;
try {
  file = require('node-gyp-build').resolve(root);
} catch {
  out({ found: false });
  process.exit(0);
}
try {
  const info = require(file).info();
  out({ found: true, loads: true, file, backends: info.backends, cudaArchs: info.cuda.archs, buildSystem: info.buildSystem ?? null });
} catch (e) {
  out({ found: true, loads: false, file, error: String((e && e.message) || e).split('\n')[0] });
}
