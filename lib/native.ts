/**
 * Loads the native addon and declares its whole surface (native/addon.cc).
 *
 * Looks for the binary with node-gyp-build (build/Release, build/Debug,
 * prebuilds/), or at RLHF_NATIVE_PATH when set. When loading fails, the error
 * lists every place tried, why each failed, and what to do about it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from './errors';

export interface NativeCudaDevice {
  index: number;
  name: string;
  computeCapability: string;
  totalMemory: number;
  smCount: number;
}

export interface NativeInfo {
  cpu: { simd: string; threads: number; avx2: boolean; avx512: boolean; avx512_bf16: boolean };
  cuda: {
    compiled: boolean;
    runtimeVersion: number;
    driverVersion: number;
    archs: string[];
    devices: NativeCudaDevice[];
    error?: string;
    errorCode?: number;
  };
  backends: string[];
  buildSystem?: string;
  compiler: string;
  /** true in the AddressSanitizer + UndefinedBehaviorSanitizer test build (scripts/sanitize-native.sh). */
  sanitize?: boolean;
}

/** Safetensors dtype names, as in the format spec. */
export type Dtype =
  | 'BOOL' | 'U8' | 'I8' | 'F8_E5M2' | 'F8_E4M3' | 'I16' | 'U16' | 'F16' | 'BF16'
  | 'I32' | 'U32' | 'F32' | 'F64' | 'I64' | 'U64';

export interface NativeTensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** [begin, end) byte offsets relative to the start of the data section. */
  dataOffsets: [number, number];
}

export interface NativeSafetensorsHeader {
  /** The `__metadata__` string map, or null when absent. */
  metadata: Record<string, string> | null;
  /** Tensors in the order of their data offsets. */
  tensors: NativeTensorInfo[];
  /** Size of the JSON header in bytes (the u64 at the start of the file). */
  headerLength: number;
  /** Absolute file offset of the data section (8 + headerLength). */
  dataStart: number;
  fileSize: number;
}

/** A mmapped, fully validated .safetensors file. */
export interface NativeSafetensorsFile {
  header(): NativeSafetensorsHeader;
  /** A copy of one tensor's raw little-endian bytes (for inspection and tests, never for compute). */
  tensorBytes(name: string): Buffer;
  /** Whether the tensor's data is aligned for zero-copy use as its dtype. */
  isAligned(name: string): boolean;
  close(): void;
}

/** How the writer fills a tensor it generates natively (no bytes cross from JS). */
export type NativeFill =
  | { kind: 'zeros' }
  | { kind: 'ones' }
  | { kind: 'const'; value: number }
  | { kind: 'normal'; std: number; seed: number; mean?: number }
  | { kind: 'uniform'; low: number; high: number; seed: number };

export interface NativeTensorToWrite {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Raw little-endian bytes, exactly shape x dtype size. Exactly one of data / fill. */
  data?: Buffer | Uint8Array;
  fill?: NativeFill;
}

/** Normalised model shape handed to native code (see native/model/config.h). */
export interface NativeModelConfig {
  arch: 'llama' | 'gpt2';
  vocab: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  maxPositions: number;
  normEps: number;
  ropeTheta?: number;
  ropeScaling?: 'none' | 'linear' | 'llama3' | 'longrope';
  ropeFactor?: number;
  ropeLowFreqFactor?: number;
  ropeHighFreqFactor?: number;
  ropeOriginalMaxPositions?: number;
  /** LongRoPE: per-frequency divisors [rotaryDim/2] and the cos/sin factor. */
  ropeShortFactor?: number[];
  ropeLongFactor?: number[];
  ropeAttentionFactor?: number;
  /** Partial rotary: leading dims of each head rotated (default headDim). */
  rotaryDim?: number;
  /** Phi-3: fused qkv_proj / gate_up_proj tensors and LoRA modules. */
  fusedProj?: boolean;
  /** Gemma 3: embedding scale, RMSNorm (normOffset + w), post norms on block outputs, GeGLU, attention scale, sliding-window layers (1) and their RoPE base. */
  embedScale?: number;
  normOffset?: number;
  sandwichNorm?: boolean;
  geglu?: boolean;
  attnScale?: number;
  localLayers?: number[];
  ropeLocalTheta?: number;
  qkvBias: boolean;
  /** Qwen3: per-head q/k RMSNorm before RoPE. */
  qkNorm?: boolean;
  oBias: boolean;
  mlpBias: boolean;
  tieEmbeddings: boolean;
  lmHead: boolean;
  numLabels: number;
  prefix: string;
  weightsBf16?: boolean;
}

export interface NativeModelSpec {
  config: NativeModelConfig;
  /** canonical tensor name -> [safetensors file, name stored in that file] */
  tensors: Record<string, [string, string]>;
  /** LoRA pairs merged into base weights at load: W += scale * B A. */
  loras?: { target: string; a: [string, string]; b: [string, string]; scale: number }[];
  /** Makes score.weight ~ N(0, std^2) when the files lack it (a reward model or critic from a causal LM). */
  scoreInit?: { std: number; seed: number };
  /** 'cpu' (default), 'cuda', 'auto' or 'cpu-guarded' (see Device in lib/info.ts). */
  device?: string;
}

export interface NativeForwardRequest {
  batch: number;
  seq: number;
  ids: Int32Array;
  mask?: Uint8Array;
  logp?: boolean;
  values?: boolean;
  lastLogits?: boolean;
  temperature?: number;
  /** Training forward: d loss / d logp [batch, seq-1], known before the forward; backward() then takes no dlogp. */
  lmGrad?: Float32Array;
  /** Training forward, instead of lmGrad: SFT's loss mask [batch, seq-1]; the gradient -mask / sftDenom is made on the device. */
  sftMask?: Float32Array;
  /** The masked mean's denominator with sftMask (<= 0 or absent: max(1, sum(mask))). */
  sftDenom?: number;
  /** Label smoothing eps in [0, 1] of the SFT loss made with sftMask (default 0). */
  sftLabelSmoothing?: number;
  /**
   * false keeps the outputs in backend memory only (the result has no arrays):
   * for loss() after a training forward, for evalLoss() after an inference forward. Default true.
   */
  download?: boolean;
}

/**
 * One loss call (Model.loss): the loss kernels on the model's backend over
 * the last training forward's outputs, the gradients left there for
 * backward(). Per-token arrays are [batch, seq-1] (the forward's logp
 * layout), per-pair arrays [batch / 2] (chosen rows then rejected rows).
 * See native/model/objective.h.
 */
export type NativeLossRequest =
  | {
      kind: 'sft';
      mask?: Float32Array;
      denom?: number;
      /** eps in [0, 1]: (1 - eps) NLL + eps (mean over the vocabulary of -log p); default the forward's (sftLoss), else 0. */
      labelSmoothing?: number;
      /** Entropy bonus: - entCoef * (masked mean entropy), its gradient to the entropy output (a forward without sftMask/lmGrad). */
      entCoef?: number;
      gradScale?: number;
    }
  | { kind: 'pairwise'; last?: Int32Array; margin?: Float32Array; /** Soft labels P(chosen better) per pair (RLAIF): cross-entropy instead of -log sigmoid. */ target?: Float32Array; gradScale?: number }
  | {
      kind: 'dpo';
      /** Each row's completion tokens, flat [batch, seq-1] (see spanMask). */
      mask: Float32Array;
      /** Reference sequence log-prob sums, one per pair; absent for the reference-free losses (simpo, orpo). */
      refChosen?: Float32Array;
      refRejected?: Float32Array;
      beta: number;
      /** The loss of the family (docs/losses.md); default 'sigmoid'. */
      lossType?: PrefLossType;
      labelSmoothing?: number;
      /** SimPO's target reward margin. */
      gamma?: number;
      /** Per-token scores (each row's sums over its completion length) for any loss; ipo, simpo and orpo always use them. */
      lengthNormalize?: boolean;
      gradScale?: number;
    }
  | {
      kind: 'kto';
      /** Each row's completion tokens, flat [batch, seq-1]. */
      mask: Float32Array;
      /** The reference's sequence log-prob sums, one per row. */
      refLogps: Float32Array;
      /** 1 for a desirable row, 0 for an undesirable one. */
      desirable: Float32Array;
      /** The KL reference point (>= 0), held constant. */
      kl: number;
      beta: number;
      desirableWeight?: number;
      undesirableWeight?: number;
      gradScale?: number;
    }
  | {
      kind: 'ppo';
      /** Tokens in the loss (the response tokens), flat [batch, seq-1]. */
      mask: Float32Array;
      /** Policy part (a forward with logp): rollout log-probs and advantages. */
      oldLogp?: Float32Array;
      advantages?: Float32Array;
      /** Reference log-probs for a KL term in the loss (klCoef). */
      refLogp?: Float32Array;
      /** Value part (a forward with values): returns and rollout values. */
      returns?: Float32Array;
      oldValues?: Float32Array;
      /** The ratio's lower bound is 1 - clipRange, its upper 1 + clipRangeHigh (default clipRange; DAPO's clip-higher raises it). */
      clipRange?: number;
      clipRangeHigh?: number;
      clipRangeValue?: number;
      vfCoef?: number;
      klCoef?: number;
      klEstimator?: 'k1' | 'k2' | 'k3';
      /** The KL term times the probability ratio (TRL's use_bias_correction_kl; its gradient is then the unbiased reverse-KL one). */
      klTimesRatio?: boolean;
      entCoef?: number;
      gradScale?: number;
      /**
       * The divisor of the masked means (default sum(mask)): a minibatch's
       * total when it is split into micro-batches, or a constant (Dr. GRPO).
       * The mask's values are weights (GRPO's per-sequence mean: 1/length).
       */
      denom?: number;
      /**
       * Sequence-level ratio (TRL's RLOO): oldLogp and advantages hold one
       * value per row (the rollout's sequence log-prob sum over `mask`); the
       * surrogate is a mean over rows (or a sum over denom). The policy part
       * alone: no refLogp, klCoef or entCoef.
       */
      sequence?: boolean;
    };

/**
 * One evaluation call (Model.evalLoss): the loss kernels on the model's
 * backend over the last INFERENCE forward's outputs, no gradients (nothing is
 * left for backward()). The layouts of NativeLossRequest; 'sequenceLogps'
 * returns the per-row masked sums of logp. See native/model/objective.h.
 */
export type NativeEvalLossRequest =
  | { kind: 'sft'; mask: Float32Array; denom?: number; labelSmoothing?: number }
  | { kind: 'pairwise'; last?: Int32Array; margin?: Float32Array; target?: Float32Array }
  | Omit<Extract<NativeLossRequest, { kind: 'dpo' }>, 'gradScale'>
  | Omit<Extract<NativeLossRequest, { kind: 'kto' }>, 'gradScale'>
  | { kind: 'sequenceLogps'; mask: Float32Array };

/** The preference losses of the dpo_loss op (ops/op_args.h DpoLossOp). */
export type PrefLossType = 'sigmoid' | 'robust' | 'hinge' | 'ipo' | 'simpo' | 'orpo';

export interface NativeForwardResult {
  logp?: Float32Array;
  entropy?: Float32Array;
  values?: Float32Array;
  lastLogits?: Float32Array;
}

export interface NativeGenerateRequest {
  prompts: Int32Array[];
  maxNewTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  eosIds?: number[];
  stopStrings?: string[];
  tokenBytes?: Buffer[];
}

export interface NativeGenerateResult {
  tokens: Int32Array[];
  logprobs: Float32Array[];
  finish: ('eos' | 'stop' | 'length' | 'cancelled')[];
}

export interface NativeAdapterModule {
  layer: number;
  /** PEFT module name: q_proj ... down_proj, or c_attn / c_proj / c_fc (GPT-2). */
  name: string;
  /** GPT-2: the c_proj under `mlp` (true) or under `attn` (false). */
  mlp?: boolean;
  /** Initial lora_A / lora_B as [file, tensor name]; omitted: PEFT's initialisation. */
  a?: [string, string];
  b?: [string, string];
}

export interface NativeStepOptions {
  optimizer?: 'adamw' | 'sgd';
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  momentum?: number;
  /** Global-norm clipping; 0 disables. */
  maxGradNorm?: number;
  /** Tensor names exempt from weight decay. */
  noDecay?: string[];
}

export interface NativeModel {
  forward(req: NativeForwardRequest): Promise<NativeForwardResult>;
  forwardTrain(req: NativeForwardRequest): Promise<NativeForwardResult>;
  /** Gradients of the last training forward's outputs; an output given no array takes the gradient a loss() call left on the device. */
  backward(grads: { dlogp?: Float32Array; dentropy?: Float32Array; dvalues?: Float32Array }): Promise<void>;
  /** The loss kernels over the last training forward's device outputs: named scalars ('loss' first); the gradients stay for backward(). */
  loss(req: NativeLossRequest): Promise<Record<string, number>>;
  /** Per-row masked sums of the last inference forward's logp [batch], on the device. */
  evalLoss(req: Extract<NativeEvalLossRequest, { kind: 'sequenceLogps' }>): Promise<{ sums: Float32Array }>;
  /** The loss kernels over the last inference forward's device outputs, no gradients: named scalars ('loss' first). */
  evalLoss(req: Exclude<NativeEvalLossRequest, { kind: 'sequenceLogps' }>): Promise<Record<string, number>>;
  /** One optimizer step; a NaN/infinite gradient norm is not applied (`skipped`, nothing changes). */
  step(opts: NativeStepOptions): Promise<{ gradNorm: number; clipCoef: number; step: number; skipped: boolean }>;
  zeroGrad(): void;
  /** Sums the active trainable set's gradient slab over the MPI world, in place (after commInit). */
  allReduceGrads(): void;
  enableFullTraining(): void;
  createAdapter(spec: {
    name?: string;
    r: number;
    alpha: number;
    rslora?: boolean;
    dropout?: number;
    seed?: number;
    modules: NativeAdapterModule[];
    /** A trainable score head owned by the adapter: copied from `from`, else N(0, std^2). */
    head?: { rows: number; std?: number; from?: [string, string] };
  }): { scale: number; parameters: number };
  trainable(): { name: string; shape: number[] }[];
  readTrainable(name: string, which?: 'value' | 'grad' | 'm' | 'v'): Float32Array;
  saveAdapter(path: string): void;
  /** Every base tensor in the Hugging Face layout (F32). */
  saveWeights(path: string): void;
  /** Selects the active adapter by name (null: the frozen base alone); returns every adapter's name. */
  setAdapter(name: string | null): string[];
  saveOptimizerState(path: string): void;
  writeTrainable(name: string, values: Float32Array): void;
  setDropoutCounter(n: number): void;
  loadOptimizerState(path: string): void;
  generate(req: NativeGenerateRequest): Promise<NativeGenerateResult>;
  info(): { parameters: number; weightsDtype: 'f32' | 'bf16'; vocab: number; hidden: number; layers: number; hasLmHead: boolean; hasScoreHead: boolean; device: string; threads: number; transfers?: { uploads: number; uploadBytes: number; downloads: number; downloadBytes: number } };
  dispose(): void;
}

export interface NativeAddon {
  loadModel(spec: NativeModelSpec): Promise<NativeModel>;
  /**
   * Runs one op on typed arrays (tests and the GPU check only). With
   * `args.device` 'cuda' (or 'cpu-copy': the CPU backend through the same
   * copy-in/copy-out path) the arrays are copied to the device and back and
   * the result says where it ran; `args.repeat` > 0 adds the mean kernel time.
   */
  runOp(name: string, args: Record<string, unknown>): void | { device: string; ms?: number };
  opKernels(): { kernels: string[]; ops: string[] };
  /** The op table and what the CUDA backend covers (answered without a GPU). */
  cudaOps(): { compiled: boolean; ops: { name: string; family: string; f32: boolean; bf16: boolean }[] };
  /** Times one fused CUDA kernel on device-resident random data (throws E_CUDA without a GPU). */
  cudaBench(name: 'gemm_bf16' | 'gemm_f32' | 'attention' | 'lm_head' | 'ppo_loss', params: Record<string, number | boolean>): Record<string, number | string>;
  info(): NativeInfo;
  SafetensorsFile: new (path: string) => NativeSafetensorsFile;
  /** Writes a .safetensors file (to a temporary name, then renamed). Returns the file size. */
  writeSafetensors(path: string, tensors: NativeTensorToWrite[], metadata: Record<string, string> | null): number;
  /** Loads OpenMPI at run time (dlopen) and initializes it once; E_UNSUPPORTED when no OpenMPI loads. */
  commInit(): NativeCommWorld;
  /** What commInit found; `initialized: false` before it. */
  commWorld(): NativeCommWorld;
  commFinalize(): void;
  /** Ends every rank of the job with this exit code. */
  /** In place on every rank; 'max' takes a Float64Array. */
  commAllReduce(data: Float32Array | Float64Array, op?: 'sum' | 'max'): void;
  /** Root's bytes into every rank's array (the same length on every rank). */
  commBroadcast(data: Float32Array | Float64Array | Uint8Array | Int32Array, root: number): void;
  commBarrier(): void;
}

export interface NativeCommWorld {
  initialized: boolean;
  rank: number;
  size: number;
  /** The MPI library file loaded ('' before commInit). */
  library: string;
  /** MPI_Get_library_version's first part, e.g. 'Open MPI v4.1.4'. */
  version: string;
}

function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'rlhf-native') return dir;
      } catch {
        /* keep walking up */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(__dirname, '..', '..');
    dir = up;
  }
}

export const PACKAGE_ROOT = packageRoot();

let cached: NativeAddon | undefined;
let loadedFrom: string | undefined;

function explain(message: string): string {
  if (/GLIBC|GLIBCXX/.test(message)) return 'the binary needs a newer C/C++ runtime than this system has; rebuild it here with `npm rebuild rlhf-native`';
  if (/invalid ELF header|wrong ELF class|not a valid Win32/.test(message)) return 'the binary was built for another platform or architecture; rebuild it here with `npm rebuild rlhf-native`';
  if (/No native build was found/.test(message)) return 'no binary was built; run `npm rebuild rlhf-native` (needs CMake >= 3.18 or node-gyp, and a C++17 compiler)';
  if (/NODE_MODULE_VERSION|undefined symbol: napi_/.test(message)) return 'the binary was built for another Node.js; rebuild it with `npm rebuild rlhf-native`';
  return 'rebuild it with `npm rebuild rlhf-native` and look at the build log';
}

/** The loaded addon (loaded on first use). Throws RlhfError E_NATIVE_LOAD with diagnostics. */
export function native(): NativeAddon {
  if (cached) return cached;
  const tried: string[] = [];
  const override = process.env.RLHF_NATIVE_PATH;
  if (override) {
    try {
      cached = require(path.resolve(override)) as NativeAddon;
      loadedFrom = path.resolve(override);
      return cached;
    } catch (e) {
      tried.push(`RLHF_NATIVE_PATH=${override}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as { resolve(dir: string): string };
    // node-gyp-build's own order: a local build (build/Release, build/Debug)
    // before a prebuild matching this system (prebuilds/<platform>-<arch>/).
    const file = load.resolve(PACKAGE_ROOT);
    cached = require(file) as NativeAddon;
    loadedFrom = file;
    return cached;
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0];
    tried.push(`node-gyp-build in ${PACKAGE_ROOT} (build/Release, build/Debug, prebuilds/${process.platform}-${process.arch}): ${msg}`);
    throw new RlhfError(
      'E_NATIVE_LOAD',
      [
        `could not load the rlhf-native addon for ${process.platform}-${process.arch}, Node ${process.version}.`,
        'Tried:',
        ...tried.map((t) => `  - ${t}`),
        `What to do: ${explain(msg)}.`,
      ].join('\n'),
      { cause: e },
    );
  }
}

/** Where the loaded addon came from: its file, and whether it is a shipped prebuild, a local build or RLHF_NATIVE_PATH. */
export function nativeSource(): { file: string; kind: 'prebuild' | 'local' | 'RLHF_NATIVE_PATH' } {
  native();
  const file = loadedFrom as string;
  if (process.env.RLHF_NATIVE_PATH && file === path.resolve(process.env.RLHF_NATIVE_PATH)) return { file, kind: 'RLHF_NATIVE_PATH' };
  const rel = path.relative(PACKAGE_ROOT, file);
  return { file, kind: rel.split(path.sep)[0] === 'prebuilds' ? 'prebuild' : 'local' };
}
