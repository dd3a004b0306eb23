// The TensorRT engine behind the SDK's GraphEngine interface (csrc/sdk/graph_engine.hpp): the engines of
// `xvlm-edge engines EXPORT_DIR` (one `<graph>.engine` + `<graph>.json` engine manifest per graph, in
// EXPORT_DIR/engines) run on a Jetson-class GPU for the same tasks the ExecuTorch engine runs on the CPU.
//
// Two halves. The TensorRT-free half (graph_engine_host.cpp) is everything that can be decided on plain
// structs: reading and verifying an engine directory (sha256 of every engine), the host-side dtype
// exchange (float16/bfloat16 engines take and give the SDK's float32, int32 ids its int64), the growth
// rule of the reused device buffers, the checks made before every call, and the GraphEntry the SDK's
// bounded calls read. It compiles without TensorRT and is tested on any machine
// (csrc/tests/test_tensorrt_graph_engine.cpp). The TensorRT half (graph_engine.cpp) is compiled into the
// SDK only where CMake finds TensorRT and CUDA (XVLM_EDGE_HAS_TENSORRT), and compile-checked everywhere
// else against csrc/tests/mock_tensorrt.
//
// Threads. The engine (one deserialised ICudaEngine per graph, the weights on the GPU once) is read-only
// after open_tensorrt_engine and shared by every thread. A session is one SDK context: per graph, its own
// execution context (TensorRT's activation memory, sized for the profile's max shapes) and device buffers,
// and one CUDA stream for everything it does. Use a session from one thread at a time; sessions on
// different threads run at once. Each run() returns after its stream has finished, so results are plain
// host tensors and nothing stays in flight between calls.
//
// What crosses the bus. The SDK's tasks and decoders keep their tensors on the host (sdk/tensor.hpp), so
// every run copies its inputs to the device and its outputs back, through pinned staging memory, in the
// engine's dtype. One caption_step of R beams after P cached tokens feeding t new ones (L layers, H heads,
// head dim d, K = 1 + N image tokens, vocabulary V, e = 4 bytes for an fp32 engine, 2 for fp16):
//   to the device:   text_ids 8Rt + self_atts 8R(P+t) + cross_atts 8RK
//                    + cache_k, cache_v 2eLRHPd + cross_k, cross_v 2eLHKd   (the cross K/V again each step)
//   to the host:     logits eRV + new_cache_k, new_cache_v 2eLRH(P+t)d
// so the self-attention cache crosses twice per step and grows with P. On a Jetson (GPU and CPU share
// DRAM) these are memory copies, not PCIe transfers; on a discrete GPU they are PCIe. Keeping the cache on
// the device would need a GraphSession call that hands back device tensors, which the interface does not
// have today (the Python TensorRT runtime keeps them on the device).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../sdk/graph_engine.hpp"
#include "../sdk/manifest.hpp"
#include "xvlm_edge/engine.hpp"

namespace xvlm_edge::sdk {

// ---- TensorRT-free (graph_engine_host.cpp) -------------------------------------------------------------

// Where `xvlm-edge engines EXPORT_DIR` writes the engines (xvlm_edge.export.tensorrt.DEFAULT_ENGINE_SUBDIR),
// which is where xvlm_edge.runtime.create_runtime(backend="tensorrt") looks for them.
inline constexpr const char* kEngineSubdir = "engines";
std::string engine_dir_of_export(const std::string& export_dir);  // EXPORT_DIR/engines

// One graph's engine manifest and the path of its engine file (verified).
struct EngineFile {
  EngineManifest manifest;
  std::string path;
};

// {graph: engine} of every `*.json` engine manifest in `directory`, as xvlm_edge.runtime.tensorrt's
// read_engine_dir reads it: each manifest parsed and validated (EngineManifest::load), its engine file
// present and its sha256 equal to the manifest's. Throws ModelError naming the file: no such directory, no
// manifest, a manifest that does not parse, two engines for one graph, a missing engine file, a sha256
// that differs (a corrupt or replaced engine). Needs no TensorRT and runs no engine.
std::map<std::string, EngineFile> read_engine_dir(const std::string& directory);

// The SDK's element type an engine's dtype is exchanged as: float32 for float32, float16 and bfloat16;
// int64 for int64 and int32. EngineError for the others (int8, uint8, bool never sit at a graph's I/O).
DataType host_dtype(DataType engine_dtype);

// Every input and output of `manifest` has a host dtype; ModelError naming the graph and tensor otherwise.
void check_host_exchangeable(const EngineManifest& manifest);

// IEEE binary16 and bfloat16 from float32, rounding to nearest even (infinities and NaN kept), and back
// (exact).
std::uint16_t float_to_half(float value) noexcept;
float half_to_float(std::uint16_t bits) noexcept;
std::uint16_t float_to_bfloat16(float value) noexcept;
float bfloat16_to_float(std::uint16_t bits) noexcept;

// Writes the elements of `x` to `dst` as `engine_dtype` (x.numel() * dtype_size(engine_dtype) bytes).
// EngineError naming `tensor` when x's dtype is not host_dtype(engine_dtype), or an int64 value does not
// fit an int32 engine input.
void pack_for_engine(const Tensor& x, DataType engine_dtype, void* dst, const std::string& tensor);

// The host tensor (host_dtype(engine_dtype), `shape`) of `src`, which holds num_elements(shape) elements of
// `engine_dtype`.
Tensor unpack_from_engine(const void* src, DataType engine_dtype, const Dims& shape);

// The capacity a reused device buffer of `capacity` bytes grows to so that it holds `needed`: unchanged when
// it already does; otherwise at least double (a decoder's cache grows one token a step: doubling reallocates
// log2 times, not once a step), never below `needed`, rounded up to kTensorAlignment and at least that, so
// an empty tensor still gets a real, aligned address.
std::size_t grown_capacity(std::size_t capacity, std::size_t needed) noexcept;

// The checks a session makes before any CUDA call: the input count, each input's dtype against the
// engine's (through host_dtype), then validate_inputs (names, ranks, static dims) and select_profile (every
// dynamic dim inside one profile). Returns {input name: shape}. EngineError naming the graph, tensor,
// dimension and allowed range.
std::map<std::string, Dims> check_engine_call(const EngineManifest& manifest, const std::vector<const Tensor*>& inputs);

// {tensor: {dimension: axis name}}: an export manifest's dynamic_axes of one graph (xvlm_edge/manifest.py).
using DynamicAxes = std::map<std::string, std::map<std::size_t, std::string>>;

// The GraphEntry the SDK reads (Manifest::graphs: bounded calls, the catalogue check) of one engine: file =
// the engine file, no method, no arena; each tensor with its host dtype (an fp16 engine looks float32 to the
// tasks: the session converts) and its shape, the dynamic dims named by `axes`; bounds[axis] = the
// intersection of the ranges profile 0 gives every input dim of that axis (the export builds one profile
// per graph; a call inside another profile still runs, the session selects profiles itself). ModelError
// when `axes` names a static dim, leaves a dynamic one unnamed, or one axis has no common range.
GraphEntry describe_engine_graph(const EngineManifest& manifest, const DynamicAxes& axes);

// ---- TensorRT (graph_engine.cpp): compiled only where TensorRT and CUDA are found ----------------------

#if defined(XVLM_EDGE_HAS_TENSORRT) && XVLM_EDGE_HAS_TENSORRT

// Reads `engine_dir` (read_engine_dir), checks every tensor is exchangeable with the host, and deserialises
// every engine on the calling thread's current CUDA device (LoadedEngine: TensorRT version, I/O and profiles
// against the manifest). Throws ModelError for a refused directory, EngineError when TensorRT refuses.
std::unique_ptr<GraphEngine> open_tensorrt_engine(const std::string& engine_dir);

#endif

}  // namespace xvlm_edge::sdk
