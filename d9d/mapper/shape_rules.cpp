#include "shape_rules.hpp"

#include <algorithm>
#include <optional>

#include <d9d/error.hpp>

namespace d9d::mapper::detail {

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  D9D_CHECK_INDEX(dim >= -ndim && dim < ndim, op, ": dim ", dim,
                  " is out of range for a tensor of ", ndim, " dims (expected ", -ndim, "..",
                  ndim - 1, ")");
  return dim < 0 ? dim + ndim : dim;
}

void check_elements(DType dtype, const char* op) {
  D9D_CHECK_TYPE(!is_sub_byte(dtype), op, ": ", dtype, " is a packed ", dtype_bits(dtype),
                 "-bit dtype without addressable elements; it can only be stored, reshaped, copied "
                 "whole and written");
}

Shape transpose_shape(const Shape& shape, int64_t dim0, int64_t dim1) {
  const auto n = static_cast<int64_t>(shape.size());
  const auto a = static_cast<size_t>(wrap_dim(dim0, n, "transpose"));
  const auto b = static_cast<size_t>(wrap_dim(dim1, n, "transpose"));
  Shape out = shape;
  std::swap(out[a], out[b]);
  return out;
}

Shape permute_shape(const Shape& shape, const Dims& dims) {
  const auto n = static_cast<int64_t>(shape.size());
  D9D_CHECK_INDEX(static_cast<int64_t>(dims.size()) == n, "permute: ", dims, " has ", dims.size(),
                  " dims but the tensor of shape ", shape, " has ", n);
  Shape out = shape;
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    const auto d = static_cast<size_t>(wrap_dim(dims[i], n, "permute"));
    D9D_CHECK(!seen[d], "permute: dim ", dims[i], " appears twice in ", dims);
    seen[d] = true;
    out[i] = shape[d];
  }
  return out;
}

Shape squeeze_shape(const Shape& shape) {
  Shape out;
  for (int64_t s : shape) {
    if (s != 1) out.push_back(s);
  }
  return out;
}

Shape squeeze_shape(const Shape& shape, int64_t dim, bool* changed) {
  *changed = false;
  if (shape.empty()) {
    wrap_dim(dim, 1, "squeeze");  // a scalar accepts dim 0 or -1, as in PyTorch
    return shape;
  }
  const auto d = static_cast<size_t>(wrap_dim(dim, static_cast<int64_t>(shape.size()), "squeeze"));
  if (shape[d] != 1) return shape;
  Shape out = shape;
  out.erase(d);
  *changed = true;
  return out;
}

Shape unsqueeze_shape(const Shape& shape, int64_t dim) {
  const auto d =
      static_cast<size_t>(wrap_dim(dim, static_cast<int64_t>(shape.size()) + 1, "unsqueeze"));
  Shape out = shape;
  out.insert(d, 1);
  return out;
}

Shape reshape_shape(const Shape& from, const Shape& target) {
  const int64_t numel = numel_of(from);
  Shape out = target;
  std::optional<size_t> infer;
  int64_t known = 1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      D9D_CHECK(!infer, "reshape: only one dim can be -1 in ", target);
      infer = i;
    } else {
      D9D_CHECK(out[i] >= 0, "reshape: invalid size ", out[i], " in ", target);
      known *= out[i];
    }
  }
  if (infer) {
    D9D_CHECK(known != 0 && numel % known == 0, "reshape: shape ", target,
              " is invalid for a tensor of shape ", from, " (", numel, " elements)");
    out[*infer] = numel / known;
  }
  D9D_CHECK(numel_of(out) == numel, "reshape: shape ", target, " is invalid for a tensor of shape ",
            from, " (", numel, " elements)");
  return out;
}

std::vector<int64_t> chunk_sizes(int64_t size, int64_t chunks) {
  D9D_CHECK(chunks > 0, "chunk: the number of chunks must be positive, got ", chunks);
  if (size == 0) return std::vector<int64_t>(static_cast<size_t>(chunks), 0);
  const int64_t step = (size + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < size; start += step)
    sizes.push_back(std::min(step, size - start));
  return sizes;
}

}  // namespace d9d::mapper::detail
