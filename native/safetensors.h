// Hugging Face .safetensors files: a validating mmap reader and a writer that
// produces the same bytes as the reference Rust writer (safetensors::serialize,
// which safetensors.torch.save_file calls). docs/safetensors.md lists every
// rule and where it comes from.
//
// File layout: u64 little-endian N | N bytes of UTF-8 JSON header | data.
// The header maps tensor names to {"dtype","shape","data_offsets":[begin,end]}
// (offsets relative to the data section) plus an optional "__metadata__"
// string->string map.
//
// Everything here throws rlhf::Error: E_SAFETENSORS for a malformed file,
// E_IO for the file system, E_ARGUMENT for bad caller input. Every message
// names the file and is a single line.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rlhf::st {

// In the reference crate's declaration order. The order matters: the writer
// sorts tensors by this enum, descending (see write_file), so it must match
// the reference's `Dtype` derive(Ord) order exactly. Includes the sub-byte and
// newer types the reference knows (F4, F6_*, F8_E8M0, C64) so that files
// using them can at least be opened and inspected.
enum class Dtype : uint8_t {
  BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0,
  I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};
inline constexpr int kNumDtypes = 20;

const char* dtype_name(Dtype d);
bool parse_dtype(std::string_view name, Dtype* out);  // exact, case-sensitive
unsigned dtype_bits(Dtype d);                          // 4, 6, 8, 16, 32 or 64
// Alignment wanted for zero-copy use: the element size in bytes (1 for
// sub-byte types).
size_t dtype_alignment(Dtype d);

// Bytes taken by a tensor: checked product of the shape times the bits per
// element. False (with the reason in *why) on u64 overflow or when the bit
// count is not a whole number of bytes.
bool tensor_nbytes(Dtype d, const std::vector<uint64_t>& shape, uint64_t* nbytes, std::string* why);

// The reference refuses headers over 100 MB (MAX_HEADER_SIZE), on read and write.
inline constexpr uint64_t kMaxHeaderSize = 100000000;

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // [begin, end) within the data section
  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const;  // product of shape (validated not to overflow)
};

// The `__metadata__` map, in the order it appears (file) or is given (writer).
using Metadata = std::vector<std::pair<std::string, std::string>>;

struct Header {
  std::optional<Metadata> metadata;  // absent (or JSON null) -> nullopt
  std::vector<TensorInfo> tensors;   // sorted by (begin, end, name)
  uint64_t header_length = 0;        // N, the u64 at the start of the file
  uint64_t data_start = 0;           // 8 + N
  uint64_t data_length = 0;          // file size - data_start
};

// Validates a whole file image the way the reference's read_metadata +
// Metadata::validate do (plus the stricter checks listed in the docs) and
// returns the parsed header. `path` only labels the error messages.
Header parse_header(const uint8_t* file, uint64_t file_size, const std::string& path);

// One tensor's bytes, aligned for its dtype. Either points into the file
// mapping (zero_copy, valid until the File is closed) or owns an aligned copy
// (when the data in the file does not start at a multiple of the dtype size).
class TensorView {
 public:
  const TensorInfo& info() const { return *info_; }
  const void* data() const { return data_; }
  size_t nbytes() const { return static_cast<size_t>(info_->nbytes()); }
  bool zero_copy() const { return owned_ == nullptr; }
  template <typename T>
  const T* as() const { return static_cast<const T*>(data_); }

 private:
  friend class File;
  const TensorInfo* info_ = nullptr;
  const void* data_ = nullptr;
  std::shared_ptr<void> owned_;  // the aligned copy, when not zero-copy
};

// An open, fully validated .safetensors file, mmapped read-only (MAP_PRIVATE)
// for the object's lifetime. Lookups are const and may run on any thread
// while no thread calls close().
class File {
 public:
  explicit File(const std::string& path);  // opens, maps, validates; throws
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  void close();  // unmaps; idempotent. Later lookups throw E_ARGUMENT.
  bool is_open() const { return map_ != nullptr; }
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  const Header& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }

  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
  const TensorInfo& info(std::string_view name) const;  // E_ARGUMENT when absent
  // Pointer to the tensor's first byte in the mapping; may be unaligned.
  const uint8_t* raw(const TensorInfo& t) const;
  bool is_aligned(const TensorInfo& t) const;
  TensorView view(std::string_view name) const;

 private:
  void check_open() const;
  std::string path_;
  void* map_ = nullptr;
  uint64_t file_size_ = 0;
  Header header_;
  std::unordered_map<std::string_view, size_t> index_;  // keys point into header_
};

// ---------------------------------------------------------------------------
// Writer

// Values generated natively for a tensor (F32, F16, BF16 only). Generated in
// float64, rounded to float32, then (F16/BF16) rounded to nearest-even.
struct Fill {
  enum class Kind { kZeros, kOnes, kConst, kNormal, kUniform };
  Kind kind = Kind::kZeros;
  double value = 0;             // kConst
  double mean = 0, stddev = 1;  // kNormal
  double low = 0, high = 1;     // kUniform: [low, high)
  uint64_t seed = 0;            // kNormal, kUniform
};

struct TensorToWrite {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<uint64_t> shape;
  // Exactly one of: raw little-endian bytes (data_len must equal the tensor's
  // size; the pointer must stay valid during write_file), or a fill.
  const void* data = nullptr;
  size_t data_len = 0;
  std::optional<Fill> fill;
};

// The header exactly as the reference writer lays it out for these tensors
// (already sorted), including the space padding; offsets get each tensor's
// [begin, end). Exposed for tests and for callers that stream data themselves.
std::string serialize_header(const std::vector<const TensorToWrite*>& sorted, const std::optional<Metadata>& metadata,
                             std::vector<std::pair<uint64_t, uint64_t>>* offsets);

// Writes `tensors` to `path` byte-for-byte as the reference writer would,
// through `path + ".tmp-<pid>"`, fsync and rename, so a failed or interrupted
// write never leaves a partial file at `path` nor destroys one already there.
// Returns the file size. Metadata keys are written in sorted (byte) order.
uint64_t write_file(const std::string& path, const std::vector<TensorToWrite>& tensors,
                    const std::optional<Metadata>& metadata);

// Round-to-nearest-even conversions used by the fills (NaN stays NaN, overflow
// becomes infinity, F16 subnormals are produced exactly).
uint16_t float_to_bf16(float f);
uint16_t float_to_f16(float f);

}  // namespace rlhf::st
