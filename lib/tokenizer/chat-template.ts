/**
 * Chat templates: the Jinja strings in tokenizer_config.json, rendered with
 * @huggingface/jinja exactly as transformers' apply_chat_template renders
 * them (variables `messages`, `add_generation_prompt`, `bos_token`,
 * `eos_token`, plus any extras).
 */
import { RlhfError } from '../errors';

type JinjaModule = typeof import('@huggingface/jinja', { with: { 'resolution-mode': 'import' } });
// The package ships a CommonJS build; only its types are ESM-only.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const jinja = require('@huggingface/jinja') as JinjaModule;

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  bosToken?: string | null;
  eosToken?: string | null;
  /** More template variables (e.g. `tools`, `date_string`). */
  extra?: Record<string, unknown>;
}

const compiled = new Map<string, InstanceType<JinjaModule['Template']>>();

export function applyChatTemplate(template: string, messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
  let t = compiled.get(template);
  if (!t) {
    try {
      t = new jinja.Template(template);
    } catch (e) {
      throw new RlhfError('E_TOKENIZER', `chat template does not parse: ${(e as Error).message}`, { cause: e });
    }
    compiled.set(template, t);
  }
  try {
    return t.render({
      ...opts.extra,
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      bos_token: opts.bosToken ?? '',
      eos_token: opts.eosToken ?? '',
    });
  } catch (e) {
    throw new RlhfError('E_TOKENIZER', `chat template failed: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The ChatML template `init` writes (as Qwen2 and SmolLM use):
 * `<|im_start|>role\ncontent<|im_end|>\n` per message, and
 * `<|im_start|>assistant\n` as the generation prompt. With `withBos` the
 * conversation starts with `bos_token` (our tokenizers never add it on
 * encode, so the template does, as Llama's templates do).
 */
export function chatmlTemplate(withBos: boolean): string {
  return (
    (withBos ? '{{ bos_token }}' : '') +
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
  );
}
