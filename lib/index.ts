/** The public TypeScript API of rlhf-native. */
export { RlhfError, isRlhfError } from './errors';
export type { RlhfErrorCode } from './errors';
export { runtimeInfo, resolveDevice, packageVersion } from './info';
export type { RuntimeInfo } from './info';
export type { Dtype, NativeFill, NativeTensorToWrite, NativeSafetensorsHeader, NativeTensorInfo } from './native';
export * from './safetensors';
export * from './model/config';
export * from './model/tensors';
export * from './model/folder';
export * from './model/init';
export * from './model/presets';
export * from './tokenizer/tokenizer';
export * from './tokenizer/chat-template';
export * from './tokenizer/bpe-train';
export { loadModel, Model, packBatch } from './engine/model';
export type { LoadModelOptions, ForwardInput, ForwardOutput, GenerateInput } from './engine/model';
export { scoreRows } from './engine/score';
export { readAdapterConfig, readLoraPairs, loraScale } from './model/peft';
