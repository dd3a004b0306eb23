// WordPiece tokenizer and official text cleaning (see xvlm_edge/tokenizer.hpp).
//
// Every step follows the Rust source of `tokenizers` 0.23 (normalizers/bert.rs, pre_tokenizers/bert.rs,
// models/wordpiece/mod.rs, tokenizer/added_vocabulary.rs) and CPython's unicodeobject.c / _sre for the text
// cleaning. Input is validated as UTF-8 once, up front; everything after works on valid code points, so a
// table lookup never sees a value above U+10FFFF or a surrogate.
#include "xvlm_edge/tokenizer.hpp"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

namespace xvlm_edge {
namespace {

#include "unicode_tables.inc"

constexpr std::array<std::string_view, 5> kSpecialTokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
constexpr std::string_view kContinuation = "##";

// transformers 4.12 clean_up_tokenization, applied in this order (xvlm_edge/tokenizer.py _CLEANUPS).
constexpr std::array<std::pair<std::string_view, std::string_view>, 10> kCleanups = {{
    {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
}};

std::uint16_t flags(char32_t cp) {
  const std::size_t block = kBlockIndex[cp >> kBlockShift];
  return kFlags[(block << kBlockShift) | (cp & ((char32_t{1} << kBlockShift) - 1))];
}

template <class T, std::size_t N>
const T* find_cp(const T (&table)[N], char32_t cp) {
  const T* it = std::lower_bound(std::begin(table), std::end(table), cp,
                                 [](const T& entry, char32_t c) { return entry.cp < c; });
  return it != std::end(table) && it->cp == cp ? it : nullptr;
}

std::uint8_t combining_class(char32_t cp) {
  if (!(flags(cp) & kCombining)) return 0;
  const CombiningClass* e = find_cp(kCombiningClass, cp);
  return e ? e->ccc : 0;
}

// BERT's "Chinese character" ranges (tokenizers normalizers/bert.rs is_chinese_char): the CJK Unified
// Ideographs blocks, not Hangul, Hiragana or Katakana.
bool is_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// ---- UTF-8 ------------------------------------------------------------------------------------------------

// Length of the well-formed UTF-8 sequence starting at s[i] (RFC 3629, Unicode table 3-7: no overlong forms,
// no surrogates, nothing above U+10FFFF), or 0 if there is none.
std::size_t sequence_length(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  const auto b1 = static_cast<unsigned char>(s[i + 1]);
  if (b1 < lo || b1 > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// Byte offset of the first ill-formed sequence, or npos.
std::size_t invalid_utf8_offset(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

template <class Error>
void require_utf8(std::string_view s, const std::string& what) {
  const std::size_t bad = invalid_utf8_offset(s);
  if (bad == std::string_view::npos) return;
  static constexpr char kHex[] = "0123456789ABCDEF";
  const auto b = static_cast<unsigned char>(s[bad]);
  throw Error(what + " is not valid UTF-8: byte 0x" + kHex[b >> 4] + kHex[b & 15] + " at offset " +
              std::to_string(bad) + " does not start a well-formed sequence");
}

// Decodes the code point at s[i] of valid UTF-8 and advances i.
char32_t next_cp(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const std::size_t n = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  char32_t cp = b0 & (0x7F >> n);
  for (std::size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) out.push_back(next_cp(s, i));
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) append_utf8(out, cp);
  return out;
}

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The first `max_chars` characters of valid UTF-8, control characters as \xNN: safe to put in a message.
std::string quote(std::string_view s, std::size_t max_chars = 40) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  std::size_t i = 0, n = 0;
  for (; i < s.size() && n < max_chars; ++n) {
    const std::size_t start = i;
    const char32_t cp = next_cp(s, i);
    if (cp < 0x20 || cp == 0x7F) {
      out += "\\x";
      out += kHex[cp >> 4];
      out += kHex[cp & 15];
    } else {
      out.append(s.substr(start, i - start));
    }
  }
  return out + (i < s.size() ? "...'" : "'");
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  if (pos == 0) return;  // no match
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// ---- normalisation ----------------------------------------------------------------------------------------

// Canonical decomposition of one code point (Unicode 9.0 data; Hangul syllables algorithmically, UAX #15).
void append_nfd(std::u32string& out, char32_t cp) {
  constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr char32_t kVCount = 21, kTCount = 28, kSCount = 19 * kVCount * kTCount;
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / (kVCount * kTCount));
    out.push_back(kVBase + (s % (kVCount * kTCount)) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Mapping* m = (flags(cp) & kDecomposes) ? find_cp(kDecomposition, cp) : nullptr;
  if (!m) {
    out.push_back(cp);
    return;
  }
  out.append(kDecompositionPool + m->offset, m->length);
}

// NFD: decompose, then order each run of combining marks by combining class (stable: equal classes keep
// their order). std::stable_sort keeps a 10k-mark run O(n log n).
std::u32string nfd(const std::u32string& in) {
  std::u32string out;
  out.reserve(in.size() + in.size() / 4);
  for (char32_t cp : in) append_nfd(out, cp);
  for (std::size_t i = 0; i < out.size();) {
    if (combining_class(out[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    while (j < out.size() && combining_class(out[j]) != 0) ++j;
    if (j - i > 1) {
      std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(i), out.begin() + static_cast<std::ptrdiff_t>(j),
                       [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    }
    i = j;
  }
  return out;
}

// Full lower-case mapping of one code point, without context (Rust's char::to_lowercase).
void append_lower(std::u32string& out, char32_t cp) {
  const Mapping* m = (flags(cp) & kHasLower) ? find_cp(kLower, cp) : nullptr;
  if (m) {
    out.append(kLowerPool + m->offset, m->length);
  } else {
    out.push_back(cp);
  }
}

// BertNormalizer(clean_text, handle_chinese_chars, strip_accents, lowercase), in the library's order.
std::u32string bert_normalize(std::string_view segment) {
  std::u32string cleaned;
  cleaned.reserve(segment.size());
  for (std::size_t i = 0; i < segment.size();) {
    const char32_t cp = next_cp(segment, i);
    const std::uint16_t f = flags(cp);
    if (f & kTkRemoved) continue;
    if (f & kWhiteSpace) {
      cleaned.push_back(U' ');
    } else if (is_cjk(cp)) {
      cleaned.push_back(U' ');
      cleaned.push_back(cp);
      cleaned.push_back(U' ');
    } else {
      cleaned.push_back(cp);
    }
  }
  // Pure ASCII needs neither NFD nor the mark filter: only the lower-casing below.
  const bool ascii = std::all_of(cleaned.begin(), cleaned.end(), [](char32_t c) { return c < 0x80; });
  std::u32string decomposed = ascii ? std::move(cleaned) : nfd(cleaned);
  std::u32string out;
  out.reserve(decomposed.size());
  for (char32_t cp : decomposed) {
    if (flags(cp) & kTkNonspacingMark) continue;
    append_lower(out, cp);
  }
  return out;
}

// ---- CPython str.lower() and the cleaning helpers -----------------------------------------------------------

// CPython's handle_capital_sigma: final if a cased letter precedes (case-ignorable ones skipped) and none
// follows.
char32_t python_sigma(const std::u32string& s, std::size_t i) {
  std::size_t j = i;
  while (j > 0 && (flags(s[j - 1]) & kCaseIgnorable)) --j;
  bool final_sigma = j > 0 && (flags(s[j - 1]) & kCased);
  if (final_sigma) {
    std::size_t k = i + 1;
    while (k < s.size() && (flags(s[k]) & kCaseIgnorable)) ++k;
    final_sigma = k == s.size() || !(flags(s[k]) & kCased);
  }
  return final_sigma ? 0x3C2 : 0x3C3;
}

std::u32string python_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 0x3A3) {
      out.push_back(python_sigma(s, i));
    } else {
      append_lower(out, s[i]);
    }
  }
  return out;
}

bool python_isspace(char32_t cp) { return flags(cp) & kPySpace; }

// text.py _clean: lower-case, delete the official punctuation set, '-' and '/' become spaces.
std::u32string official_clean(std::string_view text) {
  require_utf8<TextError>(text, "text");
  std::u32string lowered = python_lower(decode_utf8(text));
  std::u32string out;
  out.reserve(lowered.size());
  for (char32_t cp : lowered) {
    if (cp < 0x80 && std::u32string_view(U",.'!?\"()*#:;~").find(cp) != std::u32string_view::npos) continue;
    out.push_back(cp == U'-' || cp == U'/' ? U' ' : cp);
  }
  return out;
}

// text.py _first_words: split on single spaces; more than max_words words keeps words[:max_words].
std::u32string first_words(const std::u32string& text, int max_words) {
  std::vector<std::size_t> spaces;  // positions of the separating spaces
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == U' ') spaces.push_back(i);
  }
  const auto n_words = static_cast<long long>(spaces.size()) + 1;
  if (n_words <= max_words) return text;
  const long long keep = max_words >= 0 ? max_words : std::max(0LL, n_words + max_words);
  if (keep == 0) return {};
  return text.substr(0, spaces[static_cast<std::size_t>(keep - 1)]);  // keep < n_words: that space exists
}

}  // namespace

// ---- Tokenizer ----------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::vector<std::string> vocab, const std::string& source) : tokens_(std::move(vocab)) {
  if (tokens_.empty()) {
    throw VocabError("vocabulary " + source + " is empty; pass a WordPiece vocab.txt, one token a line");
  }
  ids_.reserve(tokens_.size());
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    require_utf8<VocabError>(tokens_[i], "vocabulary " + source + " token " + std::to_string(i));
    if (!ids_.emplace(tokens_[i], static_cast<std::int64_t>(i)).second) {
      throw VocabError("vocabulary " + source + " lists the token " + quote(tokens_[i]) + " twice (ids " +
                       std::to_string(ids_[tokens_[i]]) + " and " + std::to_string(i) + "); ids would be ambiguous");
    }
    max_token_bytes_ = std::max(max_token_bytes_, tokens_[i].size());
  }
  std::string missing;
  std::array<std::int64_t*, 5> targets = {&pad_id_, &unk_id_, &cls_id_, &sep_id_, &mask_id_};
  for (std::size_t k = 0; k < kSpecialTokens.size(); ++k) {
    const auto it = ids_.find(std::string(kSpecialTokens[k]));
    if (it == ids_.end()) {
      missing += (missing.empty() ? "" : ", ") + std::string(kSpecialTokens[k]);
    } else {
      *targets[k] = it->second;
    }
  }
  if (!missing.empty()) throw VocabError("vocabulary " + source + " lacks the special tokens " + missing);
}

Tokenizer Tokenizer::from_vocab_text(std::string_view text, const std::string& source) {
  require_utf8<VocabError>(text, "vocabulary " + source);
  std::vector<std::string> vocab;
  std::string line;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n' || c == '\r') {
      vocab.push_back(std::move(line));
      line.clear();
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      line.push_back(c);
    }
  }
  if (!line.empty()) vocab.push_back(std::move(line));  // no final newline
  return Tokenizer(std::move(vocab), source);
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::error_code ec;
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  if (in && !std::filesystem::is_directory(path, ec)) buffer << in.rdbuf();
  if (!in || in.bad() || std::filesystem::is_directory(path, ec)) {
    throw VocabError("cannot read vocabulary " + path + "; pass an existing UTF-8 vocab.txt");
  }
  return from_vocab_text(buffer.str(), path);
}

std::optional<std::int64_t> Tokenizer::token_to_id(std::string_view token) const {
  const auto it = ids_.find(std::string(token));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::is_special(std::int64_t id) const noexcept {
  return id == pad_id_ || id == unk_id_ || id == cls_id_ || id == sep_id_ || id == mask_id_;
}

// WordPiece over one pre-tokenised word: the longest vocabulary entry from each position ("##" after the
// first); if some position has none, the whole word is [UNK].
void Tokenizer::append_word(std::string_view word, std::size_t n_chars, std::vector<std::int64_t>& out) const {
  if (n_chars > kMaxInputCharsPerWord) {
    out.push_back(unk_id_);
    return;
  }
  const std::size_t mark = out.size();
  std::string candidate;
  for (std::size_t start = 0; start < word.size();) {
    const std::size_t prefix = start > 0 ? kContinuation.size() : 0;
    std::size_t end = word.size();
    if (prefix + (end - start) > max_token_bytes_) {  // skip candidates longer than every token
      end = max_token_bytes_ > prefix ? start + (max_token_bytes_ - prefix) : start;
      while (end > start && is_continuation_byte(word[end])) --end;
    }
    bool found = false;
    while (end > start) {
      candidate.assign(start > 0 ? kContinuation : std::string_view());
      candidate.append(word.substr(start, end - start));
      const auto it = ids_.find(candidate);
      if (it != ids_.end()) {
        out.push_back(it->second);
        found = true;
        break;
      }
      do --end;
      while (end > start && is_continuation_byte(word[end]));
    }
    if (!found) {
      out.resize(mark);
      out.push_back(unk_id_);
      return;
    }
    start = end;
  }
}

// One segment between special tokens: BertNormalizer, then BertPreTokenizer (white space removed,
// punctuation isolated), then WordPiece per word.
void Tokenizer::append_segment(std::string_view segment, std::vector<std::int64_t>& out) const {
  if (segment.empty()) return;
  const std::u32string normalized = bert_normalize(segment);
  std::string word;
  std::size_t n_chars = 0;
  auto flush = [&] {
    if (n_chars) append_word(word, n_chars, out);
    word.clear();
    n_chars = 0;
  };
  for (char32_t cp : normalized) {
    const std::uint16_t f = flags(cp);
    if (f & kWhiteSpace) {
      flush();
    } else if (f & kTkPunctuation) {
      flush();
      append_utf8(word, cp);
      n_chars = 1;
      flush();
    } else {
      append_utf8(word, cp);
      ++n_chars;
    }
  }
  flush();
}

std::vector<std::int64_t> Tokenizer::piece_ids(std::string_view text) const {
  require_utf8<TextError>(text, "text");
  std::vector<std::int64_t> out;
  // The specials are matched in the raw text, leftmost first (none is a prefix of another).
  std::size_t segment_start = 0;
  for (std::size_t i = text.find('['); i != std::string_view::npos; i = text.find('[', i)) {
    std::size_t k = 0;
    while (k < kSpecialTokens.size() && text.compare(i, kSpecialTokens[k].size(), kSpecialTokens[k]) != 0) ++k;
    if (k == kSpecialTokens.size()) {
      ++i;
      continue;
    }
    append_segment(text.substr(segment_start, i - segment_start), out);
    // kSpecialTokens order: [PAD] [UNK] [CLS] [SEP] [MASK]
    out.push_back(std::array<std::int64_t, 5>{pad_id_, unk_id_, cls_id_, sep_id_, mask_id_}[k]);
    i += kSpecialTokens[k].size();
    segment_start = i;
  }
  append_segment(text.substr(segment_start), out);
  return out;
}

std::vector<std::string> Tokenizer::tokenize(std::string_view text) const {
  std::vector<std::string> pieces;
  for (std::int64_t id : piece_ids(text)) pieces.push_back(tokens_[static_cast<std::size_t>(id)]);
  return pieces;
}

std::vector<std::int64_t> Tokenizer::encode(std::string_view text, std::optional<int> max_length, bool add_sep) const {
  const int n_special = add_sep ? 2 : 1;
  if (max_length && *max_length <= n_special) {
    throw InputError("max_length=" + std::to_string(*max_length) + " leaves no room for text after " +
                     std::to_string(n_special) + " special tokens");
  }
  std::vector<std::int64_t> pieces = piece_ids(text);
  if (pieces.empty()) {
    throw TextError("text " + quote(text) + " is empty or has no tokens after normalisation; pass some words");
  }
  if (max_length && pieces.size() > static_cast<std::size_t>(*max_length - n_special)) {
    pieces.resize(static_cast<std::size_t>(*max_length - n_special));
  }
  std::vector<std::int64_t> ids;
  ids.reserve(pieces.size() + 2);
  ids.push_back(cls_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (add_sep) ids.push_back(sep_id_);
  return ids;
}

std::vector<std::int64_t> Tokenizer::caption_prompt_ids(std::string_view prompt) const { return encode(prompt); }

std::string Tokenizer::decode(const std::int64_t* ids, std::size_t count, bool skip_special_tokens) const {
  std::string text;
  bool first = true;
  for (std::size_t i = 0; i < count; ++i) {
    const std::int64_t id = ids[i];
    if (id < 0 || static_cast<std::uint64_t>(id) >= tokens_.size()) {
      throw TextError("token id " + std::to_string(id) + " is outside the vocabulary of " +
                      std::to_string(tokens_.size()) + " tokens");
    }
    if (skip_special_tokens && is_special(id)) continue;
    if (!first) text.push_back(' ');
    text.append(tokens_[static_cast<std::size_t>(id)]);
    first = false;
  }
  replace_all(text, " ##", "");
  // str.strip(): Unicode white space (str.isspace) at both ends.
  std::size_t begin = 0, end = text.size();
  for (std::size_t i = 0; i < end;) {
    if (!python_isspace(next_cp(text, i))) break;
    begin = i;
  }
  while (end > begin) {
    std::size_t start = end - 1;
    while (start > begin && is_continuation_byte(text[start])) --start;
    std::size_t i = start;
    if (!python_isspace(next_cp(text, i))) break;
    end = start;
  }
  text = text.substr(begin, end - begin);
  for (const auto& [from, to] : kCleanups) replace_all(text, from, to);
  return text;
}

// ---- text cleaning ----------------------------------------------------------------------------------------

std::string pre_caption(std::string_view text, int max_words) {
  std::u32string caption = official_clean(text);
  // .replace("<person>", "person")
  constexpr std::u32string_view kPerson = U"<person>";
  std::u32string replaced;
  for (std::size_t i = 0; i < caption.size();) {
    if (caption.compare(i, kPerson.size(), kPerson) == 0) {
      replaced.append(U"person");
      i += kPerson.size();
    } else {
      replaced.push_back(caption[i++]);
    }
  }
  // re.sub(r"\s{2,}", " ", ...): a run of two or more white-space characters becomes one space.
  std::u32string collapsed;
  for (std::size_t i = 0; i < replaced.size();) {
    std::size_t j = i;
    while (j < replaced.size() && python_isspace(replaced[j])) ++j;
    if (j - i >= 2) {
      collapsed.push_back(U' ');
      i = j;
    } else {
      collapsed.push_back(replaced[i++]);
    }
  }
  // .rstrip("\n").strip(" ")
  std::size_t end = collapsed.size();
  while (end > 0 && collapsed[end - 1] == U'\n') --end;
  while (end > 0 && collapsed[end - 1] == U' ') --end;
  std::size_t begin = 0;
  while (begin < end && collapsed[begin] == U' ') ++begin;
  const std::u32string result = first_words(collapsed.substr(begin, end - begin), max_words);
  if (result.empty()) {
    throw TextError("text " + quote(text) + " is empty after caption cleaning; pass a non-empty caption");
  }
  return encode_utf8(result);
}

std::string pre_question(std::string_view text, int max_words) {
  std::u32string question = official_clean(text);
  while (!question.empty() && question.back() == U' ') question.pop_back();
  return encode_utf8(first_words(question, max_words));
}

const char* unicode_tables_version() noexcept { return kUcdVersion; }

}  // namespace xvlm_edge
