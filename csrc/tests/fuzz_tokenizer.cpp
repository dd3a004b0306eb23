// libFuzzer harness of the WordPiece tokenizer and the official text cleaning (csrc/core/tokenizer.cpp).
//
// Property: any bytes give ids inside the vocabulary that decode back to a string, or throw TextError /
// InputError (invalid UTF-8, no tokens); never a crash or undefined behaviour (built with ASan + UBSan).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "xvlm_edge/tokenizer.hpp"

namespace {

const xvlm_edge::Tokenizer& tokenizer() {
  static const xvlm_edge::Tokenizer instance = xvlm_edge::Tokenizer::from_file(XVLM_EDGE_FUZZ_VOCAB);
  return instance;
}

template <typename Call>
void tolerate_input_errors(Call&& call) {
  try {
    call();
  } catch (const xvlm_edge::InputError&) {  // TextError included
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const xvlm_edge::Tokenizer& tok = tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const int max_length = size > 0 ? data[0] % 40 : 0;
  tolerate_input_errors([&] {
    const auto ids = tok.encode(text, max_length >= 3 ? std::optional<int>(max_length) : std::nullopt, size % 2 == 0);
    for (const std::int64_t id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= tok.size()) std::abort();
    }
    tok.decode(ids, size % 3 == 0);
  });
  tolerate_input_errors([&] { xvlm_edge::pre_caption(text, max_length); });
  tolerate_input_errors([&] { xvlm_edge::pre_question(text); });
  return 0;
}
