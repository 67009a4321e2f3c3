/** The world from the launcher's environment and the row shards (lib/engine/distributed.ts), without MPI. */
import t from 'tap';
import { launcherWorld, shardOf } from '../lib/engine/distributed';
import { isRlhfError } from '../lib/errors';

t.test('each launcher is read from its own variables; none: a world of one', async (t) => {
  t.same(launcherWorld({}), { size: 1, rank: 0, localRank: 0, launcher: null });
  t.same(launcherWorld({ OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_RANK: '3', OMPI_COMM_WORLD_LOCAL_RANK: '1' }), { size: 4, rank: 3, localRank: 1, launcher: 'openmpi' });
  t.same(launcherWorld({ PMI_SIZE: '2', PMI_RANK: '1' }), { size: 2, rank: 1, localRank: 0, launcher: 'pmi' });
  t.same(launcherWorld({ SLURM_STEP_NUM_TASKS: '8', SLURM_PROCID: '5', SLURM_LOCALID: '1' }), { size: 8, rank: 5, localRank: 1, launcher: 'slurm' });
  // A batch script is one process, whatever the job's task count.
  t.same(launcherWorld({ SLURM_NTASKS: '8', SLURM_PROCID: '0' }), { size: 1, rank: 0, localRank: 0, launcher: null });
  // OpenMPI started under srun sets both: mpirun's own variables win.
  t.equal(launcherWorld({ OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '0', SLURM_STEP_NUM_TASKS: '1', SLURM_PROCID: '0' }).launcher, 'openmpi');
});

t.test('bad values -> E_ARGUMENT naming the variable', async (t) => {
  for (const [env, want] of [
    [{ OMPI_COMM_WORLD_SIZE: 'two' }, /OMPI_COMM_WORLD_SIZE=two in the environment is not an integer >= 1/],
    [{ PMI_SIZE: '0' }, /PMI_SIZE=0 .* not an integer >= 1/],
    [{ OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '2' }, /OMPI_COMM_WORLD_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2/],
    [{ SLURM_STEP_NUM_TASKS: '2', SLURM_PROCID: '-1' }, /SLURM_PROCID=-1 .* not an integer >= 0/],
  ] as const) {
    try {
      launcherWorld(env);
      t.fail(`accepted ${JSON.stringify(env)}`);
    } catch (e) {
      t.ok(isRlhfError(e) && e.code === 'E_ARGUMENT', String(e));
      t.match((e as Error).message, want);
    }
  }
});

t.test('shards: contiguous, in order, covering every row once, sizes within one; the last rank never idles', async (t) => {
  for (let size = 1; size <= 5; size++)
    for (let len = 0; len <= 12; len++) {
      const rows = Array.from({ length: len }, (_, i) => i * 10);
      const parts = Array.from({ length: size }, (_, rank) => shardOf(rows, { size, rank }));
      t.same(parts.flat(), rows, `size ${size}, ${len} rows: the parts in rank order are the rows`);
      const lens = parts.map((p) => p.length);
      t.ok(Math.max(...lens) - Math.min(...lens) <= 1, `sizes ${lens}`);
      if (len > 0) t.ok(parts[size - 1].length > 0, 'the last rank has a row');
    }
});
