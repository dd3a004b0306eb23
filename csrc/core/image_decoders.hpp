// Internal to image_io: the per-format decoders and the size check they share.
#pragma once

#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <string>

#include "xvlm_edge/image_io.hpp"

namespace xvlm_edge::detail {

// Throws ImageError unless a width x height image of `channels` bytes per pixel is non-empty, has at most
// max_pixels pixels and fits the Image type (int sides, size_t bytes). Called on header values, before any
// pixel memory is allocated.
void check_image_size(std::int64_t width, std::int64_t height, int channels, std::int64_t max_pixels,
                      const std::string& name, const char* format);

// Runs step() under setjmp(state.jump): true if it returned, false if a C decoder's error callback longjmp'ed to
// state.jump (the callback leaves the reason in `state`). Every frame between here and the callback (this one,
// the step lambda, the C library, the callback) must hold only trivially destructible objects, so that the
// jump skips no destructor.
template <typename State, typename Step>
bool guarded(State& state, Step&& step) {
  if (setjmp(state.jump) != 0) return false;
  step();
  return true;
}

// The EXIF orientation (1..8) in a TIFF structure (the payload of a JPEG "Exif\0\0" APP1 segment or a PNG
// eXIf chunk); 1 (as stored) when absent, unreadable or out of range, as OpenCV reads it.
int exif_orientation(const std::uint8_t* tiff, std::size_t size);

// The image turned upright for an EXIF orientation, as OpenCV's imdecode does (2..8; anything else: unchanged).
Image apply_orientation(Image image, int orientation);

// Each returns packed RGB with the EXIF orientation applied, or throws ImageError("<name>: <problem>").
// `data` starts with the format's signature.
Image decode_png(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name);
Image decode_jpeg(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name);

}  // namespace xvlm_edge::detail
