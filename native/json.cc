#include "json.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace rlhf::json {

const char* type_name(Type t) {
  switch (t) {
    case Type::kNull: return "null";
    case Type::kBool: return "a boolean";
    case Type::kNumber: return "a number";
    case Type::kString: return "a string";
    case Type::kArray: return "an array";
    case Type::kObject: return "an object";
  }
  return "?";
}

const Value* Value::find(std::string_view key) const {
  for (const auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
}

bool Value::is_integer_literal() const {
  return type == Type::kNumber && text.find_first_of(".eE") == std::string::npos;
}

bool Value::as_u64(uint64_t* out, std::string* why) const {
  auto fail = [&](const char* reason) {
    if (why) *why = reason;
    return false;
  };
  if (type != Type::kNumber) return fail("not a number");
  // Any '-' counts, "-0" included: serde_json reads "-0" as a float and
  // refuses it for an unsigned field, so the reference rejects it too.
  if (text[0] == '-') return fail("negative");
  if (!is_integer_literal()) return fail("not an integer (has a fraction or an exponent)");
  uint64_t v = 0;
  for (char c : text) {
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return fail("too large for a 64-bit unsigned integer");
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

// ---------------------------------------------------------------------------
// UTF-8

// Length of the UTF-8 sequence starting at s[i] if it is well formed, else 0.
static size_t utf8_seq_len(const unsigned char* s, size_t n, size_t i) {
  const unsigned char c = s[i];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t min;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) len = 2, min = 0x80, cp = c & 0x1F;
  else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800, cp = c & 0x0F;
  else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000, cp = c & 0x07;
  else return 0;
  if (i + len > n) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((s[i + k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i + k] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

bool valid_utf8(std::string_view sv, size_t* bad_offset) {
  const auto* s = reinterpret_cast<const unsigned char*>(sv.data());
  const size_t n = sv.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] < 0x80) {  // fast path for the ASCII that headers mostly are
      ++i;
      continue;
    }
    const size_t len = utf8_seq_len(s, n, i);
    if (len == 0) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

static void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---------------------------------------------------------------------------
// Parser: recursive descent; recursion depth is bounded by opts.max_depth.

namespace {

class Parser {
 public:
  Parser(std::string_view in, const ParseOptions& opts)
      : s_(reinterpret_cast<const unsigned char*>(in.data())), n_(in.size()), opts_(opts) {}

  Value run() {
    skip_ws();
    Value v = value(0);
    skip_ws();
    if (i_ != n_) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) { throw ParseError(msg, i_); }
  [[noreturn]] void fail_at(const std::string& msg, size_t at) { throw ParseError(msg, at); }

  void skip_ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  std::string describe_here() const {
    if (i_ >= n_) return "end of input";
    const unsigned char c = s_[i_];
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    char buf[16];
    std::snprintf(buf, sizeof buf, "byte 0x%02x", c);
    return buf;
  }

  Value value(int depth) {
    if (i_ >= n_) fail("unexpected end of input, expected a value");
    Value v;
    v.offset = i_;
    switch (s_[i_]) {
      case '{': object(v, depth + 1); break;
      case '[': array(v, depth + 1); break;
      case '"':
        v.type = Type::kString;
        string(v.text);
        break;
      case 't':
        literal("true");
        v.type = Type::kBool;
        v.boolean = true;
        break;
      case 'f':
        literal("false");
        v.type = Type::kBool;
        break;
      case 'n':
        literal("null");
        break;
      default:
        if (s_[i_] == '-' || (s_[i_] >= '0' && s_[i_] <= '9')) {
          v.type = Type::kNumber;
          number(v.text);
        } else {
          fail("expected a value, found " + describe_here());
        }
    }
    return v;
  }

  void literal(const char* word) {
    const size_t len = std::strlen(word);
    if (n_ - i_ < len || std::memcmp(s_ + i_, word, len) != 0) fail("invalid literal, expected '" + std::string(word) + "'");
    i_ += len;
  }

  void enter(int depth) {
    if (depth > opts_.max_depth)
      fail("nesting deeper than " + std::to_string(opts_.max_depth) + " levels");
  }

  void array(Value& v, int depth) {
    enter(depth);
    v.type = Type::kArray;
    ++i_;  // '['
    skip_ws();
    if (i_ < n_ && s_[i_] == ']') {
      ++i_;
      return;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(value(depth));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < n_ && s_[i_] == ']') {
        ++i_;
        return;
      }
      fail("expected ',' or ']' in array, found " + describe_here());
    }
  }

  void object(Value& v, int depth) {
    enter(depth);
    v.type = Type::kObject;
    ++i_;  // '{'
    skip_ws();
    if (i_ < n_ && s_[i_] == '}') {
      ++i_;
      return;
    }
    std::vector<size_t> key_offsets;
    for (;;) {
      skip_ws();
      if (i_ >= n_ || s_[i_] != '"') fail("expected a string key in object, found " + describe_here());
      key_offsets.push_back(i_);
      std::string key;
      string(key);
      skip_ws();
      if (i_ >= n_ || s_[i_] != ':') fail("expected ':' after object key, found " + describe_here());
      ++i_;
      skip_ws();
      Value member = value(depth);
      v.members.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < n_ && s_[i_] == '}') {
        ++i_;
        break;
      }
      fail("expected ',' or '}' in object, found " + describe_here());
    }
    if (!opts_.allow_duplicate_keys) check_duplicates(v, key_offsets, depth);
  }

  // Sorting indices keeps this O(n log n) for headers with many thousand tensors.
  void check_duplicates(const Value& v, const std::vector<size_t>& key_offsets, int depth) {
    const size_t n = v.members.size();
    if (n < 2) return;
    std::vector<size_t> idx(n);
    for (size_t k = 0; k < n; ++k) idx[k] = k;
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      const int c = v.members[a].first.compare(v.members[b].first);
      return c != 0 ? c < 0 : a < b;
    });
    for (size_t k = 1; k < n; ++k) {
      if (v.members[idx[k]].first == v.members[idx[k - 1]].first) {
        const size_t second = std::max(idx[k], idx[k - 1]);
        ParseError e("duplicate key " + quote_for_message(v.members[second].first) + " in object", key_offsets[second]);
        e.is_duplicate_key = true;
        e.duplicate_key = v.members[second].first;
        e.depth = depth;
        throw e;
      }
    }
  }

  uint32_t hex4() {
    if (n_ - i_ < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const unsigned char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail_at("invalid hex digit in \\u escape", i_ - 1);
    }
    return v;
  }

  void string(std::string& out) {
    const size_t open = i_;
    ++i_;  // opening quote
    for (;;) {
      // Copy the run of plain bytes in one go.
      const size_t run = i_;
      while (i_ < n_ && s_[i_] != '"' && s_[i_] != '\\' && s_[i_] >= 0x20) {
        if (s_[i_] < 0x80) {
          ++i_;
        } else {
          const size_t len = utf8_seq_len(s_, n_, i_);
          if (len == 0) fail("invalid UTF-8 in string");
          i_ += len;
        }
      }
      out.append(reinterpret_cast<const char*>(s_ + run), i_ - run);
      if (i_ >= n_) fail_at("unterminated string", open);
      const unsigned char c = s_[i_];
      if (c == '"') {
        ++i_;
        return;
      }
      if (c < 0x20) fail("control character (\\u0000-\\u001F) in string; it must be escaped");
      // Backslash escape.
      ++i_;
      if (i_ >= n_) fail("unterminated escape in string");
      const unsigned char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const size_t esc = i_ - 2;
          uint32_t cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at("lone trailing surrogate in \\u escape", esc);
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // A leading surrogate must be followed by an escaped trailing one.
            if (n_ - i_ < 2 || s_[i_] != '\\' || s_[i_ + 1] != 'u') fail_at("lone leading surrogate in \\u escape", esc);
            i_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail_at("lone leading surrogate in \\u escape", esc);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          i_--;
          fail("invalid escape in string");
      }
    }
  }

  void number(std::string& out) {
    const size_t start = i_;
    auto digits = [&] {
      const size_t d = i_;
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ - d;
    };
    if (s_[i_] == '-') ++i_;
    if (i_ >= n_) fail("invalid number");
    if (s_[i_] == '0') {
      ++i_;
      if (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') fail("invalid number: leading zero");
    } else if (digits() == 0) {
      fail("invalid number");
    }
    if (i_ < n_ && s_[i_] == '.') {
      ++i_;
      if (digits() == 0) fail("invalid number: expected a digit after '.'");
    }
    if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (digits() == 0) fail("invalid number: expected a digit in the exponent");
    }
    out.assign(reinterpret_cast<const char*>(s_ + start), i_ - start);
  }

  const unsigned char* s_;
  size_t n_;
  size_t i_ = 0;
  const ParseOptions& opts_;
};

}  // namespace

Value parse(std::string_view input, const ParseOptions& opts) { return Parser(input, opts).run(); }

// ---------------------------------------------------------------------------
// Writing

void append_quoted(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const char* esc = nullptr;
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
      default:
        if (c >= 0x20) continue;
    }
    out.append(s.data() + run, i - run);
    run = i + 1;
    if (esc) {
      out += esc;
    } else {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

std::string quote_for_message(std::string_view s, size_t max_bytes) {
  bool cut = false;
  if (s.size() > max_bytes) {
    size_t end = max_bytes;
    // Back up to a UTF-8 lead byte so the message stays valid UTF-8.
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
    s = s.substr(0, end);
    cut = true;
  }
  std::string out;
  append_quoted(out, s);
  if (cut) out.insert(out.size() - 1, "...");
  return out;
}

}  // namespace rlhf::json
