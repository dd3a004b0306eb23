// The SDK's TensorRT engine on a real GPU (built only where TensorRT and CUDA are found; see
// csrc/tensorrt/README.md for the commands):
//
//   xvlm_edge_tensorrt_graph_engine_gpu_check ENGINE_DIR
//
// For every graph of the directory (xvlm-edge engines writes it), with deterministic inputs at profile 0's
// opt shapes (ints 0, masks 1, floats a fixed pattern): a run, the same run again in the same session
// (reused buffers), a run at the max shapes (buffers grown) and the opt run once more, the opt run in a
// second session on another thread; every opt result must be bitwise equal and every output finite for an
// fp32 engine. A dimension past the profile's max must be refused with EngineError before any CUDA call,
// and the session must run normally afterwards. Prints one line per graph; exit 0 when all pass.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../tensorrt/graph_engine.hpp"

namespace {

using namespace xvlm_edge;
using namespace xvlm_edge::sdk;

std::vector<Tensor> inputs_at(const EngineManifest& m, int point) {  // point: 0 min, 1 opt, 2 max
  std::vector<Tensor> out;
  for (const TensorSpec& t : m.spec.inputs) {
    Dims shape = t.shape;
    if (!m.spec.profiles.empty() && m.spec.profiles[0].ranges.count(t.name)) {
      const DimRange& r = m.spec.profiles[0].ranges.at(t.name);
      shape = point == 0 ? r.min : point == 1 ? r.opt : r.max;
    }
    Tensor x(host_dtype(t.dtype), shape);
    const bool mask = t.name.size() >= 4 && t.name.compare(t.name.size() - 4, 4, "atts") == 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      if (x.dtype() == DataType::kInt64) {
        x.data<std::int64_t>()[i] = mask ? 1 : 0;
      } else {
        x.data<float>()[i] = 0.5f * std::sin(0.01f * static_cast<float>(i));
      }
    }
    out.push_back(std::move(x));
  }
  return out;
}

std::vector<const Tensor*> pointers(const std::vector<Tensor>& xs) {
  std::vector<const Tensor*> out;
  for (const Tensor& x : xs) out.push_back(&x);
  return out;
}

bool same(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].shape() != b[i].shape() || a[i].dtype() != b[i].dtype() || std::memcmp(a[i].raw(), b[i].raw(), a[i].nbytes()) != 0) return false;
  }
  return true;
}

bool finite(const std::vector<Tensor>& outputs) {
  for (const Tensor& y : outputs) {
    if (y.dtype() != DataType::kFloat32) continue;
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      if (!std::isfinite(y.data<float>()[i])) return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ENGINE_DIR\n", argv[0]);
    return 2;
  }
  int failures = 0;
  try {
    const std::map<std::string, EngineFile> files = read_engine_dir(argv[1]);
    const std::unique_ptr<GraphEngine> engine = open_tensorrt_engine(argv[1]);
    const std::unique_ptr<GraphSession> session = engine->open_session();
    for (const auto& [graph, file] : files) {
      const EngineManifest& m = file.manifest;
      const std::vector<Tensor> opt = inputs_at(m, 1), max = inputs_at(m, 2);
      const std::vector<Tensor> first = session->run(graph, pointers(opt));
      const bool repeat = same(first, session->run(graph, pointers(opt)));
      session->run(graph, pointers(max));
      const bool after_growth = same(first, session->run(graph, pointers(opt)));
      std::vector<Tensor> other;
      std::string other_error;
      std::thread([&] {
        try {
          other = engine->open_session()->run(graph, pointers(opt));
        } catch (const std::exception& e) {
          other_error = e.what();
        }
      }).join();
      const bool second_session = other_error.empty() && same(first, other);
      bool refused = true;
      if (!m.spec.profiles.empty() && !m.spec.profiles[0].ranges.empty()) {
        std::vector<Tensor> bad = inputs_at(m, 2);
        for (std::size_t i = 0; i < bad.size(); ++i) {
          const auto range = m.spec.profiles[0].ranges.find(m.spec.inputs[i].name);
          if (range == m.spec.profiles[0].ranges.end()) continue;
          Dims shape = bad[i].shape();
          for (std::size_t d = 0; d < shape.size(); ++d) {
            if (m.spec.inputs[i].shape[d] < 0) {
              ++shape[d];
              break;
            }
          }
          bad[i] = Tensor(bad[i].dtype(), shape);
          break;
        }
        try {
          session->run(graph, pointers(bad));
          refused = false;
        } catch (const EngineError&) {
        }
      }
      const bool after_refusal = same(first, session->run(graph, pointers(opt)));
      const bool ok_values = m.precision != "fp32" || finite(first);
      const bool ok = repeat && after_growth && second_session && refused && after_refusal && ok_values;
      failures += !ok;
      std::printf("%s %s: repeat %d, after growth %d, second session %d%s%s, past max refused %d, after refusal %d, finite %d\n",
                  ok ? "PASS" : "FAIL", graph.c_str(), repeat, after_growth, second_session, other_error.empty() ? "" : " ",
                  other_error.c_str(), refused, after_refusal, ok_values);
    }
  } catch (const std::exception& e) {
    std::printf("FAIL: %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
