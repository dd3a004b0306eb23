// The ExecuTorch engine: the `.pte` programs of an export directory behind the GraphEngine interface (CPU,
// XNNPACK delegate). The wheel ships no extension::Module library, so this is the runtime's own API:
// Program::load over a MmapDataLoader, MethodMeta to size the planned buffers, HierarchicalAllocator +
// MemoryManager per method, and Method::set_input / execute / get_output. The programs are mapped for the
// model's lifetime: an export is replaced by renaming a new directory in (manifest.py), never by rewriting
// a file in place, which would pull pages from under a mapping.
//
// The engine owns the Programs (mapped file contents, weights): shared by every session, read-only. A
// session loads its own Method per graph on first use (its planned arena, XNNPACK's packed weights and
// runtime), so two sessions never share mutable state. XNNPACK's thread pool is process-wide: `threads`
// resizes it for every model in the process (as the Python runtime's set_threads does), which is safe only
// while no method runs: open models with another count before starting the threads that use them.
#pragma once

#include <memory>
#include <string>

#include "../sdk/graph_engine.hpp"
#include "../sdk/manifest.hpp"

namespace xvlm_edge::sdk {

// Loads and checks every graph of `manifest`: the program parses, has the manifest's method, and its
// MethodMeta agrees with the manifest (input and output count, dtypes, ranks, fixed sizes, the planned
// size of each dynamic dimension). Throws ModelError naming the graph and tensor. threads <= 0 keeps the
// pool's size (one thread per core).
std::unique_ptr<GraphEngine> open_executorch_engine(const Manifest& manifest, int threads);

}  // namespace xvlm_edge::sdk
