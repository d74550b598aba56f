// TensorSpec: what a tensor will be (dtype + shape) before any byte of it exists.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>

#include <d9d/dims.hpp>
#include <d9d/dtype.hpp>
#include <d9d/tensor.hpp>

namespace d9d::mapper {

struct TensorSpec {
  DType dtype = DType::F32;
  Shape shape;

  // The tensor's dtype and shape; a DTensor's global shape (Note [DTensor in a StateDict]).
  static TensorSpec of(const Tensor& tensor);
  int64_t numel() const { return numel_of(shape); }
  // numel * bits / 8, as Tensor::nbytes (sub-byte dtypes are packed).
  int64_t nbytes() const { return numel() * dtype_bits(dtype) / 8; }
  std::string str() const;  // "BF16[4096, 4096]"

  friend bool operator==(const TensorSpec& a, const TensorSpec& b) {
    return a.dtype == b.dtype && a.shape == b.shape;
  }
};

// name -> spec: infer()'s counterpart of StateDict.
using SpecDict = std::map<std::string, TensorSpec>;

std::ostream& operator<<(std::ostream& out, const TensorSpec& spec);

// The spec of every tensor of `state`.
SpecDict specs_of(const std::map<std::string, Tensor>& state);

}  // namespace d9d::mapper
