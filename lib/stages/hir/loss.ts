/**
 * HIR's training loss (Zhang et al. 2023, "The Wisdom of Hindsight Makes
 * Language Models Better Instruction Followers"; the reference code's
 * offline trainer) on the engine's device. For an output y sampled for a
 * prompt, with the relabelled ("positive") instruction x+ (what y achieved)
 * and the opposite ("negative") one x-:
 *
 *   loss = LS_eps(y | x+)                                      label-smoothed NLL
 *        + c [ (1 - eps) (-log s) + eps (-log (1 - s)) ]       contrastive term
 *        - e H(y | x+)                                          entropy bonus
 *
 *   s = p+ / (p+ + p-) = sigmoid(m+ - m-),  p = exp(m), m = mean token log-prob of y
 *
 * LS_eps is each target token's (1 - eps)(-log p_y) + eps(mean over the
 * vocabulary of -log p_v) (the sft loss call with labelSmoothing), averaged
 * over the output tokens of the step's positive rows, as transformers'
 * LabelSmoother averages over the batch's tokens; H is the mean token
 * entropy over the same tokens (the same call's entCoef). The contrastive
 * term is the DPO loss with beta 1, a zero reference and label smoothing eps
 * over the rows (x+ y, x- y), whose row_dot weights 1/|y| make the sequence
 * "log-prob" the mean token log-prob; it is averaged over the step's pairs.
 * The reference code uses one eps (0.2) for both terms, c = 1, e = 0.001.
 *
 * One forward of the positive rows then the negative rows, then two loss
 * calls each followed by backward(): a loss call replaces the gradients of
 * an earlier one, but the parameter gradients of successive backward()
 * calls over one forward accumulate until the optimizer step, so the step's
 * gradient is that of the whole loss.
 */
import type { Trainer } from '../../engine/train';
import { spanMask } from '../../engine/objectives';

/** One training example: the output and the two instructions it is scored under (prompt token ids, the output's ids follow each). */
export interface HirExample {
  pos: readonly number[];
  neg: readonly number[];
  output: readonly number[];
}

export interface HirLossOptions {
  /** eps of both the label smoothing and the contrastive term. */
  eps: number;
  /** Weight c of the contrastive term (0: none). */
  contrastiveCoef: number;
  /** Weight e of the entropy bonus (0: none). */
  entropyCoef: number;
  /** Output tokens of the whole optimizer step (the NLL's and entropy's denominator). */
  tokens: number;
  /** Examples of the whole optimizer step (the contrastive term's denominator). */
  pairs: number;
}

/** A micro-batch's sums; the step's figures are these over its micro-batches divided by the step's tokens or pairs. */
export interface HirMicroSums {
  inputTokens: number;
  /** -sum log p_y over the positive rows' output tokens. */
  nll: number;
  /** (1 - eps) nll + eps (sum of the smoothing terms): the label-smoothed NLL's numerator. */
  smoothed: number;
  /** sum of the token entropies. */
  entropy: number;
  /** sum over pairs of the contrastive term (unweighted). */
  contrastive: number;
  /** pairs whose positive mean log-prob beats the negative one. */
  correct: number;
}

/** The forward's layout of a micro-batch: positive rows then negative rows, the output's logp positions of each. */
export function hirRows(examples: readonly HirExample[]): { inputIds: number[][]; spans: [number, number][] } {
  const rows = [...examples.map((e) => [...e.pos, ...e.output]), ...examples.map((e) => [...e.neg, ...e.output])];
  const prompts = [...examples.map((e) => e.pos.length), ...examples.map((e) => e.neg.length)];
  // Output token j (index p + j of the row) is predicted at logp position p + j - 1.
  const spans = rows.map((r, i): [number, number] => [prompts[i] - 1, r.length - 1]);
  return { inputIds: rows, spans };
}

/** Forward, the two loss calls and their backward passes for one micro-batch; the gradients accumulate into the trainer's. */
export async function hirMicroBatch(trainer: Trainer, examples: readonly HirExample[], o: HirLossOptions): Promise<HirMicroSums> {
  const B = examples.length;
  const both = hirRows(examples);
  // Without the contrastive term the negative rows are never read: forward the positive rows alone.
  const { inputIds, spans } = o.contrastiveCoef !== 0 ? both : { inputIds: both.inputIds.slice(0, B), spans: both.spans.slice(0, B) };
  const { seq } = await trainer.forward({ inputIds, download: false });
  const all = spanMask(seq, spans);
  const w = seq - 1;
  // The NLL and the entropy: the positive rows' output tokens.
  const nllMask = all.slice();
  nllMask.fill(0, B * w);
  const s = await trainer.sftLoss({ mask: nllMask, denom: o.tokens, labelSmoothing: o.eps, ...(o.entropyCoef ? { entCoef: o.entropyCoef } : {}) });
  await trainer.backward({});
  const sums: HirMicroSums = {
    inputTokens: inputIds.reduce((n, r) => n + r.length, 0),
    nll: s.nllSum,
    smoothed: (1 - o.eps) * s.nllSum + o.eps * (s.smoothSum ?? 0),
    entropy: (s.entropy ?? 0) * o.tokens,
    contrastive: 0,
    correct: 0,
  };
  if (o.contrastiveCoef !== 0) {
    // Weights 1/|y| on every row's output tokens: row_dot gives the mean token log-prob.
    const mean = all.slice();
    spans.forEach(([a, b], r) => mean.fill(1 / (b - a), r * w + a, r * w + b));
    const zero = new Float32Array(B);
    const d = await trainer.dpoLoss({ mask: mean, refChosen: zero, refRejected: zero, beta: 1, labelSmoothing: o.eps, gradScale: (o.contrastiveCoef * B) / o.pairs });
    await trainer.backward({});
    sums.contrastive = d.loss * B;
    sums.correct = d.accuracy * B;
  }
  return sums;
}
