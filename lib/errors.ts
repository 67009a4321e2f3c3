/**
 * The one error type of rlhf-native. Native code throws `rlhf::Error{code,
 * message}`; the N-API layer turns it into a JS Error with `code`, and
 * `callNative` below re-throws it as an RlhfError whose stack is the caller's.
 */

/** Error codes. Native codes (E_IO ... E_INTERNAL, E_RESOURCE) match native/error.h. */
export type RlhfErrorCode =
  | 'E_IO'
  | 'E_SAFETENSORS'
  | 'E_ARGUMENT'
  | 'E_UNSUPPORTED'
  | 'E_CUDA'
  | 'E_INTERNAL'
  | 'E_NATIVE_LOAD'
  | 'E_CONFIG'
  | 'E_TOKENIZER'
  | 'E_MODEL'
  | 'E_DATA'
  | 'E_RESOURCE'
  | 'E_NUMERIC'
  | 'E_CHECKPOINT'
  /**
   * A reward module's call failed on a row: it threw, its promise rejected,
   * or it gave no finite number. Neither a bad argument (the module loaded)
   * nor bad data (the row is read as given): the message names the module
   * and the data file:line, and the code lets a script tell it apart.
   */
  | 'E_REWARD';

export class RlhfError extends Error {
  readonly code: RlhfErrorCode;
  /** File, key or line the error is about, when there is one. */
  readonly where?: string;

  constructor(code: RlhfErrorCode, message: string, options?: { where?: string; cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'RlhfError';
    this.code = code;
    if (options?.where !== undefined) this.where = options.where;
  }
}

export function isRlhfError(e: unknown): e is RlhfError {
  return e instanceof RlhfError;
}

/** Runs a native call and converts what it throws into an RlhfError (keeping the JS stack of the call site). */
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

export function fromNative(e: unknown): RlhfError {
  if (e instanceof RlhfError) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' && err.code.startsWith('E_') ? (err.code as RlhfErrorCode) : 'E_INTERNAL';
  const message = typeof err?.message === 'string' ? err.message : String(e);
  const out = new RlhfError(code, message, { cause: e });
  Error.captureStackTrace?.(out, callNative);
  return out;
}
