#include "manifest.hpp"

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/stat.h>
#include <type_traits>

#include "sha256.hpp"

namespace xvlm_edge::sdk {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxManifestBytes = std::size_t{16} << 20;  // a real one is a few tens of KiB
// A real manifest nests 7 deep. The limit keeps nlohmann's recursive dump() (the values quoted in messages)
// off the end of the stack: "format" nested 20,000 lists deep overflowed it under ASan (a fuzz_manifest seed).
constexpr int kMaxManifestDepth = 32;

// The graphs the SDK's tasks run, with the inputs each takes (catalogue order, with the dtype the SDK
// feeds) and the outputs it reads (by name; a graph may have more).
struct Required {
  const char* graph;
  std::vector<std::pair<const char*, DataType>> inputs;
  std::vector<const char*> outputs;
};

const std::vector<Required>& required_graphs() {
  constexpr DataType f32 = DataType::kFloat32, i64 = DataType::kInt64;
  static const std::vector<Required> graphs = {
      {"vision", {{"pixels", f32}}, {"image_embeds"}},
      {"text", {{"text_ids", i64}, {"text_atts", i64}}, {"text_embeds"}},
      {"fusion",
       {{"text_embeds", f32}, {"text_atts", i64}, {"image_embeds", f32}, {"image_index", i64}, {"image_atts", i64}},
       {"itm_logits", "bbox"}},
      {"caption_cross_kv", {{"states", f32}}, {"cross_k", "cross_v"}},
      {"caption_step",
       {{"text_ids", i64}, {"self_atts", i64}, {"cache_k", f32}, {"cache_v", f32}, {"cross_k", f32}, {"cross_v", f32},
        {"cross_atts", i64}},
       {"logits", "new_cache_k", "new_cache_v"}},
  };
  return graphs;
}

bool is_file(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_manifest(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw ModelError(path + " is missing: not an xvlm_edge export (make one with `xvlm-edge export MODEL_DIR --target executorch`)");
  }
  if (static_cast<std::uint64_t>(st.st_size) > kMaxManifestBytes) throw ModelError(path + " is larger than 16 MiB: not a manifest");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  if (!(text << in.rdbuf())) throw ModelError(path + " cannot be read");
  return text.str();
}

// A JSON value quoted in a message: at most 80 characters of it.
std::string brief(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// A plain file name inside the export directory (no path, so a manifest cannot point elsewhere).
std::string file_in(const std::string& directory, const std::string& name, const std::string& what) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
    throw ModelError("manifest: " + what + " names file \"" + name + "\", which is not a plain file name in the export directory");
  }
  return directory + "/" + name;
}

void verify_file(const std::string& directory, const std::string& name, const std::string& sha256, const std::string& what) {
  const std::string path = file_in(directory, name, what);
  if (!is_file(path)) throw ModelError(what + " file " + path + " is missing");
  const std::string digest = sha256_file(path);
  if (digest != sha256) {
    throw ModelError(path + ": sha256 " + digest + " differs from the manifest's " + sha256 + " (corrupt or replaced file; re-export)");
  }
}

const json& field(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key)) throw ModelError("manifest: " + where + " has no \"" + key + "\"");
  return object.at(key);
}

// An integer of type T: refuses fractions (nlohmann's get<int> truncates 2.5 to 2, and 1e300 to int is
// undefined behaviour) and values outside T (which get<T> would wrap).
template <class T>
T integer(const json& value, const std::string& where) {
  static_assert(std::is_integral_v<T> && std::is_signed_v<T>);
  if (value.is_number_unsigned()) {
    const auto n = value.get<std::uint64_t>();
    if (n <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())) return static_cast<T>(n);
  } else if (value.is_number_integer()) {
    const auto n = value.get<std::int64_t>();
    if (n >= std::numeric_limits<T>::min() && n <= std::numeric_limits<T>::max()) return static_cast<T>(n);
  }
  throw ModelError("manifest: " + where + " is " + brief(value) + ", not an integer in [" + std::to_string(std::numeric_limits<T>::min()) +
                   ", " + std::to_string(std::numeric_limits<T>::max()) + "]");
}

template <class T>
T get(const json& object, const char* key, const std::string& where) {
  const json& value = field(object, key, where);
  if constexpr (std::is_integral_v<T>) {
    return integer<T>(value, where + "." + key);
  } else {
    try {
      return value.get<T>();
    } catch (const json::exception&) {
      throw ModelError("manifest: " + where + "." + key + " has the wrong type (" + value.type_name() + ")");
    }
  }
}

std::vector<std::int64_t> get_integers(const json& object, const char* key, const std::string& where) {
  const json& list = field(object, key, where);
  if (!list.is_array()) throw ModelError("manifest: " + where + "." + key + " is not a list");
  std::vector<std::int64_t> out;
  for (const json& n : list) out.push_back(integer<std::int64_t>(n, where + "." + key));
  return out;
}

std::vector<ShapeDim> parse_shape(const json& shape, const std::string& where) {
  if (!shape.is_array()) throw ModelError("manifest: " + where + " is not a list");
  std::vector<ShapeDim> out;
  for (const json& d : shape) {
    if (d.is_string()) {
      out.push_back({-1, d.get<std::string>()});
      continue;
    }
    const std::int64_t size = d.is_number_integer() ? integer<std::int64_t>(d, where) : -1;
    if (size < 0) throw ModelError("manifest: " + where + " holds " + brief(d) + ", neither a size nor an axis name");
    out.push_back({size, ""});
  }
  return out;
}

GraphEntry parse_graph(const std::string& name, const json& entry) {
  const std::string where = "graphs." + name;
  GraphEntry g;
  g.name = name;
  g.file = get<std::string>(entry, "file", where);
  g.method = get<std::string>(entry, "method", where);
  g.arena_bytes = get<std::int64_t>(entry, "arena_bytes", where);
  if (g.arena_bytes < 0) throw ModelError("manifest: " + where + ".arena_bytes is negative");
  const json& dtypes = field(entry, "dtypes", where);
  const json& shapes = field(entry, "shapes", where);
  for (const char* role : {"inputs", "outputs"}) {
    for (const std::string& tensor : get<std::vector<std::string>>(entry, role, where)) {
      TensorEntry t;
      t.name = tensor;
      try {
        t.dtype = parse_dtype(get<std::string>(dtypes, tensor.c_str(), where + ".dtypes"));
      } catch (const ModelError&) {
        throw;
      } catch (const EngineError& e) {
        throw ModelError("manifest: " + where + ".dtypes." + tensor + ": " + e.what());
      }
      t.shape = parse_shape(field(shapes, tensor.c_str(), where + ".shapes"), where + ".shapes." + tensor);
      (std::string(role) == "inputs" ? g.inputs : g.outputs).push_back(std::move(t));
    }
  }
  const json& bounds = field(entry, "bounds", where);
  if (!bounds.is_object()) throw ModelError("manifest: " + where + ".bounds is not an object");
  for (const auto& [axis, range] : bounds.items()) {
    const std::string at = where + ".bounds." + axis;
    if (!range.is_array() || range.size() != 2) throw ModelError("manifest: " + at + " is " + brief(range) + ", not [min, max]");
    const AxisBound b{integer<std::int64_t>(range[0], at), integer<std::int64_t>(range[1], at)};
    if (b.min < 0 || b.min > b.max) throw ModelError("manifest: " + at + " is " + brief(range) + ", not [min, max] with 0 <= min <= max");
    g.bounds[axis] = b;
  }
  for (const auto* list : {&g.inputs, &g.outputs}) {
    for (const TensorEntry& t : *list) {
      for (const ShapeDim& d : t.shape) {
        if (!d.axis.empty() && !g.bounds.count(d.axis)) {
          throw ModelError("manifest: " + where + " tensor " + t.name + " has axis \"" + d.axis + "\" without bounds");
        }
      }
    }
  }
  return g;
}

// The graph has the catalogue's inputs (names, order, dtypes) and the outputs the SDK reads.
void check_catalogue(const GraphEntry& g, const Required& want) {
  if (g.inputs.size() != want.inputs.size()) {
    throw ModelError("manifest: graph " + g.name + " has " + std::to_string(g.inputs.size()) + " inputs; the catalogue's has " +
                     std::to_string(want.inputs.size()));
  }
  for (std::size_t i = 0; i < want.inputs.size(); ++i) {
    const auto& [name, dtype] = want.inputs[i];
    if (g.inputs[i].name != name || g.inputs[i].dtype != dtype) {
      throw ModelError("manifest: graph " + g.name + " input " + std::to_string(i) + " is " + g.inputs[i].name + " (" +
                       std::string(dtype_name(g.inputs[i].dtype)) + "); the catalogue's is " + name + " (" +
                       std::string(dtype_name(dtype)) + ")");
    }
  }
  for (const char* output : want.outputs) {
    const std::size_t i = g.output_index(output);
    if (g.outputs[i].dtype != DataType::kFloat32) throw ModelError("manifest: graph " + g.name + " output " + output + " is not float32");
  }
}

TaskSettings parse_settings(const json& config) {
  const std::string where = "config";
  TaskSettings s;
  s.image_res = get<int>(field(config, "vision", where), "image_res", "config.vision");
  s.max_position_embeddings = get<int>(field(config, "text", where), "max_position_embeddings", "config.text");
  s.max_tokens = get<int>(config, "max_tokens", where);
  s.check_threshold = get<double>(config, "check_threshold", where);
  const json& tasks = field(config, "tasks", where);
  s.caption_prompt = get<std::string>(tasks, "caption_prompt", "config.tasks");
  s.caption_max_length = get<int>(tasks, "caption_max_length", "config.tasks");
  s.caption_min_length = get<int>(tasks, "caption_min_length", "config.tasks");
  s.caption_num_beams = get<int>(tasks, "caption_num_beams", "config.tasks");
  if (s.image_res <= 0 || s.max_tokens < 2 || !(s.check_threshold >= 0.0 && s.check_threshold <= 1.0) ||
      s.caption_num_beams < 1 || s.caption_min_length < 0 || s.caption_max_length < s.caption_min_length) {
    throw ModelError("manifest: config holds out-of-range task settings (image_res, max_tokens, check_threshold or tasks.caption_*)");
  }
  return s;
}

// decoders.answer with its task settings and answer list, or nullopt when the export records no answer decoder.
std::optional<AnswerSettings> parse_answer(const json& doc, const std::string& directory) {
  const json& decoders = field(doc, "decoders", "the top level");
  if (!decoders.is_object() || !decoders.contains("answer")) return std::nullopt;
  AnswerSettings a;
  const auto cache = get_integers(decoders, "answer", "decoders");
  if (cache.size() != 3 || cache[0] < 1 || cache[1] < 1 || cache[2] < 1) throw ModelError("manifest: decoders.answer is not [layers, heads, head_dim]");
  a.cache = {cache[0], cache[1], cache[2]};
  const json& tasks = field(field(doc, "config", "the top level"), "tasks", "config");
  a.k_test = get<int>(tasks, "vqa_k_test", "config.tasks");
  a.max_new_tokens = get<int>(tasks, "answer_max_length", "config.tasks");
  if (a.k_test < 1 || a.max_new_tokens < 1) throw ModelError("manifest: config.tasks.vqa_k_test and answer_max_length must be positive");
  const json& assets = field(doc, "assets", "the top level");
  if (assets.contains("answer_list")) {
    a.answer_list_path = file_in(directory, get<std::string>(assets.at("answer_list"), "file", "assets.answer_list"), "assets.answer_list");
  }
  return a;
}

}  // namespace

std::size_t GraphEntry::output_index(const std::string& tensor) const {
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].name == tensor) return i;
  }
  throw ModelError("manifest: graph " + name + " has no output " + tensor);
}

const AxisBound& GraphEntry::bound(const std::string& axis) const {
  auto it = bounds.find(axis);
  if (it == bounds.end()) throw ModelError("manifest: graph " + name + " has no bound for axis " + axis);
  return it->second;
}

const GraphEntry& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it == graphs.end()) throw ModelError("the export " + directory + " has no graph " + name);
  return it->second;
}

Manifest Manifest::open(const std::string& directory) { return parse(read_manifest(directory + "/manifest.json"), directory); }

Manifest Manifest::parse(std::string_view text, const std::string& directory) {
  const std::string path = directory + "/manifest.json";
  if (text.size() > kMaxManifestBytes) throw ModelError(path + " is larger than 16 MiB: not a manifest");
  const json::parser_callback_t depth_limit = [&path](int depth, json::parse_event_t, json&) {
    if (depth > kMaxManifestDepth) throw ModelError(path + " nests deeper than " + std::to_string(kMaxManifestDepth) + " levels: not a manifest");
    return true;
  };
  json doc = json::parse(text, depth_limit, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) throw ModelError(path + " is not a JSON object (truncated or corrupt manifest)");
  Manifest m;
  m.directory = directory;
  try {
    const json& format = field(doc, "format", "the top level");
    if (!format.is_number_integer() || format.get<std::int64_t>() != kManifestFormat) {
      throw ModelError(path + " has manifest format " + brief(format) + "; this SDK reads format " + std::to_string(kManifestFormat) + " (re-export)");
    }
    const std::string target = get<std::string>(doc, "target", "the top level");
    if (target != kExecuTorchTarget) {
      throw ModelError(path + " is a " + target + " export; the SDK runs executorch exports (xvlm-edge export MODEL_DIR --target executorch)");
    }
    m.precision = get<std::string>(doc, "precision", "the top level");
    const json& graphs = field(doc, "graphs", "the top level");
    if (!graphs.is_object()) throw ModelError("manifest: graphs is not an object");
    for (const auto& [name, entry] : graphs.items()) m.graphs.emplace(name, parse_graph(name, entry));
    for (const Required& want : required_graphs()) {
      auto it = m.graphs.find(want.graph);
      if (it == m.graphs.end()) {
        throw ModelError("the export " + directory + " has no " + want.graph + " graph, which check, match, ground and caption need "
                         "(a checkpoint with the itm, bbox and caption heads)");
      }
      check_catalogue(it->second, want);
    }
    const auto cache = get_integers(field(doc, "decoders", "the top level"), "caption", "decoders");
    if (cache.size() != 3 || cache[0] < 1 || cache[1] < 1 || cache[2] < 1) throw ModelError("manifest: decoders.caption is not [layers, heads, head_dim]");
    m.caption_cache = {cache[0], cache[1], cache[2]};
    const json& limits = field(field(doc, "bounds", "the top level"), "limits", "bounds");
    m.limits = {get<std::int64_t>(limits, "images", "bounds.limits"), get<std::int64_t>(limits, "text_rows", "bounds.limits"),
                get<std::int64_t>(limits, "tokens", "bounds.limits"), get<std::int64_t>(limits, "beams", "bounds.limits"),
                get<std::int64_t>(limits, "decoder_tokens", "bounds.limits")};
    if (m.limits.images < 1 || m.limits.text_rows < 1 || m.limits.tokens < 2 || m.limits.beams < 1 || m.limits.decoder_tokens < 2) {
      throw ModelError("manifest: bounds.limits holds a bound below its minimum");
    }
    m.settings = parse_settings(field(doc, "config", "the top level"));
    for (const auto& [name, g] : m.graphs) verify_file(directory, g.file, get<std::string>(graphs.at(name), "sha256", "graphs." + name), "graph " + name);
    const json& assets = field(doc, "assets", "the top level");
    for (const char* asset : {"vocab", "config"}) {
      const json& entry = field(assets, asset, "assets");
      verify_file(directory, get<std::string>(entry, "file", std::string("assets.") + asset),
                  get<std::string>(entry, "sha256", std::string("assets.") + asset), std::string("asset ") + asset);
    }
    if (assets.contains("answer_list")) {
      const json& entry = assets.at("answer_list");
      verify_file(directory, get<std::string>(entry, "file", "assets.answer_list"), get<std::string>(entry, "sha256", "assets.answer_list"),
                  "asset answer_list");
    }
    m.vocab_path = file_in(directory, get<std::string>(field(assets, "vocab", "assets"), "file", "assets.vocab"), "assets.vocab");
    m.answer = parse_answer(doc, directory);
  } catch (const json::exception& e) {
    throw ModelError(path + ": " + e.what());
  }
  return m;
}

}  // namespace xvlm_edge::sdk
