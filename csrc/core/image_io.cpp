// Image input (xvlm_edge/image_io.hpp): format detection, the size check every path shares, file reading,
// and the raw-buffer converters. The PNG and JPEG decoders live in png_decode.cpp and jpeg_decode.cpp.
#include "xvlm_edge/image_io.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <system_error>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "image_decoders.hpp"

namespace xvlm_edge {
namespace detail {

void check_image_size(std::int64_t width, std::int64_t height, int channels, std::int64_t max_pixels,
                      const std::string& name, const char* format) {
  const std::string size = std::to_string(width) + "x" + std::to_string(height);
  if (width <= 0 || height <= 0) throw ImageError(name + ": " + format + " image is empty (" + size + ")");
  // Both sides are below 2^32 here (every caller passes 32-bit header fields or ints), so the product is exact.
  const std::int64_t pixels = width * height;
  if (pixels > max_pixels) {
    char text[160];
    std::snprintf(text, sizeof text, ": image is %s = %.1f megapixels, above the limit of %g megapixels", size.c_str(),
                  static_cast<double>(pixels) / 1e6, static_cast<double>(max_pixels) / 1e6);
    throw ImageError(name + text);
  }
  if (width > std::numeric_limits<int>::max() || height > std::numeric_limits<int>::max() ||
      static_cast<std::uint64_t>(pixels) > std::numeric_limits<std::size_t>::max() / 2 / channels) {
    throw ImageError(name + ": " + format + " image of " + size + " pixels does not fit in memory on this machine");
  }
}

}  // namespace detail

namespace {

void check_max_pixels(std::int64_t max_pixels) {
  if (max_pixels < 1 || max_pixels > kMaxPixels) {
    throw ImageError("max_pixels=" + std::to_string(max_pixels) + " is outside [1, " + std::to_string(kMaxPixels) + "]");
  }
}

bool starts_with(const std::uint8_t* data, std::size_t size, const char* signature, std::size_t length) {
  return size >= length && std::memcmp(data, signature, length) == 0;
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

Image decode_image(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name) {
  check_max_pixels(max_pixels);
  if (size == 0) throw ImageError(name + ": image data is empty (0 bytes)");
  if (data == nullptr) throw ImageError(name + ": image data pointer is NULL");
  if (starts_with(data, size, "\x89PNG\r\n\x1a\n", 8)) return detail::decode_png(data, size, max_pixels, name);
  if (starts_with(data, size, "\xFF\xD8\xFF", 3)) return detail::decode_jpeg(data, size, max_pixels, name);
  std::string head;
  for (std::size_t i = 0; i < std::min<std::size_t>(size, 8); ++i) {
    char hex[4];
    std::snprintf(hex, sizeof hex, "%s%02X", i ? " " : "", data[i]);
    head += hex;
  }
  throw ImageError(name + ": not a PNG or JPEG image (it starts with " + head + "); the SDK decodes PNG and JPEG");
}

Image decode_image_file(const std::string& path, std::int64_t max_pixels) {
  check_max_pixels(max_pixels);
  // Regular files only, as the Python package: a directory, FIFO or /dev/zero would block or never end.
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) throw ImageError("image file not found: " + path);
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw ImageError("cannot open image file " + path + ": " + std::strerror(errno));
  std::vector<std::uint8_t> bytes;
  std::uint8_t chunk[1 << 16];
  std::size_t got = 0;
  while ((got = std::fread(chunk, 1, sizeof chunk, file.get())) > 0) bytes.insert(bytes.end(), chunk, chunk + got);
  if (std::ferror(file.get())) throw ImageError("cannot read image file " + path + ": " + std::strerror(errno));
  if (bytes.empty()) throw ImageError("image file is empty (0 bytes): " + path);
  return decode_image(bytes.data(), bytes.size(), max_pixels, path);
}

const char* pixel_format_name(PixelFormat format) {
  switch (format) {
    case PixelFormat::RGB: return "RGB";
    case PixelFormat::BGR: return "BGR";
    case PixelFormat::RGBA: return "RGBA";
    case PixelFormat::BGRA: return "BGRA";
    case PixelFormat::GRAY: return "GRAY";
    case PixelFormat::NV12: return "NV12";
  }
  return "unknown";
}

namespace {

std::uint8_t clamp_u8(int v) { return static_cast<std::uint8_t>(std::clamp(v, 0, 255)); }

// BT.601 limited range (Y in 16..235) as OpenCV's COLOR_YUV2RGB_NV12 computes it: the textbook coefficients
// to three decimals, in 20-bit fixed point, with the rounding constant added before the shift.
constexpr int kShift = 20;
constexpr int fixed(double coefficient) { return static_cast<int>(coefficient * (1 << kShift) + 0.5); }
constexpr int kY = fixed(1.164);
constexpr int kVToR = fixed(1.596);
constexpr int kUToG = fixed(0.391);
constexpr int kVToG = fixed(0.813);
constexpr int kUToB = fixed(2.018);

void nv12_to_rgb(const std::uint8_t* y_plane, const std::uint8_t* uv_plane, std::size_t stride, int width, int height,
                 std::uint8_t* out) {
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* luma = y_plane + static_cast<std::size_t>(y) * stride;
    const std::uint8_t* chroma = uv_plane + static_cast<std::size_t>(y / 2) * stride;
    for (int x = 0; x < width; ++x, out += 3) {
      const int u = chroma[x & ~1] - 128;
      const int v = chroma[(x & ~1) + 1] - 128;
      const int base = std::max(luma[x] - 16, 0) * kY + (1 << (kShift - 1));
      out[0] = clamp_u8((base + kVToR * v) >> kShift);
      out[1] = clamp_u8((base - kVToG * v - kUToG * u) >> kShift);
      out[2] = clamp_u8((base + kUToB * u) >> kShift);
    }
  }
}

}  // namespace

Image from_buffer(const std::uint8_t* data, std::size_t size, int width, int height, std::size_t stride_bytes,
                  PixelFormat format, std::int64_t max_pixels) {
  check_max_pixels(max_pixels);
  const std::string what = std::string(pixel_format_name(format)) + " buffer";
  if (width < 1 || height < 1) {
    throw ImageError(what + ": width and height must be >= 1, got " + std::to_string(width) + "x" +
                     std::to_string(height));
  }
  if (format == PixelFormat::NV12 && (width % 2 != 0 || height % 2 != 0)) {
    throw ImageError(what + ": width and height must be even (chroma is subsampled 2x2), got " +
                     std::to_string(width) + "x" + std::to_string(height));
  }
  detail::check_image_size(width, height, 3, max_pixels, what, pixel_format_name(format));
  std::size_t pixel_bytes = 1;
  if (format == PixelFormat::RGB || format == PixelFormat::BGR) pixel_bytes = 3;
  if (format == PixelFormat::RGBA || format == PixelFormat::BGRA) pixel_bytes = 4;
  const std::size_t row_bytes = static_cast<std::size_t>(width) * pixel_bytes;
  if (stride_bytes < row_bytes) {
    throw ImageError(what + ": stride_bytes=" + std::to_string(stride_bytes) + " is less than a row of " +
                     std::to_string(width) + " pixels (" + std::to_string(row_bytes) + " bytes)");
  }
  const std::size_t rows = static_cast<std::size_t>(height) + (format == PixelFormat::NV12 ? height / 2 : 0);
  if (stride_bytes > (std::numeric_limits<std::size_t>::max() - row_bytes) / rows) {
    throw ImageError(what + ": stride_bytes=" + std::to_string(stride_bytes) + " times " + std::to_string(rows) +
                     " rows overflows the address space");
  }
  const std::size_t needed = stride_bytes * (rows - 1) + row_bytes;
  if (size < needed) {
    throw ImageError(what + ": size=" + std::to_string(size) + " bytes is less than the " + std::to_string(needed) +
                     " bytes a " + std::to_string(width) + "x" + std::to_string(height) + " image with stride_bytes=" +
                     std::to_string(stride_bytes) + " needs");
  }
  if (data == nullptr) throw ImageError(what + ": data pointer is NULL");

  Image image;
  image.width = width;
  image.height = height;
  image.channels = 3;
  image.data.resize(static_cast<std::size_t>(width) * height * 3);
  std::uint8_t* out = image.data.data();
  if (format == PixelFormat::NV12) {
    nv12_to_rgb(data, data + stride_bytes * height, stride_bytes, width, height, out);
    return image;
  }
  // Where R, G and B sit within a source pixel; gray reads its one sample three times, alpha is dropped.
  std::size_t red = 0, green = 1, blue = 2;
  if (format == PixelFormat::BGR || format == PixelFormat::BGRA) std::swap(red, blue);
  if (format == PixelFormat::GRAY) green = blue = 0;
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* in = data + static_cast<std::size_t>(y) * stride_bytes;
    for (int x = 0; x < width; ++x, in += pixel_bytes, out += 3) {
      out[0] = in[red];
      out[1] = in[green];
      out[2] = in[blue];
    }
  }
  return image;
}

}  // namespace xvlm_edge
