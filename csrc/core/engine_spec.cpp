// TensorRT-free half of the engine layer (include/xvlm_edge/engine.hpp): dtypes, the manifest's JSON,
// profile selection and shape validation. Compiled into every build and unit-tested by
// csrc/tests/test_engine_spec.cpp and tests/test_engine.py; csrc/tensorrt/engine.cpp calls it before every
// TensorRT call so that TensorRT never sees a shape or a name that could fail there.
#include <algorithm>
#include <array>
#include <cctype>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "xvlm_edge/engine.hpp"

namespace xvlm_edge {

namespace {

constexpr std::array<std::pair<DataType, std::string_view>, 8> kDtypeNames{{
    {DataType::kFloat32, "float32"},
    {DataType::kFloat16, "float16"},
    {DataType::kBFloat16, "bfloat16"},
    {DataType::kInt8, "int8"},
    {DataType::kUInt8, "uint8"},
    {DataType::kInt32, "int32"},
    {DataType::kInt64, "int64"},
    {DataType::kBool, "bool"},
}};

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// One input byte for an error message: printable ASCII as itself, anything else as its hex value, so a
// message never carries a fragment of a multi-byte character (Python could not decode what() then).
std::string describe_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7F) return std::string("'") + c + "'";
  static const char* kHex = "0123456789abcdef";
  return std::string("byte 0x") + kHex[u >> 4] + kHex[u & 0xF];
}

// Length of the well-formed UTF-8 sequence starting at s[pos] (RFC 3629: no overlongs, no surrogates, at
// most U+10FFFF), or 0 when there is none.
std::size_t utf8_length(std::string_view s, std::size_t pos) {
  const auto at = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = at(pos);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) n = 2;
  else if (b0 == 0xE0) n = 3, lo = 0xA0;
  else if (b0 == 0xED) n = 3, hi = 0x9F;
  else if (b0 >= 0xE1 && b0 <= 0xEF) n = 3;
  else if (b0 == 0xF0) n = 4, lo = 0x90;
  else if (b0 == 0xF4) n = 4, hi = 0x8F;
  else if (b0 >= 0xF1 && b0 <= 0xF3) n = 4;
  else return 0;
  if (pos + n > s.size() || at(pos + 1) < lo || at(pos + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (at(pos + k) < 0x80 || at(pos + k) > 0xBF) return 0;
  return n;
}

}  // namespace

// ---- dtypes and dims ----------------------------------------------------------------------------------

std::string_view dtype_name(DataType dtype) noexcept {
  for (const auto& [d, name] : kDtypeNames) {
    if (d == dtype) return name;
  }
  return "unknown";
}

DataType parse_dtype(std::string_view name) {
  for (const auto& [d, n] : kDtypeNames) {
    if (n == name) return d;
  }
  std::string known;
  for (const auto& [d, n] : kDtypeNames) known += (known.empty() ? "" : ", ") + std::string(n);
  throw EngineError("unknown dtype " + quoted(name) + "; expected one of " + known);
}

std::size_t dtype_size(DataType dtype) noexcept {
  switch (dtype) {
    case DataType::kFloat32:
    case DataType::kInt32:
      return 4;
    case DataType::kFloat16:
    case DataType::kBFloat16:
      return 2;
    case DataType::kInt64:
      return 8;
    case DataType::kInt8:
    case DataType::kUInt8:
    case DataType::kBool:
      return 1;
  }
  return 0;
}

std::string format_dims(const Dims& dims) {
  std::string out = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return out + (dims.size() == 1 ? ",)" : ")");
}

std::int64_t num_elements(const Dims& dims) {
  std::int64_t n = 1;
  for (const std::int64_t d : dims) {
    if (d < 0) throw EngineError("shape " + format_dims(dims) + " has a negative dimension");
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) {
      throw EngineError("shape " + format_dims(dims) + " has more elements than int64 can count");
    }
    n *= d;
  }
  return n;
}

// ---- spec validation ----------------------------------------------------------------------------------

namespace {

void check_spec_shape(const TensorSpec& t, const char* role) {
  if (t.name.empty()) throw EngineError(std::string("an engine ") + role + " has an empty name");
  if (t.shape.empty() || t.shape.size() > kMaxRank) {
    throw EngineError(std::string(role) + " " + quoted(t.name) + " has rank " + std::to_string(t.shape.size()) +
                      "; engine tensors have rank 1 to " + std::to_string(kMaxRank));
  }
  for (const std::int64_t d : t.shape) {
    if (d < -1) {
      throw EngineError(std::string(role) + " " + quoted(t.name) + " shape " + format_dims(t.shape) +
                        " has a dimension below -1 (-1 marks a dynamic one)");
    }
  }
}

void check_range(const TensorSpec& t, const DimRange& r, std::size_t profile) {
  const std::string where = "profile " + std::to_string(profile) + " input " + quoted(t.name);
  for (const auto* dims : {&r.min, &r.opt, &r.max}) {
    if (dims->size() != t.shape.size()) {
      throw EngineError(where + ": range rank " + std::to_string(dims->size()) + " differs from the input's rank " +
                        std::to_string(t.shape.size()) + " " + format_dims(t.shape));
    }
  }
  for (std::size_t i = 0; i < t.shape.size(); ++i) {
    const std::string dim = where + " dim " + std::to_string(i);
    if (r.min[i] < 0) throw EngineError(dim + ": min " + std::to_string(r.min[i]) + " is negative");
    if (!(r.min[i] <= r.opt[i] && r.opt[i] <= r.max[i])) {
      throw EngineError(dim + ": needs min <= opt <= max, got " + std::to_string(r.min[i]) + ", " +
                        std::to_string(r.opt[i]) + ", " + std::to_string(r.max[i]));
    }
    if (t.shape[i] != -1 && (r.min[i] != t.shape[i] || r.max[i] != t.shape[i])) {
      throw EngineError(dim + " is static (" + std::to_string(t.shape[i]) + ") but the range is [" +
                        std::to_string(r.min[i]) + ", " + std::to_string(r.max[i]) + "]");
    }
  }
}

}  // namespace

void EngineSpec::validate() const {
  std::set<std::string> names;
  for (const auto& [list, role] : {std::pair{&inputs, "input"}, std::pair{&outputs, "output"}}) {
    for (const TensorSpec& t : *list) {
      check_spec_shape(t, role);
      if (!names.insert(t.name).second) {
        throw EngineError("tensor name " + quoted(t.name) +
                          " appears twice among the engine's inputs and outputs (TensorRT binds by name)");
      }
    }
  }
  if (inputs.empty()) throw EngineError("an engine needs at least one input");
  if (outputs.empty()) throw EngineError("an engine needs at least one output");
  const bool dynamic = std::any_of(inputs.begin(), inputs.end(), [](const TensorSpec& t) {
    return std::find(t.shape.begin(), t.shape.end(), -1) != t.shape.end();
  });
  if (dynamic && profiles.empty()) throw EngineError("the engine has dynamic inputs but no optimisation profile");
  for (std::size_t p = 0; p < profiles.size(); ++p) {
    for (const auto& [name, range] : profiles[p].ranges) {
      const TensorSpec* t = find_input(name);
      if (t == nullptr) {
        throw EngineError("profile " + std::to_string(p) + " has a range for " + quoted(name) +
                          ", which is not an input of the engine");
      }
      check_range(*t, range, p);
    }
    for (const TensorSpec& t : inputs) {
      const bool is_dynamic = std::find(t.shape.begin(), t.shape.end(), -1) != t.shape.end();
      if (is_dynamic && profiles[p].ranges.count(t.name) == 0) {
        throw EngineError("profile " + std::to_string(p) + " has no range for the dynamic input " + quoted(t.name) +
                          " " + format_dims(t.shape));
      }
    }
  }
}

const TensorSpec* EngineSpec::find_input(std::string_view name) const noexcept {
  for (const TensorSpec& t : inputs) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorSpec* EngineSpec::find_output(std::string_view name) const noexcept {
  for (const TensorSpec& t : outputs) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// ---- profile selection and concrete-tensor validation -------------------------------------------------

std::size_t select_profile(const std::vector<Profile>& profiles, const std::map<std::string, Dims>& shapes) {
  if (profiles.empty()) throw EngineError("the engine has no optimisation profile to select");
  std::string why;
  for (std::size_t p = 0; p < profiles.size(); ++p) {
    std::string miss;
    for (const auto& [name, range] : profiles[p].ranges) {
      const auto it = shapes.find(name);
      if (it == shapes.end()) {
        miss = "input " + quoted(name) + " is missing";
        break;
      }
      const Dims& shape = it->second;
      if (shape.size() != range.min.size()) {
        miss = "input " + quoted(name) + " has rank " + std::to_string(shape.size()) + ", the profile " +
               std::to_string(range.min.size());
        break;
      }
      for (std::size_t i = 0; i < shape.size() && miss.empty(); ++i) {
        if (shape[i] < range.min[i] || shape[i] > range.max[i]) {
          miss = "input " + quoted(name) + " dim " + std::to_string(i) + " is " + std::to_string(shape[i]) +
                 ", allowed [" + std::to_string(range.min[i]) + ", " + std::to_string(range.max[i]) + "]";
        }
      }
      if (!miss.empty()) break;
    }
    if (miss.empty()) return p;
    why += "; profile " + std::to_string(p) + ": " + miss;
  }
  std::string given;
  for (const auto& [name, shape] : shapes) given += (given.empty() ? "" : ", ") + name + " " + format_dims(shape);
  throw EngineError("no optimisation profile of the engine accepts the input shapes {" + given + "}" + why);
}

void validate_inputs(const EngineSpec& spec, const std::vector<TensorArg>& inputs) {
  std::set<std::string> seen;
  for (const TensorArg& a : inputs) {
    const TensorSpec* t = spec.find_input(a.name);
    if (t == nullptr) {
      std::string known;
      for (const TensorSpec& s : spec.inputs) known += (known.empty() ? "" : ", ") + s.name;
      throw EngineError("unknown input tensor " + quoted(a.name) + "; the engine's inputs are: " + known);
    }
    if (!seen.insert(a.name).second) throw EngineError("input tensor " + quoted(a.name) + " is given twice");
    if (a.dtype != t->dtype) {
      throw EngineError("input " + quoted(a.name) + " has dtype " + std::string(dtype_name(a.dtype)) +
                        ", the engine expects " + std::string(dtype_name(t->dtype)));
    }
    if (a.shape.size() != t->shape.size()) {
      throw EngineError("input " + quoted(a.name) + " has rank " + std::to_string(a.shape.size()) + " " +
                        format_dims(a.shape) + ", the engine expects rank " + std::to_string(t->shape.size()) + " " +
                        format_dims(t->shape));
    }
    for (std::size_t i = 0; i < a.shape.size(); ++i) {
      if (a.shape[i] < 0) {
        throw EngineError("input " + quoted(a.name) + " shape " + format_dims(a.shape) + " has a negative dimension");
      }
      if (t->shape[i] != -1 && a.shape[i] != t->shape[i]) {
        throw EngineError("input " + quoted(a.name) + " dim " + std::to_string(i) + " is " +
                          std::to_string(a.shape[i]) + ", the engine's shape " + format_dims(t->shape) +
                          " fixes it to " + std::to_string(t->shape[i]));
      }
    }
  }
  for (const TensorSpec& t : spec.inputs) {
    if (seen.count(t.name) == 0) {
      throw EngineError("missing input tensor " + quoted(t.name) + " " + format_dims(t.shape) + " " +
                        std::string(dtype_name(t.dtype)));
    }
  }
}

void validate_outputs(const EngineSpec& spec, const std::map<std::string, Dims>& expected,
                      const std::vector<TensorArg>& outputs) {
  std::set<std::string> seen;
  for (const TensorArg& a : outputs) {
    const TensorSpec* t = spec.find_output(a.name);
    if (t == nullptr) throw EngineError("unknown output tensor " + quoted(a.name));
    if (!seen.insert(a.name).second) throw EngineError("output tensor " + quoted(a.name) + " is given twice");
    if (a.dtype != t->dtype) {
      throw EngineError("output " + quoted(a.name) + " has dtype " + std::string(dtype_name(a.dtype)) +
                        ", the engine writes " + std::string(dtype_name(t->dtype)));
    }
    const auto it = expected.find(a.name);
    if (it != expected.end() && it->second != a.shape) {
      throw EngineError("output " + quoted(a.name) + " has shape " + format_dims(a.shape) +
                        ", the engine writes " + format_dims(it->second) + " for these inputs");
    }
  }
  for (const TensorSpec& t : spec.outputs) {
    if (seen.count(t.name) == 0) throw EngineError("missing output tensor " + quoted(t.name));
  }
}

void check_device_pointers(const std::vector<TensorArg>& tensors, std::size_t alignment) {
  for (const TensorArg& a : tensors) {
    if (num_elements(a.shape) == 0) continue;  // TensorRT never dereferences an empty tensor's address
    if (a.data == nullptr) throw EngineError("tensor " + quoted(a.name) + " has a null data pointer");
    const auto address = reinterpret_cast<std::uintptr_t>(a.data);
    if (alignment != 0 && address % alignment != 0) {
      throw EngineError("tensor " + quoted(a.name) + " data pointer is not " + std::to_string(alignment) +
                        "-byte aligned (offset " + std::to_string(address % alignment) +
                        "); TensorRT needs aligned buffers: pass a freshly allocated tensor, not a view into one");
    }
  }
}

// ---- TensorRT versions --------------------------------------------------------------------------------

std::string TensorRTVersion::to_string() const {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

TensorRTVersion parse_tensorrt_version(std::string_view text) {
  std::vector<int> parts;
  std::size_t i = 0;
  while (i <= text.size()) {
    std::size_t j = i;
    while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j == i || j - i > 6 || (j < text.size() && text[j] != '.')) {
      throw EngineError("TensorRT version " + quoted(text) + " is not of the form major.minor[.patch[.build]]");
    }
    parts.push_back(std::stoi(std::string(text.substr(i, j - i))));
    i = j + 1;
  }
  if (parts.size() < 2 || parts.size() > 4) {
    throw EngineError("TensorRT version " + quoted(text) + " is not of the form major.minor[.patch[.build]]");
  }
  return {parts[0], parts[1], parts.size() > 2 ? parts[2] : 0};
}

TensorRTVersion tensorrt_version_from_int(std::int64_t encoded) {
  if (encoded < 10000) {
    throw EngineError("TensorRT version number " + std::to_string(encoded) +
                      " predates TensorRT 10 (xvlm_edge supports TensorRT 10 and 11)");
  }
  return {static_cast<int>(encoded / 10000), static_cast<int>(encoded / 100 % 100), static_cast<int>(encoded % 100)};
}

void check_tensorrt_compatible(const TensorRTVersion& built_with, const TensorRTVersion& runtime) {
  if (built_with.major != runtime.major || built_with.minor != runtime.minor) {
    throw EngineError("the engine was built with TensorRT " + built_with.to_string() +
                      " but this runtime is TensorRT " + runtime.to_string() +
                      "; a serialised engine runs only on the major.minor that built it. Rebuild the engine "
                      "here (xvlm-edge export --target tensorrt) or install TensorRT " +
                      std::to_string(built_with.major) + "." + std::to_string(built_with.minor));
  }
}

// ---- JSON: the subset a manifest needs (RFC 8259 values; numbers must be integers) --------------------

namespace {

constexpr int kMaxDepth = 16;  // a manifest nests 5 deep; more is hostile, and recursion must stay bounded

struct Json {
  enum class Kind { kNull, kBool, kInt, kString, kArray, kObject } kind = Kind::kNull;
  bool boolean = false;
  std::int64_t integer = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;  // file order, duplicate keys refused
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : s_(text) {}

  Json parse_document() {
    Json v = value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw EngineError("engine manifest: invalid JSON at offset " + std::to_string(pos_) + ": " + what);
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool consume(std::string_view word) {
    if (s_.substr(pos_, word.size()) == word) {
      pos_ += word.size();
      return true;
    }
    return false;
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth));
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of input");
    Json v;
    const char c = s_[pos_];
    if (c == '{') {
      v.kind = Json::Kind::kObject;
      ++pos_;
      skip_ws();
      if (consume("}")) return v;
      while (true) {
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
        std::string key = string_literal();
        for (const auto& kv : v.object) {
          if (kv.first == key) fail("duplicate key \"" + key + "\"");
        }
        skip_ws();
        if (!consume(":")) fail("expected ':' after a key");
        v.object.emplace_back(std::move(key), value(depth + 1));
        skip_ws();
        if (consume("}")) return v;
        if (!consume(",")) fail("expected ',' or '}' in an object");
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::kArray;
      ++pos_;
      skip_ws();
      if (consume("]")) return v;
      while (true) {
        v.array.push_back(value(depth + 1));
        skip_ws();
        if (consume("]")) return v;
        if (!consume(",")) fail("expected ',' or ']' in an array");
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::kString;
      v.string = string_literal();
      return v;
    }
    if (consume("true")) {
      v.kind = Json::Kind::kBool;
      v.boolean = true;
      return v;
    }
    if (consume("false")) {
      v.kind = Json::Kind::kBool;
      return v;
    }
    if (consume("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = Json::Kind::kInt;
      v.integer = integer_literal();
      return v;
    }
    fail("unexpected " + describe_byte(c));
  }

  std::int64_t integer_literal() {
    const std::size_t start = pos_;
    const bool negative = consume("-");
    if (pos_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[pos_]))) fail("expected a digit");
    if (s_[pos_] == '0' && pos_ + 1 < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_ + 1]))) {
      fail("leading zeros are not JSON");
    }
    std::int64_t n = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      const int d = s_[pos_] - '0';
      if (n > (std::numeric_limits<std::int64_t>::max() - d) / 10) fail("integer out of int64 range");
      n = n * 10 + d;
      ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == '.' || s_[pos_] == 'e' || s_[pos_] == 'E')) {
      pos_ = start;
      fail("a manifest holds integers only, not fractions or exponents");
    }
    return negative ? -n : n;
  }

  std::string string_literal() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (static_cast<unsigned char>(c) >= 0x80) {  // a manifest's strings are UTF-8, checked here once
        const std::size_t n = utf8_length(s_, pos_ - 1);
        if (n == 0) fail("invalid UTF-8 in a string (" + describe_byte(c) + ")");
        out.append(s_.substr(pos_ - 1, n));
        pos_ += n - 1;
        continue;
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      const char e = s_[pos_++];
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
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned code = 0;
          for (int k = 0; k < 4; ++k) {
            const char h = s_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad hex digit in a \\u escape");
          }
          if (code >= 0xD800 && code <= 0xDFFF) fail("surrogate \\u escapes are not supported in a manifest");
          if (code < 0x80) {
            out += static_cast<char>(code);
          } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          }
          break;
        }
        default: fail("bad escape: backslash then " + describe_byte(e));
      }
    }
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::kNull: return "null";
    case Json::Kind::kBool: return "a boolean";
    case Json::Kind::kInt: return "an integer";
    case Json::Kind::kString: return "a string";
    case Json::Kind::kArray: return "an array";
    case Json::Kind::kObject: return "an object";
  }
  return "?";
}

[[noreturn]] void schema_fail(const std::string& path, const std::string& what) {
  throw EngineError("engine manifest: " + path + ": " + what);
}

const Json& expect(const Json& v, Json::Kind kind, const std::string& path) {
  if (v.kind != kind) schema_fail(path, std::string("expected ") + kind_name(kind) + ", got " + kind_name(v.kind));
  return v;
}

// The object's fields by key; every key must be in `allowed`, every key in `required` present.
std::map<std::string, const Json*> fields(const Json& v, const std::string& path,
                                          std::initializer_list<std::string_view> required,
                                          std::initializer_list<std::string_view> optional = {}) {
  expect(v, Json::Kind::kObject, path);
  std::map<std::string, const Json*> out;
  for (const auto& [key, value] : v.object) {
    const bool known = std::find(required.begin(), required.end(), key) != required.end() ||
                       std::find(optional.begin(), optional.end(), key) != optional.end();
    if (!known) {
      std::string list;
      for (auto k : required) list += (list.empty() ? "" : ", ") + std::string(k);
      for (auto k : optional) list += (list.empty() ? "" : ", ") + std::string(k);
      schema_fail(path, "unknown key \"" + key + "\" (known: " + list + ")");
    }
    out[key] = &value;
  }
  for (auto k : required) {
    if (out.count(std::string(k)) == 0) schema_fail(path, "missing key \"" + std::string(k) + "\"");
  }
  return out;
}

std::string get_string(const Json& v, const std::string& path) { return expect(v, Json::Kind::kString, path).string; }

Dims get_dims(const Json& v, const std::string& path) {
  expect(v, Json::Kind::kArray, path);
  Dims dims;
  for (std::size_t i = 0; i < v.array.size(); ++i) {
    dims.push_back(expect(v.array[i], Json::Kind::kInt, path + "[" + std::to_string(i) + "]").integer);
  }
  return dims;
}

std::vector<TensorSpec> get_tensors(const Json& v, const std::string& path) {
  expect(v, Json::Kind::kArray, path);
  std::vector<TensorSpec> out;
  for (std::size_t i = 0; i < v.array.size(); ++i) {
    const std::string p = path + "[" + std::to_string(i) + "]";
    auto f = fields(v.array[i], p, {"name", "dtype", "shape"});
    TensorSpec t;
    t.name = get_string(*f["name"], p + ".name");
    try {
      t.dtype = parse_dtype(get_string(*f["dtype"], p + ".dtype"));
    } catch (const EngineError& e) {
      schema_fail(p + ".dtype", e.what());
    }
    t.shape = get_dims(*f["shape"], p + ".shape");
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<Profile> get_profiles(const Json& v, const std::string& path) {
  expect(v, Json::Kind::kArray, path);
  std::vector<Profile> out;
  for (std::size_t i = 0; i < v.array.size(); ++i) {
    const std::string p = path + "[" + std::to_string(i) + "]";
    expect(v.array[i], Json::Kind::kObject, p);
    Profile profile;
    for (const auto& [name, range] : v.array[i].object) {
      const std::string rp = p + "." + name;
      auto f = fields(range, rp, {"min", "opt", "max"});
      profile.ranges[name] = DimRange{get_dims(*f["min"], rp + ".min"), get_dims(*f["opt"], rp + ".opt"),
                                      get_dims(*f["max"], rp + ".max")};
    }
    out.push_back(std::move(profile));
  }
  return out;
}

// JSON string literal with the escapes RFC 8259 requires.
std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char* hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string json_dims(const Dims& dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

std::string json_tensors(const std::vector<TensorSpec>& tensors) {
  std::string out = "[";
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = tensors[i];
    out += std::string(i ? ",\n    " : "\n    ") + "{\"name\": " + json_string(t.name) + ", \"dtype\": " +
           json_string(dtype_name(t.dtype)) + ", \"shape\": " + json_dims(t.shape) + "}";
  }
  return out + (tensors.empty() ? "]" : "\n  ]");
}

const std::set<std::string, std::less<>> kPrecisions{"fp32", "fp16", "bf16", "int8"};

}  // namespace

// ---- the manifest -------------------------------------------------------------------------------------

void EngineManifest::validate() const {
  if (schema != kSchema) {
    throw EngineError("engine manifest: schema " + std::to_string(schema) + " is not supported (this xvlm_edge reads " +
                      std::to_string(kSchema) + "); re-export the engine with this version");
  }
  if (graph.empty() || !std::all_of(graph.begin(), graph.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
      })) {
    throw EngineError("engine manifest: graph " + quoted(graph) + " must be a non-empty [a-z0-9_] name");
  }
  if (engine.empty() || engine == "." || engine == ".." || engine.find_first_of("/\\") != std::string::npos) {
    throw EngineError("engine manifest: engine " + quoted(engine) +
                      " must be a plain file name in the manifest's directory");
  }
  if (sha256.size() != 64 || !std::all_of(sha256.begin(), sha256.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      })) {
    throw EngineError("engine manifest: sha256 " + quoted(sha256) + " must be 64 lower-case hex digits");
  }
  try {
    parse_tensorrt_version(tensorrt_version);
    spec.validate();
  } catch (const EngineError& e) {
    throw EngineError(std::string("engine manifest: ") + e.what());
  }
  if (kPrecisions.count(precision) == 0) {
    throw EngineError("engine manifest: precision " + quoted(precision) + " is not one of fp32, fp16, bf16, int8");
  }
}

EngineManifest EngineManifest::parse(std::string_view json) {
  const Json doc = JsonParser(json).parse_document();
  expect(doc, Json::Kind::kObject, "$");
  // The schema first: a newer manifest may have keys this version does not know, and "re-export" is the
  // useful message for it, not "unknown key".
  for (const auto& [key, value] : doc.object) {
    if (key == "schema" && expect(value, Json::Kind::kInt, "$.schema").integer != kSchema) {
      throw EngineError("engine manifest: schema " + std::to_string(value.integer) +
                        " is not supported (this xvlm_edge reads " + std::to_string(kSchema) +
                        "); re-export the engine with this version");
    }
  }
  auto f = fields(doc, "$",
                  {"schema", "graph", "engine", "sha256", "tensorrt_version", "precision", "inputs", "outputs",
                   "profiles"});
  EngineManifest m;
  m.graph = get_string(*f["graph"], "$.graph");
  m.engine = get_string(*f["engine"], "$.engine");
  m.sha256 = get_string(*f["sha256"], "$.sha256");
  m.tensorrt_version = get_string(*f["tensorrt_version"], "$.tensorrt_version");
  m.precision = get_string(*f["precision"], "$.precision");
  m.spec.inputs = get_tensors(*f["inputs"], "$.inputs");
  m.spec.outputs = get_tensors(*f["outputs"], "$.outputs");
  m.spec.profiles = get_profiles(*f["profiles"], "$.profiles");
  m.validate();
  return m;
}

EngineManifest EngineManifest::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError("engine manifest " + path + " cannot be opened");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0 || size > (std::streamoff{1} << 24)) {
    throw EngineError("engine manifest " + path + " is not a small JSON file (" + std::to_string(size) + " bytes)");
  }
  std::string text(static_cast<std::size_t>(size), '\0');
  in.seekg(0);
  in.read(text.data(), size);
  if (!in) throw EngineError("engine manifest " + path + " could not be read");
  try {
    return parse(text);
  } catch (const EngineError& e) {
    throw EngineError(path + ": " + e.what());
  }
}

std::string EngineManifest::to_json() const {
  std::string out = "{\n";
  out += "  \"schema\": " + std::to_string(schema) + ",\n";
  out += "  \"graph\": " + json_string(graph) + ",\n";
  out += "  \"engine\": " + json_string(engine) + ",\n";
  out += "  \"sha256\": " + json_string(sha256) + ",\n";
  out += "  \"tensorrt_version\": " + json_string(tensorrt_version) + ",\n";
  out += "  \"precision\": " + json_string(precision) + ",\n";
  out += "  \"inputs\": " + json_tensors(spec.inputs) + ",\n";
  out += "  \"outputs\": " + json_tensors(spec.outputs) + ",\n";
  out += "  \"profiles\": [";
  for (std::size_t p = 0; p < spec.profiles.size(); ++p) {
    out += std::string(p ? ",\n    {" : "\n    {");
    bool first = true;
    for (const auto& [name, r] : spec.profiles[p].ranges) {
      out += std::string(first ? "" : ", ") + json_string(name) + ": {\"min\": " + json_dims(r.min) +
             ", \"opt\": " + json_dims(r.opt) + ", \"max\": " + json_dims(r.max) + "}";
      first = false;
    }
    out += "}";
  }
  out += spec.profiles.empty() ? "]\n" : "\n  ]\n";
  return out + "}\n";
}

}  // namespace xvlm_edge
