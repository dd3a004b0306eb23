#include "executorch_engine.hpp"

#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

// The thread pool's resize call. The wheel ships libexecutorch_threadpool.so but not its header
// (extension/threadpool/threadpool.h), so the two functions used are declared here as that library exports them.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  std::size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(std::uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace xvlm_edge::sdk {
namespace {

namespace et = ::executorch::runtime;
using ::executorch::aten::ScalarType;
using ::executorch::extension::MmapDataLoader;
using ::executorch::extension::MallocMemoryAllocator;

std::string error_text(et::Error error) {
  return std::string(et::to_string(error)) + " (ExecuTorch error " + std::to_string(static_cast<int>(error)) + ")";
}

// ExecuTorch's log sink: its errors reach stderr, its debug and info lines (CPU probing, thread pool
// resizes, on every model open) do not: a firmware's stderr is for problems. The SDK's own statuses
// carry every refusal, so nothing here is needed to diagnose one.
void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line, const char* message, size_t length) {
  if (level != kError && level != kFatal) return;
  std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename, line, static_cast<int>(length), message);
}

void init_runtime_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    et::register_pal(et::PalImpl::create(&emit_log, __FILE__));
    et::runtime_init();
  });
}

ScalarType scalar_type(DataType dtype) {
  return dtype == DataType::kInt64 ? ScalarType::Long : ScalarType::Float;
}

const char* scalar_name(ScalarType type) {
  switch (type) {
    case ScalarType::Float: return "float32";
    case ScalarType::Long: return "int64";
    default: return "another dtype";
  }
}

// The MethodMeta of one input or output agrees with the manifest's entry. Dynamic dimensions are planned at
// the bound's upper end, so the program's size there must equal the manifest's max.
void check_tensor_meta(const GraphEntry& g, const TensorEntry& t, const et::TensorInfo& info) {
  const std::string where = "graph " + g.name + " (" + g.file + ") tensor " + t.name;
  if (info.scalar_type() != scalar_type(t.dtype)) {
    throw ModelError(where + ": the program holds " + scalar_name(info.scalar_type()) + ", the manifest says " + std::string(dtype_name(t.dtype)));
  }
  const auto sizes = info.sizes();
  if (sizes.size() != t.shape.size()) {
    throw ModelError(where + ": the program's rank is " + std::to_string(sizes.size()) + ", the manifest's " + std::to_string(t.shape.size()));
  }
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    const ShapeDim& want = t.shape[d];
    const std::int64_t planned = want.axis.empty() ? want.size : g.bound(want.axis).max;
    // A dynamic dimension is planned at least at its bound (a derived axis such as `total` is planned
    // for the sum of its parts' bounds, above its own).
    if (want.axis.empty() ? sizes[d] != planned : sizes[d] < planned) {
      throw ModelError(where + " dimension " + std::to_string(d) + ": the program has " + std::to_string(sizes[d]) + ", the manifest " +
                       (want.axis.empty() ? std::to_string(want.size) : want.axis + " up to " + std::to_string(planned)));
    }
  }
}

// Refuses a call the program was not exported for: the count, dtype or rank of an input, a fixed size, a
// dynamic one outside its bound, one axis with two sizes, total != past + new.
void check_call(const GraphEntry& g, const std::vector<const Tensor*>& inputs) {
  if (inputs.size() != g.inputs.size()) {
    throw EngineError("graph " + g.name + " takes " + std::to_string(g.inputs.size()) + " inputs, got " + std::to_string(inputs.size()));
  }
  std::map<std::string, std::int64_t> sizes;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const TensorEntry& t = g.inputs[i];
    const Tensor& x = *inputs[i];
    if (x.dtype() != t.dtype || x.shape().size() != t.shape.size()) {
      throw EngineError("graph " + g.name + " input " + t.name + " is " + std::string(dtype_name(x.dtype())) + " " + format_dims(x.shape()) +
                        "; the export takes " + std::string(dtype_name(t.dtype)) + " of rank " + std::to_string(t.shape.size()));
    }
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      const std::int64_t got = x.shape()[d];
      if (t.shape[d].axis.empty()) {
        if (got != t.shape[d].size) {
          throw EngineError("graph " + g.name + " input " + t.name + " dimension " + std::to_string(d) + " is " + std::to_string(got) +
                            "; the export fixed it at " + std::to_string(t.shape[d].size));
        }
        continue;
      }
      const std::string& axis = t.shape[d].axis;
      const AxisBound& b = g.bound(axis);
      if (got < b.min || got > b.max) {
        throw EngineError("graph " + g.name + " input " + t.name + " dimension " + std::to_string(d) + " (" + axis + ") is " +
                          std::to_string(got) + ", outside the export's bound [" + std::to_string(b.min) + ", " + std::to_string(b.max) + "]");
      }
      auto [it, fresh] = sizes.emplace(axis, got);
      if (!fresh && it->second != got) {
        throw EngineError("graph " + g.name + " input " + t.name + " has " + axis + " = " + std::to_string(got) + ", another input " +
                          std::to_string(it->second));
      }
    }
  }
  if (sizes.count("total") && sizes.count("past") && sizes.count("new") && sizes["total"] != sizes["past"] + sizes["new"]) {
    throw EngineError("graph " + g.name + ": total = past + new does not hold (" + std::to_string(sizes["total"]) + " != " +
                      std::to_string(sizes["past"]) + " + " + std::to_string(sizes["new"]) + ")");
  }
}

// A program and the loader it reads from (the loader must outlive the program). The file is mapped, not read:
// a constant is resident only where a call touches it (an embedding table's used rows), and a delegate's
// weights are unmapped once XNNPACK has packed them, so a model costs about one copy of its weights.
struct LoadedProgram {
  const GraphEntry* entry = nullptr;
  std::unique_ptr<MmapDataLoader> loader;
  std::unique_ptr<et::Program> program;
  std::vector<std::size_t> planned_bytes;  // one per memory-planned buffer
};

// One session's method of one graph, with the memory it runs in. Members are destroyed bottom-up: the
// method before the allocators it points into. The planned buffers are not zeroed: an arena is sized for the
// export's bounds and a call smaller than them touches, so makes resident, only the pages it uses.
struct LoadedMethod {
  std::vector<std::unique_ptr<std::uint8_t[]>> planned;
  std::vector<et::Span<std::uint8_t>> spans;
  std::unique_ptr<et::HierarchicalAllocator> planned_memory;
  MallocMemoryAllocator method_allocator;
  MallocMemoryAllocator temp_allocator;
  std::unique_ptr<et::MemoryManager> memory;
  std::unique_ptr<et::Method> method;
};

class ExecuTorchEngine;

class ExecuTorchSession final : public GraphSession {
 public:
  explicit ExecuTorchSession(const ExecuTorchEngine& engine) : engine_(engine) {}
  std::vector<Tensor> run(const std::string& graph, const std::vector<const Tensor*>& inputs) override;

 private:
  LoadedMethod& method(const std::string& graph);
  const ExecuTorchEngine& engine_;
  std::map<std::string, std::unique_ptr<LoadedMethod>> methods_;
};

class ExecuTorchEngine final : public GraphEngine {
 public:
  ExecuTorchEngine(const Manifest& manifest, int threads) {
    init_runtime_once();
    if (threads > 0) {
      // Resizing replaces the pool under any method running on it ("unsafe"), so it happens only when the
      // count changes: models opened with the same count, or 0, never touch a pool in use.
      auto* pool = ::executorch::extension::threadpool::get_threadpool();
      if (pool == nullptr) throw EngineError("ExecuTorch has no thread pool");
      if (pool->get_thread_count() != static_cast<std::size_t>(threads) && !pool->_unsafe_reset_threadpool(static_cast<std::uint32_t>(threads))) {
        throw EngineError("ExecuTorch could not size its thread pool to " + std::to_string(threads) + " threads");
      }
    }
    for (const auto& [name, entry] : manifest.graphs) programs_.emplace(name, load(manifest.directory, entry));
  }

  std::unique_ptr<GraphSession> open_session() const override { return std::make_unique<ExecuTorchSession>(*this); }

  const LoadedProgram& program(const std::string& graph) const {
    auto it = programs_.find(graph);
    if (it == programs_.end()) throw EngineError("the export has no graph " + graph);
    return it->second;
  }

  // Program::load_method reads segments through the shared loader; one at a time.
  std::mutex& load_mutex() const { return load_mutex_; }

 private:
  static LoadedProgram load(const std::string& directory, const GraphEntry& entry) {
    LoadedProgram p;
    p.entry = &entry;
    const std::string path = directory + "/" + entry.file;
    auto loader = MmapDataLoader::from(path.c_str(), MmapDataLoader::MlockConfig::NoMlock);
    if (!loader.ok()) throw ModelError("ExecuTorch cannot open " + path + ": " + error_text(loader.error()));
    p.loader = std::make_unique<MmapDataLoader>(std::move(loader.get()));
    // InternalConsistency checks every offset in the flatbuffer: a truncated or corrupted file is refused
    // here rather than read out of bounds later.
    auto program = et::Program::load(p.loader.get(), et::Program::Verification::InternalConsistency);
    if (!program.ok()) throw ModelError(path + " is not a loadable ExecuTorch program: " + error_text(program.error()));
    p.program = std::make_unique<et::Program>(std::move(program.get()));
    auto meta = p.program->method_meta(entry.method.c_str());
    if (!meta.ok()) throw ModelError(path + " has no method \"" + entry.method + "\": " + error_text(meta.error()));
    if (meta->num_inputs() != entry.inputs.size() || meta->num_outputs() != entry.outputs.size()) {
      throw ModelError("graph " + entry.name + " (" + path + "): the program has " + std::to_string(meta->num_inputs()) + " inputs and " +
                       std::to_string(meta->num_outputs()) + " outputs, the manifest " + std::to_string(entry.inputs.size()) + " and " +
                       std::to_string(entry.outputs.size()));
    }
    for (std::size_t i = 0; i < entry.inputs.size(); ++i) {
      auto info = meta->input_tensor_meta(i);
      if (!info.ok()) throw ModelError("graph " + entry.name + " input " + entry.inputs[i].name + " is not a tensor in the program");
      check_tensor_meta(entry, entry.inputs[i], info.get());
    }
    for (std::size_t i = 0; i < entry.outputs.size(); ++i) {
      auto info = meta->output_tensor_meta(i);
      if (!info.ok()) throw ModelError("graph " + entry.name + " output " + entry.outputs[i].name + " is not a tensor in the program");
      check_tensor_meta(entry, entry.outputs[i], info.get());
    }
    for (std::size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
      auto bytes = meta->memory_planned_buffer_size(i);
      if (!bytes.ok() || bytes.get() < 0) throw ModelError("graph " + entry.name + ": unreadable planned buffer size");
      p.planned_bytes.push_back(static_cast<std::size_t>(bytes.get()));
    }
    return p;
  }

  std::map<std::string, LoadedProgram> programs_;
  mutable std::mutex load_mutex_;
};

LoadedMethod& ExecuTorchSession::method(const std::string& graph) {
  auto found = methods_.find(graph);
  if (found != methods_.end()) return *found->second;
  const LoadedProgram& p = engine_.program(graph);
  auto m = std::make_unique<LoadedMethod>();
  for (std::size_t bytes : p.planned_bytes) {
    m->planned.emplace_back(new std::uint8_t[bytes]);  // default-initialised: no page is touched here
    m->spans.emplace_back(m->planned.back().get(), bytes);
  }
  m->planned_memory = std::make_unique<et::HierarchicalAllocator>(et::Span<et::Span<std::uint8_t>>(m->spans.data(), m->spans.size()));
  m->memory = std::make_unique<et::MemoryManager>(&m->method_allocator, m->planned_memory.get(), &m->temp_allocator);
  {
    std::lock_guard<std::mutex> lock(engine_.load_mutex());
    auto method = p.program->load_method(p.entry->method.c_str(), m->memory.get());
    if (!method.ok()) {
      throw EngineError("ExecuTorch could not load graph " + graph + " (" + p.entry->file + "): " + error_text(method.error()) +
                        "; an unregistered delegate or operator means the SDK was linked without its XNNPACK or kernel library");
    }
    m->method = std::make_unique<et::Method>(std::move(method.get()));
  }
  return *methods_.emplace(graph, std::move(m)).first->second;
}

std::vector<Tensor> ExecuTorchSession::run(const std::string& graph, const std::vector<const Tensor*>& inputs) {
  const LoadedProgram& p = engine_.program(graph);
  check_call(*p.entry, inputs);
  LoadedMethod& m = method(graph);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = *inputs[i];
    const std::size_t rank = x.shape().size();
    std::vector<::executorch::aten::SizesType> sizes(rank);
    std::vector<::executorch::aten::DimOrderType> dim_order(rank);
    std::vector<::executorch::aten::StridesType> strides(rank);
    std::int64_t stride = 1;
    for (std::size_t d = rank; d-- > 0;) {
      sizes[d] = static_cast<::executorch::aten::SizesType>(x.shape()[d]);
      dim_order[d] = static_cast<::executorch::aten::DimOrderType>(d);
      strides[d] = static_cast<::executorch::aten::StridesType>(stride);
      stride *= std::max<std::int64_t>(x.shape()[d], 1);  // torch's contiguous strides: an empty dim counts as 1
    }
    ::executorch::aten::TensorImpl impl(scalar_type(x.dtype()), static_cast<ssize_t>(rank), sizes.data(), const_cast<void*>(x.raw()),
                                        dim_order.data(), strides.data(), et::TensorShapeDynamism::STATIC);
    // set_input copies the data into the method's planned input (resized to these sizes).
    const et::Error error = m.method->set_input(et::EValue(::executorch::aten::Tensor(&impl)), i);
    if (error != et::Error::Ok) {
      throw EngineError("graph " + graph + ": ExecuTorch refused input " + p.entry->inputs[i].name + " " + format_dims(x.shape()) + ": " +
                        error_text(error));
    }
  }
  const et::Error error = m.method->execute();
  if (error != et::Error::Ok) throw EngineError("graph " + graph + ": ExecuTorch failed running it: " + error_text(error));
  std::vector<Tensor> outputs;
  for (std::size_t i = 0; i < m.method->outputs_size(); ++i) {
    const et::EValue& value = m.method->get_output(i);
    if (!value.isTensor()) throw EngineError("graph " + graph + " output " + std::to_string(i) + " is not a tensor");
    const ::executorch::aten::Tensor& y = value.toTensor();
    Dims shape(y.sizes().begin(), y.sizes().end());
    Tensor out(p.entry->outputs.at(i).dtype, shape);
    if (y.scalar_type() != scalar_type(out.dtype()) || y.nbytes() != out.nbytes()) {
      throw EngineError("graph " + graph + " output " + p.entry->outputs.at(i).name + " came back as " + scalar_name(y.scalar_type()) + " " +
                        format_dims(shape));
    }
    if (out.nbytes()) std::memcpy(out.raw(), y.const_data_ptr(), out.nbytes());
    outputs.push_back(std::move(out));
  }
  return outputs;
}

}  // namespace

std::unique_ptr<GraphEngine> open_executorch_engine(const Manifest& manifest, int threads) {
  return std::make_unique<ExecuTorchEngine>(manifest, threads);
}

}  // namespace xvlm_edge::sdk
