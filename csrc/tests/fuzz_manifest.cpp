// libFuzzer harness of the SDK's export manifest parser (csrc/sdk/manifest.cpp: Manifest::parse).
//
// The input is the text of manifest.json; the export directory is a real ExecuTorch export, named by the
// environment variable XVLM_EDGE_FUZZ_EXPORT (tests/test_cpp_fuzzers.py seeds the corpus with its
// manifest.json), so a mutated manifest can get as far as hashing the graph and asset files.
//
// Property: any bytes give a Manifest whose entries are what the tasks rely on (the catalogue's graphs,
// every dynamic axis bounded, limits and settings in range, files inside the directory), or are refused
// with ModelError / EngineError / InputError; never a crash, leak, uncaught nlohmann exception or undefined
// behaviour (built with ASan + UBSan).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../sdk/manifest.hpp"

namespace {

using xvlm_edge::sdk::Manifest;

const std::string& export_directory() {
  static const std::string directory = [] {
    const char* found = std::getenv("XVLM_EDGE_FUZZ_EXPORT");
    if (found == nullptr || *found == '\0') {
      std::fprintf(stderr, "fuzz_manifest: set XVLM_EDGE_FUZZ_EXPORT to an ExecuTorch export directory\n");
      std::exit(2);
    }
    return std::string(found);
  }();
  return directory;
}

bool inside(const std::string& path, const std::string& directory) {
  return path.size() > directory.size() + 1 && path.compare(0, directory.size() + 1, directory + "/") == 0 &&
         path.find('/', directory.size() + 1) == std::string::npos;
}

// What an accepted manifest promises the model and the engine; abort() on a broken promise.
void check_accepted(const Manifest& m, const std::string& directory) {
  for (const char* name : {"vision", "text", "fusion", "caption_cross_kv", "caption_step"}) {
    if (!m.graphs.count(name)) std::abort();
  }
  for (const auto& [name, g] : m.graphs) {
    if (g.name != name || g.file.empty() || g.inputs.empty()) std::abort();
    for (const auto* list : {&g.inputs, &g.outputs}) {
      for (const auto& t : *list) {
        for (const auto& d : t.shape) {
          if (d.axis.empty() ? d.size < 0 : g.bounds.count(d.axis) == 0) std::abort();
        }
      }
    }
    for (const auto& [axis, b] : g.bounds) {
      if (b.min < 0 || b.min > b.max) std::abort();
    }
  }
  (void)m.graph("fusion").output_index("itm_logits");
  (void)m.graph("caption_step").output_index("logits");
  for (const std::int64_t n : m.caption_cache) {
    if (n < 1) std::abort();
  }
  const auto& l = m.limits;
  if (l.images < 1 || l.text_rows < 1 || l.tokens < 2 || l.beams < 1 || l.decoder_tokens < 2) std::abort();
  const auto& s = m.settings;
  if (s.image_res <= 0 || s.max_tokens < 2 || !(s.check_threshold >= 0.0 && s.check_threshold <= 1.0) || s.caption_num_beams < 1 ||
      s.caption_min_length < 0 || s.caption_max_length < s.caption_min_length) {
    std::abort();
  }
  if (!inside(m.vocab_path, directory) || m.directory != directory) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& directory = export_directory();
  try {
    const Manifest m = Manifest::parse(std::string_view(reinterpret_cast<const char*>(data), size), directory);
    check_accepted(m, directory);
  } catch (const xvlm_edge::EngineError&) {  // ModelError included
  } catch (const xvlm_edge::InputError&) {
  }
  return 0;
}
