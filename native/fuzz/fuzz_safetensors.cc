// A mutational, coverage-guided fuzzer for the two parsers that read
// untrusted bytes: the .safetensors header parser (st::parse_header, and
// st::File for the mmap path) and the JSON parser under it (json::parse).
// Built and run by scripts/fuzz-native.sh with AddressSanitizer and
// UndefinedBehaviorSanitizer; see docs/reliability.md.
//
// The parsers are compiled with -fsanitize-coverage=trace-pc, which calls
// __sanitizer_cov_trace_pc() at every basic block; this file (compiled
// without it) hashes consecutive block addresses into an edge map, AFL-style,
// and keeps every input that reaches a new (edge, hit-count bucket) pair in
// the corpus it mutates. Without that instrumentation it still runs, as a
// plain randomised fuzzer.
//
// What counts as a finding (saved to --out, and the exit status is 1):
//   - a sanitizer report (the process dies; the input is saved first by the
//     death callback);
//   - any exception other than rlhf::Error E_SAFETENSORS from parse_header,
//     or other than json::ParseError from json::parse;
//   - an error message that is not one line or does not start with the path;
//   - an accepted header that breaks the format's invariants (tensors sorted
//     and tiling the data section, sizes matching dtype x shape), or that
//     does not survive serialize_header -> parse_header unchanged;
//   - a JSON string the parser accepted that is not valid UTF-8, or that
//     does not survive json::append_quoted -> json::parse unchanged.
//
// Usage: fuzz_safetensors [--seconds S] [--seed N] [--max-len BYTES]
//                         [--out DIR] [--runs N] [seed files...]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../error.h"
#include "../json.h"
#include "../safetensors.h"

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>) && (defined(__SANITIZE_ADDRESS__) || defined(RLHF_FUZZ_ASAN))
#include <sanitizer/common_interface_defs.h>
#define RLHF_HAVE_DEATH_CALLBACK 1
#endif
#endif

namespace {

// ---------------------------------------------------------------------------
// Coverage: an edge map fed by the trace-pc callback.

constexpr size_t kMapSize = 1 << 14;  // a few thousand edges in the code under test
uint8_t g_map[kMapSize];
uintptr_t g_prev = 0;
bool g_trace = false;  // only while a target runs

// Hit counts bucketed as AFL does: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+.
uint8_t bucket(uint8_t n) {
  if (n == 0) return 0;
  if (n <= 3) return static_cast<uint8_t>(1u << (n - 1));
  if (n <= 7) return 8;
  if (n <= 15) return 16;
  if (n <= 31) return 32;
  if (n <= 127) return 64;
  return 128;
}

}  // namespace

extern "C" void __sanitizer_cov_trace_pc(void) {
  if (!g_trace) return;
  uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  pc = (pc ^ (pc >> 15) ^ (pc >> 31)) & (kMapSize - 1);
  uint8_t& c = g_map[pc ^ g_prev];
  if (c != 255) ++c;
  g_prev = pc >> 1;
}

namespace {

// ---------------------------------------------------------------------------
// Randomness: xorshift64*, seeded from the command line.

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
  bool chance(unsigned percent) { return below(100) < percent; }
};

// ---------------------------------------------------------------------------
// Findings

std::string g_out_dir = "fuzz-findings";
const std::string* g_current = nullptr;  // the input being run (for the death callback)
const char* g_current_target = "";
int g_findings = 0;

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string save_input(const std::string& data, const char* kind) {
  char name[96];
  std::snprintf(name, sizeof name, "/%s-%s-%016" PRIx64 ".bin", kind, g_current_target, fnv1a(data));
  const std::string path = g_out_dir + name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      const ssize_t w = ::write(fd, p, left);
      if (w <= 0) break;
      p += w;
      left -= static_cast<size_t>(w);
    }
    ::close(fd);
  }
  return path;
}

void finding(const std::string& input, const std::string& what) {
  ++g_findings;
  const std::string path = save_input(input, "finding");
  std::fprintf(stderr, "fuzz: FINDING (%s): %s\n  input saved to %s\n", g_current_target, what.c_str(), path.c_str());
}

#ifdef RLHF_HAVE_DEATH_CALLBACK
void on_death() {
  if (!g_current) return;
  const std::string path = save_input(*g_current, "crash");
  std::fprintf(stderr, "fuzz: the %s target crashed; input saved to %s\n", g_current_target, path.c_str());
}
#endif

// ---------------------------------------------------------------------------
// Targets

const std::string kPath = "fuzz.safetensors";

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(&s[0], &n, 8);
  return s;
}

bool one_line_with_path(const std::string& msg) {
  return msg.find('\n') == std::string::npos && msg.rfind(kPath + ": ", 0) == 0;
}

// Checks an accepted header against the format and round-trips it through the
// writer's header serialisation. Returns an empty string when all is well.
std::string check_header(const rlhf::st::Header& h, const std::string& in) {
  using namespace rlhf::st;
  uint64_t n;
  std::memcpy(&n, in.data(), 8);
  if (h.header_length != n || h.data_start != 8 + n || h.data_length != in.size() - 8 - n) return "header sizes disagree with the input";
  uint64_t pos = 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorInfo& t = h.tensors[i];
    if (t.begin != pos) return "accepted tensors do not tile the data section";
    uint64_t nb = 0;
    std::string why;
    if (!tensor_nbytes(t.dtype, t.shape, &nb, &why) || nb != t.end - t.begin) return "accepted a tensor whose size does not match dtype x shape";
    if (!rlhf::json::valid_utf8(t.name)) return "accepted a tensor name that is not UTF-8";
    pos = t.end;
  }
  if (pos != h.data_length) return "accepted tensors do not cover the data section";

  // Writer round trip: the same tensors, in offset order, must serialise to a
  // header that parses back to the same tensors and metadata.
  std::vector<TensorToWrite> tw(h.tensors.size());
  std::vector<const TensorToWrite*> order;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    tw[i].name = h.tensors[i].name;
    tw[i].dtype = h.tensors[i].dtype;
    tw[i].shape = h.tensors[i].shape;
    tw[i].data = in.data() + h.data_start + h.tensors[i].begin;
    tw[i].data_len = static_cast<size_t>(h.tensors[i].nbytes());
    order.push_back(&tw[i]);
  }
  std::vector<std::pair<uint64_t, uint64_t>> offsets;
  std::string text;
  try {
    text = serialize_header(order, h.metadata, &offsets);
  } catch (const rlhf::Error& e) {
    return std::string("serialize_header refused an accepted header: ") + e.what();
  }
  const std::string again = le64(text.size()) + text + in.substr(static_cast<size_t>(h.data_start));
  Header h2;
  try {
    h2 = parse_header(reinterpret_cast<const uint8_t*>(again.data()), again.size(), kPath);
  } catch (const rlhf::Error& e) {
    return std::string("the re-serialised header does not parse: ") + e.what();
  }
  if (h2.tensors.size() != h.tensors.size()) return "round trip changed the tensor count";
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorInfo &a = h.tensors[i], &b = h2.tensors[i];
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.begin != b.begin || a.end != b.end) return "round trip changed tensor '" + a.name + "'";
  }
  if (h.metadata.has_value() != h2.metadata.has_value()) return "round trip changed whether there is __metadata__";
  if (h.metadata) {
    // The writer sorts metadata keys; compare as sorted lists.
    Metadata m1 = *h.metadata, m2 = *h2.metadata;
    std::sort(m1.begin(), m1.end());
    std::sort(m2.begin(), m2.end());
    if (m1 != m2) return "round trip changed __metadata__";
  }
  return "";
}

struct Counts {
  uint64_t runs = 0, accepted = 0;
};
Counts g_st, g_json, g_file;

void run_safetensors(const std::string& in) {
  ++g_st.runs;
  try {
    rlhf::st::Header h = rlhf::st::parse_header(reinterpret_cast<const uint8_t*>(in.data()), in.size(), kPath);
    ++g_st.accepted;
    g_trace = false;
    const std::string bad = check_header(h, in);
    if (!bad.empty()) finding(in, bad);
  } catch (const rlhf::Error& e) {
    if (e.code() != rlhf::code::kSafetensors) finding(in, "parse_header threw " + e.code() + ": " + e.what());
    else if (!one_line_with_path(e.what())) finding(in, std::string("error message is not one line starting with the path: ") + e.what());
  } catch (const std::exception& e) {
    finding(in, std::string("parse_header let a non-rlhf exception escape: ") + e.what());
  } catch (...) {
    finding(in, "parse_header threw a non-exception object");
  }
}

// The same bytes through st::File (open, mmap, validate, view every tensor).
void run_file(const std::string& in, const std::string& tmp) {
  ++g_file.runs;
  {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return;
    const ssize_t w = ::write(fd, in.data(), in.size());
    ::close(fd);
    if (w != static_cast<ssize_t>(in.size())) return;
  }
  try {
    rlhf::st::File f(tmp);
    ++g_file.accepted;
    uint64_t sum = 0;
    for (const auto& t : f.tensors()) {
      rlhf::st::TensorView v = f.view(t.name);
      const auto* p = static_cast<const uint8_t*>(v.data());
      if (v.nbytes()) sum += p[0] + p[v.nbytes() - 1];
    }
    f.close();
    (void)sum;
  } catch (const rlhf::Error& e) {
    if (e.code() != rlhf::code::kSafetensors) finding(in, "File threw " + e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    finding(in, std::string("File let a non-rlhf exception escape: ") + e.what());
  }
}

void run_json(const std::string& in, bool dup_keys, int depth) {
  ++g_json.runs;
  rlhf::json::ParseOptions o;
  o.allow_duplicate_keys = dup_keys;
  o.max_depth = depth;
  try {
    rlhf::json::Value v = rlhf::json::parse(in, o);
    ++g_json.accepted;
    g_trace = false;
    // Every string the parser produced: valid UTF-8, and it survives the
    // writer's escaper.
    std::vector<const rlhf::json::Value*> stack{&v};
    std::vector<std::string> strings;
    while (!stack.empty()) {
      const rlhf::json::Value* x = stack.back();
      stack.pop_back();
      if (x->is(rlhf::json::Type::kString)) strings.push_back(x->text);
      if (x->is(rlhf::json::Type::kNumber)) {
        uint64_t u;
        std::string why;
        (void)x->as_u64(&u, &why);
      }
      for (const auto& it : x->items) stack.push_back(&it);
      for (const auto& [k, m] : x->members) {
        strings.push_back(k);
        stack.push_back(&m);
      }
    }
    for (const std::string& s : strings) {
      if (!rlhf::json::valid_utf8(s)) {
        finding(in, "json::parse produced a string that is not valid UTF-8");
        break;
      }
      std::string quoted;
      rlhf::json::append_quoted(quoted, s);
      rlhf::json::Value back;
      try {
        back = rlhf::json::parse(quoted);
      } catch (const std::exception& e) {
        finding(in, std::string("append_quoted output does not parse: ") + e.what());
        break;
      }
      if (!back.is(rlhf::json::Type::kString) || back.text != s) {
        finding(in, "append_quoted -> parse changed a string");
        break;
      }
    }
  } catch (const rlhf::json::ParseError&) {
  } catch (const std::exception& e) {
    finding(in, std::string("json::parse let a non-ParseError exception escape: ") + e.what());
  }
}

// ---------------------------------------------------------------------------
// Seeds

std::string st_file(const std::string& header, size_t data_len) {
  return le64(header.size()) + header + std::string(data_len, '\xab');
}

std::vector<std::string> builtin_safetensors_seeds() {
  using namespace rlhf::st;
  std::vector<std::string> out;
  auto make = [&](std::vector<TensorToWrite> ts, std::optional<Metadata> md) {
    std::vector<const TensorToWrite*> order;
    for (auto& t : ts) order.push_back(&t);
    std::vector<std::pair<uint64_t, uint64_t>> offs;
    const std::string h = serialize_header(order, md, &offs);
    out.push_back(st_file(h, offs.empty() ? 0 : static_cast<size_t>(offs.back().second)));
  };
  auto t = [](const char* name, Dtype d, std::vector<uint64_t> shape) {
    TensorToWrite x;
    x.name = name;
    x.dtype = d;
    x.shape = std::move(shape);
    return x;
  };
  make({t("model.layers.0.self_attn.q_proj.weight", Dtype::F32, {4, 3}), t("b", Dtype::BF16, {5}), t("ids", Dtype::I64, {2}),
        t("mask", Dtype::BOOL, {3}), t("empty", Dtype::F16, {0, 2}), t("scalar", Dtype::F64, {})},
       Metadata{{"format", "pt"}, {"note", "a \"quoted\" \\ value\n"}});
  make({t("q", Dtype::F4, {2, 3}), t("e", Dtype::F8_E8M0, {2}), t("c", Dtype::C64, {1}), t("u", Dtype::U16, {3, 1})}, std::nullopt);
  make({t("\xc3\xa9\n\"/ \xf0\x9f\x98\x80", Dtype::U8, {1})}, Metadata{});
  out.push_back(st_file("{}", 0));
  out.push_back(st_file("{\"__metadata__\":null}", 0));
  out.push_back(st_file("{\"x\":{\"dtype\":\"U8\",\"shape\":[0,18446744073709551615],\"data_offsets\":[0,0]}}", 0));
  out.push_back(st_file("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}   ", 4));
  return out;
}

std::vector<std::string> builtin_json_seeds() {
  return {
      "{\"a\":[1,2,3],\"b\":{\"c\":null,\"d\":true,\"e\":false},\"f\":\"x\\u00e9\\n\\\"\"}",
      "[-0, 0.5e-3, 1E+2, 18446744073709551615, 18446744073709551616, -1]",
      "\"\\ud83d\\ude00 \\u0000 \\/ \\b\\f\\r\\t\"",
      "{\"k\":1,\"k\":2}",
      " [ [ [ [ ] ] ] ] ",
      "{\"\xc3\xa9\":\"\xf0\x9f\x98\x80\"}",
  };
}

// ---------------------------------------------------------------------------
// Mutations

const char* const kTokens[] = {
    "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "\"F32\"", "\"BF16\"", "\"F4\"", "\"F6_E2M3\"", "\"C64\"",
    "\"BOOL\"", "\"U64\"", "\"f32\"", "18446744073709551615", "18446744073709551616", "4294967296", "9007199254740993",
    "-1", "-0", "1e3", "0.5", "1E400", "00", "null", "true", "false", "\\u0000", "\\ud800", "\\udc00", "\\ud83d\\ude00",
    "\\uDBFF\\uDFFF", "\\x", "[]", "{}", "[[[[[[[[", "]]]]", "{\"a\":", "\":", ",", ",,", "\xf0\x9f\x98\x80", "\xc0\x80",
    "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xef\xbb\xbf", "\x7f", "\t", "\r\n", "\"\"",
};
constexpr size_t kNumTokens = sizeof(kTokens) / sizeof(kTokens[0]);
const uint8_t kInteresting[] = {0, 1, 0x7f, 0x80, 0xff, '{', '}', '[', ']', '"', ':', ',', '\\', '0', '9', '-', 'e', '.', ' ', 'u'};

void mutate_bytes(std::string& s, Rng& r, const std::vector<std::string>& corpus, size_t max_len) {
  switch (r.below(10)) {
    case 0:
      if (!s.empty()) s[r.below(s.size())] ^= static_cast<char>(1u << r.below(8));
      break;
    case 1:
      if (!s.empty()) s[r.below(s.size())] = static_cast<char>(kInteresting[r.below(sizeof kInteresting)]);
      break;
    case 2:
    case 3:
      s.insert(r.below(s.size() + 1), kTokens[r.below(kNumTokens)]);
      break;
    case 4:
      if (!s.empty()) {
        const size_t at = r.below(s.size());
        s.erase(at, 1 + r.below(std::min<size_t>(32, s.size() - at)));
      }
      break;
    case 5:
      if (!s.empty()) {  // copy a chunk elsewhere
        const size_t at = r.below(s.size()), len = 1 + r.below(std::min<size_t>(64, s.size() - at));
        const std::string chunk = s.substr(at, len);
        s.insert(r.below(s.size() + 1), chunk);
      }
      break;
    case 6:
      if (!corpus.empty()) {  // splice with another input
        const std::string& o = corpus[r.below(corpus.size())];
        const size_t a = r.below(s.size() + 1), b = r.below(o.size() + 1);
        s = s.substr(0, a) + o.substr(b);
      }
      break;
    case 7: {  // rewrite a number
      std::vector<size_t> digits;
      for (size_t i = 0; i < s.size(); ++i)
        if (s[i] >= '0' && s[i] <= '9' && (i == 0 || s[i - 1] < '0' || s[i - 1] > '9')) digits.push_back(i);
      if (digits.empty()) break;
      const size_t at = digits[r.below(digits.size())];
      size_t end = at;
      while (end < s.size() && s[end] >= '0' && s[end] <= '9') ++end;
      static const char* const nums[] = {"0", "1", "2", "3", "7", "8", "12", "255", "256", "65536", "4294967295", "4294967296",
                                         "18446744073709551615", "18446744073709551616", "99999999999999999999999"};
      std::string rep = r.chance(70) ? nums[r.below(sizeof nums / sizeof nums[0])] : std::to_string(r.below(100000));
      s.replace(at, end - at, rep);
      break;
    }
    case 8:
      s.resize(r.below(s.size() + 1));
      break;
    default:
      for (size_t k = 1 + r.below(8); k > 0; --k) s.insert(r.below(s.size() + 1), 1, static_cast<char>(r.below(256)));
      break;
  }
  if (s.size() > max_len) s.resize(max_len);
}

// JSON text of a parsed value (numbers keep their literal text).
void write_json(const rlhf::json::Value& v, std::string& out) {
  using rlhf::json::Type;
  switch (v.type) {
    case Type::kNull: out += "null"; break;
    case Type::kBool: out += v.boolean ? "true" : "false"; break;
    case Type::kNumber: out += v.text; break;
    case Type::kString: rlhf::json::append_quoted(out, v.text); break;
    case Type::kArray:
      out += '[';
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i) out += ',';
        write_json(v.items[i], out);
      }
      out += ']';
      break;
    case Type::kObject:
      out += '{';
      for (size_t i = 0; i < v.members.size(); ++i) {
        if (i) out += ',';
        rlhf::json::append_quoted(out, v.members[i].first);
        out += ':';
        write_json(v.members[i].second, out);
      }
      out += '}';
      break;
  }
}

rlhf::json::Value num(uint64_t n) {
  rlhf::json::Value v;
  v.type = rlhf::json::Type::kNumber;
  v.text = std::to_string(n);
  return v;
}

const char* const kDtypeNames[] = {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16",
                                   "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"};

// Structure-aware mutation of a header that parses as JSON: edits one entry's
// dtype, shape or offsets (then usually re-lays the offsets out so that they
// are consistent again), renames, duplicates or drops entries, or edits the
// metadata; returns the new file, or "" when the header is not JSON.
std::string mutate_tree(const std::string& header, const std::string& data, Rng& r) {
  using namespace rlhf::json;
  Value root;
  try {
    root = parse(header, ParseOptions{127, true});
  } catch (const ParseError&) {
    return "";
  }
  if (!root.is(Type::kObject)) return "";
  auto& m = root.members;
  std::vector<size_t> entries;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i].first != "__metadata__" && m[i].second.is(Type::kObject)) entries.push_back(i);
  static const uint64_t dims[] = {0, 1, 2, 3, 5, 7, 8, 1ull << 31, 1ull << 32, (1ull << 62) + 1, ~0ull};
  const size_t op = r.below(8);
  if (!entries.empty() && op <= 3) {
    Value& e = m[entries[r.below(entries.size())]].second;
    auto field = [&](const char* key) -> Value* {
      for (auto& kv : e.members)
        if (kv.first == key) return &kv.second;
      return nullptr;
    };
    if (op == 0) {
      if (Value* d = field("dtype")) {
        d->type = Type::kString;
        d->text = r.chance(90) ? kDtypeNames[r.below(20)] : "F33";
      }
    } else if (op == 1) {
      if (Value* sh = field("shape"); sh && sh->is(Type::kArray)) {
        if (r.chance(30) && !sh->items.empty()) sh->items.erase(sh->items.begin() + static_cast<long>(r.below(sh->items.size())));
        else if (r.chance(40)) sh->items.insert(sh->items.begin() + static_cast<long>(r.below(sh->items.size() + 1)), num(dims[r.below(11)]));
        else if (!sh->items.empty()) sh->items[r.below(sh->items.size())] = num(r.chance(50) ? dims[r.below(11)] : r.below(17));
      }
    } else if (op == 2) {
      if (Value* o = field("data_offsets"); o && o->is(Type::kArray) && !o->items.empty())
        o->items[r.below(o->items.size())] = num(r.chance(50) ? dims[r.below(11)] : r.below(64));
    } else {
      // Rename: to another entry's name (a duplicate), to odd text, or to the metadata key.
      static const char* const names[] = {"", "__metadata__", "a\nb", "\xc3\xa9", "x\\y", "\x7f", "\xf0\x9f\x98\x80"};
      const size_t i = entries[r.below(entries.size())];
      m[i].first = r.chance(30) ? m[entries[r.below(entries.size())]].first : names[r.below(7)];
    }
  } else if (op == 4 && !entries.empty()) {
    const size_t i = entries[r.below(entries.size())];
    if (r.chance(50)) m.erase(m.begin() + static_cast<long>(i));
    else m.insert(m.begin() + static_cast<long>(r.below(m.size() + 1)), m[i]);
  } else if (op == 5) {
    // Metadata: add, drop, or give it a non-string value.
    size_t mi = m.size();
    for (size_t i = 0; i < m.size(); ++i)
      if (m[i].first == "__metadata__") mi = i;
    if (mi == m.size()) {
      Value md;
      md.type = Type::kObject;
      m.insert(m.begin(), {"__metadata__", md});
      mi = 0;
    }
    Value& md = m[mi].second;
    Value val;
    const size_t kind = r.below(4);
    val.type = kind == 0 ? Type::kNumber : kind == 1 ? Type::kNull : Type::kString;
    val.text = kind == 0 ? "1" : "v\xc3\xa9";
    if (md.is(Type::kObject)) md.members.push_back({r.chance(50) ? "k" : "format", val});
    else md = val;
  }
  // Lay the offsets out again from dtype x shape (most of the time), so that
  // the edit above is what the validation sees.
  std::string d = data;
  if (r.chance(75)) {
    uint64_t pos = 0;
    for (auto& kv : m) {
      if (kv.first == "__metadata__" || !kv.second.is(Type::kObject)) continue;
      const Value* dt = kv.second.find("dtype");
      const Value* sh = kv.second.find("shape");
      rlhf::st::Dtype dtype;
      if (!dt || !dt->is(Type::kString) || !rlhf::st::parse_dtype(dt->text, &dtype) || !sh || !sh->is(Type::kArray)) continue;
      std::vector<uint64_t> shape;
      bool ok = true;
      for (const Value& x : sh->items) {
        uint64_t u;
        if (!x.as_u64(&u)) ok = false;
        shape.push_back(u);
      }
      uint64_t nb;
      std::string why;
      if (!ok || !rlhf::st::tensor_nbytes(dtype, shape, &nb, &why) || nb > 4096) continue;
      for (auto& f : kv.second.members)
        if (f.first == "data_offsets") {
          f.second.type = Type::kArray;
          f.second.items = {num(pos), num(pos + nb)};
        }
      pos += nb;
    }
    if (r.chance(90)) d.assign(static_cast<size_t>(pos), '\x5a');
  }
  std::string text;
  write_json(root, text);
  if (r.chance(20)) text.append(r.below(8), ' ');
  return le64(text.size()) + text + d;
}

// Safetensors inputs are mostly mutated as (header text, data) and put back
// together with a matching length field, so that mutations reach the JSON and
// the validation instead of dying at the length check.
std::string mutate_safetensors(const std::string& in, Rng& r, const std::vector<std::string>& corpus, size_t max_len) {
  uint64_t n = 0;
  if (in.size() >= 8) std::memcpy(&n, in.data(), 8);
  const bool structured = in.size() >= 8 && n <= in.size() - 8 && r.chance(85);
  if (!structured) {
    std::string s = in;
    for (size_t k = 1 + r.below(3); k > 0; --k) mutate_bytes(s, r, corpus, max_len);
    if (r.chance(10) && s.size() >= 8) {  // an extreme length field
      static const uint64_t lens[] = {0, 1, 7, 100000000, 100000001, ~0ull, ~0ull - 7, 1ull << 63};
      const uint64_t v = lens[r.below(sizeof lens / sizeof lens[0])];
      std::memcpy(&s[0], &v, 8);
    }
    return s;
  }
  std::string header = in.substr(8, static_cast<size_t>(n)), data = in.substr(8 + static_cast<size_t>(n));
  if (r.chance(40)) {
    std::string t = mutate_tree(header, data, r);
    if (!t.empty() && t.size() <= max_len) return t;
  }
  const size_t rounds = 1 + r.below(4);
  for (size_t k = 0; k < rounds; ++k) {
    if (r.chance(80)) mutate_bytes(header, r, corpus, max_len);
    else if (r.chance(50)) data.resize(r.chance(50) ? data.size() + 1 + r.below(16) : (data.empty() ? 0 : r.below(data.size())), '\0');
    else mutate_bytes(data, r, corpus, max_len);
  }
  // Now and then a length that is off by a little.
  uint64_t len = header.size();
  if (r.chance(5)) len += r.below(5) - 2;
  std::string out = le64(len) + header + data;
  if (out.size() > max_len) out.resize(max_len);
  return out;
}

// ---------------------------------------------------------------------------
// Corpus with coverage feedback

struct Corpus {
  std::vector<std::string> inputs;
  uint8_t virgin[kMapSize] = {};
  size_t edges = 0;

  // Records the last run's coverage; adds `in` when it reached something new
  // (max_entries 0: record only, for the seeds already in the corpus).
  bool consider(const std::string& in, size_t max_entries) {
    bool fresh = false;
    for (size_t w = 0; w < kMapSize; w += 8) {
      uint64_t word;
      std::memcpy(&word, g_map + w, 8);
      if (!word) continue;  // most of the map is untouched
      for (size_t i = w; i < w + 8; ++i) {
        if (!g_map[i]) continue;
        const uint8_t b = bucket(g_map[i]);
        if (!virgin[i]) ++edges;
        if ((virgin[i] | b) != virgin[i]) {
          virgin[i] |= b;
          fresh = true;
        }
      }
    }
    if (fresh && max_entries > 0) {
      if (inputs.size() < max_entries) inputs.push_back(in);
      else inputs[static_cast<size_t>(fnv1a(in) % max_entries)] = in;
    }
    return fresh;
  }
};

void run_traced(void (*body)(const std::string&, void*), const std::string& in, void* ctx) {
  std::memset(g_map, 0, sizeof g_map);
  g_prev = 0;
  g_current = &in;
  g_trace = true;
  body(in, ctx);
  g_trace = false;
  g_current = nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 10;
  uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  uint64_t max_runs = 0;
  size_t max_len = 8192;
  std::vector<std::string> seed_files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool takes_value = a == "--seconds" || a == "--seed" || a == "--runs" || a == "--max-len" || a == "--out";
    if (takes_value && i + 1 >= argc) {
      std::fprintf(stderr, "fuzz: %s needs a value\n", a.c_str());
      return 2;
    }
    auto next = [&]() -> std::string { return argv[++i]; };
    if (a == "--seconds") seconds = std::atof(next().c_str());
    else if (a == "--seed") seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--runs") max_runs = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--max-len") max_len = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--out") g_out_dir = next();
    else if (a == "--help" || a == "-h") {
      std::printf("usage: fuzz_safetensors [--seconds S] [--seed N] [--runs N] [--max-len BYTES] [--out DIR] [seed files...]\n");
      return 0;
    } else seed_files.push_back(a);
  }
#ifdef RLHF_HAVE_DEATH_CALLBACK
  __sanitizer_set_death_callback(on_death);
#endif
  const std::string tmp = g_out_dir + "/.fuzz-file-" + std::to_string(::getpid()) + ".safetensors";

  Rng rng(seed);
  Corpus st, js;
  for (const std::string& s : builtin_safetensors_seeds()) st.inputs.push_back(s);
  for (const std::string& s : builtin_json_seeds()) js.inputs.push_back(s);
  for (const std::string& f : seed_files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "fuzz: cannot read seed file %s\n", f.c_str());
      return 2;
    }
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.size() > max_len) continue;
    st.inputs.push_back(bytes);
    uint64_t n = 0;
    if (bytes.size() >= 8) std::memcpy(&n, bytes.data(), 8);
    if (bytes.size() >= 8 && n <= bytes.size() - 8) js.inputs.push_back(bytes.substr(8, static_cast<size_t>(n)));
  }

  auto st_body = [](const std::string& in, void*) { run_safetensors(in); };
  struct JsonCtx {
    bool dup;
    int depth;
  };
  auto js_body = [](const std::string& in, void* c) {
    const auto* x = static_cast<JsonCtx*>(c);
    run_json(in, x->dup, x->depth);
  };
  // Seeds first: they set the baseline coverage.
  g_current_target = "safetensors";
  for (size_t i = 0, n = st.inputs.size(); i < n; ++i) {
    run_traced(st_body, st.inputs[i], nullptr);
    st.consider(st.inputs[i], 0);
  }
  g_current_target = "json";
  JsonCtx dflt{false, 127};
  for (size_t i = 0, n = js.inputs.size(); i < n; ++i) {
    run_traced(js_body, js.inputs[i], &dflt);
    js.consider(js.inputs[i], 0);
  }

  const size_t kMaxCorpus = 4096;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  uint64_t runs = 0;
  double slowest = 0;
  double next_report = 5;
  while (max_runs ? runs < max_runs : elapsed() < seconds) {
    ++runs;
    const auto ts = std::chrono::steady_clock::now();
    if (runs % 2) {
      g_current_target = "safetensors";
      const std::string in = mutate_safetensors(st.inputs[rng.below(st.inputs.size())], rng, st.inputs, max_len);
      run_traced(st_body, in, nullptr);
      st.consider(in, kMaxCorpus);
      if (runs % 257 == 1) {
        g_current_target = "file";
        g_current = &in;
        run_file(in, tmp);
        g_current = nullptr;
      }
    } else {
      g_current_target = "json";
      std::string in = js.inputs[rng.below(js.inputs.size())];
      for (size_t k = 1 + rng.below(3); k > 0; --k) mutate_bytes(in, rng, js.inputs, max_len);
      JsonCtx c{rng.chance(20), rng.chance(10) ? static_cast<int>(1 + rng.below(200)) : 127};
      run_traced(js_body, in, &c);
      js.consider(in, kMaxCorpus);
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    slowest = std::max(slowest, dt);
    if (!max_runs && (runs & 1023) == 0 && elapsed() > next_report) {
      std::fprintf(stderr, "fuzz: %.0fs: %" PRIu64 " inputs, edges %zu + %zu, corpus %zu + %zu\n", elapsed(), runs, st.edges, js.edges,
                   st.inputs.size(), js.inputs.size());
      next_report += 5;
    }
  }
  ::unlink(tmp.c_str());
  const double secs = elapsed();
  std::printf(
      "fuzz: %" PRIu64 " inputs in %.1f s (%.0f/s): safetensors %" PRIu64 " (%" PRIu64 " accepted), st::File %" PRIu64 " (%" PRIu64
      " accepted), json %" PRIu64 " (%" PRIu64 " accepted); coverage %zu + %zu edges, corpus %zu + %zu; slowest input %.1f ms; %d finding%s\n",
      runs, secs, secs > 0 ? runs / secs : 0.0, g_st.runs, g_st.accepted, g_file.runs, g_file.accepted, g_json.runs, g_json.accepted, st.edges,
      js.edges, st.inputs.size(), js.inputs.size(), slowest * 1e3, g_findings, g_findings == 1 ? "" : "s");
  return g_findings ? 1 : 0;
}
