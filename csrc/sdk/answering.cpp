#include "answering.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model.hpp"

namespace xvlm_edge::sdk {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxJsonBytes = std::size_t{16} << 20;  // the official VQA answer list is about 40 KiB

// The catalogue's tensors of each answer graph (xvlm_edge/graphs.py), in order, with the dtype the SDK feeds.
struct GraphTensors {
  const char* graph;
  std::vector<std::pair<const char*, DataType>> inputs;
  std::vector<const char*> outputs;
};

const std::vector<GraphTensors>& answer_catalogue() {
  constexpr DataType f32 = DataType::kFloat32, i64 = DataType::kInt64;
  const std::vector<std::pair<const char*, DataType>> step = {{"text_ids", i64}, {"self_atts", i64}, {"cache_k", f32}, {"cache_v", f32},
                                                              {"cross_k", f32},  {"cross_v", f32},   {"cross_atts", i64}};
  static const std::vector<GraphTensors> graphs = {
      {"multimodal", {{"text_ids", i64}, {"text_atts", i64}, {"image_embeds", f32}, {"image_index", i64}, {"image_atts", i64}}, {"states"}},
      {"answer_cross_kv", {{"states", f32}}, {"cross_k", "cross_v"}},
      {"answer_step", step, {"logits", "new_cache_k", "new_cache_v"}},
      {"answer_score", step, {"logits", "new_cache_k", "new_cache_v"}},
  };
  return graphs;
}

void check_tensors(const GraphEntry& g, const GraphTensors& want) {
  bool same = g.inputs.size() == want.inputs.size();
  for (std::size_t i = 0; same && i < want.inputs.size(); ++i) same = g.inputs[i].name == want.inputs[i].first && g.inputs[i].dtype == want.inputs[i].second;
  if (!same) throw ModelError("manifest: graph " + g.name + "'s inputs differ from the catalogue's (names, order or dtypes)");
  for (const char* output : want.outputs) {
    if (g.outputs.at(g.output_index(output)).dtype != DataType::kFloat32) throw ModelError("manifest: graph " + g.name + " output " + output + " is not float32");
  }
}

json read_json(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  if (!in || !(text << in.rdbuf())) throw ModelError(what + " " + path + " cannot be read");
  if (text.str().size() > kMaxJsonBytes) throw ModelError(what + " " + path + " is larger than 16 MiB");
  json doc = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) throw ModelError(what + " " + path + " is not JSON");
  return doc;
}

// torch.topk(values, k) on the CPU (largest, sorted): indices into `values`. torch pairs (value, index),
// takes std::partial_sort when k * 64 <= n and otherwise std::nth_element at k - 1 followed by std::sort of
// the first k - 1, with NaN ordered first. The same standard algorithms on the same sequence break ties the
// same way, which decides the candidates when several answers share a first token.
std::vector<std::size_t> torch_topk(const std::vector<float>& values, std::size_t k) {
  using Entry = std::pair<float, std::size_t>;
  std::vector<Entry> queue(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) queue[i] = {values[i], i};
  auto larger = [](const Entry& x, const Entry& y) { return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first; };
  const auto kth = queue.begin() + static_cast<std::ptrdiff_t>(k);
  if (k * 64 <= queue.size()) {
    std::partial_sort(queue.begin(), kth, queue.end(), larger);
  } else {
    std::nth_element(queue.begin(), kth - 1, queue.end(), larger);
    std::sort(queue.begin(), kth - 1, larger);
  }
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < k; ++i) out.push_back(queue[i].second);
  return out;
}

// softmax of one row in float32.
std::vector<float> softmax(const float* x, std::size_t n) {
  const float top = *std::max_element(x, x + n);
  std::vector<float> out(n);
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += out[i] = std::exp(x[i] - top);
  const float scale = static_cast<float>(1.0 / sum);
  for (float& v : out) v *= scale;
  return out;
}

}  // namespace

std::vector<std::int64_t> encode_answer(const Tokenizer& tokenizer, const std::string& answer) {
  std::vector<std::int64_t> ids = {tokenizer.cls_id()};
  const std::vector<std::int64_t> pieces = tokenizer.piece_ids(answer);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  ids.push_back(tokenizer.sep_id());
  return ids;
}

std::optional<AnswerSetup> load_answer_setup(const Manifest& manifest, const Tokenizer& tokenizer) {
  std::vector<std::string> missing;
  for (const char* graph : kAnswerGraphs) {
    if (!manifest.graphs.count(graph)) missing.emplace_back(graph);
  }
  if (missing.size() == kAnswerGraphs.size()) return std::nullopt;
  if (!missing.empty()) throw ModelError("the export " + manifest.directory + " has some answer graphs but not " + missing.front() + " (re-export)");
  for (const GraphTensors& want : answer_catalogue()) check_tensors(manifest.graph(want.graph), want);
  const std::int64_t vocab = static_cast<std::int64_t>(tokenizer.size());
  for (const char* graph : {"answer_step", "answer_score"}) {
    const GraphEntry& g = manifest.graph(graph);
    const std::vector<ShapeDim>& logits = g.outputs.at(g.output_index("logits")).shape;
    if (logits.empty() || logits.back().size != vocab) {
      throw ModelError("the export's vocabulary has " + std::to_string(vocab) + " tokens, but the " + graph + " logits are not that wide");
    }
  }

  if (!manifest.answer) throw ModelError("manifest: decoders.answer is missing (the export has answer graphs)");
  const AnswerSettings& settings = *manifest.answer;
  AnswerSetup setup;
  setup.cache = settings.cache;
  setup.k_test = settings.k_test;
  setup.max_new_tokens = settings.max_new_tokens;
  if (!settings.answer_list_path.empty()) {
    // Manifest::open has checked the file's sha256; its contents are the answer list's own format.
    const std::string& path = settings.answer_list_path;
    const json list = read_json(path, "answer list");
    if (!list.is_array() || list.empty()) throw ModelError("answer list " + path + " is not a non-empty JSON list of answer strings");
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_string()) throw ModelError("answer list " + path + " item " + std::to_string(i) + " is not a string");
      setup.answer_list.push_back(list[i].get<std::string>());
      try {
        setup.list_ids.push_back(encode_answer(tokenizer, setup.answer_list.back()));
      } catch (const TextError& e) {
        throw ModelError("answer list " + path + " item " + std::to_string(i) + ": " + e.what());
      }
    }
  }
  return setup;
}

std::vector<Scored> rank_answers(StepDecoder& decoder, const std::vector<std::vector<std::int64_t>>& answers, int k, std::int64_t pad_id,
                                 std::int64_t longest) {
  const Tensor first = decoder.start({answers.at(0).at(0)});  // the answers' [CLS] starts decoding
  const std::size_t vocab = static_cast<std::size_t>(first.dim(1));
  const std::vector<float> probs = softmax(first.data<float>(), vocab);
  std::vector<float> first_probs;
  for (const auto& a : answers) first_probs.push_back(probs[static_cast<std::size_t>(a.at(1))]);
  const std::size_t kept = std::min(static_cast<std::size_t>(k), answers.size());
  const std::vector<std::size_t> top = torch_topk(first_probs, kept);

  std::size_t width = 0;
  for (std::size_t r = 0; r < kept; ++r) width = std::max(width, answers[top[r]].size());
  if (static_cast<std::int64_t>(width) - 1 > longest) {
    const std::size_t at = *std::max_element(top.begin(), top.end(), [&](std::size_t a, std::size_t b) { return answers[a].size() < answers[b].size(); });
    throw LimitError("answer " + std::to_string(at) + " has " + std::to_string(answers[at].size()) + " tokens with [CLS] and [SEP]; re-scoring it needs " +
                     std::to_string(answers[at].size() - 1) + " decoder tokens, past the export's bound of " + std::to_string(longest));
  }
  // Position j's logits predict token j + 1: position 0 is the cached [CLS] step, 1 .. width - 2 the score graph's.
  std::vector<float> logprob(kept, 0.0f), row(vocab);
  auto add = [&](std::size_t r, const float* logits, std::size_t target_at) {
    const std::vector<std::int64_t>& a = answers[top[r]];
    const std::int64_t target = target_at < a.size() ? a[target_at] : pad_id;
    if (target == pad_id) return;  // the official loss ignores padding
    log_softmax(logits, static_cast<std::int64_t>(vocab), row.data());
    logprob[r] += row[static_cast<std::size_t>(target)];
  };
  for (std::size_t r = 0; r < kept; ++r) add(r, first.data<float>(), 1);
  if (width > 2) {
    const std::int64_t rows = static_cast<std::int64_t>(kept), fed = static_cast<std::int64_t>(width) - 2;
    Tensor ids = Tensor::filled({rows, fed}, pad_id);
    Tensor atts = Tensor::filled({rows, fed + 1}, std::int64_t{0});
    for (std::size_t r = 0; r < kept; ++r) {
      const std::vector<std::int64_t>& a = answers[top[r]];
      for (std::size_t j = 1; j < a.size() && j <= static_cast<std::size_t>(fed); ++j) ids.data<std::int64_t>()[r * fed + j - 1] = a[j];
      std::fill_n(atts.data<std::int64_t>() + r * (fed + 1), std::min<std::size_t>(a.size(), fed + 1), 1);
    }
    decoder.reorder(std::vector<std::int64_t>(kept, 0));
    const Tensor rest = decoder.score(ids, atts);  // (rows, fed, vocab)
    for (std::size_t r = 0; r < kept; ++r) {
      for (std::size_t j = 1; j <= static_cast<std::size_t>(fed); ++j) add(r, rest.data<float>() + (r * fed + j - 1) * vocab, j + 1);
    }
  }
  std::vector<float> total(kept);
  for (std::size_t r = 0; r < kept; ++r) total[r] = std::log(first_probs[top[r]]) + logprob[r];
  const std::vector<float> shares = softmax(total.data(), kept);
  std::vector<Scored> out;
  for (std::size_t r : torch_topk(shares, kept)) out.push_back({top[r], shares[r], logprob[r]});
  return out;
}

}  // namespace xvlm_edge::sdk
