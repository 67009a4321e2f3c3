// The GRPO family against TRL 1.13 on the same fixed batch: the advantages
// and the loss the grpo stage's code computes (scoreGroups, minibatchGradients)
// equal what GRPOTrainer / RLOOTrainer compute (test/peers/trl_group_loss.py)
// for every loss type, reward scaling, the clip-higher bound, a KL term, and
// RLOO's leave-one-out baseline with its KL-shaped rewards. The policy is the
// demo base with a LoRA adapter made on the TRL side (seeded B matrices, so
// the policy is not the reference); the loss is compared both at ratio 1 and
// with shifted old log-probs, so that both clip bounds are crossed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { loadModel } from '../lib/engine/model';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { functionReward } from '../lib/reward/sources';
import { resolveGrpoConfig, type GrpoConfig } from '../lib/stages/grpo/config';
import { scoreGroups, type GrpoBatch, type GrpoEnv } from '../lib/stages/grpo/rollout';
import { lossOptionsOf, minibatchGradients } from '../lib/stages/grpo/loss';
import { perToken } from '../lib/stages/ppo/rollout';
import { demoBaseDir } from '../lib/demo/base';
import { runPeer } from './helpers/peers';

const G = 3;
const EOS = 1;
// Two prompts (BOS first), three completions each: some end with EOS, one is cut at the budget of 4.
const prompts = [
  [0, 3, 40, 41, 42, 43],
  [0, 3, 50, 51, 52],
];
const completions = [
  [60, 61, EOS],
  [62, 63, 64, 65],
  [66, EOS],
  [70, 71, 72, EOS],
  [73, EOS],
  [74, 75, 76, 77],
];
const rewards = [1, 0, 0.5, 0, 0.25, 1];
// Per-token shifts of the old log-probs: some ratios leave [0.8, 1.2], some only [0.8, 1.28].
const shifts = [
  [0.3, -0.3, 0.1],
  [0.05, -0.25, 0.4, 0],
  [0.21, -0.1],
  [0, 0.3, -0.3, 0.15],
  [0.1, 0.24],
  [-0.2, 0.25, 0, 0.1],
];

interface Case {
  name: string;
  trainer: 'grpo' | 'rloo';
  config: Partial<GrpoConfig>;
  options: Record<string, unknown>;
}
const grpo = (lossType: string, scaleRewards: string, beta: number, epsilonHigh: number, klBiasCorrection = true): Case => ({
  name: `grpo loss_type ${lossType}, scale_rewards ${scaleRewards}, beta ${beta}, epsilon_high ${epsilonHigh}${klBiasCorrection ? '' : ', no KL bias correction'}`,
  trainer: 'grpo',
  config: { estimator: 'grpo', lossType: lossType as GrpoConfig['lossType'], scaleRewards: scaleRewards as GrpoConfig['scaleRewards'], beta, epsilonHigh, klBiasCorrection },
  options: { loss_type: lossType, scale_rewards: scaleRewards, beta, epsilon_high: epsilonHigh, use_bias_correction_kl: klBiasCorrection, normalize_advantages: false },
});
const rloo = (normalize: boolean, beta: number): Case => ({
  name: `rloo normalize_advantages ${normalize}, beta ${beta}`,
  trainer: 'rloo',
  config: { estimator: 'rloo', normalizeAdvantages: normalize, beta },
  options: { loss_type: 'grpo', scale_rewards: 'group', beta, epsilon_high: 0.2, normalize_advantages: normalize },
});
const CASES: Case[] = [
  grpo('dapo', 'group', 0, 0.2),
  grpo('bnpo', 'group', 0.04, 0.28),
  grpo('grpo', 'group', 0.04, 0.2),
  grpo('dr_grpo', 'none', 0, 0.28),
  grpo('grpo', 'batch', 0.1, 0.28),
  grpo('dapo', 'group', 0.1, 0.28, false),
  rloo(false, 0),
  rloo(false, 0.05),
  rloo(true, 0.05),
];

interface PeerResult {
  advantages: number[];
  loss_ratio_one: number;
  loss: number;
  old_per_token: number[][];
}

t.test('grpo and rloo: advantages and losses equal TRL 1.13 on a fixed batch', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'grpo-trl-'));
  const adapterDir = path.join(dir, 'adapter');
  const model = demoBaseDir();
  const peer = runPeer<PeerResult[]>('trl_group_loss.py', {
    model,
    adapter_dir: adapterDir,
    G,
    prompts,
    completions,
    rewards,
    cases: CASES.map((c) => ({
      trainer: c.trainer,
      shifts,
      options: { max_completion_length: 4, temperature: 1, epsilon: 0.2, ...c.options },
    })),
  });

  const m = await loadModel(model, { device: 'cpu' });
  t.teardown(() => m.dispose());
  const trainer = m.trainer();
  trainer.loadLora(adapterDir, 'policy');
  trainer.useAdapter('policy');
  const tok = loadTokenizer(model);
  const rows = prompts.flatMap((ids, g) => Array.from({ length: G }, () => ({ line: g + 1, text: `p${g}`, ids })));
  const seqs = rows.map((p, i) => [...p.ids, ...completions[i]]);
  // The policy's own log-probs: the rollout's (ratio 1).
  const current = await perToken(
    m,
    seqs,
    rows.map((p) => p.ids.length),
    completions.map((c) => c.length),
    'logp',
    1,
    16,
  );
  const batch: GrpoBatch = { rows, responses: completions, eos: completions.map((c) => c[c.length - 1] === EOS), logprobs: current, genTokens: 0 };

  for (const [ci, c] of CASES.entries()) {
    const py = peer[ci];
    const cfg = resolveGrpoConfig({ model, data: 'unused.jsonl', out: path.join(dir, `out-${ci}`), numGenerations: G, maxNewTokens: 4, temperature: 1, epsilon: 0.2, ...c.config }, { rewardSource: true });
    const env: GrpoEnv = { cfg, model: m, trainer, tok, reward: functionReward(() => rewards, 'fixed'), eosIds: [EOS] };
    const sg = await scoreGroups(env, batch);
    t.equal(sg.samples.length, rewards.length, `${c.name}: every sample kept`);
    const adv = sg.samples.map((s) => s.advantage);
    const advErr = Math.max(...adv.map((a, i) => Math.abs(a - py.advantages[i])));
    t.ok(advErr < 2e-5, `${c.name}: advantages equal TRL's (max |diff| ${advErr.toExponential(2)})`);

    const lossOpts = lossOptionsOf(cfg);
    const one = await minibatchGradients(trainer, sg.samples, lossOpts);
    const tol = (x: number) => 2e-5 * Math.max(1, Math.abs(x));
    t.ok(Math.abs(one.stats.loss - py.loss_ratio_one) < tol(py.loss_ratio_one), `${c.name}: loss at ratio 1 ${one.stats.loss} vs TRL ${py.loss_ratio_one}`);
    t.ok(Math.abs(one.stats.ratio - 1) < 1e-5, `${c.name}: ratio 1 at the rollout's own log-probs (${one.stats.ratio})`);

    const shifted = sg.samples.map((s, i) => ({ ...s, oldLogp: Float32Array.from(py.old_per_token[i]) }));
    const moved = await minibatchGradients(trainer, shifted, lossOpts);
    t.ok(Math.abs(moved.stats.loss - py.loss) < tol(py.loss), `${c.name}: loss with shifted old log-probs ${moved.stats.loss} vs TRL ${py.loss}`);
    t.ok(moved.stats.clipfrac > 0, `${c.name}: the shifted batch crosses a clip bound (clipfrac ${moved.stats.clipfrac.toFixed(3)})`);
  }
});
