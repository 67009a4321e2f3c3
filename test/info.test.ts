import t from 'tap';
import { gpuVisible } from '../lib/info';
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { runCli, cliBuilt } from './helpers/cli';

const nvccOnPath = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).status === 0;
// A GPU is usable only where the NVIDIA kernel driver exposes its device nodes.
const gpuPresent = fs.existsSync('/dev/nvidiactl');

t.test('info --json reports version, backends, SIMD and threads', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const r = runCli(['info', '--json']);
  t.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  const pkg = JSON.parse(fs.readFileSync(`${__dirname}/../package.json`, 'utf8'));
  t.equal(info.version, pkg.version);
  t.ok(info.backends.includes('cpu'));
  t.match(info.cpu.simd, /^(avx512_bf16|avx512|avx2|neon|scalar)$/);
  // Cross-check the SIMD detection against what the kernel reports.
  if (fs.existsSync('/proc/cpuinfo')) {
    const flags = fs.readFileSync('/proc/cpuinfo', 'utf8');
    t.equal(info.cpu.avx2, /\bavx2\b/.test(flags) && /\bfma\b/.test(flags), 'avx2+fma agrees with /proc/cpuinfo');
    t.equal(info.cpu.avx512_bf16, /\bavx512_bf16\b/.test(flags), 'avx512_bf16 agrees with /proc/cpuinfo');
  }
  t.ok(Number.isInteger(info.cpu.threads) && info.cpu.threads >= 1);
});

t.test('a CUDA build is compiled in wherever nvcc is, and reports no device without a GPU', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const info = JSON.parse(runCli(['info', '--json']).stdout);
  if (nvccOnPath) {
    t.equal(info.cuda.compiled, true, 'nvcc is on PATH, so the CUDA backend must be in the addon');
    t.ok(info.backends.includes('cuda'));
    t.ok(info.cuda.archs.length >= 3, `archs: ${info.cuda.archs}`);
  }
  if (!gpuPresent) {
    t.same(info.cuda.devices, [], 'no device without a GPU');
    t.equal(info.defaultDevice, 'cpu');
    t.type(info.cuda.reason, 'string');
    if (info.cuda.compiled) t.match(info.cuda.reason, /driver|device/i, 'says why there is no device');
  }
});

t.test('info prints a human summary', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const r = runCli(['info']);
  t.equal(r.status, 0);
  t.match(r.stdout, /^rlhf-native \d+\.\d+\.\d+/);
  t.match(r.stdout, /backends compiled in: cpu/);
  if (!gpuPresent && nvccOnPath) t.match(r.stdout, /no CUDA device: /);
});

// Without a GPU in sight, falling back to the CPU is no news (docs/reliability.md): the line saying why
// CUDA is not used is for a GPU that is visible but unusable; `info` always says why.
t.test('--device auto on a machine without a GPU: the CPU, without a word about CUDA', { skip: (!cliBuilt() || gpuPresent || !nvccOnPath || gpuVisible()) && 'needs a CUDA build on a machine with no GPU visible' }, async (t) => {
  const dir = fs.mkdtempSync('/tmp/rlhf-auto-');
  const model = `${dir}/m`;
  t.equal(runCli(['init', '--arch', 'llama', '--preset', 'tiny', '--out', model]).status, 0, 'a tiny model');
  const r = runCli(['generate', '--model', model, '--prompt', 'Hello', '--max-new-tokens', '3', '--device', 'auto']);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stderr.split('\n').filter((l) => /CUDA/.test(l));
  t.equal(lines.length, 0, `no CUDA line on stderr: ${JSON.stringify(r.stderr)}`);
  t.ok(r.stdout.trim().length > 0, 'and the command still does its work on the CPU');
  const r2 = runCli(['generate', '--model', model, '--prompt', 'Hello', '--max-new-tokens', '3', '--device', 'cuda']);
  t.equal(r2.status, 1);
  t.match(r2.stderr, /^rlhf-native: error E_CUDA: /);
  fs.rmSync(dir, { recursive: true, force: true });
});
