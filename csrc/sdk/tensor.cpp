#include "tensor.hpp"

#include <cstring>
#include <string>
#include <type_traits>

namespace xvlm_edge::sdk {
namespace {

// Bytes of one row along `axis` (the product of the later dimensions) and the number of outer blocks.
struct Layout {
  std::size_t outer = 1;
  std::size_t row_bytes = 0;
};

Layout layout(const Tensor& x, std::size_t axis) {
  if (axis >= x.shape().size()) {
    throw EngineError("tensor of shape " + format_dims(x.shape()) + " has no axis " + std::to_string(axis));
  }
  Layout out;
  std::size_t inner = dtype_size(x.dtype());
  for (std::size_t d = 0; d < axis; ++d) out.outer *= static_cast<std::size_t>(x.shape()[d]);
  for (std::size_t d = axis + 1; d < x.shape().size(); ++d) inner *= static_cast<std::size_t>(x.shape()[d]);
  out.row_bytes = inner;
  return out;
}

}  // namespace

Tensor::Tensor(DataType dtype, Dims shape) : dtype_(dtype), shape_(std::move(shape)) {
  if (dtype != DataType::kFloat32 && dtype != DataType::kInt64) {
    throw EngineError("SDK tensors are float32 or int64, not " + std::string(dtype_name(dtype)));
  }
  numel_ = num_elements(shape_);
  words_.assign((static_cast<std::size_t>(numel_) * dtype_size(dtype) + 7) / 8, 0);
}

Tensor Tensor::filled(Dims shape, float value) {
  Tensor out(DataType::kFloat32, std::move(shape));
  float* p = out.data<float>();
  for (std::int64_t i = 0; i < out.numel(); ++i) p[i] = value;
  return out;
}

Tensor Tensor::filled(Dims shape, std::int64_t value) {
  Tensor out(DataType::kInt64, std::move(shape));
  std::int64_t* p = out.data<std::int64_t>();
  for (std::int64_t i = 0; i < out.numel(); ++i) p[i] = value;
  return out;
}

template <class T>
void Tensor::check() const {
  constexpr DataType want = std::is_same_v<T, float> ? DataType::kFloat32 : DataType::kInt64;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, std::int64_t>, "SDK tensors hold float or int64");
  if (dtype_ != want) {
    throw EngineError("tensor holds " + std::string(dtype_name(dtype_)) + ", read as " + std::string(dtype_name(want)));
  }
}
template void Tensor::check<float>() const;
template void Tensor::check<std::int64_t>() const;

Tensor narrow(const Tensor& x, std::size_t axis, std::int64_t start, std::int64_t length) {
  const Layout l = layout(x, axis);
  const std::int64_t size = x.shape()[axis];
  if (start < 0 || length < 0 || start + length > size) {
    throw EngineError("rows [" + std::to_string(start) + ", " + std::to_string(start + length) + ") of axis " +
                      std::to_string(axis) + " of a tensor of shape " + format_dims(x.shape()));
  }
  Dims shape = x.shape();
  shape[axis] = length;
  Tensor out(x.dtype(), shape);
  const auto* src = static_cast<const std::uint8_t*>(x.raw());
  auto* dst = static_cast<std::uint8_t*>(out.raw());
  const std::size_t block = l.row_bytes * static_cast<std::size_t>(length);
  for (std::size_t o = 0; o < l.outer && block; ++o) {
    std::memcpy(dst + o * block, src + (o * static_cast<std::size_t>(size) + static_cast<std::size_t>(start)) * l.row_bytes, block);
  }
  return out;
}

Tensor gather(const Tensor& x, std::size_t axis, const std::vector<std::int64_t>& rows) {
  const Layout l = layout(x, axis);
  const std::int64_t size = x.shape()[axis];
  for (std::int64_t r : rows) {
    if (r < 0 || r >= size) throw EngineError("row " + std::to_string(r) + " of an axis of size " + std::to_string(size));
  }
  Dims shape = x.shape();
  shape[axis] = static_cast<std::int64_t>(rows.size());
  Tensor out(x.dtype(), shape);
  const auto* src = static_cast<const std::uint8_t*>(x.raw());
  auto* dst = static_cast<std::uint8_t*>(out.raw());
  if (l.row_bytes == 0) return out;
  for (std::size_t o = 0; o < l.outer; ++o) {
    for (std::size_t i = 0; i < rows.size(); ++i) {
      std::memcpy(dst + (o * rows.size() + i) * l.row_bytes,
                  src + (o * static_cast<std::size_t>(size) + static_cast<std::size_t>(rows[i])) * l.row_bytes, l.row_bytes);
    }
  }
  return out;
}

Tensor concat(const std::vector<Tensor>& parts, std::size_t axis) {
  if (parts.empty()) throw EngineError("concat of no tensors");
  if (parts.size() == 1) return parts.front();
  Dims shape = parts.front().shape();
  std::int64_t total = 0;
  for (const Tensor& p : parts) {
    Dims other = p.shape();
    if (other.size() != shape.size() || p.dtype() != parts.front().dtype()) {
      throw EngineError("concat of tensors of shapes " + format_dims(shape) + " and " + format_dims(other));
    }
    other[axis] = shape[axis];
    if (other != shape) throw EngineError("concat of tensors of shapes " + format_dims(shape) + " and " + format_dims(p.shape()));
    total += p.shape()[axis];
  }
  shape[axis] = total;
  Tensor out(parts.front().dtype(), shape);
  const Layout l = layout(out, axis);
  auto* dst = static_cast<std::uint8_t*>(out.raw());
  std::size_t offset = 0;  // bytes into each outer block of `out`
  const std::size_t out_block = l.row_bytes * static_cast<std::size_t>(total);
  for (const Tensor& p : parts) {
    const std::size_t block = l.row_bytes * static_cast<std::size_t>(p.shape()[axis]);
    const auto* src = static_cast<const std::uint8_t*>(p.raw());
    for (std::size_t o = 0; o < l.outer && block; ++o) std::memcpy(dst + o * out_block + offset, src + o * block, block);
    offset += block;
  }
  return out;
}

}  // namespace xvlm_edge::sdk
