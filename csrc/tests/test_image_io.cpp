// Test driver of the image input (csrc/core/image_io.cpp).
//
// With no arguments it runs the built-in checks of bad input (ctest): every call must throw ImageError with
// a message naming the problem, never crash. With `batch` it executes tab-separated commands from stdin,
// one per line, for tests/test_image_io.py, which compares the pixels with the Python package:
//   decode <path> <out> [max_pixels]                      -> "ok <width> <height>" and raw RGB in <out>
//   buffer <FORMAT> <w> <h> <stride> <in> <out>            -> the same, from_buffer over the bytes of <in>
//   rss                                                    -> "rss <peak resident KiB>" (Linux)
// A refused input answers "error <message>".
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "xvlm_edge/image_io.hpp"

namespace {

using xvlm_edge::Image;
using xvlm_edge::ImageError;
using xvlm_edge::PixelFormat;

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

PixelFormat parse_format(const std::string& name) {
  for (PixelFormat f : {PixelFormat::RGB, PixelFormat::BGR, PixelFormat::RGBA, PixelFormat::BGRA, PixelFormat::GRAY,
                        PixelFormat::NV12}) {
    if (name == xvlm_edge::pixel_format_name(f)) return f;
  }
  throw std::runtime_error("unknown pixel format " + name);
}

std::string run_command(const std::vector<std::string>& args) {
  if (args.size() == 1 && args[0] == "rss") {
    // VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent process.
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) return "rss " + std::to_string(std::stol(line.substr(6)));
    }
    return "error no VmHWM in /proc/self/status";
  }
  Image image;
  std::string out;
  try {
    if ((args.size() == 3 || args.size() == 4) && args[0] == "decode") {
      const std::int64_t max_pixels = args.size() == 4 ? std::stoll(args[3]) : xvlm_edge::kDefaultMaxPixels;
      image = xvlm_edge::decode_image_file(args[1], max_pixels);
      out = args[2];
    } else if (args.size() == 7 && args[0] == "buffer") {
      const std::vector<std::uint8_t> bytes = read_bytes(args[5]);
      image = xvlm_edge::from_buffer(bytes.data(), bytes.size(), std::stoi(args[2]), std::stoi(args[3]),
                                     std::stoull(args[4]), parse_format(args[1]));
      out = args[6];
    } else {
      return "error bad command";
    }
  } catch (const ImageError& e) {
    std::string message = e.what();
    for (char& c : message) c = c == '\n' ? ' ' : c;
    return std::string("error ") + message;
  }
  std::ofstream file(out, std::ios::binary);
  file.write(reinterpret_cast<const char*>(image.data.data()), static_cast<std::streamsize>(image.data.size()));
  if (!file) return "error cannot write " + out;
  return "ok " + std::to_string(image.width) + " " + std::to_string(image.height);
}

int batch() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::vector<std::string> args;
    std::stringstream fields(line);
    for (std::string field; std::getline(fields, field, '\t');) args.push_back(field);
    std::cout << run_command(args) << std::endl;
  }
  return 0;
}

// --- built-in bad-input checks --------------------------------------------------------------------------

int failures = 0;
int checks = 0;

void expect_error(const std::string& label, const std::function<void()>& call, const std::string& needle) {
  ++checks;
  try {
    call();
    std::cout << "FAIL " << label << ": no ImageError\n";
  } catch (const ImageError& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return;
    std::cout << "FAIL " << label << ": message \"" << e.what() << "\" lacks \"" << needle << "\"\n";
  } catch (const std::exception& e) {
    std::cout << "FAIL " << label << ": threw something other than ImageError: " << e.what() << "\n";
  }
  ++failures;
}

int self_test() {
  using xvlm_edge::decode_image;
  using xvlm_edge::from_buffer;
  const std::vector<std::uint8_t> pixels(64 * 64 * 4, 128);
  const std::uint8_t* p = pixels.data();
  const std::size_t n = pixels.size();

  expect_error("null data", [&] { from_buffer(nullptr, n, 4, 4, 12, PixelFormat::RGB); }, "data pointer is NULL");
  expect_error("zero width", [&] { from_buffer(p, n, 0, 4, 12, PixelFormat::RGB); }, "must be >= 1, got 0x4");
  expect_error("negative height", [&] { from_buffer(p, n, 4, -2, 12, PixelFormat::RGB); }, "got 4x-2");
  expect_error("short stride", [&] { from_buffer(p, n, 4, 4, 11, PixelFormat::RGB); }, "stride_bytes=11 is less");
  expect_error("short RGBA stride", [&] { from_buffer(p, n, 8, 4, 31, PixelFormat::BGRA); }, "(32 bytes)");
  expect_error("zero stride", [&] { from_buffer(p, n, 4, 4, 0, PixelFormat::GRAY); }, "stride_bytes=0");
  expect_error("small buffer", [&] { from_buffer(p, 47, 4, 4, 12, PixelFormat::RGB); }, "size=47 bytes is less than the 48");
  expect_error("NV12 small", [&] { from_buffer(p, 23, 4, 4, 4, PixelFormat::NV12); }, "less than the 24");
  expect_error("NV12 odd width", [&] { from_buffer(p, n, 5, 4, 6, PixelFormat::NV12); }, "must be even");
  expect_error("NV12 odd height", [&] { from_buffer(p, n, 4, 3, 4, PixelFormat::NV12); }, "must be even");
  expect_error("stride overflow", [&] { from_buffer(p, n, 4, 4, SIZE_MAX / 2, PixelFormat::RGB); }, "overflows");
  expect_error("too many pixels", [&] { from_buffer(p, n, 20000, 20000, 60000, PixelFormat::RGB); },
               "above the limit of 100 megapixels");
  expect_error("max_pixels 0", [&] { from_buffer(p, n, 4, 4, 12, PixelFormat::RGB, 0); }, "max_pixels=0 is outside");
  expect_error("max_pixels below image", [&] { from_buffer(p, n, 4, 4, 12, PixelFormat::RGB, 15); },
               "above the limit");
  expect_error("empty bytes", [&] { decode_image(p, 0); }, "image bytes: image data is empty (0 bytes)");
  expect_error("null bytes", [&] { decode_image(nullptr, 10); }, "pointer is NULL");
  expect_error("wrong magic", [&] { decode_image(p, 16); }, "not a PNG or JPEG image (it starts with 80 80");
  const std::uint8_t png_head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  expect_error("PNG signature only", [&] { decode_image(png_head, 8, 100, "x.png"); }, "x.png: cannot decode PNG header");
  expect_error("PNG cut in IHDR", [&] { decode_image(png_head, sizeof png_head); }, "cannot decode PNG header");
  const std::uint8_t jpeg_head[] = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 'J', 'F', 'I', 'F'};
  expect_error("JPEG cut", [&] { decode_image(jpeg_head, sizeof jpeg_head); }, "cannot decode JPEG header");
  expect_error("missing file", [] { xvlm_edge::decode_image_file("/nonexistent/x.png"); },
               "image file not found: /nonexistent/x.png");
  expect_error("directory", [] { xvlm_edge::decode_image_file("/"); }, "image file not found: /");
  expect_error("device", [] { xvlm_edge::decode_image_file("/dev/zero"); }, "image file not found: /dev/zero");
  // Sanity of the good path: a 2x2 NV12 of mid gray is mid gray.
  const std::uint8_t nv12[] = {126, 126, 126, 126, 128, 128};
  const Image gray = from_buffer(nv12, sizeof nv12, 2, 2, 2, PixelFormat::NV12);
  ++checks;
  if (gray.data != std::vector<std::uint8_t>(12, 128)) {
    std::cout << "FAIL NV12 gray: first pixel " << int(gray.data[0]) << "\n";
    ++failures;
  }
  std::cout << checks << " checks, " << failures << " failures\n";
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "batch") return batch();
  if (argc == 1) return self_test();
  std::cerr << "usage: " << argv[0] << " [batch]\n";
  return 2;
}
