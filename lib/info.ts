/** What this installation of rlhf-native is and what it can use here (`rlhf-native info`). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { callNative, RlhfError } from './errors';
import { native, nativeSource, PACKAGE_ROOT, NativeCudaDevice } from './native';
import { world, type Launcher } from './engine/distributed';

export interface RuntimeInfo {
  version: string;
  node: string;
  platform: string;
  /** Backends compiled into the addon, e.g. ['cpu', 'cuda']. */
  backends: string[];
  /** Ranks in this job (1 without a launcher) and this process's rank; docs/distributed.md. */
  world_size: number;
  rank: number;
  /** Who started the ranks (mpirun, PMI, a Slurm step), null for a plain process; the MPI library in use with more than one rank. */
  distributed: { launcher: Launcher | null; local_rank: number; mpi: { library: string; version: string } | null };
  /** The device `--device auto` would pick now. */
  defaultDevice: 'cpu' | 'cuda';
  cpu: { simd: string; threads: number; avx2: boolean; avx512: boolean; avx512_bf16: boolean };
  cuda: {
    compiled: boolean;
    runtimeVersion: string | null;
    driverVersion: string | null;
    archs: string[];
    devices: NativeCudaDevice[];
    /** Why no CUDA device is usable, when none is. */
    reason?: string;
  };
  build: {
    /** 'prebuild': a binary shipped in prebuilds/ (nothing compiled at install); 'local': compiled here into build/. */
    kind: 'prebuild' | 'local' | 'RLHF_NATIVE_PATH';
    /** The loaded binary's path. */
    addon: string;
    system: string | null;
    compiler: string;
    /** For a prebuild: what scripts/prebuild.js recorded beside it (the glibc it needs, when it was built). */
    prebuild?: PrebuildManifest;
  };
}

/** The manifest scripts/prebuild.js writes beside each prebuilt binary (<file>.json). */
export interface PrebuildManifest {
  variant: 'cuda' | 'cpu';
  /** The newest glibc symbol version the binary needs. */
  glibc: string | null;
  built: string;
}

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

export function packageVersion(): string {
  return JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')).version as string;
}

/** Explains a CUDA runtime error code in the words a user needs. */
function noDeviceReason(compiled: boolean, error: string | undefined, code: number | undefined): string {
  if (!compiled) return 'this build has no CUDA backend (nvcc was not found when the addon was built)';
  if (code === 35) return `no usable NVIDIA driver (${error}); running on the CPU`;
  if (code === 100) return `no CUDA device visible (${error}); check CUDA_VISIBLE_DEVICES`;
  return error ? `${error}; running on the CPU` : 'no CUDA device found; running on the CPU';
}

function readManifest(file: string): PrebuildManifest | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(file, 'utf8'));
    return { variant: m.variant, glibc: m.glibc ?? null, built: m.built };
  } catch {
    return undefined; // a prebuild without its manifest still loads; info just says less
  }
}

export function runtimeInfo(): RuntimeInfo {
  const n = callNative(() => native().info());
  const system: string | null = n.buildSystem ?? null;
  const source = nativeSource();
  const w = world();
  const out: RuntimeInfo = {
    version: packageVersion(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    backends: n.backends,
    world_size: w.size,
    rank: w.rank,
    distributed: { launcher: w.launcher, local_rank: w.localRank, mpi: w.mpi },
    defaultDevice: n.cuda.devices.length > 0 ? 'cuda' : 'cpu',
    cpu: n.cpu,
    cuda: {
      compiled: n.cuda.compiled,
      runtimeVersion: cudaVersion(n.cuda.runtimeVersion),
      driverVersion: cudaVersion(n.cuda.driverVersion),
      archs: n.cuda.archs,
      devices: n.cuda.devices,
    },
    build: { kind: source.kind, addon: source.file, system, compiler: n.compiler },
  };
  if (source.kind === 'prebuild') {
    const manifest = readManifest(`${source.file}.json`);
    if (manifest) out.build.prebuild = manifest;
  }
  if (n.cuda.devices.length === 0) out.cuda.reason = noDeviceReason(n.cuda.compiled, n.cuda.error, n.cuda.errorCode);
  return out;
}

let warned = false;
let warnedCuda = false;
/**
 * Where a model runs. 'cpu-guarded' is for testing: the CPU ops on memory the
 * host cannot touch between ops (each allocation mapped PROT_NONE outside an
 * op), so the model's device-memory path (what CUDA runs) is exercised and
 * checked on machines without a GPU; results equal 'cpu' bit for bit, slower.
 */
export type Device = 'auto' | 'cpu' | 'cuda' | 'cpu-guarded';
export type ResolvedDevice = Exclude<Device, 'auto'>;
export const DEVICES: readonly Device[] = ['auto', 'cpu', 'cuda', 'cpu-guarded'];

/**
 * Resolves `--device auto|cpu|cuda`. `auto` falls back to the CPU with one
 * clear line on stderr when CUDA is compiled in but unusable; an explicit
 * `cuda` with no device is an error.
 */
/** An NVIDIA GPU is visible to this process (its device node or the driver's GPU list), usable or not. */
export function gpuVisible(): boolean {
  try {
    if (fs.existsSync('/dev/nvidia0')) return true;
    return fs.readdirSync('/proc/driver/nvidia/gpus').length > 0;
  } catch {
    return false;
  }
}

export function resolveDevice(requested: Device = 'auto', log: (line: string) => void = (l) => process.stderr.write(l + '\n')): ResolvedDevice {
  if (requested === 'cpu' || requested === 'cpu-guarded') return requested;
  const info = runtimeInfo();
  if (info.cuda.devices.length > 0) {
    if (!warnedCuda) {
      warnedCuda = true;
      const d = info.cuda.devices[0];
      log(`rlhf-native: running on CUDA device 0 (${d.name}); the CUDA backend has not yet been verified on GPU hardware (docs/cuda.md: scripts/gpu-check.sh checks it); --device cpu runs on the CPU`);
    }
    return 'cuda';
  }
  if (requested === 'cuda') {
    throw new RlhfError('E_CUDA', `--device cuda was requested but ${info.cuda.reason}`);
  }
  // Only worth a line when a GPU is there that we cannot use; without one, 'auto' on the CPU is no news
  // (`rlhf-native info` always says why CUDA is off).
  if (info.cuda.compiled && !warned && gpuVisible()) {
    warned = true;
    log(`rlhf-native: CUDA backend present but not usable: ${info.cuda.reason}`);
  }
  return 'cpu';
}
