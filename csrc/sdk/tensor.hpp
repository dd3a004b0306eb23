// The host tensors the SDK hands its graph engines: an owned, contiguous float32 or int64 array and its shape.
//
// Engines copy inputs into their own planned memory and outputs out of it, so a Tensor never aliases an
// engine's buffers and outlives every call. The element type and shape types are the engine catalogue's
// (xvlm_edge/engine.hpp: DataType, Dims), shared with the TensorRT runner.
#pragma once

#include <cstdint>
#include <vector>

#include "xvlm_edge/engine.hpp"

namespace xvlm_edge::sdk {

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled. EngineError for a dtype other than float32 / int64 or a negative dimension.
  Tensor(DataType dtype, Dims shape);

  static Tensor filled(Dims shape, float value);
  static Tensor filled(Dims shape, std::int64_t value);

  DataType dtype() const noexcept { return dtype_; }
  const Dims& shape() const noexcept { return shape_; }
  std::int64_t dim(std::size_t axis) const { return shape_.at(axis); }
  std::int64_t numel() const noexcept { return numel_; }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }

  void* raw() noexcept { return words_.data(); }
  const void* raw() const noexcept { return words_.data(); }
  // Typed views; EngineError if T is not the tensor's element type.
  template <class T> T* data() { check<T>(); return reinterpret_cast<T*>(words_.data()); }
  template <class T> const T* data() const { check<T>(); return reinterpret_cast<const T*>(words_.data()); }

 private:
  template <class T> void check() const;

  DataType dtype_ = DataType::kFloat32;
  Dims shape_;
  std::int64_t numel_ = 0;
  std::vector<std::uint64_t> words_;  // 8-byte words keep float and int64 elements aligned
};

// Rows [start, start + length) of `x` along `axis`, copied.
Tensor narrow(const Tensor& x, std::size_t axis, std::int64_t start, std::int64_t length);
// Rows `rows` of `x` along `axis`, in that order (a row may repeat), copied.
Tensor gather(const Tensor& x, std::size_t axis, const std::vector<std::int64_t>& rows);
// `parts` joined along `axis`; every other dimension must agree (EngineError otherwise).
Tensor concat(const std::vector<Tensor>& parts, std::size_t axis);

}  // namespace xvlm_edge::sdk
