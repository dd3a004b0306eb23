// Image input of the SDK: PNG and JPEG files (libpng, libjpeg-turbo) and raw camera buffers, turned into the
// packed RGB uint8 image that xvlm_edge::preprocess takes.
//
// The result equals xvlm_edge.preprocess.load_image (OpenCV's decoders) byte for byte: 16-bit samples become
// round(v / 257), gray is repeated to three channels, alpha is dropped without compositing, palettes are
// expanded, no gamma or colour profile is applied. NV12 uses OpenCV's BT.601 limited-range integer
// conversion (cv2.COLOR_YUV2RGB_NV12).
//
// Every failure throws ImageError naming the source and the problem; nothing here aborts or leaks. An
// encoded image's size is checked against max_pixels from its header, before any pixel memory exists.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "xvlm_edge/errors.hpp"
#include "xvlm_edge/preprocess.hpp"

namespace xvlm_edge {

// Largest accepted image by default, in pixels, inclusive: 10000 x 10000. The same limit as the Python
// package's xvlm_edge.preprocess.MAX_PIXELS.
inline constexpr std::int64_t kDefaultMaxPixels = 100'000'000;

// Decodes a PNG or JPEG file into packed RGB (channels = 3). max_pixels must lie in [1, kMaxPixels].
Image decode_image_file(const std::string& path, std::int64_t max_pixels = kDefaultMaxPixels);

// Decodes PNG or JPEG bytes; `name` is how error messages refer to them.
Image decode_image(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels = kDefaultMaxPixels,
                   const std::string& name = "image bytes");

// Layouts of a raw buffer. Rows are stride_bytes apart (>= width * bytes per pixel). NV12 is the Y plane
// (height rows of width bytes) followed at the same stride by height / 2 rows of interleaved U, V at half
// resolution; width and height must be even.
enum class PixelFormat { RGB, BGR, RGBA, BGRA, GRAY, NV12 };

const char* pixel_format_name(PixelFormat format);

// Converts a raw buffer of `size` bytes to packed RGB. The last row needs only its pixels, not a full stride.
Image from_buffer(const std::uint8_t* data, std::size_t size, int width, int height, std::size_t stride_bytes,
                  PixelFormat format, std::int64_t max_pixels = kDefaultMaxPixels);

}  // namespace xvlm_edge
