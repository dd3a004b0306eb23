// A header-only C++17 wrapper over the C API (xvlm_edge.h): RAII handles, results as standard types, and
// xvlm::Error (status + message) thrown for every failed call. It adds no behaviour of its own.
//
//   xvlm::Model model = xvlm::Model::open("model/export/executorch-fp32");
//   xvlm::Context context(model);                      // one per thread; the model is shared
//   xvlm::Image page = xvlm::Image::from_file("page.jpg");
//   xvlm_verdict v = context.check(page, "there are three stars");
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "xvlm_edge/xvlm_edge.h"

namespace xvlm {

class Error : public std::runtime_error {
 public:
  Error(xvlm_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  xvlm_status status() const noexcept { return status_; }

 private:
  xvlm_status status_;
};

namespace detail {

// Takes the message's address, not its value: a call's arguments are evaluated in no fixed order, so the
// message must be read after the C function has stored it.
inline void check(xvlm_status status, char** error) {
  if (status == XVLM_OK) return;
  std::string message = *error ? *error : xvlm_status_name(status);
  xvlm_error_free(*error);
  throw Error(status, message);
}

template <class T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const noexcept { Free(p); }
};

}  // namespace detail

class Model {
 public:
  static Model open(const std::string& export_dir, int threads = 0) {
    xvlm_model* model = nullptr;
    char* error = nullptr;
    detail::check(xvlm_model_open(export_dir.c_str(), threads, &model, &error), &error);
    return Model(model);
  }
  const xvlm_model* get() const noexcept { return handle_.get(); }

 private:
  explicit Model(xvlm_model* model) : handle_(model) {}
  std::unique_ptr<xvlm_model, detail::Deleter<xvlm_model, xvlm_model_close>> handle_;
};

class Image {
 public:
  static Image from_file(const std::string& path) {
    xvlm_image* image = nullptr;
    char* error = nullptr;
    detail::check(xvlm_image_from_file(path.c_str(), &image, &error), &error);
    return Image(image);
  }
  static Image from_buffer(const std::uint8_t* data, std::size_t size, int width, int height, std::size_t stride, xvlm_pixel_format format) {
    xvlm_image* image = nullptr;
    char* error = nullptr;
    detail::check(xvlm_image_from_buffer(data, size, width, height, stride, format, &image, &error), &error);
    return Image(image);
  }
  int width() const { return size().first; }
  int height() const { return size().second; }
  const xvlm_image* get() const noexcept { return handle_.get(); }

 private:
  explicit Image(xvlm_image* image) : handle_(image) {}
  std::pair<int, int> size() const {
    int w = 0, h = 0;
    char* error = nullptr;
    detail::check(xvlm_image_size(handle_.get(), &w, &h, &error), &error);
    return {w, h};
  }
  std::unique_ptr<xvlm_image, detail::Deleter<xvlm_image, xvlm_image_destroy>> handle_;
};

struct Caption {
  std::string text;
  std::vector<std::int64_t> token_ids;
  double logprob = 0.0;
  double probability = 0.0;
  bool truncated = false;
};

struct Answer {
  std::string text;
  double probability = 0.0;
  double logprob = 0.0;
  double share = -1.0;  // -1 when generated
};

// answers[0] is the answer; ranked: the k candidates, largest share first; generated: one entry.
struct Answers {
  bool ranked = false;
  std::vector<Answer> answers;
};

// One thread's context. The Model must outlive it.
class Context {
 public:
  explicit Context(const Model& model) {
    xvlm_context* context = nullptr;
    char* error = nullptr;
    detail::check(xvlm_context_create(model.get(), &context, &error), &error);
    handle_.reset(context);
  }

  xvlm_verdict check(const Image& image, const std::string& statement, std::optional<double> threshold = std::nullopt) {
    xvlm_verdict verdict{};
    char* error = nullptr;
    detail::check(xvlm_check(handle_.get(), image.get(), statement.c_str(), threshold ? &*threshold : nullptr, &verdict, &error), &error);
    return verdict;
  }

  std::vector<double> match(const Image& image, const std::vector<std::string>& texts) {
    const std::vector<const char*> pointers = c_strings(texts);
    xvlm_probabilities* found = nullptr;
    char* error = nullptr;
    detail::check(xvlm_match(handle_.get(), image.get(), pointers.data(), pointers.size(), &found, &error), &error);
    std::unique_ptr<xvlm_probabilities, detail::Deleter<xvlm_probabilities, xvlm_probabilities_free>> owned(found);
    return std::vector<double>(found->values, found->values + found->count);
  }

  std::vector<xvlm_box> ground(const Image& image, const std::vector<std::string>& phrases) {
    const std::vector<const char*> pointers = c_strings(phrases);
    xvlm_boxes* found = nullptr;
    char* error = nullptr;
    detail::check(xvlm_ground(handle_.get(), image.get(), pointers.data(), pointers.size(), &found, &error), &error);
    std::unique_ptr<xvlm_boxes, detail::Deleter<xvlm_boxes, xvlm_boxes_free>> owned(found);
    return std::vector<xvlm_box>(found->boxes, found->boxes + found->count);
  }

  Caption caption(const Image& image, const xvlm_caption_options& options = xvlm_caption_options_default()) {
    xvlm_caption* found = nullptr;
    char* error = nullptr;
    detail::check(xvlm_caption_image(handle_.get(), image.get(), &options, &found, &error), &error);
    std::unique_ptr<xvlm_caption, detail::Deleter<xvlm_caption, xvlm_caption_free>> owned(found);
    return Caption{found->text, std::vector<std::int64_t>(found->token_ids, found->token_ids + found->token_count), found->logprob,
                   found->probability, found->truncated != 0};
  }

  // Ranks `answers`, or with std::nullopt the model's answer list (generates when it has none); k -1 is the
  // model's default (see xvlm_answer).
  Answers answer(const Image& image, const std::string& question, const std::optional<std::vector<std::string>>& answers = std::nullopt,
                 int k = -1) {
    const std::vector<const char*> pointers = answers ? c_strings(*answers) : std::vector<const char*>();
    xvlm_answers* found = nullptr;
    char* error = nullptr;
    detail::check(xvlm_answer(handle_.get(), image.get(), question.c_str(), answers ? pointers.data() : nullptr, pointers.size(), k, &found, &error),
                  &error);
    std::unique_ptr<xvlm_answers, detail::Deleter<xvlm_answers, xvlm_answers_free>> owned(found);
    Answers out{found->ranked != 0, {}};
    for (std::size_t i = 0; i < found->count; ++i) {
      const xvlm_ranked_answer& a = found->answers[i];
      out.answers.push_back({a.text, a.probability, a.logprob, a.share});
    }
    return out;
  }

 private:
  static std::vector<const char*> c_strings(const std::vector<std::string>& texts) {
    std::vector<const char*> out;
    for (const std::string& t : texts) out.push_back(t.c_str());
    return out;
  }
  std::unique_ptr<xvlm_context, detail::Deleter<xvlm_context, xvlm_context_destroy>> handle_;
};

}  // namespace xvlm
