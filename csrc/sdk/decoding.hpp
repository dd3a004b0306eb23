// Greedy and beam-search decoding over a KV-cached decoder step (captions; greedy also generates open-ended
// VQA answers), token for token the semantics of xvlm_edge/tasks/decoding.py (its docstring names the
// official code each half follows):
// - greedy: OSCAR's loop. argmax each step; at max_length an unfinished row gets eos written over its last
//   token; the score is the mean log-probability of the generated tokens (eos included).
// - beam search: Hugging Face 4.12 generate(num_beams=n): length_penalty 1 (score = sum logprob / length,
//   prompt counted, eos not), early_stopping off, eos held back (logprob -inf) below min_length, 2n
//   candidates a step, an eos candidate kept only within the top n, stop at max_length or when n finished
//   hypotheses cannot be beaten by any open beam.
// Log-softmax is float32 like torch's; ties between equal scores go to the lower index (torch's argmax and
// topk on CPU agree on the cases decoding meets).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "bounded_calls.hpp"

namespace xvlm_edge::sdk {

// The self-attention cache shape of a decoder: layers, heads, head dim.
using CacheShape = std::array<std::int64_t, 3>;

// One decoding session of a decoder ("caption" over one image's embeds, "answer" over one VQA question's
// states): its cross K/V, projected once, and the self-attention cache of every row. Rows all read the one
// image (question), so beam selection (or spreading [CLS] over candidate answers) is a reorder of the cache.
class StepDecoder {
 public:
  StepDecoder(GraphSession& session, const Manifest& manifest, std::string decoder, CacheShape cache, const Tensor& states);

  // Feeds the prompt as one row into an empty cache; the next-token logits (1, vocab).
  Tensor start(const std::vector<std::int64_t>& prompt);
  // Feeds one token per row; logits (rows, vocab).
  Tensor feed(const std::vector<std::int64_t>& tokens);
  // Feeds ids (rows, t) under self_atts (rows, cached + t) through the score graph; the logits of every new
  // position (rows, t, vocab).
  Tensor score(const Tensor& ids, const Tensor& self_atts);
  // Keeps cache rows `rows`, in that order (a row may repeat: expanding the prompt to the beams).
  void reorder(const std::vector<std::int64_t>& rows);

 private:
  Tensor feed_all(const Tensor& ids);  // the step graph, every cached and new token visible
  Tensor run(const std::string& graph, const Tensor& ids, const Tensor& self_atts);

  GraphSession& session_;
  const Manifest& manifest_;
  std::string decoder_;
  CacheShape cache_shape_;
  CrossKV cross_;
  Tensor cache_k_, cache_v_;
  std::int64_t length_ = 0;  // cached tokens per row
};

struct Generated {
  std::vector<std::int64_t> ids;  // prompt + generated ids, eos appended when it fits
  double logprob = 0.0;           // greedy: mean log-probability; beams: the length-normalised beam score
  bool truncated = false;         // reached max_length without generating eos
};

// torch's log_softmax of one row of n logits, in float32: (x - max) - log(sum exp(x - max)).
void log_softmax(const float* x, std::int64_t n, float* out);

Generated greedy(StepDecoder& decoder, const std::vector<std::int64_t>& prompt, int max_length, std::int64_t eos_id);

Generated beam_search(StepDecoder& decoder, const std::vector<std::int64_t>& prompt, int num_beams, int max_length, int min_length,
                      std::int64_t eos_id);

}  // namespace xvlm_edge::sdk
