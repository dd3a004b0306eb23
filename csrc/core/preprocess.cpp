// Pillow-exact bicubic resize and CLIP normalisation (see xvlm_edge/preprocess.hpp).
//
// Exactness notes. Every double and float operation below is written in Pillow's (resp. torchvision's)
// order, and the build disables floating-point contraction (-ffp-contract=off in CMakeLists.txt): GCC fuses
// a * b + c into one FMA on targets that have it (aarch64, i.e. Jetson), which rounds once where Pillow
// rounds twice and can move a fixed-point tap by one unit. The integer accumulation is exact, so its order
// (and the thread split) cannot change the result.
#include "xvlm_edge/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <thread>

namespace xvlm_edge {
namespace {

// Fixed-point fraction bits of the taps: 8 bits for the pixel and 2 for the overshoot of the negative
// lobes leave 22 of the 32-bit accumulator (Pillow's PRECISION_BITS).
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int kChannels = 3;

// Keys' cubic convolution kernel with a = -0.5, support 2.
double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// The 1-D resampling plan of one axis: output index i reads count[i] inputs from first[i], weighted by
// weights[i * ksize .. + count[i]] (the unused tail is zero).
struct Taps {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<std::int32_t> weights;
};

Taps compute_taps(int in_size, int out_size) {
  // Pillow works on the box (0, 0, in_w, in_h) given as floats, so the scale is float(in) / out.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  // Shrinking widens the kernel by the scale (antialiasing); enlarging keeps support 2.
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  const double inv_filterscale = 1.0 / filterscale;

  Taps taps;
  taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<std::size_t>(out_size) * taps.ksize, 0);
  std::vector<double> w(taps.ksize);

  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    // The casts truncate toward zero, as in Pillow; a negative start is clamped to 0 right after.
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = hi - lo;
    double sum = 0.0;
    for (int k = 0; k < n; ++k) {
      w[k] = bicubic_kernel((k + lo - center + 0.5) * inv_filterscale);
      sum += w[k];
    }
    std::int32_t* out = &taps.weights[static_cast<std::size_t>(i) * taps.ksize];
    for (int k = 0; k < n; ++k) {
      const double v = sum != 0.0 ? w[k] / sum : w[k];
      // Round half away from zero to 22-bit fixed point.
      out[k] = v < 0 ? static_cast<std::int32_t>(-0.5 + v * (1 << kPrecisionBits))
                     : static_cast<std::int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    taps.first[i] = lo;
    taps.count[i] = n;
  }
  return taps;
}

inline std::uint8_t clip8(std::int32_t acc) {
  return static_cast<std::uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
}

int resolve_threads(int num_threads, int work_items) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, std::min(num_threads, work_items));
}

// Runs fn(begin, end) on contiguous chunks of [0, n), one chunk per thread; chunk 0 runs on the caller.
// fn must not throw: every allocation happens before the split.
template <class Fn>
void parallel_for(int n, int num_threads, Fn fn) {
  const int t = resolve_threads(num_threads, n);
  if (t == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(t - 1);
  const auto bound = [n, t](int j) { return static_cast<int>(static_cast<std::int64_t>(n) * j / t); };
  for (int j = 1; j < t; ++j) workers.emplace_back(fn, bound(j), bound(j + 1));
  fn(0, bound(1));
  for (auto& w : workers) w.join();
}

void check_size(int width, int height, const char* what) {
  if (width <= 0 || height <= 0 || width > kMaxSide || height > kMaxSide ||
      static_cast<std::int64_t>(width) * height > kMaxPixels) {
    throw ImageError(std::string(what) + " size " + std::to_string(width) + "x" + std::to_string(height) +
                     " is outside 1.." + std::to_string(kMaxSide) + " per side and " +
                     std::to_string(kMaxPixels) + " pixels");
  }
}

void check_source(const ImageView& src) {
  if (src.data == nullptr) throw ImageError("image data is null");
  if (src.channels != kChannels) {
    throw ImageError("image has " + std::to_string(src.channels) + " channels; expected 3 (RGB)");
  }
  check_size(src.width, src.height, "image");
}

// Horizontal pass: each row of `in` resampled to out_width columns.
Image resample_horizontal(const ImageView& in, int out_width, int num_threads) {
  const Taps taps = compute_taps(in.width, out_width);
  Image out{std::vector<std::uint8_t>(static_cast<std::size_t>(out_width) * in.height * kChannels), out_width,
            in.height, kChannels};
  parallel_for(in.height, num_threads, [&](int y0, int y1) {
    for (int y = y0; y < y1; ++y) {
      const std::uint8_t* row = in.data + static_cast<std::size_t>(y) * in.width * kChannels;
      std::uint8_t* dst = out.data.data() + static_cast<std::size_t>(y) * out_width * kChannels;
      for (int x = 0; x < out_width; ++x) {
        const std::int32_t* w = &taps.weights[static_cast<std::size_t>(x) * taps.ksize];
        const std::uint8_t* p = row + static_cast<std::size_t>(taps.first[x]) * kChannels;
        std::int32_t r = 1 << (kPrecisionBits - 1), g = r, b = r;  // +0.5 for round-to-nearest
        for (int k = 0; k < taps.count[x]; ++k, p += kChannels) {
          r += p[0] * w[k];
          g += p[1] * w[k];
          b += p[2] * w[k];
        }
        dst[x * kChannels + 0] = clip8(r);
        dst[x * kChannels + 1] = clip8(g);
        dst[x * kChannels + 2] = clip8(b);
      }
    }
  });
  return out;
}

// Vertical pass: `in` resampled to out_height rows; whole rows are accumulated at once (cache friendly).
Image resample_vertical(const ImageView& in, int out_height, int num_threads) {
  const Taps taps = compute_taps(in.height, out_height);
  const int row_len = in.width * kChannels;
  Image out{std::vector<std::uint8_t>(static_cast<std::size_t>(row_len) * out_height), in.width, out_height,
            kChannels};
  parallel_for(out_height, num_threads, [&](int y0, int y1) {
    std::vector<std::int32_t> acc(row_len);
    for (int y = y0; y < y1; ++y) {
      std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
      const std::int32_t* w = &taps.weights[static_cast<std::size_t>(y) * taps.ksize];
      for (int k = 0; k < taps.count[y]; ++k) {
        const std::uint8_t* row = in.data + static_cast<std::size_t>(taps.first[y] + k) * row_len;
        const std::int32_t wk = w[k];
        for (int i = 0; i < row_len; ++i) acc[i] += row[i] * wk;
      }
      std::uint8_t* dst = out.data.data() + static_cast<std::size_t>(y) * row_len;
      for (int i = 0; i < row_len; ++i) dst[i] = clip8(acc[i]);
    }
  });
  return out;
}

ImageView view_of(const Image& img) { return {img.data.data(), img.width, img.height, img.channels}; }

}  // namespace

Image resize_bicubic_u8(const ImageView& src, int out_width, int out_height, int num_threads) {
  check_source(src);
  check_size(out_width, out_height, "output");
  // Like Pillow, an axis whose size does not change is not resampled (its taps would be the identity).
  const bool horizontal = out_width != src.width;
  const bool vertical = out_height != src.height;
  if (!horizontal && !vertical) {
    return Image{std::vector<std::uint8_t>(src.data, src.data + static_cast<std::size_t>(src.width) * src.height *
                                                                   kChannels),
                 src.width, src.height, kChannels};
  }
  // The pass order changes the uint8 rounding of the intermediate image. Pillow 13 resamples vertically
  // first when the image loses more than twice as many rows as columns; this rule was measured against
  // Pillow 13.0.0 on thousands of size pairs (tests/test_preprocess.py keeps checking it).
  const bool vertical_first =
      horizontal && vertical && out_height < src.height && src.height - out_height > 2 * (src.width - out_width);
  if (horizontal && vertical) {
    if (vertical_first) {
      check_size(src.width, out_height, "intermediate");
    } else {
      check_size(out_width, src.height, "intermediate");
    }
  }
  if (vertical_first) {
    const Image tmp = resample_vertical(src, out_height, num_threads);
    return resample_horizontal(view_of(tmp), out_width, num_threads);
  }
  if (!vertical) return resample_horizontal(src, out_width, num_threads);
  if (!horizontal) return resample_vertical(src, out_height, num_threads);
  const Image tmp = resample_horizontal(src, out_width, num_threads);
  return resample_vertical(view_of(tmp), out_height, num_threads);
}

std::vector<float> preprocess(const ImageView& src, int res, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, int num_threads) {
  for (int c = 0; c < kChannels; ++c) {
    if (!std::isfinite(mean[c]) || !std::isfinite(std[c]) || std[c] == 0.0f) {
      throw InputError("mean and std must be finite and std non-zero (channel " + std::to_string(c) + ")");
    }
  }
  const Image resized = resize_bicubic_u8(src, res, res, num_threads);

  // ToTensor then Normalize, both in float32: (float(v) / 255 - mean) / std. 256 values per channel, so
  // a table computed with exactly those operations is exact.
  std::array<std::array<float, 256>, kChannels> lut{};
  for (int c = 0; c < kChannels; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.0f - mean[c]) / std[c];
  }
  const std::size_t plane = static_cast<std::size_t>(res) * res;
  std::vector<float> chw(plane * kChannels);
  parallel_for(res, num_threads, [&](int y0, int y1) {
    for (std::size_t i = static_cast<std::size_t>(y0) * res; i < static_cast<std::size_t>(y1) * res; ++i) {
      for (int c = 0; c < kChannels; ++c) chw[c * plane + i] = lut[c][resized.data[i * kChannels + c]];
    }
  });
  return chw;
}

}  // namespace xvlm_edge
