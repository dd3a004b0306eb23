// The thin TensorRT layer of include/xvlm_edge/engine.hpp: EngineBuilder (ONNX -> strongly typed engine with
// optimisation profiles and a timing cache) and EngineRunner (deserialise, bind by name, zero-copy enqueueV3).
//
// Compiled only when CMake finds TensorRT (10 or 11). Every decision that can be made without TensorRT
// (profile choice, shape and dtype checks, version compatibility, manifest consistency) is made by
// core/engine_spec.cpp first; this file translates between our structs and nvinfer1 types and turns each
// failed TensorRT call into an EngineError carrying TensorRT's own error text. It is only ever compiled here
// against csrc/tests/mock_tensorrt (a syntax and type check, see csrc/tensorrt/README.md).
#include <NvInfer.h>
#include <NvOnnxParser.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "xvlm_edge/engine.hpp"

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "xvlm_edge's TensorRT runner needs TensorRT 10 or newer (the name-based tensor API and enqueueV3)"
#endif

namespace xvlm_edge {

namespace {

// TensorRT keeps one logger per process, so this is one object for every builder and runtime. Errors are
// collected per thread, so the exception thrown by a failed call carries the lines that call logged.
class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (msg == nullptr) return;
    if (severity == Severity::kERROR || severity == Severity::kINTERNAL_ERROR) {
      errors_ += errors_.empty() ? "" : "\n";
      errors_ += msg;
    } else if (severity == Severity::kWARNING) {
      std::fprintf(stderr, "xvlm_edge: TensorRT warning: %s\n", msg);
    }
  }
  // The errors logged on this thread since the last call, as " (TensorRT: ...)" or "".
  std::string take_errors() {
    std::string out = errors_.empty() ? "" : " (TensorRT: " + errors_ + ")";
    errors_.clear();
    return out;
  }

 private:
  static thread_local std::string errors_;
};
thread_local std::string Logger::errors_;

Logger& logger() {
  static Logger instance;
  return instance;
}

[[noreturn]] void fail(const std::string& what) { throw EngineError(what + logger().take_errors()); }

nvinfer1::Dims to_trt(const Dims& dims, const std::string& name) {
  nvinfer1::Dims out{};
  if (dims.size() > static_cast<std::size_t>(nvinfer1::Dims::MAX_DIMS)) {
    throw EngineError("tensor '" + name + "' has rank " + std::to_string(dims.size()) + "; TensorRT allows " +
                      std::to_string(nvinfer1::Dims::MAX_DIMS));
  }
  out.nbDims = static_cast<std::int32_t>(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i) out.d[i] = dims[i];
  return out;
}

Dims from_trt(const nvinfer1::Dims& dims) {
  Dims out;
  for (std::int32_t i = 0; i < dims.nbDims; ++i) out.push_back(static_cast<std::int64_t>(dims.d[i]));
  return out;
}

DataType from_trt(nvinfer1::DataType type, const std::string& name) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return DataType::kFloat32;
    case nvinfer1::DataType::kHALF: return DataType::kFloat16;
    case nvinfer1::DataType::kBF16: return DataType::kBFloat16;
    case nvinfer1::DataType::kINT8: return DataType::kInt8;
    case nvinfer1::DataType::kUINT8: return DataType::kUInt8;
    case nvinfer1::DataType::kINT32: return DataType::kInt32;
    case nvinfer1::DataType::kINT64: return DataType::kInt64;
    case nvinfer1::DataType::kBOOL: return DataType::kBool;
    default:
      throw EngineError("tensor '" + name + "' has a TensorRT data type (" + std::to_string(static_cast<int>(type)) +
                        ") that xvlm_edge graphs never use at their inputs or outputs (FP8/INT4/FP4 I/O)");
  }
}

std::vector<char> read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError(std::string(what) + " " + path + " cannot be opened");
  std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw EngineError(std::string(what) + " " + path + " could not be read");
  return data;
}

// Temporary file + rename, so a crash never leaves a truncated engine or cache under the final name.
void write_file_atomic(const std::string& path, const void* data, std::size_t size, const char* what) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    out.flush();
    if (!out) throw EngineError(std::string("cannot write the ") + what + " " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw EngineError(std::string("cannot move the ") + what + " to " + path + ": " + ec.message());
}

}  // namespace

TensorRTVersion runtime_tensorrt_version() { return tensorrt_version_from_int(getInferLibVersion()); }

// ---- builder ------------------------------------------------------------------------------------------

EngineBuilder::EngineBuilder(BuildOptions options) : options_(std::move(options)) {}

EngineSpec EngineBuilder::build() {
  logger().take_errors();
  std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger()));
  if (!builder) fail("TensorRT could not create a builder (is a CUDA device visible?)");

#if NV_TENSORRT_MAJOR >= 11
  // TensorRT 11: every network is strongly typed (the flag is deprecated and ignored).
  const nvinfer1::NetworkDefinitionCreationFlags flags = 0;
#else
  // TensorRT 10: explicit batch is implicit; strong typing takes precision from the ONNX types and Q/DQ
  // nodes, which is what TensorRT 11 requires, so one ONNX export serves both.
  const auto flags = 1U << static_cast<std::uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#endif
  std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
  if (!network) fail("TensorRT could not create a network definition");

  std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger()));
  if (!parser) fail("TensorRT could not create the ONNX parser");
  if (!parser->parseFromFile(options_.onnx_path.c_str(),
                             static_cast<std::int32_t>(nvinfer1::ILogger::Severity::kWARNING))) {
    std::string errors;
    for (std::int32_t i = 0; i < parser->getNbErrors(); ++i) {
      errors += "\n  " + std::string(parser->getError(i)->desc());
    }
    fail("TensorRT's ONNX parser rejected " + options_.onnx_path + ":" + errors);
  }

  EngineSpec spec;
  for (std::int32_t i = 0; i < network->getNbInputs(); ++i) {
    nvinfer1::ITensor* t = network->getInput(i);
    spec.inputs.push_back({t->getName(), from_trt(t->getType(), t->getName()), from_trt(t->getDimensions())});
  }
  for (std::int32_t i = 0; i < network->getNbOutputs(); ++i) {
    nvinfer1::ITensor* t = network->getOutput(i);
    spec.outputs.push_back({t->getName(), from_trt(t->getType(), t->getName()), from_trt(t->getDimensions())});
  }
  spec.profiles = options_.profiles;
  spec.validate();  // every dynamic input has a range in every profile, ranks agree, static dims pinned

  std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
  if (!config) fail("TensorRT could not create a builder config");
  config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, options_.workspace_bytes);

  for (std::size_t p = 0; p < spec.profiles.size(); ++p) {
    nvinfer1::IOptimizationProfile* profile = builder->createOptimizationProfile();  // owned by the builder
    if (profile == nullptr) fail("TensorRT could not create optimisation profile " + std::to_string(p));
    for (const auto& [name, range] : spec.profiles[p].ranges) {
      using Select = nvinfer1::OptProfileSelector;
      const bool ok = profile->setDimensions(name.c_str(), Select::kMIN, to_trt(range.min, name)) &&
                      profile->setDimensions(name.c_str(), Select::kOPT, to_trt(range.opt, name)) &&
                      profile->setDimensions(name.c_str(), Select::kMAX, to_trt(range.max, name));
      if (!ok) fail("TensorRT refused profile " + std::to_string(p) + "'s range for input '" + name + "'");
    }
    if (config->addOptimizationProfile(profile) < 0) fail("TensorRT refused optimisation profile " + std::to_string(p));
  }

  // The timing cache: kernel timings keyed by layer and device, so rebuilding (another precision, another
  // profile) skips the autotuning already done on this GPU. A cache from another TensorRT is refused.
  std::unique_ptr<nvinfer1::ITimingCache> cache;
  if (!options_.timing_cache_path.empty()) {
    std::vector<char> blob;
    const std::string& path = options_.timing_cache_path;
    if (std::filesystem::exists(path)) blob = read_file(path, "timing cache");
    cache.reset(config->createTimingCache(blob.data(), blob.size()));
    if (!cache) fail("TensorRT could not load the timing cache " + path + " (delete it to start over)");
    if (!config->setTimingCache(*cache, /*ignoreMismatch=*/false)) {
      fail("TensorRT refused the timing cache " + path + " (built on another device or version)");
    }
  }

  std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
  if (!plan || plan->size() == 0) fail("TensorRT could not build an engine from " + options_.onnx_path);
  write_file_atomic(options_.engine_path, plan->data(), plan->size(), "engine");

  if (cache) {
    std::unique_ptr<nvinfer1::IHostMemory> blob(config->getTimingCache()->serialize());
    if (!blob) fail("TensorRT could not serialise the timing cache");
    write_file_atomic(options_.timing_cache_path, blob->data(), blob->size(), "timing cache");
  }
  return spec;
}

// ---- runner -------------------------------------------------------------------------------------------

struct LoadedEngine::Impl {
  EngineManifest manifest;
  // Declaration order is destruction order reversed: the engine goes before the runtime, as TensorRT requires.
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  // createExecutionContext allocates from the engine; contexts of several threads are created one at a time.
  std::mutex context_mutex;

  // The engine file must declare exactly the manifest's tensors, dtypes, shapes and profiles.
  void check_engine_matches_manifest() const {
    const EngineSpec& spec = manifest.spec;
    const std::string where = "engine " + manifest.engine + " does not match its manifest: ";
    const std::int32_t n = engine->getNbIOTensors();
    if (static_cast<std::size_t>(n) != spec.inputs.size() + spec.outputs.size()) {
      throw EngineError(where + "it has " + std::to_string(n) + " I/O tensors, the manifest lists " +
                        std::to_string(spec.inputs.size() + spec.outputs.size()));
    }
    for (std::int32_t i = 0; i < n; ++i) {
      const std::string name = engine->getIOTensorName(i);
      const bool is_input = engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
      const TensorSpec* t = is_input ? spec.find_input(name) : spec.find_output(name);
      if (t == nullptr) {
        throw EngineError(where + "the manifest has no " + (is_input ? "input" : "output") + " '" + name + "'");
      }
      if (from_trt(engine->getTensorDataType(name.c_str()), name) != t->dtype) {
        throw EngineError(where + "tensor '" + name + "' dtype differs");
      }
      const Dims shape = from_trt(engine->getTensorShape(name.c_str()));
      if (shape != t->shape) {
        throw EngineError(where + "tensor '" + name + "' is " + format_dims(shape) + " in the engine, " +
                          format_dims(t->shape) + " in the manifest");
      }
    }
    const auto engine_profiles = static_cast<std::size_t>(engine->getNbOptimizationProfiles());
    if (engine_profiles != std::max<std::size_t>(spec.profiles.size(), 1)) {
      throw EngineError(where + "it has " + std::to_string(engine->getNbOptimizationProfiles()) +
                        " optimisation profiles, the manifest " + std::to_string(spec.profiles.size()));
    }
    for (std::size_t p = 0; p < spec.profiles.size(); ++p) {
      for (const auto& [name, range] : spec.profiles[p].ranges) {
        const auto get = [&](nvinfer1::OptProfileSelector s) {
          return from_trt(engine->getProfileShape(name.c_str(), static_cast<std::int32_t>(p), s));
        };
        using Select = nvinfer1::OptProfileSelector;
        if (get(Select::kMIN) != range.min || get(Select::kOPT) != range.opt || get(Select::kMAX) != range.max) {
          throw EngineError(where + "profile " + std::to_string(p) + " range of '" + name + "' differs");
        }
      }
    }
  }
};

LoadedEngine::LoadedEngine(EngineManifest manifest, const std::string& engine_path) : impl_(std::make_unique<Impl>()) {
  manifest.validate();
  check_tensorrt_compatible(parse_tensorrt_version(manifest.tensorrt_version), runtime_tensorrt_version());
  impl_->manifest = std::move(manifest);
  const std::vector<char> blob = read_file(engine_path, "engine");
  logger().take_errors();
  impl_->runtime.reset(nvinfer1::createInferRuntime(logger()));
  if (!impl_->runtime) fail("TensorRT could not create a runtime (is a CUDA device visible?)");
  impl_->engine.reset(impl_->runtime->deserializeCudaEngine(blob.data(), blob.size()));
  if (!impl_->engine) fail("TensorRT could not deserialise " + engine_path);
  impl_->check_engine_matches_manifest();
}

LoadedEngine::~LoadedEngine() = default;

const EngineManifest& LoadedEngine::manifest() const noexcept { return impl_->manifest; }

struct EngineRunner::Impl {
  // Declaration order is destruction order reversed: the context goes before the engine it came from.
  std::shared_ptr<const LoadedEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  std::int32_t profile = 0;  // a new context starts on profile 0

  const EngineManifest& manifest() const noexcept { return engine->manifest(); }

  std::map<std::string, Dims> prepare(const std::map<std::string, Dims>& input_shapes, cudaStream_t stream) {
    std::vector<TensorArg> args;
    for (const auto& [name, shape] : input_shapes) {
      const TensorSpec* t = manifest().spec.find_input(name);
      args.push_back({name, t ? t->dtype : DataType::kFloat32, shape, nullptr});
    }
    validate_inputs(manifest().spec, args);
    const auto& profiles = manifest().spec.profiles;
    const auto wanted = profiles.empty() ? 0 : static_cast<std::int32_t>(select_profile(profiles, input_shapes));
    if (wanted != profile) {
      if (!context->setOptimizationProfileAsync(wanted, stream)) {
        fail("TensorRT could not switch to profile " + std::to_string(wanted));
      }
      profile = wanted;
    }
    for (const auto& [name, shape] : input_shapes) {
      if (!context->setInputShape(name.c_str(), to_trt(shape, name))) {
        fail("TensorRT refused shape " + format_dims(shape) + " for input '" + name + "'");
      }
    }
    std::map<std::string, Dims> out;
    for (const TensorSpec& t : manifest().spec.outputs) {
      Dims shape = from_trt(context->getTensorShape(t.name.c_str()));
      if (std::find(shape.begin(), shape.end(), -1) != shape.end() || shape.size() != t.shape.size()) {
        fail("output '" + t.name + "' has no static shape for these inputs (" + format_dims(shape) +
             "); data-dependent output shapes are not supported");
      }
      out.emplace(t.name, std::move(shape));
    }
    return out;
  }
};

EngineRunner::EngineRunner(EngineManifest manifest, const std::string& engine_path)
    : EngineRunner(std::make_shared<const LoadedEngine>(std::move(manifest), engine_path)) {}

EngineRunner::EngineRunner(std::shared_ptr<const LoadedEngine> engine) : impl_(std::make_unique<Impl>()) {
  if (!engine) throw EngineError("EngineRunner needs a loaded engine, got none");
  impl_->engine = std::move(engine);
  LoadedEngine::Impl& loaded = *impl_->engine->impl_;
  {
    std::lock_guard<std::mutex> lock(loaded.context_mutex);
    logger().take_errors();
    impl_->context.reset(loaded.engine->createExecutionContext());
  }
  if (!impl_->context) fail("TensorRT could not create an execution context for " + impl_->manifest().engine);
}

EngineRunner::~EngineRunner() = default;

const EngineManifest& EngineRunner::manifest() const noexcept { return impl_->manifest(); }

std::map<std::string, Dims> EngineRunner::prepare(const std::map<std::string, Dims>& input_shapes,
                                                  std::uintptr_t stream_handle) {
  return impl_->prepare(input_shapes, reinterpret_cast<cudaStream_t>(stream_handle));
}

void EngineRunner::run(const std::vector<TensorArg>& inputs, const std::vector<TensorArg>& outputs,
                       std::uintptr_t stream_handle) {
  // The handle is torch.cuda.Stream.cuda_stream (or any cudaStream_t the caller owns).
  auto* stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const EngineSpec& spec = impl_->manifest().spec;
  validate_inputs(spec, inputs);
  std::map<std::string, Dims> shapes;
  for (const TensorArg& a : inputs) shapes.emplace(a.name, a.shape);
  const std::map<std::string, Dims> expected = impl_->prepare(shapes, stream);
  validate_outputs(spec, expected, outputs);
  check_device_pointers(inputs);
  check_device_pointers(outputs);
  for (const auto* list : {&inputs, &outputs}) {
    for (const TensorArg& a : *list) {
      if (!impl_->context->setTensorAddress(a.name.c_str(), a.data)) {
        fail("TensorRT could not bind tensor '" + a.name + "'");
      }
    }
  }
  if (!impl_->context->enqueueV3(stream)) fail("TensorRT could not enqueue " + impl_->manifest().engine);
}

}  // namespace xvlm_edge
