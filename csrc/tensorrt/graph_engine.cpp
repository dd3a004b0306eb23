// The TensorRT half of the SDK's TensorRT engine (graph_engine.hpp): LoadedEngine per graph shared by every
// session; per session an EngineRunner (execution context) per graph, device buffers grown and reused, pinned
// staging memory and one CUDA stream. Compiled only where TensorRT and CUDA are found; compile-checked
// elsewhere against csrc/tests/mock_tensorrt (the target xvlm_edge_tensorrt_graph_engine_mock_compile_*).
//
// One run: check_engine_call (no CUDA yet) -> EngineRunner::prepare (profile, shapes, output shapes) ->
// inputs packed into pinned memory in the engine's dtype -> H2D copies -> enqueueV3 -> D2H copies -> the
// stream synchronised -> outputs unpacked into host tensors. Nothing is in flight when run() returns or
// throws, so the staging memory and the buffers are free to grow at the next call.
#include <cuda_runtime_api.h>

#include <utility>

#include "graph_engine.hpp"

namespace xvlm_edge::sdk {
namespace {

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    throw EngineError("CUDA could not " + what + ": " + cudaGetErrorString(status) + " (error " + std::to_string(static_cast<int>(status)) + ")");
  }
}

// Memory that grows (grown_capacity) and is reused: device memory (cudaMalloc, 256-byte aligned as
// TensorRT requires) or pinned host memory (cudaMallocHost, so the copies are asynchronous DMA). Only grown
// while its stream is idle.
template <cudaError_t (*Allocate)(void**, std::size_t), cudaError_t (*Free)(void*)>
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() {
    if (data_ != nullptr) static_cast<void>(Free(data_));
  }

  // At least `bytes`, aligned; the contents are not kept.
  void* reserve(std::size_t bytes, const std::string& what) {
    const std::size_t capacity = grown_capacity(capacity_, bytes);
    if (capacity == capacity_) return data_;
    if (data_ != nullptr) check_cuda(Free(data_), "free the buffer of " + what);
    data_ = nullptr;
    capacity_ = 0;
    check_cuda(Allocate(&data_, capacity), "allocate " + std::to_string(capacity) + " bytes for " + what);
    capacity_ = capacity;
    return data_;
  }

 private:
  void* data_ = nullptr;
  std::size_t capacity_ = 0;
};

// Plain functions for the template: the CUDA names may be overloaded (cuda_runtime.h) or macros (per-thread
// default stream builds).
cudaError_t allocate_device(void** data, std::size_t bytes) { return cudaMalloc(data, bytes); }
cudaError_t free_device(void* data) { return cudaFree(data); }
cudaError_t allocate_host(void** data, std::size_t bytes) { return cudaMallocHost(data, bytes); }
cudaError_t free_host(void* data) { return cudaFreeHost(data); }
using DeviceBuffer = GrowingBuffer<&allocate_device, &free_device>;
using PinnedBuffer = GrowingBuffer<&allocate_host, &free_host>;

std::size_t aligned(std::size_t bytes) { return (bytes + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment; }

std::size_t bytes_of(const Dims& shape, DataType dtype) { return static_cast<std::size_t>(num_elements(shape)) * dtype_size(dtype); }

class TensorRTGraphEngine final : public GraphEngine {
 public:
  explicit TensorRTGraphEngine(const std::string& engine_dir) {
    for (auto& [graph, file] : read_engine_dir(engine_dir)) {
      check_host_exchangeable(file.manifest);
      engines_.emplace(graph, std::make_shared<const LoadedEngine>(std::move(file.manifest), file.path));
    }
  }

  std::unique_ptr<GraphSession> open_session() const override;

  const std::shared_ptr<const LoadedEngine>& engine(const std::string& graph) const {
    const auto it = engines_.find(graph);
    if (it == engines_.end()) throw EngineError("the engine directory has no engine for graph " + graph);
    return it->second;
  }

 private:
  std::map<std::string, std::shared_ptr<const LoadedEngine>> engines_;
};

// One session's state for one graph: its execution context and a device buffer per input and output.
struct GraphState {
  explicit GraphState(std::shared_ptr<const LoadedEngine> engine)
      : runner(std::move(engine)), inputs(runner.manifest().spec.inputs.size()), outputs(runner.manifest().spec.outputs.size()) {}
  EngineRunner runner;
  std::vector<DeviceBuffer> inputs;
  std::vector<DeviceBuffer> outputs;
};

class TensorRTSession final : public GraphSession {
 public:
  explicit TensorRTSession(const TensorRTGraphEngine& engine) : engine_(engine) {
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "create a stream");
  }
  ~TensorRTSession() override {
    static_cast<void>(cudaStreamSynchronize(stream_));  // nothing is in flight after run(); for safety only
    graphs_.clear();                                     // contexts and buffers before the stream they ran on
    static_cast<void>(cudaStreamDestroy(stream_));
  }
  TensorRTSession(const TensorRTSession&) = delete;
  TensorRTSession& operator=(const TensorRTSession&) = delete;

  std::vector<Tensor> run(const std::string& graph, const std::vector<const Tensor*>& inputs) override {
    const EngineManifest& manifest = engine_.engine(graph)->manifest();
    const std::map<std::string, Dims> shapes = check_engine_call(manifest, inputs);  // before any CUDA call
    GraphState& state = this->state(graph);
    const auto handle = reinterpret_cast<std::uintptr_t>(stream_);
    try {
      return run_prepared(graph, manifest, state, inputs, state.runner.prepare(shapes, handle), handle);
    } catch (...) {
      static_cast<void>(cudaStreamSynchronize(stream_));  // no copy may still read memory the next call regrows
      throw;
    }
  }

 private:
  GraphState& state(const std::string& graph) {
    auto it = graphs_.find(graph);
    if (it == graphs_.end()) it = graphs_.emplace(graph, std::make_unique<GraphState>(engine_.engine(graph))).first;
    return *it->second;
  }

  std::vector<Tensor> run_prepared(const std::string& graph, const EngineManifest& manifest, GraphState& state,
                                   const std::vector<const Tensor*>& inputs, const std::map<std::string, Dims>& output_shapes,
                                   std::uintptr_t handle) {
    const std::vector<TensorSpec>& in_specs = manifest.spec.inputs;
    const std::vector<TensorSpec>& out_specs = manifest.spec.outputs;
    // Staging layout: each tensor at a 256-byte aligned offset of one pinned block per direction.
    std::vector<std::size_t> in_bytes, in_offsets, out_bytes, out_offsets;
    std::size_t in_total = 0, out_total = 0;
    for (std::size_t i = 0; i < in_specs.size(); ++i) {
      in_bytes.push_back(bytes_of(inputs[i]->shape(), in_specs[i].dtype));
      in_offsets.push_back(in_total);
      in_total += aligned(in_bytes.back());
    }
    std::vector<const Dims*> out_dims;
    for (const TensorSpec& t : out_specs) {
      out_dims.push_back(&output_shapes.at(t.name));
      out_bytes.push_back(bytes_of(*out_dims.back(), t.dtype));
      out_offsets.push_back(out_total);
      out_total += aligned(out_bytes.back());
    }
    auto* in_staging = static_cast<unsigned char*>(staging_in_.reserve(in_total, "graph " + graph + " input staging"));
    auto* out_staging = static_cast<unsigned char*>(staging_out_.reserve(out_total, "graph " + graph + " output staging"));

    // Every input is converted before the first copy: a value the engine's dtype cannot hold is refused first.
    for (std::size_t i = 0; i < in_specs.size(); ++i) pack_for_engine(*inputs[i], in_specs[i].dtype, in_staging + in_offsets[i], in_specs[i].name);
    std::vector<TensorArg> in_args, out_args;
    for (std::size_t i = 0; i < in_specs.size(); ++i) {
      const TensorSpec& t = in_specs[i];
      void* device = state.inputs[i].reserve(in_bytes[i], "graph " + graph + " input " + t.name);
      if (in_bytes[i] > 0) {
        check_cuda(cudaMemcpyAsync(device, in_staging + in_offsets[i], in_bytes[i], cudaMemcpyHostToDevice, stream_),
                   "copy input " + t.name + " of graph " + graph + " to the device");
      }
      in_args.push_back({t.name, t.dtype, inputs[i]->shape(), device});
    }
    for (std::size_t i = 0; i < out_specs.size(); ++i) {
      const TensorSpec& t = out_specs[i];
      out_args.push_back({t.name, t.dtype, *out_dims[i], state.outputs[i].reserve(out_bytes[i], "graph " + graph + " output " + t.name)});
    }
    state.runner.run(in_args, out_args, handle);
    for (std::size_t i = 0; i < out_specs.size(); ++i) {
      if (out_bytes[i] == 0) continue;
      check_cuda(cudaMemcpyAsync(out_staging + out_offsets[i], out_args[i].data, out_bytes[i], cudaMemcpyDeviceToHost, stream_),
                 "copy output " + out_specs[i].name + " of graph " + graph + " to the host");
    }
    check_cuda(cudaStreamSynchronize(stream_), "run graph " + graph);
    std::vector<Tensor> outputs;
    for (std::size_t i = 0; i < out_specs.size(); ++i) {
      outputs.push_back(unpack_from_engine(out_staging + out_offsets[i], out_specs[i].dtype, *out_dims[i]));
    }
    return outputs;
  }

  const TensorRTGraphEngine& engine_;
  cudaStream_t stream_ = nullptr;
  PinnedBuffer staging_in_;
  PinnedBuffer staging_out_;
  std::map<std::string, std::unique_ptr<GraphState>> graphs_;
};

std::unique_ptr<GraphSession> TensorRTGraphEngine::open_session() const { return std::make_unique<TensorRTSession>(*this); }

}  // namespace

std::unique_ptr<GraphEngine> open_tensorrt_engine(const std::string& engine_dir) { return std::make_unique<TensorRTGraphEngine>(engine_dir); }

}  // namespace xvlm_edge::sdk
