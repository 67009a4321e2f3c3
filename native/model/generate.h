// Batched generation with a KV cache: left-pads the prompts, prefills, then
// decodes one token per sequence per step until every sequence has hit EOS,
// a stop string or max_new_tokens.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "transformer.h"

namespace rlhf::model {

struct GenerateRequest {
  std::vector<std::vector<int32_t>> prompts;
  int64_t max_new_tokens = 64;
  float temperature = 0.f;  // 0 = greedy
  int64_t top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
  std::vector<int32_t> eos_ids;
  // Stop strings are matched on the bytes of the generated tokens;
  // token_bytes[id] are the bytes token id decodes to (needed only with stops).
  std::vector<std::string> stop_strings;
  std::vector<std::string> token_bytes;
  const std::atomic<bool>* cancel = nullptr;  // checked between steps
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // generated tokens per prompt (EOS included, stop string tokens included)
  std::vector<std::vector<float>> logprobs;  // log-prob of each generated token under the tempered full softmax
  std::vector<std::string> finish;           // "eos" | "stop" | "length" | "cancelled"
};

GenerateResult generate(Transformer& model, Backend& be, const GenerateRequest& req);

}  // namespace rlhf::model
