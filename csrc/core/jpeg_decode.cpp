// JPEG decoding through libjpeg(-turbo) with the settings OpenCV's decoder uses under IMREAD_ANYDEPTH |
// IMREAD_ANYCOLOR: libjpeg's defaults (islow IDCT, fancy upsampling), one component read as gray, three as
// RGB, four as CMYK turned into RGB with OpenCV's integer formula; the EXIF orientation of an APP1 segment applied.
#include <cstdio>  // jpeglib.h needs FILE and size_t declared first

#include <jpeglib.h>

#include <csetjmp>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "image_decoders.hpp"

namespace xvlm_edge::detail {
namespace {

// A progressive JPEG may hold any number of scans, each a full pass over the image: a small file can keep
// the decoder busy for minutes. Real encoders write about ten; TurboJPEG's API has the same kind of limit.
constexpr int kMaxScans = 500;

// libjpeg's default error_exit calls exit(). Ours formats the message into this struct and longjmps back
// into `guarded` (image_decoders.hpp).
struct JpegErrors {
  jpeg_error_mgr manager;  // first member: libjpeg hands back &manager as cinfo->err
  jpeg_progress_mgr progress;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void fail_with(j_common_ptr cinfo, const char* text) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  std::snprintf(errors->message, sizeof errors->message, "%s", text);
  std::longjmp(errors->jump, 1);
}

[[noreturn]] void on_error_exit(j_common_ptr cinfo) {
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  fail_with(cinfo, text);
}

// Warnings ("corrupt JPEG data: extraneous bytes") are counted by libjpeg but neither printed nor fatal, as
// in OpenCV; a truncated scan is caught before decoding instead (see decode_jpeg).
void on_output_message(j_common_ptr) {}

void on_progress(j_common_ptr cinfo) {
  if (cinfo->is_decompressor && reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number > kMaxScans) {
    fail_with(cinfo, "more than 500 progressive scans (refused: decoding time grows with each)");
  }
}

struct JpegReader {
  jpeg_decompress_struct cinfo{};
  JpegErrors errors{};
  JpegReader() {
    cinfo.err = jpeg_std_error(&errors.manager);
    errors.manager.error_exit = on_error_exit;
    errors.manager.output_message = on_output_message;
    errors.progress.progress_monitor = on_progress;
  }
  JpegReader(const JpegReader&) = delete;
  JpegReader& operator=(const JpegReader&) = delete;
  ~JpegReader() { jpeg_destroy_decompress(&cinfo); }  // safe at any stage, also before create succeeded
};

// Offset of the last occurrence of the marker 0xFF `code`, or -1.
std::int64_t last_marker(const std::uint8_t* data, std::size_t size, std::uint8_t code) {
  for (std::size_t i = size; i >= 2; --i) {
    if (data[i - 2] == 0xFF && data[i - 1] == code) return static_cast<std::int64_t>(i - 2);
  }
  return -1;
}

// The orientation in the first APP1 segment that holds EXIF ("Exif\0\0" and a TIFF structure), else 1.
int orientation_of(const jpeg_decompress_struct* cinfo) {
  for (jpeg_saved_marker_ptr m = cinfo->marker_list; m != nullptr; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      return exif_orientation(m->data + 6, m->data_length - 6);
    }
  }
  return 1;
}

}  // namespace

Image decode_jpeg(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name) {
  auto reader = std::make_unique<JpegReader>();  // libjpeg keeps pointers into it: it must not move
  jpeg_decompress_struct* cinfo = &reader->cinfo;
  JpegErrors& errors = reader->errors;
  auto failure = [&](const char* stage) {
    return ImageError(name + ": cannot decode JPEG " + stage + " (" + errors.message + ")");
  };

  if (!guarded(errors, [&] {
        jpeg_create_decompress(cinfo);
        cinfo->progress = &errors.progress;
        jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
        jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);  // APP1: EXIF
        jpeg_read_header(cinfo, TRUE);
      })) {
    throw failure("header");
  }
  const int orientation = orientation_of(cinfo);  // now: saved markers are freed by jpeg_finish_decompress
  const int width = static_cast<int>(cinfo->image_width);
  const int height = static_cast<int>(cinfo->image_height);
  check_image_size(cinfo->image_width, cinfo->image_height, 3, max_pixels, name, "JPEG");
  // libjpeg fills a scan cut short with gray and only warns. The Python package refuses a file whose last
  // start-of-scan has no end-of-image after it (entropy-coded data never contains 0xFFD9); so do we.
  if (last_marker(data, size, 0xD9) < last_marker(data, size, 0xDA)) {
    throw ImageError(name + ": JPEG data is truncated (no end-of-image marker after the last scan)");
  }

  const int components = cinfo->num_components;
  const J_COLOR_SPACE space = components == 1 ? JCS_GRAYSCALE : components == 4 ? JCS_CMYK : JCS_RGB;
  const int out_components = components == 1 ? 1 : components == 4 ? 4 : 3;
  if (!guarded(errors, [&] {
        cinfo->out_color_space = space;
        jpeg_start_decompress(cinfo);
      })) {
    throw failure("image data");
  }
  if (cinfo->output_width != cinfo->image_width || cinfo->output_height != cinfo->image_height ||
      cinfo->output_components != out_components) {
    throw ImageError(name + ": libjpeg output is not the " + std::to_string(width) + "x" + std::to_string(height) +
                     " image its header describes");
  }

  Image image;
  image.width = width;
  image.height = height;
  image.channels = 3;
  image.data.resize(static_cast<std::size_t>(width) * height * 3);
  std::vector<std::uint8_t> row_buffer(out_components == 3 ? 0 : static_cast<std::size_t>(width) * out_components);
  std::uint8_t* const pixels = image.data.data();
  std::uint8_t* const buffer = row_buffer.data();
  if (!guarded(errors, [&] {
        while (cinfo->output_scanline < cinfo->output_height) {
          std::uint8_t* out = pixels + static_cast<std::size_t>(cinfo->output_scanline) * width * 3;
          JSAMPROW row = out_components == 3 ? out : buffer;
          if (jpeg_read_scanlines(cinfo, &row, 1) != 1) fail_with(j_common_ptr(cinfo), "no scanline returned");
          if (out_components == 1) {
            for (int x = 0; x < width; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = buffer[x];
          } else if (out_components == 4) {
            // OpenCV's CMYK -> BGR: each of C, M, Y becomes k - (255 - v) * k / 256 (integer shift), no
            // inversion for Adobe files; the result is written as R = C, G = M, B = Y.
            for (int x = 0; x < width; ++x) {
              const int k = buffer[4 * x + 3];
              for (int c = 0; c < 3; ++c) out[3 * x + c] = static_cast<std::uint8_t>(k - (((255 - buffer[4 * x + c]) * k) >> 8));
            }
          }
        }
        jpeg_finish_decompress(cinfo);
      })) {
    throw failure("image data");
  }
  return apply_orientation(std::move(image), orientation);
}

}  // namespace xvlm_edge::detail
