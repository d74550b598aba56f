// Tensor: a strided view of Storage, with PyTorch's semantics.
//
// A Tensor is storage + byte offset + shape + strides (in elements) + dtype. Copies of a Tensor
// share bytes; views (transpose, permute, squeeze, unsqueeze, view/reshape, narrow, select) are
// free; contiguous(), clone(), to() and the free functions stack/cat materialize new bytes with
// one strided-copy engine (copy.cpp). Dims may be negative (counted from the end), as in PyTorch.
// Strides are never negative; a stride of 0 (a broadcast) is allowed in views that come from
// DLPack, and such a tensor cannot be written into.
#pragma once

#include <cstdint>
#include <cstring>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include <d9d/device.hpp>
#include <d9d/dims.hpp>
#include <d9d/dtype.hpp>
#include <d9d/error.hpp>
#include <d9d/storage.hpp>

namespace d9d {

// Note [tensor attachment]: a layer above core may attach one immutable, reference-counted object
// to a Tensor value, which core carries without knowing what it is. d9d::dist attaches a DTensor's
// spec (global shape, device mesh, placements), so that a StateDict value can be a distributed
// tensor while core knows nothing of ranks. Copies of the Tensor share the attachment, and so does
// an op that returns this very tensor (contiguous() of a contiguous tensor, to() its own dtype or
// device, squeeze(dim) of a dim that is not 1); every op that makes a different view or new bytes
// returns a tensor without one.
class TensorAttachment {
 public:
  virtual ~TensorAttachment() = default;
};

class Tensor {
 public:
  // An undefined tensor: defined() is false and every other call throws.
  Tensor() = default;
  // A view of `storage`; element (i0, i1, ...) starts at byte
  // offset + (i0 * strides[0] + i1 * strides[1] + ...) * element size.
  // Throws ValueError if any element would fall outside the storage.
  Tensor(Storage storage, DType dtype, Shape shape, Strides strides, int64_t offset = 0);
  // A contiguous view of `storage` starting at byte `offset`. (A named factory, not a constructor:
  // with braces, Tensor(s, dtype, {2}, {1}) would otherwise pick an offset over strides.)
  static Tensor from_storage(Storage storage, DType dtype, const Shape& shape, int64_t offset = 0);

  // Factories. Values given as C++ numbers are converted to `dtype` by the rules of to(DType).
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  template <class T>
  static Tensor full(const Shape& shape, T value, DType dtype);
  // 0, 1, ..., end - 1, as torch.arange(end, dtype=dtype).
  static Tensor arange(int64_t end, DType dtype = DType::I64);
  // start, start + step, ... up to (excluding) end, as torch.arange(start, end, step).
  static Tensor arange(double start, double end, double step, DType dtype);
  // A 1-D tensor of the values, or one of `shape` (whose numel must equal values.size()).
  template <class T>
  static Tensor from_vector(const std::vector<T>& values);
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);

  bool defined() const { return storage_.defined(); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_.device(); }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t numel() const { return numel_of(shape_); }
  // Bytes of the elements (numel * bits / 8), not of the storage.
  int64_t nbytes() const;
  int64_t element_size() const { return d9d::element_size(dtype_); }
  int64_t storage_offset() const { return offset_; }  // in bytes
  const Storage& storage() const { return storage_; }
  bool is_contiguous() const;

  // Address of the first element.
  const void* data_ptr() const { return storage_.data() + offset_; }
  // As data_ptr(), for writing; throws if the storage is read-only (a mapped file).
  void* mutable_data_ptr() const;
  // Typed access; T must be the dtype's C++ type (dtype_of<T>() == dtype()).
  template <class T>
  const T* data() const {
    check_element_type(dtype_of<T>(), "data");
    return static_cast<const T*>(data_ptr());
  }
  template <class T>
  T* mutable_data() const {
    check_element_type(dtype_of<T>(), "mutable_data");
    return static_cast<T*>(mutable_data_ptr());
  }

  // Views: no bytes move.
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor permute(const Dims& dims) const;
  Tensor squeeze() const;             // drops every dim of size 1
  Tensor squeeze(int64_t dim) const;  // drops `dim` if its size is 1, else returns the same view
  Tensor unsqueeze(int64_t dim) const;
  // A view with the new shape (one entry may be -1); throws if the strides do not allow one.
  Tensor view(const Shape& shape) const;
  // view() when possible, otherwise a contiguous copy with the new shape.
  Tensor reshape(const Shape& shape) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;

  // Materialization.
  Tensor contiguous() const;  // this tensor if already contiguous, else a packed copy
  Tensor clone() const;       // always a packed copy
  // Element conversion, as PyTorch: round-to-nearest-even to F16/BF16/F8 (through F32, as
  // PyTorch converts), wrap-around between integers, truncation toward zero from float to
  // integer (NaN becomes 0; values past the int64 range saturate), nonzero -> true for BOOL,
  // real part for C64 -> real. Returns this tensor when the dtype is already `dtype`.
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  // Copies `src` (same shape; converted if the dtype differs) into this tensor's elements. Either
  // side may be on a CUDA device, with any strides and dtypes: the conversion runs on the source's
  // device, strided copies on a CUDA device run d9d's kernels. Returns when the bytes are there.
  const Tensor& copy_(const Tensor& src) const;

  // The elements in row-major order, converted to T.
  template <class T>
  std::vector<T> to_vector() const;
  // The single element of a one-element tensor, converted to T.
  template <class T>
  T item() const;

  // "Tensor(BF16, [2, 3], cpu)".
  std::string str() const;

  // See Note [tensor attachment]. Null when there is none.
  const std::shared_ptr<const TensorAttachment>& attachment() const { return attachment_; }
  // This very tensor (the same view of the same bytes) carrying `attachment` (null: none).
  Tensor with_attachment(std::shared_ptr<const TensorAttachment> attachment) const {
    Tensor out = *this;
    out.attachment_ = std::move(attachment);
    return out;
  }

 private:
  void check_element_type(DType want, const char* op) const;
  // A copy of this tensor to be made into a different view: without the attachment.
  Tensor view_base() const {
    Tensor out = *this;
    out.attachment_.reset();
    return out;
  }
  const Tensor& copy_across_devices(const Tensor& src) const;
  Storage storage_;
  DType dtype_ = DType::F32;
  int64_t offset_ = 0;
  Shape shape_;
  Strides strides_;
  std::shared_ptr<const TensorAttachment> attachment_;
};

std::ostream& operator<<(std::ostream& out, const Tensor& tensor);

// Joins tensors of one shape along a new dim `dim` (in [-(n+1), n]).
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
// Joins tensors along the existing dim `dim`; all other sizes must agree. As torch.cat, a 1-D
// tensor of shape [0] is skipped.
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
// torch.chunk: views of ceil(size / chunks) along `dim`, the last smaller; may return fewer than
// `chunks` pieces (chunk of size 5 into 4 gives 3 pieces of 2, 2, 1).
std::vector<Tensor> chunk(const Tensor& tensor, int64_t chunks, int64_t dim = 0);
// Views of the given sizes along `dim`; the sizes must add up to the dim's size.
std::vector<Tensor> split(const Tensor& tensor, const std::vector<int64_t>& sizes, int64_t dim = 0);
// The views tensor.select(dim, i) for every i.
std::vector<Tensor> unbind(const Tensor& tensor, int64_t dim = 0);
// Same dtype, same shape and the same bytes element by element (NaNs compare by their bits).
bool equal(const Tensor& a, const Tensor& b);

// The most worker threads d9d runs.
inline constexpr int kMaxThreads = 1024;
// Worker threads used by large copies and casts (default: the hardware's, or $D9D_NUM_THREADS).
int num_threads();
// 1..kMaxThreads. Not to be called while another thread runs a d9d operation.
void set_num_threads(int threads);

namespace detail {
Tensor tensor_from_elements(const void* values, int64_t count, DType value_dtype,
                            const Shape& shape, DType dtype);
void tensor_to_elements(const Tensor& tensor, DType value_dtype, void* out);
Tensor tensor_full(const Shape& shape, const void* value, DType value_dtype, DType dtype);
}  // namespace detail

template <class T>
Tensor Tensor::full(const Shape& shape, T value, DType dtype) {
  if constexpr (std::is_same_v<T, bool>) {
    const uint8_t byte = value ? 1 : 0;
    return detail::tensor_full(shape, &byte, DType::BOOL, dtype);
  } else {
    return detail::tensor_full(shape, &value, dtype_of<T>(), dtype);
  }
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values) {
  return from_vector(values, Shape{static_cast<int64_t>(values.size())});
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  const auto count = static_cast<int64_t>(values.size());
  if constexpr (std::is_same_v<T, bool>) {  // std::vector<bool> packs bits
    std::vector<uint8_t> bytes(values.begin(), values.end());
    return detail::tensor_from_elements(bytes.data(), count, DType::BOOL, shape, DType::BOOL);
  } else {
    return detail::tensor_from_elements(values.data(), count, dtype_of<T>(), shape, dtype_of<T>());
  }
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  if constexpr (std::is_same_v<T, bool>) {
    std::vector<uint8_t> bytes(static_cast<size_t>(numel()));
    detail::tensor_to_elements(*this, DType::BOOL, bytes.data());
    return std::vector<bool>(bytes.begin(), bytes.end());
  } else {
    std::vector<T> out(static_cast<size_t>(numel()));
    detail::tensor_to_elements(*this, dtype_of<T>(), out.data());
    return out;
  }
}

template <class T>
T Tensor::item() const {
  D9D_CHECK(numel() == 1, "item: expected a tensor with one element, got shape ", shape_);
  return to_vector<T>()[0];
}

}  // namespace d9d
