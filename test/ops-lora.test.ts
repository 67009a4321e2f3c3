// The fused LoRA ops against float64 references, on every kernel this CPU has.
//
// lora:          u = s x_lora A^T;  y = (y if accumulate) + x W^T + bias + u B^T
//                (PEFT's forward; W + s B A is never formed). Reference: the
//                same sums in float64 over the fp32 inputs (W widened from
//                bf16 where the case keeps it in bf16). Bound per element:
//                8 EPS32 times the sum of the magnitudes of the terms of that
//                element (any summation order), plus the rounding of u itself
//                carried through B.
// (lora_backward is checked against finite differences in ops-backward.test.ts.)
// Sizes are odd (SIMD tails), the output is a column slice of a wider matrix
// (ldy > out) and the input rows are strided (ldx > in): the layouts of the
// model's fused q|k|v and gate|up projections.
import t from 'tap';
import { EPS32, acrossKernels, copy, expectClose, op, Rng, strided } from './helpers/ref';

function bf16(x: Float32Array): { bits: Uint16Array; widened: Float32Array } {
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  const bits = new Uint16Array(x.length), widened = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    f[0] = x[i];
    bits[i] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) >>> 16;
    u[0] = bits[i] << 16;
    widened[i] = f[0];
  }
  return { bits, widened };
}

const CASES = [
  { n: 1, inDim: 5, out: 3, r: 1, ldx: 5, ldy: 3, bf16: false, accumulate: false, bias: true, xLora: false },
  { n: 19, inDim: 37, out: 23, r: 4, ldx: 40, ldy: 29, bf16: false, accumulate: true, bias: false, xLora: true },
  { n: 70, inDim: 64, out: 130, r: 8, ldx: 64, ldy: 131, bf16: true, accumulate: true, bias: true, xLora: false },
  { n: 33, inDim: 129, out: 17, r: 16, ldx: 129, ldy: 17, bf16: true, accumulate: false, bias: false, xLora: true },
  // in > 768: several K slabs, the adapter's r terms riding on the last one (rows in per-task A blocks, then in a shared pass)
  { n: 50, inDim: 1000, out: 70, r: 16, ldx: 1005, ldy: 75, bf16: false, accumulate: true, bias: true, xLora: false },
  { n: 26, inDim: 1600, out: 100, r: 5, ldx: 1600, ldy: 100, bf16: true, accumulate: false, bias: true, xLora: true },
];

for (const c of CASES) {
  t.test(`lora forward ${c.n}x${c.inDim}->${c.out} r${c.r}${c.bf16 ? ' bf16 W' : ''}${c.accumulate ? ' +y' : ''}${c.bias ? ' +bias' : ''}${c.xLora ? ' x_lora' : ''}`, async (t) => {
    const rng = new Rng(1000 + c.n);
    const s = 0.75;
    const x = strided(rng, c.n, c.inDim, c.ldx);
    const xl = c.xLora ? strided(rng, c.n, c.inDim, c.ldx) : null;
    const w = rng.normals(c.out * c.inDim, 0.5);
    const wq = c.bf16 ? bf16(w) : null;
    const wEff = wq ? wq.widened : w;
    const a = rng.normals(c.r * c.inDim, 0.3), b = rng.normals(c.out * c.r, 0.3);
    const bias = c.bias ? rng.normals(c.out) : undefined;
    const y0 = strided(rng, c.n, c.out, c.ldy);  // padding NaN: must stay untouched
    // float64 reference
    const uRef = new Float64Array(c.n * c.r), uTol = new Float64Array(c.n * c.r);
    const src = xl ?? x;
    for (let i = 0; i < c.n; i++)
      for (let j = 0; j < c.r; j++) {
        let acc = 0, mag = 0;
        for (let k = 0; k < c.inDim; k++) {
          const p = src[i * c.ldx + k] * a[j * c.inDim + k];
          acc += p;
          mag += Math.abs(p);
        }
        uRef[i * c.r + j] = s * acc;
        uTol[i * c.r + j] = 8 * EPS32 * (Math.abs(s) * mag + Math.abs(s * acc)) + 1e-30;
      }
    const yRef = new Float64Array(c.n * c.ldy).fill(NaN), yTol = new Float64Array(c.n * c.ldy);
    for (let i = 0; i < c.n; i++)
      for (let o = 0; o < c.out; o++) {
        let acc = c.accumulate ? y0[i * c.ldy + o] : 0, mag = Math.abs(acc), carry = 0;
        for (let k = 0; k < c.inDim; k++) {
          const p = x[i * c.ldx + k] * wEff[o * c.inDim + k];
          acc += p;
          mag += Math.abs(p);
        }
        if (bias) (acc += bias[o]), (mag += Math.abs(bias[o]));
        for (let j = 0; j < c.r; j++) {
          const p = uRef[i * c.r + j] * b[o * c.r + j];
          acc += p;
          mag += Math.abs(p);
          carry += uTol[i * c.r + j] * Math.abs(b[o * c.r + j]);  // u is rounded before it meets B
        }
        yRef[i * c.ldy + o] = acc;
        yTol[i * c.ldy + o] = 8 * EPS32 * mag + carry + 1e-30;
      }
    const inside = (i: number) => i % c.ldy < c.out;
    const idx = Array.from({ length: c.n * c.ldy }, (_, i) => i).filter(inside);
    acrossKernels(t, (isa) => {
      const u = new Float32Array(c.n * c.r), y = copy(y0);
      const args: Record<string, unknown> = { n: c.n, in: c.inDim, out: c.out, r: c.r, x, ldx: c.ldx, a, b, scale: s, u, y, ldy: c.ldy, accumulate: c.accumulate, ldw: c.inDim };
      if (wq) args.wBf16 = wq.bits;
      else args.w = w;
      if (bias) args.bias = bias;
      if (xl) args.xLora = xl;
      op('lora', args, isa);
      expectClose(t, u, uRef, uTol, `${isa}: u = s x_lora A^T`);
      expectClose(t, y, yRef, yTol, `${isa}: y`, idx);
      let kept = true;
      for (let i = 0; i < y.length; i++) if (!inside(i) && !Number.isNaN(y[i])) kept = false;
      t.ok(kept, `${isa}: columns past the slice (ldy padding) untouched`);
      return { u: { got: u, tol: uTol }, y: { got: Float32Array.from(idx, (i) => y[i]), tol: Float64Array.from(idx, (i) => yTol[i]) } };
    });
  });
}
