#include <d9d/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <ostream>

#include "cast.hpp"
#include "copy.hpp"
#include "cuda_runtime.hpp"
#include "tensor_checks.hpp"

namespace d9d {

using detail::wrap_dim;

// ---- construction -------------------------------------------------------------------------------

Tensor::Tensor(Storage storage, DType dtype, Shape shape, Strides strides, int64_t offset)
    : storage_(std::move(storage)),
      dtype_(dtype),
      offset_(offset),
      shape_(std::move(shape)),
      strides_(std::move(strides)) {
  D9D_CHECK(storage_.defined(), "Tensor: the storage is undefined");
  D9D_CHECK(shape_.size() == strides_.size(), "Tensor: shape ", shape_, " and strides ", strides_,
            " have different lengths");
  D9D_CHECK(offset_ >= 0, "Tensor: negative byte offset ", offset_);
  const int64_t numel = detail::checked_numel(shape_, "Tensor");
  for (int64_t s : strides_) D9D_CHECK(s >= 0, "Tensor: negative stride in ", strides_);
  const int bits = dtype_bits(dtype_);
  int64_t extent = 0;  // bytes from the first element to one past the last
  if (bits % 8 != 0) {
    D9D_CHECK_TYPE(is_contiguous(), "Tensor: a packed ", dtype_,
                   " tensor must be contiguous, got strides ", strides_, " for shape ", shape_);
    extent = detail::packed_bytes(numel, dtype_, "Tensor");
  } else if (numel > 0) {
    int64_t last = 0;
    for (size_t i = 0; i < shape_.size(); ++i) {
      int64_t step = 0;
      D9D_CHECK(!__builtin_mul_overflow(shape_[i] - 1, strides_[i], &step) &&
                    !__builtin_add_overflow(last, step, &last),
                "Tensor: shape ", shape_, " with strides ", strides_, " overflows int64");
    }
    D9D_CHECK(!__builtin_mul_overflow(last + 1, int64_t{bits / 8}, &extent),
              "Tensor: shape ", shape_, " with strides ", strides_, " overflows int64");
  }
  int64_t end = 0;
  D9D_CHECK(!__builtin_add_overflow(offset_, extent, &end) &&
                end <= static_cast<int64_t>(storage_.nbytes()),
            "Tensor: a ", dtype_, " view of shape ", shape_, ", strides ", strides_,
            " at byte offset ", offset_, " needs ", extent, " bytes but the storage has only ",
            static_cast<int64_t>(storage_.nbytes()) - offset_, " after the offset");
}

Tensor Tensor::from_storage(Storage storage, DType dtype, const Shape& shape, int64_t offset) {
  return Tensor(std::move(storage), dtype, shape, detail::contiguous_strides(shape), offset);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  const int64_t numel = detail::checked_numel(shape, "empty");
  const int64_t bytes = detail::packed_bytes(numel, dtype, "empty");
  return from_storage(Storage::allocate(static_cast<size_t>(bytes), device), dtype, shape);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t.nbytes() == 0) return t;
  if (device.is_cuda()) {
    detail::cuda_memset_zero(t.storage_.data(), static_cast<size_t>(t.nbytes()), device.index());
  } else {
    std::memset(t.storage_.data(), 0, static_cast<size_t>(t.nbytes()));
  }
  return t;
}

Tensor Tensor::arange(int64_t end, DType dtype) {
  D9D_CHECK(end >= 0, "arange: end must be non-negative, got ", end);
  Tensor values = empty({end}, DType::I64);
  auto* p = values.mutable_data<int64_t>();
  for (int64_t i = 0; i < end; ++i) p[i] = i;
  return values.to(dtype);
}

Tensor Tensor::arange(double start, double end, double step, DType dtype) {
  D9D_CHECK(std::isfinite(start) && std::isfinite(end) && std::isfinite(step),
            "arange: start, end and step must be finite, got ", start, ", ", end, ", ", step);
  D9D_CHECK(step != 0, "arange: step must be nonzero");
  D9D_CHECK((step > 0 && end >= start) || (step < 0 && end <= start), "arange: the step ", step,
            " does not lead from ", start, " to ", end);
  const double count = std::ceil((end - start) / step);
  D9D_CHECK(count < 9.0e15, "arange: ", count, " elements is too many");
  const auto n = static_cast<int64_t>(count);
  Tensor values = empty({n}, DType::F64);
  auto* p = values.mutable_data<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = start + static_cast<double>(i) * step;
  return values.to(dtype);
}

namespace detail {

Tensor tensor_from_elements(const void* values, int64_t count, DType value_dtype,
                            const Shape& shape, DType dtype) {
  D9D_CHECK(checked_numel(shape, "from_vector") == count, "from_vector: ", count,
            " values do not fill shape ", shape, " (", numel_of(shape), " elements)");
  Tensor t = Tensor::empty(shape, value_dtype);
  if (t.nbytes() > 0) std::memcpy(t.mutable_data_ptr(), values, static_cast<size_t>(t.nbytes()));
  return t.to(dtype);
}

void tensor_to_elements(const Tensor& tensor, DType value_dtype, void* out) {
  check_defined(tensor, "to_vector");
  const Tensor packed = tensor.to(value_dtype).contiguous().to(Device::cpu());
  if (packed.nbytes() > 0) std::memcpy(out, packed.data_ptr(), static_cast<size_t>(packed.nbytes()));
}

Tensor tensor_full(const Shape& shape, const void* value, DType value_dtype, DType dtype) {
  check_elements(dtype, "full");
  std::byte element[16];
  cast_contiguous(static_cast<const std::byte*>(value), value_dtype, element, dtype, 1);
  Tensor t = Tensor::empty(shape, dtype);
  const auto total = static_cast<size_t>(t.nbytes());
  if (total == 0) return t;
  auto* p = static_cast<std::byte*>(t.mutable_data_ptr());
  const auto esize = static_cast<size_t>(element_size(dtype));
  std::memcpy(p, element, esize);
  for (size_t filled = esize; filled < total; filled *= 2) {
    std::memcpy(p + filled, p, std::min(filled, total - filled));
  }
  return t;
}

}  // namespace detail

// ---- properties ---------------------------------------------------------------------------------

int64_t Tensor::size(int64_t dim) const {
  detail::check_defined(*this, "size");
  return shape_[static_cast<size_t>(wrap_dim(dim, this->dim(), "size"))];
}

int64_t Tensor::stride(int64_t dim) const {
  detail::check_defined(*this, "stride");
  return strides_[static_cast<size_t>(wrap_dim(dim, this->dim(), "stride"))];
}

int64_t Tensor::nbytes() const { return numel() * dtype_bits(dtype_) / 8; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 0) return true;
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::mutable_data_ptr() const {
  detail::check_defined(*this, "mutable_data_ptr");
  D9D_CHECK(storage_.writable(), "cannot write into ", str(),
            ": its storage is read-only (a memory-mapped file or a foreign buffer)");
  return storage_.data() + offset_;
}

void Tensor::check_element_type(DType want, const char* op) const {
  detail::check_defined(*this, op);
  D9D_CHECK_TYPE(dtype_ == want, op, ": the tensor is ", dtype_, " but the element type asked for is ",
                 want);
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return detail::str_cat("Tensor(", dtype_, ", ", shape_, ", ", device(), ")");
}

std::ostream& operator<<(std::ostream& out, const Tensor& tensor) { return out << tensor.str(); }

// ---- views --------------------------------------------------------------------------------------

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  detail::check_defined(*this, "transpose");
  detail::check_elements(dtype_, "transpose");
  if (dim() == 0) {  // as PyTorch: a scalar accepts dims 0 and -1, and is its own transpose
    wrap_dim(dim0, 1, "transpose");
    wrap_dim(dim1, 1, "transpose");
    return *this;
  }
  const auto a = static_cast<size_t>(wrap_dim(dim0, dim(), "transpose"));
  const auto b = static_cast<size_t>(wrap_dim(dim1, dim(), "transpose"));
  Tensor out = view_base();
  std::swap(out.shape_[a], out.shape_[b]);
  std::swap(out.strides_[a], out.strides_[b]);
  return out;
}

Tensor Tensor::permute(const Dims& dims) const {
  detail::check_defined(*this, "permute");
  detail::check_elements(dtype_, "permute");
  D9D_CHECK_INDEX(static_cast<int64_t>(dims.size()) == dim(), "permute: ", dims, " has ",
                  dims.size(), " dims but the tensor of shape ", shape_, " has ", dim());
  Tensor out = view_base();
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    const auto d = static_cast<size_t>(wrap_dim(dims[i], dim(), "permute"));
    D9D_CHECK(!seen[d], "permute: dim ", dims[i], " appears twice in ", dims);
    seen[d] = true;
    out.shape_[i] = shape_[d];
    out.strides_[i] = strides_[d];
  }
  return out;
}

Tensor Tensor::squeeze() const {
  detail::check_defined(*this, "squeeze");
  Tensor out = view_base();
  out.shape_ = {};
  out.strides_ = {};
  for (size_t i = 0; i < shape_.size(); ++i) {
    if (shape_[i] == 1) continue;
    out.shape_.push_back(shape_[i]);
    out.strides_.push_back(strides_[i]);
  }
  return out;
}

Tensor Tensor::squeeze(int64_t dim) const {
  detail::check_defined(*this, "squeeze");
  if (this->dim() == 0) {
    wrap_dim(dim, 1, "squeeze");  // a scalar accepts dim 0 or -1, as in PyTorch
    return *this;
  }
  const auto d = static_cast<size_t>(wrap_dim(dim, this->dim(), "squeeze"));
  if (shape_[d] != 1) return *this;
  Tensor out = view_base();
  out.shape_.erase(d);
  out.strides_.erase(d);
  return out;
}

Tensor Tensor::unsqueeze(int64_t dim) const {
  detail::check_defined(*this, "unsqueeze");
  const auto d = static_cast<size_t>(wrap_dim(dim, this->dim() + 1, "unsqueeze"));
  Tensor out = view_base();
  const int64_t stride = d < shape_.size() ? shape_[d] * strides_[d] : 1;
  out.shape_.insert(d, 1);
  out.strides_.insert(d, stride);
  return out;
}

namespace {

// Resolves a -1 in `shape` against numel; throws if the shape cannot hold numel elements.
Shape infer_shape(const Shape& shape, int64_t numel, const Shape& from, const char* op) {
  Shape out = shape;
  std::optional<size_t> infer;
  int64_t known = 1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      D9D_CHECK(!infer, op, ": only one dim can be -1 in ", shape);
      infer = i;
    } else {
      D9D_CHECK(out[i] >= 0, op, ": invalid size ", out[i], " in ", shape);
      known *= out[i];
    }
  }
  if (infer) {
    D9D_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape,
              " is invalid for a tensor of shape ", from, " (", numel, " elements)");
    out[*infer] = numel / known;
  }
  D9D_CHECK(numel_of(out) == numel, op, ": shape ", shape, " is invalid for a tensor of shape ",
            from, " (", numel, " elements)");
  return out;
}

// PyTorch's computeStride: strides that view `old_shape`/`old_strides` as `new_shape`, if any.
std::optional<Strides> view_strides(const Shape& old_shape, const Strides& old_strides,
                                    const Shape& new_shape) {
  Strides out(new_shape.size(), 0);
  if (old_shape.empty()) {
    std::fill(out.begin(), out.end(), 1);
    return out;
  }
  if (numel_of(old_shape) == 0) {
    if (old_shape == new_shape) return old_strides;
    return detail::contiguous_strides(new_shape);
  }
  auto view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.back();
  int64_t tensor_numel = 1;
  int64_t view_numel = 1;
  for (auto tensor_d = static_cast<int64_t>(old_shape.size()) - 1; tensor_d >= 0; --tensor_d) {
    const auto td = static_cast<size_t>(tensor_d);
    tensor_numel *= old_shape[td];
    if (tensor_d == 0 ||
        (old_shape[td - 1] != 1 && old_strides[td - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 &&
             (view_numel < tensor_numel || new_shape[static_cast<size_t>(view_d)] == 1)) {
        out[static_cast<size_t>(view_d)] = view_numel * chunk_base_stride;
        view_numel *= new_shape[static_cast<size_t>(view_d)];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (tensor_d > 0) {
        chunk_base_stride = old_strides[td - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  detail::check_defined(*this, "view");
  const Shape target = infer_shape(shape, numel(), shape_, "view");
  auto strides = view_strides(shape_, strides_, target);
  D9D_CHECK(strides.has_value(), "view: shape ", shape, " is not a view of ", str(),
            " with strides ", strides_, " (use reshape, which copies)");
  Tensor out = view_base();
  out.shape_ = target;
  out.strides_ = *strides;
  return out;
}

Tensor Tensor::reshape(const Shape& shape) const {
  detail::check_defined(*this, "reshape");
  const Shape target = infer_shape(shape, numel(), shape_, "reshape");
  if (auto strides = view_strides(shape_, strides_, target)) {
    Tensor out = view_base();
    out.shape_ = target;
    out.strides_ = *strides;
    return out;
  }
  return clone().view(target);
}

Tensor Tensor::narrow(int64_t dim, int64_t start, int64_t length) const {
  detail::check_defined(*this, "narrow");
  detail::check_elements(dtype_, "narrow");
  D9D_CHECK_INDEX(this->dim() > 0, "narrow: cannot narrow a 0-dim tensor");
  const auto d = static_cast<size_t>(wrap_dim(dim, this->dim(), "narrow"));
  const int64_t size = shape_[d];
  D9D_CHECK_INDEX(start >= -size && start <= size, "narrow: start ", start,
                  " is out of range for dim ", dim, " of size ", size);
  if (start < 0) start += size;
  D9D_CHECK(length >= 0 && start + length <= size, "narrow: start ", start, " + length ", length,
            " exceeds dim ", dim, " of size ", size, " (shape ", shape_, ")");
  Tensor out = view_base();
  out.shape_[d] = length;
  if (length > 0) out.offset_ += start * strides_[d] * element_size();
  return out;
}

Tensor Tensor::select(int64_t dim, int64_t index) const {
  detail::check_defined(*this, "select");
  detail::check_elements(dtype_, "select");
  D9D_CHECK_INDEX(this->dim() > 0, "select: cannot select on a 0-dim tensor");
  const auto d = static_cast<size_t>(wrap_dim(dim, this->dim(), "select"));
  const int64_t size = shape_[d];
  D9D_CHECK_INDEX(index >= -size && index < size, "select: index ", index,
                  " is out of range for dim ", dim, " of size ", size, " (shape ", shape_, ")");
  if (index < 0) index += size;
  Tensor out = view_base();
  out.offset_ += index * strides_[d] * element_size();
  out.shape_.erase(d);
  out.strides_.erase(d);
  return out;
}

// ---- materialization ----------------------------------------------------------------------------

Tensor Tensor::contiguous() const {
  detail::check_defined(*this, "contiguous");
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::clone() const {
  detail::check_defined(*this, "clone");
  Tensor out = empty(shape_, dtype_, device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  detail::check_defined(*this, "to");
  if (dtype == dtype_) return *this;
  if (device().is_cuda()) {
    D9D_CHECK_TYPE(!is_sub_byte(dtype_) && !is_sub_byte(dtype), "to: cannot convert ", dtype_,
                   " to ", dtype, ": packed sub-byte dtypes have no element conversion");
    Tensor src = contiguous();
    // The kernel loads whole elements; a foreign (DLPack) view may start off their alignment.
    if (reinterpret_cast<uintptr_t>(src.data_ptr()) % static_cast<uintptr_t>(element_size()) != 0) {
      src = clone();
    }
    Tensor out = empty(shape_, dtype, device());
    detail::cuda_cast(static_cast<const std::byte*>(src.data_ptr()), dtype_,
                      static_cast<std::byte*>(out.mutable_data_ptr()), dtype, numel(),
                      device().index());
    return out;
  }
  const Tensor src = contiguous();
  Tensor out = empty(shape_, dtype);
  detail::cast_contiguous(static_cast<const std::byte*>(src.data_ptr()), dtype_,
                          static_cast<std::byte*>(out.mutable_data_ptr()), dtype, numel());
  return out;
}

Tensor Tensor::to(Device device) const {
  detail::check_defined(*this, "to");
  if (device == this->device()) return *this;
  Tensor out = empty(shape_, dtype_, device);
  out.copy_across_devices(*this);
  return out;
}

// Copies involving a CUDA tensor (the caller has checked shapes and the destination, and there
// is at least one element). Conversion happens on the source's device, then: host <-> device
// and device <-> device moves of packed bytes with the CUDA runtime, and strided copies on the
// device with the kernels (a strided destination on another device is filled through a packed
// temporary there).
const Tensor& Tensor::copy_across_devices(const Tensor& src) const {
  using detail::CopyDirection;
  const auto bytes = static_cast<size_t>(nbytes());
  if (src.device() == device()) {
    // Same CUDA device: one strided-copy launch (through a temporary when the views share bytes).
    const Tensor staged = detail::may_overlap(*this, src) ? src.clone() : src;
    if (is_sub_byte(dtype_) || is_sub_byte(src.dtype_)) {  // packed: always contiguous
      const Tensor typed = staged.to(dtype_);  // throws TypeError unless the dtypes agree
      detail::cuda_memcpy(mutable_data_ptr(), typed.data_ptr(), bytes,
                          CopyDirection::kDeviceToDevice, device().index());
      return *this;
    }
    const Tensor typed = staged.to(dtype_);
    const detail::CopyTask task = detail::copy_task(*this, typed);
    detail::cuda_run_copies({&task, 1}, device().index());
    return *this;
  }
  const Tensor source = src.to(dtype_).contiguous();  // converted on its own device
  if (device().is_cpu()) {  // from a CUDA device
    if (is_contiguous()) {
      detail::cuda_memcpy(mutable_data_ptr(), source.data_ptr(), bytes,
                          CopyDirection::kDeviceToHost, source.device().index());
    } else {
      copy_(source.to(Device::cpu()));
    }
    return *this;
  }
  // From the host or another CUDA device: packed bytes, then a strided copy here if needed.
  const Tensor packed = is_contiguous() ? *this : empty(shape_, dtype_, device());
  if (source.device().is_cpu()) {
    detail::cuda_memcpy(packed.mutable_data_ptr(), source.data_ptr(), bytes,
                        CopyDirection::kHostToDevice, device().index());
  } else {
    detail::cuda_memcpy_peer(packed.mutable_data_ptr(), device().index(), source.data_ptr(),
                             source.device().index(), bytes);
  }
  if (!is_contiguous()) copy_(packed);
  return *this;
}

const Tensor& Tensor::copy_(const Tensor& src) const {
  detail::check_defined(*this, "copy_");
  detail::check_defined(src, "copy_");
  D9D_CHECK(shape_ == src.shape_, "copy_: source shape ", src.shape_,
            " does not match destination shape ", shape_);
  void* dst_ptr = mutable_data_ptr();
  for (size_t i = 0; i < shape_.size(); ++i) {
    D9D_CHECK(strides_[i] != 0 || shape_[i] <= 1, "copy_: the destination ", str(),
              " has stride 0 in dim ", i, ", so several elements share one memory location");
  }
  if (numel() == 0) return *this;
  if (!device().is_cpu() || !src.device().is_cpu()) return copy_across_devices(src);
  if (src.dtype_ != dtype_) return copy_(src.to(dtype_));
  if (is_sub_byte(dtype_)) {  // packed tensors are always contiguous
    std::memmove(dst_ptr, src.data_ptr(), static_cast<size_t>(nbytes()));
    return *this;
  }
  // Copy through a temporary when the two views share bytes.
  const Tensor source = detail::may_overlap(*this, src) ? src.clone() : src;
  const detail::CopyTask task = detail::copy_task(*this, source);
  detail::run_copies({&task, 1});
  return *this;
}

}  // namespace d9d
