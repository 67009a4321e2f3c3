// Reader and writer for .safetensors; see safetensors.h and docs/safetensors.md.
#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <new>
#include <unordered_map>
#include <set>

#include "error.h"
#include "json.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this code copies it as-is and needs a little-endian host"
#endif

namespace rlhf::st {

// ---------------------------------------------------------------------------
// Dtypes

namespace {
struct DtypeDesc {
  const char* name;
  unsigned bits;
};
// Indexed by Dtype; sizes from the reference's Dtype::bitsize().
constexpr DtypeDesc kDtypes[kNumDtypes] = {
    {"BOOL", 8}, {"F4", 4},    {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},   {"I8", 8},   {"F8_E5M2", 8},
    {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"I16", 16}, {"U16", 16},  {"F16", 16}, {"BF16", 16}, {"I32", 32},
    {"U32", 32}, {"F32", 32},  {"C64", 64},  {"F64", 64},   {"I64", 64}, {"U64", 64},
};
static_assert(sizeof(kDtypes) / sizeof(kDtypes[0]) == static_cast<size_t>(Dtype::U64) + 1,
              "kDtypes must list every Dtype, in enum order");
}  // namespace

const char* dtype_name(Dtype d) { return kDtypes[static_cast<int>(d)].name; }
unsigned dtype_bits(Dtype d) { return kDtypes[static_cast<int>(d)].bits; }
size_t dtype_alignment(Dtype d) { return std::max<size_t>(1, dtype_bits(d) / 8); }

bool parse_dtype(std::string_view name, Dtype* out) {
  for (int i = 0; i < kNumDtypes; ++i) {
    if (name == kDtypes[i].name) {
      *out = static_cast<Dtype>(i);
      return true;
    }
  }
  return false;
}

bool tensor_nbytes(Dtype d, const std::vector<uint64_t>& shape, uint64_t* nbytes, std::string* why) {
  uint64_t n = 1;
  for (uint64_t dim : shape) {
    if (__builtin_mul_overflow(n, dim, &n)) {
      if (why) *why = "the element count overflows 64 bits";
      return false;
    }
  }
  uint64_t bits;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(dtype_bits(d)), &bits)) {
    if (why) *why = "the size in bits (elements x " + std::to_string(dtype_bits(d)) + ") overflows 64 bits";
    return false;
  }
  if (bits % 8 != 0) {
    if (why) *why = std::to_string(n) + " elements of " + dtype_name(d) + " are not a whole number of bytes";
    return false;
  }
  *nbytes = bits / 8;
  return true;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;  // validated not to overflow when parsed
  return n;
}

namespace {

std::string shape_str(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  const size_t shown = std::min<size_t>(shape.size(), 8);
  for (size_t i = 0; i < shown; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shown < shape.size()) s += ", ... (" + std::to_string(shape.size()) + " dims)";
  return s + "]";
}

std::string q(std::string_view s) { return json::quote_for_message(s); }

// A JSON value shown in a message: numbers as written (cut), others by type.
std::string show(const json::Value& v) {
  if (v.is(json::Type::kNumber)) return v.text.size() > 40 ? v.text.substr(0, 40) + "..." : v.text;
  if (v.is(json::Type::kString)) return "the string " + q(v.text);
  return json::type_name(v.type);
}

// ---------------------------------------------------------------------------
// Header parsing

class HeaderParser {
 public:
  explicit HeaderParser(const std::string& path) : path_(path) {}

  [[noreturn]] void fail(const std::string& msg) const { throw Error(code::kSafetensors, path_ + ": " + msg); }
  // Quotes the name only on the error path: headers can hold many thousand tensors.
  [[noreturn]] void fail_t(std::string_view name, const std::string& msg) const { fail("tensor " + q(name) + ": " + msg); }

  void parse_metadata(const json::Value& v, Header& h) {
    if (v.is(json::Type::kNull)) return;  // serde reads `null` as "no metadata"
    if (!v.is(json::Type::kObject))
      fail("__metadata__ must be an object mapping strings to strings, found " + show(v));
    // As the reference's map: every value must be a string; a repeated key
    // keeps its last value (in the place of its first).
    Metadata m;
    m.reserve(v.members.size());
    for (const auto& [key, val] : v.members) {
      if (!val.is(json::Type::kString))
        fail("__metadata__ value for key " + q(key) + " is " + show(val) + ", not a string");
      auto same = std::find_if(m.begin(), m.end(), [&](const auto& kv) { return kv.first == key; });
      if (same != m.end()) same->second = val.text;
      else m.emplace_back(key, val.text);
    }
    h.metadata = std::move(m);
  }

  uint64_t dim(std::string_view name, const char* field, size_t i, const json::Value& v) {
    uint64_t out;
    std::string why;
    if (!v.as_u64(&out, &why))
      fail_t(name, std::string(field) + "[" + std::to_string(i) + "] = " + show(v) +
           " is not a non-negative integer (" + why + ")");
    return out;
  }

  TensorInfo parse_entry(const std::string& name, const json::Value& v) {
    // As the reference reads an entry: an object whose dtype, shape and
    // data_offsets each appear once (other keys are ignored, whatever they
    // hold), or the same three as a JSON array in that order.
    const json::Value *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    if (v.is(json::Type::kArray)) {
      if (v.items.size() != 3)
        fail_t(name, "an entry written as an array must hold [dtype, shape, data_offsets], found an array of " +
                   std::to_string(v.items.size()));
      dtype = &v.items[0], shape = &v.items[1], offsets = &v.items[2];
    } else if (v.is(json::Type::kObject)) {
      for (const auto& m : v.members) {
        const json::Value** slot = m.first == "dtype" ? &dtype : m.first == "shape" ? &shape : m.first == "data_offsets" ? &offsets : nullptr;
        if (!slot) continue;
        if (*slot) fail_t(name, "duplicate " + q(m.first) + " in the entry");
        *slot = &m.second;
      }
    } else {
      fail_t(name, "entry must be an object with dtype, shape and data_offsets, found " + show(v));
    }
    if (!dtype) fail_t(name, "missing \"dtype\"");
    if (!shape) fail_t(name, "missing \"shape\"");
    if (!offsets) fail_t(name, "missing \"data_offsets\"");

    TensorInfo t;
    t.name = name;
    if (!dtype->is(json::Type::kString)) fail_t(name, "dtype must be a string, found " + show(*dtype));
    if (!parse_dtype(dtype->text, &t.dtype)) fail_t(name, "unknown dtype " + q(dtype->text));

    if (!shape->is(json::Type::kArray))
      fail_t(name, "shape must be an array of non-negative integers, found " + show(*shape));
    t.shape.reserve(shape->items.size());
    for (size_t i = 0; i < shape->items.size(); ++i) t.shape.push_back(dim(name, "shape", i, shape->items[i]));

    if (!offsets->is(json::Type::kArray) || offsets->items.size() != 2)
      fail_t(name, "data_offsets must be an array of two non-negative integers [begin, end], found " +
           (offsets->is(json::Type::kArray) ? "an array of " + std::to_string(offsets->items.size()) : show(*offsets)));
    t.begin = dim(name, "data_offsets", 0, offsets->items[0]);
    t.end = dim(name, "data_offsets", 1, offsets->items[1]);
    if (t.begin > t.end)
      fail_t(name, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
           "] has begin after end");
    return t;
  }

  // The reference's Metadata::validate, in its order: per tensor (sorted by
  // offsets), contiguity first, then the size implied by dtype and shape.
  void validate(Header& h) {
    std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
      if (a.begin != b.begin) return a.begin < b.begin;
      if (a.end != b.end) return a.end < b.end;
      return a.name < b.name;  // ties: empty tensors (or an overlap, reported below); keeps messages deterministic
    });
    uint64_t pos = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo& t : h.tensors) {
      if (t.begin > pos)
        fail("hole in the data section: tensor " + q(t.name) + " begins at byte " + std::to_string(t.begin) + " but " +
             (prev ? "the previous tensor " + q(prev->name) + " ends at byte " + std::to_string(pos)
                   : std::string("the data section starts at byte 0")) +
             " (data_offsets must cover the data section contiguously)");
      if (t.begin < pos)
        fail("overlap in the data section: tensor " + q(t.name) + " [" + std::to_string(t.begin) + ", " +
             std::to_string(t.end) + ") begins before the previous tensor " + q(prev->name) + " ends at byte " +
             std::to_string(pos));
      pos = t.end;
      prev = &t;
      uint64_t nbytes;
      std::string why;
      if (!tensor_nbytes(t.dtype, t.shape, &nbytes, &why))
        fail_t(t.name, "shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) + ": " + why);
      if (t.end - t.begin != nbytes)
        fail_t(t.name, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
             ") hold " + std::to_string(t.end - t.begin) + " bytes but shape " + shape_str(t.shape) + " of " +
             dtype_name(t.dtype) + " needs " + std::to_string(nbytes) + " bytes");
    }
    // The reference's final check (MetadataIncompleteBuffer), split in its two cases.
    if (pos > h.data_length)
      fail("tensor " + q(prev->name) + " ends at byte " + std::to_string(pos) +
           " of the data section, past the end of the file (the data section has " + std::to_string(h.data_length) +
           " bytes)");
    if (pos < h.data_length)
      fail("metadata incomplete buffer: the tensors cover " + std::to_string(pos) + " bytes but the data section has " +
           std::to_string(h.data_length) + " (" + std::to_string(h.data_length - pos) +
           " trailing bytes after the last tensor)");
  }

 private:
  const std::string& path_;
};

}  // namespace

Header parse_header(const uint8_t* file, uint64_t size, const std::string& path) {
  HeaderParser p(path);
  if (size < 8)
    p.fail("file too small: " + std::to_string(size) +
           " bytes, a safetensors file starts with an 8-byte header length");
  uint64_t n;
  std::memcpy(&n, file, 8);  // little-endian host (checked above)
  // Checked before the file size, as the reference does.
  if (n > kMaxHeaderSize)
    p.fail("header too large: header length " + std::to_string(n) + " exceeds the " + std::to_string(kMaxHeaderSize) +
           "-byte limit");
  if (8 + n > size)
    p.fail("header longer than file: header length " + std::to_string(n) + " needs " + std::to_string(8 + n) +
           " bytes but the file has " + std::to_string(size));
  const std::string_view text(reinterpret_cast<const char*>(file + 8), static_cast<size_t>(n));
  size_t bad = 0;
  if (!json::valid_utf8(text, &bad))
    p.fail("header is not valid UTF-8 (bad byte at header offset " + std::to_string(bad) + ", file offset " +
           std::to_string(8 + bad) + ")");
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos)
    p.fail(text.empty() ? "the header is empty" : "the header holds only whitespace");

  // Duplicate keys are read as the reference reads them (below), so the JSON
  // layer allows them everywhere.
  json::Value root;
  json::ParseOptions opts;
  opts.allow_duplicate_keys = true;
  try {
    root = json::parse(text, opts);
  } catch (const json::ParseError& e) {
    p.fail("invalid JSON in header at header byte " + std::to_string(e.offset) + ": " + e.what());
  }
  if (!root.is(json::Type::kObject)) p.fail("header must be a JSON object, found " + show(root));

  Header h;
  h.header_length = n;
  h.data_start = 8 + n;
  h.data_length = size - 8 - n;
  h.tensors.reserve(root.members.size());
  // A tensor name given twice: the last entry is the tensor (the reference's
  // map), but __metadata__ twice is an error there too.
  bool seen_metadata = false;
  std::unordered_map<std::string_view, size_t> slot;
  for (const auto& [key, val] : root.members) {
    if (key == "__metadata__") {
      if (seen_metadata) p.fail("duplicate \"__metadata__\" key in header");
      seen_metadata = true;
      p.parse_metadata(val, h);
      continue;
    }
    TensorInfo t = p.parse_entry(key, val);
    auto [it, fresh] = slot.emplace(key, h.tensors.size());
    if (fresh) h.tensors.push_back(std::move(t));
    else h.tensors[it->second] = std::move(t);
  }
  p.validate(h);
  return h;
}

// ---------------------------------------------------------------------------
// File

static std::string errno_str(int e) { return std::strerror(e); }

File::File(const std::string& path) : path_(path) {
  // O_NONBLOCK so a FIFO given as the path cannot hang the open; it has no
  // effect on regular files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(code::kIo, path + ": cannot open: " + errno_str(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(code::kIo, path + ": cannot stat: " + errno_str(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(code::kIo, path + ": not a regular file" + (S_ISDIR(st.st_mode) ? std::string(" (a directory)") : ""));
  }
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (file_size_ >= 8) {  // mmap of 0 bytes fails; smaller files fail validation below anyway
    void* m = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw Error(code::kIo, path + ": cannot mmap: " + errno_str(e));
    }
    map_ = m;
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  try {
    static const uint8_t kEmpty[8] = {};
    header_ = parse_header(map_ ? static_cast<const uint8_t*>(map_) : kEmpty, file_size_, path_);
  } catch (...) {
    close();
    throw;
  }
  index_.reserve(header_.tensors.size());
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

File::~File() { close(); }

void File::close() {
  if (map_) ::munmap(map_, file_size_);
  map_ = nullptr;
}

void File::check_open() const {
  if (!map_) throw Error(code::kArgument, path_ + ": the safetensors file has been closed");
}

const TensorInfo* File::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const TensorInfo& File::info(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error(code::kArgument, path_ + ": no tensor named " + q(name) + " in this file");
  return *t;
}

const uint8_t* File::raw(const TensorInfo& t) const {
  check_open();
  return static_cast<const uint8_t*>(map_) + header_.data_start + t.begin;
}

bool File::is_aligned(const TensorInfo& t) const {
  // The mapping is page-aligned, so this is the file offset's alignment.
  return reinterpret_cast<uintptr_t>(raw(t)) % dtype_alignment(t.dtype) == 0;
}

TensorView File::view(std::string_view name) const {
  const TensorInfo& t = info(name);
  TensorView v;
  v.info_ = &t;
  const uint8_t* p = raw(t);
  if (is_aligned(t)) {
    v.data_ = p;
    return v;
  }
  // Unaligned in the file (legal, though the reference writer never produces
  // it): hand out an aligned copy rather than a pointer that would fault or
  // be slow when read as the dtype.
  const size_t n = static_cast<size_t>(t.nbytes());
  void* buf = ::operator new(std::max<size_t>(n, 1), std::align_val_t{64});
  std::memcpy(buf, p, n);
  v.owned_ = std::shared_ptr<void>(buf, [](void* b) { ::operator delete(b, std::align_val_t{64}); });
  v.data_ = buf;
  return v;
}

// ---------------------------------------------------------------------------
// Float conversions

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

uint16_t float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00u;         // NaN -> canonical quiet NaN
  if (a >= 0x477FF000u) return sign | 0x7C00u;        // >= 65520 rounds (ties-to-even) to infinity
  if (a >= 0x38800000u) {                             // normal half (>= 2^-14)
    uint32_t r = a - 0x38000000u;                      // rebias exponent 127 -> 15
    r += 0x0FFFu + ((r >> 13) & 1u);                   // round to nearest even on the 13 dropped bits
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  // Subnormal half: units of 2^-24. Values below 2^-25 round to zero.
  const uint32_t e = a >> 23;
  if (e < 102) return sign;
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;  // value = m * 2^(e-150)
  const uint32_t shift = 126 - e;                   // 14..24
  uint32_t qv = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (qv & 1u))) ++qv;  // may carry into the smallest normal: still correct
  return static_cast<uint16_t>(sign | qv);
}

// ---------------------------------------------------------------------------
// Writer

namespace {

// xoshiro256** seeded through splitmix64: small, fast, and fully specified,
// so a seed names the same tensor on every machine (docs/safetensors.md).
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t x = seed;
    for (auto& w : s_) w = splitmix64(x);
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t s_[4];
};

// Produces a fill's values in order; state carries across chunks so the
// result does not depend on the chunk size.
class FillGen {
 public:
  explicit FillGen(const Fill& f) : f_(f), rng_(f.seed) {}
  double next() {
    switch (f_.kind) {
      case Fill::Kind::kZeros: return 0.0;
      case Fill::Kind::kOnes: return 1.0;
      case Fill::Kind::kConst: return f_.value;
      case Fill::Kind::kUniform: return f_.low + (f_.high - f_.low) * rng_.uniform();
      case Fill::Kind::kNormal: {
        // Box-Muller: each pair of uniforms gives two normals (cos, then sin).
        if (has_spare_) {
          has_spare_ = false;
          return f_.mean + f_.stddev * spare_;
        }
        const double u1 = rng_.uniform(), u2 = rng_.uniform();
        const double r = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1-u1 in (0, 1]
        const double theta = 2.0 * M_PI * u2;
        spare_ = r * std::sin(theta);
        has_spare_ = true;
        return f_.mean + f_.stddev * (r * std::cos(theta));
      }
    }
    return 0.0;
  }

 private:
  Fill f_;
  Rng rng_;
  bool has_spare_ = false;
  double spare_ = 0;
};

// Writes through a staging buffer so many small tensors do not cost one
// syscall each; large blocks go straight to the file.
class Out {
 public:
  Out(int fd, const std::string& path, const std::string& tmp) : fd_(fd), path_(path), tmp_(tmp) { buf_.reserve(kCap); }
  void write(const void* p, size_t n) {
    if (buf_.size() + n <= kCap) {
      buf_.insert(buf_.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
      return;
    }
    flush();
    if (n >= kCap) raw_write(p, n);
    else buf_.insert(buf_.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
  }
  void flush() {
    if (!buf_.empty()) raw_write(buf_.data(), buf_.size());
    buf_.clear();
  }
  static constexpr size_t kCap = 4 << 20;

 private:
  void raw_write(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd_, c, std::min<size_t>(n, 1 << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        throw Error(code::kIo, path_ + ": cannot write (to temporary file " + tmp_ + "): " + errno_str(errno));
      }
      c += w;
      n -= static_cast<size_t>(w);
    }
  }
  int fd_;
  const std::string& path_;
  const std::string& tmp_;
  std::vector<uint8_t> buf_;
};

void write_fill(Out& out, const TensorToWrite& t, uint64_t numel) {
  const Fill& f = *t.fill;
  const size_t esize = dtype_bits(t.dtype) / 8;
  // Elements per generated chunk: bounded memory for big tensors, and no
  // 64K-element setup cost for the many tiny ones.
  const size_t kChunk = static_cast<size_t>(std::min<uint64_t>(numel, 1 << 16));
  std::vector<uint8_t> buf(kChunk * esize);
  auto store = [&](size_t i, double v) {
    const float x = static_cast<float>(v);  // round to nearest float32
    uint8_t* p = buf.data() + i * esize;
    if (t.dtype == Dtype::F32) {
      std::memcpy(p, &x, 4);
    } else {
      const uint16_t h = t.dtype == Dtype::BF16 ? float_to_bf16(x) : float_to_f16(x);
      std::memcpy(p, &h, 2);
    }
  };
  const bool constant = f.kind != Fill::Kind::kNormal && f.kind != Fill::Kind::kUniform;
  FillGen gen(f);
  if (constant) {  // the same pattern in every chunk
    const double v = gen.next();
    for (size_t i = 0; i < kChunk; ++i) store(i, v);
  }
  for (uint64_t done = 0; done < numel;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, numel - done));
    if (!constant)
      for (size_t i = 0; i < n; ++i) store(i, gen.next());
    out.write(buf.data(), n * esize);
    done += n;
  }
}

void check_utf8_arg(std::string_view s, const std::string& what, const std::string& path) {
  if (!json::valid_utf8(s)) throw Error(code::kArgument, path + ": " + what + " is not valid UTF-8");
}

}  // namespace

std::string serialize_header(const std::vector<const TensorToWrite*>& sorted, const std::optional<Metadata>& metadata,
                             std::vector<std::pair<uint64_t, uint64_t>>* offsets) {
  // Compact serde_json of the reference's Metadata: "__metadata__" first (when
  // given), then the tensors in data order, each {"dtype","shape","data_offsets"}.
  std::string h = "{";
  if (metadata) {
    h += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata->size(); ++i) {
      if (i) h += ',';
      json::append_quoted(h, (*metadata)[i].first);
      h += ':';
      json::append_quoted(h, (*metadata)[i].second);
    }
    h += '}';
    if (!sorted.empty()) h += ',';
  }
  uint64_t pos = 0;
  if (offsets) offsets->clear();
  for (size_t i = 0; i < sorted.size(); ++i) {
    const TensorToWrite& t = *sorted[i];
    uint64_t nbytes = 0;
    tensor_nbytes(t.dtype, t.shape, &nbytes, nullptr);  // validated by the caller
    if (i) h += ',';
    json::append_quoted(h, t.name);
    h += ":{\"dtype\":\"";
    h += dtype_name(t.dtype);
    h += "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d) h += ',';
      h += std::to_string(t.shape[d]);
    }
    h += "],\"data_offsets\":[" + std::to_string(pos) + "," + std::to_string(pos + nbytes) + "]}";
    if (offsets) offsets->emplace_back(pos, pos + nbytes);
    pos += nbytes;
  }
  h += '}';
  // The reference pads the header with spaces to a multiple of 8 bytes so the
  // data section starts 8-aligned.
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

uint64_t write_file(const std::string& path, const std::vector<TensorToWrite>& tensors,
                    const std::optional<Metadata>& metadata) {
  auto arg_error = [&](const std::string& msg) { return Error(code::kArgument, path + ": " + msg); };

  // Validate everything before touching the file system.
  std::vector<uint64_t> sizes(tensors.size());
  std::set<std::string_view> names;
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorToWrite& t = tensors[i];
    check_utf8_arg(t.name, "tensor name " + q(t.name), path);
    auto terr = [&](const std::string& msg) { return arg_error("tensor " + q(t.name) + ": " + msg); };
    if (t.name == "__metadata__") throw arg_error("a tensor cannot be named \"__metadata__\" (reserved for metadata)");
    if (!names.insert(t.name).second) throw arg_error("duplicate tensor name " + q(t.name));
    std::string why;
    if (!tensor_nbytes(t.dtype, t.shape, &sizes[i], &why))
      throw terr("shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) + ": " + why);
    if (__builtin_add_overflow(total, sizes[i], &total)) throw arg_error("total tensor size overflows 64 bits");
    // No fill means raw data (possibly empty, for a tensor with a 0 dim).
    if (t.fill && (t.data != nullptr || t.data_len != 0))
      throw terr("give either data or fill, not both");
    if (!t.fill && t.data_len > 0 && t.data == nullptr) throw terr("data is null");
    if (!t.fill && t.data_len != sizes[i])
      throw terr("data has " + std::to_string(t.data_len) + " bytes but shape " +
                 shape_str(t.shape) + " of " + dtype_name(t.dtype) + " needs " + std::to_string(sizes[i]));
    if (t.fill) {
      if (t.dtype != Dtype::F32 && t.dtype != Dtype::F16 && t.dtype != Dtype::BF16)
        throw terr(std::string("fill supports F32, F16 and BF16, not ") + dtype_name(t.dtype));
      const Fill& f = *t.fill;
      if (f.kind == Fill::Kind::kNormal && !(std::isfinite(f.mean) && std::isfinite(f.stddev) && f.stddev >= 0))
        throw terr("normal fill needs a finite mean and a finite std >= 0");
      if (f.kind == Fill::Kind::kUniform && !(std::isfinite(f.low) && std::isfinite(f.high) && f.low <= f.high))
        throw terr("uniform fill needs finite low <= high");
    }
  }
  std::optional<Metadata> meta = metadata;
  if (meta) {
    // The reference keeps metadata in a Rust HashMap, whose iteration order is
    // unspecified (randomised per process); we pick sorted order so that the
    // same input always gives the same bytes.
    std::sort(meta->begin(), meta->end());
    for (size_t i = 0; i < meta->size(); ++i) {
      check_utf8_arg((*meta)[i].first, "metadata key " + q((*meta)[i].first), path);
      check_utf8_arg((*meta)[i].second, "metadata value for key " + q((*meta)[i].first), path);
      if (i && (*meta)[i].first == (*meta)[i - 1].first) throw arg_error("duplicate metadata key " + q((*meta)[i].first));
    }
  }

  // The reference's order: dtype descending (enum order), then name ascending
  // (byte-wise, as Rust's String Ord; std::string compares as unsigned char).
  std::vector<const TensorToWrite*> sorted;
  sorted.reserve(tensors.size());
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    if (a->dtype != b->dtype) return a->dtype > b->dtype;
    return a->name < b->name;
  });
  const std::string header = serialize_header(sorted, meta, nullptr);
  if (header.size() > kMaxHeaderSize)
    throw arg_error("the header would be " + std::to_string(header.size()) + " bytes, over the " +
                    std::to_string(kMaxHeaderSize) + "-byte limit that readers enforce");

  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw Error(code::kIo, path + ": cannot write (creating temporary file " + tmp + "): " + errno_str(errno));
  try {
    Out out(fd, path, tmp);
    const uint64_t n = header.size();
    out.write(&n, 8);
    out.write(header.data(), header.size());
    for (const TensorToWrite* t : sorted) {
      uint64_t nb = 0;
      tensor_nbytes(t->dtype, t->shape, &nb, nullptr);
      if (t->fill) write_fill(out, *t, nb / (dtype_bits(t->dtype) / 8));
      else if (nb) out.write(t->data, static_cast<size_t>(nb));
    }
    out.flush();
    // Data on disk before the rename publishes it, so a crash leaves either
    // the old file or the complete new one.
    if (::fsync(fd) != 0) throw Error(code::kIo, path + ": cannot fsync " + tmp + ": " + errno_str(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {  // NFS and friends report write errors here
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error(code::kIo, path + ": cannot close " + tmp + ": " + errno_str(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error(code::kIo, path + ": cannot rename " + tmp + " over it: " + errno_str(e));
  }
  // Persist the directory entry too (best effort: some file systems refuse).
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return 8 + header.size() + total;
}

}  // namespace rlhf::st
