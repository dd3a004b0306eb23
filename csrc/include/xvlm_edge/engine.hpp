// TensorRT engines of the xvlm_edge graphs: the engine manifest, optimisation-profile selection and input
// validation (TensorRT-free, compiled and tested everywhere), plus the builder and runner classes (compiled
// only when CMake finds TensorRT; XVLM_EDGE_HAS_TENSORRT is then defined for every consumer of the core).
//
// Every check a TensorRT call would make later is made here first, on plain structs, so a bad shape, a
// missing tensor or a version mismatch becomes an EngineError naming the tensor, the dimension and the
// allowed range, never a TensorRT log line followed by a null pointer. Nothing here aborts on bad input.
//
// The manifest is a small JSON document the export step writes beside each engine file (schema in
// csrc/tensorrt/README.md). It is parsed in C++, not in Python, because the lamp firmware loads engines
// without Python and must refuse the same bad manifests the Python driver refuses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "xvlm_edge/errors.hpp"

namespace xvlm_edge {

// Element types an engine tensor may have; names follow torch ("float32", "int64", ...).
enum class DataType { kFloat32, kFloat16, kBFloat16, kInt8, kUInt8, kInt32, kInt64, kBool };

std::string_view dtype_name(DataType dtype) noexcept;
DataType parse_dtype(std::string_view name);  // throws EngineError listing the known names
std::size_t dtype_size(DataType dtype) noexcept;

// A shape; -1 marks a dynamic dimension in a TensorSpec (never in a concrete tensor's shape).
using Dims = std::vector<std::int64_t>;
inline constexpr std::size_t kMaxRank = 8;  // TensorRT's Dims::MAX_DIMS

std::string format_dims(const Dims& dims);  // "(2, 3, -1)"

// One input or output of an engine, as the network declares it.
struct TensorSpec {
  std::string name;
  DataType dtype = DataType::kFloat32;
  Dims shape;  // -1 = dynamic
};

// The allowed range of one input's shape within one optimisation profile; opt is what TensorRT tunes for.
struct DimRange {
  Dims min;
  Dims opt;
  Dims max;
};

// One optimisation profile: a range for every dynamic input (std::map keeps messages in a stable order).
struct Profile {
  std::map<std::string, DimRange> ranges;
};

// A concrete tensor handed to an engine: name, dtype and shape (no -1), plus an optional device pointer.
struct TensorArg {
  std::string name;
  DataType dtype = DataType::kFloat32;
  Dims shape;
  void* data = nullptr;  // device memory, borrowed: the runner never copies and never frees it
};

// The I/O of an engine and its profiles. validate() checks that they are consistent with each other.
struct EngineSpec {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::vector<Profile> profiles;

  // Throws EngineError on: an empty or duplicate name (inputs and outputs share one namespace in TensorRT),
  // rank 0 or > kMaxRank, a dim < -1, a dynamic input without a range in some profile, a range for an
  // unknown tensor, a range whose rank differs from the spec, min <= opt <= max violated, or a static dim
  // that a range does not pin to its value.
  void validate() const;

  const TensorSpec* find_input(std::string_view name) const noexcept;
  const TensorSpec* find_output(std::string_view name) const noexcept;
};

// Index of the first profile whose [min, max] contains every given input shape. Inputs without a range in
// a profile are not constrained by it. Throws EngineError when profiles is empty or none fits; the message
// names, for each profile, the first input and dim that fell outside and the allowed range.
std::size_t select_profile(const std::vector<Profile>& profiles, const std::map<std::string, Dims>& shapes);

// Checks concrete inputs against the spec: every input given exactly once, no unknown name, dtype and rank
// equal, static dims equal, no negative dim. Throws EngineError naming the tensor. Does not pick a profile.
void validate_inputs(const EngineSpec& spec, const std::vector<TensorArg>& inputs);

// Same for outputs, against the shapes the engine will produce (expected, from the runner).
void validate_outputs(const EngineSpec& spec, const std::map<std::string, Dims>& expected,
                      const std::vector<TensorArg>& outputs);

// TensorRT's setTensorAddress requires every I/O pointer to be aligned to 256 bytes.
inline constexpr std::size_t kTensorAlignment = 256;

// Every tensor with elements has a non-null pointer aligned to `alignment`. Throws EngineError naming the
// tensor (a torch view at an offset is the usual cause: pass a fresh tensor or .clone() it).
void check_device_pointers(const std::vector<TensorArg>& tensors, std::size_t alignment = kTensorAlignment);

// Elements of a concrete shape; throws EngineError on a negative dim or int64 overflow.
std::int64_t num_elements(const Dims& dims);

// "major.minor.patch[.build]" of TensorRT.
struct TensorRTVersion {
  int major = 0;
  int minor = 0;
  int patch = 0;
  std::string to_string() const;
};
TensorRTVersion parse_tensorrt_version(std::string_view text);  // throws EngineError
TensorRTVersion tensorrt_version_from_int(std::int64_t encoded);  // NV_TENSORRT_VERSION: major*10000+minor*100+patch

// A serialised engine runs only on the TensorRT major.minor that built it (version-compatible engines
// aside, which we do not build). Throws EngineError naming both versions and the fix.
void check_tensorrt_compatible(const TensorRTVersion& built_with, const TensorRTVersion& runtime);

// The JSON document beside an engine file. parse() rejects unknown keys, wrong types, a missing field, a
// file name with a path, a sha256 that is not 64 hex digits, and anything EngineSpec::validate rejects.
struct EngineManifest {
  static constexpr int kSchema = 1;

  int schema = kSchema;
  std::string graph;             // xvlm_edge graph name: "vision", "text", "fusion", "caption_step", ...
  std::string engine;            // engine file name, relative to the manifest's directory
  std::string sha256;            // of the engine file (lower-case hex); checked by the loader
  std::string tensorrt_version;  // TensorRT that built the engine, "10.3.0"
  std::string precision;         // "fp32" | "fp16" | "bf16" | "int8" (informational for the runner)
  EngineSpec spec;

  static EngineManifest parse(std::string_view json);  // throws EngineError("engine manifest: ...")
  static EngineManifest load(const std::string& path);  // reads the file, then parse(); path in messages
  std::string to_json() const;                          // parse(to_json()) == *this
  void validate() const;
};

#if defined(XVLM_EDGE_HAS_TENSORRT) && XVLM_EDGE_HAS_TENSORRT

// TensorRT the process linked against (getInferLibVersion()).
TensorRTVersion runtime_tensorrt_version();

struct BuildOptions {
  std::string onnx_path;
  std::string engine_path;        // written atomically (temporary file, then rename)
  std::string timing_cache_path;  // loaded if it exists, saved after the build; empty = no cache
  std::vector<Profile> profiles;  // at least one when the network has dynamic inputs
  std::size_t workspace_bytes = std::size_t{1} << 30;
};

// ONNX -> serialised engine. Strongly typed (precision comes from the ONNX types and Q/DQ nodes, as TensorRT
// 11 requires), one optimisation profile per Profile, timing cache reused across builds.
class EngineBuilder {
 public:
  explicit EngineBuilder(BuildOptions options);
  // Builds, writes engine_path and returns the spec read from the parsed network (inputs, outputs, profiles).
  // The caller writes the manifest (it owns the sha256 and the precision label). Throws EngineError with
  // the parser's or builder's messages on failure.
  EngineSpec build();

 private:
  BuildOptions options_;
};

// A deserialised engine, checked against its manifest: the TensorRT version before deserialising, the I/O
// names, dtypes, shapes and profile ranges after. Read-only once built: runners on any number of threads
// create their execution contexts from one LoadedEngine (shared_ptr), so the weights sit on the GPU once.
class LoadedEngine {
 public:
  LoadedEngine(EngineManifest manifest, const std::string& engine_path);  // throws EngineError on any mismatch
  ~LoadedEngine();
  LoadedEngine(const LoadedEngine&) = delete;
  LoadedEngine& operator=(const LoadedEngine&) = delete;

  const EngineManifest& manifest() const noexcept;

 private:
  friend class EngineRunner;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One execution context of an engine (its activation memory, its profile and shapes). Not thread-safe: one
// runner per thread or per stream; runners of one LoadedEngine may run on different threads at once.
class EngineRunner {
 public:
  // Loads its own engine (LoadedEngine's checks), then creates the context.
  EngineRunner(EngineManifest manifest, const std::string& engine_path);
  // A new context of a shared engine.
  explicit EngineRunner(std::shared_ptr<const LoadedEngine> engine);
  ~EngineRunner();
  EngineRunner(const EngineRunner&) = delete;
  EngineRunner& operator=(const EngineRunner&) = delete;

  const EngineManifest& manifest() const noexcept;

  // Validates the input shapes, selects the profile (switching it on `stream` if needed), sets the shapes on
  // the context and returns the output shapes TensorRT infers: the caller allocates exactly these.
  std::map<std::string, Dims> prepare(const std::map<std::string, Dims>& input_shapes, std::uintptr_t stream = 0);

  // Zero-copy run: binds every tensor's device pointer by name and enqueues on `stream` (a cudaStream_t as
  // an integer; 0 = the legacy default stream). Returns once enqueued; synchronise the stream to read.
  void run(const std::vector<TensorArg>& inputs, const std::vector<TensorArg>& outputs, std::uintptr_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

#endif  // XVLM_EDGE_HAS_TENSORRT

}  // namespace xvlm_edge
