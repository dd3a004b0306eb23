// libFuzzer harness of the image decoder (csrc/core/image_io.cpp, png_decode.cpp, jpeg_decode.cpp).
//
// Property: any bytes decode into a packed RGB image no larger than the limit, or throw ImageError; never
// a crash, leak, out-of-bounds access or undefined behaviour (built with ASan + UBSan). The pixel limit is
// lowered so that a mutated header cannot make one input take seconds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "xvlm_edge/image_io.hpp"

namespace {
constexpr std::int64_t kFuzzMaxPixels = 1 << 20;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const xvlm_edge::Image image = xvlm_edge::decode_image(data, size, kFuzzMaxPixels, "fuzz input");
    const auto pixels = static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height);
    if (image.channels != 3 || pixels == 0 || pixels > kFuzzMaxPixels || image.data.size() != pixels * 3) std::abort();
  } catch (const xvlm_edge::ImageError&) {
  }
  return 0;
}
