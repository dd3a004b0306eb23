#include "model.hpp"

#include <algorithm>
#include <cmath>

#include "../executorch/executorch_engine.hpp"
#include "decoding.hpp"

namespace xvlm_edge::sdk {
namespace {

// The official test transform's statistics (xvlm_edge.preprocess.CLIP_MEAN / CLIP_STD), used for every backbone.
constexpr std::array<float, 3> kMean = {0.48145466f, 0.4578275f, 0.40821073f};
constexpr std::array<float, 3> kStd = {0.26862954f, 0.26130258f, 0.27577711f};

Tokenizer load_tokenizer(const Manifest& manifest) {
  try {
    return Tokenizer::from_file(manifest.vocab_path);
  } catch (const VocabError& e) {
    throw ModelError(std::string("the export's vocabulary is unusable: ") + e.what());
  }
}

void check_texts(const std::vector<std::string>& texts, const char* what) {
  if (texts.empty()) throw InputError(std::string("no ") + what + " given (count 0)");
  if (static_cast<std::int64_t>(texts.size()) > kTextChunk) {
    throw LimitError(std::to_string(texts.size()) + " " + what + " in one call; the SDK takes at most " + std::to_string(kTextChunk));
  }
  for (std::size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].size() > kMaxTextBytes) {
      throw LimitError(std::string(what) + "[" + std::to_string(i) + "] is " + std::to_string(texts[i].size()) + " bytes; the SDK takes at most " +
                       std::to_string(kMaxTextBytes));
    }
  }
}

// softmax(logits)[1] of one (no match, match) row, in float32 as torch computes it.
float match_probability(const float* logits) {
  const float top = std::max(logits[0], logits[1]);
  const float e0 = std::exp(logits[0] - top), e1 = std::exp(logits[1] - top);
  return e1 / (e0 + e1);
}

// tasks/ground.py to_box: normalised (cx, cy, w, h) of the squashed image -> pixels of the original, clipped.
Box to_box(const float* cxcywh, int width, int height) {
  Box box;
  const double w = width, h = height;
  double raw[4];
  for (int i = 0; i < 4; ++i) raw[i] = static_cast<double>(cxcywh[i]);
  const double cx = raw[0] * w, cy = raw[1] * h, bw = raw[2] * w, bh = raw[3] * h;
  double x1 = cx - bw / 2, y1 = cy - bh / 2;
  double x2 = x1 + bw, y2 = y1 + bh;
  std::copy(raw, raw + 4, box.raw_cxcywh);
  if (x1 >= 0 && y1 >= 0 && x2 <= w && y2 <= h) {
    box.xyxy[0] = x1, box.xyxy[1] = y1, box.xyxy[2] = x2, box.xyxy[3] = y2;
    std::copy(raw, raw + 4, box.cxcywh);
    return box;
  }
  auto clip = [](double v, double hi) { return std::min(std::max(v, 0.0), hi); };
  x1 = clip(x1, w), x2 = clip(x2, w), y1 = clip(y1, h), y2 = clip(y2, h);
  box.xyxy[0] = x1, box.xyxy[1] = y1, box.xyxy[2] = x2, box.xyxy[3] = y2;
  box.cxcywh[0] = (x1 + x2) / 2 / w, box.cxcywh[1] = (y1 + y2) / 2 / h, box.cxcywh[2] = (x2 - x1) / w, box.cxcywh[3] = (y2 - y1) / h;
  box.clipped = true;
  return box;
}

// The first `count` code points of UTF-8 `text` removed (Python's str slicing; decode output is valid UTF-8).
std::string drop_code_points(const std::string& text, std::size_t count) {
  std::size_t i = 0;
  for (std::size_t seen = 0; i < text.size() && seen < count; ++seen) {
    ++i;
    while (i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
  }
  return text.substr(i);
}

std::size_t code_points(const std::string& text) {
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// The parts of the export agree with one another where the tasks rely on it: the config's image side is
// the vision program's, and every token id the vocabulary can produce indexes the decoder's logits.
void check_consistent(const Manifest& m, const Tokenizer& tokenizer) {
  const std::vector<ShapeDim>& pixels = m.graph("vision").inputs.at(0).shape;
  if (pixels.size() != 4 || pixels[2].size != m.settings.image_res || pixels[3].size != m.settings.image_res) {
    throw ModelError("the export's config says image_res " + std::to_string(m.settings.image_res) +
                     ", but the vision program does not take images of that side");
  }
  const GraphEntry& step = m.graph("caption_step");
  const std::vector<ShapeDim>& logits = step.outputs.at(step.output_index("logits")).shape;
  if (logits.size() != 2 || logits[1].size != static_cast<std::int64_t>(tokenizer.size())) {
    throw ModelError("the export's vocabulary has " + std::to_string(tokenizer.size()) +
                     " tokens, but the caption decoder's logits are not that wide");
  }
}

}  // namespace

Model::Model(const std::string& export_dir, int threads)
    : manifest_(Manifest::open(export_dir)), tokenizer_(load_tokenizer(manifest_)), threads_(threads) {
  if (threads < 0) throw InputError("threads must be 0 (one per core) or positive, got " + std::to_string(threads));
  check_consistent(manifest_, tokenizer_);
  answer_ = load_answer_setup(manifest_, tokenizer_);
  engine_ = open_executorch_engine(manifest_, threads);
}

std::unique_ptr<Context> Model::create_context() const { return std::make_unique<Context>(*this); }

Context::Context(const Model& model) : model_(model), session_(model.engine_->open_session()) {}

Tensor Context::image_embeds(const Image& image) {
  const int res = model_.manifest_.settings.image_res;
  const ImageView view{image.data.data(), image.width, image.height, image.channels};
  std::vector<float> chw = preprocess(view, res, kMean, kStd, model_.threads_);
  Tensor pixels(DataType::kFloat32, {1, 3, res, res});
  std::copy(chw.begin(), chw.end(), pixels.data<float>());
  return encode_image(*session_, pixels);
}

FusionHeads Context::fuse(const Image& image, const std::vector<std::string>& texts) {
  const int max_tokens = model_.manifest_.settings.max_tokens;
  std::vector<std::vector<std::int64_t>> rows;
  for (const std::string& text : texts) rows.push_back(model_.tokenizer_.encode(pre_caption(text), max_tokens));
  std::size_t width = 0;
  for (const auto& r : rows) width = std::max(width, r.size());
  const std::int64_t k = static_cast<std::int64_t>(rows.size()), t = static_cast<std::int64_t>(width);
  Tensor ids = Tensor::filled({k, t}, model_.tokenizer_.pad_id());
  Tensor atts = Tensor::filled({k, t}, std::int64_t{0});
  for (std::int64_t i = 0; i < k; ++i) {
    const auto& r = rows[static_cast<std::size_t>(i)];
    std::copy(r.begin(), r.end(), ids.data<std::int64_t>() + i * t);
    std::fill_n(atts.data<std::int64_t>() + i * t, r.size(), 1);
  }
  return fuse_texts(*session_, model_.manifest_, image_embeds(image), ids, atts);
}

Verdict Context::check(const Image& image, const std::string& statement, const double* threshold) {
  if (threshold && !(*threshold >= 0.0 && *threshold <= 1.0)) {
    throw InputError("threshold must be a probability from 0 to 1, got " + std::to_string(*threshold));
  }
  check_texts({statement}, "statements");
  Verdict v;
  v.threshold = threshold ? *threshold : model_.manifest_.settings.check_threshold;
  const FusionHeads heads = fuse(image, {statement});
  const float p = match_probability(heads.itm_logits.data<float>());
  v.probability = p;
  v.verdict = p >= static_cast<float>(v.threshold);
  return v;
}

std::vector<double> Context::match(const Image& image, const std::vector<std::string>& texts) {
  check_texts(texts, "texts");
  const FusionHeads heads = fuse(image, texts);
  std::vector<double> out;
  for (std::size_t i = 0; i < texts.size(); ++i) out.push_back(match_probability(heads.itm_logits.data<float>() + 2 * i));
  return out;
}

std::vector<Box> Context::ground(const Image& image, const std::vector<std::string>& phrases) {
  check_texts(phrases, "phrases");
  const FusionHeads heads = fuse(image, phrases);
  std::vector<Box> out;
  for (std::size_t i = 0; i < phrases.size(); ++i) out.push_back(to_box(heads.bbox.data<float>() + 4 * i, image.width, image.height));
  return out;
}

Caption Context::caption(const Image& image, const CaptionOptions& options) {
  const TaskSettings& s = model_.manifest_.settings;
  const std::vector<std::int64_t> prompt = model_.tokenizer_.caption_prompt_ids(s.caption_prompt);
  const int prompt_length = static_cast<int>(prompt.size());
  // The decoder is fed at most max_length - 1 tokens; the export plans decoder_tokens.
  const int longest = static_cast<int>(std::min<std::int64_t>(s.max_position_embeddings, model_.manifest_.limits.decoder_tokens));
  if (options.num_beams != -1 && options.num_beams < 1) {
    throw InputError("num_beams must be from 1 to " + std::to_string(kMaxBeams) + " (or -1 for the default), got " + std::to_string(options.num_beams));
  }
  if (options.num_beams > kMaxBeams) {
    throw LimitError("num_beams " + std::to_string(options.num_beams) + " is past the SDK's limit of " + std::to_string(kMaxBeams) + " decoder rows");
  }
  const int beams = options.num_beams == -1 ? s.caption_num_beams : options.num_beams;
  if (options.max_length != -1 && options.max_length <= prompt_length) {
    throw InputError("max_length must exceed the " + std::to_string(prompt_length) + "-token prompt it counts, got " + std::to_string(options.max_length));
  }
  const int max_length = options.max_length == -1 ? s.caption_max_length : options.max_length;
  if (max_length > longest) {
    throw LimitError("max_length " + std::to_string(max_length) + " is past the export's bound of " + std::to_string(longest) +
                     " decoder tokens (re-export with larger bounds)");
  }
  if (max_length <= prompt_length) throw ModelError("the config's tasks.caption_max_length does not exceed the prompt");
  if (options.min_length < -1 || options.min_length > max_length) {
    throw InputError("min_length must be from 0 to max_length " + std::to_string(max_length) + " (or -1 for the default), got " +
                     std::to_string(options.min_length));
  }
  if (beams == 1 && options.min_length > prompt_length) {
    throw InputError("min_length applies to beam search only; greedy decoding (num_beams 1) has no minimum, as the official");
  }
  const int min_length = options.min_length == -1 ? std::min(s.caption_min_length, max_length) : options.min_length;

  StepDecoder decoder(*session_, model_.manifest_, "caption", model_.manifest_.caption_cache, image_embeds(image));
  const std::int64_t eos = model_.tokenizer_.sep_id();
  const Generated g = beams == 1 ? greedy(decoder, prompt, max_length, eos) : beam_search(decoder, prompt, beams, max_length, min_length, eos);
  Caption c;
  c.token_ids = g.ids;
  c.text = drop_code_points(model_.tokenizer_.decode(g.ids), code_points(s.caption_prompt));
  c.logprob = g.logprob;
  c.probability = std::exp(g.logprob);
  c.truncated = g.truncated;
  return c;
}

Answer Context::answer(const Image& image, const std::string& question, const std::vector<std::string>* answers, int k) {
  const AnswerSetup* setup = model_.answer_setup();
  if (!setup) {
    throw ModelError("the export " + model_.manifest_.directory + " has no answer decoder (multimodal and answer_* graphs): "
                     "export a checkpoint with the vqa head to answer questions");
  }
  check_texts({question}, "questions");
  const Tokenizer& tokenizer = model_.tokenizer_;
  const std::string cleaned = pre_question(question);
  if (cleaned.find_first_not_of(" \t\n\r\f\v") == std::string::npos) throw TextError("question \"" + question.substr(0, 80) + "\" is empty after question cleaning");
  std::vector<std::vector<std::int64_t>> given;
  if (answers) {
    if (answers->empty()) throw InputError("no answers given (count 0); pass NULL to rank the export's answer list");
    if (answers->size() > kMaxAnswers) {
      throw LimitError(std::to_string(answers->size()) + " answers in one call; the SDK takes at most " + std::to_string(kMaxAnswers));
    }
    for (std::size_t i = 0; i < answers->size(); ++i) {
      const std::string& a = (*answers)[i];
      if (a.size() > kMaxTextBytes) {
        throw LimitError("answers[" + std::to_string(i) + "] is " + std::to_string(a.size()) + " bytes; the SDK takes at most " + std::to_string(kMaxTextBytes));
      }
      try {
        given.push_back(encode_answer(tokenizer, a));
      } catch (const TextError& e) {
        throw TextError("answers[" + std::to_string(i) + "]: " + e.what());
      }
      if (static_cast<std::int64_t>(given.back().size()) - 1 > model_.manifest_.limits.decoder_tokens) {
        throw LimitError("answers[" + std::to_string(i) + "] has " + std::to_string(given.back().size()) + " tokens with [CLS] and [SEP]; re-scoring it needs " +
                         std::to_string(given.back().size() - 1) + " decoder tokens, past the export's bound of " +
                         std::to_string(model_.manifest_.limits.decoder_tokens));
      }
    }
  }
  const std::vector<std::string>& candidates = answers ? *answers : setup->answer_list;
  const bool generate = candidates.empty();
  if (generate && k != -1) {
    throw InputError("k ranks candidate answers, but this call generates: no answers given and the export has no answer list (pass k -1)");
  }
  if (k != -1 && k < 1) throw InputError("k must be from 1 to " + std::to_string(kMaxAnswerK) + " (or -1 for the default), got " + std::to_string(k));
  if (k > kMaxAnswerK) throw LimitError("k " + std::to_string(k) + " is past the SDK's limit of " + std::to_string(kMaxAnswerK) + " candidates re-scored");
  const std::int64_t longest = model_.manifest_.limits.decoder_tokens;
  if (generate && setup->max_new_tokens > longest) {
    throw LimitError("the config's tasks.answer_max_length " + std::to_string(setup->max_new_tokens) + " is past the export's bound of " +
                     std::to_string(longest) + " decoder tokens (re-export with larger bounds)");
  }

  const std::vector<std::int64_t> ids = tokenizer.encode(cleaned, model_.manifest_.settings.max_tokens);
  const std::int64_t t = static_cast<std::int64_t>(ids.size());
  Tensor question_ids(DataType::kInt64, {1, t});
  std::copy(ids.begin(), ids.end(), question_ids.data<std::int64_t>());
  const Tensor question_atts = Tensor::filled({1, t}, std::int64_t{1});
  const Tensor states = question_states(*session_, image_embeds(image), question_ids, question_atts);
  StepDecoder decoder(*session_, model_.manifest_, "answer", setup->cache, states);

  Answer out;
  if (generate) {
    const Generated g = greedy(decoder, {tokenizer.cls_id()}, 1 + setup->max_new_tokens, tokenizer.sep_id());
    out.text = tokenizer.decode(g.ids);
    out.logprob = g.logprob;
    out.probability = std::exp(g.logprob);
    return out;
  }
  const std::vector<Scored> scored =
      rank_answers(decoder, answers ? given : setup->list_ids, k == -1 ? setup->k_test : k, tokenizer.pad_id(), longest);
  out.ranked = true;
  for (const Scored& s : scored) out.candidates.push_back({candidates[s.index], std::exp(s.logprob), s.logprob, s.share});
  out.text = out.candidates.front().text;
  out.probability = out.candidates.front().probability;
  out.logprob = out.candidates.front().logprob;
  return out;
}

}  // namespace xvlm_edge::sdk
