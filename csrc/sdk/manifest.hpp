// An ExecuTorch export directory as the SDK reads it: manifest.json (xvlm_edge/manifest.py, format 2),
// verified before anything runs.
//
// Manifest::open refuses, with a ModelError that names the file, field or graph:
// - a missing or unreadable manifest, JSON that does not parse or nests deeper than a manifest does, a field
//   of the wrong type, an integer field holding a fraction or a value outside its type;
// - another format version, another target than "executorch";
// - a graph or asset file that is missing, has a path in its name, or whose sha256 differs;
// - a missing graph the SDK's tasks need (vision, text, fusion with the ITM and box heads, the caption
//   decoder's cross K/V and step), or one whose tensor names, dtypes or ranks differ from the catalogue's.
// The engine then checks each program's own metadata against these entries (executorch_engine.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xvlm_edge/engine.hpp"
#include "xvlm_edge/errors.hpp"

namespace xvlm_edge::sdk {

// The export directory is refused: what() names the file and what is wrong with it.
class ModelError : public EngineError {
 public:
  using EngineError::EngineError;
};

// xvlm_edge.manifest.FORMAT_VERSION: the one format this SDK reads.
inline constexpr int kManifestFormat = 2;
inline constexpr const char* kExecuTorchTarget = "executorch";

// One dimension of a recorded shape: a fixed size, or the name of a dynamic axis (a key of the bounds).
struct ShapeDim {
  std::int64_t size = -1;  // -1 when dynamic
  std::string axis;        // empty when fixed
};

struct TensorEntry {
  std::string name;
  DataType dtype = DataType::kFloat32;
  std::vector<ShapeDim> shape;
};

struct AxisBound {
  std::int64_t min = 0;
  std::int64_t max = 0;
};

struct GraphEntry {
  std::string name;
  std::string file;  // a file name in the export directory
  std::string method;
  std::vector<TensorEntry> inputs;
  std::vector<TensorEntry> outputs;
  std::map<std::string, AxisBound> bounds;
  std::int64_t arena_bytes = 0;

  // Index of the output called `name`; ModelError if the graph has none.
  std::size_t output_index(const std::string& name) const;
  // The bound of `axis`; ModelError if the graph has no such axis.
  const AxisBound& bound(const std::string& axis) const;
};

// What the lamp feeds one program at most (Bounds in xvlm_edge/export/executorch.py).
struct Limits {
  std::int64_t images = 0;
  std::int64_t text_rows = 0;
  std::int64_t tokens = 0;
  std::int64_t beams = 0;
  std::int64_t decoder_tokens = 0;
};

// The model config fields the tasks read (config.json, as the manifest records it).
struct TaskSettings {
  int image_res = 0;
  int max_tokens = 0;             // tokens per text, [CLS] included
  int max_position_embeddings = 0;
  double check_threshold = 0.5;
  std::string caption_prompt;
  int caption_max_length = 0;     // counts the prompt's tokens
  int caption_min_length = 0;
  int caption_num_beams = 1;
};

// The VQA answer decoder's entries, where the export records one (decoders.answer): its cache shape, the
// config's tasks.vqa_k_test and tasks.answer_max_length, and the answer list's path (assets.answer_list,
// empty when the export ships none).
struct AnswerSettings {
  std::array<std::int64_t, 3> cache{};  // layers, heads, head dim
  int k_test = 0;
  int max_new_tokens = 0;
  std::string answer_list_path;
};

struct Manifest {
  std::string directory;
  std::string precision;
  std::map<std::string, GraphEntry> graphs;
  std::array<std::int64_t, 3> caption_cache{};  // layers, heads, head dim of the caption decoder's cache
  std::optional<AnswerSettings> answer;          // set when the export has an answer decoder
  Limits limits;
  TaskSettings settings;
  std::string vocab_path;

  // Reads and verifies `directory`/manifest.json and every file it names (see the file comment).
  static Manifest open(const std::string& directory);
  // Everything open does once manifest.json is read: `json` is its text, checked as the manifest of the
  // export in `directory` (whose graph and asset files are still hashed). The fuzz target
  // (csrc/tests/fuzz_manifest.cpp) feeds it any bytes.
  static Manifest parse(std::string_view json, const std::string& directory);
  const GraphEntry& graph(const std::string& name) const;
};

}  // namespace xvlm_edge::sdk
