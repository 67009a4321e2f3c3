/**
 * The tensors a Hugging Face checkpoint of each architecture holds (names and
 * shapes exactly as transformers' save_pretrained writes them), and the check
 * of a folder's actual tensors against that list.
 */
import { RlhfError } from '../errors';
import type { ModelConfig } from './config';

/** What a tensor is, which decides how `init` fills it. */
export type TensorKind = 'embedding' | 'matrix' | 'norm' | 'bias' | 'head';

export interface TensorSpec {
  name: string;
  shape: number[];
  kind: TensorKind;
}

/** Dtypes the engine converts from (others, e.g. quantized ints, are refused). */
export const FLOAT_DTYPES: readonly string[] = ['F32', 'F16', 'BF16'];

/**
 * GPT-2: transformers' GPT2LMHeadModel / GPT2ForSequenceClassification keep
 * the body in `self.transformer`, so save_pretrained writes `transformer.*`;
 * the original openai-community/gpt2 files were saved from the bare GPT2Model
 * and have no prefix. Both are accepted when checking; we write the prefix.
 */
export const GPT2_PREFIX = 'transformer.';

function llamaTensors(c: ModelConfig): TensorSpec[] {
  const H = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, H], kind: 'embedding' }];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push({ name: `${p}input_layernorm.weight`, shape: [H], kind: 'norm' });
    // nn.Linear stores [out_features, in_features]. Phi-3 fuses q|k|v and gate|up.
    if (c.fusedProj) out.push({ name: `${p}self_attn.qkv_proj.weight`, shape: [q + 2 * kv, H], kind: 'matrix' });
    else for (const [n, rows] of [['q', q], ['k', kv], ['v', kv]] as const) {
      out.push({ name: `${p}self_attn.${n}_proj.weight`, shape: [rows, H], kind: 'matrix' });
      if (c.qkvBias) out.push({ name: `${p}self_attn.${n}_proj.bias`, shape: [rows], kind: 'bias' });
    }
    if (c.qkNorm)
      for (const n of ['q_norm', 'k_norm']) out.push({ name: `${p}self_attn.${n}.weight`, shape: [c.headDim], kind: 'norm' });
    out.push({ name: `${p}self_attn.o_proj.weight`, shape: [H, q], kind: 'matrix' });
    if (c.oBias) out.push({ name: `${p}self_attn.o_proj.bias`, shape: [H], kind: 'bias' });
    out.push({ name: `${p}post_attention_layernorm.weight`, shape: [H], kind: 'norm' });
    if (c.gemma) for (const n of ['pre_feedforward_layernorm', 'post_feedforward_layernorm']) out.push({ name: `${p}${n}.weight`, shape: [H], kind: 'norm' });
    const mlp = c.fusedProj ? ([['gate_up', [2 * I, H]], ['down', [H, I]]] as const) : ([['gate', [I, H]], ['up', [I, H]], ['down', [H, I]]] as const);
    for (const [n, shape] of mlp) {
      out.push({ name: `${p}mlp.${n}_proj.weight`, shape: [...shape], kind: 'matrix' });
      if (c.mlpBias) out.push({ name: `${p}mlp.${n}_proj.bias`, shape: [shape[0]], kind: 'bias' });
    }
  }
  out.push({ name: 'model.norm.weight', shape: [H], kind: 'norm' });
  return out;
}

function gpt2Tensors(c: ModelConfig): TensorSpec[] {
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const t = GPT2_PREFIX;
  const out: TensorSpec[] = [
    { name: `${t}wte.weight`, shape: [c.vocabSize, H], kind: 'embedding' },
    { name: `${t}wpe.weight`, shape: [c.maxPositions, H], kind: 'embedding' },
  ];
  // Conv1D stores [in_features, out_features] (transposed against nn.Linear).
  const conv = (name: string, nin: number, nout: number): TensorSpec[] => [
    { name: `${name}.weight`, shape: [nin, nout], kind: 'matrix' },
    { name: `${name}.bias`, shape: [nout], kind: 'bias' },
  ];
  const ln = (name: string): TensorSpec[] => [
    { name: `${name}.weight`, shape: [H], kind: 'norm' },
    { name: `${name}.bias`, shape: [H], kind: 'bias' },
  ];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `${t}h.${l}.`;
    out.push(
      ...ln(`${p}ln_1`),
      ...conv(`${p}attn.c_attn`, H, 3 * H),
      ...conv(`${p}attn.c_proj`, H, H),
      ...ln(`${p}ln_2`),
      ...conv(`${p}mlp.c_fc`, H, I),
      ...conv(`${p}mlp.c_proj`, I, H),
    );
  }
  out.push(...ln(`${t}ln_f`));
  return out;
}

/** Every tensor a checkpoint of `cfg` holds, in save_pretrained's module order. */
export function expectedTensors(cfg: ModelConfig): TensorSpec[] {
  const out = cfg.arch === 'gpt2' ? gpt2Tensors(cfg) : llamaTensors(cfg);
  if (cfg.head === 'score') out.push({ name: 'score.weight', shape: [cfg.numLabels ?? 1, cfg.hiddenSize], kind: 'head' });
  else if (!cfg.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [cfg.vocabSize, cfg.hiddenSize], kind: 'head' });
  return out;
}

/** Parameter count of a config (from the tensor list; no tensor data touched). */
export function countParameters(cfg: ModelConfig): number {
  return expectedTensors(cfg).reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
}

export interface TensorHeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
}

export interface CheckedTensor extends TensorHeaderEntry {
  /** The name in expectedTensors() (differs from `name` for unprefixed GPT-2 files). */
  canonical: string;
  kind: TensorKind;
}

export interface TensorCheck {
  tensors: CheckedTensor[];
  /** Tensors present but deliberately ignored, as transformers ignores them (see isIgnorable). */
  ignored: string[];
}

/**
 * Tensors that old checkpoints carry and transformers drops on load: GPT-2's
 * causal-mask buffers `attn.bias` / `attn.masked_bias`, Llama's
 * `rotary_emb.inv_freq`, and `lm_head.weight` beside tied embeddings (tied
 * means the embedding is used, whatever the file says).
 */
function isIgnorable(cfg: ModelConfig, canonical: string): boolean {
  if (cfg.arch === 'gpt2' && /^transformer\.h\.\d+\.attn\.(bias|masked_bias)$/.test(canonical)) return true;
  if (cfg.arch !== 'gpt2' && /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(canonical)) return true;
  return canonical === 'lm_head.weight' && cfg.head === 'lm' && cfg.tieWordEmbeddings;
}

function canonicalName(cfg: ModelConfig, name: string): string {
  if (cfg.arch !== 'gpt2' || name.startsWith(GPT2_PREFIX) || name === 'lm_head.weight' || name === 'score.weight') return name;
  return GPT2_PREFIX + name;
}

const fmt = (s: readonly number[]): string => `[${s.join(', ')}]`;
const MAX_LISTED = 20;

/**
 * Matches a checkpoint's tensors against expectedTensors(cfg). Throws one
 * E_MODEL listing every missing, unexpected, wrong-shape or non-float tensor
 * (first 20), each with expected and actual shape. `where` names the folder.
 */
export function checkTensors(
  cfg: ModelConfig,
  header: readonly TensorHeaderEntry[] | { tensors: readonly TensorHeaderEntry[] },
  where = 'checkpoint',
): TensorCheck {
  const actual = 'tensors' in header ? header.tensors : header;
  const expected = new Map(expectedTensors(cfg).map((t) => [t.name, t]));
  const seen = new Map<string, TensorHeaderEntry>();
  const problems: string[] = [];
  const tensors: CheckedTensor[] = [];
  const ignored: string[] = [];
  for (const t of actual) {
    const canonical = canonicalName(cfg, t.name);
    const spec = expected.get(canonical);
    if (!spec) {
      if (isIgnorable(cfg, canonical)) ignored.push(t.name);
      else problems.push(`unexpected tensor ${t.name} ${t.dtype} ${fmt(t.shape)} (not part of ${cfg.architecture} with this config)`);
      continue;
    }
    const dup = seen.get(canonical);
    if (dup) {
      problems.push(`tensor ${canonical} appears twice (as ${dup.name} and ${t.name})`);
      continue;
    }
    seen.set(canonical, t);
    if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i]))
      problems.push(`tensor ${t.name} has shape ${fmt(t.shape)}, expected ${fmt(spec.shape)}`);
    else if (!FLOAT_DTYPES.includes(t.dtype)) problems.push(`tensor ${t.name} has dtype ${t.dtype}; supported: ${FLOAT_DTYPES.join(', ')}`);
    else tensors.push({ ...t, canonical, kind: spec.kind });
  }
  for (const spec of expected.values())
    if (!seen.has(spec.name)) problems.push(`missing tensor ${spec.name}: expected shape ${fmt(spec.shape)}, actual: absent`);
  if (problems.length) {
    const listed = problems.slice(0, MAX_LISTED);
    if (problems.length > MAX_LISTED) listed.push(`... and ${problems.length - MAX_LISTED} more`);
    throw new RlhfError('E_MODEL', `${where}: weights do not match the config (${problems.length} problem${problems.length > 1 ? 's' : ''}):\n  ${listed.join('\n  ')}`, {
      where,
    });
  }
  return { tensors, ignored };
}
