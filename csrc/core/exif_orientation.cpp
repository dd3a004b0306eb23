// EXIF orientation: read from the TIFF structure inside a JPEG APP1 segment or a PNG eXIf chunk, and applied
// the way OpenCV's imdecode applies it (unless IMREAD_IGNORE_ORIENTATION), so a phone photo taken upright
// comes out upright, as in xvlm_edge.preprocess.load_image.
#include <cstddef>
#include <cstdint>

#include "image_decoders.hpp"

namespace xvlm_edge::detail {

int exif_orientation(const std::uint8_t* tiff, std::size_t size) {
  if (tiff == nullptr || size < 8) return 1;
  const bool little = tiff[0] == 'I' && tiff[1] == 'I';
  if (!little && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  auto u16 = [&](std::size_t at) -> std::uint32_t {
    return little ? tiff[at] | tiff[at + 1] << 8 : tiff[at] << 8 | tiff[at + 1];
  };
  auto u32 = [&](std::size_t at) -> std::uint32_t { return little ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2); };
  if (u16(2) != 42) return 1;
  const std::size_t ifd = u32(4);  // the first image file directory: a count, then 12-byte entries
  if (ifd > size - 2) return 1;
  const std::uint32_t entries = u16(ifd);
  for (std::uint32_t i = 0; i < entries; ++i) {
    const std::size_t entry = ifd + 2 + std::size_t{12} * i;
    if (entry > size - 12) return 1;
    constexpr std::uint32_t kOrientationTag = 0x0112, kShortType = 3;
    if (u16(entry) == kOrientationTag) {
      const std::uint32_t value = u16(entry + 2) == kShortType ? u16(entry + 8) : 1;
      return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
    }
  }
  return 1;
}

Image apply_orientation(Image image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  // 2..4 mirror or turn the image in place; 5..8 first transpose it (swap x and y), then mirror. The mirrors
  // act on the output's axes: horizontal for 2, 3, 6, 7 and vertical for 3, 4, 7, 8.
  const bool transpose = orientation >= 5;
  const bool mirror_x = orientation == 2 || orientation == 3 || orientation == 6 || orientation == 7;
  const bool mirror_y = orientation == 3 || orientation == 4 || orientation == 7 || orientation == 8;
  Image out;
  out.width = transpose ? image.height : image.width;
  out.height = transpose ? image.width : image.height;
  out.channels = 3;
  out.data.resize(image.data.size());
  for (int y = 0; y < out.height; ++y) {
    const int ty = mirror_y ? out.height - 1 - y : y;
    for (int x = 0; x < out.width; ++x) {
      const int tx = mirror_x ? out.width - 1 - x : x;
      const int sx = transpose ? ty : tx;
      const int sy = transpose ? tx : ty;
      const std::uint8_t* in = &image.data[(static_cast<std::size_t>(sy) * image.width + sx) * 3];
      std::uint8_t* px = &out.data[(static_cast<std::size_t>(y) * out.width + x) * 3];
      px[0] = in[0];
      px[1] = in[1];
      px[2] = in[2];
    }
  }
  return out;
}

}  // namespace xvlm_edge::detail
