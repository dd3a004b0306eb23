// PNG decoding through libpng with the transforms OpenCV's decoder applies under IMREAD_ANYDEPTH |
// IMREAD_ANYCOLOR (the flags xvlm_edge.preprocess decodes with), so the pixels equal cv2.imdecode's:
// palettes expanded, 1/2/4-bit gray widened, alpha stripped (not composited), gray-with-alpha made RGB by
// libpng, plain gray kept as one channel and repeated here, no gamma, 16-bit samples rounded as v / 257,
// the orientation of an eXIf chunk applied.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "image_decoders.hpp"

namespace xvlm_edge::detail {
namespace {

// libpng reports an error through a callback that must not return. Ours copies the message here and
// longjmps back into `guarded` (image_decoders.hpp).
struct PngInput {
  const std::uint8_t* data;
  std::size_t size;
  std::size_t pos;
  std::jmp_buf jump;
  char message[200];
};

[[noreturn]] void on_error(png_structp png, png_const_charp text) {
  auto* input = static_cast<PngInput*>(png_get_error_ptr(png));
  std::snprintf(input->message, sizeof input->message, "%s", text);
  std::longjmp(input->jump, 1);
}

// Warnings (a damaged ancillary chunk, which libpng then skips) are not failures, as in OpenCV.
void on_warning(png_structp, png_const_charp) {}

void on_read(png_structp png, png_bytep out, std::size_t count) {
  auto* input = static_cast<PngInput*>(png_get_io_ptr(png));
  if (count > input->size - input->pos) png_error(png, "the data is truncated");
  std::memcpy(out, input->data + input->pos, count);
  input->pos += count;
}

struct PngReader {
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;
  explicit PngReader(PngInput* input) {
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, input, on_error, on_warning);
    if (png != nullptr) {
      info = png_create_info_struct(png);
      png_set_read_fn(png, input, on_read);
    }
  }
  ~PngReader() { png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr); }
};

}  // namespace

Image decode_png(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name) {
  PngInput input{data, size, 0, {}, {}};
  PngReader reader(&input);
  if (reader.png == nullptr || reader.info == nullptr) throw ImageError(name + ": out of memory starting libpng");
  png_structp png = reader.png;
  png_infop info = reader.info;
  auto failure = [&](const char* stage) {
    return ImageError(name + ": cannot decode PNG " + stage + " (" + input.message + ")");
  };

  png_uint_32 width = 0, height = 0;
  int depth = 0, color_type = 0;
  if (!guarded(input, [&] {
        png_read_info(png, info);
        png_get_IHDR(png, info, &width, &height, &depth, &color_type, nullptr, nullptr, nullptr);
      })) {
    throw failure("header");
  }
  check_image_size(width, height, 3, max_pixels, name, "PNG");

  // OpenCV reads plain gray as one channel and everything else (gray + alpha included) as three.
  const int channels = color_type == PNG_COLOR_TYPE_GRAY ? 1 : 3;
  const std::size_t sample_bytes = depth == 16 ? 2 : 1;
  const std::size_t row_bytes = std::size_t{width} * channels * sample_bytes;
  std::size_t decoded_row_bytes = 0;
  if (!guarded(input, [&] {
        png_set_strip_alpha(png);
        if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
        if (color_type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
        if (color_type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
        png_set_interlace_handling(png);
        png_read_update_info(png, info);
        decoded_row_bytes = png_get_rowbytes(png, info);
      })) {
    throw failure("header");
  }
  if (decoded_row_bytes != row_bytes) {  // a libpng without the transforms above; never with Debian's
    throw ImageError(name + ": libpng gives " + std::to_string(decoded_row_bytes) + "-byte rows, expected " +
                     std::to_string(row_bytes));
  }

  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.channels = 3;
  image.data.resize(std::size_t{width} * height * 3);
  // 8-bit RGB lands in place; gray and 16-bit samples go through a decode buffer and are converted after.
  const bool in_place = channels == 3 && sample_bytes == 1;
  std::vector<std::uint8_t> decoded(in_place ? 0 : row_bytes * height);
  std::uint8_t* target = in_place ? image.data.data() : decoded.data();
  std::vector<png_bytep> rows(height);
  for (png_uint_32 y = 0; y < height; ++y) rows[y] = target + y * row_bytes;
  if (!guarded(input, [&] {
        png_read_image(png, rows.data());
        png_read_end(png, info);  // into `info`: an eXIf chunk may follow the image data
      })) {
    throw failure("image data");
  }
  int orientation = 1;
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_size, &exif) != 0) orientation = exif_orientation(exif, exif_size);
#endif
  if (in_place) return apply_orientation(std::move(image), orientation);

  const std::size_t samples = std::size_t{width} * height * channels;
  std::uint8_t* out = image.data.data();
  for (std::size_t i = 0; i < samples; ++i) {
    std::uint8_t v = decoded[i];
    if (sample_bytes == 2) {  // big-endian 16-bit; round(v / 257) maps 0..65535 onto 0..255, never a tie
      const unsigned wide = (unsigned{decoded[2 * i]} << 8) | decoded[2 * i + 1];
      v = static_cast<std::uint8_t>((wide + 128) / 257);
    }
    if (channels == 1) {
      out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = v;
    } else {
      out[i] = v;
    }
  }
  return apply_orientation(std::move(image), orientation);
}

}  // namespace xvlm_edge::detail
