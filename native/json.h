// A small, strict JSON (RFC 8259) parser and the string escaper the
// safetensors writer needs. Strict on purpose: a .safetensors header comes from
// an untrusted file, so the parser rejects anything serde_json (the reference
// implementation's parser) would reject, plus duplicate object keys, and it
// bounds nesting so a "[[[[..." header cannot exhaust the stack.
//
// Numbers keep their literal text; callers ask for the interpretation they
// need (as_u64 for shapes and offsets), so "2.0", "1e2", "-3" and 2^64 are
// each rejected with their own reason instead of being silently rounded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rlhf::json {

enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

const char* type_name(Type t);  // "null", "a boolean", "a number", ...

struct Value {
  Type type = Type::kNull;
  bool boolean = false;
  std::string text;  // kString: the decoded UTF-8 string; kNumber: the literal as written
  std::vector<Value> items;                            // kArray
  std::vector<std::pair<std::string, Value>> members;  // kObject, in document order
  size_t offset = 0;                                   // byte offset of the value in the input

  bool is(Type t) const { return type == t; }
  // Member lookup (objects only; nullptr if absent). Linear: objects here are small.
  const Value* find(std::string_view key) const;

  // Number interpretation. A JSON integer literal has no fraction and no
  // exponent ("2.0" and "2e0" are floats, as serde_json treats them).
  bool is_integer_literal() const;
  // The value as u64 when it is a non-negative integer literal that fits;
  // otherwise false and `why` says which of those it is not.
  bool as_u64(uint64_t* out, std::string* why = nullptr) const;
};

// Thrown by parse(). `offset` is the byte offset in the input where the
// problem was found; `duplicate_key` is set (and `depth` is the object's
// nesting depth, 1 = top level) when the error is a repeated object key.
class ParseError : public std::runtime_error {
 public:
  ParseError(const std::string& msg, size_t offset) : std::runtime_error(msg), offset(offset) {}
  size_t offset;
  std::string duplicate_key;
  bool is_duplicate_key = false;
  int depth = 0;
};

struct ParseOptions {
  // Containers nested deeper than this fail. 127 matches serde_json, whose
  // recursion limit of 128 rejects the 128th nested array/object.
  int max_depth = 127;
  bool allow_duplicate_keys = false;
};

// Parses exactly one JSON value surrounded by optional whitespace; anything
// else after it is an error ("trailing characters").
Value parse(std::string_view input, const ParseOptions& opts = {});

// UTF-8 validation (RFC 3629: no overlongs, no surrogates, max U+10FFFF).
// Returns true if valid; otherwise false and *bad_offset = first bad byte.
bool valid_utf8(std::string_view s, size_t* bad_offset = nullptr);

// Appends `s` as a JSON string literal, escaped exactly like serde_json's
// compact serializer: \" \\ \b \f \n \r \t, other bytes < 0x20 as \u00xx
// (lowercase hex), everything else (including '/', DEL and non-ASCII UTF-8)
// verbatim. The safetensors writer relies on this to be byte-identical to the
// reference writer.
void append_quoted(std::string& out, std::string_view s);

// For error messages: the string JSON-quoted (so it stays on one line) and cut
// to at most `max_bytes` of content at a UTF-8 boundary, with "..." if cut.
std::string quote_for_message(std::string_view s, size_t max_bytes = 120);

}  // namespace rlhf::json
