// Greedy and beam-search captioning over the KV-cached decoder step, token for token the semantics of
// xvlm_edge/tasks/decoding.py (its docstring names the official code each half follows):
// - greedy: OSCAR's loop. argmax each step; at max_length an unfinished row gets eos written over its last
//   token; the score is the mean log-probability of the generated tokens (eos included).
// - beam search: Hugging Face 4.12 generate(num_beams=n): length_penalty 1 (score = sum logprob / length,
//   prompt counted, eos not), early_stopping off, eos held back (logprob -inf) below min_length, 2n
//   candidates a step, an eos candidate kept only within the top n, stop at max_length or when n finished
//   hypotheses cannot be beaten by any open beam.
// Log-softmax is float32 like torch's; ties between equal scores go to the lower index (torch's argmax and
// topk on CPU agree on the cases decoding meets).
#pragma once

#include <cstdint>
#include <vector>

#include "bounded_calls.hpp"

namespace xvlm_edge::sdk {

// One image's decoding session: its cross K/V, projected once, and the self-attention cache of every row.
// Rows all read the one image, so beam selection is a reorder of the cache rows.
class CaptionDecoder {
 public:
  CaptionDecoder(GraphSession& session, const Manifest& manifest, const Tensor& image_embeds);

  // Feeds the prompt as one row into an empty cache; the next-token logits (1, vocab).
  Tensor start(const std::vector<std::int64_t>& prompt);
  // Feeds one token per row; logits (rows, vocab).
  Tensor feed(const std::vector<std::int64_t>& tokens);
  // Keeps cache rows `rows`, in that order (a row may repeat: expanding the prompt to the beams).
  void reorder(const std::vector<std::int64_t>& rows);

 private:
  Tensor run(const Tensor& ids);

  GraphSession& session_;
  const Manifest& manifest_;
  CrossKV cross_;
  Tensor cache_k_, cache_v_;
  std::int64_t length_ = 0;  // cached tokens per row
};

struct Generated {
  std::vector<std::int64_t> ids;  // prompt + generated ids, eos appended when it fits
  double logprob = 0.0;           // greedy: mean log-probability; beams: the length-normalised beam score
  bool truncated = false;         // reached max_length without generating eos
};

Generated greedy(CaptionDecoder& decoder, const std::vector<std::int64_t>& prompt, int max_length, std::int64_t eos_id);

Generated beam_search(CaptionDecoder& decoder, const std::vector<std::int64_t>& prompt, int num_beams, int max_length, int min_length,
                      std::int64_t eos_id);

}  // namespace xvlm_edge::sdk
