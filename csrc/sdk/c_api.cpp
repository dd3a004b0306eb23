// The C API (xvlm_edge.h) over the SDK's C++: argument checks, ownership, and the one place exceptions
// become statuses. Every entry point runs its body inside `guarded`, so no exception crosses into C.
#include "xvlm_edge/xvlm_edge.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "model.hpp"
#include "xvlm_edge/image_io.hpp"

struct xvlm_model {
  std::unique_ptr<xvlm_edge::sdk::Model> model;
};
struct xvlm_context {
  std::unique_ptr<xvlm_edge::sdk::Context> context;
};
struct xvlm_image {
  xvlm_edge::Image image;
};

namespace {

using namespace xvlm_edge;

char* copy_string(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out) std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

xvlm_status fail(char** error, xvlm_status status, const char* message) {
  if (error) *error = copy_string(message);  // NULL if even the message cannot be allocated
  return status;
}

// Runs `body`, mapping each exception to its status (subclasses before their bases).
template <class Body>
xvlm_status guarded(char** error, Body&& body) noexcept {
  if (error) *error = nullptr;
  try {
    body();
    return XVLM_OK;
  } catch (const TextError& e) {
    return fail(error, XVLM_ERR_TEXT, e.what());
  } catch (const ImageError& e) {
    return fail(error, XVLM_ERR_IMAGE, e.what());
  } catch (const sdk::LimitError& e) {
    return fail(error, XVLM_ERR_LIMIT, e.what());
  } catch (const InputError& e) {
    return fail(error, XVLM_ERR_INVALID_ARGUMENT, e.what());
  } catch (const sdk::ModelError& e) {
    return fail(error, XVLM_ERR_MODEL, e.what());
  } catch (const VocabError& e) {
    return fail(error, XVLM_ERR_MODEL, e.what());
  } catch (const EngineError& e) {
    return fail(error, XVLM_ERR_ENGINE, e.what());
  } catch (const std::bad_alloc&) {
    return fail(error, XVLM_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(error, XVLM_ERR_INTERNAL, (std::string("internal error: ") + e.what()).c_str());
  } catch (...) {
    return fail(error, XVLM_ERR_INTERNAL, "internal error: an unknown exception");
  }
}

template <class T>
T& required(T* pointer, const char* name) {
  if (pointer == nullptr) throw InputError(std::string(name) + " is NULL");
  return *pointer;
}

void require_out(const void* out, const char* name) {
  if (out == nullptr) throw InputError(std::string(name) + " (the output pointer) is NULL");
}

// A NUL-terminated string no longer than the SDK takes; bounded, so an unterminated buffer is not scanned far.
std::string text_argument(const char* text, const std::string& name) {
  if (text == nullptr) throw InputError(name + " is NULL");
  const std::size_t length = strnlen(text, sdk::kMaxTextBytes + 1);
  if (length > sdk::kMaxTextBytes) {
    throw sdk::LimitError(name + " is longer than " + std::to_string(sdk::kMaxTextBytes) + " bytes, the SDK's limit for one text");
  }
  return std::string(text, length);
}

std::vector<std::string> text_list(const char* const* texts, std::size_t count, const char* name) {
  if (texts == nullptr) throw InputError(std::string(name) + " is NULL");
  if (count == 0) throw InputError(std::string("no ") + name + " given (count 0)");
  if (count > static_cast<std::size_t>(sdk::kTextChunk)) {
    throw sdk::LimitError(std::to_string(count) + " " + name + " in one call; the SDK takes at most " + std::to_string(sdk::kTextChunk));
  }
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) out.push_back(text_argument(texts[i], std::string(name) + "[" + std::to_string(i) + "]"));
  return out;
}

PixelFormat pixel_format(int format) {
  switch (format) {
    case XVLM_PIXEL_RGB: return PixelFormat::RGB;
    case XVLM_PIXEL_BGR: return PixelFormat::BGR;
    case XVLM_PIXEL_RGBA: return PixelFormat::RGBA;
    case XVLM_PIXEL_BGRA: return PixelFormat::BGRA;
    case XVLM_PIXEL_GRAY: return PixelFormat::GRAY;
    case XVLM_PIXEL_NV12: return PixelFormat::NV12;
  }
  throw InputError("format " + std::to_string(format) + " is not an xvlm_pixel_format");
}

// A {count, items} result the caller frees with its *_free function (calloc'd, as those free() it).
template <class Result, class Item>
Result* result_array(std::size_t count, Item* Result::*items) {
  auto* out = static_cast<Result*>(std::calloc(1, sizeof(Result)));
  if (!out) throw std::bad_alloc();
  out->*items = static_cast<Item*>(std::calloc(count ? count : 1, sizeof(Item)));
  if (!(out->*items)) {
    std::free(out);
    throw std::bad_alloc();
  }
  out->count = count;
  return out;
}

}  // namespace

extern "C" {

int xvlm_api_version(void) { return XVLM_EDGE_API_VERSION; }
const char* xvlm_version(void) { return XVLM_EDGE_VERSION; }

const char* xvlm_status_name(int status) {
  switch (status) {
    case XVLM_OK: return "XVLM_OK";
    case XVLM_ERR_INVALID_ARGUMENT: return "XVLM_ERR_INVALID_ARGUMENT";
    case XVLM_ERR_TEXT: return "XVLM_ERR_TEXT";
    case XVLM_ERR_IMAGE: return "XVLM_ERR_IMAGE";
    case XVLM_ERR_LIMIT: return "XVLM_ERR_LIMIT";
    case XVLM_ERR_MODEL: return "XVLM_ERR_MODEL";
    case XVLM_ERR_ENGINE: return "XVLM_ERR_ENGINE";
    case XVLM_ERR_OUT_OF_MEMORY: return "XVLM_ERR_OUT_OF_MEMORY";
    case XVLM_ERR_INTERNAL: return "XVLM_ERR_INTERNAL";
  }
  return "unknown status";
}

void xvlm_error_free(char* error) { std::free(error); }

xvlm_status xvlm_model_open(const char* export_dir, int threads, xvlm_model** model, char** error) {
  return guarded(error, [&] {
    require_out(model, "model");
    const std::string dir = text_argument(export_dir, "export_dir");
    if (dir.empty()) throw InputError("export_dir is an empty string");
    if (threads < 0) throw InputError("threads must be 0 (one per core) or positive, got " + std::to_string(threads));
    auto opened = std::make_unique<xvlm_model>();
    opened->model = std::make_unique<sdk::Model>(dir, threads);
    *model = opened.release();
  });
}

void xvlm_model_close(xvlm_model* model) { delete model; }

xvlm_status xvlm_context_create(const xvlm_model* model, xvlm_context** context, char** error) {
  return guarded(error, [&] {
    const xvlm_model& m = required(model, "model");
    require_out(context, "context");
    auto created = std::make_unique<xvlm_context>();
    created->context = m.model->create_context();
    *context = created.release();
  });
}

void xvlm_context_destroy(xvlm_context* context) { delete context; }

xvlm_status xvlm_image_from_buffer(const uint8_t* data, size_t size, int width, int height, size_t stride, int format,
                                   xvlm_image** image, char** error) {
  return guarded(error, [&] {
    if (data == nullptr) throw InputError("data is NULL");
    require_out(image, "image");
    auto made = std::make_unique<xvlm_image>();
    made->image = from_buffer(data, size, width, height, stride, pixel_format(format));
    *image = made.release();
  });
}

xvlm_status xvlm_image_from_file(const char* path, xvlm_image** image, char** error) {
  return guarded(error, [&] {
    if (path == nullptr) throw InputError("path is NULL");
    require_out(image, "image");
    auto made = std::make_unique<xvlm_image>();
    made->image = decode_image_file(path);
    *image = made.release();
  });
}

xvlm_status xvlm_image_size(const xvlm_image* image, int* width, int* height, char** error) {
  return guarded(error, [&] {
    const xvlm_image& i = required(image, "image");
    require_out(width, "width");
    require_out(height, "height");
    *width = i.image.width;
    *height = i.image.height;
  });
}

void xvlm_image_destroy(xvlm_image* image) { delete image; }

xvlm_status xvlm_check(xvlm_context* context, const xvlm_image* image, const char* statement, const double* threshold, xvlm_verdict* verdict,
                       char** error) {
  return guarded(error, [&] {
    xvlm_context& c = required(context, "context");
    const xvlm_image& i = required(image, "image");
    const std::string text = text_argument(statement, "statement");
    require_out(verdict, "verdict");
    const sdk::Verdict v = c.context->check(i.image, text, threshold);
    *verdict = {v.verdict ? 1 : 0, v.probability, v.threshold};
  });
}

xvlm_status xvlm_match(xvlm_context* context, const xvlm_image* image, const char* const* texts, size_t count, xvlm_probabilities** probabilities,
                       char** error) {
  return guarded(error, [&] {
    xvlm_context& c = required(context, "context");
    const xvlm_image& i = required(image, "image");
    const std::vector<std::string> list = text_list(texts, count, "texts");
    require_out(probabilities, "probabilities");
    const std::vector<double> found = c.context->match(i.image, list);
    auto* out = result_array(found.size(), &xvlm_probabilities::values);
    std::copy(found.begin(), found.end(), out->values);
    *probabilities = out;
  });
}

void xvlm_probabilities_free(xvlm_probabilities* probabilities) {
  if (!probabilities) return;
  std::free(probabilities->values);
  std::free(probabilities);
}

xvlm_status xvlm_ground(xvlm_context* context, const xvlm_image* image, const char* const* phrases, size_t count, xvlm_boxes** boxes,
                        char** error) {
  return guarded(error, [&] {
    xvlm_context& c = required(context, "context");
    const xvlm_image& i = required(image, "image");
    const std::vector<std::string> list = text_list(phrases, count, "phrases");
    require_out(boxes, "boxes");
    const std::vector<sdk::Box> found = c.context->ground(i.image, list);
    auto* out = result_array(found.size(), &xvlm_boxes::boxes);
    for (std::size_t k = 0; k < found.size(); ++k) {
      const sdk::Box& b = found[k];
      out->boxes[k] = {b.xyxy[0], b.xyxy[1], b.xyxy[2], b.xyxy[3], b.cxcywh[0], b.cxcywh[1], b.cxcywh[2], b.cxcywh[3], b.clipped ? 1 : 0};
    }
    *boxes = out;
  });
}

void xvlm_boxes_free(xvlm_boxes* boxes) {
  if (!boxes) return;
  std::free(boxes->boxes);
  std::free(boxes);
}

xvlm_caption_options xvlm_caption_options_default(void) { return {-1, -1, -1}; }

xvlm_status xvlm_caption_image(xvlm_context* context, const xvlm_image* image, const xvlm_caption_options* options, xvlm_caption** caption,
                               char** error) {
  return guarded(error, [&] {
    xvlm_context& c = required(context, "context");
    const xvlm_image& i = required(image, "image");
    require_out(caption, "caption");
    sdk::CaptionOptions o;
    if (options) o = {options->num_beams, options->max_length, options->min_length};
    const sdk::Caption found = c.context->caption(i.image, o);
    auto* out = static_cast<xvlm_caption*>(std::calloc(1, sizeof(xvlm_caption)));
    if (!out) throw std::bad_alloc();
    out->text = copy_string(found.text);
    out->token_ids = static_cast<int64_t*>(std::calloc(found.token_ids.size(), sizeof(int64_t)));
    if (!out->text || !out->token_ids) {
      xvlm_caption_free(out);
      throw std::bad_alloc();
    }
    std::copy(found.token_ids.begin(), found.token_ids.end(), out->token_ids);
    out->token_count = found.token_ids.size();
    out->logprob = found.logprob;
    out->probability = found.probability;
    out->truncated = found.truncated ? 1 : 0;
    *caption = out;
  });
}

void xvlm_caption_free(xvlm_caption* caption) {
  if (!caption) return;
  std::free(caption->text);
  std::free(caption->token_ids);
  std::free(caption);
}

xvlm_status xvlm_answer(xvlm_context* context, const xvlm_image* image, const char* question, const char* const* answers, size_t count, int k,
                        xvlm_answers** out, char** error) {
  return guarded(error, [&] {
    xvlm_context& c = required(context, "context");
    const xvlm_image& i = required(image, "image");
    const std::string text = text_argument(question, "question");
    require_out(out, "answers output");
    if (answers == nullptr && count != 0) throw InputError("answers is NULL but count is " + std::to_string(count) + "; pass count 0 for the model's answer list");
    if (answers != nullptr && count == 0) throw InputError("no answers given (count 0); pass answers NULL for the model's answer list");
    if (count > sdk::kMaxAnswers) {
      throw sdk::LimitError(std::to_string(count) + " answers in one call; the SDK takes at most " + std::to_string(sdk::kMaxAnswers));
    }
    std::vector<std::string> list;
    for (std::size_t a = 0; a < count; ++a) list.push_back(text_argument(answers[a], "answers[" + std::to_string(a) + "]"));
    const sdk::Answer found = c.context->answer(i.image, text, answers ? &list : nullptr, k);
    std::vector<sdk::RankedAnswer> rows = found.candidates;
    if (!found.ranked) rows.push_back({found.text, found.probability, found.logprob, -1.0});
    xvlm_answers* made = result_array(rows.size(), &xvlm_answers::answers);
    made->ranked = found.ranked ? 1 : 0;
    for (std::size_t a = 0; a < rows.size(); ++a) {
      made->answers[a] = {copy_string(rows[a].text), rows[a].probability, rows[a].logprob, rows[a].share};
      if (!made->answers[a].text) {
        xvlm_answers_free(made);
        throw std::bad_alloc();
      }
    }
    *out = made;
  });
}

void xvlm_answers_free(xvlm_answers* answers) {
  if (!answers) return;
  for (std::size_t a = 0; a < answers->count; ++a) std::free(answers->answers[a].text);
  std::free(answers->answers);
  std::free(answers);
}

}  // extern "C"
