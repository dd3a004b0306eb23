// Plain C++ tests of the TensorRT-free engine logic (core/engine_spec.cpp), as the firmware links it: no
// Python, no framework. Built with -DXVLM_EDGE_BUILD_TESTS=ON, run by ctest and by tests/test_engine.py
// (marked slow). Each CHECK_THROWS also checks that the message names what the user needs to fix.
#include <cstdio>
#include <string>
#include <vector>

#include "check.hpp"
#include "xvlm_edge/engine.hpp"

namespace {

#define CHECK_THROWS(expr, ...) \
  xvlm_edge::testing::check_throws<xvlm_edge::EngineError>(__FILE__, __LINE__, [&] { expr; }, {__VA_ARGS__})

using xvlm_edge::DataType;
using xvlm_edge::Dims;
using xvlm_edge::EngineManifest;
using xvlm_edge::Profile;

const char* kManifest = R"({
  "schema": 1,
  "graph": "vision",
  "engine": "vision.engine",
  "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
  "tensorrt_version": "10.3.0",
  "precision": "fp16",
  "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 3, 384, 384]}],
  "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": [-1, 145, 1024]}],
  "profiles": [
    {"pixels": {"min": [1, 3, 384, 384], "opt": [1, 3, 384, 384], "max": [4, 3, 384, 384]}},
    {"pixels": {"min": [5, 3, 384, 384], "opt": [8, 3, 384, 384], "max": [16, 3, 384, 384]}}
  ]
})";

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  if (at == std::string::npos) {
    std::printf("test bug: '%s' not in manifest\n", from.c_str());
    ++xvlm_edge::testing::g_failures;
    return s;
  }
  return s.replace(at, from.size(), to);
}

void test_manifest_round_trip() {
  const EngineManifest m = EngineManifest::parse(kManifest);
  CHECK(m.graph == "vision");
  CHECK(m.spec.inputs.size() == 1 && m.spec.inputs[0].shape == (Dims{-1, 3, 384, 384}));
  CHECK(m.spec.outputs[0].dtype == DataType::kFloat32);
  CHECK(m.spec.profiles.size() == 2);
  CHECK(m.spec.profiles[1].ranges.at("pixels").opt == (Dims{8, 3, 384, 384}));
  const EngineManifest again = EngineManifest::parse(m.to_json());
  CHECK(again.to_json() == m.to_json());
}

void test_manifest_rejects() {
  const std::string base = kManifest;
  CHECK_THROWS(EngineManifest::parse(""), "invalid JSON", "end of input");
  CHECK_THROWS(EngineManifest::parse("{\"schema\": 1,}"), "invalid JSON");
  CHECK_THROWS(EngineManifest::parse(std::string(10000, '[')), "nested deeper");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"schema\": 1", "\"schema\": 2")), "schema 2", "re-export");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"graph\"", "\"grph\"")), "unknown key \"grph\"");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"precision\": \"fp16\",", "")), "missing key \"precision\"");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"vision.engine\"", "\"../x.engine\"")), "plain file name");
  CHECK_THROWS(EngineManifest::parse(replace(base, "0123456789abcdef\",", "0123\",")), "sha256");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"10.3.0\"", "\"ten\"")), "TensorRT version 'ten'");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"float32\", \"shape\": [-1, 3", "\"float33\", \"shape\": [-1, 3")),
               "$.inputs[0].dtype", "unknown dtype 'float33'");
  CHECK_THROWS(EngineManifest::parse(replace(base, "[-1, 145, 1024]", "[-1, 145.5, 1024]")), "integers only");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"fp16\"", "\"fp8\"")), "precision 'fp8'");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"image_embeds\"", "\"pixels\"")), "'pixels' appears twice");
  // A dynamic input with no range in the second profile.
  CHECK_THROWS(EngineManifest::parse(replace(base, "{\"pixels\": {\"min\": [5", "{\"pixelz\": {\"min\": [5")),
               "profile 1", "'pixelz'");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"opt\": [8, 3, 384, 384]", "\"opt\": [32, 3, 384, 384]")),
               "profile 1 input 'pixels' dim 0", "min <= opt <= max");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"max\": [4, 3, 384, 384]", "\"max\": [4, 3, 384, 385]")),
               "dim 3 is static (384)");
  CHECK_THROWS(EngineManifest::parse(replace(base, "\"max\": [4, 3, 384, 384]", "\"max\": [4, 3, 384]")),
               "range rank 3");
  CHECK_THROWS(EngineManifest::load("/nonexistent/manifest.json"), "cannot be opened");
  // Garbage bytes never crash the parser.
  for (int n = 0; n < 2000; ++n) {
    std::string junk = base.substr(0, static_cast<std::size_t>(n) % base.size());
    try {
      EngineManifest::parse(junk);
    } catch (const xvlm_edge::EngineError&) {
    }
  }
}

void test_select_profile() {
  const EngineManifest m = EngineManifest::parse(kManifest);
  const auto& profiles = m.spec.profiles;
  CHECK(xvlm_edge::select_profile(profiles, {{"pixels", {1, 3, 384, 384}}}) == 0);
  CHECK(xvlm_edge::select_profile(profiles, {{"pixels", {4, 3, 384, 384}}}) == 0);  // max is inclusive
  CHECK(xvlm_edge::select_profile(profiles, {{"pixels", {5, 3, 384, 384}}}) == 1);  // min is inclusive
  CHECK(xvlm_edge::select_profile(profiles, {{"pixels", {16, 3, 384, 384}}}) == 1);
  CHECK_THROWS(xvlm_edge::select_profile(profiles, {{"pixels", {17, 3, 384, 384}}}),
               "pixels (17, 3, 384, 384)", "profile 0: input 'pixels' dim 0 is 17, allowed [1, 4]",
               "profile 1: input 'pixels' dim 0 is 17, allowed [5, 16]");
  CHECK_THROWS(xvlm_edge::select_profile(profiles, {{"pixels", {0, 3, 384, 384}}}), "allowed [1, 4]");
  CHECK_THROWS(xvlm_edge::select_profile(profiles, {}), "input 'pixels' is missing");
  CHECK_THROWS(xvlm_edge::select_profile({}, {{"pixels", {1, 3, 384, 384}}}), "no optimisation profile");
}

void test_validate_inputs() {
  const EngineManifest m = EngineManifest::parse(kManifest);
  const auto& spec = m.spec;
  using Args = std::vector<xvlm_edge::TensorArg>;
  xvlm_edge::validate_inputs(spec, Args{{"pixels", DataType::kFloat32, {2, 3, 384, 384}, nullptr}});
  CHECK_THROWS(xvlm_edge::validate_inputs(spec, Args{}), "missing input tensor 'pixels'");
  CHECK_THROWS(xvlm_edge::validate_inputs(spec, Args{{"pixels", DataType::kFloat32, {2, 3, 384, 384}, nullptr},
                                                     {"text", DataType::kInt64, {2, 5}, nullptr}}),
               "unknown input tensor 'text'", "pixels");
  CHECK_THROWS(xvlm_edge::validate_inputs(spec, Args{{"pixels", DataType::kFloat16, {2, 3, 384, 384}, nullptr}}),
               "dtype float16", "expects float32");
  CHECK_THROWS(xvlm_edge::validate_inputs(spec, Args{{"pixels", DataType::kFloat32, {3, 384, 384}, nullptr}}),
               "rank 3", "expects rank 4");
  CHECK_THROWS(xvlm_edge::validate_inputs(spec, Args{{"pixels", DataType::kFloat32, {2, 3, 224, 384}, nullptr}}),
               "dim 2 is 224", "fixes it to 384");
  CHECK_THROWS(xvlm_edge::validate_outputs(spec, {{"image_embeds", {2, 145, 1024}}},
                                           Args{{"image_embeds", DataType::kFloat32, {1, 145, 1024}, nullptr}}),
               "output 'image_embeds' has shape (1, 145, 1024)", "(2, 145, 1024)");
  CHECK_THROWS(xvlm_edge::validate_outputs(spec, {}, Args{}), "missing output tensor 'image_embeds'");
}

void test_pointers_and_sizes() {
  using Args = std::vector<xvlm_edge::TensorArg>;
  alignas(256) static char buffer[512];
  xvlm_edge::check_device_pointers(Args{{"x", DataType::kFloat32, {2}, buffer}});
  xvlm_edge::check_device_pointers(Args{{"empty_cache", DataType::kFloat32, {2, 0}, nullptr}});
  CHECK_THROWS(xvlm_edge::check_device_pointers(Args{{"x", DataType::kFloat32, {2}, nullptr}}), "'x'", "null");
  CHECK_THROWS(xvlm_edge::check_device_pointers(Args{{"x", DataType::kFloat32, {2}, buffer + 4}}), "256-byte",
               "offset 4");
  CHECK(xvlm_edge::num_elements({2, 3, 4}) == 24);
  CHECK(xvlm_edge::num_elements({2, 0, 4}) == 0);
  CHECK_THROWS(xvlm_edge::num_elements({1LL << 40, 1LL << 40}), "int64");
  CHECK(xvlm_edge::dtype_size(DataType::kBFloat16) == 2);
  CHECK(xvlm_edge::parse_dtype("int64") == DataType::kInt64);
  CHECK(xvlm_edge::format_dims({7}) == "(7,)");
}

void test_versions() {
  CHECK(xvlm_edge::parse_tensorrt_version("10.3.0.26").minor == 3);
  CHECK(xvlm_edge::parse_tensorrt_version("11.0").patch == 0);
  CHECK(xvlm_edge::tensorrt_version_from_int(100300).to_string() == "10.3.0");
  CHECK_THROWS(xvlm_edge::tensorrt_version_from_int(8601), "predates TensorRT 10");
  CHECK_THROWS(xvlm_edge::parse_tensorrt_version("10."), "major.minor");
  CHECK_THROWS(xvlm_edge::parse_tensorrt_version("10"), "major.minor");
  CHECK_THROWS(xvlm_edge::parse_tensorrt_version("99999999.1"), "major.minor");
  xvlm_edge::check_tensorrt_compatible({10, 3, 0}, {10, 3, 2});  // patch releases share engines
  CHECK_THROWS(xvlm_edge::check_tensorrt_compatible({10, 3, 0}, {10, 4, 0}), "built with TensorRT 10.3.0",
               "runtime is TensorRT 10.4.0", "Rebuild");
  CHECK_THROWS(xvlm_edge::check_tensorrt_compatible({10, 3, 0}, {11, 3, 0}), "TensorRT 11.3.0");
}

}  // namespace

int main() {
  test_manifest_round_trip();
  test_manifest_rejects();
  test_select_profile();
  test_validate_inputs();
  test_pointers_and_sizes();
  test_versions();
  return xvlm_edge::testing::report();
}
