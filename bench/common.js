'use strict';
// What the forward and training benchmarks share: the model configs, the
// model-folder writer, the PyTorch peer process, our GEMM rate, timing and
// environment helpers.
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { spawn, execFileSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..');
const log = (...a) => console.error('[bench]', ...a);

const CONFIGS = {
  S: { hidden: 288, layers: 6, heads: 6, kvHeads: 6, ffn: 768, vocab: 32000, maxPositions: 1024 },
  M: { hidden: 512, layers: 8, heads: 8, kvHeads: 4, ffn: 1408, vocab: 32000, maxPositions: 1024 },
  L: { hidden: 768, layers: 12, heads: 12, kvHeads: 4, ffn: 2048, vocab: 32000, maxPositions: 1024 },
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const now = () => Number(process.hrtime.bigint()) / 1e6; // ms

function randomIds(rows, cols, vocab, seed) {
  let s = (seed * 2654435761 + 12345) >>> 0;
  const out = [];
  for (let r = 0; r < rows; r++) {
    const row = new Array(cols);
    for (let c = 0; c < cols; c++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      row[c] = s % vocab;
    }
    out.push(row);
  }
  return out;
}

function toBf16(f32) {
  const u = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    out[i] = ((x + 0x7fff + ((x >>> 16) & 1)) / 65536) & 0xffff;
  }
  return out;
}

function requireDist(rel) {
  const file = path.join(ROOT, 'dist', rel);
  if (!fs.existsSync(file)) throw new Error(`${path.relative(ROOT, file)} is missing: run \`npm run build\` (and \`npm run build:native\` if the addon is missing) first`);
  return require(file);
}

function gitCommit() {
  try {
    return execFileSync('git', ['describe', '--always', '--dirty', '--abbrev=12'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

function findBlasDir(explicit) {
  if (explicit) return explicit;
  try {
    const files = execFileSync('dpkg', ['-L', 'libopenblas0-openmp'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n');
    const hit = files.find((f) => /\/libblas\.so\.3$/.test(f)) || files.find((f) => /libopenblas\.so\.0$/.test(f));
    if (hit) return path.dirname(hit);
  } catch {
    /* not a dpkg system, or the package is missing */
  }
  const guess = `/usr/lib/${process.arch === 'x64' ? 'x86_64' : 'aarch64'}-linux-gnu/openblas-openmp`;
  return fs.existsSync(guess) ? guess : '';
}

// dtype: the weights' dtype on disk, 'F32' (default) or 'BF16'.
function prepareFolder(lib, name, c, outRoot, dtype = 'F32') {
  const spec = { format: 1, name, ...c, seed: 0, dtype, init: 'normal(0, 0.02), norms 1' };
  const dir = path.join(outRoot, 'models', `llama-${name}-h${c.hidden}-l${c.layers}-kv${c.kvHeads}-f${c.ffn}-v${c.vocab}${dtype === 'F32' ? '' : '-' + dtype.toLowerCase()}`);
  const specFile = path.join(dir, 'bench-spec.json');
  const weights = path.join(dir, 'model.safetensors');
  if (fs.existsSync(specFile) && fs.existsSync(weights) && fs.existsSync(path.join(dir, 'config.json'))) {
    try {
      if (JSON.stringify(JSON.parse(fs.readFileSync(specFile, 'utf8'))) === JSON.stringify(spec)) return dir;
    } catch {
      /* rewrite */
    }
  }
  fs.mkdirSync(dir, { recursive: true });
  const preset = {
    hiddenSize: c.hidden, numLayers: c.layers, numHeads: c.heads, numKvHeads: c.kvHeads, intermediateSize: c.ffn,
    gpt2Inner: 4 * c.hidden, maxPositions: c.maxPositions, gpt2MaxPositions: c.maxPositions, tokenizerVocab: c.vocab,
  };
  const cfg = lib.presetModelConfig('llama', preset, { vocabSize: c.vocab, bos: 1, eos: [2], pad: 0 }, dtype === 'BF16' ? 'bfloat16' : 'float32');
  if (cfg.tieWordEmbeddings) throw new Error('bench configs must have an untied LM head');
  const tensors = lib.expectedTensors(cfg).map((s) => ({ name: s.name, dtype, shape: s.shape, fill: lib.initFill(cfg, s, spec.seed) }));
  const t0 = now();
  lib.writeSafetensors(weights, tensors, { format: 'pt' });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(lib.modelConfigToHf(cfg), null, 2) + '\n');
  fs.writeFileSync(specFile, JSON.stringify(spec) + '\n');
  log(`wrote ${path.relative(ROOT, dir)} (${(fs.statSync(weights).size / 2 ** 20).toFixed(0)} MiB, ${(now() - t0).toFixed(0)} ms)`);
  return dir;
}

class Peer {
  // script: the peer's server (torch_peer.py or torch_train_peer.py), run with --serve.
  constructor(opts, threads, script = 'torch_peer.py') {
    const blasDir = findBlasDir(opts.blasDir);
    this.blasDir = blasDir;
    const env = { ...process.env, OMP_NUM_THREADS: String(threads), PYTHONUNBUFFERED: '1' };
    // libgomp's default spin-waiting collapses when the cores are oversubscribed
    // by other processes (see bench/README.md); PASSIVE unless asked otherwise.
    if (opts.waitPolicy) env.OMP_WAIT_POLICY = opts.waitPolicy;
    else delete env.OMP_WAIT_POLICY;
    if (blasDir) env.LD_LIBRARY_PATH = blasDir + (process.env.LD_LIBRARY_PATH ? ':' + process.env.LD_LIBRARY_PATH : '');
    // A pyenv shim or a venv would not have Debian's torch; the caller picks the python explicitly.
    this.proc = spawn(opts.python, [path.join(__dirname, script), '--serve', '--threads', String(threads)], {
      env,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.waiting = [];
    this.exited = null;
    readline.createInterface({ input: this.proc.stdout }).on('line', (line) => {
      const w = this.waiting.shift();
      if (w) w.resolve(line);
    });
    const fail = (why) => {
      this.exited = why;
      for (const w of this.waiting.splice(0)) w.reject(new Error(`torch peer: ${why}`));
    };
    this.proc.on('error', (e) => fail(`could not start ${opts.python}: ${e.message}`));
    this.proc.on('exit', (code, sig) => fail(`exited (code ${code}, signal ${sig})`));
  }

  /** @returns {Promise<any>} */
  request(cmd) {
    if (this.exited) return Promise.reject(new Error(`torch peer: ${this.exited}`));
    return new Promise((resolve, reject) => {
      this.waiting.push({
        resolve: (line) => {
          const r = JSON.parse(line);
          if (!r.ok) reject(new Error(`torch peer ${cmd.cmd}: ${r.error}`));
          else resolve(r);
        },
        reject,
      });
      this.proc.stdin.write(JSON.stringify(cmd) + '\n');
    });
  }

  close() {
    if (!this.exited) {
      this.proc.stdin.write(JSON.stringify({ cmd: 'quit' }) + '\n');
      this.proc.stdin.end();
    }
  }
}

function ourGemmRate(addon, m, n, k, minSeconds = 0.25, samples = 5, bf16 = false) {
  const fill = (len, seed) => {
    const a = new Float32Array(len);
    let s = seed >>> 0;
    for (let i = 0; i < len; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      a[i] = (s / 2 ** 32 - 0.5) * 2;
    }
    return a;
  };
  const a = fill(m * k, 1), b = fill(n * k, 2), c = new Float32Array(m * n);
  const bArg = bf16 ? { bBf16: toBf16(b) } : { b };
  const run = () => addon.runOp('gemm', { m, n, k, a, lda: k, ...bArg, ldb: k, c, ldc: n, transA: false, transB: true });
  run();
  let t = now();
  run();
  const one = Math.max(now() - t, 1e-3) / 1e3;
  if (one > 0.2) samples = Math.min(samples, 3);
  const iters = Math.max(1, Math.floor(minSeconds / samples / one));
  const rates = [];
  for (let s = 0; s < samples; s++) {
    t = now();
    for (let i = 0; i < iters; i++) run();
    const dt = (now() - t) / 1e3 / iters;
    rates.push((2 * m * n * k) / dt / 1e9);
  }
  rates.sort((x, y) => x - y);
  return { m, n, k, gflops: median(rates), min_gflops: rates[0], max_gflops: rates[rates.length - 1], samples, iters };
}

function gemmShapes(c, tokens) {
  const hd = c.hidden / c.heads;
  const uniq = new Map();
  for (const [m, n, k, what] of [
    [1024, 1024, 1024, 'square'],
    [tokens, c.heads * hd, c.hidden, 'q/o proj'],
    [tokens, c.ffn, c.hidden, 'gate/up proj'],
    [tokens, c.hidden, c.ffn, 'down proj'],
    [tokens, c.vocab, c.hidden, 'lm head'],
  ])
    if (!uniq.has(`${m}x${n}x${k}`)) uniq.set(`${m}x${n}x${k}`, { m, n, k, what });
  return [...uniq.values()];
}

module.exports = { CONFIGS, median, now, randomIds, toBf16, requireDist, gitCommit, findBlasDir, prepareFolder, Peer, ourGemmRate, gemmShapes };
