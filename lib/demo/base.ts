/**
 * The demo's base model: a tiny Llama whose byte-level BPE tokenizer is
 * trained on the demo world's text, pretrained on the world's corpus with the
 * SFT stage (`{text}` rows, every weight trained). The committed checkpoint
 * is models/demo-base/; `node scripts/make-demo-base.js` rebuilds it (see
 * docs/demo.md for its size, recipe and loss).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { writeSafetensors, type TensorToWrite } from '../safetensors';
import { modelConfigToHf, type ModelConfig } from '../model/config';
import { initFill } from '../model/init';
import { archTokens, paddedVocab, presetModelConfig, type ModelPreset } from '../model/presets';
import { countParameters, expectedTensors } from '../model/tensors';
import { trainBpe, writeTokenizerFiles } from '../tokenizer/bpe-train';
import { chatmlTemplate } from '../tokenizer/chat-template';
import { evaluateSft, runSft, type SftStepMetrics } from '../stages/sft';
import { loadModel } from '../engine/model';
import { loadSftData } from '../data/sft-data';
import { loadTokenizer } from '../tokenizer/tokenizer';
import { pretrainCorpus, tokenizerCorpus } from './world';

/** The shape of the demo base model. */
export interface DemoShape {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  maxPositions: number;
  /** BPE target (special tokens + 256 bytes + merges); the embedding is padded to a multiple of 64. */
  tokenizerVocab: number;
}

export const DEMO_SHAPE: DemoShape = {
  hiddenSize: 128,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  intermediateSize: 352,
  maxPositions: 128,
  tokenizerVocab: 448,
};

/** How the committed checkpoint was pretrained (make-demo-base's defaults). */
export const DEMO_PRETRAIN = {
  seed: 0,
  /** Corpus rows (the train corpus); the held-out corpus has evalRows rows of another seed. */
  rows: 6000,
  evalRows: 300,
  steps: 600,
  batchSize: 32,
  lr: 3e-3,
  warmupSteps: 30,
  lrSchedule: 'cosine' as const,
  weightDecay: 0.01,
  maxGradNorm: 1,
};

/** Seeds of the corpus used for pretraining and for the held-out loss (never equal). */
export const CORPUS_SEEDS = { train: 1, eval: 2 };

/** The repository folder that holds package.json (works from lib/ and from dist/lib/). */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        if (JSON.parse(fs.readFileSync(pkg, 'utf8')).name === 'rlhf-native') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new RlhfError('E_IO', `cannot find the rlhf-native package root above ${__dirname}`);
    dir = up;
  }
}

/** The committed pretrained base model folder (models/demo-base). */
export function demoBaseDir(): string {
  return path.join(packageRoot(), 'models', 'demo-base');
}

export interface InitDemoOptions {
  outDir: string;
  seed?: number;
  shape?: DemoShape;
  /** Write into a non-empty folder. */
  force?: boolean;
}

export interface InitDemoResult {
  outDir: string;
  config: ModelConfig;
  parameters: number;
  tokenizerVocabSize: number;
}

/**
 * A random-initialised Llama of the demo's shape with the world's tokenizer,
 * as `init` writes its presets (the same weight initialisation, ChatML chat
 * template with BOS). config.json's eos_token_id lists both `</s>` and
 * `<|im_end|>`, so generation stops at the end of an assistant turn.
 */
export function initDemoModel(opts: InitDemoOptions): InitDemoResult {
  const shape = opts.shape ?? DEMO_SHAPE;
  const seed = opts.seed ?? 0;
  const outDir = path.resolve(opts.outDir);
  if (fs.existsSync(outDir) && fs.readdirSync(outDir).length && !opts.force) throw new RlhfError('E_ARGUMENT', `${outDir} is not empty`, { where: outDir });
  fs.mkdirSync(outDir, { recursive: true });
  const tokens = archTokens('llama');
  const bpe = trainBpe({ corpus: tokenizerCorpus(), vocabSize: shape.tokenizerVocab, specialTokens: tokens.special });
  const id = (t: string) => bpe.vocab.get(t)!;
  const preset: ModelPreset = {
    hiddenSize: shape.hiddenSize,
    numLayers: shape.numLayers,
    numHeads: shape.numHeads,
    numKvHeads: shape.numKvHeads,
    intermediateSize: shape.intermediateSize,
    gpt2Inner: 4 * shape.hiddenSize,
    maxPositions: shape.maxPositions,
    gpt2MaxPositions: shape.maxPositions,
    tokenizerVocab: shape.tokenizerVocab,
  };
  const cfg = presetModelConfig('llama', preset, { vocabSize: paddedVocab(bpe.vocab.size), bos: id(tokens.bos!), eos: [id(tokens.eos), id(tokens.imEnd)], pad: id(tokens.pad) }, 'float32');
  const tensors: TensorToWrite[] = expectedTensors(cfg).map((s) => ({ name: s.name, dtype: 'F32', shape: s.shape, fill: initFill(cfg, s, seed) }));
  writeSafetensors(path.join(outDir, 'model.safetensors'), tensors, { format: 'pt' });
  const json = (f: string, o: unknown) => fs.writeFileSync(path.join(outDir, f), JSON.stringify(o, null, 2) + '\n');
  json('config.json', modelConfigToHf(cfg));
  json('generation_config.json', { bos_token_id: cfg.bosTokenId, eos_token_id: cfg.eosTokenIds, pad_token_id: cfg.padTokenId });
  writeTokenizerFiles(outDir, bpe, {
    bosToken: tokens.bos,
    eosToken: tokens.eos,
    padToken: tokens.pad,
    additionalSpecialTokens: [tokens.imStart, tokens.imEnd],
    modelMaxLength: cfg.maxPositions,
    chatTemplate: chatmlTemplate(true),
  });
  return { outDir, config: cfg, parameters: countParameters(cfg), tokenizerVocabSize: bpe.vocab.size };
}

export interface MakeDemoBaseOptions {
  out: string;
  seed?: number;
  rows?: number;
  steps?: number;
  batchSize?: number;
  lr?: number;
  shape?: DemoShape;
  /** Scratch folder for the corpus and the SFT stage's output (default: a temporary folder, removed after). */
  work?: string;
  log?: (line: string) => void;
  onStep?: (m: SftStepMetrics, info: { totalSteps: number }) => void;
}

export interface MakeDemoBaseResult {
  out: string;
  parameters: number;
  tokenizerVocabSize: number;
  vocabSize: number;
  /** Loss of the random-initialised model on the held-out corpus. */
  initialEvalLoss: number | null;
  /** Mean training loss of the first and last step. */
  initialLoss: number | null;
  finalLoss: number | null;
  /** Held-out corpus loss after pretraining. */
  evalLoss: number | null;
  steps: number;
  trainTokens: number;
  seconds: number;
  bytes: number;
}

const MODEL_FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];

/**
 * Builds the demo base: init (seeded), pretraining on `rows` corpus rows for
 * `steps` steps of full training through the SFT stage, and the model folder
 * in `out` (the five Hugging Face files plus pretraining.json, the recipe and
 * its losses).
 */
export async function makeDemoBase(opts: MakeDemoBaseOptions): Promise<MakeDemoBaseResult> {
  const p = { ...DEMO_PRETRAIN, seed: opts.seed ?? DEMO_PRETRAIN.seed, rows: opts.rows ?? DEMO_PRETRAIN.rows, steps: opts.steps ?? DEMO_PRETRAIN.steps, batchSize: opts.batchSize ?? DEMO_PRETRAIN.batchSize, lr: opts.lr ?? DEMO_PRETRAIN.lr };
  const log = opts.log ?? (() => {});
  const work = opts.work ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-demo-base-'));
  try {
    fs.mkdirSync(work, { recursive: true });
    const initDir = path.join(work, 'init');
    const init = initDemoModel({ outDir: initDir, seed: p.seed, shape: opts.shape, force: true });
    log(`demo base: ${init.parameters} parameters, tokenizer ${init.tokenizerVocabSize} tokens (embedding ${init.config.vocabSize} rows)`);
    const trainFile = path.join(work, 'corpus-train.jsonl');
    const evalFile = path.join(work, 'corpus-eval.jsonl');
    const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
    fs.writeFileSync(trainFile, jsonl(pretrainCorpus(p.rows, { seed: CORPUS_SEEDS.train })));
    fs.writeFileSync(evalFile, jsonl(pretrainCorpus(p.evalRows, { seed: CORPUS_SEEDS.eval })));
    const sftOut = path.join(work, 'pretrained');
    let initialEvalLoss: number | null = null;
    const r = await runSft(
      {
        model: initDir,
        data: trainFile,
        evalData: evalFile,
        evalSteps: Math.max(1, Math.floor(p.steps / 5)),
        out: sftOut,
        full: true,
        steps: p.steps,
        batchSize: p.batchSize,
        lr: p.lr,
        warmupSteps: p.warmupSteps,
        lrSchedule: p.lrSchedule,
        weightDecay: p.weightDecay,
        maxGradNorm: p.maxGradNorm,
        shuffle: true,
        seed: p.seed,
        maxLen: init.config.maxPositions,
        device: 'cpu',
      },
      { log, onStep: opts.onStep, handleSigint: false },
    );
    // The untrained model's held-out loss, for the record (a fresh load of the init folder).
    {
      const m = await loadModel(initDir, { device: 'cpu' });
      try {
        const ev = loadSftData(evalFile, { tokenizer: loadTokenizer(initDir), maxLen: init.config.maxPositions, vocabSize: init.config.vocabSize });
        initialEvalLoss = (await evaluateSft(m, ev.examples, 64)).loss;
      } finally {
        m.dispose();
      }
    }
    fs.mkdirSync(opts.out, { recursive: true });
    let bytes = 0;
    for (const f of MODEL_FILES) {
      fs.copyFileSync(path.join(sftOut, f), path.join(opts.out, f));
      bytes += fs.statSync(path.join(opts.out, f)).size;
    }
    const trainTokens = fs
      .readFileSync(r.metricsFile, 'utf8')
      .split('\n')
      .filter(Boolean)
      .reduce((s, l) => s + (JSON.parse(l) as SftStepMetrics).input_tokens, 0);
    const record = {
      description: 'rlhf-native demo base model: a tiny Llama pretrained on the demo world corpus (lib/demo/world.ts); rebuild with `node scripts/make-demo-base.js`',
      shape: opts.shape ?? DEMO_SHAPE,
      parameters: init.parameters,
      tokenizer_vocab: init.tokenizerVocabSize,
      pretraining: { ...p, corpus_seeds: CORPUS_SEEDS, optimizer: 'adamw', full: true },
      train_tokens: trainTokens,
      initial_eval_loss: initialEvalLoss,
      initial_loss: r.initialLoss,
      final_loss: r.finalLoss,
      eval_loss: r.evalLoss,
      seconds: Number(r.seconds.toFixed(1)),
    };
    fs.writeFileSync(path.join(opts.out, 'pretraining.json'), JSON.stringify(record, null, 2) + '\n');
    return {
      out: opts.out,
      parameters: init.parameters,
      tokenizerVocabSize: init.tokenizerVocabSize,
      vocabSize: init.config.vocabSize,
      initialEvalLoss,
      initialLoss: r.initialLoss,
      finalLoss: r.finalLoss,
      evalLoss: r.evalLoss,
      steps: r.steps,
      trainTokens,
      seconds: r.seconds,
      bytes,
    };
  } finally {
    if (!opts.work) fs.rmSync(work, { recursive: true, force: true });
  }
}
