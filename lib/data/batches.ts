/**
 * Seeds and batches of the online stages. Everything random in an iteration
 * (which prompts, the sampling seeds, minibatch shuffles) is a pure function
 * of (seed, iteration, ...): nothing depends on what earlier iterations drew,
 * so a run resumed after iteration i draws what an uninterrupted run draws.
 * The supervised stages' batch plans are in sft-data.ts (`planSteps`,
 * `permutation`, `splitEval`, `seededRandom`).
 */
import { permutation } from './sft-data';

export { permutation, seededRandom, splitEval, planSteps } from './sft-data';

/** A 32-bit hash of a few integers: the seed of one piece of an iteration (pure in its arguments; every bit of each argument counts). */
export function mixSeed(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    const lo = x >>> 0, hi = Math.floor(x / 4294967296) >>> 0;
    for (const w of [lo, hi]) {
      h = Math.imul(h ^ w, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
    }
  }
  return h >>> 0;
}

/**
 * The prompts of iteration `iteration` (0-based): positions
 * [iteration * batchSize, (iteration + 1) * batchSize) of the endless
 * sequence of epochs, each epoch a permutation seeded by (seed, epoch).
 */
export function iterationPrompts(n: number, batchSize: number, iteration: number, seed: number): number[] {
  const out: number[] = [];
  let epoch = -1, order: number[] = [];
  for (let pos = iteration * batchSize; pos < (iteration + 1) * batchSize; pos++) {
    const e = Math.floor(pos / n);
    if (e !== epoch) (epoch = e), (order = permutation(n, mixSeed(seed, 0x9f0, e)));
    out.push(order[pos % n]);
  }
  return out;
}
