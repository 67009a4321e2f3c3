/**
 * PPO's reward source and the critic's starting point: reward models given
 * as folders or as PEFT adapters on the policy's own base (frozen adapters
 * `reward:<part>`, no second copy of the base), combined as in Llama 2 with
 * two.
 */
import { RlhfError } from '../../errors';
import type { Model } from '../../engine/model';
import { openModelFolder } from '../../model/folder';
import { adapterHead, isAdapterDir } from '../../model/peft';
import type { ModelConfig } from '../../model/config';
import { combineRewards, rewardModels, type RewardInput, type RewardSource } from '../../reward/sources';
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

/**
 * Reward models on the shared base: each part that is a PEFT adapter with a
 * score head is loaded as a frozen adapter (`reward:<part>`) on the policy's
 * base; a part that is a model folder is loaded on its own through
 * `rewardModels`. Parts combine as in `rewardModels` (Llama 2 with two).
 */
export async function stageRewardSource(cfg: ResolvedPpoConfig, model: Model, log: (l: string) => void): Promise<{ source: RewardSource; adapterNames: string[] }> {
  const parts: [string, string][] = [['helpfulness', cfg.rewardModel!]];
  if (cfg.safetyModel) parts.push(['safety', cfg.safetyModel]);
  if (parts.every(([, d]) => !isAdapterDir(d))) {
    const source = await rewardModels({ helpfulness: cfg.rewardModel!, safety: cfg.safetyModel, combine: cfg.combine, safetyThreshold: cfg.safetyThreshold, batchSize: cfg.forwardBatchSize, device: cfg.device, policy: cfg.model });
    return { source, adapterNames: [] };
  }
  const trainer = model.trainer();
  const scorers: { name: string; score: (seqs: number[][]) => Promise<Float64Array>; dispose: () => void }[] = [];
  const adapterNames: string[] = [];
  try {
    for (const [name, dir] of parts) {
      if (isAdapterDir(dir)) {
        if (!adapterHead(dir)) throw new RlhfError('E_MODEL', `${dir}: a reward adapter needs a score head (${'base_model.model.score.weight'}); this adapter has none`, { where: dir });
        const an = `reward:${name}`;
        trainer.loadLora(dir, an);
        adapterNames.push(an);
        log(`ppo: ${name} reward model: adapter ${dir} on the shared base`);
        scorers.push({
          name,
          score: async (seqs) => {
            trainer.useAdapter(an);
            const out = new Float64Array(seqs.length);
            for (let i = 0; i < seqs.length; i += cfg.forwardBatchSize) {
              const rows = seqs.slice(i, i + cfg.forwardBatchSize);
              const f = await model.forward({ inputIds: rows, values: true, logp: false });
              rows.forEach((ids, b) => (out[i + b] = f.values![b][ids.length - 1]));
            }
            return out;
          },
          dispose: () => {},
        });
      } else {
        const src = await rewardModels({ helpfulness: dir, combine: 'helpfulness', batchSize: cfg.forwardBatchSize, device: cfg.device, policy: cfg.model });
        scorers.push({
          name,
          score: async (seqs) => (await src.score(seqs.map((ids) => ({ prompt: '', promptIds: ids, response: '', responseIds: [] })))).reward,
          dispose: () => src.dispose(),
        });
      }
    }
  } catch (e) {
    scorers.forEach((s) => s.dispose());
    throw e;
  }
  const source: RewardSource = {
    names: scorers.map((s) => s.name),
    async score(batch: RewardInput[]) {
      const seqs = batch.map((x) => [...x.promptIds, ...x.responseIds]);
      const out: Record<string, Float64Array> = {};
      for (const s of scorers) out[s.name] = await s.score(seqs);
      const { reward } = combineRewards(out.helpfulness, out.safety ?? null, batch.map((x) => x.safe), { combine: cfg.combine, safetyThreshold: cfg.safetyThreshold });
      return { reward, parts: out };
    },
    dispose: () => scorers.forEach((s) => s.dispose()),
  };
  return { source, adapterNames };
}

