/**
 * Hugging Face .safetensors files from TypeScript: a thin layer over the
 * native reader (mmap + full validation) and writer (reference byte layout,
 * atomic rename). Tensor bytes never pass through JS except when asked for
 * with `tensorBytes` (inspection, tests). See docs/safetensors.md.
 */
import { callNative, RlhfError } from './errors';
import { native, type Dtype, type NativeFill, type NativeSafetensorsFile, type NativeSafetensorsHeader, type NativeTensorInfo } from './native';

/**
 * Every dtype the reader accepts: the spec's list plus the newer ones of the
 * reference crate (sub-byte F4/F6, F8_E8M0, C64), which files may carry.
 */
export type SafetensorsDtype = Dtype | 'F4' | 'F6_E2M3' | 'F6_E3M2' | 'F8_E8M0' | 'C64';

/** Bits per element, from the reference crate's `Dtype::bitsize`. */
const DTYPE_BITS: Readonly<Record<SafetensorsDtype, number>> = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, C64: 64, F64: 64, I64: 64, U64: 64,
};

export function isDtype(s: string): s is SafetensorsDtype {
  return Object.prototype.hasOwnProperty.call(DTYPE_BITS, s);
}

function checkDtype(dtype: string): SafetensorsDtype {
  if (!isDtype(dtype)) throw new RlhfError('E_ARGUMENT', `unknown safetensors dtype '${dtype}'`);
  return dtype;
}

/** Bits per element of a dtype. */
export function dtypeBits(dtype: SafetensorsDtype | string): number {
  return DTYPE_BITS[checkDtype(dtype)];
}

/** Bytes per element of a dtype (fractional for the sub-byte F4 / F6 types). */
export function dtypeSize(dtype: SafetensorsDtype | string): number {
  return dtypeBits(dtype) / 8;
}

export type SafetensorsHeader = NativeSafetensorsHeader;
export type TensorInfo = NativeTensorInfo;
export type Fill = NativeFill;

/** An open, validated .safetensors file. Call close() when done (GC also unmaps it). */
export interface SafetensorsFile {
  readonly path: string;
  /** Header as parsed; tensors in data-offset order. Still readable after close(). */
  readonly header: SafetensorsHeader;
  /** Tensor names in data-offset order. */
  readonly tensorNames: string[];
  /** `__metadata__`, or null when the file has none. */
  readonly metadata: Record<string, string> | null;
  has(name: string): boolean;
  /** The tensor's header entry; E_ARGUMENT if absent. */
  tensor(name: string): TensorInfo;
  /** A copy of the tensor's raw little-endian bytes. */
  tensorBytes(name: string): Buffer;
  /** Whether the tensor's data starts at a multiple of its element size (zero-copy use). */
  isAligned(name: string): boolean;
  close(): void;
}

/** Opens and fully validates a .safetensors file. Throws RlhfError E_IO / E_SAFETENSORS. */
export function openSafetensors(path: string): SafetensorsFile {
  const file: NativeSafetensorsFile = callNative(() => new (native().SafetensorsFile)(path));
  const header = callNative(() => file.header());
  const byName = new Map<string, TensorInfo>(header.tensors.map((t) => [t.name, t]));
  return {
    path,
    header,
    tensorNames: header.tensors.map((t) => t.name),
    metadata: header.metadata,
    has: (name) => byName.has(name),
    tensor(name) {
      const t = byName.get(name);
      if (!t) throw new RlhfError('E_ARGUMENT', `${path}: no tensor named ${JSON.stringify(name)} in this file`, { where: path });
      return t;
    },
    tensorBytes: (name) => callNative(() => file.tensorBytes(name)),
    isAligned: (name) => callNative(() => file.isAligned(name)),
    close: () => callNative(() => file.close()),
  };
}

/** A tensor to write: raw bytes (any typed array / Buffer, little-endian) or a native fill. */
export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  data?: ArrayBufferView | ArrayBuffer;
  fill?: Fill;
}

/**
 * Writes a .safetensors file laid out exactly as the reference writer
 * (safetensors.torch.save_file) would, via a temporary file, fsync and
 * rename. Metadata keys are written sorted. Returns the file size in bytes.
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string> | null): number {
  // The native side accepts any ArrayBufferView / ArrayBuffer; its declared type is narrower.
  const addon = native() as unknown as {
    writeSafetensors(p: string, t: TensorToWrite[], m: Record<string, string> | null): number;
  };
  return callNative(() => addon.writeSafetensors(path, tensors, metadata ?? null));
}

// ---------------------------------------------------------------------------
// Decoding to numbers: a convenience for tests and `inspect`, never for compute.

function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * Decodes raw little-endian tensor bytes to JS numbers. I64/U64 values beyond
 * 2^53 lose precision (read them with readBigInt64LE when that matters).
 * E_UNSUPPORTED for the FP8 / sub-byte / complex dtypes.
 */
export function decodeTensorBytes(dtype: SafetensorsDtype | string, bytes: Uint8Array): number[] {
  const dt = checkDtype(dtype);
  const size = dtypeSize(dt);
  if (bytes.length % Math.max(1, size) !== 0) throw new RlhfError('E_ARGUMENT', `${bytes.length} bytes is not a whole number of ${dt} elements`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length / size;
  const out = new Array<number>(n);
  const read: Partial<Record<SafetensorsDtype, (i: number) => number>> = {
    BOOL: (i) => (view.getUint8(i) !== 0 ? 1 : 0),
    U8: (i) => view.getUint8(i),
    I8: (i) => view.getInt8(i),
    I16: (i) => view.getInt16(2 * i, true),
    U16: (i) => view.getUint16(2 * i, true),
    F16: (i) => f16ToNumber(view.getUint16(2 * i, true)),
    BF16: (i) => {
      const b = new DataView(new ArrayBuffer(4));
      b.setUint32(0, view.getUint16(2 * i, true) << 16, true);
      return b.getFloat32(0, true);
    },
    I32: (i) => view.getInt32(4 * i, true),
    U32: (i) => view.getUint32(4 * i, true),
    F32: (i) => view.getFloat32(4 * i, true),
    F64: (i) => view.getFloat64(8 * i, true),
    I64: (i) => Number(view.getBigInt64(8 * i, true)),
    U64: (i) => Number(view.getBigUint64(8 * i, true)),
  };
  const f = read[dt];
  if (!f) throw new RlhfError('E_UNSUPPORTED', `decoding ${dt} to numbers is not supported`);
  for (let i = 0; i < n; i++) out[i] = f(i);
  return out;
}

export interface DecodedTensor {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  values: number[];
}

/** Opens `path`, decodes one tensor to float64 numbers, closes the file. */
export function readSafetensorsAsF64(path: string, name: string): DecodedTensor {
  const f = openSafetensors(path);
  try {
    const t = f.tensor(name);
    return { name, dtype: t.dtype, shape: t.shape, values: decodeTensorBytes(t.dtype, f.tensorBytes(name)) };
  } finally {
    f.close();
  }
}
