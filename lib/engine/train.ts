/**
 * Training on a loaded Model: a LoRA adapter (PEFT semantics and layout) or
 * full fine-tuning; forwardTrain keeps activations, backward runs the
 * hand-written backward pass from gradients of the per-token outputs, step
 * applies AdamW or SGD with global-norm clipping. The loss calls (sftLoss,
 * pairwiseLoss, dpoLoss, ppoLoss; lib/engine/objectives.ts) run the loss
 * kernels on the model's device over the forward's outputs there and leave
 * the gradients there for backward({}).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fromNative, callNative, RlhfError } from '../errors';
import type { NativeAdapterModule, NativeModel, NativeStepOptions } from '../native';
import type { ModelConfig } from '../model/config';
import { readAdapterConfig, savedLoraTensors, writeAdapterConfig } from '../model/peft';
import { runForward, type ForwardInput, type ForwardOutput } from './forward';
import {
  dpoObjective,
  ktoObjective,
  pairwiseObjective,
  ppoObjective,
  sftObjective,
  type DpoLossInput,
  type DpoLossStats,
  type KtoLossInput,
  type KtoLossStats,
  type PairwiseLossInput,
  type PairwiseLossStats,
  type PpoLossInput,
  type PpoLossStats,
  type SftLossInput,
  type SftLossStats,
} from './objectives';

export const LLAMA_LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export const GPT2_LORA_TARGETS = ['c_attn', 'c_proj', 'c_fc'] as const;
export const PHI3_LORA_TARGETS = ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'] as const;

/** Every linear module of the architecture, by PEFT name ('all-linear'). */
export function allLinearTargets(cfg: ModelConfig): readonly string[] {
  return cfg.arch === 'gpt2' ? GPT2_LORA_TARGETS : cfg.fusedProj ? PHI3_LORA_TARGETS : LLAMA_LORA_TARGETS;
}

export interface LoraOptions {
  /** Adapter name (several adapters can share one base). Default 'default'. */
  name?: string;
  /** Rank (PEFT `r`). Default 8. */
  r?: number;
  /** PEFT `lora_alpha`. Default 16. */
  alpha?: number;
  /** PEFT `use_rslora`: scale alpha / sqrt(r) instead of alpha / r. */
  rslora?: boolean;
  /** PEFT `lora_dropout` on the adapter input while training. Default 0. */
  dropout?: number;
  /** PEFT module names; default: every linear module of the architecture. */
  targets?: readonly string[];
  seed?: number;
  /**
   * Give the adapter its own trainable score head (reward model, critic):
   * `true` for a fresh one (N(0, std^2), std default 0.02), or copied `from`
   * a [safetensors file, tensor name] such as a reward model's score.weight.
   * PEFT saves it as `base_model.model.score.weight` (modules_to_save).
   */
  head?: boolean | { std?: number; from?: [string, string] };
}

/** The adapter's modules, matched by PEFT name as PEFT does (a name matches every module ending in it). */
export function loraModules(cfg: ModelConfig, targets: readonly string[]): NativeAdapterModule[] {
  const gpt2 = cfg.arch === 'gpt2';
  const known: readonly string[] = allLinearTargets(cfg);
  for (const t of targets) if (!known.includes(t)) throw new RlhfError('E_ARGUMENT', `LoRA target '${t}' is not a linear module of ${cfg.architecture} (known: ${known.join(', ')})`);
  const out: NativeAdapterModule[] = [];
  for (let layer = 0; layer < cfg.numLayers; layer++) {
    if (gpt2) {
      if (targets.includes('c_attn')) out.push({ layer, name: 'c_attn' });
      if (targets.includes('c_proj')) out.push({ layer, name: 'c_proj', mlp: false });
      if (targets.includes('c_fc')) out.push({ layer, name: 'c_fc' });
      if (targets.includes('c_proj')) out.push({ layer, name: 'c_proj', mlp: true });
    } else {
      for (const t of known) if (targets.includes(t)) out.push({ layer, name: t });
    }
  }
  return out;
}

function modulePath(cfg: ModelConfig, m: NativeAdapterModule): string {
  if (cfg.arch === 'gpt2') return `transformer.h.${m.layer}.${m.name === 'c_proj' ? (m.mlp ? 'mlp' : 'attn') : m.name === 'c_fc' ? 'mlp' : 'attn'}.${m.name}`;
  return `model.layers.${m.layer}.${['gate_proj', 'up_proj', 'down_proj', 'gate_up_proj'].includes(m.name) ? 'mlp' : 'self_attn'}.${m.name}`;
}

/** A model folder's tokenizer files (those present are copied beside saved weights and adapters). */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'];

function copyFiles(from: string, to: string, names: readonly string[]): void {
  for (const f of names) {
    const src = path.join(from, f);
    if (fs.existsSync(src) && path.resolve(src) !== path.resolve(path.join(to, f))) fs.copyFileSync(src, path.join(to, f));
  }
}

export class Trainer {
  private loras = new Map<string, Required<Omit<LoraOptions, 'seed' | 'name' | 'head'>> & { modules: NativeAdapterModule[]; head: boolean }>();
  private active: string | null = null;

  constructor(
    private readonly handle: NativeModel,
    readonly config: ModelConfig,
  ) {}

  /** Trains every base weight (needs fp32 weights). */
  enableFullTraining(): void {
    callNative(() => this.handle.enableFullTraining());
  }

  /** A fresh LoRA adapter with PEFT's initialisation (A Kaiming-uniform, B zero). */
  createLora(opts: LoraOptions = {}): { scale: number; parameters: number } {
    const targets = opts.targets ?? allLinearTargets(this.config);
    const modules = loraModules(this.config, targets);
    const r = opts.r ?? 8, alpha = opts.alpha ?? 16, rslora = opts.rslora ?? false, dropout = opts.dropout ?? 0;
    const name = opts.name ?? 'default';
    const h = opts.head;
    const head = h ? { rows: 1, std: typeof h === 'object' ? h.std : undefined, from: typeof h === 'object' ? h.from : undefined } : undefined;
    const res = callNative(() => this.handle.createAdapter({ name, r, alpha, rslora, dropout, seed: opts.seed ?? 0, modules, head }));
    this.loras.set(name, { r, alpha, rslora, dropout, targets: [...targets], modules, head: !!head });
    this.active = name;
    return res;
  }

  /** Makes a named adapter the active one (forward, generate and training use it); null runs the frozen base alone. */
  useAdapter(name: string | null): string[] {
    const names = callNative(() => this.handle.setAdapter(name));
    this.active = name;
    return names;
  }

  /** Continues training (or runs) a saved PEFT LoRA adapter, with its score head if it has one. */
  loadLora(dir: string, name = 'default'): { scale: number; parameters: number } {
    const cfg = readAdapterConfig(dir);
    const all = loraModules(this.config, cfg.targetModules);
    const saved = savedLoraTensors(dir, all.map((m) => modulePath(this.config, m)));
    const modules = all.filter((m) => saved.modules.has(modulePath(this.config, m)));
    if (modules.length === 0) throw new RlhfError('E_MODEL', `${saved.file}: no LoRA tensors for this model`, { where: saved.file });
    for (const m of modules) Object.assign(m, saved.modules.get(modulePath(this.config, m)));
    const headFrom = saved.head ?? undefined;
    const res = callNative(() =>
      this.handle.createAdapter({ name, r: cfg.r, alpha: cfg.loraAlpha, rslora: cfg.useRslora, modules, head: headFrom ? { rows: 1, from: headFrom } : undefined }),
    );
    this.loras.set(name, { r: cfg.r, alpha: cfg.loraAlpha, rslora: cfg.useRslora, dropout: 0, targets: cfg.targetModules, modules, head: !!headFrom });
    this.active = name;
    return res;
  }

  /** The forward pass keeping every activation for backward(). */
  forward(input: ForwardInput): Promise<ForwardOutput> {
    return runForward(this.handle, this.config, input, true);
  }

  /**
   * Gradients of the last forward's outputs, flat: dlogp/dentropy [batch*(seq-1)], dvalues [batch*seq].
   * An output given no array takes the gradient the last loss call left on the device: backward({}).
   */
  backward(grads: { dlogp?: Float32Array; dentropy?: Float32Array; dvalues?: Float32Array } = {}): Promise<void> {
    return this.handle.backward(grads).catch((e: unknown) => {
      throw fromNative(e);
    });
  }

  /** SFT's masked mean NLL of the last training forward's logp, on the device (see lib/engine/objectives.ts). */
  sftLoss(input: SftLossInput = {}): Promise<SftLossStats> {
    return sftObjective(this.handle, input);
  }

  /** The reward model's pairwise loss over the last training forward's values (chosen rows, then rejected rows). */
  pairwiseLoss(input: PairwiseLossInput = {}): Promise<PairwiseLossStats> {
    return pairwiseObjective(this.handle, input);
  }

  /** DPO over the last training forward's logp (chosen rows, then rejected rows) against reference sums. */
  dpoLoss(input: DpoLossInput): Promise<DpoLossStats> {
    return dpoObjective(this.handle, input);
  }

  /** KTO over the last training forward's logp (one row per example) against reference sums and a KL reference point. */
  ktoLoss(input: KtoLossInput): Promise<KtoLossStats> {
    return ktoObjective(this.handle, input);
  }

  /** PPO's clipped surrogate / clipped value loss / KL / entropy over the last training forward's logp and/or values. */
  ppoLoss(input: PpoLossInput): Promise<PpoLossStats> {
    return ppoObjective(this.handle, input);
  }

  step(opts: NativeStepOptions) {
    return this.handle.step(opts).catch((e: unknown) => {
      throw fromNative(e);
    });
  }

  /** Zeroes the gradients of the active trainable set (one memset). */
  async zeroGrad(): Promise<void> {
    callNative(() => this.handle.zeroGrad());
  }

  /** Sums the gradients over the MPI world, in place: data-parallel training, between the last backward and step() (lib/train/data-parallel.ts). */
  allReduceGrads(): void {
    callNative(() => this.handle.allReduceGrads());
  }

  trainable() {
    return callNative(() => this.handle.trainable());
  }

  read(name: string, which: 'value' | 'grad' | 'm' | 'v' = 'value'): Float32Array {
    return callNative(() => this.handle.readTrainable(name, which));
  }

  /**
   * Writes the (fully fine-tuned) base weights as a Hugging Face model folder:
   * model.safetensors (F32) plus the source folder's config and tokenizer files.
   */
  async saveModel(dir: string, sourceDir: string): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    callNative(() => this.handle.saveWeights(path.join(dir, 'model.safetensors')));
    copyFiles(sourceDir, dir, ['config.json', 'generation_config.json', ...TOKENIZER_FILES]);
    const cfgFile = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    cfg.torch_dtype = 'float32';
    if (this.config.architecture !== (cfg.architectures ?? [])[0]) {
      // Loaded with another head (a reward model made from a causal LM): say so in the saved config.
      cfg.architectures = [this.config.architecture];
      if (this.config.head === 'score') {
        cfg.num_labels = 1;
        cfg.id2label = { 0: 'LABEL_0' };
        cfg.label2id = { LABEL_0: 0 };
        // *ForSequenceClassification finds each row's last token through pad_token_id.
        cfg.pad_token_id ??= this.config.padTokenId ?? this.config.eosTokenIds[0] ?? null;
      }
    }
    fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2) + '\n');
  }

  /** Overwrites one trainable tensor (Hugging Face layout). */
  write(name: string, values: Float32Array): void {
    callNative(() => this.handle.writeTrainable(name, values));
  }

  /** Tests: the next training forward reuses the dropout masks of forward number n+1. */
  setDropoutCounter(n: number): void {
    callNative(() => this.handle.setDropoutCounter(n));
  }

  /** AdamW moments (or SGD momentum) and the step count, for resuming exactly. */
  async saveOptimizerState(file: string): Promise<void> {
    callNative(() => this.handle.saveOptimizerState(file));
  }

  loadOptimizerState(file: string): void {
    callNative(() => this.handle.loadOptimizerState(file));
  }

  /** Writes the adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors). */
  async saveLora(dir: string, baseModel: string | null = null): Promise<void> {
    const lora = this.active !== null ? this.loras.get(this.active) : undefined;
    if (!lora) throw new RlhfError('E_ARGUMENT', 'saveLora: no adapter is active');
    fs.mkdirSync(dir, { recursive: true });
    callNative(() => this.handle.saveAdapter(path.join(dir, 'adapter_model.safetensors')));
    writeAdapterConfig(dir, {
      r: lora.r,
      loraAlpha: lora.alpha,
      loraDropout: lora.dropout,
      useRslora: lora.rslora,
      targetModules: lora.targets,
      fanInFanOut: this.config.arch === 'gpt2',
      seqCls: this.config.head === 'score' || lora.head,
      savesHead: lora.head,
      baseModel,
    });
    // The base model's tokenizer beside the adapter, as PEFT and TRL save it: the folder is usable alone.
    if (baseModel) copyFiles(baseModel, dir, TOKENIZER_FILES);
  }
}
