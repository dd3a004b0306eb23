// Image preprocessing of the official X-VLM test transform, bit-exact with Pillow.
//
// Official pipeline: PIL Image.resize((res, res), BICUBIC) (aspect ratio not kept) -> /255 -> (x - mean) / std
// -> float32 CHW. torch/OpenCV bicubic resizers differ from Pillow by up to 64 levels, so Pillow's
// separable fixed-point resampler (libImaging/Resample.c) is re-implemented here; xvlm_edge/preprocess.py
// holds the NumPy reference of the same arithmetic.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "xvlm_edge/errors.hpp"

namespace xvlm_edge {

// Largest accepted side and pixel count, input or output. Bigger requests are refused with ImageError
// before any allocation (they are corrupt sizes, not photos).
inline constexpr int kMaxSide = 1 << 16;
inline constexpr std::int64_t kMaxPixels = std::int64_t{1} << 30;

// Non-owning view of a tightly packed HWC uint8 image with `channels` interleaved channels (3 = RGB).
struct ImageView {
  const std::uint8_t* data = nullptr;
  int width = 0;
  int height = 0;
  int channels = 3;
};

// Owning HWC uint8 image.
struct Image {
  std::vector<std::uint8_t> data;
  int width = 0;
  int height = 0;
  int channels = 3;
};

// Pillow-exact bicubic resize of an RGB image to out_width x out_height (a = -0.5, support widened by the
// scale when shrinking, 22-bit fixed-point taps, the two passes in Pillow 13 order, uint8 clip between).
// num_threads <= 0 uses std::thread::hardware_concurrency(). Throws ImageError on a bad image or size.
Image resize_bicubic_u8(const ImageView& src, int out_width, int out_height, int num_threads = 0);

// resize_bicubic_u8 to res x res, then ((v / 255) - mean[c]) / std[c] in float32, written as CHW
// (3 * res * res floats). Same float32 operation order as torchvision ToTensor + Normalize, so the
// result matches the official pixel_values bit for bit.
std::vector<float> preprocess(const ImageView& src, int res, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, int num_threads = 0);

}  // namespace xvlm_edge
