// The graph calls the tasks make, cut to the export's bounds exactly as the Python ExecuTorch runtime cuts
// them (xvlm_edge/runtime/executorch_backend.py): text and fusion calls into pieces of at most `rows` text
// rows, decoder steps into pieces of at most `rows` beams, all of one image. Rows are computed
// independently, so cutting changes no result. Calls past a bound that cannot be cut (tokens, the decoder's
// cached + new tokens) are left to the engine, which refuses them naming the bound.
//
// Every function works on one image (VQA: one question): the SDK's C API takes one of each per call.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph_engine.hpp"
#include "manifest.hpp"

namespace xvlm_edge::sdk {

// The catalogue's chunk limit (xvlm_edge.graphs.TEXT_CHUNK): the most texts one task call encodes at once,
// padded to their longest. Also the SDK's per-call limit on texts and phrases.
inline constexpr std::int64_t kTextChunk = 128;

// pixels (1, 3, R, R) -> image_embeds (1, 1 + N, C).
Tensor encode_image(GraphSession& session, const Tensor& pixels);

// The fusion heads of K texts (ids, atts (K, T), right-padded) against one image's embeds (1, 1 + N, C):
// itm_logits (K, 2) and bbox (K, 4) sigmoid cxcywh.
struct FusionHeads {
  Tensor itm_logits;
  Tensor bbox;
};
FusionHeads fuse_texts(GraphSession& session, const Manifest& manifest, const Tensor& image_embeds, const Tensor& ids, const Tensor& atts);

// The VQA question encoder (`multimodal`): one question's ids, atts (1, T) over one image's embeds
// (1, 1 + N, C) -> its states (1, T, hidden), every text layer with image cross-attention.
Tensor question_states(GraphSession& session, const Tensor& image_embeds, const Tensor& ids, const Tensor& atts);

// A decoder's cross-attention K/V of one image or question (`<decoder>_cross_kv` of `states` (1, S, C)):
// (layers, 1, heads, S, d) each. The caption decoder's keys are the image's 1 + N tokens, the answer
// decoder's the question's T tokens.
struct CrossKV {
  Tensor k;
  Tensor v;
};
CrossKV cross_kv(GraphSession& session, const std::string& decoder, const Tensor& states);

// One call of a decoder graph (`caption_step`, `answer_step`, `answer_score`) over R rows that all read
// `cross` (every key visible): ids (R, t), self_atts (R, past + t), the cache (layers, R, heads, past, d)
// x2 -> logits (R, vocab) from a step graph or (R, t, vocab) from a score graph, and the cache extended to
// past + t. Cut into pieces of at most the graph's `rows` bound.
struct StepOutput {
  Tensor logits;
  Tensor cache_k;
  Tensor cache_v;
};
StepOutput decoder_step(GraphSession& session, const Manifest& manifest, const std::string& graph, const Tensor& ids, const Tensor& self_atts,
                        const Tensor& cache_k, const Tensor& cache_v, const CrossKV& cross);

}  // namespace xvlm_edge::sdk
