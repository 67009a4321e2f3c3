/**
 * Installing the packed package as a user would (docs/build.md, "Prebuilt binaries"):
 *
 *  - with a prebuilt binary in the tarball and every compiler, CMake, make and
 *    nvcc on PATH replaced by stubs that fail and record the call, `npm install
 *    <tarball>` finishes without calling any of them, `info` names the
 *    prebuild, and `npx rlhf-native train` runs the demo;
 *  - with the prebuild broken, the install says why and builds from source;
 *  - --build-from-source compiles even though a prebuild loads;
 *  - the prebuild needs nothing newer than glibc 2.28 and no libstdc++.
 *
 * The prebuild is the repository's own (`npm run build:prebuild`) when there
 * is one, else a CPU-only one built here (cached in build-prebuild/cpu, so
 * only the first run pays for the compile). The installed package's
 * dependencies come from the npm registry or npm's cache.
 */
import t from 'tap';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..');
const TUPLE = `${process.platform}-${process.arch}`;
const PREBUILD = path.join('prebuilds', TUPLE, 'node.napi.glibc.node');
const STUBS = ['cc', 'gcc', 'g++', 'c++', 'clang', 'clang++', 'cmake', 'make', 'ninja', 'nvcc'];
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { portabilityProblems, GLIBC_FLOOR } = require('../scripts/elf-needs.js') as { portabilityProblems(f: string): string[]; GLIBC_FLOOR: string };

const skip =
  TUPLE !== 'linux-x64' ? 'prebuilds are made for linux-x64 only'
  : !fs.existsSync(path.join(ROOT, 'dist', 'bin', 'rlhf-native.js')) ? 'CLI not compiled'
  : spawnSync('objdump', ['--version']).status !== 0 ? 'objdump (binutils) is needed to check the prebuild'
  : false;

// Staging, building a CPU-only prebuild and one local build take minutes on a small machine.
t.setTimeout(1_800_000);

/** The environment of a user's shell: none of the test runner's npm_* settings. */
function userEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) && !['CC', 'CXX', 'CUDACXX', 'RLHF_BUILD_FROM_SOURCE', 'RLHF_NATIVE_PATH'].includes(k)) env[k] = v;
  return { ...env, ...extra };
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = userEnv(), timeoutMs = 900_000): SpawnSyncReturns<string> & { seconds: number } {
  const started = Date.now();
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
  return Object.assign(r, { seconds: (Date.now() - started) / 1000 });
}

const npm = (args: string[], cwd: string, env?: NodeJS.ProcessEnv) => run('npm', [...args, '--no-audit', '--no-fund'], cwd, env);

/** `npm pack` of a package folder into dest; returns the tarball's path. */
function pack(pkgDir: string, dest: string): string {
  fs.mkdirSync(dest, { recursive: true });
  // dist/ is compiled already (the test runner compiles first): no prepare script.
  const r = npm(['pack', '--ignore-scripts', '--pack-destination', dest], pkgDir);
  if (r.status !== 0) throw new Error(`npm pack failed: ${r.stderr}`);
  return path.join(dest, r.stdout.trim().split('\n').pop() as string);
}

/** The packed package, unpacked, with a prebuild in it. */
function stagePackage(tmp: string): { dir: string; built: boolean } {
  const tarball = pack(ROOT, path.join(tmp, 'repo-pack'));
  const stage = path.join(tmp, 'stage');
  fs.mkdirSync(stage);
  if (run('tar', ['-xzf', tarball, '-C', stage], tmp).status !== 0) throw new Error('could not unpack the tarball');
  const dir = path.join(stage, 'package');
  if (fs.existsSync(path.join(dir, PREBUILD))) return { dir, built: false };
  const r = run(process.execPath, [path.join(ROOT, 'scripts', 'prebuild.js'), '--cpu-only', '--dest', dir], ROOT, userEnv(), 1_500_000);
  if (r.status !== 0) throw new Error(`the CPU-only prebuild failed:\n${r.stderr.slice(-3000)}`);
  return { dir, built: true };
}

/** Stub compilers and build tools that fail loudly and append their name to `log`. */
function stubTools(dir: string, log: string): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const name of STUBS) {
    const file = path.join(dir, name);
    fs.writeFileSync(file, `#!/bin/sh\necho "${name} $*" >> "${log}"\necho "stub ${name}: this install must not compile anything" >&2\nexit 97\n`);
    fs.chmodSync(file, 0o755);
  }
}

function newApp(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }) + '\n');
  return dir;
}

t.test('what asks for a build from source', async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { fromSourceReason } = require('../scripts/prebuilds.js') as { fromSourceReason(env: NodeJS.ProcessEnv): string | null };
  t.equal(fromSourceReason({}), null, 'nothing: use a prebuild that loads');
  t.match(fromSourceReason({ RLHF_BUILD_FROM_SOURCE: '1' }), /RLHF_BUILD_FROM_SOURCE/);
  t.match(fromSourceReason({ RLHF_BUILD_FROM_SOURCE: 'true' }), /RLHF_BUILD_FROM_SOURCE/);
  t.equal(fromSourceReason({ RLHF_BUILD_FROM_SOURCE: '0' }), null);
  t.match(fromSourceReason({ npm_config_build_from_source: 'true' }), /--build-from-source/, 'npm install --build-from-source');
  t.match(fromSourceReason({ npm_config_build_from_source: 'rlhf-native' }), /--build-from-source/, 'the flag naming this package');
  t.equal(fromSourceReason({ npm_config_build_from_source: 'sharp' }), null, 'the flag naming another package');
  t.equal(fromSourceReason({ npm_config_build_from_source: 'false' }), null);
});

t.test('installing the packed package', { skip }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-prebuild-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const staged = stagePackage(tmp);
  t.comment(staged.built ? 'no prebuild in the repository: built a CPU-only one for this test' : `the repository's prebuild: ${PREBUILD}`);
  const prebuild = path.join(staged.dir, PREBUILD);
  const tarball = pack(staged.dir, path.join(tmp, 'with-prebuild'));
  t.comment(`tarball ${path.basename(tarball)}: ${(fs.statSync(tarball).size / 1e6).toFixed(1)} MB, prebuild ${(fs.statSync(prebuild).size / 1e6).toFixed(1)} MB`);

  t.test('the prebuild needs nothing newer than the glibc floor and no C++ runtime', async (t) => {
    t.same(portabilityProblems(prebuild), [], `loads on glibc >= ${GLIBC_FLOOR} with no libstdc++ installed`);
    const manifest = JSON.parse(fs.readFileSync(`${prebuild}.json`, 'utf8'));
    t.ok(['cpu', 'cuda'].includes(manifest.variant), 'its manifest names the variant');
  });

  t.test('with no compiler, CMake, make or nvcc: no compilation, info names the prebuild, the demo runs', async (t) => {
    const stubs = path.join(tmp, 'stubs');
    const calls = path.join(tmp, 'stub-calls.log');
    stubTools(stubs, calls);
    const env = userEnv({ PATH: `${stubs}:${path.dirname(process.execPath)}:${process.env.PATH}` });
    for (const name of ['g++', 'cmake', 'nvcc']) t.equal(run('sh', ['-c', `command -v ${name}`], tmp, env).stdout.trim(), path.join(stubs, name), `the stub ${name} comes first on PATH`);

    const app = newApp(path.join(tmp, 'app'));
    const r = npm(['install', tarball, '--foreground-scripts'], app, env);
    t.equal(r.status, 0, 'npm install finished', { stderr: r.stderr.slice(-2000) });
    t.comment(`npm install with the prebuild: ${r.seconds.toFixed(1)} s`);
    t.ok(r.seconds < 60, `under 60 s (${r.seconds.toFixed(1)} s)`);
    t.notOk(fs.existsSync(calls), `no compiler or build tool was called: ${fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8') : ''}`);
    t.match(r.stdout + r.stderr, /rlhf-native: using the prebuilt binary prebuilds\/linux-x64\/node\.napi\.glibc\.node \(backends: cpu/, 'says it uses the prebuild');
    const installed = path.join(app, 'node_modules', 'rlhf-native');
    t.notOk(fs.existsSync(path.join(installed, 'build', 'Release')), 'nothing was built into build/Release');

    const info = run('npx', ['rlhf-native', 'info', '--json'], app, env);
    t.equal(info.status, 0, 'info --json runs', { stderr: info.stderr });
    const build = JSON.parse(info.stdout).build;
    t.equal(build.kind, 'prebuild', 'info --json: the prebuild is loaded');
    t.equal(fs.realpathSync(build.addon), fs.realpathSync(path.join(installed, PREBUILD)), 'from the installed package');
    t.match(run('npx', ['rlhf-native', 'info'], app, env).stdout, /addon: prebuilt binary .*node\.napi\.glibc\.node/, 'info says so in words');

    // The demo's shortest form: the quick sizes, SFT alone (about 15 s on 2 cores).
    const demo = run('npx', ['rlhf-native', 'train', '--scale', 'quick', '--methods', 'sft', '--device', 'cpu', '--out', 'run'], app, env, 600_000);
    t.equal(demo.status, 0, 'the demo ran', { stderr: demo.stderr.slice(-2000) });
    t.ok(fs.existsSync(path.join(app, 'run', 'summary.json')), 'and wrote its run folder');
    t.match(demo.stdout + demo.stderr, /sft done in/, 'its SFT stage finished');
    t.notOk(fs.existsSync(calls), 'still no compiler called');
  });

  t.test('--build-from-source compiles although the prebuild loads', async (t) => {
    const stubs = path.join(tmp, 'stubs-bfs');
    const calls = path.join(tmp, 'stub-calls-bfs.log');
    stubTools(stubs, calls);
    const env = userEnv({ PATH: `${stubs}:${path.dirname(process.execPath)}:${process.env.PATH}`, RLHF_CUDA: '0' });
    const app = newApp(path.join(tmp, 'app-bfs'));
    const r = npm(['install', tarball, '--build-from-source', '--foreground-scripts'], app, env);
    t.match(r.stdout + r.stderr, /rlhf-native: building from source: --build-from-source was given/, 'says why it compiles');
    t.ok(fs.existsSync(calls), 'and tried to compile (the stubs were called, so it failed here)');
    t.not(r.status, 0, 'a build that cannot compile fails the install');
    t.match(r.stdout + r.stderr, /could not build the native addon/, 'with a line saying what to install');
  });

  t.test('a broken prebuild: the install says why and builds from source', async (t) => {
    const broken = path.join(tmp, 'broken');
    fs.cpSync(staged.dir, broken, { recursive: true });
    fs.writeFileSync(path.join(broken, PREBUILD), 'not a shared object\n');
    const brokenTarball = pack(broken, path.join(tmp, 'broken-pack'));
    const app = newApp(path.join(tmp, 'app-broken'));
    // The local build compiles the CPU backend only, to keep this test to minutes.
    const r = npm(['install', brokenTarball, '--foreground-scripts'], app, userEnv({ RLHF_CUDA: '0' }));
    t.equal(r.status, 0, 'npm install finished', { stderr: r.stderr.slice(-3000) });
    t.comment(`npm install building from source (CPU backend): ${r.seconds.toFixed(1)} s`);
    const out = r.stdout + r.stderr;
    const why = out.split('\n').filter((l) => /does not load here/.test(l));
    t.equal(why.length, 1, 'one line says why');
    t.match(why[0], /^rlhf-native: prebuilds\/linux-x64\/node\.napi\.glibc\.node does not load here \(.+\); building from source$/, 'names the binary and the loader\'s error');
    t.match(out, /rlhf-native: built build\/Release\/rlhf_native\.node with (cmake|node-gyp)/, 'then builds locally');
    const info = run('npx', ['rlhf-native', 'info', '--json'], app);
    t.equal(info.status, 0, 'info --json runs', { stderr: info.stderr });
    t.equal(JSON.parse(info.stdout).build.kind, 'local', 'the local build is what loads');
  });
});
