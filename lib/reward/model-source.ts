/**
 * The reward models of a stage's config as one reward source. With the
 * policy's loaded model at hand (PPO), a reward model given as a PEFT
 * adapter with a score head is loaded as a frozen adapter `reward:<part>`
 * on that base (no second copy of the base); a model folder is loaded on its
 * own through `rewardModels`. Without one (rejection sampling, whose policy
 * is reloaded every round), everything goes through `rewardModels`, which
 * merges an adapter into its base at load. Two parts combine as in Llama 2.
 */
import { RlhfError } from '../errors';
import type { Model } from '../engine/model';
import type { Device } from '../info';
import { ADAPTER_HEAD_TENSOR, adapterHead, isAdapterDir } from '../model/peft';
import { combineRewards, rewardModels, type RewardInput, type RewardSource } from './sources';

export interface RewardModelsConfig {
  /** The policy folder: each reward model must share its vocabulary. */
  model: string;
  rewardModel: string;
  safetyModel: string | null;
  combine: 'llama2' | 'helpfulness';
  safetyThreshold: number;
  device: Device;
}

interface Scorer {
  name: string;
  score: (seqs: number[][]) => Promise<Float64Array>;
  dispose: () => void;
}

/** A reward adapter as a frozen adapter on the policy's base: its score head's value at the last token. */
function adapterScorer(model: Model, name: string, dir: string, batchSize: number): Scorer {
  if (!adapterHead(dir)) throw new RlhfError('E_MODEL', `${dir}: a reward adapter needs a score head (${ADAPTER_HEAD_TENSOR}); this adapter has none`, { where: dir });
  const trainer = model.trainer();
  const an = `reward:${name}`;
  trainer.loadLora(dir, an);
  return {
    name,
    score: async (seqs) => {
      trainer.useAdapter(an);
      const out = new Float64Array(seqs.length);
      for (let i = 0; i < seqs.length; i += batchSize) {
        const rows = seqs.slice(i, i + batchSize);
        const f = await model.forward({ inputIds: rows, values: true, logp: false });
        rows.forEach((ids, b) => (out[i + b] = f.values![b][ids.length - 1]));
      }
      return out;
    },
    dispose: () => {},
  };
}

export async function openRewardModels(cfg: RewardModelsConfig, model: Model | null, log: (l: string) => void, batchSize: number, stage: string): Promise<RewardSource> {
  const parts: [string, string][] = [['helpfulness', cfg.rewardModel]];
  if (cfg.safetyModel) parts.push(['safety', cfg.safetyModel]);
  if (!model || parts.every(([, d]) => !isAdapterDir(d)))
    return rewardModels({ helpfulness: cfg.rewardModel, safety: cfg.safetyModel, combine: cfg.combine, safetyThreshold: cfg.safetyThreshold, batchSize, device: cfg.device, policy: cfg.model });
  const scorers: Scorer[] = [];
  try {
    for (const [name, dir] of parts) {
      if (isAdapterDir(dir)) {
        scorers.push(adapterScorer(model, name, dir, batchSize));
        log(`${stage}: ${name} reward model: adapter ${dir} on the shared base`);
      } else {
        const src = await rewardModels({ helpfulness: dir, combine: 'helpfulness', batchSize, device: cfg.device, policy: cfg.model });
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
  return {
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
}
