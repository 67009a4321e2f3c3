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

/** Python's str.isspace() characters: what str.strip() removes without an argument. */
const PY_SPACE = '\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000';

/** Python's str.strip / lstrip / rstrip: `chars` (default whitespace) removed from one or both ends. */
export function pyStrip(s: string, chars: string | null, left: boolean, right: boolean): string {
  const set = chars ?? PY_SPACE;
  let a = 0, b = s.length;
  if (left) while (a < b && set.includes(s[a])) a++;
  if (right) while (b > a && set.includes(s[b - 1])) b--;
  return s.slice(a, b);
}

/**
 * @huggingface/jinja's string methods strip(), lstrip() and rstrip() ignore
 * their argument and strip JavaScript's whitespace, where jinja2 calls
 * Python's: Qwen3's template writes `content.lstrip('\n')`, which must keep a
 * completion's leading space. The StringValue class is not exported, so it
 * is reached through a value of an Environment, and its built-in methods are
 * replaced by Python's once per process.
 */
let stripPatched = false;
function patchStringStrip(): void {
  if (stripPatched) return;
  stripPatched = true;
  const env = new jinja.Environment();
  env.set('s', '');
  const sample = env.variables.get('s') as unknown as { builtins: Map<string, unknown>; constructor: { prototype: object } };
  const proto = sample.constructor.prototype;
  const desc = Object.getOwnPropertyDescriptor(proto, 'builtins');
  const FunctionValue = (sample.builtins.get('strip') as { constructor: new (f: (args: { value: unknown }[]) => unknown) => unknown }).constructor;
  const StringValue = sample.constructor as unknown as new (v: string) => unknown;
  if (!desc?.get) return; // another build of the package: leave it as it is
  const original = desc.get;
  Object.defineProperty(proto, 'builtins', {
    configurable: true,
    get(this: { value: string }) {
      const map = original.call(this) as Map<string, unknown>;
      const make = (left: boolean, right: boolean) =>
        new FunctionValue((args) => {
          const a = args[0]?.value;
          return new StringValue(pyStrip(this.value, typeof a === 'string' ? a : null, left, right));
        });
      map.set('strip', make(true, true));
      map.set('lstrip', make(true, false));
      map.set('rstrip', make(false, true));
      return map;
    },
  });
}

export function applyChatTemplate(template: string, messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
  patchStringStrip();
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
