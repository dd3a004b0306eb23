// xvlm_edge._C: a thin pybind11 face over the core library. Argument checks that need NumPy (dtype,
// shape) live here; everything else is the core's. Core exceptions become the classes of the same name
// in xvlm_edge/errors.py. Engine tensors cross as plain values (dtype names, shape tuples, device pointers
// as ints) so that the binding needs neither torch nor CUDA; xvlm_edge/runtime/tensorrt.py adapts torch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "xvlm_edge/engine.hpp"
#include "xvlm_edge/errors.hpp"
#include "xvlm_edge/preprocess.hpp"
#include "xvlm_edge/tokenizer.hpp"

#ifndef XVLM_EDGE_HAS_TENSORRT
#define XVLM_EDGE_HAS_TENSORRT 0  // CMake defines it to 1 when it found TensorRT
#endif

namespace py = pybind11;

namespace {

using ImageArray = py::array_t<std::uint8_t, py::array::c_style>;

// Hands a vector to NumPy without a copy: the capsule owns it.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(std::move(shape), owned->data(), owner);
}

// Checks dtype and shape (H, W, 3) and returns a view of a C-contiguous uint8 copy-or-self.
std::pair<ImageArray, xvlm_edge::ImageView> image_view(const py::array& img) {
  if (!py::isinstance<py::array_t<std::uint8_t>>(img)) {
    throw xvlm_edge::ImageError("image dtype must be uint8, got " + std::string(py::str(img.dtype())));
  }
  if (img.ndim() != 3) {
    throw xvlm_edge::ImageError("image must be (H, W, 3), got " + std::to_string(img.ndim()) + " dims");
  }
  ImageArray arr = ImageArray::ensure(img);  // copies only if not C-contiguous
  xvlm_edge::ImageView view{arr.data(), static_cast<int>(std::min<py::ssize_t>(arr.shape(1), INT32_MAX)),
                            static_cast<int>(std::min<py::ssize_t>(arr.shape(0), INT32_MAX)),
                            static_cast<int>(std::min<py::ssize_t>(arr.shape(2), INT32_MAX))};
  return {std::move(arr), view};
}

py::array_t<std::uint8_t> resize_bicubic(const py::array& img, int out_width, int out_height, int num_threads) {
  auto [keep, view] = image_view(img);
  xvlm_edge::Image out;
  {
    py::gil_scoped_release release;
    out = xvlm_edge::resize_bicubic_u8(view, out_width, out_height, num_threads);
  }
  return to_numpy(std::move(out.data), {out.height, out.width, out.channels});
}

py::array_t<float> preprocess(const py::array& img, int res, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, int num_threads) {
  auto [keep, view] = image_view(img);
  std::vector<float> chw;
  {
    py::gil_scoped_release release;
    chw = xvlm_edge::preprocess(view, res, mean, std, num_threads);
  }
  return to_numpy(std::move(chw), {3, res, res});
}

// ---- engines ------------------------------------------------------------------------------------------

using RangeTuple = std::tuple<xvlm_edge::Dims, xvlm_edge::Dims, xvlm_edge::Dims>;  // (min, opt, max)
using TensorTuple = std::tuple<std::string, std::string, xvlm_edge::Dims, std::uintptr_t>;  // name, dtype, shape, ptr

xvlm_edge::Profile make_profile(const std::map<std::string, RangeTuple>& ranges) {
  xvlm_edge::Profile p;
  for (const auto& [name, r] : ranges) p.ranges[name] = {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
  return p;
}

std::map<std::string, RangeTuple> profile_ranges(const xvlm_edge::Profile& p) {
  std::map<std::string, RangeTuple> out;
  for (const auto& [name, r] : p.ranges) out[name] = {r.min, r.opt, r.max};
  return out;
}

std::vector<xvlm_edge::TensorArg> tensor_args(const std::vector<TensorTuple>& tensors) {
  std::vector<xvlm_edge::TensorArg> out;
  for (const auto& [name, dtype, shape, ptr] : tensors) {
    out.push_back({name, xvlm_edge::parse_dtype(dtype), shape, reinterpret_cast<void*>(ptr)});
  }
  return out;
}

void validate_shapes(const xvlm_edge::EngineSpec& spec,
                     const std::map<std::string, std::pair<std::string, xvlm_edge::Dims>>& inputs) {
  std::vector<xvlm_edge::TensorArg> args;
  for (const auto& [name, v] : inputs) args.push_back({name, xvlm_edge::parse_dtype(v.first), v.second, nullptr});
  xvlm_edge::validate_inputs(spec, args);
}

void bind_engines(py::module_& m) {
  py::class_<xvlm_edge::TensorSpec>(m, "TensorSpec",
                                    "An engine input or output: name, dtype name, shape (-1 = dynamic).")
      .def(py::init([](std::string name, const std::string& dtype, xvlm_edge::Dims shape) {
             return xvlm_edge::TensorSpec{std::move(name), xvlm_edge::parse_dtype(dtype), std::move(shape)};
           }),
           py::arg("name"), py::arg("dtype"), py::arg("shape"))
      .def_readonly("name", &xvlm_edge::TensorSpec::name)
      .def_property_readonly("dtype",
                             [](const xvlm_edge::TensorSpec& t) { return std::string(xvlm_edge::dtype_name(t.dtype)); })
      .def_property_readonly("shape", [](const xvlm_edge::TensorSpec& t) { return py::tuple(py::cast(t.shape)); })
      .def("__repr__", [](const xvlm_edge::TensorSpec& t) {
        return "TensorSpec('" + t.name + "', '" + std::string(xvlm_edge::dtype_name(t.dtype)) + "', " +
               xvlm_edge::format_dims(t.shape) + ")";
      });

  py::class_<xvlm_edge::Profile>(m, "Profile",
                                 "One optimisation profile: {input name: (min, opt, max) shapes}; bounds inclusive.")
      .def(py::init(&make_profile), py::arg("ranges"))
      .def_property_readonly("ranges", &profile_ranges);

  py::class_<xvlm_edge::EngineSpec>(m, "EngineSpec", "An engine's inputs, outputs and optimisation profiles.")
      .def(py::init([](std::vector<xvlm_edge::TensorSpec> inputs, std::vector<xvlm_edge::TensorSpec> outputs,
                       std::vector<xvlm_edge::Profile> profiles) {
             return xvlm_edge::EngineSpec{std::move(inputs), std::move(outputs), std::move(profiles)};
           }),
           py::arg("inputs"), py::arg("outputs"), py::arg("profiles"))
      .def_readonly("inputs", &xvlm_edge::EngineSpec::inputs)
      .def_readonly("outputs", &xvlm_edge::EngineSpec::outputs)
      .def_readonly("profiles", &xvlm_edge::EngineSpec::profiles)
      .def("validate", &xvlm_edge::EngineSpec::validate,
           "Raise EngineError unless names are unique, ranks 1-8, and every profile gives every dynamic input a\n"
           "range with min <= opt <= max that pins the static dims.");

  py::class_<xvlm_edge::EngineManifest>(m, "EngineManifest",
                                        "The JSON written beside an engine file (schema in csrc/tensorrt/README.md).")
      .def(py::init([](std::string graph, std::string engine, std::string sha256, std::string tensorrt_version,
                       std::string precision, xvlm_edge::EngineSpec spec) {
             xvlm_edge::EngineManifest mf;
             mf.graph = std::move(graph);
             mf.engine = std::move(engine);
             mf.sha256 = std::move(sha256);
             mf.tensorrt_version = std::move(tensorrt_version);
             mf.precision = std::move(precision);
             mf.spec = std::move(spec);
             mf.validate();
             return mf;
           }),
           py::arg("graph"), py::arg("engine"), py::arg("sha256"), py::arg("tensorrt_version"), py::arg("precision"),
           py::arg("spec"))
      .def_static("parse", [](const std::string& text) { return xvlm_edge::EngineManifest::parse(text); },
                  py::arg("text"), "Parse and validate a manifest's JSON text; EngineError names the bad field.")
      .def_static("load", &xvlm_edge::EngineManifest::load, py::arg("path"),
                  "Read and parse a manifest file; EngineError names the file and the bad field.")
      .def("to_json", &xvlm_edge::EngineManifest::to_json, "The manifest as JSON text (parse(to_json()) round-trips).")
      .def_readonly("schema", &xvlm_edge::EngineManifest::schema)
      .def_readonly("graph", &xvlm_edge::EngineManifest::graph)
      .def_readonly("engine", &xvlm_edge::EngineManifest::engine)
      .def_readonly("sha256", &xvlm_edge::EngineManifest::sha256)
      .def_readonly("tensorrt_version", &xvlm_edge::EngineManifest::tensorrt_version)
      .def_readonly("precision", &xvlm_edge::EngineManifest::precision)
      .def_readonly("spec", &xvlm_edge::EngineManifest::spec);

  m.def("select_profile", &xvlm_edge::select_profile, py::arg("profiles"), py::arg("shapes"),
        "Index of the first profile whose [min, max] holds every input shape ({name: shape}). EngineError\n"
        "names, per profile, the first input and dim outside it and the allowed range.");
  m.def("validate_shapes", &validate_shapes, py::arg("spec"), py::arg("inputs"),
        "Check {name: (dtype name, shape)} against spec's inputs: none missing or unknown, dtype and rank\n"
        "equal, static dims equal. Raises EngineError naming the tensor.");
  m.def("check_tensorrt_compatible",
        [](const std::string& built_with, const std::string& runtime) {
          xvlm_edge::check_tensorrt_compatible(xvlm_edge::parse_tensorrt_version(built_with),
                                               xvlm_edge::parse_tensorrt_version(runtime));
        },
        py::arg("built_with"), py::arg("runtime"),
        "Raise EngineError unless an engine built with TensorRT `built_with` runs on `runtime` (same\n"
        "major.minor).");
  m.def("has_tensorrt", [] { return static_cast<bool>(XVLM_EDGE_HAS_TENSORRT); },
        "Whether this _C was compiled with the TensorRT runner (EngineBuilder, EngineRunner).");

  m.def("tensorrt_version",
        []() -> std::optional<std::string> {
#if XVLM_EDGE_HAS_TENSORRT
          return xvlm_edge::runtime_tensorrt_version().to_string();
#else
          return std::nullopt;
#endif
        },
        "The linked TensorRT's version (\"10.3.0\"), what the export step writes into a manifest; None\n"
        "when _C was built without TensorRT.");

#if XVLM_EDGE_HAS_TENSORRT
  py::class_<xvlm_edge::EngineBuilder>(m, "EngineBuilder",
                                       "ONNX -> strongly typed TensorRT engine with profiles and a timing cache.")
      .def(py::init([](std::string onnx_path, std::string engine_path, std::vector<xvlm_edge::Profile> profiles,
                       std::string timing_cache_path, std::size_t workspace_bytes) {
             return xvlm_edge::EngineBuilder(xvlm_edge::BuildOptions{std::move(onnx_path), std::move(engine_path),
                                                                     std::move(timing_cache_path), std::move(profiles),
                                                                     workspace_bytes});
           }),
           py::arg("onnx_path"), py::arg("engine_path"), py::arg("profiles"), py::arg("timing_cache_path") = "",
           py::arg("workspace_bytes") = std::size_t{1} << 30)
      .def("build", &xvlm_edge::EngineBuilder::build, py::call_guard<py::gil_scoped_release>(),
           "Build and write the engine; returns its EngineSpec. Minutes on a big graph; releases the GIL.");

  py::class_<xvlm_edge::EngineRunner>(m, "EngineRunner", "A deserialised engine and one execution context.")
      .def(py::init<xvlm_edge::EngineManifest, const std::string&>(), py::arg("manifest"), py::arg("engine_path"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("manifest", &xvlm_edge::EngineRunner::manifest)
      .def("prepare", &xvlm_edge::EngineRunner::prepare, py::arg("shapes"), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>(),
           "Validate {name: shape}, select the profile, set the shapes; returns {output name: shape}.")
      .def("run",
           [](xvlm_edge::EngineRunner& r, const std::vector<TensorTuple>& inputs,
              const std::vector<TensorTuple>& outputs, std::uintptr_t stream) {
             auto in = tensor_args(inputs);
             auto out = tensor_args(outputs);
             py::gil_scoped_release release;
             r.run(in, out, stream);
           },
           py::arg("inputs"), py::arg("outputs"), py::arg("stream"),
           "Zero-copy enqueue: inputs/outputs are (name, dtype, shape, device pointer) tuples, stream a\n"
           "cudaStream_t as int. Returns once enqueued; releases the GIL.");
#endif
}

// ---- tokenizer ----------------------------------------------------------------------------------------

// The UTF-8 bytes of a str or bytes argument. A str is encoded with "surrogatepass", so a lone surrogate
// (an undecodable byte escaped by Python) reaches the core as ill-formed UTF-8 and is refused there with
// TextError, like any other invalid input.
std::string utf8_arg(const py::handle& obj, const char* name) {
  if (py::isinstance<py::bytes>(obj)) return obj.cast<std::string>();
  if (!py::isinstance<py::str>(obj)) {
    throw py::type_error(std::string(name) + " must be str or bytes, got " +
                         std::string(py::str(obj.get_type().attr("__name__"))));
  }
  auto encoded = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(obj.ptr(), "utf-8", "surrogatepass"));
  if (!encoded) throw py::error_already_set();
  return encoded.cast<std::string>();
}

using Ids = std::vector<std::int64_t>;

void bind_tokenizer(py::module_& m) {
  using xvlm_edge::Tokenizer;
  py::class_<Tokenizer>(m, "Tokenizer",
                        "WordPiece with the official X-VLM conventions, id-for-id equal to\n"
                        "xvlm_edge.tokenizer.Tokenizer (the C++ core the lamp SDK links). Texts are str or UTF-8\n"
                        "bytes; invalid UTF-8 raises TextError.")
      .def(py::init<std::vector<std::string>, const std::string&>(), py::arg("vocab"),
           py::arg("source") = "<memory>",
           "Build from the tokens in id order; CheckpointError if empty, duplicated or lacking a special token.")
      .def_static("from_file", &Tokenizer::from_file, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
                  "Load a vocab.txt (one token a line, id = line index); CheckpointError if unusable.")
      .def_static("from_vocab_text",
                  [](const py::object& text, const std::string& source) {
                    const std::string bytes = utf8_arg(text, "text");
                    py::gil_scoped_release release;
                    return Tokenizer::from_vocab_text(bytes, source);
                  },
                  py::arg("text"), py::arg("source") = "<memory>",
                  "Build from the text of a vocab.txt (str or bytes), as from_file reads it.")
      .def("__len__", &Tokenizer::size, "Number of tokens in the vocabulary.")
      .def_property_readonly("pad_id", &Tokenizer::pad_id, "Id of [PAD], looked up in the vocabulary.")
      .def_property_readonly("unk_id", &Tokenizer::unk_id, "Id of [UNK], looked up in the vocabulary.")
      .def_property_readonly("cls_id", &Tokenizer::cls_id, "Id of [CLS], looked up in the vocabulary.")
      .def_property_readonly("sep_id", &Tokenizer::sep_id, "Id of [SEP], looked up in the vocabulary.")
      .def_property_readonly("mask_id", &Tokenizer::mask_id, "Id of [MASK], looked up in the vocabulary.")
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"),
           "The id of a token, or None if it is not in the vocabulary.")
      .def("tokenize",
           [](const Tokenizer& t, const py::object& text) {
             const std::string bytes = utf8_arg(text, "text");
             py::gil_scoped_release release;
             return t.tokenize(bytes);
           },
           py::arg("text"), "Word pieces of one text, without [CLS] / [SEP]. Releases the GIL.")
      .def("piece_ids",
           [](const Tokenizer& t, const py::object& text) {
             const std::string bytes = utf8_arg(text, "text");
             py::gil_scoped_release release;
             return t.piece_ids(bytes);
           },
           py::arg("text"),
           "Ids of tokenize(text); empty if nothing is left after normalisation. Releases the GIL.")
      .def("encode",
           [](const Tokenizer& t, const py::object& text, std::optional<int> max_length, bool add_sep) {
             const std::string bytes = utf8_arg(text, "text");
             py::gil_scoped_release release;
             return t.encode(bytes, max_length, add_sep);
           },
           py::arg("text"), py::arg("max_length") = py::none(), py::arg("add_sep") = false,
           "[CLS] pieces ([SEP] with add_sep), pieces cut so that the specials fit max_length. Releases the GIL.")
      .def("encode_batch",
           [](const Tokenizer& t, const std::vector<py::object>& texts, std::optional<int> max_length, bool add_sep) {
             std::vector<std::string> bytes;
             bytes.reserve(texts.size());
             for (const py::object& text : texts) bytes.push_back(utf8_arg(text, "texts[i]"));
             py::gil_scoped_release release;
             std::vector<Ids> out;
             out.reserve(bytes.size());
             for (const std::string& b : bytes) out.push_back(t.encode(b, max_length, add_sep));
             return out;
           },
           py::arg("texts"), py::arg("max_length") = py::none(), py::arg("add_sep") = false,
           "encode() of each text, unpadded, in one call. Releases the GIL.")
      .def("caption_prompt_ids",
           [](const Tokenizer& t, const py::object& prompt) {
             return t.caption_prompt_ids(utf8_arg(prompt, "prompt"));
           },
           py::arg("prompt") = std::string(xvlm_edge::kCaptionPrompt),
           "Generation prompt ids: [CLS] prompt-pieces (no [SEP]).")
      .def("decode",
           [](const Tokenizer& t, const Ids& ids, bool skip_special_tokens) {
             py::gil_scoped_release release;
             return t.decode(ids, skip_special_tokens);
           },
           py::arg("ids"), py::arg("skip_special_tokens") = true,
           "Ids to text as transformers 4.12 BertTokenizer.decode (clean_up_tokenization_spaces=True).\n"
           "TextError for an id outside the vocabulary. Releases the GIL.");

  m.def("pre_caption",
        [](const py::object& text, int max_words) {
          const std::string bytes = utf8_arg(text, "text");
          py::gil_scoped_release release;
          return xvlm_edge::pre_caption(bytes, max_words);
        },
        py::arg("text"), py::arg("max_words") = 30,
        "xvlm_edge.text.pre_caption in C++ (the official caption cleaning); TextError if nothing is left.");
  m.def("pre_question",
        [](const py::object& text, int max_words) {
          const std::string bytes = utf8_arg(text, "text");
          py::gil_scoped_release release;
          return xvlm_edge::pre_question(bytes, max_words);
        },
        py::arg("text"), py::arg("max_words") = 50,
        "xvlm_edge.text.pre_question in C++ (the official question cleaning).");
  m.def("unicode_tables_version", &xvlm_edge::unicode_tables_version,
        "The Unicode Character Database version of the tokenizer's generated tables (\"15.0.0\").");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled core of xvlm_edge: Pillow-exact image preprocessing (use xvlm_edge.preprocess), the\n"
            "TensorRT engine manifest, profile and shape logic (use xvlm_edge.runtime.tensorrt), and the\n"
            "lamp SDK's WordPiece tokenizer and official text cleaning (Tokenizer, pre_caption, pre_question).";
  m.attr("__version__") = XVLM_EDGE_VERSION;

  // Subclass first: the translator's try/catch order decides which Python class is raised.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const xvlm_edge::ImageError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("ImageError"), e.what());
    } catch (const xvlm_edge::TextError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("TextError"), e.what());
    } catch (const xvlm_edge::InputError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("InputError"), e.what());
    } catch (const xvlm_edge::EngineError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("EngineError"), e.what());
    } catch (const xvlm_edge::VocabError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("CheckpointError"), e.what());
    }
  });

  m.def("resize_bicubic", &resize_bicubic, py::arg("img"), py::arg("out_width"), py::arg("out_height"),
        py::arg("num_threads") = 0,
        "Resize an (H, W, 3) uint8 RGB array to (out_height, out_width, 3), bit-exact with Pillow's\n"
        "Image.resize(..., BICUBIC). num_threads <= 0 uses every core. Releases the GIL.");
  m.def("preprocess", &preprocess, py::arg("img"), py::arg("res"), py::arg("mean"), py::arg("std"),
        py::arg("num_threads") = 0,
        "Resize an (H, W, 3) uint8 RGB array to res x res (Pillow bicubic) and normalise to float32\n"
        "(3, res, res) as torchvision ToTensor + Normalize(mean, std) would. Releases the GIL.");

  bind_engines(m);
  bind_tokenizer(m);
}
