// Plain C++ tests of the TensorRT-free half of the SDK's TensorRT engine (csrc/tensorrt/graph_engine_host.cpp):
// engine directories and their sha256, the host-side dtype exchange, device-buffer growth, the checks before
// a call and the SDK's description of an engine graph. No TensorRT, no GPU. Built with
// -DXVLM_EDGE_BUILD_TESTS=ON where OpenSSL is found; run by ctest and tests/test_tensorrt_graph_engine.py.
//
//   xvlm_edge_tensorrt_graph_engine_tests SCRATCH_DIR   (engine directories are written under it)
//   xvlm_edge_tensorrt_graph_engine_tests --read DIR    (prints "graph path" per engine, or the refusal and
//                                                        exits 1: compared with the Python reader's verdict)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../sdk/sha256.hpp"
#include "../tensorrt/graph_engine.hpp"
#include "check.hpp"

namespace {

namespace fs = std::filesystem;
using namespace xvlm_edge;
using namespace xvlm_edge::sdk;

#define CHECK_ENGINE_ERROR(expr, ...) testing::check_throws<EngineError>(__FILE__, __LINE__, [&] { expr; }, {__VA_ARGS__})
#define CHECK_MODEL_ERROR(expr, ...) testing::check_throws<ModelError>(__FILE__, __LINE__, [&] { expr; }, {__VA_ARGS__})

// ---- device-buffer growth --------------------------------------------------------------------------------

void test_grown_capacity() {
  CHECK(grown_capacity(0, 0) == kTensorAlignment);  // an empty tensor still gets a real address
  CHECK(grown_capacity(0, 1) == 256);
  CHECK(grown_capacity(0, 257) == 512);
  CHECK(grown_capacity(256, 100) == 256);  // reused
  CHECK(grown_capacity(256, 256) == 256);
  CHECK(grown_capacity(256, 257) == 512);    // doubled
  CHECK(grown_capacity(512, 2000) == 2048);  // the need, rounded up to 256
  CHECK(grown_capacity(1 << 20, 3 << 20) == (3u << 20));
  // A decoder's cache grows one token a step (2 x 4 layers x 8 beams x 12 heads x 64 x 4 bytes a token here):
  // 40 steps reallocate a handful of times, not 40.
  std::size_t capacity = 0;
  int reallocations = 0;
  for (std::size_t step = 0; step < 40; ++step) {
    const std::size_t need = (step + 1) * 2 * 4 * 8 * 12 * 64 * 4;
    const std::size_t grown = grown_capacity(capacity, need);
    CHECK(grown >= need && grown % kTensorAlignment == 0);
    reallocations += grown != capacity;
    capacity = grown;
  }
  CHECK(reallocations <= 7);
  const std::size_t huge = std::numeric_limits<std::size_t>::max() - 10;
  CHECK(grown_capacity(huge / 2 + 1, huge) >= huge);  // no wrap-around
}

// ---- dtype exchange -----------------------------------------------------------------------------------------

float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The value of a binary16 pattern, computed from its definition (independent of half_to_float).
double half_value(std::uint16_t h) {
  const int exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0x1F) return mantissa ? std::nan("") : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

void test_half() {
  int bad_value = 0, bad_round_trip = 0, bad_ties = 0;
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = half_to_float(bits);
    const double want = half_value(bits);
    if (std::isnan(want)) {
      bad_value += !std::isnan(f);
      bad_round_trip += (float_to_half(f) & 0x7C00) != 0x7C00 || (float_to_half(f) & 0x3FF) == 0;  // NaN stays NaN
      continue;
    }
    bad_value += static_cast<double>(f) != want || std::signbit(f) != static_cast<bool>(bits & 0x8000);
    bad_round_trip += float_to_half(f) != bits;
  }
  // Every midpoint between two neighbouring finite halves (exact in float) rounds to the even one; one float
  // step either side rounds to the nearer. 0x7BFF -> 0x7C00 is the last finite half to infinity.
  for (std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
    for (std::uint16_t h = 0; h < 0x7C00; ++h) {
      const std::uint16_t lo = sign | h, hi = sign | static_cast<std::uint16_t>(h + 1);
      // Past 0x7BFF (65504) the next step would be 65536, so 65520 is the midpoint to infinity.
      const double upper = h == 0x7BFF ? (sign ? -65536.0 : 65536.0) : half_value(hi);
      const float mid = static_cast<float>((half_value(lo) + upper) / 2);
      const float toward_hi = std::nextafter(mid, sign ? -INFINITY : INFINITY), toward_lo = std::nextafter(mid, 0.0f);
      bad_ties += float_to_half(mid) != ((h & 1) ? hi : lo);
      bad_ties += float_to_half(toward_hi) != hi || float_to_half(toward_lo) != lo;
    }
  }
  CHECK(bad_value == 0);
  CHECK(bad_round_trip == 0);
  CHECK(bad_ties == 0);
  CHECK(float_to_half(65504.0f) == 0x7BFF);
  CHECK(float_to_half(65519.99f) == 0x7BFF);
  CHECK(float_to_half(65520.0f) == 0x7C00);
  CHECK(float_to_half(1e30f) == 0x7C00 && float_to_half(-1e30f) == 0xFC00);
  CHECK(float_to_half(INFINITY) == 0x7C00 && float_to_half(-INFINITY) == 0xFC00);
  CHECK(float_to_half(1e-30f) == 0 && float_to_half(-1e-30f) == 0x8000);
  CHECK(float_to_half(std::ldexp(1.0f, -24)) == 1);  // the smallest subnormal
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0);  // half of it: a tie, to even (0)
  CHECK(float_to_half(std::ldexp(1.5f, -25)) == 1);
#if defined(__FLT16_MAX__) && !defined(__clang__)
  // The compiler's own float -> _Float16 conversion (round to nearest even) as a second oracle.
  std::mt19937 rng(0);
  int disagree = 0;
  for (int i = 0; i < 1000000; ++i) {
    const float f = float_of(static_cast<std::uint32_t>(rng()));
    if (std::isnan(f)) continue;
    const _Float16 reference = static_cast<_Float16>(f);
    std::uint16_t want;
    std::memcpy(&want, &reference, sizeof want);
    disagree += float_to_half(f) != want;
  }
  CHECK(disagree == 0);
#endif
}

void test_bfloat16() {
  int bad = 0;
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = bfloat16_to_float(bits);
    bad += std::isnan(f) ? !std::isnan(bfloat16_to_float(float_to_bfloat16(f))) : float_to_bfloat16(f) != bits;
  }
  CHECK(bad == 0);
  CHECK(float_to_bfloat16(float_of(0x3F808000)) == 0x3F80);  // tie, even below
  CHECK(float_to_bfloat16(float_of(0x3F818000)) == 0x3F82);  // tie, even above
  CHECK(float_to_bfloat16(float_of(0x3F808001)) == 0x3F81);
  CHECK(float_to_bfloat16(float_of(0x7F7FFFFF)) == 0x7F80);  // FLT_MAX rounds to infinity
  CHECK(std::isnan(bfloat16_to_float(float_to_bfloat16(std::nanf("")))));
}

void test_pack_unpack() {
  CHECK(host_dtype(DataType::kFloat16) == DataType::kFloat32);
  CHECK(host_dtype(DataType::kBFloat16) == DataType::kFloat32);
  CHECK(host_dtype(DataType::kInt32) == DataType::kInt64);
  CHECK(host_dtype(DataType::kInt64) == DataType::kInt64);
  CHECK_ENGINE_ERROR(host_dtype(DataType::kInt8), "int8", "float32 and int64");
  CHECK_ENGINE_ERROR(host_dtype(DataType::kBool), "bool");

  Tensor x(DataType::kFloat32, {2, 3});
  const float values[] = {0.0f, -1.5f, 3.140625f, 65504.0f, 1e-8f, -0.0f};
  std::memcpy(x.raw(), values, sizeof values);
  std::vector<std::uint8_t> bytes(x.numel() * 4);
  for (DataType engine : {DataType::kFloat32, DataType::kFloat16, DataType::kBFloat16}) {
    pack_for_engine(x, engine, bytes.data(), "pixels");
    const Tensor y = unpack_from_engine(bytes.data(), engine, x.shape());
    CHECK(y.dtype() == DataType::kFloat32 && y.shape() == x.shape());
    for (int i = 0; i < 6; ++i) {
      const float want = engine == DataType::kFloat32   ? values[i]
                         : engine == DataType::kFloat16 ? half_to_float(float_to_half(values[i]))
                                                        : bfloat16_to_float(float_to_bfloat16(values[i]));
      CHECK(std::memcmp(&y.data<float>()[i], &want, 4) == 0);  // bitwise: -0.0 stays -0.0
    }
  }
  CHECK(half_to_float(float_to_half(3.140625f)) == 3.140625f);  // exact in binary16

  Tensor ids = Tensor::filled({1, 4}, std::int64_t{101});
  ids.data<std::int64_t>()[3] = -7;
  std::vector<std::int32_t> narrow(4);
  pack_for_engine(ids, DataType::kInt32, narrow.data(), "text_ids");
  CHECK(narrow[0] == 101 && narrow[3] == -7);
  const Tensor wide = unpack_from_engine(narrow.data(), DataType::kInt32, {1, 4});
  CHECK(wide.dtype() == DataType::kInt64 && wide.data<std::int64_t>()[0] == 101 && wide.data<std::int64_t>()[3] == -7);
  std::vector<std::int64_t> same(4);
  pack_for_engine(ids, DataType::kInt64, same.data(), "text_ids");
  CHECK(same[0] == 101 && same[3] == -7);
  ids.data<std::int64_t>()[2] = std::int64_t{1} << 31;
  CHECK_ENGINE_ERROR(pack_for_engine(ids, DataType::kInt32, narrow.data(), "text_ids"), "text_ids", "2147483648", "element 2", "int32");
  CHECK_ENGINE_ERROR(pack_for_engine(ids, DataType::kFloat16, bytes.data(), "pixels"), "pixels", "int64", "float16");
  CHECK_ENGINE_ERROR(pack_for_engine(x, DataType::kInt32, narrow.data(), "text_ids"), "text_ids", "float32", "int32");
  const Tensor empty(DataType::kFloat32, {1, 2, 0, 4});  // the first decoder step's empty cache
  pack_for_engine(empty, DataType::kFloat16, nullptr, "cache_k");
  CHECK(unpack_from_engine(nullptr, DataType::kFloat16, {1, 2, 0, 4}).numel() == 0);
}

// ---- call checks and the SDK's description ---------------------------------------------------------------

// A caption_step-shaped fp16 engine: ids (rows, new) int64, the cache (2, rows, 2, past, 4) float16; logits
// (rows, 10) float16 and the cache extended.
EngineManifest step_manifest(const std::string& sha256 = std::string(64, '0')) {
  EngineManifest m;
  m.graph = "caption_step";
  m.engine = "caption_step.engine";
  m.sha256 = sha256;
  m.tensorrt_version = "10.3.0";
  m.precision = "fp16";
  m.spec.inputs = {{"text_ids", DataType::kInt64, {-1, -1}}, {"cache_k", DataType::kFloat16, {2, -1, 2, -1, 4}}};
  m.spec.outputs = {{"logits", DataType::kFloat16, {-1, 10}}, {"new_cache_k", DataType::kFloat16, {2, -1, 2, -1, 4}}};
  Profile p;
  p.ranges["text_ids"] = {{1, 1}, {3, 1}, {8, 5}};
  p.ranges["cache_k"] = {{2, 1, 2, 0, 4}, {2, 3, 2, 4, 4}, {2, 6, 2, 4, 4}};
  m.spec.profiles = {p};
  m.validate();
  return m;
}

void test_check_engine_call() {
  const EngineManifest m = step_manifest();
  const Tensor ids = Tensor::filled({3, 1}, std::int64_t{5});
  const Tensor cache(DataType::kFloat32, {2, 3, 2, 2, 4});
  const auto shapes = check_engine_call(m, {&ids, &cache});
  CHECK(shapes.at("text_ids") == (Dims{3, 1}) && shapes.at("cache_k") == (Dims{2, 3, 2, 2, 4}));
  CHECK_ENGINE_ERROR(check_engine_call(m, {&ids}), "caption_step", "takes 2 inputs (text_ids, cache_k), got 1");
  CHECK_ENGINE_ERROR(check_engine_call(m, {&ids, nullptr}), "cache_k", "missing");
  CHECK_ENGINE_ERROR(check_engine_call(m, {&cache, &cache}), "text_ids", "float32", "int64");
  const Tensor too_many_rows(DataType::kFloat32, {2, 7, 2, 2, 4});  // past the profile's 6 rows
  CHECK_ENGINE_ERROR(check_engine_call(m, {&ids, &too_many_rows}), "caption_step", "cache_k", "6");
  const Tensor wrong_layers(DataType::kFloat32, {3, 3, 2, 2, 4});  // a static dim
  CHECK_ENGINE_ERROR(check_engine_call(m, {&ids, &wrong_layers}), "caption_step", "cache_k");
  const Tensor wrong_rank(DataType::kFloat32, {2, 3, 2, 2});
  CHECK_ENGINE_ERROR(check_engine_call(m, {&ids, &wrong_rank}), "cache_k");
  const Tensor empty_cache(DataType::kFloat32, {2, 3, 2, 0, 4});  // the first step: past = 0 is in the profile
  CHECK(check_engine_call(m, {&ids, &empty_cache}).at("cache_k")[3] == 0);

  CHECK_MODEL_ERROR(
      [&] {
        EngineManifest bad = m;
        bad.spec.outputs[0].dtype = DataType::kInt8;
        check_host_exchangeable(bad);
      }(),
      "caption_step", "logits", "int8");
  check_host_exchangeable(m);
}

void test_describe_engine_graph() {
  const EngineManifest m = step_manifest();
  const DynamicAxes axes = {{"text_ids", {{0, "rows"}, {1, "new"}}},
                            {"cache_k", {{1, "rows"}, {3, "past"}}},
                            {"logits", {{0, "rows"}}},
                            {"new_cache_k", {{1, "rows"}, {3, "total"}}}};
  const GraphEntry g = describe_engine_graph(m, axes);
  CHECK(g.name == "caption_step" && g.file == "caption_step.engine" && g.method.empty());
  CHECK(g.inputs.size() == 2 && g.outputs.size() == 2);
  CHECK(g.inputs[1].dtype == DataType::kFloat32 && g.outputs[0].dtype == DataType::kFloat32);  // fp16 seen as float32
  CHECK(g.inputs[0].dtype == DataType::kInt64);
  CHECK(g.inputs[1].shape[0].size == 2 && g.inputs[1].shape[1].axis == "rows" && g.inputs[1].shape[3].axis == "past");
  CHECK(g.outputs[1].shape[3].axis == "total");
  // rows: [1, 8] from text_ids and [1, 6] from cache_k intersect to [1, 6]; only inputs bound an axis.
  CHECK(g.bounds.at("rows").min == 1 && g.bounds.at("rows").max == 6);
  CHECK(g.bounds.at("new").min == 1 && g.bounds.at("new").max == 5);
  CHECK(g.bounds.at("past").min == 0 && g.bounds.at("past").max == 4);
  CHECK(g.outputs[1].name == "new_cache_k");
  CHECK(g.bounds.count("total") == 0);

  DynamicAxes unnamed = axes;
  unnamed["cache_k"].erase(3);
  CHECK_MODEL_ERROR(describe_engine_graph(m, unnamed), "cache_k", "dimension 3", "dynamic");
  DynamicAxes on_static = axes;
  on_static["cache_k"][0] = "layers";
  CHECK_MODEL_ERROR(describe_engine_graph(m, on_static), "cache_k", "dimension 0", "static");
  EngineManifest disjoint = m;
  disjoint.spec.profiles[0].ranges["text_ids"] = {{7, 1}, {7, 1}, {8, 5}};  // rows [7, 8] and [1, 6]
  CHECK_MODEL_ERROR(describe_engine_graph(disjoint, axes), "rows", "no common range");
}

// ---- engine directories ------------------------------------------------------------------------------------

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// An engine directory of two graphs as `xvlm-edge engines` writes it: <graph>.engine + <graph>.json.
fs::path make_engine_dir(const fs::path& root, const std::string& name) {
  const fs::path dir = root / name / "engines";
  fs::remove_all(root / name);
  fs::create_directories(dir);
  write_file(dir / "caption_step.engine", "not a real engine, but bytes with a sha256");
  write_file(dir / "caption_step.json", step_manifest(sha256_file((dir / "caption_step.engine").string())).to_json());
  EngineManifest vision = step_manifest();
  vision.graph = "vision";
  vision.engine = "vision.engine";
  write_file(dir / "vision.engine", std::string(100000, '\x7f'));
  vision.sha256 = sha256_file((dir / "vision.engine").string());
  write_file(dir / "vision.json", vision.to_json());
  write_file(dir / "timing.cache", "a stray file the reader ignores");
  return dir;
}

void test_read_engine_dir(const fs::path& scratch) {
  CHECK(engine_dir_of_export("/m/export/tensorrt-fp16") == "/m/export/tensorrt-fp16/engines");

  const fs::path good = make_engine_dir(scratch, "good");
  const auto engines = read_engine_dir(good.string());
  CHECK(engines.size() == 2 && engines.count("vision") && engines.count("caption_step"));
  CHECK(engines.at("vision").path == (good / "vision.engine").string());
  CHECK(engines.at("caption_step").manifest.spec.inputs.size() == 2);
  CHECK(engines.at("caption_step").manifest.precision == "fp16");
  CHECK(engine_dir_of_export((scratch / "good").string()) == good.string());

  const fs::path tampered = make_engine_dir(scratch, "tampered");
  write_file(tampered / "vision.engine", std::string(99999, '\x7f') + "x");  // same size, one byte changed
  CHECK_MODEL_ERROR(read_engine_dir(tampered.string()), "vision.engine", "sha256", "differs", "corrupt or replaced",
                    "xvlm-edge engines");

  const fs::path truncated = make_engine_dir(scratch, "truncated");
  write_file(truncated / "vision.engine", std::string(50000, '\x7f'));
  CHECK_MODEL_ERROR(read_engine_dir(truncated.string()), "vision.engine", "sha256");

  const fs::path missing = make_engine_dir(scratch, "missing");
  fs::remove(missing / "caption_step.engine");
  CHECK_MODEL_ERROR(read_engine_dir(missing.string()), "caption_step.json", "caption_step.engine", "missing");

  const fs::path twice = make_engine_dir(scratch, "twice");
  fs::copy_file(twice / "vision.json", twice / "vision_again.json");
  CHECK_MODEL_ERROR(read_engine_dir(twice.string()), "vision_again.json", "second engine for graph vision");

  const fs::path broken = make_engine_dir(scratch, "broken");
  write_file(broken / "vision.json", "{\"schema\": 1, \"graph\": ");
  CHECK_MODEL_ERROR(read_engine_dir(broken.string()), "vision.json");

  const fs::path escaping = make_engine_dir(scratch, "escaping");
  std::string text;
  {
    std::ifstream in(escaping / "vision.json");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const std::size_t at = text.find("\"vision.engine\"");
  CHECK(at != std::string::npos);
  write_file(escaping / "vision.json", text.replace(at, 15, "\"../vision.engine\""));
  CHECK_MODEL_ERROR(read_engine_dir(escaping.string()), "vision.json");

  const fs::path empty = scratch / "empty" / "engines";
  fs::create_directories(empty);
  CHECK_MODEL_ERROR(read_engine_dir(empty.string()), "no engine manifests", "xvlm-edge engines");
  CHECK_MODEL_ERROR(read_engine_dir((scratch / "nowhere" / "engines").string()), "does not exist", "xvlm-edge engines");
  CHECK_MODEL_ERROR(read_engine_dir((good / "vision.engine").string()), "does not exist");  // a file, not a directory
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--read") {
    try {
      for (const auto& [graph, engine] : read_engine_dir(argv[2])) std::printf("%s %s\n", graph.c_str(), engine.path.c_str());
      return 0;
    } catch (const ModelError& e) {
      std::printf("ModelError: %s\n", e.what());
      return 1;
    }
  }
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SCRATCH_DIR | --read DIR\n", argv[0]);
    return 2;
  }
  test_grown_capacity();
  test_half();
  test_bfloat16();
  test_pack_unpack();
  test_check_engine_call();
  test_describe_engine_graph();
  test_read_engine_dir(argv[1]);
  return testing::report();
}
