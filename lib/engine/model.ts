/**
 * A loaded model on the native engine: forward (per-token log-probs,
 * entropies, score-head values) and batched generation, both async (they run
 * on a worker thread; the event loop stays free).
 */
import { callNative, fromNative, RlhfError } from '../errors';
import { native, NativeModel, NativeModelConfig, NativeGenerateResult } from '../native';
import { openModelFolder, ModelFolder } from '../model/folder';
import type { ModelConfig } from '../model/config';
import { resolveDevice, type Device, type ResolvedDevice } from '../info';
import { adapterHead, readLoraPairs } from '../model/peft';
import { architectureName, readModelConfig } from '../model/config';
import { checkMemory, type MemoryShape } from './memory';
import { Trainer } from './train';
import { runForward, type ForwardInput, type ForwardOutput } from './forward';
import {
  dpoEvaluation,
  ktoEvaluation,
  pairwiseEvaluation,
  sequenceLogpsEvaluation,
  sftEvaluation,
  type DpoEvalInput,
  type DpoLossStats,
  type KtoEvalInput,
  type KtoLossStats,
  type PairwiseEvalInput,
  type PairwiseLossStats,
  type SequenceLogpsInput,
  type SftEvalInput,
  type SftLossStats,
} from './objectives';

// The forward pass's types and helpers live in ./forward (shared with ./train
// without an import circle); re-exported here, where they always were.
export { packBatch, runForward } from './forward';
export type { ForwardInput, ForwardOutput } from './forward';

export interface LoadModelOptions {
  /** 'auto' (default: the GPU when one is usable), 'cpu', 'cuda', or 'cpu-guarded' (testing; see lib/info.ts). */
  device?: Device;
  /** A PEFT LoRA adapter folder merged into the weights at load. */
  adapter?: string;
  /**
   * How the frozen matrices are kept in memory: 'f32' (default) or 'bf16'
   * (rounded to nearest even; compute and accumulation stay fp32). bf16
   * halves the bytes each matrix multiply streams; it is lossless when the
   * checkpoint itself is bf16.
   */
  weightsDtype?: 'f32' | 'bf16';
  /**
   * Which head to load: 'lm' (causal LM) or 'score' (a scalar head, as
   * *ForSequenceClassification with num_labels 1). Default: the folder's own,
   * or 'score' when `adapter` carries a score head. Loading a causal-LM folder
   * with 'score' makes a fresh head (see `scoreInit`); its LM head is not read.
   */
  head?: 'lm' | 'score';
  /** Seed and std of a fresh score head (transformers' initializer_range, 0.02). Default seed 0. */
  scoreInit?: { std?: number; seed?: number };
  /**
   * What the caller will run on the model, for the memory check made before
   * anything is read or allocated (lib/engine/memory.ts): a stage passes its
   * batch, sequence length, trainable set and generation sizes. Default: the
   * weights and one forward of one row. `what` names the work in the error.
   */
  memory?: MemoryShape & { what?: string; hint?: string };
}

export interface GenerateInput {
  prompts: number[][] | Int32Array[];
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  eosIds?: number[];
  stopStrings?: string[];
  /** Bytes of each token id, needed with stopStrings. */
  tokenBytes?: Buffer[];
}

export function nativeConfig(cfg: ModelConfig): NativeModelConfig {
  const llama = cfg.arch !== 'gpt2';
  const out: NativeModelConfig = {
    arch: llama ? 'llama' : 'gpt2',
    vocab: cfg.vocabSize,
    hidden: cfg.hiddenSize,
    intermediate: cfg.intermediateSize,
    layers: cfg.numLayers,
    heads: cfg.numHeads,
    kvHeads: cfg.numKvHeads,
    headDim: cfg.headDim,
    maxPositions: cfg.maxPositions,
    normEps: cfg.normEps,
    qkvBias: cfg.qkvBias,
    oBias: cfg.oBias,
    mlpBias: cfg.mlpBias,
    qkNorm: cfg.qkNorm,
    fusedProj: cfg.fusedProj,
    rotaryDim: cfg.rotaryDim,
    geglu: llama && cfg.hiddenAct !== 'silu',
    tieEmbeddings: cfg.tieWordEmbeddings,
    lmHead: cfg.head === 'lm',
    numLabels: cfg.head === 'score' ? cfg.numLabels ?? 1 : 0,
    prefix: llama ? 'model.' : 'transformer.',
  };
  if (cfg.gemma) {
    out.embedScale = cfg.gemma.embedScale;
    out.normOffset = 1;
    out.sandwichNorm = true;
    out.attnScale = cfg.gemma.queryPreAttnScalar ** -0.5;
    out.localLayers = cfg.gemma.layerTypes.map((t) => (t === 'sliding_attention' ? 1 : 0));
    out.ropeLocalTheta = cfg.gemma.localRopeTheta;
  }
  if (cfg.rope) {
    out.ropeTheta = cfg.rope.theta;
    const s = cfg.rope.scaling;
    out.ropeScaling = s.type;
    if (s.type === 'linear') out.ropeFactor = s.factor;
    if (s.type === 'llama3') {
      out.ropeFactor = s.factor;
      out.ropeLowFreqFactor = s.lowFreqFactor;
      out.ropeHighFreqFactor = s.highFreqFactor;
      out.ropeOriginalMaxPositions = s.originalMaxPositions;
    }
    if (s.type === 'longrope') {
      out.ropeShortFactor = s.shortFactor;
      out.ropeLongFactor = s.longFactor;
      out.ropeOriginalMaxPositions = s.originalMaxPositions;
      out.ropeAttentionFactor = s.attentionFactor;
    }
  }
  return out;
}

export class Model {
  private constructor(
    readonly folder: ModelFolder,
    readonly config: ModelConfig,
    private handle: NativeModel | null,
    readonly device: ResolvedDevice,
  ) {}

  static async load(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
    const device = resolveDevice(opts.device ?? 'auto');
    // Memory first, from config.json alone: a model that cannot fit is refused before its weights are read.
    // (A folder without a readable config fails in openModelFolder with its own error.)
    let declared: ModelConfig | null = null;
    try {
      declared = readModelConfig(dir);
    } catch {
      declared = null;
    }
    if (declared) {
      const { what, hint, ...shape } = opts.memory ?? {};
      checkMemory(declared, { weightsDtype: opts.weightsDtype, ...shape }, what ?? `loading ${dir}`, hint);
    }
    const folder = openModelFolder(dir);
    try {
      const tensors: Record<string, [string, string]> = {};
      for (const t of folder.tensors) tensors[t.canonical] = [t.file, t.name];
      const loras = opts.adapter ? readLoraPairs(opts.adapter, new Set(Object.keys(tensors))).pairs : undefined;
      const headFromAdapter = opts.adapter ? adapterHead(opts.adapter) : null;
      const head = opts.head ?? (headFromAdapter ? 'score' : folder.config.head);
      let config = folder.config;
      if (head !== config.head) {
        config = { ...config, head, numLabels: head === 'score' ? 1 : null, architecture: architectureName(config.arch, head) };
        if (head === 'lm' && !config.tieWordEmbeddings && !tensors['lm_head.weight'])
          throw new RlhfError('E_MODEL', `${dir}: has no LM head (lm_head.weight) to load as a causal LM`, { where: dir });
      }
      if (head === 'score' && headFromAdapter) tensors['score.weight'] = headFromAdapter;
      const scoreInit = head === 'score' && !tensors['score.weight'] ? { std: opts.scoreInit?.std ?? config.initializerRange, seed: opts.scoreInit?.seed ?? 0 } : undefined;
      const handle = await native()
        .loadModel({ config: { ...nativeConfig(config), weightsBf16: opts.weightsDtype === 'bf16' }, tensors, loras, scoreInit, device })
        .catch((e: unknown) => {
          throw fromNative(e);
        });
      return new Model(folder, config, handle, device);
    } finally {
      folder.close();
    }
  }

  private live(): NativeModel {
    if (!this.handle) throw new RlhfError('E_ARGUMENT', 'the model was disposed');
    return this.handle;
  }

  async forward(input: ForwardInput): Promise<ForwardOutput> {
    return runForward(this.live(), this.config, input, false);
  }

  // Evaluation losses (lib/engine/objectives.ts): the loss kernels on the
  // model's device over the outputs of the last forward() (run it with
  // `download: false` so that nothing per token comes back), no gradients;
  // only the statistics (or, for sequenceLogps, one sum per row) come back.
  // Refused (E_ARGUMENT) without an earlier forward().

  /** SFT's masked mean NLL of the last forward's logp: {loss, tokens, nllSum}. */
  sftLoss(input: SftEvalInput): Promise<SftLossStats> {
    return sftEvaluation(this.live(), input);
  }

  /** The reward model's pairwise loss over the last forward's values (chosen rows, then rejected rows). */
  pairwiseLoss(input: PairwiseEvalInput = {}): Promise<PairwiseLossStats> {
    return pairwiseEvaluation(this.live(), input);
  }

  /** DPO's loss and implicit-reward statistics over the last forward's logp (chosen rows, then rejected rows). */
  dpoLoss(input: DpoEvalInput): Promise<DpoLossStats> {
    return dpoEvaluation(this.live(), input);
  }

  /** KTO's loss and statistics over the last forward's logp (one row per example). */
  ktoLoss(input: KtoEvalInput): Promise<KtoLossStats> {
    return ktoEvaluation(this.live(), input);
  }

  /** Each row's sum of the last forward's logp over `mask` (flat [batch, seq-1]): a Float32Array [batch]. */
  sequenceLogps(input: SequenceLogpsInput): Promise<Float32Array> {
    return sequenceLogpsEvaluation(this.live(), input);
  }

  async generate(input: GenerateInput): Promise<NativeGenerateResult> {
    const prompts = (input.prompts as ArrayLike<number>[]).map((p) => Int32Array.from(p));
    const longest = prompts.reduce((m, p) => Math.max(m, p.length), 0);
    const ctx = this.config.maxSequenceLength, maxNew = input.maxNewTokens ?? 64;
    if (longest > ctx)
      throw new RlhfError('E_ARGUMENT', `generate: a prompt of ${longest} tokens is longer than the model's context of ${ctx} tokens; shorten the prompts`);
    if (longest + maxNew > ctx)
      throw new RlhfError(
        'E_ARGUMENT',
        `generate: a prompt of ${longest} tokens plus ${maxNew} new tokens exceeds the model's context of ${ctx} tokens; shorten the prompts to ${Math.max(0, ctx - maxNew)} tokens or ask for at most ${ctx - longest} new tokens`,
      );
    return this.live()
      .generate({
        prompts,
        maxNewTokens: input.maxNewTokens ?? 64,
        temperature: input.temperature ?? 0,
        topK: input.topK ?? 0,
        topP: input.topP ?? 1,
        seed: input.seed ?? 0,
        eosIds: input.eosIds ?? this.config.eosTokenIds,
        stopStrings: input.stopStrings ?? [],
        tokenBytes: input.tokenBytes,
      })
      .catch((e: unknown) => {
        throw fromNative(e);
      });
  }

  info() {
    return callNative(() => this.live().info());
  }

  /** Training on this model (LoRA adapter or full fine-tuning); see lib/engine/train.ts. */
  trainer(): Trainer {
    this.trainerInstance ??= new Trainer(this.live(), this.config);
    return this.trainerInstance;
  }

  private trainerInstance?: Trainer;

  dispose(): void {
    this.handle?.dispose();
    this.handle = null;
  }
}

export function loadModel(dir: string, opts?: LoadModelOptions): Promise<Model> {
  return Model.load(dir, opts);
}
