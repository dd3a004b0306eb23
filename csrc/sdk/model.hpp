// The SDK's model and context: the C++ behind the C API (c_api.cpp), and what each task computes.
//
// Model: an export directory opened and verified once (manifest, hashes, programs, vocabulary); immutable
// afterwards, so any number of threads may share it. Context: one thread's working state (a GraphSession);
// tasks run on a context, never on two threads at once.
//
// The tasks are xvlm_edge/api.py's on one image, argument for argument:
// - check: the ITM probability of the statement (softmax of the ITM head, class "match") and the verdict
//   probability >= threshold (the config's calibrated check_threshold unless given), compared in float32
//   as torch compares a float32 tensor with a Python float;
// - match: that probability for each text;
// - ground: the box head's sigmoid (cx, cy, w, h) mapped to [x1, y1, x2, y2] pixels of the original image
//   (the official grounding_eval_bbox) and clipped to it (tasks/ground.py);
// - caption: the configured prompt, greedy (1 beam) or beam search (decoding.hpp), the text being the
//   decoded ids without the prompt's characters;
// - answer (exports with the vqa graphs): the question cleaned with pre_question and encoded over the
//   image; ranked over the given answers, else the export's answer list (answering.hpp), else generated
//   greedily from [CLS] for at most the config's answer_max_length tokens.
// Texts are cleaned with pre_caption, tokenised `[CLS] X` to the config's max_tokens and padded to the
// longest, all texts of a call in one batch (at most kTextChunk).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "answering.hpp"
#include "bounded_calls.hpp"
#include "xvlm_edge/preprocess.hpp"
#include "xvlm_edge/tokenizer.hpp"

namespace xvlm_edge::sdk {

// A count or size past what the export or the SDK takes (texts per call, beams, max_length, text bytes).
class LimitError : public InputError {
 public:
  using InputError::InputError;
};

// The SDK's own limits, beside the export's bounds (documented in csrc/README.md).
inline constexpr std::size_t kMaxTextBytes = 4096;  // a statement or phrase, before cleaning
inline constexpr int kMaxBeams = 128;               // xvlm_edge.graphs.DECODER_ROWS, as the Python API
inline constexpr int kMaxAnswerK = 128;             // the same rows: one question's re-scored candidates
inline constexpr std::size_t kMaxAnswers = 65536;   // candidate answers per call (the official VQA list: 3,128)

struct Verdict {
  bool verdict = false;
  double probability = 0.0;
  double threshold = 0.0;
};

struct Box {
  double xyxy[4] = {0, 0, 0, 0};    // pixels of the original image, clipped to it
  double cxcywh[4] = {0, 0, 0, 0};  // the clipped box normalised by the image's width and height
  double raw_cxcywh[4] = {0, 0, 0, 0};  // the head's output before clipping
  bool clipped = false;
};

struct Caption {
  std::string text;
  std::vector<std::int64_t> token_ids;  // prompt + generated, eos included when it fits
  double logprob = 0.0;
  double probability = 0.0;  // exp(logprob)
  bool truncated = false;
};

struct CaptionOptions {
  int num_beams = -1;   // -1: the config's caption_num_beams
  int max_length = -1;  // -1: the config's caption_max_length (counts the prompt's tokens)
  int min_length = -1;  // -1: min(config caption_min_length, max_length); beam search only
};

// One re-scored candidate of a ranked question (tasks/vqa.py RankedAnswer).
struct RankedAnswer {
  std::string text;
  double probability = 0.0;  // exp(logprob): P(the answer's tokens and [SEP] | image, question)
  double logprob = 0.0;      // the summed log-probability of its tokens and [SEP]
  double share = 0.0;        // the official ranking score: a softmax over the k candidates
};

struct Answer {
  std::string text;
  double probability = 0.0;  // ranked: the chosen candidate's; generated: exp(logprob)
  double logprob = 0.0;      // ranked: the chosen candidate's; generated: the mean over the generated tokens
  bool ranked = false;
  std::vector<RankedAnswer> candidates;  // ranked: the k candidates, largest share first; generated: empty
};

class Context;

class Model {
 public:
  // Opens and verifies the export directory; threads > 0 sizes ExecuTorch's process-wide thread pool and
  // the image resizer (0: one per core).
  Model(const std::string& export_dir, int threads);

  const Manifest& manifest() const noexcept { return manifest_; }
  const Tokenizer& tokenizer() const noexcept { return tokenizer_; }
  // The answer decoder, or nullptr when the export has no vqa graphs.
  const AnswerSetup* answer_setup() const noexcept { return answer_ ? &*answer_ : nullptr; }
  std::unique_ptr<Context> create_context() const;

 private:
  friend class Context;
  Manifest manifest_;
  Tokenizer tokenizer_;
  std::optional<AnswerSetup> answer_;
  std::unique_ptr<GraphEngine> engine_;
  int threads_ = 0;
};

class Context {
 public:
  explicit Context(const Model& model);

  Verdict check(const Image& image, const std::string& statement, const double* threshold);
  std::vector<double> match(const Image& image, const std::vector<std::string>& texts);
  std::vector<Box> ground(const Image& image, const std::vector<std::string>& phrases);
  Caption caption(const Image& image, const CaptionOptions& options);
  // answers: the candidates to rank, or nullptr for the export's answer list (generation when it has none).
  // k: the candidates re-scored, 1 to kMaxAnswerK (at most the candidates), or -1 for the config's vqa_k_test;
  // generation takes no k (-1 only).
  Answer answer(const Image& image, const std::string& question, const std::vector<std::string>* answers, int k);

 private:
  Tensor image_embeds(const Image& image);
  // ITM logits and boxes of texts cleaned and tokenised as the Python API does.
  FusionHeads fuse(const Image& image, const std::vector<std::string>& texts);

  const Model& model_;
  std::unique_ptr<GraphSession> session_;
};

}  // namespace xvlm_edge::sdk
