// The TensorRT-free half of the SDK's TensorRT engine (graph_engine.hpp): engine directories, the host-side
// dtype exchange, buffer growth, call checks and the SDK's description of an engine graph.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "../sdk/sha256.hpp"
#include "graph_engine.hpp"

namespace xvlm_edge::sdk {
namespace {

namespace fs = std::filesystem;

std::uint32_t bits_of(float value) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  return u;
}

float float_of(std::uint32_t u) noexcept {
  float value;
  std::memcpy(&value, &u, sizeof value);
  return value;
}

// `value` >> `shift`, rounded to nearest, ties to even (shift in [1, 31]).
std::uint32_t shift_round_even(std::uint32_t value, int shift) noexcept {
  const std::uint32_t kept = value >> shift;
  const std::uint32_t rest = value & ((std::uint32_t{1} << shift) - 1);
  const std::uint32_t half = std::uint32_t{1} << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1))) ? 1 : 0);
}

std::string rebuild_hint(const std::string& directory) {
  return "rebuild the engines on the device: xvlm-edge engines " + fs::path(directory).parent_path().string();
}

}  // namespace

std::string engine_dir_of_export(const std::string& export_dir) { return (fs::path(export_dir) / kEngineSubdir).string(); }

std::map<std::string, EngineFile> read_engine_dir(const std::string& directory) {
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    throw ModelError("engine directory " + directory + " does not exist; " + rebuild_hint(directory));
  }
  std::vector<fs::path> manifests;
  for (fs::directory_iterator it(directory, error), end; !error && it != end; it.increment(error)) {
    if (it->path().extension() == ".json" && it->is_regular_file(error)) manifests.push_back(it->path());
  }
  if (error) throw ModelError("engine directory " + directory + " cannot be listed: " + error.message());
  std::sort(manifests.begin(), manifests.end());  // the order messages name files in, as Python's sorted glob
  std::map<std::string, EngineFile> engines;
  for (const fs::path& file : manifests) {
    EngineFile engine;
    try {
      engine.manifest = EngineManifest::load(file.string());
    } catch (const ModelError&) {
      throw;
    } catch (const EngineError& e) {
      throw ModelError(e.what());  // load names the file
    }
    if (engines.count(engine.manifest.graph)) {
      throw ModelError(file.string() + ": a second engine for graph " + engine.manifest.graph + " in " + directory);
    }
    engine.path = (fs::path(directory) / engine.manifest.engine).string();  // a plain file name (validate)
    if (!fs::is_regular_file(engine.path, error)) throw ModelError(file.string() + ": engine file " + engine.path + " is missing");
    const std::string digest = sha256_file(engine.path);
    if (digest != engine.manifest.sha256) {
      throw ModelError(engine.path + ": sha256 " + digest + " differs from the manifest's " + engine.manifest.sha256 +
                       " (corrupt or replaced engine); " + rebuild_hint(directory));
    }
    engines.emplace(engine.manifest.graph, std::move(engine));
  }
  if (engines.empty()) throw ModelError("no engine manifests (*.json) in " + directory + "; " + rebuild_hint(directory));
  return engines;
}

DataType host_dtype(DataType engine_dtype) {
  switch (engine_dtype) {
    case DataType::kFloat32:
    case DataType::kFloat16:
    case DataType::kBFloat16: return DataType::kFloat32;
    case DataType::kInt64:
    case DataType::kInt32: return DataType::kInt64;
    default:
      throw EngineError("an engine tensor of dtype " + std::string(dtype_name(engine_dtype)) +
                        " has no SDK counterpart (the SDK exchanges float32 and int64)");
  }
}

void check_host_exchangeable(const EngineManifest& manifest) {
  for (const auto* list : {&manifest.spec.inputs, &manifest.spec.outputs}) {
    for (const TensorSpec& t : *list) {
      try {
        host_dtype(t.dtype);
      } catch (const EngineError& e) {
        throw ModelError("engine " + manifest.engine + " (graph " + manifest.graph + ") tensor " + t.name + ": " + e.what());
      }
    }
  }
}

std::uint16_t float_to_half(float value) noexcept {
  const std::uint32_t u = bits_of(value);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000);
  const std::uint32_t magnitude = u & 0x7FFFFFFF;
  if (magnitude > 0x7F800000) return static_cast<std::uint16_t>(sign | 0x7E00 | ((magnitude >> 13) & 0x3FF));  // NaN, quiet
  if (magnitude >= 0x477FF000) return static_cast<std::uint16_t>(sign | 0x7C00);  // >= 65520 (and inf): rounds to inf
  if (magnitude >= 0x38800000) {  // a normal half (>= 2^-14): rebias the exponent by 127 - 15, round 13 bits away
    return static_cast<std::uint16_t>(sign | shift_round_even(magnitude - 0x38000000, 13));
  }
  if (magnitude <= 0x33000000) return sign;  // <= 2^-25: half of the smallest subnormal or less rounds to 0
  // A subnormal half counts units of 2^-24: value = significand * 2^(exponent - 150), so shift by 126 - exponent.
  const std::uint32_t significand = (magnitude & 0x7FFFFF) | 0x800000;
  const int exponent = static_cast<int>(magnitude >> 23);
  return static_cast<std::uint16_t>(sign | shift_round_even(significand, 126 - exponent));  // may carry into 2^-14
}

float half_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1F, mantissa = bits & 0x3FF;
  if (exponent == 0x1F) return float_of(sign | 0x7F800000 | (mantissa << 13));
  if (exponent != 0) return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal: exact in float
  return sign ? -magnitude : magnitude;
}

std::uint16_t float_to_bfloat16(float value) noexcept {
  const std::uint32_t u = bits_of(value);
  if ((u & 0x7FFFFFFF) > 0x7F800000) return static_cast<std::uint16_t>((u >> 16) | 0x0040);  // NaN, quiet
  return static_cast<std::uint16_t>(shift_round_even(u, 16));  // an overflowing carry reaches inf, as it should
}

float bfloat16_to_float(std::uint16_t bits) noexcept { return float_of(static_cast<std::uint32_t>(bits) << 16); }

void pack_for_engine(const Tensor& x, DataType engine_dtype, void* dst, const std::string& tensor) {
  if (x.dtype() != host_dtype(engine_dtype)) {
    throw EngineError("input " + tensor + " is " + std::string(dtype_name(x.dtype())) + "; the engine takes " +
                      std::string(dtype_name(engine_dtype)) + ", fed from " + std::string(dtype_name(host_dtype(engine_dtype))));
  }
  const auto n = static_cast<std::size_t>(x.numel());
  switch (engine_dtype) {
    case DataType::kFloat32:
    case DataType::kInt64: std::memcpy(dst, x.raw(), x.nbytes()); return;
    case DataType::kFloat16:
    case DataType::kBFloat16: {
      const float* in = x.data<float>();
      auto* out = static_cast<std::uint16_t*>(dst);
      if (engine_dtype == DataType::kFloat16) {
        for (std::size_t i = 0; i < n; ++i) out[i] = float_to_half(in[i]);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = float_to_bfloat16(in[i]);
      }
      return;
    }
    case DataType::kInt32: {
      const std::int64_t* in = x.data<std::int64_t>();
      auto* out = static_cast<std::int32_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) {
        if (in[i] < std::numeric_limits<std::int32_t>::min() || in[i] > std::numeric_limits<std::int32_t>::max()) {
          throw EngineError("input " + tensor + " holds " + std::to_string(in[i]) + " at element " + std::to_string(i) +
                            ", which the engine's int32 input cannot hold");
        }
        out[i] = static_cast<std::int32_t>(in[i]);
      }
      return;
    }
    default: break;  // host_dtype refused it above
  }
}

Tensor unpack_from_engine(const void* src, DataType engine_dtype, const Dims& shape) {
  Tensor out(host_dtype(engine_dtype), shape);
  const auto n = static_cast<std::size_t>(out.numel());
  switch (engine_dtype) {
    case DataType::kFloat32:
    case DataType::kInt64: std::memcpy(out.raw(), src, out.nbytes()); break;
    case DataType::kFloat16:
    case DataType::kBFloat16: {
      const auto* in = static_cast<const std::uint16_t*>(src);
      float* y = out.data<float>();
      if (engine_dtype == DataType::kFloat16) {
        for (std::size_t i = 0; i < n; ++i) y[i] = half_to_float(in[i]);
      } else {
        for (std::size_t i = 0; i < n; ++i) y[i] = bfloat16_to_float(in[i]);
      }
      break;
    }
    case DataType::kInt32: {
      const auto* in = static_cast<const std::int32_t*>(src);
      std::int64_t* y = out.data<std::int64_t>();
      for (std::size_t i = 0; i < n; ++i) y[i] = in[i];
      break;
    }
    default: break;  // host_dtype refused it above
  }
  return out;
}

std::size_t grown_capacity(std::size_t capacity, std::size_t needed) noexcept {
  if (needed <= capacity && capacity > 0) return capacity;
  const std::size_t doubled = capacity > std::numeric_limits<std::size_t>::max() / 2 ? needed : 2 * capacity;
  const std::size_t want = std::max({needed, doubled, kTensorAlignment});
  const std::size_t rounded = (want + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
  return rounded < want ? want : rounded;  // no rounding past SIZE_MAX (cudaMalloc refuses such a size anyway)
}

std::map<std::string, Dims> check_engine_call(const EngineManifest& manifest, const std::vector<const Tensor*>& inputs) {
  const std::vector<TensorSpec>& specs = manifest.spec.inputs;
  if (inputs.size() != specs.size()) {
    std::string names;
    for (const TensorSpec& t : specs) names += (names.empty() ? "" : ", ") + t.name;
    throw EngineError("graph " + manifest.graph + " takes " + std::to_string(specs.size()) + " inputs (" + names + "), got " +
                      std::to_string(inputs.size()));
  }
  std::vector<TensorArg> args;
  std::map<std::string, Dims> shapes;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& t = specs[i];
    if (inputs[i] == nullptr) throw EngineError("graph " + manifest.graph + " input " + t.name + " is missing (null)");
    const Tensor& x = *inputs[i];
    if (x.dtype() != host_dtype(t.dtype)) {
      throw EngineError("graph " + manifest.graph + " input " + t.name + " is " + std::string(dtype_name(x.dtype())) + " " +
                        format_dims(x.shape()) + "; the engine takes " + std::string(dtype_name(t.dtype)) + ", fed from " +
                        std::string(dtype_name(host_dtype(t.dtype))));
    }
    args.push_back({t.name, t.dtype, x.shape(), nullptr});
    shapes.emplace(t.name, x.shape());
  }
  try {
    validate_inputs(manifest.spec, args);
    if (!manifest.spec.profiles.empty()) select_profile(manifest.spec.profiles, shapes);
  } catch (const EngineError& e) {
    throw EngineError("graph " + manifest.graph + ": " + e.what());
  }
  return shapes;
}

GraphEntry describe_engine_graph(const EngineManifest& manifest, const DynamicAxes& axes) {
  GraphEntry g;
  g.name = manifest.graph;
  g.file = manifest.engine;
  const Profile* profile = manifest.spec.profiles.empty() ? nullptr : &manifest.spec.profiles.front();
  auto describe = [&](const TensorSpec& t, bool is_input) {
    const auto named = axes.find(t.name);
    TensorEntry entry{t.name, host_dtype(t.dtype), {}};
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      const std::string where = "engine " + manifest.engine + " tensor " + t.name + " dimension " + std::to_string(d);
      const std::string* axis = nullptr;
      if (named != axes.end()) {
        const auto it = named->second.find(d);
        if (it != named->second.end()) axis = &it->second;
      }
      if (t.shape[d] >= 0) {
        if (axis) throw ModelError(where + " is static (" + std::to_string(t.shape[d]) + ") but the export names it axis " + *axis);
        entry.shape.push_back({t.shape[d], ""});
        continue;
      }
      if (!axis) throw ModelError(where + " is dynamic but the export names no axis for it (re-export and rebuild the engines)");
      entry.shape.push_back({-1, *axis});
      if (!is_input || profile == nullptr) continue;
      const auto ranged = profile->ranges.find(t.name);
      if (ranged == profile->ranges.end()) throw ModelError(where + " is dynamic but profile 0 gives it no range");
      const DimRange& range = ranged->second;
      const AxisBound here{range.min[d], range.max[d]};
      auto [it, fresh] = g.bounds.emplace(*axis, here);
      if (!fresh) it->second = {std::max(it->second.min, here.min), std::min(it->second.max, here.max)};
      if (it->second.min > it->second.max) {
        throw ModelError("engine " + manifest.engine + ": the inputs sharing axis " + *axis + " have no common range in profile 0");
      }
    }
    (is_input ? g.inputs : g.outputs).push_back(std::move(entry));
  };
  for (const TensorSpec& t : manifest.spec.inputs) describe(t, true);
  for (const TensorSpec& t : manifest.spec.outputs) describe(t, false);
  return g;
}

}  // namespace xvlm_edge::sdk
