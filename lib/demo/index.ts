/** The demo world, its simulated labeler and its pretrained base model (docs/demo.md). */
export * from './world';
export * from './labeler';
export * from './base';
export { makeRng, hash32 } from './rng';
export type { Rng } from './rng';
export * from './respond';
