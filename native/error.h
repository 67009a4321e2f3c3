// One error type for everything native code reports. It is thrown as a C++
// exception inside the engine and converted to a JS Error carrying `code` at
// the N-API boundary (see napi_util.h); lib/errors.ts turns that into RlhfError.
// Native code never exits or aborts on bad input.
#pragma once
#include <stdexcept>
#include <string>

namespace rlhf {

// Stable, documented codes (docs/errors.md). Keep in sync with lib/errors.ts.
namespace code {
inline constexpr const char* kIo = "E_IO";                    // open/read/write/mmap failed
inline constexpr const char* kSafetensors = "E_SAFETENSORS";  // malformed .safetensors file
inline constexpr const char* kArgument = "E_ARGUMENT";        // bad argument from the caller
inline constexpr const char* kUnsupported = "E_UNSUPPORTED";  // valid but not supported here
inline constexpr const char* kCuda = "E_CUDA";                // CUDA runtime failure
inline constexpr const char* kModel = "E_MODEL";              // model weights do not match the config
inline constexpr const char* kResource = "E_RESOURCE";        // out of memory (an allocation failed)
inline constexpr const char* kInternal = "E_INTERNAL";        // a bug: please report
}  // namespace code

// The message for an allocation that failed (std::bad_alloc, or a size the
// allocator cannot represent): E_RESOURCE, never an abort.
inline constexpr const char* kOutOfMemory =
    "out of memory: a native allocation failed (the request was larger than the memory the system would give); "
    "use a smaller batch, sequence length or model, or free memory";

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

}  // namespace rlhf
