#include "bounded_calls.hpp"

#include <algorithm>

namespace xvlm_edge::sdk {
namespace {

// Cuts rows [0, rows) into pieces of at most `step`.
template <class Piece>
void for_pieces(std::int64_t rows, std::int64_t step, Piece piece) {
  for (std::int64_t start = 0; start < rows; start += step) piece(start, std::min(step, rows - start));
}

}  // namespace

Tensor encode_image(GraphSession& session, const Tensor& pixels) {
  return std::move(session.run("vision", {&pixels}).at(0));  // image_embeds is the first output
}

FusionHeads fuse_texts(GraphSession& session, const Manifest& manifest, const Tensor& image_embeds, const Tensor& ids, const Tensor& atts) {
  const GraphEntry& fusion = manifest.graph("fusion");
  const std::size_t itm = fusion.output_index("itm_logits"), bbox = fusion.output_index("bbox");
  const std::int64_t rows = ids.dim(0);
  const std::int64_t step = std::min(manifest.graph("text").bound("rows").max, fusion.bound("rows").max);
  const std::int64_t image_tokens = image_embeds.dim(1);
  std::vector<Tensor> logits, boxes;
  for_pieces(rows, step, [&](std::int64_t start, std::int64_t length) {
    const Tensor piece_ids = narrow(ids, 0, start, length), piece_atts = narrow(atts, 0, start, length);
    const Tensor text_embeds = std::move(session.run("text", {&piece_ids, &piece_atts}).at(0));
    const Tensor image_index = Tensor::filled({length}, std::int64_t{0});  // every row reads image 0
    const Tensor image_atts = Tensor::filled({length, image_tokens}, std::int64_t{1});  // whole image
    std::vector<Tensor> out = session.run("fusion", {&text_embeds, &piece_atts, &image_embeds, &image_index, &image_atts});
    logits.push_back(std::move(out.at(itm)));
    boxes.push_back(std::move(out.at(bbox)));
  });
  return {concat(logits, 0), concat(boxes, 0)};
}

Tensor question_states(GraphSession& session, const Tensor& image_embeds, const Tensor& ids, const Tensor& atts) {
  const Tensor image_index = Tensor::filled({1}, std::int64_t{0});
  const Tensor image_atts = Tensor::filled({1, image_embeds.dim(1)}, std::int64_t{1});  // whole image
  return std::move(session.run("multimodal", {&ids, &atts, &image_embeds, &image_index, &image_atts}).at(0));
}

CrossKV cross_kv(GraphSession& session, const std::string& decoder, const Tensor& states) {
  std::vector<Tensor> out = session.run(decoder + "_cross_kv", {&states});
  return {std::move(out.at(0)), std::move(out.at(1))};
}

StepOutput decoder_step(GraphSession& session, const Manifest& manifest, const std::string& graph, const Tensor& ids, const Tensor& self_atts,
                        const Tensor& cache_k, const Tensor& cache_v, const CrossKV& cross) {
  const std::int64_t rows = ids.dim(0);
  const std::int64_t step = manifest.graph(graph).bound("rows").max;
  const std::int64_t keys = cross.k.dim(3);
  auto run = [&](const Tensor& i, const Tensor& a, const Tensor& k, const Tensor& v) {
    const Tensor cross_atts = Tensor::filled({i.dim(0), keys}, std::int64_t{1});
    std::vector<Tensor> out = session.run(graph, {&i, &a, &k, &v, &cross.k, &cross.v, &cross_atts});
    return StepOutput{std::move(out.at(0)), std::move(out.at(1)), std::move(out.at(2))};
  };
  if (rows <= step) return run(ids, self_atts, cache_k, cache_v);
  std::vector<Tensor> logits, ks, vs;
  for_pieces(rows, step, [&](std::int64_t start, std::int64_t length) {
    StepOutput piece = run(narrow(ids, 0, start, length), narrow(self_atts, 0, start, length), narrow(cache_k, 1, start, length),
                           narrow(cache_v, 1, start, length));
    logits.push_back(std::move(piece.logits));
    ks.push_back(std::move(piece.cache_k));
    vs.push_back(std::move(piece.cache_v));
  });
  return {concat(logits, 0), concat(ks, 1), concat(vs, 1)};
}

}  // namespace xvlm_edge::sdk
