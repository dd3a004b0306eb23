// The C API's bad-input suite: every case hands the SDK something wrong and expects a status naming the
// problem, never a crash (the ASan + UBSan build runs the same cases). A few valid calls check that the
// handles still work after the refusals.
//
//   xvlm_edge_test_c_api EXPORT_DIR IMAGE.png SCRATCH_DIR [VQA_EXPORT_DIR]
//
// SCRATCH_DIR receives broken copies of the export (a wrong hash, a truncated program, ...). EXPORT_DIR has
// no answer decoder; VQA_EXPORT_DIR, when given, is an export with one and an answer list of at least 9
// answers, for the answer cases past the model check.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "xvlm_edge/xvlm_edge.h"

namespace fs = std::filesystem;

namespace {

int cases = 0, failures = 0;

// One case: `call` returns a status and may set `error`; the status must be `want` and, unless OK, the
// message must contain `needle`.
void expect(const char* name, xvlm_status want, const char* needle, const std::function<xvlm_status(char**)>& call) {
  ++cases;
  char* error = nullptr;
  const xvlm_status got = call(&error);
  const bool message_ok = want == XVLM_OK ? error == nullptr : (error != nullptr && std::strstr(error, needle) != nullptr);
  if (got != want || !message_ok) {
    ++failures;
    std::printf("FAIL %s: got %s (%s), want %s with \"%s\"\n", name, xvlm_status_name(got), error ? error : "no message", xvlm_status_name(want),
                needle);
  }
  xvlm_error_free(error);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary | std::ios::trunc) << text; }

void replace_once(std::string& text, const std::string& from, const std::string& to) {
  const std::size_t at = text.find(from);
  if (at == std::string::npos) throw std::runtime_error("test setup: \"" + from + "\" is not in the manifest");
  text.replace(at, from.size(), to);
}

// A copy of the export in scratch/name, changed by `edit(dir, manifest text)`; returns the directory.
std::string broken_copy(const fs::path& source, const fs::path& scratch, const std::string& name,
                        const std::function<void(const fs::path&, std::string&)>& edit) {
  const fs::path dir = scratch / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(source)) fs::copy_file(entry.path(), dir / entry.path().filename());
  std::string manifest = read_file(dir / "manifest.json");
  edit(dir, manifest);
  write_file(dir / "manifest.json", manifest);
  return dir.string();
}

xvlm_status open_and_close(const std::string& dir, char** error) {
  xvlm_model* model = nullptr;
  const xvlm_status s = xvlm_model_open(dir.c_str(), 1, &model, error);
  xvlm_model_close(model);
  return s;
}

// Records the changed files' hashes in the manifest, as a tampering exporter would, so that only the checks
// past the hashes can refuse the directory. Reads each new hash from the SDK's own refusal message.
void rehash(const std::string& dir) {
  for (int file = 0; file < 16; ++file) {
    char* error = nullptr;
    open_and_close(dir, &error);
    const std::string message = error ? error : "";
    xvlm_error_free(error);
    const std::size_t actual = message.find("sha256 "), recorded = message.find("manifest's ");
    if (actual == std::string::npos || recorded == std::string::npos) return;
    std::string manifest = read_file(fs::path(dir) / "manifest.json");
    replace_once(manifest, message.substr(recorded + 11, 64), message.substr(actual + 7, 64));
    write_file(fs::path(dir) / "manifest.json", manifest);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s EXPORT_DIR IMAGE.png SCRATCH_DIR [VQA_EXPORT_DIR]\n", argv[0]);
    return 2;
  }
  const std::string export_dir = argv[1], image_path = argv[2];
  const fs::path scratch = argv[3];
  fs::create_directories(scratch);

  // ---- the library itself
  ++cases;
  if (xvlm_api_version() != XVLM_EDGE_API_VERSION) ++failures, std::printf("FAIL api version %d\n", xvlm_api_version());
  ++cases;
  if (std::strcmp(xvlm_status_name(999), "unknown status") != 0) ++failures, std::printf("FAIL status name\n");
  xvlm_error_free(nullptr);
  xvlm_model_close(nullptr);
  xvlm_context_destroy(nullptr);
  xvlm_image_destroy(nullptr);
  xvlm_probabilities_free(nullptr);
  xvlm_boxes_free(nullptr);
  xvlm_caption_free(nullptr);
  xvlm_answers_free(nullptr);

  // ---- opening a model
  xvlm_model* out_model = nullptr;
  expect("open NULL dir", XVLM_ERR_INVALID_ARGUMENT, "export_dir is NULL", [&](char** e) { return xvlm_model_open(nullptr, 1, &out_model, e); });
  expect("open NULL out", XVLM_ERR_INVALID_ARGUMENT, "model", [&](char** e) { return xvlm_model_open(export_dir.c_str(), 1, nullptr, e); });
  expect("open empty dir", XVLM_ERR_INVALID_ARGUMENT, "empty", [&](char** e) { return xvlm_model_open("", 1, &out_model, e); });
  expect("open negative threads", XVLM_ERR_INVALID_ARGUMENT, "threads", [&](char** e) { return xvlm_model_open(export_dir.c_str(), -1, &out_model, e); });
  expect("open missing dir", XVLM_ERR_MODEL, "manifest.json is missing", [&](char** e) { return open_and_close("/nonexistent/export", e); });
  ++cases;
  if (open_and_close("/nonexistent/export", nullptr) != XVLM_ERR_MODEL) ++failures, std::printf("FAIL open without error pointer\n");

  const fs::path source = export_dir;
  struct Broken {
    const char* name;
    const char* needle;
    std::function<void(const fs::path&, std::string&)> edit;
  };
  const std::vector<Broken> broken = {
      {"not json", "not a JSON object", [](const fs::path&, std::string& m) { m = m.substr(0, m.size() / 2); }},
      {"json array", "not a JSON object", [](const fs::path&, std::string& m) { m = "[1, 2]"; }},
      {"other format", "manifest format", [](const fs::path&, std::string& m) { replace_once(m, "\"format\": 2", "\"format\": 1"); }},
      {"other target", "onnx export", [](const fs::path&, std::string& m) { replace_once(m, "\"target\": \"executorch\"", "\"target\": \"onnx\""); }},
      {"no graphs", "has no \"graphs\"", [](const fs::path&, std::string& m) { replace_once(m, "\"graphs\":", "\"graphz\":"); }},
      {"wrong type", "wrong type", [](const fs::path&, std::string& m) { replace_once(m, "\"precision\": \"", "\"precision\": 7, \"x\": \""); }},
      {"corrupt program", "differs from the manifest's",
       [](const fs::path& d, std::string&) {
         std::string pte = read_file(d / "text.pte");
         pte[pte.size() / 2] = static_cast<char>(pte[pte.size() / 2] ^ 0x55);
         write_file(d / "text.pte", pte);
       }},
      {"missing program", "is missing", [](const fs::path& d, std::string&) { fs::remove(d / "fusion.pte"); }},
      {"missing vocab", "is missing", [](const fs::path& d, std::string&) { fs::remove(d / "vocab.txt"); }},
      {"changed vocab", "differs from the manifest's", [](const fs::path& d, std::string&) { write_file(d / "vocab.txt", "[PAD]\n"); }},
      {"path in a file name", "not a plain file name", [](const fs::path&, std::string& m) { replace_once(m, "\"file\": \"text.pte\"", "\"file\": \"../text.pte\""); }},
      {"no fusion graph", "no fusion graph", [](const fs::path&, std::string& m) { replace_once(m, "\"fusion\": {", "\"fusion_old\": {"); }},
      {"other input name", "the catalogue's is pixels",
       [](const fs::path&, std::string& m) {
         for (std::size_t at = m.find("\"pixels\""); at != std::string::npos; at = m.find("\"pixels\"", at)) m.replace(at, 8, "\"pixelz\"");
       }},
      {"no bounds", "bounds", [](const fs::path&, std::string& m) { replace_once(m, "\"limits\":", "\"limitz\":"); }},
  };
  for (const Broken& b : broken) {
    const std::string dir = broken_copy(source, scratch, b.name, b.edit);
    expect(b.name, XVLM_ERR_MODEL, b.needle, [&](char** e) { return open_and_close(dir, e); });
  }
  // A manifest whose shape disagrees with the program's (the hashes are right: only MethodMeta can tell).
  {
    const std::string dir = broken_copy(source, scratch, "other shape", [](const fs::path&, std::string& m) {
      // The text graph's shapes.text_embeds is [rows, tokens, hidden]; hidden 7 matches no exported model.
      const std::size_t open = m.find('[', m.find("\"text_embeds\": [", m.find("\"shapes\"")));
      m.replace(open, m.find(']', open) + 1 - open, "[\"rows\", \"tokens\", 7]");
    });
    expect("manifest shape vs program", XVLM_ERR_MODEL, "dimension 2", [&](char** e) { return open_and_close(dir, e); });
  }
  // Files changed behind hashes that were updated to match: the checks past the hashes must refuse them.
  const std::vector<Broken> rehashed = {
      {"truncated program", "vision.pte",
       [](const fs::path& d, std::string&) {
         const std::string pte = read_file(d / "vision.pte");
         write_file(d / "vision.pte", pte.substr(0, pte.size() / 3));
       }},
      {"garbage program", "not a loadable ExecuTorch program",
       [](const fs::path& d, std::string&) { write_file(d / "text.pte", std::string(4096, 'x')); }},
      {"vocabulary wider than the logits", "logits are not that wide",
       [](const fs::path& d, std::string&) { write_file(d / "vocab.txt", read_file(d / "vocab.txt") + "extra\n"); }},
      {"unusable vocabulary", "vocabulary is unusable", [](const fs::path& d, std::string&) { write_file(d / "vocab.txt", "a\nb\n"); }},
  };
  for (const Broken& b : rehashed) {
    const std::string dir = broken_copy(source, scratch, b.name, b.edit);
    rehash(dir);
    expect(b.name, XVLM_ERR_MODEL, b.needle, [&](char** e) { return open_and_close(dir, e); });
  }
  {
    const std::string dir = broken_copy(source, scratch, "other image side", [](const fs::path&, std::string& m) {
      const std::size_t at = m.find("\"image_res\": ") + 13;
      m.replace(at, m.find(',', at) - at, "7");
    });
    expect("config's image side vs the program's", XVLM_ERR_MODEL, "image_res 7", [&](char** e) { return open_and_close(dir, e); });
  }

  xvlm_model* model = nullptr;
  char* error = nullptr;
  if (xvlm_model_open(export_dir.c_str(), 1, &model, &error) != XVLM_OK) {
    std::printf("FAIL cannot open the export: %s\n", error ? error : "?");
    return 1;
  }

  // ---- contexts
  xvlm_context* out_context = nullptr;
  expect("context NULL model", XVLM_ERR_INVALID_ARGUMENT, "model is NULL", [&](char** e) { return xvlm_context_create(nullptr, &out_context, e); });
  expect("context NULL out", XVLM_ERR_INVALID_ARGUMENT, "context", [&](char** e) { return xvlm_context_create(model, nullptr, e); });
  xvlm_context* context = nullptr;
  expect("context", XVLM_OK, "", [&](char** e) { return xvlm_context_create(model, &context, e); });

  // ---- images
  std::vector<std::uint8_t> pixels(64 * 48 * 4, 128);
  xvlm_image* out_image = nullptr;
  auto buffer = [&](const std::uint8_t* data, std::size_t size, int w, int h, std::size_t stride, int format, xvlm_image** out) {
    return [=](char** e) {
      const xvlm_status s = xvlm_image_from_buffer(data, size, w, h, stride, format, out, e);
      if (s == XVLM_OK && out) xvlm_image_destroy(*out);
      return s;
    };
  };
  const std::uint8_t* p = pixels.data();
  expect("buffer NULL data", XVLM_ERR_INVALID_ARGUMENT, "data is NULL", buffer(nullptr, 100, 4, 4, 12, XVLM_PIXEL_RGB, &out_image));
  expect("buffer NULL out", XVLM_ERR_INVALID_ARGUMENT, "image", buffer(p, pixels.size(), 4, 4, 12, XVLM_PIXEL_RGB, nullptr));
  expect("buffer zero width", XVLM_ERR_IMAGE, "", buffer(p, pixels.size(), 0, 4, 12, XVLM_PIXEL_RGB, &out_image));
  expect("buffer negative height", XVLM_ERR_IMAGE, "", buffer(p, pixels.size(), 4, -3, 12, XVLM_PIXEL_RGB, &out_image));
  expect("buffer short stride", XVLM_ERR_IMAGE, "", buffer(p, pixels.size(), 64, 48, 100, XVLM_PIXEL_RGB, &out_image));
  expect("buffer too small", XVLM_ERR_IMAGE, "", buffer(p, 1000, 64, 48, 192, XVLM_PIXEL_RGB, &out_image));
  expect("buffer unknown format", XVLM_ERR_INVALID_ARGUMENT, "xvlm_pixel_format", buffer(p, pixels.size(), 4, 4, 12, 99, &out_image));
  expect("buffer odd NV12", XVLM_ERR_IMAGE, "", buffer(p, pixels.size(), 5, 4, 5, XVLM_PIXEL_NV12, &out_image));
  expect("buffer too many pixels", XVLM_ERR_IMAGE, "", buffer(p, pixels.size(), 20000, 20000, 60000, XVLM_PIXEL_RGB, &out_image));
  expect("buffer gray ok", XVLM_OK, "", buffer(p, pixels.size(), 64, 48, 64, XVLM_PIXEL_GRAY, &out_image));
  expect("file NULL path", XVLM_ERR_INVALID_ARGUMENT, "path is NULL", [&](char** e) { return xvlm_image_from_file(nullptr, &out_image, e); });
  expect("file missing", XVLM_ERR_IMAGE, "", [&](char** e) { return xvlm_image_from_file("/nonexistent.png", &out_image, e); });
  write_file(scratch / "not_an_image.png", "hello, this is text");
  expect("file not an image", XVLM_ERR_IMAGE, "", [&](char** e) { return xvlm_image_from_file((scratch / "not_an_image.png").c_str(), &out_image, e); });
  const std::string png = read_file(image_path);
  write_file(scratch / "truncated.png", png.substr(0, png.size() / 2));
  expect("file truncated", XVLM_ERR_IMAGE, "", [&](char** e) { return xvlm_image_from_file((scratch / "truncated.png").c_str(), &out_image, e); });
  int w = 0, h = 0;
  expect("size NULL image", XVLM_ERR_INVALID_ARGUMENT, "image is NULL", [&](char** e) { return xvlm_image_size(nullptr, &w, &h, e); });

  xvlm_image* image = nullptr;
  expect("file ok", XVLM_OK, "", [&](char** e) { return xvlm_image_from_file(image_path.c_str(), &image, e); });
  expect("size NULL width", XVLM_ERR_INVALID_ARGUMENT, "width", [&](char** e) { return xvlm_image_size(image, nullptr, &h, e); });

  // ---- check
  xvlm_verdict verdict{};
  const std::string long_text(100000, 'a');
  const double bad_thresholds[] = {1.5, -0.1, std::numeric_limits<double>::quiet_NaN()};
  auto check = [&](xvlm_context* c, const xvlm_image* i, const char* text, const double* t, xvlm_verdict* v) {
    return [=](char** e) { return xvlm_check(c, i, text, t, v, e); };
  };
  expect("check NULL context", XVLM_ERR_INVALID_ARGUMENT, "context is NULL", check(nullptr, image, "a cat", nullptr, &verdict));
  expect("check NULL image", XVLM_ERR_INVALID_ARGUMENT, "image is NULL", check(context, nullptr, "a cat", nullptr, &verdict));
  expect("check NULL statement", XVLM_ERR_INVALID_ARGUMENT, "statement is NULL", check(context, image, nullptr, nullptr, &verdict));
  expect("check NULL out", XVLM_ERR_INVALID_ARGUMENT, "verdict", check(context, image, "a cat", nullptr, nullptr));
  expect("check empty", XVLM_ERR_TEXT, "empty", check(context, image, "", nullptr, &verdict));
  expect("check punctuation only", XVLM_ERR_TEXT, "empty", check(context, image, "?!...", nullptr, &verdict));
  expect("check invalid UTF-8", XVLM_ERR_TEXT, "UTF-8", check(context, image, "three \xff\xfe stars", nullptr, &verdict));
  expect("check overlong UTF-8", XVLM_ERR_TEXT, "UTF-8", check(context, image, "\xc0\xaf", nullptr, &verdict));
  expect("check lone surrogate", XVLM_ERR_TEXT, "UTF-8", check(context, image, "\xed\xa0\x80", nullptr, &verdict));
  expect("check truncated UTF-8", XVLM_ERR_TEXT, "UTF-8", check(context, image, "stars \xe2\x82", nullptr, &verdict));
  expect("check 100k characters", XVLM_ERR_LIMIT, "4096 bytes", check(context, image, long_text.c_str(), nullptr, &verdict));
  for (const double& t : bad_thresholds) expect("check bad threshold", XVLM_ERR_INVALID_ARGUMENT, "threshold", check(context, image, "a cat", &t, &verdict));
  expect("check ok", XVLM_OK, "", check(context, image, "there are three stars", nullptr, &verdict));

  // ---- match and ground
  const char* texts[] = {"a red circle", nullptr, "a star"};
  std::vector<const char*> many(129, "a star");
  xvlm_probabilities* probabilities = nullptr;
  xvlm_boxes* boxes = nullptr;
  expect("match NULL texts", XVLM_ERR_INVALID_ARGUMENT, "texts is NULL", [&](char** e) { return xvlm_match(context, image, nullptr, 2, &probabilities, e); });
  expect("match count 0", XVLM_ERR_INVALID_ARGUMENT, "count 0", [&](char** e) { return xvlm_match(context, image, texts, 0, &probabilities, e); });
  expect("match NULL text", XVLM_ERR_INVALID_ARGUMENT, "texts[1] is NULL", [&](char** e) { return xvlm_match(context, image, texts, 3, &probabilities, e); });
  expect("match 129 texts", XVLM_ERR_LIMIT, "at most 128", [&](char** e) { return xvlm_match(context, image, many.data(), many.size(), &probabilities, e); });
  expect("match NULL out", XVLM_ERR_INVALID_ARGUMENT, "probabilities", [&](char** e) { return xvlm_match(context, image, texts, 1, nullptr, e); });
  expect("ground 129 phrases", XVLM_ERR_LIMIT, "at most 128", [&](char** e) { return xvlm_ground(context, image, many.data(), many.size(), &boxes, e); });
  const char* bad_phrases[] = {"a star", "\x80 star"};
  expect("ground invalid UTF-8", XVLM_ERR_TEXT, "UTF-8", [&](char** e) { return xvlm_ground(context, image, bad_phrases, 2, &boxes, e); });
  expect("ground NULL out", XVLM_ERR_INVALID_ARGUMENT, "boxes", [&](char** e) { return xvlm_ground(context, image, texts, 1, nullptr, e); });
  expect("ground NULL image", XVLM_ERR_INVALID_ARGUMENT, "image is NULL", [&](char** e) { return xvlm_ground(context, nullptr, texts, 1, &boxes, e); });
  // 40 phrases: past the export's 32 text rows, so the call is cut in two.
  std::vector<const char*> forty(40, "a blue square");
  expect("ground 40 phrases", XVLM_OK, "", [&](char** e) {
    const xvlm_status s = xvlm_ground(context, image, forty.data(), forty.size(), &boxes, e);
    if (s == XVLM_OK && (boxes->count != 40 || std::memcmp(&boxes->boxes[0], &boxes->boxes[39], sizeof(xvlm_box)) != 0)) {
      std::printf("FAIL 40 phrases: the cut call gave different boxes for equal phrases\n");
      ++failures;
    }
    xvlm_boxes_free(boxes);
    return s;
  });

  // ---- caption
  xvlm_caption* caption = nullptr;
  auto caption_with = [&](int beams, int max_length, int min_length) {
    return [=, &caption](char** e) {
      const xvlm_caption_options o{beams, max_length, min_length};
      const xvlm_status s = xvlm_caption_image(context, image, &o, &caption, e);
      if (s == XVLM_OK) xvlm_caption_free(caption);
      return s;
    };
  };
  expect("caption 0 beams", XVLM_ERR_INVALID_ARGUMENT, "num_beams", caption_with(0, -1, -1));
  expect("caption 129 beams", XVLM_ERR_LIMIT, "num_beams", caption_with(129, -1, -1));
  expect("caption max_length past bound", XVLM_ERR_LIMIT, "decoder tokens", caption_with(3, 41, -1));
  expect("caption max_length within prompt", XVLM_ERR_INVALID_ARGUMENT, "prompt", caption_with(3, 4, -1));
  expect("caption negative min_length", XVLM_ERR_INVALID_ARGUMENT, "min_length", caption_with(3, -1, -5));
  expect("caption min_length past max_length", XVLM_ERR_INVALID_ARGUMENT, "min_length", caption_with(3, 10, 11));
  expect("caption greedy min_length", XVLM_ERR_INVALID_ARGUMENT, "beam search only", caption_with(1, -1, 10));
  expect("caption NULL out", XVLM_ERR_INVALID_ARGUMENT, "caption", [&](char** e) { return xvlm_caption_image(context, image, nullptr, nullptr, e); });
  expect("caption NULL context", XVLM_ERR_INVALID_ARGUMENT, "context is NULL", [&](char** e) { return xvlm_caption_image(nullptr, image, nullptr, &caption, e); });
  // 10 beams: past the export's 8 decoder rows, so every step is cut in two.
  expect("caption 10 beams", XVLM_OK, "", caption_with(10, 12, -1));
  expect("caption default", XVLM_OK, "", [&](char** e) {
    const xvlm_status s = xvlm_caption_image(context, image, nullptr, &caption, e);
    if (s == XVLM_OK) xvlm_caption_free(caption);
    return s;
  });

  // ---- answer
  xvlm_answers* answers = nullptr;
  auto answer = [&](xvlm_context* c, const xvlm_image* i, const char* question, const char* const* list, std::size_t count, int k) {
    return [=, &answers](char** e) {
      const xvlm_status s = xvlm_answer(c, i, question, list, count, k, &answers, e);
      if (s == XVLM_OK) xvlm_answers_free(answers);
      return s;
    };
  };
  const char* colours[] = {"red", "blue", "green", "yellow", "pink", "purple", "orange", "cyan", "black", "white"};
  expect("answer without a vqa head", XVLM_ERR_MODEL, "no answer decoder", answer(context, image, "what color?", colours, 3, -1));
  expect("answer NULL context", XVLM_ERR_INVALID_ARGUMENT, "context is NULL", answer(nullptr, image, "what color?", nullptr, 0, -1));
  expect("answer NULL image", XVLM_ERR_INVALID_ARGUMENT, "image is NULL", answer(context, nullptr, "what color?", nullptr, 0, -1));
  expect("answer NULL question", XVLM_ERR_INVALID_ARGUMENT, "question is NULL", answer(context, image, nullptr, nullptr, 0, -1));
  expect("answer NULL out", XVLM_ERR_INVALID_ARGUMENT, "answers output", [&](char** e) { return xvlm_answer(context, image, "what?", nullptr, 0, -1, nullptr, e); });
  expect("answer NULL list, count 3", XVLM_ERR_INVALID_ARGUMENT, "answers is NULL", answer(context, image, "what color?", nullptr, 3, -1));
  expect("answer list, count 0", XVLM_ERR_INVALID_ARGUMENT, "count 0", answer(context, image, "what color?", colours, 0, -1));
  expect("answer NULL answer", XVLM_ERR_INVALID_ARGUMENT, "answers[1] is NULL", answer(context, image, "what color?", texts, 3, -1));
  expect("answer 100k-character question", XVLM_ERR_LIMIT, "4096 bytes", answer(context, image, long_text.c_str(), nullptr, 0, -1));
  expect("answer 65537 answers", XVLM_ERR_LIMIT, "at most 65536", answer(context, image, "what?", colours, 65537, -1));
  if (argc == 5) {
    xvlm_model* vqa = nullptr;
    xvlm_context* asking = nullptr;
    expect("open a vqa export", XVLM_OK, "", [&](char** e) { return xvlm_model_open(argv[4], 1, &vqa, e); });
    expect("vqa context", XVLM_OK, "", [&](char** e) { return xvlm_context_create(vqa, &asking, e); });
    std::vector<std::string> words;
    for (int w = 0; w < 45; ++w) words.push_back("w" + std::to_string(w));
    std::string forty_five;
    for (const std::string& w : words) forty_five += w + " ";
    const char* too_long[] = {"red", forty_five.c_str()};
    const char* bad_answers[] = {"red", "bl\xffue"};
    expect("answer empty question", XVLM_ERR_TEXT, "empty", answer(asking, image, "", colours, 3, -1));
    expect("answer punctuation-only question", XVLM_ERR_TEXT, "empty", answer(asking, image, "?!", nullptr, 0, -1));
    expect("answer invalid UTF-8 question", XVLM_ERR_TEXT, "UTF-8", answer(asking, image, "what \xff color?", nullptr, 0, -1));
    expect("answer invalid UTF-8 answer", XVLM_ERR_TEXT, "answers[1]", answer(asking, image, "what color?", bad_answers, 2, -1));
    expect("answer past the decoder bound", XVLM_ERR_LIMIT, "answers[1]", answer(asking, image, "what color?", too_long, 2, -1));
    expect("answer k 0", XVLM_ERR_INVALID_ARGUMENT, "k must be", answer(asking, image, "what color?", colours, 3, 0));
    expect("answer k -2", XVLM_ERR_INVALID_ARGUMENT, "k must be", answer(asking, image, "what color?", colours, 3, -2));
    expect("answer k 129", XVLM_ERR_LIMIT, "k 129", answer(asking, image, "what color?", colours, 3, 129));
    expect("answer ranked, k past the count", XVLM_OK, "", answer(asking, image, "what color?", colours, 3, 5));
    // 10 answers, k 10: past the export's 8 decoder rows, so re-scoring is cut in two.
    expect("answer 10 ranked", XVLM_OK, "", [&](char** e) {
      const xvlm_status s = xvlm_answer(asking, image, "what color is the circle?", colours, 10, 10, &answers, e);
      double total = 0.0;
      for (std::size_t a = 0; s == XVLM_OK && a < answers->count; ++a) total += answers->answers[a].share;
      if (s == XVLM_OK && (answers->count != 10 || !answers->ranked || std::fabs(total - 1.0) > 1e-5)) {
        std::printf("FAIL 10 ranked: %zu candidates, shares summing to %f\n", answers->count, total);
        ++failures;
      }
      if (s == XVLM_OK) xvlm_answers_free(answers);
      return s;
    });
    expect("answer the model's list", XVLM_OK, "", answer(asking, image, "what color?", nullptr, 0, -1));
    xvlm_context_destroy(asking);
    xvlm_model_close(vqa);
  }

  xvlm_image_destroy(image);
  xvlm_context_destroy(context);
  xvlm_model_close(model);
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
