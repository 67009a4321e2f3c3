/**
 * The critic's starting point: the helpfulness reward model's score head.
 * (The reward source itself, reward adapters on the policy's own base
 * included, is lib/reward/options.ts's openRewardSource.)
 */
import { RlhfError } from '../../errors';
import { openModelFolder } from '../../model/folder';
import { isAdapterDir } from '../../model/peft';
import type { ModelConfig } from '../../model/config';
import type { ResolvedPpoConfig } from './config';

/** A PEFT adapter folder (adapter_config.json and no config.json of its own). */
export { isAdapterDir };

/**
 * Checks the reward-model folders against the base (E_MODEL) and returns
 * the helpfulness model's score head ([file, tensor]) when it is a folder
 * whose head can start the critic, else null.
 */
export function rewardModelHead(cfg: ResolvedPpoConfig, mcfg: ModelConfig): [string, string] | null {
  let rmHead: [string, string] | null = null;
  for (const [flag, dir] of [['--reward-model', cfg.rewardModel], ['--safety-model', cfg.safetyModel]] as const) {
    if (!dir || isAdapterDir(dir)) continue;
    const f = openModelFolder(dir);
    try {
      if (f.config.head !== 'score')
        throw new RlhfError('E_MODEL', `${flag} ${dir}: a reward model must be a *ForSequenceClassification folder or a PEFT adapter with a score head (this is a ${f.config.architecture})`, { where: dir });
      if (flag === '--reward-model') {
        const t = f.tensors.find((x) => x.canonical === 'score.weight');
        if (!t) throw new RlhfError('E_MODEL', `${dir}: no score.weight`, { where: dir });
        if (t.shape[t.shape.length - 1] !== mcfg.hiddenSize && !cfg.critic)
          throw new RlhfError(
            'E_MODEL',
            `${dir}: the reward model's hidden size (${t.shape[t.shape.length - 1]}) differs from the base's (${mcfg.hiddenSize}): its score head cannot start the critic; pass --critic`,
            { where: dir },
          );
        rmHead = [t.file, t.name];
      }
    } finally {
      f.close();
    }
  }
  return rmHead;
}
