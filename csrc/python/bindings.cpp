// xvlm_edge._C: a thin pybind11 face over the core library. Argument checks that need NumPy (dtype,
// shape) live here; everything else is the core's. Core exceptions become the classes of the same name
// in xvlm_edge/errors.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "xvlm_edge/errors.hpp"
#include "xvlm_edge/preprocess.hpp"

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled core of xvlm_edge (Pillow-exact image preprocessing). Use xvlm_edge.preprocess.";
  m.attr("__version__") = XVLM_EDGE_VERSION;

  // Subclass first: the translator's try/catch order decides which Python class is raised.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const xvlm_edge::ImageError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("ImageError"), e.what());
    } catch (const xvlm_edge::InputError& e) {
      py::set_error(py::module_::import("xvlm_edge.errors").attr("InputError"), e.what());
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
}
