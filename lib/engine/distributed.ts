/**
 * The process world for data-parallel training (docs/distributed.md). A
 * launcher (mpirun, srun) says in the environment how many ranks it started
 * and which one this is; with more than one, the addon loads OpenMPI at run
 * time and the collectives below run over it. Without a launcher (or with a
 * world of one) nothing is loaded and every call is the identity, so a
 * single process behaves exactly as it does without MPI.
 */
import { callNative, RlhfError } from '../errors';
import { native } from '../native';
import { EXIT_SIGINT, EXIT_SIGTERM } from '../run/signals';

export type Launcher = 'openmpi' | 'pmi' | 'slurm';

/** What the launcher's environment says, before MPI is touched. */
export interface LauncherWorld {
  size: number;
  rank: number;
  /** Rank among the ranks on this node (picks the GPU when there are several). */
  localRank: number;
  launcher: Launcher | null;
}

export interface World extends LauncherWorld {
  /** The MPI library in use (world of more than one), else null. */
  mpi: { library: string; version: string } | null;
}

function envInt(env: NodeJS.ProcessEnv, name: string, min: number): number | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new RlhfError('E_ARGUMENT', `${name}=${v} in the environment is not an integer >= ${min} (set by the launcher: mpirun, srun)`);
  return n;
}

/**
 * The world from the launcher's variables: OpenMPI's mpirun (OMPI_COMM_WORLD_*),
 * PMI (MPICH's hydra, srun --mpi=pmi2: PMI_SIZE, PMI_RANK) or a Slurm step
 * (srun: SLURM_STEP_NUM_TASKS, SLURM_PROCID, SLURM_LOCALID). Slurm's job-wide
 * SLURM_NTASKS is not read: a batch script itself is one process.
 */
export function launcherWorld(env: NodeJS.ProcessEnv = process.env): LauncherWorld {
  const pick = (launcher: Launcher, size: string, rank: string, local: string): LauncherWorld | null => {
    const n = envInt(env, size, 1);
    if (n === undefined) return null;
    const r = envInt(env, rank, 0) ?? 0;
    if (r >= n) throw new RlhfError('E_ARGUMENT', `${rank}=${r} is not below ${size}=${n} in the environment`);
    return { size: n, rank: r, localRank: envInt(env, local, 0) ?? 0, launcher };
  };
  return (
    pick('openmpi', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_LOCAL_RANK') ??
    pick('pmi', 'PMI_SIZE', 'PMI_RANK', 'MPI_LOCALRANKID') ??
    pick('slurm', 'SLURM_STEP_NUM_TASKS', 'SLURM_PROCID', 'SLURM_LOCALID') ?? { size: 1, rank: 0, localRank: 0, launcher: null }
  );
}

let current: World | undefined;

/**
 * This process's world; with more than one rank, MPI is initialized on the
 * first call (and finalized at a clean exit; a rank that exits with an error
 * does not finalize, and the launcher then ends the whole job).
 */
export function world(): World {
  if (current) return current;
  const w = launcherWorld();
  if (w.size === 1) return (current = { ...w, mpi: null });
  const got = callNative(() => native().commInit());
  if (got.size !== w.size || got.rank !== w.rank)
    throw new RlhfError('E_INTERNAL', `MPI reports rank ${got.rank} of ${got.size} but the launcher's environment (${w.launcher}) says rank ${w.rank} of ${w.size}`);
  process.on('exit', (code) => {
    // A run stopped by SIGINT/SIGTERM ends cleanly on every rank after the same step (its exit codes).
    // A rank that fails exits without finalizing: the launcher (mpirun) sees a rank end with an error
    // and ends the whole job, so no other rank waits forever in a collective; the addon never ends the process itself.
    if (code === 0 || code === EXIT_SIGINT || code === EXIT_SIGTERM) native().commFinalize();
  });
  return (current = { ...w, mpi: { library: got.library, version: got.version } });
}

/** Rank 0, or the only process: the one that writes files and logs. */
export function isRoot(): boolean {
  return world().rank === 0;
}

/** Sums an array over every rank, in place (nothing to do in a world of one). */
export function allReduceSum(data: Float32Array | Float64Array): void {
  if (world().size > 1) callNative(() => native().commAllReduce(data, 'sum'));
}

/** The largest value of each element over every rank, in place. */
export function allReduceMax(data: Float64Array): void {
  if (world().size > 1) callNative(() => native().commAllReduce(data, 'max'));
}

/** Root's contents into every rank's array, in place. */
export function broadcast(data: Float32Array | Float64Array | Uint8Array | Int32Array, root = 0): void {
  if (world().size > 1) callNative(() => native().commBroadcast(data, root));
}

export function barrier(): void {
  if (world().size > 1) callNative(() => native().commBarrier());
}

/**
 * This rank's share of one micro-batch's rows: a contiguous slice, the same
 * on every run, with sizes differing by at most one (rank r of n takes
 * [floor(r*len/n), floor((r+1)*len/n))).
 */
export function shardOf<T>(rows: readonly T[], w: Pick<World, 'size' | 'rank'> = world()): T[] {
  const lo = Math.floor((w.rank * rows.length) / w.size), hi = Math.floor(((w.rank + 1) * rows.length) / w.size);
  return rows.slice(lo, hi);
}
