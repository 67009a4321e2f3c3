/**
 * Data-parallel steps of the supervised loop (docs/distributed.md). Every
 * rank plans the same global step (the same rows, the same loss
 * denominators); each runs the forward and backward of its own shard of
 * every micro-batch, so the gradients the ranks hold add up to the gradient
 * one process accumulates over the whole step: one sum over the world
 * (Trainer.allReduceGrads) before clipping and the optimizer step, and one
 * of the step's figures.
 */
import { RlhfError } from '../errors';
import { allReduceSum, broadcast, shardOf, type World } from '../engine/distributed';

/** The rows of each micro-batch that this rank runs (possibly none, in a short last micro-batch). */
export function shardMicroBatches(micro: number[][], w: World): number[][] {
  return micro.map((rows) => shardOf(rows, w));
}

/** Refuses a method whose loss is not a sum over rows (KTO's batch KL reference point) in a world of more than one. */
export function checkDataParallel(stage: string, supported: boolean | undefined, w: World): void {
  if (w.size > 1 && !supported)
    throw new RlhfError(
      'E_UNSUPPORTED',
      `${stage} does not train data-parallel yet (world of ${w.size} ranks from ${w.launcher}); run it as one process, without mpirun/srun (docs/distributed.md)`,
    );
}

/**
 * A step's sums added up over the world, and whether any rank was asked to
 * stop (so that every rank leaves the loop after the same step). The last
 * rank always holds a row of every micro-batch (its shard is never empty),
 * so its keys are the step's keys; they travel first, then one sum.
 */
export function reduceStep(sums: Record<string, number>, stop: boolean, w: World): { sums: Record<string, number>; stop: boolean } {
  const last = w.size - 1;
  let keys = Object.keys(sums).sort();
  const len = new Int32Array([Buffer.byteLength(JSON.stringify(keys))]);
  broadcast(len, last);
  const bytes = new Uint8Array(len[0]);
  if (w.rank === last) bytes.set(Buffer.from(JSON.stringify(keys)));
  broadcast(bytes, last);
  keys = JSON.parse(Buffer.from(bytes).toString('utf8')) as string[];
  const v = new Float64Array(keys.length + 1);
  keys.forEach((k, i) => (v[i] = sums[k] ?? 0));
  v[keys.length] = stop ? 1 : 0;
  allReduceSum(v);
  const out: Record<string, number> = {};
  keys.forEach((k, i) => (out[k] = v[i]));
  return { sums: out, stop: v[keys.length] > 0 };
}
