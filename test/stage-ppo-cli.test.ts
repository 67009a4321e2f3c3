/**
 * `rlhf-native ppo` through the CLI: a short run against a reward-model
 * folder, and bad input: malformed prompt files (one stderr line naming
 * file:line, exit 1), bad options (naming the flag) and a reward model that
 * is not one, none of which touches what the output folder already holds.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCli, cliBuilt } from './helpers/cli';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';

const skip = !cliBuilt() && 'CLI not compiled';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-ppo-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const model = path.join(tmp, 'm');
const rm = path.join(tmp, 'rm');
const data = path.join(tmp, 'p.jsonl');
const rows = Array.from({ length: 8 }, (_, i) => JSON.stringify({ prompt: `Q${i}: why is the sky blue?` }));
const common = ['--model', model, '--reward-model', rm, '--device', 'cpu'];

t.before(async () => {
  await initModel({ arch: 'qwen2', preset: 'tiny', outDir: model, seed: 5 });
  const m = await loadModel(model, { device: 'cpu', head: 'score', scoreInit: { seed: 1, std: 0.3 } });
  m.trainer().enableFullTraining();
  await m.trainer().saveModel(rm, model);
  m.dispose();
  fs.writeFileSync(data, rows.join('\n') + '\n');
});

t.test('a short run: progress on stderr, one summary line on stdout, policy + critic + metrics written', { skip }, async (t) => {
  const out = path.join(tmp, 'o');
  const r = runCli(['ppo', ...common, '--data', data, '--out', out, '--iterations', '2', '--batch-size', '4', '--mini-batch-size', '2', '--max-new-tokens', '4', '--lora-r', '4', '--eval-data', data]);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one summary line');
  t.match(lines[0], /^ppo: 2 iterations \(16 optimizer steps, 8 prompts\) in [\d.]+s; reward \S+ -> \S+, kl \S+; eval reward \S+ -> \S+, kl \S+; policy adapter saved to .*, critic to .*\/critic$/);
  const progress = r.stderr.split('\n').filter((l) => l.startsWith('ppo step'));
  t.equal(progress.length, 2, r.stderr);
  t.match(progress[1], /^ppo step 2\/2 {2}reward \S+ {2}kl \S+ {2}kl_coef 0\.0500 {2}approxkl \S+ {2}clipfrac \S+ {2}value_loss \S+ {2}len \S+ {2}tok\/s \d+$/);
  t.match(r.stderr, /critic from the reward model/);
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'critic/adapter_config.json', 'critic/adapter_model.safetensors', 'ppo_config.json']) t.ok(fs.existsSync(path.join(out, f)), f);
  const metrics = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.equal(metrics.length, 2);
  t.ok(Number.isFinite(metrics[1]['reward/helpfulness']), 'the reward model part is logged');
  t.match(JSON.parse(fs.readFileSync(path.join(out, 'ppo_config.json'), 'utf8')), { batchSize: 4, miniBatchSize: 2, loraR: 4, rewardModel: rm, steps_done: 2 });
});

/** An output folder with earlier results in it; bad input must leave every byte of it. */
function occupiedOut(name: string): { out: string; snapshot: () => Record<string, string> } {
  const out = path.join(tmp, name);
  fs.mkdirSync(path.join(out, 'critic'), { recursive: true });
  fs.writeFileSync(path.join(out, 'metrics.jsonl'), '{"step":1,"reward":0.5}\n');
  fs.writeFileSync(path.join(out, 'adapter_config.json'), '{"r": 8}\n');
  fs.writeFileSync(path.join(out, 'critic', 'adapter_config.json'), '{"r": 8}\n');
  const snapshot = () => {
    const s: Record<string, string> = {};
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else s[path.relative(out, p)] = fs.readFileSync(p, 'utf8');
      }
    };
    walk(out);
    return s;
  };
  return { out, snapshot };
}

const badData: [string, string[], RegExp][] = [
  ['invalid JSON', [rows[0], rows[1], '{"prompt": "x",', rows[2]], /^rlhf-native: error E_DATA: \S+:3: invalid JSON/],
  ['no prompt field', [rows[0], '{"text": "hello"}'], /^rlhf-native: error E_DATA: \S+:2: expected \{"prompt": "\.\.\."\}, \{"prompt": \[messages\]\} or \{"messages": \[\.\.\.\]\} \("prompt" is missing\)$/],
  ['a prompt that is not text', [rows[0], rows[1], rows[2], '{"prompt": 5}'], /^rlhf-native: error E_DATA: \S+:4: "prompt" must be a string or a non-empty list/],
  ['an empty prompt', ['{"prompt": ""}'], /^rlhf-native: error E_DATA: \S+:1: "prompt" is empty$/],
  ['only assistant messages', [rows[0], '{"messages": [{"role": "assistant", "content": "hi"}]}'], /^rlhf-native: error E_DATA: \S+:2: "messages" has only assistant messages/],
  ['"safe" not a boolean', [rows[0], '{"prompt": "a", "safe": "yes"}'], /^rlhf-native: error E_DATA: \S+:2: "safe" must be true or false$/],
  ['an empty file', ['', '  '], /^rlhf-native: error E_DATA: \S+: no data \(the file is empty\); give one JSON object per line$/],
  ['a prompt longer than the context', [rows[0], rows[1], JSON.stringify({ prompt: 'the sky is blue and the grass is green '.repeat(40) })], /^rlhf-native: error E_DATA: \S+:3: the prompt is \d+ tokens, longer than 56 \(the model's context 256 minus --max-new-tokens 200\)$/],
];

for (const [what, lines, re] of badData) {
  t.test(`bad prompts (${what}) -> exit 1, one line naming the place; the output folder is untouched`, { skip }, async (t) => {
    const file = path.join(tmp, `bad-${what.replace(/\W+/g, '-')}.jsonl`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    const { out, snapshot } = occupiedOut(`o-${what.replace(/\W+/g, '-')}`);
    const before = snapshot();
    const r = runCli(['ppo', ...common, '--data', file, '--out', out, '--max-new-tokens', what.includes('context') ? '200' : '8']);
    t.equal(r.status, 1);
    const err = r.stderr.trim().split('\n');
    t.equal(err.length, 1, r.stderr);
    t.match(err[0], re);
    t.ok(err[0].includes(file), 'names the file');
    t.same(snapshot(), before, 'nothing in the output folder changed');
  });
}

t.test('bad options name the flag; a causal LM is not a reward model; nothing is written', { skip }, async (t) => {
  const { out, snapshot } = occupiedOut('o-opts');
  const before = snapshot();
  const cases: [string[], RegExp][] = [
    [['--mini-batch-size', '16', '--batch-size', '8'], /E_ARGUMENT: --mini-batch-size \(16\) must not exceed --batch-size \(8\)/],
    [['--temperature', '0'], /E_ARGUMENT: --temperature must be > 0/],
    [['--cliprange', '-1'], /E_ARGUMENT: --cliprange must be > 0/],
    [['--lam', '1.5'], /E_ARGUMENT: --lam must be in \[0, 1\]/],
    [['--kl-target', '-2'], /E_ARGUMENT: --kl-target must be > 0/],
    [['--lora-targets', 'wq'], /E_ARGUMENT: LoRA target 'wq' is not a linear module/],
    [['--safety-model', rm, '--combine', 'llama2', '--safety-threshold', '2'], /E_ARGUMENT: --safety-threshold must be in \(0, 1\)/],
  ];
  for (const [extra, re] of cases) {
    const r = runCli(['ppo', ...common, '--data', data, '--out', out, ...extra]);
    t.equal(r.status, 1, extra.join(' '));
    t.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.match(r.stderr, re);
  }
  const notRm = runCli(['ppo', '--model', model, '--reward-model', model, '--data', data, '--out', out, '--device', 'cpu']);
  t.equal(notRm.status, 1);
  t.match(notRm.stderr.trim(), /^rlhf-native: error E_MODEL: --reward-model \S+: a reward model must be a \*ForSequenceClassification folder or a PEFT adapter with a score head \(this is a Qwen2ForCausalLM\)$/);
  const same = runCli(['ppo', ...common, '--data', data, '--out', model]);
  t.equal(same.status, 1);
  t.match(same.stderr, /E_ARGUMENT: --out must differ from --model/);
  const missing = runCli(['ppo', '--model', model, '--data', data, '--out', out]);
  t.equal(missing.status, 1);
  t.match(missing.stderr.trim(), /^rlhf-native: error E_ARGUMENT: --reward-model is required unless --judge-model, --reward-function, --reward-module or hooks\.reward \(a RewardSource\) gives the reward$/);
  t.same(snapshot(), before, 'nothing in the output folder changed');
});
