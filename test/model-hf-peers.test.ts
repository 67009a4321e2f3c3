// Each architecture against the real libraries (test/peers/hf_models.py, in
// the peer venv): a random small model made and saved by transformers, then
//   - our log-probs = transformers' float64 log-probs, right and left padding;
//   - one LoRA SFT step: our loss and the gradient of every LoRA weight =
//     transformers + peft's (autograd, float64) on the adapter we saved;
//   - the adapter we write loads with peft.PeftModel.from_pretrained and
//     reproduces our log-probs; the model we merge loads with
//     AutoModelForCausalLM and reproduces them too;
//   - `rlhf-native sft --model <folder>` gives an adapter that peft loads and
//     that reproduces our log-probs with it;
//   - greedy generation through our KV cache = transformers' model with its
//     own KV cache;
//   - full fine-tuning: the loss and the gradient of every base tensor.
// Bounds: log-probs 1e-4 absolute; losses 1e-5; each gradient tensor to
// 1e-4 of its largest entry (fp32 against float64 through a few layers).
// The reference runs each batch's real tokens right-padded (left padding
// must give the same), so the longest row decides LongRoPE's factors as in
// transformers.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { mergeAdapter } from '../lib/engine/merge';
import { initModel } from '../lib/model/init';
import { runPeer } from './helpers/peers';
import { runCli, cliBuilt } from './helpers/cli';

interface ArchCase {
  name: string;
  modelType: string;
  architecture: string;
  /** config.json keys given to transformers' config class (vocab_size is the test tokenizer's). */
  config: Record<string, unknown>;
  /** PEFT target module names. */
  targets: string[];
}

const CASES: ArchCase[] = [
  {
    name: 'qwen3',
    modelType: 'qwen3',
    architecture: 'Qwen3ForCausalLM',
    // head_dim 16 with hidden 48 / 4 heads: head_dim does not follow hidden_size.
    config: {
      hidden_size: 48,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 16,
      max_position_embeddings: 128,
      rms_norm_eps: 1e-6,
      rope_theta: 10000,
      tie_word_embeddings: false,
      initializer_range: 0.1,
    },
    targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  },
  {
    name: 'phi3',
    modelType: 'phi3',
    architecture: 'Phi3ForCausalLM',
    // Partial rotary (12 of 16 dims) and LongRoPE with a short original context (8), so that the
    // batches of up to 8 tokens take the short factors and the longer ones the long factors;
    // attention factor derived from max / original = 8.
    config: {
      hidden_size: 64,
      intermediate_size: 96,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 64,
      original_max_position_embeddings: 8,
      partial_rotary_factor: 0.75,
      rope_scaling: { type: 'longrope', short_factor: [1.0, 1.1, 1.3, 1.7, 2.2, 3.0], long_factor: [1.5, 2.5, 4.0, 6.0, 9.0, 13.0] },
      rms_norm_eps: 1e-5,
      tie_word_embeddings: false,
      initializer_range: 0.1,
    },
    targets: ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'],
  },
  {
    name: 'gemma3',
    modelType: 'gemma3_text',
    architecture: 'Gemma3ForCausalLM',
    // Sliding-window and global layers with their own RoPE bases (the global one linearly scaled),
    // query_pre_attn_scalar != head_dim, sqrt(48) embedding scale, tied embeddings.
    config: {
      hidden_size: 48,
      intermediate_size: 80,
      num_hidden_layers: 3,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 16,
      query_pre_attn_scalar: 24,
      layer_types: ['sliding_attention', 'full_attention', 'sliding_attention'],
      sliding_window: 64,
      max_position_embeddings: 128,
      rope_theta: 500000,
      rope_local_base_freq: 100,
      rope_scaling: { rope_type: 'linear', factor: 2.0 },
      rms_norm_eps: 1e-6,
      initializer_range: 0.1,
    },
    targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  },
];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-hf-peers-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const tok = path.join(tmp, 'tok');
let vocab = 0;
let special: Record<string, unknown> = {};
const TOKEN_FILES = ['tokenizer.json', 'tokenizer_config.json'];

t.before(async () => {
  // The tokenizer files of an `init` model give the CLI run something to tokenise with.
  await initModel({ arch: 'qwen2', preset: 'tiny', outDir: tok, seed: 1 });
  const cfg = JSON.parse(fs.readFileSync(path.join(tok, 'config.json'), 'utf8'));
  vocab = cfg.vocab_size;
  special = { bos_token_id: cfg.bos_token_id, eos_token_id: cfg.eos_token_id, pad_token_id: cfg.pad_token_id };
});

/** Deterministic ids in [1, vocab). */
function ids(seed: number, rows: number[]): number[][] {
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % (vocab - 1)) + 1;
  return rows.map((n) => Array.from({ length: n }, next));
}

/** Rows of different lengths padded to one length, on the right or the left. */
function pad(rows: number[][], side: 'left' | 'right'): { ids: number[][]; mask: number[][] } {
  const T = Math.max(...rows.map((r) => r.length));
  const out = { ids: [] as number[][], mask: [] as number[][] };
  for (const r of rows) {
    const fill = Array(T - r.length).fill(0);
    const ones = Array(r.length).fill(1);
    out.ids.push(side === 'right' ? [...r, ...fill] : [...fill, ...r]);
    out.mask.push(side === 'right' ? [...ones, ...fill] : [...fill, ...ones]);
  }
  return out;
}

function maxDiff(a: ArrayLike<number>[], b: number[][]): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) for (let j = 0; j < a[i].length; j++) d = Math.max(d, Math.abs(a[i][j] - b[i][j]));
  return d;
}

interface Peer {
  logp: { logp: number[][] };
  grad: { loss: number; grads: Record<string, number[]> };
}
const logpReq = (dir: string, batch: { ids: number[][]; mask: number[][] }, adapter?: string) => ({ op: 'logp', dir, adapter, ...batch });

// RLHF_PEER_ARCH=<name> runs one case (while working on one architecture).
for (const c of CASES.filter((x) => !process.env.RLHF_PEER_ARCH || x.name === process.env.RLHF_PEER_ARCH)) {
  t.test(`${c.architecture}: transformers' model, log-probs, LoRA step, adapter, merge, CLI`, async (t) => {
    const dir = path.join(tmp, c.name);
    const made = runPeer<{ architecture: string }>('hf_models.py', {
      op: 'make',
      dir,
      model_type: c.modelType,
      config: { ...c.config, vocab_size: vocab, ...special },
      seed: 7,
      copy: TOKEN_FILES.map((f) => path.join(tok, f)),
    });
    t.equal(made.architecture, c.architecture);
    const model = await loadModel(dir, { device: 'cpu' });
    t.teardown(() => model.dispose());
    t.equal(model.config.architecture, c.architecture);
    const rows = ids(11, [12, 7, 10]);
    const right = pad(rows, 'right'), left = pad(rows, 'left');
    const logp = async (m: typeof model, b: { ids: number[][]; mask: number[][] }) => (await m.forward({ inputIds: b.ids, attentionMask: b.mask })).logp!;
    // What the peer is asked, in order, and our numbers to compare with each answer.
    const requests: unknown[] = [];
    const checks: ((answer: unknown) => void)[] = [];
    const expectLogp = (ours: Float32Array[], req: unknown, what: string) => {
      requests.push(req);
      checks.push((a) => {
        const d = maxDiff(ours, (a as Peer['logp']).logp);
        t.ok(d < 1e-4, `${what}: max |ours - reference| = ${d.toExponential(2)}`);
      });
    };
    expectLogp(await logp(model, right), logpReq(dir, right), 'base log-probs vs transformers, right padding');
    expectLogp(await logp(model, left), logpReq(dir, left), 'base log-probs vs transformers, left padding');
    const short = pad(ids(13, [6, 8, 5]), 'left'); // up to 8 tokens (LongRoPE: the short factors)
    expectLogp(await logp(model, short), logpReq(dir, short), 'base log-probs vs transformers, rows of at most 8 tokens');

    // Greedy generation through the KV cache = transformers' model with its KV cache, one prompt at a
    // time (one prompt per call here too: LongRoPE's choice of factors is per batch).
    const prompts = ids(17, [5, 3]);
    const gen = { tokens: [] as Int32Array[] };
    for (const p of prompts) gen.tokens.push((await model.generate({ prompts: [p], maxNewTokens: 8, temperature: 0, eosIds: [] })).tokens[0]);
    requests.push({ op: 'greedy', dir, prompts, n: 8 });
    checks.push((a) => t.same(gen.tokens.map((x) => Array.from(x)), (a as { tokens: number[][] }).tokens, 'greedy generation through the KV cache = transformers with its KV cache'));

    // LoRA: one AdamW step moves B off zero; the gradient is then taken at the adapter we save.
    const tr = model.trainer();
    tr.createLora({ r: 4, alpha: 8, targets: c.targets, seed: 3 });
    const lossMask = right.mask.map((m) => m.slice(1).map((v, j) => (j >= 2 && v && m[j] ? 1 : 0)));
    const flatMask = Float32Array.from(lossMask.flat());
    const sftStep = async () => {
      await tr.zeroGrad();
      await tr.forward({ inputIds: right.ids, attentionMask: right.mask, sftLoss: { mask: flatMask }, download: false });
      const stats = await tr.sftLoss();
      await tr.backward({});
      return stats.loss;
    };
    await sftStep();
    await tr.step({ optimizer: 'adamw', lr: 0.05 });
    const adapter = path.join(tmp, `${c.name}-adapter`);
    await tr.saveLora(adapter, dir);
    const loss = await sftStep();
    const names = tr.trainable().map((p) => p.name);
    const grads = new Map(names.map((n) => [n, tr.read(n, 'grad')]));
    requests.push({ op: 'lora_grad', dir, adapter, ids: right.ids, mask: right.mask, loss_mask: lossMask });
    checks.push((a) => {
      const ref = a as Peer['grad'];
      t.ok(Math.abs(loss - ref.loss) < 1e-5, `LoRA SFT loss: ours ${loss.toFixed(6)}, transformers + peft ${ref.loss.toFixed(6)}`);
      t.same([...names].sort(), Object.keys(ref.grads).sort(), 'the same LoRA tensors as peft');
      let worst = 0;
      for (const name of names) {
        const g = grads.get(name)!, r = ref.grads[name] ?? [];
        const scale = Math.max(...r.map(Math.abs));
        let d = 0;
        for (let i = 0; i < r.length; i++) d = Math.max(d, Math.abs(g[i] - r[i]));
        worst = Math.max(worst, d / Math.max(scale, 1e-12));
      }
      t.ok(worst < 1e-4, `LoRA gradients (${names.length} tensors): worst max|diff| / max|peft| = ${worst.toExponential(2)}`);
    });

    // Full fine-tuning: the gradient of every base weight (norms such as q/k norm and Gemma's post norms included).
    const fullModel = await loadModel(dir, { device: 'cpu' });
    t.teardown(() => fullModel.dispose());
    const ft = fullModel.trainer();
    ft.enableFullTraining();
    await ft.forward({ inputIds: right.ids, attentionMask: right.mask, sftLoss: { mask: flatMask }, download: false });
    const fullLoss = (await ft.sftLoss()).loss;
    await ft.backward({});
    const fullGrads = new Map(ft.trainable().map((p) => [p.name, ft.read(p.name, 'grad')]));
    requests.push({ op: 'full_grad', dir, ids: right.ids, mask: right.mask, loss_mask: lossMask });
    checks.push((a) => {
      const ref = a as Peer['grad'];
      t.ok(Math.abs(fullLoss - ref.loss) < 1e-5, `full fine-tuning loss: ours ${fullLoss.toFixed(6)}, transformers ${ref.loss.toFixed(6)}`);
      t.same([...fullGrads.keys()].sort(), Object.keys(ref.grads).sort(), 'the same trainable base tensors as transformers');
      let worst = 0, at = '';
      for (const [name, g] of fullGrads) {
        const r = ref.grads[name] ?? [];
        const scale = Math.max(...r.map(Math.abs));
        let d = 0;
        for (let i = 0; i < r.length; i++) d = Math.max(d, Math.abs(g[i] - r[i]));
        if (d / Math.max(scale, 1e-12) > worst) (worst = d / Math.max(scale, 1e-12)), (at = name);
      }
      t.ok(worst < 1e-4, `full fine-tuning gradients (${fullGrads.size} tensors): worst max|diff| / max|ref| = ${worst.toExponential(2)} (${at})`);
    });

    // Our log-probs with the adapter = peft's with the adapter we wrote = transformers' on the folder we merge.
    const withAdapter = await logp(model, right);
    expectLogp(withAdapter, logpReq(dir, right, adapter), 'adapter log-probs vs peft, right padding');
    expectLogp(await logp(model, left), logpReq(dir, left, adapter), 'adapter log-probs vs peft, left padding');
    const merged = path.join(tmp, `${c.name}-merged`);
    await mergeAdapter({ model: dir, adapter, out: merged });
    expectLogp(withAdapter, logpReq(merged, right), 'merged model vs transformers (AutoModelForCausalLM)');

    // The newcomer's line: `rlhf-native sft --model <folder>` -> a PEFT adapter peft loads and agrees with.
    if (cliBuilt()) {
      const data = path.join(tmp, `${c.name}.jsonl`);
      fs.writeFileSync(data, Array.from({ length: 6 }, (_, i) => JSON.stringify({ prompt: `Q${i}: sky?`, completion: ' Blue.' })).join('\n') + '\n');
      const out = path.join(tmp, `${c.name}-sft`);
      const r = runCli(['sft', '--model', dir, '--data', data, '--out', out, '--steps', '2', '--batch-size', '2', '--lr', '1e-2', '--lora-r', '4', '--device', 'cpu']);
      t.equal(r.status, 0, r.status === 0 ? 'rlhf-native sft exits 0' : r.stderr);
      const tuned = await loadModel(dir, { device: 'cpu', adapter: out });
      t.teardown(() => tuned.dispose());
      const ours = await logp(tuned, left);
      tr.useAdapter(null);
      t.ok(maxDiff(ours, (await logp(model, left)).map((x) => Array.from(x))) > 1e-4, 'the CLI adapter changes the model');
      expectLogp(ours, logpReq(dir, left, out), 'CLI (rlhf-native sft) adapter log-probs vs peft, left padding');
    }

    const answers = runPeer<unknown[]>('hf_models.py', { op: 'batch', requests });
    answers.forEach((a, i) => checks[i](a));
  });
}

// Reward models: *ForSequenceClassification made by transformers; our score head at each row's last
// real token = transformers' output, both on the rows right-padded together.
for (const c of CASES.filter((x) => x.name !== 'gemma3' && (!process.env.RLHF_PEER_ARCH || x.name === process.env.RLHF_PEER_ARCH))) {
  t.test(`${c.architecture.replace('CausalLM', 'SequenceClassification')}: reward model scores`, async (t) => {
    const dir = path.join(tmp, `${c.name}-rm`);
    const made = runPeer<{ architecture: string }>('hf_models.py', { op: 'make', dir, model_type: c.modelType, config: { ...c.config, vocab_size: vocab, ...special }, seed: 9, score: true });
    t.equal(made.architecture, c.architecture.replace('CausalLM', 'SequenceClassification'));
    const model = await loadModel(dir, { device: 'cpu' });
    t.teardown(() => model.dispose());
    const pad = special.pad_token_id as number;
    const rows = ids(21, [9, 4, 12]).map((r) => r.map((x) => (x === pad ? (x % (vocab - 2)) + 1 : x)));
    const T = Math.max(...rows.map((r) => r.length));
    const out = await model.forward({ inputIds: rows.map((r) => [...r, ...Array(T - r.length).fill(pad)]), attentionMask: rows.map((r) => [...r.map(() => 1), ...Array(T - r.length).fill(0)]), values: true, logp: false });
    const ours = rows.map((r, b) => out.values![b][r.length - 1]);
    const ref = runPeer<{ scores: number[] }>('hf_models.py', { op: 'score', dir, rows }).scores;
    const d = Math.max(...ours.map((v, i) => Math.abs(v - ref[i])));
    t.ok(d < 1e-4, `scores: max |ours - transformers| = ${d.toExponential(2)}`);
  });
}
