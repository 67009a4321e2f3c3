// Random cases for every op of the op table, shared by scripts/gpu-check.js
// (CUDA op vs CPU op on a GPU machine) and test/cuda-ops.test.ts. Each case
// is { op, label, args, outputs, tol }: `args` are runOp's arguments (fresh
// typed arrays; the caller clones them per run), `outputs` the keys the op
// writes, `tol` the bound on max|got - ref| / max|ref| for each output
// (exact match for integer outputs).
//
// Tolerances: ops whose products run on bf16 tensor cores on the GPU (gemm,
// the LM head) are held to bf16 accuracy (2^-8 = 3.9e-3 per rounded input,
// grown over a sum): 2e-2 of the largest output. Everything else is fp32 on
// both backends with different summation orders / exp implementations: 1e-4
// for the attention and norm backward passes (long fp32 sums), 2e-5 otherwise.
// Reductions in fp64 (grad_norm): 1e-9.
'use strict';

const BF16 = 2e-2;
const F32 = 2e-5;
const F32_SUM = 1e-4;

/** mulberry32 with Box-Muller normals. */
class Rng {
  constructor(seed) {
    this.a = seed >>> 0;
  }
  next() {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  normal() {
    const u = this.next() + 1e-12, v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  int(lo, hi) {
    return lo + Math.floor(this.next() * (hi - lo));
  }
  normals(n, sd = 1, mean = 0) {
    const a = new Float32Array(n);
    for (let i = 0; i < n; ++i) a[i] = mean + sd * this.normal();
    return a;
  }
  uniforms(n, lo, hi) {
    const a = new Float32Array(n);
    for (let i = 0; i < n; ++i) a[i] = lo + (hi - lo) * this.next();
    return a;
  }
  ints(n, lo, hi) {
    const a = new Int32Array(n);
    for (let i = 0; i < n; ++i) a[i] = this.int(lo, hi);
    return a;
  }
  mask(n, pZero) {
    const a = new Float32Array(n);
    for (let i = 0; i < n; ++i) a[i] = this.next() < pZero ? 0 : 1;
    return a;
  }
}

/** bfloat16 bits of each float (round to nearest even). */
function toBf16(x) {
  const f = new Float32Array(1), u = new Uint32Array(f.buffer), out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; ++i) {
    f[0] = x[i];
    const b = u[0];
    out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

function ropeTables(maxPos, headDim, theta = 10000) {
  const half = headDim / 2, cos = new Float32Array(maxPos * half), sin = new Float32Array(maxPos * half);
  for (let p = 0; p < maxPos; ++p)
    for (let j = 0; j < half; ++j) {
      const a = p * Math.pow(theta, (-2 * j) / headDim);
      cos[p * half + j] = Math.cos(a);
      sin[p * half + j] = Math.sin(a);
    }
  return { cos, sin };
}

/** Padding mask [batch, seq]: each sequence has some left or right padding (never empty). */
function padMask(rng, batch, seq) {
  const m = new Uint8Array(batch * seq).fill(1);
  for (let b = 0; b < batch; ++b) {
    const pad = rng.int(0, Math.max(1, Math.floor(seq / 3)));
    const left = b % 2 === 1;
    for (let s = 0; s < pad; ++s) m[b * seq + (left ? s : seq - 1 - s)] = 0;
  }
  return m;
}

/**
 * Every case for every op. `run(name, args)` runs a CPU op (used to make the
 * forward outputs that a backward case needs, e.g. attention's lse).
 * `size` 'small' keeps the tests fast; 'full' adds larger shapes.
 */
function makeCases(run, size = 'full') {
  const full = size === 'full';
  const cases = [];
  const add = (op, label, args, outputs, tol) => cases.push({ op, label, args, outputs, tol });
  let seed = 1;

  // ---------------------------------------------------------------- gemm
  const gemmShapes = [
    [7, 13, 33],
    [1, 50, 19],
    [130, 257, 64],
    ...(full ? [[300, 200, 513], [512, 512, 512]] : []),
  ];
  for (const [m, n, k] of gemmShapes)
    for (const transA of [false, true])
      for (const transB of [false, true]) {
        const rng = new Rng(seed++);
        const lda = (transA ? m : k) + (m % 2), ldb = (transB ? k : n) + (n % 3 === 0 ? 1 : 0), ldc = n + 2;
        const a = rng.normals((transA ? k : m) * lda);
        const bf = rng.normals((transB ? n : k) * ldb);
        const bf16 = transB && m % 2 === 1;
        const accumulate = (m + n) % 2 === 0;
        const bias = n % 2 === 1 ? rng.normals(n) : undefined;
        const args = { transA, transB, m, n, k, a, lda, ldb, c: rng.normals(m * ldc), ldc, accumulate, bias };
        if (bf16) args.bBf16 = toBf16(bf);
        else args.b = bf;
        add('gemm', `${m}x${n}x${k} ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'}${bf16 ? ' bf16 B' : ''}${accumulate ? ' +C' : ''}${bias ? ' +bias' : ''}`, args, ['c'], BF16);
      }
  // ---------------------------------------------------------------- lora
  // n rows, in, out, r; odd sizes, a column slice of a wider output (ldy),
  // strided input rows (ldx), bf16 W, bias, accumulate, a separate adapter
  // input (dropout's x_lora).
  const loraShapes = [
    [7, 33, 13, 4],
    [130, 64, 257, 8],
    ...(full ? [[300, 513, 200, 16], [257, 128, 384, 64]] : []),
  ];
  for (const [n, inDim, out, r] of loraShapes)
    for (const variant of [0, 1]) {
      const rng = new Rng(seed++);
      const ldx = inDim + variant, ldy = out + 3 * variant, ldw = inDim + (n % 2);
      const w = rng.normals(out * ldw, 0.5);
      const args = {
        n, in: inDim, out, r, x: rng.normals(n * ldx), ldx, ldw, a: rng.normals(r * inDim, 0.3), b: rng.normals(out * r, 0.3),
        scale: variant ? 0.5 : 2, u: rng.normals(n * r), y: rng.normals(n * ldy), ldy, accumulate: variant === 1,
        bias: variant === 0 ? rng.normals(out) : undefined, xLora: variant === 1 ? rng.normals(n * ldx) : undefined,
      };
      if (variant === 1) args.wBf16 = toBf16(w);
      else args.w = w;
      add('lora', `${n}x${inDim}->${out} r${r}${variant ? ' bf16 W, x_lora, ld, +y' : ' +bias'}`, args, ['u', 'y'], BF16);
      const rb = new Rng(seed++);
      const lddy = out + variant, lddx = inDim + 2 * variant;
      add('lora_backward', `${n}x${inDim}->${out} r${r}${variant ? ' ld, dx overwritten' : ''}`, {
        n, in: inDim, out, r, dy: rb.normals(n * lddy), lddy, xLora: rb.normals(n * ldx), ldx, u: rb.normals(n * r),
        a: rb.normals(r * inDim, 0.3), b: rb.normals(out * r, 0.3), scale: variant ? 0.5 : 2, da: rb.normals(r * inDim),
        db: rb.normals(out * r), du: new Float32Array(n * r), dx: rb.normals(n * lddx), lddx, accumulateDx: variant === 0,
      }, ['da', 'db', 'du', 'dx'], BF16);
    }
  // ---------------------------------------------------------------- xent
  for (const [n, vocab, ld, invT] of [[3, 7, 7, 1], [17, 1000, 1003, 1 / 0.7], ...(full ? [[64, 32000, 32000, 1]] : [])]) {
    const rng = new Rng(seed++);
    const targets = rng.ints(n, 0, vocab);
    targets[n - 1] = -1;
    add('logits_xent', `${n}x${vocab} ld ${ld} 1/T ${invT.toFixed(2)}`, {
      n, vocab, ld, z: rng.normals(n * ld, 2), targets, dlogp: rng.normals(n), invTemperature: invT,
      logp: new Float32Array(n), entropy: new Float32Array(n), lse: new Float32Array(n),
    }, ['z', 'logp', 'entropy', 'lse'], F32_SUM);
  }
  for (const [n, dim, ld] of [[5, 7, 7], [300, 129, 131]]) {
    const rng = new Rng(seed++);
    add('bias_grad', `${n}x${dim} ld ${ld}`, { n, dim, dy: rng.normals(n * ld), ld, db: rng.normals(dim) }, ['db'], F32);
  }

  // ---------------------------------------------------------------- embedding
  for (const [n, dim, rows, pos] of [[9, 17, 5, false], [64, 257, 50, true]]) {
    const rng = new Rng(seed++);
    const args = { n, dim, rows, ids: rng.ints(n, 0, rows), table: rng.normals(rows * dim), out: new Float32Array(n * dim) };
    if (pos) Object.assign(args, { positions: rng.ints(n, 0, 40), posTable: rng.normals(40 * dim) });
    add('embedding', `${n} ids x ${dim}${pos ? ' + positions' : ''}`, args, ['out'], F32);
    const bargs = { n, dim, rows, ids: args.ids, dout: rng.normals(n * dim), dtable: rng.normals(rows * dim) };
    if (pos) Object.assign(bargs, { positions: args.positions, dposTable: rng.normals(40 * dim) });
    add('embedding_backward', `${n} ids (repeats) x ${dim}${pos ? ' + positions' : ''}`, bargs, pos ? ['dtable', 'dposTable'] : ['dtable'], F32);
  }

  // ---------------------------------------------------------------- norms
  for (const [n, dim] of [[3, 7], [33, 1000], ...(full ? [[257, 4096]] : [])]) {
    const rng = new Rng(seed++);
    const withDelta = n % 2 === 1;
    const residual = rng.normals(n * dim, 1, 0.5), delta = withDelta ? rng.normals(n * dim) : undefined;
    add('rmsnorm', `${n}x${dim}${withDelta ? ' + residual add' : ''}`,
      { n, dim, eps: 1e-5, residual, delta, weight: rng.normals(dim, 0.2, 1), out: new Float32Array(n * dim), rstd: new Float32Array(n) },
      ['residual', 'out', 'rstd'], F32);
    add('layernorm', `${n}x${dim}${withDelta ? ' + residual add' : ''}`,
      { n, dim, eps: 1e-5, residual: rng.normals(n * dim, 1, 3), delta, weight: rng.normals(dim, 0.2, 1), bias: rng.normals(dim, 0.1),
        out: new Float32Array(n * dim), mean: new Float32Array(n), rstd: new Float32Array(n) },
      ['residual', 'out', 'mean', 'rstd'], F32);
    const x = rng.normals(n * dim), rstd = new Float32Array(n), mean = new Float32Array(n), rstdLn = new Float32Array(n);
    for (let i = 0; i < n; ++i) {
      let ss = 0, s = 0;
      for (let j = 0; j < dim; ++j) (ss += x[i * dim + j] ** 2), (s += x[i * dim + j]);
      rstd[i] = 1 / Math.sqrt(ss / dim + 1e-5);
      mean[i] = s / dim;
      let v = 0;
      for (let j = 0; j < dim; ++j) v += (x[i * dim + j] - mean[i]) ** 2;
      rstdLn[i] = 1 / Math.sqrt(v / dim + 1e-5);
    }
    const weight = rng.normals(dim, 0.2, 1), dout = rng.normals(n * dim);
    add('rmsnorm_backward', `${n}x${dim}`, { n, dim, x, weight, rstd, dout, dx: rng.normals(n * dim), dweight: rng.normals(dim) }, ['dx', 'dweight'], F32_SUM);
    add('layernorm_backward', `${n}x${dim}`,
      { n, dim, x, weight, mean, rstd: rstdLn, dout, dx: rng.normals(n * dim), dweight: rng.normals(dim), dbias: rng.normals(dim) },
      ['dx', 'dweight', 'dbias'], F32_SUM);
  }

  // ---------------------------------------------------------------- rope
  for (const [n, heads, headDim, extra, inverse] of [[5, 3, 8, 0, false], [70, 12, 64, 64, true], [33, 6, 128, 0, false]]) {
    const rng = new Rng(seed++);
    const ld = heads * headDim + extra;
    const { cos, sin } = ropeTables(200, headDim);
    add('rope', `${n} rows x ${heads} heads x ${headDim}${inverse ? ' inverse' : ''}`,
      { n, heads, headDim, x: rng.normals(n * ld), ld, positions: rng.ints(n, 0, 200), cos, sin, inverse }, ['x'], F32);
  }

  // ---------------------------------------------------------------- attention
  const attnShapes = [
    // batch, seq, heads, kvHeads, headDim, masked
    [2, 37, 4, 2, 64, true],
    [1, 70, 2, 1, 128, false],
    [1, 9, 3, 3, 40, true],
    [3, 1, 2, 1, 16, false],
    ...(full ? [[2, 300, 8, 2, 128, true], [1, 257, 4, 4, 64, false]] : []),
  ];
  for (const [batch, seq, heads, kvHeads, headDim, masked] of attnShapes) {
    const rng = new Rng(seed++);
    // One fused qkv row per token (q heads, k heads, v heads), as the model keeps them.
    const ld = (heads + 2 * kvHeads) * headDim;
    const qkv = rng.normals(batch * seq * ld);
    const q = qkv, k = qkv.subarray(heads * headDim), v = qkv.subarray((heads + kvHeads) * headDim);
    const mask = masked ? padMask(rng, batch, seq) : undefined;
    const scale = 1 / Math.sqrt(headDim), ldo = heads * headDim;
    const fwd = { batch, seq, heads, kvHeads, headDim, scale, q, k, v, ldq: ld, ldk: ld, ldv: ld, mask, ldo };
    const label = `b${batch} T${seq} h${heads}/${kvHeads} d${headDim}${masked ? ' padded' : ''}`;
    add('attention', label, { ...fwd, out: new Float32Array(batch * seq * ldo), lse: new Float32Array(batch * heads * seq) }, ['out', 'lse'], F32_SUM);
    const out = new Float32Array(batch * seq * ldo), lse = new Float32Array(batch * heads * seq);
    run('attention', { ...fwd, out, lse });
    const grads = new Float32Array(batch * seq * ld);  // dq|dk|dv in one fused row, like qkv
    add('attention_backward', label,
      { ...fwd, out, dout: rng.normals(batch * seq * ldo), lse, dq: grads, dk: grads.subarray(heads * headDim), dv: grads.subarray((heads + kvHeads) * headDim) },
      ['dq'], F32_SUM);  // dq, dk, dv all live in the `dq` buffer
  }
  for (const [batch, heads, kvHeads, headDim, capacity, masked] of [[2, 4, 2, 64, 40, true], [3, 2, 1, 128, 300, false], [1, 3, 3, 24, 5, false]]) {
    const rng = new Rng(seed++);
    const length = new Int32Array(batch);
    for (let b = 0; b < batch; ++b) length[b] = rng.int(1, capacity + 1);
    const ldq = heads * headDim + 3;
    const cacheMask = masked ? new Uint8Array(batch * capacity).fill(1) : undefined;
    if (cacheMask) for (let i = 0; i < cacheMask.length; ++i) if (rng.next() < 0.2) cacheMask[i] = 0;
    add('kv_attention', `b${batch} h${heads}/${kvHeads} d${headDim} cap ${capacity}${masked ? ' masked' : ''}`,
      { batch, heads, kvHeads, headDim, capacity, scale: 1 / Math.sqrt(headDim), q: rng.normals(batch * ldq), ldq,
        kCache: rng.normals(batch * kvHeads * capacity * headDim), vCache: rng.normals(batch * kvHeads * capacity * headDim), length, cacheMask,
        out: new Float32Array(batch * heads * headDim), ldo: heads * headDim },
      ['out'], F32_SUM);
  }

  // ---------------------------------------------------------------- activations
  for (const [n, dim, fused] of [[3, 7, false], [17, 257, true], ...(full ? [[256, 2048, true]] : [])]) {
    const rng = new Rng(seed++);
    const ldIn = fused ? 2 * dim + 1 : dim;
    const buf = rng.normals(n * ldIn, 3);
    const gate = buf, up = fused ? buf.subarray(dim) : rng.normals(n * dim, 2);
    const ldOut = dim + 1;
    const lbl = `${n}x${dim}${fused ? ' fused gate|up' : ''}`;
    add('swiglu', lbl, { n, dim, gate, up, ldIn, out: new Float32Array(n * ldOut), ldOut }, ['out'], F32);
    const dbuf = new Float32Array(n * ldIn);
    add('swiglu_backward', lbl,
      { n, dim, gate, up, ldIn, dout: rng.normals(n * ldOut), ldOut, dgate: dbuf, dup: fused ? dbuf.subarray(dim) : new Float32Array(n * dim) },
      fused ? ['dgate'] : ['dgate', 'dup'], F32);
    add('gelu', `${n}x${dim}`, { n, dim, x: rng.normals(n * ldIn, 3), ldIn, out: new Float32Array(n * ldOut), ldOut }, ['out'], F32);
    add('gelu_backward', `${n}x${dim}`,
      { n, dim, x: rng.normals(n * ldIn, 3), ldIn, dout: rng.normals(n * ldOut), ldOut, dx: new Float32Array(n * ldIn) }, ['dx'], F32);
    add('add', `${n}x${dim}`, { n, dim, x: rng.normals(n * dim), y: rng.normals(n * dim) }, ['y'], F32);
  }

  // ---------------------------------------------------------------- heads
  const headShapes = [[5, 16, 37, 1], [130, 64, 1000, 0.7], ...(full ? [[300, 256, 5003, 1], [64, 512, 32000, 1]] : [])];
  for (const [n, dim, vocab, temp] of headShapes) {
    const rng = new Rng(seed++);
    const hidden = rng.normals(n * dim), weight = rng.normals(vocab * dim, 0.5 / Math.sqrt(dim) * 4);
    const targets = rng.ints(n, 0, vocab);
    targets[0] = -1;  // an ignored position
    if (n > 2) targets[n - 1] = vocab - 1;
    const invTemperature = 1 / temp;
    const label = `${n} rows, dim ${dim}, vocab ${vocab}${temp !== 1 ? `, T=${temp}` : ''}`;
    add('lm_head_logp', label,
      { n, dim, vocab, hidden, weight, targets, logp: new Float32Array(n), entropy: new Float32Array(n), lse: new Float32Array(n), invTemperature },
      ['logp', 'entropy', 'lse'], BF16);
    const logp = new Float32Array(n), entropy = new Float32Array(n), lse = new Float32Array(n);
    run('lm_head_logp', { n, dim, vocab, hidden, weight, targets, logp, entropy, lse, invTemperature });
    const bf16 = vocab % 2 === 1;
    const bargs = { n, dim, vocab, hidden, targets, lse, entropy, dlogp: rng.normals(n), dentropy: rng.normals(n, 0.3), invTemperature,
      dhidden: rng.normals(n * dim), dweight: rng.normals(vocab * dim) };
    if (bf16) bargs.weightBf16 = toBf16(weight);
    else bargs.weight = weight;
    add('lm_head_logp_backward', label + (bf16 ? ' bf16 W' : ''), bargs, ['dhidden', 'dweight'], BF16);
    add('value_head', `${n} rows, dim ${dim}`, { n, dim, hidden, weight: rng.normals(dim), bias: 0.25, value: new Float32Array(n) }, ['value'], F32);
    add('value_head_backward', `${n} rows, dim ${dim}`,
      { n, dim, hidden, weight: rng.normals(dim), dvalue: rng.normals(n), dhidden: rng.normals(n * dim), dweight: rng.normals(dim), dbias: new Float32Array([0.5]) },
      ['dhidden', 'dweight', 'dbias'], F32);
  }

  // ---------------------------------------------------------------- sampling
  const sampleCases = [
    // n, vocab, temperature, topK, topP, ties
    [4, 50, 0, 0, 1, false],
    [6, 1000, 0.8, 0, 1, false],
    [5, 1000, 1, 50, 1, false],
    [5, 1000, 0.7, 0, 0.9, false],
    [4, 300, 1.2, 20, 0.8, false],
    [8, 64, 1, 0, 0.95, true],
    [3, 97, 0, 0, 1, true],
    ...(full ? [[4, 32000, 0.9, 40, 0.95, false], [2, 128256, 1, 0, 1, false]] : []),
  ];
  for (const [n, vocab, temperature, topK, topP, ties] of sampleCases) {
    const rng = new Rng(seed++);
    const ld = vocab + 3;
    const logits = rng.normals(n * ld, 2);
    if (ties) for (let i = 0; i < logits.length; ++i) logits[i] = Math.round(logits[i]);  // many equal logits
    const seeds = new BigUint64Array(n);
    for (let i = 0; i < n; ++i) seeds[i] = BigInt(1000 + 17 * i + seed);
    add('sample', `${n}x${vocab} T=${temperature} k=${topK} p=${topP}${ties ? ' ties' : ''}`,
      { n, vocab, logits, ld, temperature, topK, topP, seeds, step: 3, out: new Int32Array(n), outLogp: new Float32Array(n) },
      ['out', 'outLogp'], F32);
  }

  // ---------------------------------------------------------------- losses
  for (const n of [1, 37, 5000, ...(full ? [300000] : [])]) {
    const rng = new Rng(seed++);
    const masked = n > 1;
    const mask = masked ? rng.mask(n, 0.3) : undefined;
    add('sft_loss', `n ${n}${masked ? ' masked' : ''}`,
      { n, logp: rng.normals(n, 1, -2), mask, denom: n % 2 ? 0 : 123, gradScale: 0.5, loss: new Float32Array(1), dlogp: new Float32Array(n), stats: new Float32Array(2) },
      ['loss', 'dlogp', 'stats'], F32);
    const withValues = n !== 37;
    const old = rng.normals(n, 1, -2);
    const logp = new Float32Array(n);
    for (let i = 0; i < n; ++i) logp[i] = old[i] + 0.3 * rng.normal();
    const ppo = { n, logp, oldLogp: old, advantages: rng.normals(n), mask, clipRange: 0.2, clipRangeValue: 0.2, vfCoef: 0.1, klCoef: 0.05,
      entCoef: 0.01, gradScale: 2, klEstimator: ['k1', 'k2', 'k3'][n % 3], refLogp: rng.normals(n, 1, -2), entropy: rng.uniforms(n, 0, 3),
      loss: new Float32Array(1), dlogp: new Float32Array(n), dvalues: new Float32Array(n), dentropy: new Float32Array(n), stats: new Float32Array(9) };
    if (withValues) Object.assign(ppo, { values: rng.normals(n), oldValues: rng.normals(n), returns: rng.normals(n) });
    add('ppo_loss', `n ${n}${masked ? ' masked' : ''} ${ppo.klEstimator}${withValues ? ' + value loss' : ''}`, ppo,
      ['loss', 'dlogp', 'dvalues', 'dentropy', 'stats'], F32);
    const b = Math.max(1, Math.floor(n / 7));
    add('pairwise_loss', `b ${b}`,
      { b, chosen: rng.normals(b), rejected: rng.normals(b), margin: b > 3 ? rng.uniforms(b, 0, 1) : undefined, gradScale: 1,
        loss: new Float32Array(1), dchosen: new Float32Array(b), drejected: new Float32Array(b), stats: new Float32Array(4) },
      ['loss', 'dchosen', 'drejected', 'stats'], F32);
    add('dpo_loss', `b ${b}`,
      { b, policyChosen: rng.normals(b, 5, -50), policyRejected: rng.normals(b, 5, -50), refChosen: rng.normals(b, 5, -50), refRejected: rng.normals(b, 5, -50),
        beta: 0.1, labelSmoothing: b % 2 ? 0 : 0.1, gradScale: 1, loss: new Float32Array(1), dpolicyChosen: new Float32Array(b),
        dpolicyRejected: new Float32Array(b), stats: new Float32Array(6) },
      ['loss', 'dpolicyChosen', 'dpolicyRejected', 'stats'], F32);
  }

  // ---------------------------------------------------------------- the DPO family and KTO
  // Fixed seeds of their own, so the cases above keep their random numbers.
  {
    const rng = new Rng(0xd90f);
    const lens = (b) => Float32Array.from(rng.ints(b, 1, 61));
    // lossType: 1 robust, 2 hinge, 3 ipo, 4 simpo, 5 orpo (PrefLoss's order); simpo and orpo without references.
    for (const [type, b] of [[1, 7], [2, 33], [3, 12], [4, 9], [5, 40], [0, 5]]) {
      const refFree = type === 4 || type === 5;
      const lc = lens(b), lr = lens(b);
      // Per-token means near -1 (ORPO's log(1 - e^a) needs a < 0).
      const pc = lc.map((n) => -n * (0.5 + rng.next())), pr = lr.map((n) => -n * (0.5 + rng.next()));
      add('dpo_loss', `type ${type} b ${b}`, {
        b, lossType: type, policyChosen: pc, policyRejected: pr,
        ...(refFree ? {} : { refChosen: pc.map((x) => x + rng.normal()), refRejected: pr.map((x) => x + rng.normal()) }),
        ...(type >= 3 || type === 0 ? { lenChosen: lc, lenRejected: lr } : {}),
        beta: type === 4 ? 2 : 0.5, labelSmoothing: type === 1 || type === 4 ? 0.1 : 0, gamma: type === 4 ? 0.5 : 0, gradScale: 0.5,
        loss: new Float32Array(1), dpolicyChosen: new Float32Array(b), dpolicyRejected: new Float32Array(b), stats: new Float32Array(6),
      }, ['loss', 'dpolicyChosen', 'dpolicyRejected', 'stats'], F32);
    }
    for (const b of [6, 50]) {
      const policy = rng.normals(b, 5, -40);
      add('kto_loss', `b ${b}`, {
        b, policy, ref: policy.map((x) => x + rng.normal()), desirable: Float32Array.from(rng.ints(b, 0, 2)), kl: 0.3, beta: 0.5,
        desirableWeight: 1.33, undesirableWeight: 1, gradScale: 1, loss: new Float32Array(1), dpolicy: new Float32Array(b), stats: new Float32Array(6),
      }, ['loss', 'dpolicy', 'stats'], F32);
    }
  }

  // ---------------------------------------------------------------- label smoothing (mean_logp and its gradient)
  // Fixed seeds of their own, so the cases above keep their random numbers.
  {
    const rng = new Rng(0x15ab);
    for (const [n, vocab, ld, invT] of [[5, 37, 40, 1], [9, 1000, 1000, 1 / 0.8]]) {
      const targets = rng.ints(n, 0, vocab);
      targets[1] = -1;
      add('logits_xent', `${n}x${vocab} ld ${ld} 1/T ${invT.toFixed(2)}, label smoothing`, {
        n, vocab, ld, z: rng.normals(n * ld, 2), targets, dlogp: rng.normals(n), dmeanLogp: rng.normals(n), invTemperature: invT,
        logp: new Float32Array(n), lse: new Float32Array(n), meanLogp: new Float32Array(n),
      }, ['z', 'logp', 'lse', 'meanLogp'], F32_SUM);
    }
    for (const [n, dim, vocab] of [[6, 16, 37], [70, 64, 3000]]) {
      const hidden = rng.normals(n * dim), weight = rng.normals(vocab * dim, 2 / Math.sqrt(dim));
      const targets = rng.ints(n, 0, vocab);
      targets[0] = -1;
      const label = `${n} rows, dim ${dim}, vocab ${vocab}, mean_logp`;
      add('lm_head_logp', label, { n, dim, vocab, hidden, weight, targets, logp: new Float32Array(n), lse: new Float32Array(n), meanLogp: new Float32Array(n) }, ['logp', 'lse', 'meanLogp'], BF16);
      const lse = new Float32Array(n), logp = new Float32Array(n);
      run('lm_head_logp', { n, dim, vocab, hidden, weight, targets, logp, lse });
      add('lm_head_logp_backward', label, { n, dim, vocab, hidden, weight, targets, lse, dlogp: rng.normals(n), dmeanLogp: rng.normals(n), dhidden: rng.normals(n * dim), dweight: rng.normals(vocab * dim) },
        ['dhidden', 'dweight'], BF16);
    }
    for (const n of [1, 5000]) {
      add('sft_loss', `n ${n}, label smoothing 0.2`, {
        n, logp: rng.normals(n, 1, -2), meanLogp: rng.normals(n, 1, -6), mask: n > 1 ? rng.mask(n, 0.3) : undefined, labelSmoothing: 0.2, gradScale: 0.5,
        loss: new Float32Array(1), dlogp: new Float32Array(n), dmeanLogp: new Float32Array(n), stats: new Float32Array(3),
      }, ['loss', 'dlogp', 'dmeanLogp', 'stats'], F32);
    }
  }

  // ---------------------------------------------------------------- per-row reductions (loss family)
  // rows x cols as a forward's [batch, seq]: completion masks (DPO sums),
  // one-hot rows (reward at the last token), general weights; masked-out x is NaN.
  for (const [rows, cols, kind] of [[4, 37, 'mask'], [6, 20, 'onehot'], [33, 300, 'weights'], ...(full ? [[64, 4096, 'mask'], [2048, 7, 'onehot']] : [])]) {
    const rng = new Rng(seed++);
    const w = new Float32Array(rows * cols);
    for (let r = 0; r < rows; ++r) {
      if (kind === 'onehot') w[r * cols + rng.int(0, cols)] = 1;
      else if (kind === 'mask') {
        const from = rng.int(0, cols), to = rng.int(from, cols + 1);
        w.fill(1, r * cols + from, r * cols + to);
      } else for (let c = 0; c < cols; ++c) w[r * cols + c] = rng.next() < 0.3 ? 0 : rng.normal();
    }
    const x = rng.normals(rows * cols, 2, -3);
    for (let i = 0; i < x.length; ++i) if (w[i] === 0) x[i] = NaN;
    add('row_dot', `${rows}x${cols} ${kind}`, { rows, cols, x, w, out: new Float32Array(rows) }, ['out'], F32);
    add('row_dot_backward', `${rows}x${cols} ${kind}`, { rows, cols, w, dout: rng.normals(rows), dx: rng.normals(rows * cols) }, ['dx'], F32);
  }

  // ---------------------------------------------------------------- optimizers
  for (const n of [1, 1000, 100003, ...(full ? [3000017] : [])]) {
    const rng = new Rng(seed++);
    add('adamw', `n ${n}`,
      { n, param: rng.normals(n), grad: rng.normals(n), m: rng.normals(n, 0.1), v: rng.uniforms(n, 0, 0.1), lr: 1e-3, beta1: 0.9, beta2: 0.999,
        eps: 1e-8, weightDecay: 0.01, step: 7, gradScale: 0.5 },
      ['param', 'm', 'v'], F32);
    add('sgd', `n ${n} momentum`,
      { n, param: rng.normals(n), grad: rng.normals(n), lr: 1e-2, momentum: 0.9, dampening: 0.1, weightDecay: 1e-4, momentumBuf: rng.normals(n), step: 3, gradScale: 1 },
      ['param', 'momentumBuf'], F32);
    add('grad_norm', `n ${n}`, { n, grad: rng.normals(n), out: new Float64Array([1.5]) }, ['out'], 1e-9);
    add('scale', `n ${n} clip`, { n, x: rng.normals(n), sumsq: new Float64Array([n * 4]), maxNorm: 1 }, ['x'], F32);
    add('scale', `n ${n} factor`, { n, x: rng.normals(n), factor: 0.3 }, ['x'], F32);
  }
  return cases;
}

/** A deep copy of a case's arguments (typed arrays copied, views of one buffer kept as views of one copy). */
function cloneArgs(args) {
  const buffers = new Map();
  const out = {};
  for (const [k, v] of Object.entries(args)) {
    if (ArrayBuffer.isView(v)) {
      let copy = buffers.get(v.buffer);
      if (!copy) {
        copy = v.buffer.slice(0);
        buffers.set(v.buffer, copy);
      }
      out[k] = new v.constructor(copy, v.byteOffset, v.length);
    } else {
      out[k] = v;
    }
  }
  return out;
}

/**
 * max |got - ref| / max |ref| over the finite entries; non-finite entries must
 * match exactly (same infinity, or both NaN). Integer arrays: the count of
 * differing entries. Returns { err, mismatches }.
 */
function compare(got, ref) {
  if (got instanceof Int32Array || got instanceof Uint8Array) {
    let bad = 0;
    for (let i = 0; i < ref.length; ++i) if (got[i] !== ref[i]) ++bad;
    return { err: bad, mismatches: bad, exact: true };
  }
  let maxRef = 0, maxErr = 0, mismatches = 0;
  for (let i = 0; i < ref.length; ++i) if (Number.isFinite(ref[i])) maxRef = Math.max(maxRef, Math.abs(ref[i]));
  for (let i = 0; i < ref.length; ++i) {
    const a = got[i], b = ref[i];
    if (!Number.isFinite(b) || !Number.isFinite(a)) {
      if (!(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)))) ++mismatches;
      continue;
    }
    maxErr = Math.max(maxErr, Math.abs(a - b));
  }
  return { err: maxRef > 0 ? maxErr / maxRef : maxErr, mismatches, exact: false };
}

/**
 * Runs one case on the CPU and on `device` (through run(name, args)) from
 * identical inputs and compares every output. Returns a result record.
 */
function checkCase(c, run, device) {
  const ref = cloneArgs(c.args), got = cloneArgs(c.args);
  run(c.op, ref);
  const t0 = process.hrtime.bigint();
  run(c.op, { ...got, device });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const outputs = {};
  let pass = true, worst = 0;
  for (const key of c.outputs) {
    const r = compare(got[key], ref[key]);
    const ok = r.mismatches === 0 && (r.exact || r.err <= c.tol);
    outputs[key] = { err: r.err, mismatches: r.mismatches, ok };
    if (!r.exact) worst = Math.max(worst, r.err);
    pass = pass && ok;
  }
  return { op: c.op, case: c.label, device, tol: c.tol, worst, pass, ms, outputs };
}

module.exports = { Rng, toBf16, makeCases, cloneArgs, compare, checkCase, TOL: { BF16, F32, F32_SUM } };
