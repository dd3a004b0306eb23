#include "decoding.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace xvlm_edge::sdk {
void log_softmax(const float* x, std::int64_t n, float* out) {
  const float top = *std::max_element(x, x + n);
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i] - top));
  const float lse = static_cast<float>(std::log(sum));
  for (std::int64_t i = 0; i < n; ++i) out[i] = (x[i] - top) - lse;
}

namespace {

// HF 4.12 BeamHypotheses: the n best finished sequences, scored sum logprob / length (length_penalty 1).
class Hypotheses {
 public:
  explicit Hypotheses(int num_beams) : num_beams_(static_cast<std::size_t>(num_beams)) {}

  void add(const std::vector<std::int64_t>& ids, double sum_logprobs) {
    const double score = sum_logprobs / static_cast<double>(ids.size());
    if (beams_.size() < num_beams_ || score > worst_) {
      beams_.push_back({score, ids});
      if (beams_.size() > num_beams_) {
        // Drop the worst (the earliest of equal scores, as Python's sorted (score, index) pairs do).
        std::vector<std::size_t> order(beams_.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return beams_[a].first < beams_[b].first; });
        worst_ = beams_[order[1]].first;
        beams_.erase(beams_.begin() + static_cast<std::ptrdiff_t>(order[0]));
      } else {
        worst_ = std::min(score, worst_);
      }
    }
  }

  bool is_done(double best_sum_logprobs, std::size_t length) const {
    return beams_.size() >= num_beams_ && worst_ >= best_sum_logprobs / static_cast<double>(length);
  }

  // The best hypothesis; of equal scores the last added (Python's stable sort, then [-1]).
  const std::pair<double, std::vector<std::int64_t>>& best() const {
    std::size_t best = 0;
    for (std::size_t i = 1; i < beams_.size(); ++i) {
      if (beams_[i].first >= beams_[best].first) best = i;
    }
    return beams_.at(best);
  }

 private:
  std::size_t num_beams_;
  std::vector<std::pair<double, std::vector<std::int64_t>>> beams_;
  double worst_ = 1e9;
};

Tensor ids_tensor(const std::vector<std::int64_t>& ids, std::int64_t rows) {
  Tensor out(DataType::kInt64, {rows, static_cast<std::int64_t>(ids.size()) / rows});
  std::copy(ids.begin(), ids.end(), out.data<std::int64_t>());
  return out;
}

}  // namespace

StepDecoder::StepDecoder(GraphSession& session, const Manifest& manifest, std::string decoder, CacheShape cache, const Tensor& states)
    : session_(session), manifest_(manifest), decoder_(std::move(decoder)), cache_shape_(cache), cross_(cross_kv(session, decoder_, states)) {}

Tensor StepDecoder::start(const std::vector<std::int64_t>& prompt) {
  const auto& [layers, heads, dim] = cache_shape_;
  cache_k_ = Tensor(DataType::kFloat32, {layers, 1, heads, 0, dim});
  cache_v_ = cache_k_;
  length_ = 0;
  return feed_all(ids_tensor(prompt, 1));
}

Tensor StepDecoder::feed(const std::vector<std::int64_t>& tokens) { return feed_all(ids_tensor(tokens, static_cast<std::int64_t>(tokens.size()))); }

Tensor StepDecoder::feed_all(const Tensor& ids) {
  // All ones, as the official prepare_inputs_for_generation: every cached token stays visible.
  const Tensor self_atts = Tensor::filled({ids.dim(0), length_ + ids.dim(1)}, std::int64_t{1});
  return run(decoder_ + "_step", ids, self_atts);
}

Tensor StepDecoder::score(const Tensor& ids, const Tensor& self_atts) { return run(decoder_ + "_score", ids, self_atts); }

void StepDecoder::reorder(const std::vector<std::int64_t>& rows) {
  cache_k_ = gather(cache_k_, 1, rows);
  cache_v_ = gather(cache_v_, 1, rows);
}

Tensor StepDecoder::run(const std::string& graph, const Tensor& ids, const Tensor& self_atts) {
  StepOutput out = decoder_step(session_, manifest_, graph, ids, self_atts, cache_k_, cache_v_, cross_);
  length_ += ids.dim(1);
  cache_k_ = std::move(out.cache_k);
  cache_v_ = std::move(out.cache_v);
  return std::move(out.logits);
}

Generated greedy(StepDecoder& decoder, const std::vector<std::int64_t>& prompt, int max_length, std::int64_t eos_id) {
  Generated out;
  out.ids = prompt;
  Tensor logits = decoder.start(prompt);
  const std::int64_t vocab = logits.dim(1);
  std::vector<float> logprobs(static_cast<std::size_t>(vocab));
  float sum = 0.0f;
  int steps = 0;
  bool unfinished = true;
  while (static_cast<int>(out.ids.size()) < max_length) {
    const float* row = logits.data<float>();
    const std::int64_t next = std::max_element(row, row + vocab) - row;  // the first maximum, as torch.argmax
    log_softmax(row, vocab, logprobs.data());
    sum += logprobs[static_cast<std::size_t>(next)];
    ++steps;
    out.ids.push_back(next);
    unfinished = next != eos_id;
    if (!unfinished || static_cast<int>(out.ids.size()) == max_length) break;
    logits = decoder.feed({next});
  }
  out.truncated = unfinished;  // the loop ends unfinished only at max_length
  if (out.truncated) out.ids.back() = eos_id;
  out.logprob = static_cast<double>(sum / static_cast<float>(steps));
  return out;
}

Generated beam_search(StepDecoder& decoder, const std::vector<std::int64_t>& prompt, int num_beams, int max_length, int min_length,
                      std::int64_t eos_id) {
  const std::size_t n = static_cast<std::size_t>(num_beams);
  // The prompt runs once and its cache is copied to the beams (HF runs it per beam; the rows are equal).
  const Tensor first = decoder.start(prompt);
  const std::int64_t vocab = first.dim(1);
  decoder.reorder(std::vector<std::int64_t>(n, 0));
  Tensor logits = gather(first, 0, std::vector<std::int64_t>(n, 0));
  std::vector<std::vector<std::int64_t>> beams(n, prompt);
  std::vector<float> beam_scores(n, -1e9f);
  beam_scores[0] = 0.0f;  // only the first beam is live at the start
  Hypotheses hyps(num_beams);
  bool done = false;
  std::vector<float> scores(n * static_cast<std::size_t>(vocab));
  std::vector<std::size_t> order(scores.size());
  while (true) {
    const std::size_t length = beams[0].size();
    for (std::size_t r = 0; r < n; ++r) {
      float* row = scores.data() + r * static_cast<std::size_t>(vocab);
      log_softmax(logits.data<float>() + r * static_cast<std::size_t>(vocab), vocab, row);
      if (static_cast<int>(length) < min_length) row[eos_id] = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = 0; j < vocab; ++j) row[j] += beam_scores[r];
    }
    // The 2n best candidates over every beam's tokens, best first (equal scores: the lower index first).
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(2 * n), order.end(),
                      [&](std::size_t a, std::size_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
    std::vector<std::int64_t> rows, tokens;
    std::vector<float> next_scores;
    for (std::size_t rank = 0; rank < 2 * n; ++rank) {
      const std::size_t candidate = order[rank];
      const std::int64_t row = static_cast<std::int64_t>(candidate / static_cast<std::size_t>(vocab));
      const std::int64_t token = static_cast<std::int64_t>(candidate % static_cast<std::size_t>(vocab));
      if (token == eos_id) {
        // An eos among the top n finishes a hypothesis (stored without eos); one ranked lower is dropped.
        if (rank < n) hyps.add(beams[static_cast<std::size_t>(row)], scores[candidate]);
      } else if (rows.size() < n) {
        rows.push_back(row);
        tokens.push_back(token);
        next_scores.push_back(scores[candidate]);
      }
    }
    done = hyps.is_done(scores[order[0]], length);
    std::vector<std::vector<std::int64_t>> next(n);
    for (std::size_t b = 0; b < n; ++b) {
      next[b] = beams[static_cast<std::size_t>(rows[b])];
      next[b].push_back(tokens[b]);
    }
    beams = std::move(next);
    beam_scores = next_scores;
    if (done || static_cast<int>(beams[0].size()) >= max_length) break;
    decoder.reorder(rows);
    logits = decoder.feed(tokens);
  }
  if (!done) {
    for (std::size_t b = 0; b < n; ++b) hyps.add(beams[b], beam_scores[b]);
  }
  const auto& [score, ids] = hyps.best();
  Generated out;
  out.ids = ids;
  out.logprob = score;
  // A hypothesis closed by eos is stored without it and is shorter than max_length; one that ran to
  // max_length was added open and never generated eos.
  out.truncated = static_cast<int>(ids.size()) >= max_length;
  if (!out.truncated) out.ids.push_back(eos_id);
  return out;
}

}  // namespace xvlm_edge::sdk
