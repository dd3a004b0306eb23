// The engine interface: run a graph of the catalogue (xvlm_edge/graphs.py) by name on host tensors.
//
// A GraphEngine is the loaded, verified model (programs, weights): built once, shared read-only by every
// thread. A GraphSession is one thread's working state (planned activation memory, delegate handles): each
// SDK context owns one, and a session is never used by two threads at once. The ExecuTorch engine
// (csrc/executorch/) is the CPU implementation; the TensorRT engine (csrc/tensorrt/graph_engine.hpp, built
// where TensorRT is found) the GPU one.
//
// Inputs and outputs come in the catalogue's order. A session checks each call against the shapes and
// bounds the engine was built for and throws EngineError naming the tensor, dimension and bound; cutting
// a large call into ones that fit is the caller's job (bounded_calls.hpp), as in the Python runtimes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace xvlm_edge::sdk {

class GraphSession {
 public:
  virtual ~GraphSession() = default;
  virtual std::vector<Tensor> run(const std::string& graph, const std::vector<const Tensor*>& inputs) = 0;
};

class GraphEngine {
 public:
  virtual ~GraphEngine() = default;
  virtual std::unique_ptr<GraphSession> open_session() const = 0;
};

}  // namespace xvlm_edge::sdk
