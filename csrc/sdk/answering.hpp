// VQA answering: the answer decoder of an export (optional: loaded when the export has the vqa graphs) and
// the official two-stage ranking, as xvlm_edge/tasks/vqa.py computes it for one question.
//
// The question is encoded over the image by `multimodal`; the answer decoder cross-attends to the question
// states (its keys are question tokens). Ranking (model_vqa.rank_answer): the decoder's [CLS] step gives a
// softmax over the vocabulary; the k answers whose first token is most probable are kept, each re-scored
// as log p(first token) + the summed log-probabilities of its tokens after [CLS] ([SEP] included, the first
// token counted again as the official loss counts it); a softmax over the k (the share) orders them.
// Selections follow torch's CPU topk, ties included, so equal first-token probabilities (answers sharing a
// first token) pick the same candidates as the Python package.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "decoding.hpp"
#include "xvlm_edge/tokenizer.hpp"

namespace xvlm_edge::sdk {

// The graphs an export needs to answer questions (a checkpoint with the vqa head).
inline constexpr std::array<const char*, 4> kAnswerGraphs = {"multimodal", "answer_cross_kv", "answer_step", "answer_score"};

// The export's answer decoder, read once when the model opens.
struct AnswerSetup {
  CacheShape cache{};                                // the answer decoder's self-attention cache
  int k_test = 0;                                    // config tasks.vqa_k_test: the default k
  int max_new_tokens = 0;                            // config tasks.answer_max_length ([SEP] included)
  std::vector<std::string> answer_list;              // assets.answer_list (empty: open-ended generation)
  std::vector<std::vector<std::int64_t>> list_ids;  // each answer as encode_answer gives it
};

// The export's answer decoder, or nullopt when it has none of kAnswerGraphs. ModelError for an export with
// some of them only, graphs whose tensors differ from the catalogue's, logits narrower than the vocabulary,
// or an unreadable answer list or config.
std::optional<AnswerSetup> load_answer_setup(const Manifest& manifest, const Tokenizer& tokenizer);

// An answer candidate as the official VQA dataset tokenises it (`answer + "[SEP]"`, uncleaned):
// [CLS] pieces [SEP]. TextError for text that is not UTF-8.
std::vector<std::int64_t> encode_answer(const Tokenizer& tokenizer, const std::string& answer);

// One re-scored candidate: its index in the ranked list, its share (the within-k softmax) and the summed
// log-probability of its tokens and [SEP].
struct Scored {
  std::size_t index = 0;
  double share = 0.0;
  double logprob = 0.0;
};

// Ranks `answers` (encode_answer ids) for the question `decoder` reads: the min(k, count) candidates,
// largest share first. `longest` is the most tokens the decoder may hold (the export's decoder_tokens);
// a kept candidate needing more is refused with LimitError.
std::vector<Scored> rank_answers(StepDecoder& decoder, const std::vector<std::vector<std::int64_t>>& answers, int k, std::int64_t pad_id,
                                 std::int64_t longest);

}  // namespace xvlm_edge::sdk
