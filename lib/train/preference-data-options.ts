/**
 * The data options every preference stage (rm, the dpo family, kto) gives
 * its loader, from the shared option rows (PREFERENCE_DATA_OPTIONS): the
 * model's tokenizer (loaded on first use, read as --tokenize says), the
 * length limit, EOS and stop tokens, truncation. Each stage adds its own
 * fields (margins, identical pairs, whole sequences).
 */
import { tokenizerSemantics, type TokenizeMode, type TruncationMode } from '../data/trl-tokens';
import type { ModelConfig } from '../model/config';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';

export interface PreferenceDataConfig {
  model: string;
  maxLen: number;
  tokenize: TokenizeMode;
  endAtStop: boolean;
  truncationMode: TruncationMode;
  maxPromptLength?: number;
}

export function preferenceDataOptions(cfg: PreferenceDataConfig, mcfg: ModelConfig) {
  let tok: Tokenizer | undefined;
  return {
    tokenizer: () => (tok ??= loadTokenizer(cfg.model, { semantics: tokenizerSemantics(cfg.tokenize) })),
    maxLen: Math.min(cfg.maxLen, mcfg.maxSequenceLength),
    vocabSize: mcfg.vocabSize,
    fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null,
    stopTokenIds: cfg.endAtStop ? mcfg.eosTokenIds : [],
    tokenize: cfg.tokenize,
    truncationMode: cfg.truncationMode,
    maxPromptLength: cfg.maxPromptLength,
  };
}
