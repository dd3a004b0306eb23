// WordPiece tokenizer with the official X-VLM conventions, and the official text cleaning.
//
// Tokenizer is id-for-id equal to xvlm_edge.tokenizer.Tokenizer, i.e. to the Rust `tokenizers` pipeline that
// class configures (bert-base-uncased's BertTokenizer conventions):
//   1. the special tokens [PAD] [UNK] [CLS] [SEP] [MASK] are split out of the raw text (case-sensitive, no
//      normalisation: "red[SEP]" -> red, [SEP]); the rest is processed segment by segment;
//   2. BertNormalizer: drop NUL, U+FFFD and control / format / private-use characters (\t \n \r excepted),
//      map white space to ' ', put spaces around CJK ideographs, NFD, drop non-spacing marks, lower-case;
//   3. BertPreTokenizer: split on white space, isolate each punctuation character;
//   4. WordPiece: greedy longest match, continuations prefixed "##"; a word of more than 100 characters, or
//      one the vocabulary cannot cover, is a single [UNK].
// The Unicode data (csrc/core/unicode_tables.inc) is generated from the Unicode Character Database by
// csrc/tools/gen_unicode_tables.py, at the Unicode version each step of `tokenizers` uses (see there).
//
// pre_caption / pre_question are xvlm_edge/text.py (the official dataset/utils.py) over UTF-8: CPython's
// str.lower() (full mapping, final sigma) and re's \s (str.isspace).
//
// Text crosses as UTF-8. Nothing here aborts: invalid UTF-8 (overlong forms and surrogates included), a text
// with no tokens or a bad id throws TextError; a bad argument InputError; an unusable vocabulary VocabError.
// All derive from std::exception, which is what the C API catches at its boundary. A Tokenizer is immutable
// once built: its const methods may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "xvlm_edge/errors.hpp"

namespace xvlm_edge {

// Text that cannot be tokenised or cleaned: invalid UTF-8 (what() gives the byte offset), nothing left to
// tokenise, an id outside the vocabulary. xvlm_edge.errors.TextError in Python.
class TextError : public InputError {
 public:
  using InputError::InputError;
};

// A vocabulary that cannot be used: unreadable, not UTF-8, empty, a token listed twice, a special token
// missing. xvlm_edge.errors.CheckpointError in Python.
class VocabError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The captioning prompt of the official code (generation starts from "[CLS] a picture of").
inline constexpr std::string_view kCaptionPrompt = "a picture of ";
// WordPiece's max_input_chars_per_word: a longer word is one [UNK].
inline constexpr std::size_t kMaxInputCharsPerWord = 100;

class Tokenizer {
 public:
  // vocab[i] is the token of id i. Throws VocabError if it is empty, lists a token twice, lacks a special
  // token or holds invalid UTF-8; `source` names it in the message.
  explicit Tokenizer(std::vector<std::string> vocab, const std::string& source = "<memory>");

  // A vocab.txt: one token a line, id = line index. Lines end at "\n", "\r\n" or "\r" (Python's universal
  // newlines, as Tokenizer.from_file reads it), and a final newline adds no token.
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_vocab_text(std::string_view text, const std::string& source = "<memory>");

  std::size_t size() const noexcept { return tokens_.size(); }
  const std::vector<std::string>& tokens() const noexcept { return tokens_; }
  std::int64_t pad_id() const noexcept { return pad_id_; }
  std::int64_t unk_id() const noexcept { return unk_id_; }
  std::int64_t cls_id() const noexcept { return cls_id_; }
  std::int64_t sep_id() const noexcept { return sep_id_; }
  std::int64_t mask_id() const noexcept { return mask_id_; }
  std::optional<std::int64_t> token_to_id(std::string_view token) const;
  bool is_special(std::int64_t id) const noexcept;

  // Word-piece ids of one text, without [CLS] / [SEP]; empty if nothing is left after normalisation.
  std::vector<std::int64_t> piece_ids(std::string_view text) const;
  // The word pieces themselves (tokens()[id] of piece_ids).
  std::vector<std::string> tokenize(std::string_view text) const;

  // `[CLS] pieces` (fine-tuning), or `[CLS] pieces [SEP]` with add_sep (captioning). With max_length the
  // pieces are cut so that the specials still fit. InputError if max_length <= the number of specials;
  // TextError if the text has no pieces. Texts are not cleaned here: call pre_caption / pre_question first.
  std::vector<std::int64_t> encode(std::string_view text, std::optional<int> max_length = std::nullopt,
                                   bool add_sep = false) const;
  // Generation prompt: `[CLS] prompt-pieces` (the official `tokenizer(prompt).input_ids[:-1]`).
  std::vector<std::int64_t> caption_prompt_ids(std::string_view prompt = kCaptionPrompt) const;

  // transformers 4.12 BertTokenizer.decode(ids, skip_special_tokens, clean_up_tokenization_spaces=True):
  // tokens joined by spaces, " ##" removed, stripped, then the clean-up replacements (" ." -> "." ...).
  // TextError for an id outside the vocabulary.
  std::string decode(const std::int64_t* ids, std::size_t count, bool skip_special_tokens = true) const;
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = true) const {
    return decode(ids.data(), ids.size(), skip_special_tokens);
  }

 private:
  void append_segment(std::string_view segment, std::vector<std::int64_t>& out) const;
  void append_word(std::string_view word, std::size_t n_chars, std::vector<std::int64_t>& out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, std::int64_t> ids_;
  std::size_t max_token_bytes_ = 0;  // longer candidates cannot match: WordPiece starts below it
  std::int64_t pad_id_ = 0, unk_id_ = 0, cls_id_ = 0, sep_id_ = 0, mask_id_ = 0;
};

// Official caption cleaning (dataset/utils.py pre_caption): lower-case, delete ,.'!?"()*#:;~, turn - and / into
// spaces, "<person>" -> "person", collapse runs of two or more white-space characters into one space, strip
// trailing newlines and surrounding spaces, keep the first max_words words (split on single spaces; a negative
// max_words counts from the end, as a Python slice). TextError if nothing is left.
std::string pre_caption(std::string_view text, int max_words = 30);

// Official question cleaning (pre_question): the same lower-casing and deletions, trailing spaces stripped,
// first max_words words; no white-space collapsing, and an empty result is allowed.
std::string pre_question(std::string_view text, int max_words = 50);

// The Unicode Character Database version the tables were generated from ("15.0.0").
const char* unicode_tables_version() noexcept;

}  // namespace xvlm_edge
