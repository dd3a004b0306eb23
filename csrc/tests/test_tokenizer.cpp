// Plain C++ tests of the tokenizer and text cleaning (core/tokenizer.cpp) as the firmware links it: no Python,
// no framework. Built with -DXVLM_EDGE_BUILD_TESTS=ON and run by ctest; tests/test_cpp_tokenizer.py (slow)
// builds it with AddressSanitizer and UndefinedBehaviorSanitizer and passes the packaged vocab.txt as argv[1]
// for the fuzz loop. Parity with the Python reference is tests/test_cpp_tokenizer.py's job; this file checks
// behaviour the C API relies on: framing, errors as exceptions derived from std::exception, never a crash.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "xvlm_edge/tokenizer.hpp"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                       \
  do {                                                                    \
    ++g_checks;                                                           \
    if (!(cond)) {                                                        \
      ++g_failures;                                                       \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);         \
    }                                                                     \
  } while (0)

// The call must throw E whose what() contains `fragment`.
template <class E>
void check_throws(int line, const std::function<void()>& fn, const std::string& fragment) {
  ++g_checks;
  try {
    fn();
  } catch (const E& e) {
    if (std::string(e.what()).find(fragment) == std::string::npos) {
      ++g_failures;
      std::printf("FAIL line %d: message lacks \"%s\": %s\n", line, fragment.c_str(), e.what());
    }
    return;
  } catch (const std::exception& e) {
    ++g_failures;
    std::printf("FAIL line %d: wrong exception type: %s\n", line, e.what());
    return;
  }
  ++g_failures;
  std::printf("FAIL line %d: no exception\n", line);
}

using Ids = std::vector<std::int64_t>;

// ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 then the words.
const std::vector<std::string> kVocab = {
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "red", "cafe", "naive", "!", ",", ".",
    "un", "##aff", "##able", "'", "s", "t", "don", "的", "α", "##σ", "ς", "i", "##̇", "?",
};

void test_encode(const xvlm_edge::Tokenizer& tok) {
  using namespace std::string_literals;
  CHECK(tok.size() == kVocab.size());
  CHECK(tok.cls_id() == 2 && tok.sep_id() == 3 && tok.unk_id() == 1 && tok.pad_id() == 0 && tok.mask_id() == 4);
  CHECK((tok.encode("A Picture of") == Ids{2, 5, 6, 7}));
  CHECK((tok.encode("A Picture of", std::nullopt, true) == Ids{2, 5, 6, 7, 3}));
  CHECK((tok.encode("a picture of red", 3, true) == Ids{2, 5, 3}));
  CHECK((tok.caption_prompt_ids() == Ids{2, 5, 6, 7}));
  CHECK((tok.piece_ids("unaffable") == Ids{14, 15, 16}));
  CHECK((tok.piece_ids("Café NAÏVE!") == Ids{9, 10, 11}));          // accents stripped, punctuation isolated
  CHECK((tok.piece_ids("red\xe7\x9a\x84red") == Ids{8, 21, 8}));     // CJK ideograph isolated: red 的 red
  CHECK((tok.piece_ids("red[SEP]a[cls]") == Ids{8, 3, 5, 1, 1, 1}));  // specials split; "[cls]" is [ cls ]
  CHECK((tok.piece_ids("unaffablex") == Ids{1}));                    // uncoverable word -> one [UNK]
  CHECK((tok.piece_ids(std::string(101, 'a')) == Ids{1}));           // over 100 characters -> [UNK]
  CHECK((tok.piece_ids("a\t\n\r\xc2\xa0\xe2\x80\x8b\0red\0"s) == Ids{5, 8}));  // spaces, ZWSP, NUL
  CHECK((tok.piece_ids("\xce\x91\xce\xa3 \xce\xa3") == Ids{22, 23, 1}));  // "ΑΣ Σ": no final sigma here
  CHECK((tok.tokenize("don't") == std::vector<std::string>{"don", "'", "t"}));
  CHECK(tok.token_to_id("red") == 8 && !tok.token_to_id("blue"));
}

void test_decode(const xvlm_edge::Tokenizer& tok) {
  CHECK(tok.decode(Ids{2, 5, 6, 7, 8, 3}) == "a picture of red");
  CHECK(tok.decode(Ids{2, 5, 3}, false) == "[CLS] a [SEP]");
  CHECK(tok.decode(Ids{14, 15, 16, 13}) == "unaffable.");
  CHECK(tok.decode(Ids{20, 17, 19, 8, 12, 8, 11}) == "don't red, red!");
  CHECK(tok.decode(Ids{}).empty());
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.decode(Ids{2, 99}); }, "outside the vocabulary of 28");
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.decode(Ids{-5}); }, "token id -5");
}

void test_errors(const xvlm_edge::Tokenizer& tok) {
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.encode("red \xff"); }, "byte 0xFF at offset 4");
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.encode("\xed\xa0\x80"); }, "not valid UTF-8");
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.encode("\xc0\xaf"); }, "not valid UTF-8");
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.encode("\xf4\x90\x80\x80"); }, "not valid UTF-8");
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.encode("caf\xc3"); }, "offset 3");
  check_throws<xvlm_edge::TextError>(__LINE__, [&] { tok.encode(" \x01 "); }, "no tokens after normalisation");
  check_throws<xvlm_edge::InputError>(__LINE__, [&] { tok.encode("red", 2, true); }, "max_length=2");
  check_throws<xvlm_edge::VocabError>(__LINE__, [] { xvlm_edge::Tokenizer({}); }, "is empty");
  check_throws<xvlm_edge::VocabError>(__LINE__, [] { xvlm_edge::Tokenizer({"[PAD]", "[UNK]"}); },
                                      "lacks the special tokens [CLS], [SEP], [MASK]");
  check_throws<xvlm_edge::VocabError>(__LINE__, [] { xvlm_edge::Tokenizer::from_vocab_text("[PAD]\na\na\n"); },
                                      "lists the token 'a' twice (ids 1 and 2)");
  check_throws<xvlm_edge::VocabError>(__LINE__, [] { xvlm_edge::Tokenizer::from_file("/no/such/vocab.txt"); },
                                      "cannot read vocabulary /no/such/vocab.txt");
  // Universal newlines: \r\n and \r end lines, a final newline adds no token.
  CHECK(xvlm_edge::Tokenizer::from_vocab_text("[PAD]\r\n[UNK]\r[CLS]\n[SEP]\n[MASK]\n").size() == 5);
}

void test_cleaning() {
  CHECK(xvlm_edge::pre_caption("A man's  DOG -- at <PERSON>/park!!\n") == "a mans dog at person park");
  CHECK(xvlm_edge::pre_caption("one two three four", 2) == "one two");
  CHECK(xvlm_edge::pre_caption("one two three four", -1) == "one two three");
  CHECK(xvlm_edge::pre_caption("a\tb") == "a\tb");  // a lone tab survives, as in the official code
  CHECK(xvlm_edge::pre_caption("\xce\x9f\xce\x94\xce\x9f\xce\xa3") == "\xce\xbf\xce\xb4\xce\xbf\xcf\x82");  // οδος
  CHECK(xvlm_edge::pre_question("What  is this?  ") == "what  is this");
  CHECK(xvlm_edge::pre_question("?!").empty());
  check_throws<xvlm_edge::TextError>(__LINE__, [] { xvlm_edge::pre_caption(" ... "); }, "empty after caption");
  check_throws<xvlm_edge::TextError>(__LINE__, [] { xvlm_edge::pre_question("\x80"); }, "not valid UTF-8");
}

// xorshift64*: deterministic, no <random> distribution differences between standard libraries.
std::uint64_t g_state = 0x9E3779B97F4A7C15ull;
std::uint64_t next_random() {
  g_state ^= g_state >> 12;
  g_state ^= g_state << 25;
  g_state ^= g_state >> 27;
  return g_state * 0x2545F4914F6CDD1Dull;
}

// Random text: half the inputs well-formed UTF-8 (random code points of every plane, ASCII and specials mixed
// in), half with raw bytes biased to UTF-8 lead / continuation bytes. Every call returns or throws one of the
// library's exceptions; under the sanitizers this is the "no undefined behaviour" check.
void append_random_cp(std::string& out) {
  static const char* const kPieces[] = {"[SEP]", "[CLS]", " ", "a", "##", "\xce\xa3", "\xcc\x81", "\xe2\x80\x8d"};
  const std::uint64_t r = next_random();
  std::uint32_t cp = 0;
  switch (r % 4) {
    case 0: out += kPieces[(r >> 8) % 8]; return;
    case 1: cp = 0x20 + (r >> 8) % 0x60; break;
    case 2: cp = (r >> 8) % 0x3000; break;
    default: cp = (r >> 8) % 0x110000; break;
  }
  if (cp >= 0xD800 && cp <= 0xDFFF) cp -= 0x800;  // a surrogate has no UTF-8 form
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
  } else if (cp < 0x10000) {
    out += {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
            static_cast<char>(0x80 | (cp & 0x3F))};
  } else {
    out += {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
            static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
  }
}

void fuzz(const xvlm_edge::Tokenizer& tok, int iterations) {
  static const unsigned char kBiased[] = {'[', ']', 'S', 'E', 'P', ' ', 'a', '#', 0x80, 0xBF, 0xC2, 0xCC, 0x81,
                                          0xE2, 0x80, 0x8B, 0xED, 0xA0, 0xF0, 0x9F, 0xF4, 0x90, 0xCE, 0xA3, 0x00};
  int completed = 0, refused = 0;
  for (int i = 0; i < iterations; ++i) {
    std::string text;
    const bool raw = i % 2;
    const std::size_t n = next_random() % (i % 100 < 2 ? 4000 : 40);
    for (std::size_t k = 0; k < n; ++k) {
      const std::uint64_t r = next_random();
      if (raw && r % 8 == 0) {
        text.push_back(static_cast<char>(r % 3 ? kBiased[(r >> 8) % sizeof(kBiased)] : (r >> 16) & 0xFF));
      } else {
        append_random_cp(text);
      }
    }
    try {
      const Ids ids = tok.encode(text, static_cast<int>(3 + next_random() % 60), next_random() % 2);
      const std::string back = tok.decode(ids, next_random() % 2);
      (void)xvlm_edge::pre_caption(text, static_cast<int>(next_random() % 70) - 5);
      (void)xvlm_edge::pre_question(back);
      ++completed;
    } catch (const xvlm_edge::TextError&) {
      ++refused;
    } catch (const std::exception& e) {
      ++g_failures;
      std::printf("FAIL fuzz %d: unexpected %s\n", i, e.what());
    }
  }
  ++g_checks;
  std::printf("fuzz: %d inputs, %d tokenised, %d refused with TextError\n", iterations, completed, refused);
}

}  // namespace

int main(int argc, char** argv) {
  const xvlm_edge::Tokenizer tok(kVocab);
  test_encode(tok);
  test_decode(tok);
  test_errors(tok);
  test_cleaning();
  fuzz(tok, 20000);
  if (argc > 1) fuzz(xvlm_edge::Tokenizer::from_file(argv[1]), 20000);  // the real vocabulary
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
