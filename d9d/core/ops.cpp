// stack, cat, chunk, split, unbind, equal.
#include <cstring>
#include <vector>

#include <d9d/tensor.hpp>

#include "copy.hpp"
#include "cuda_runtime.hpp"
#include "tensor_checks.hpp"

namespace d9d {

using detail::wrap_dim;

namespace {

// Every tensor defined, on the device of the first, with addressable elements and its dtype.
void check_joinable(const std::vector<Tensor>& tensors, const char* op) {
  D9D_CHECK(!tensors.empty(), op, ": expected a non-empty list of tensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    D9D_CHECK(tensors[i].defined(), op, ": tensor ", i, " is undefined");
    D9D_CHECK_AS(DeviceError, tensors[i].device() == tensors[0].device(), op, ": tensor ", i,
                 " is on ", tensors[i].device(), " but tensor 0 is on ", tensors[0].device(),
                 " (move it with to() first)");
    detail::check_elements(tensors[i].dtype(), op);
    D9D_CHECK_TYPE(tensors[i].dtype() == tensors[0].dtype(), op, ": tensor ", i, " is ",
                   tensors[i].dtype(), " but tensor 0 is ", tensors[0].dtype(),
                   " (convert with to() first)");
  }
}

// Copies each source into the matching destination view, as one parallel job (on a CUDA
// device: one kernel launch for all of them).
void copy_all(const std::vector<Tensor>& dsts, const std::vector<Tensor>& srcs, Device device) {
  std::vector<detail::CopyTask> tasks;
  tasks.reserve(srcs.size());
  for (size_t i = 0; i < srcs.size(); ++i) {
    if (srcs[i].numel() > 0) tasks.push_back(detail::copy_task(dsts[i], srcs[i]));
  }
  if (device.is_cuda()) {
    detail::cuda_run_copies(tasks, device.index());
  } else {
    detail::run_copies(tasks);
  }
}

}  // namespace

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  check_joinable(tensors, "stack");
  const Shape& shape = tensors[0].shape();
  for (size_t i = 1; i < tensors.size(); ++i) {
    D9D_CHECK(tensors[i].shape() == shape, "stack: expected every tensor to have shape ", shape,
              " (as tensor 0), but tensor ", i, " has shape ", tensors[i].shape());
  }
  const auto d = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  Shape out_shape = shape;
  out_shape.insert(static_cast<size_t>(d), static_cast<int64_t>(tensors.size()));
  Tensor out = Tensor::empty(out_shape, tensors[0].dtype(), tensors[0].device());
  std::vector<Tensor> slots;
  slots.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) slots.push_back(out.select(d, static_cast<int64_t>(i)));
  copy_all(slots, tensors, out.device());
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  check_joinable(tensors, "cat");
  // As torch.cat, 1-D tensors of shape [0] take no part (a legacy rule kept for parity).
  std::vector<Tensor> parts;
  std::vector<size_t> positions;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    D9D_CHECK_INDEX(t.dim() > 0, "cat: tensor ", i, " is 0-dim and cannot be concatenated");
    if (t.dim() == 1 && t.size(0) == 0) continue;
    parts.push_back(t);
    positions.push_back(i);
  }
  if (parts.empty()) return Tensor::empty({0}, tensors[0].dtype(), tensors[0].device());
  const Tensor& ref = parts[0];
  const auto d = static_cast<size_t>(wrap_dim(dim, ref.dim(), "cat"));
  int64_t total = 0;
  for (size_t k = 0; k < parts.size(); ++k) {
    const Tensor& t = parts[k];
    bool same = t.dim() == ref.dim();
    for (size_t j = 0; same && j < ref.shape().size(); ++j) {
      same = j == d || t.shape()[j] == ref.shape()[j];
    }
    D9D_CHECK(same, "cat: sizes must match except in dim ", dim, ", but tensor ", positions[k],
              " has shape ", t.shape(), " and tensor ", positions[0], " has shape ", ref.shape());
    total += t.shape()[d];
  }
  Shape out_shape = ref.shape();
  out_shape[d] = total;
  Tensor out = Tensor::empty(out_shape, ref.dtype(), ref.device());
  std::vector<Tensor> slots;
  slots.reserve(parts.size());
  int64_t offset = 0;
  for (const Tensor& t : parts) {
    slots.push_back(out.narrow(static_cast<int64_t>(d), offset, t.shape()[d]));
    offset += t.shape()[d];
  }
  copy_all(slots, parts, out.device());
  return out;
}

std::vector<Tensor> split(const Tensor& tensor, const std::vector<int64_t>& sizes, int64_t dim) {
  detail::check_defined(tensor, "split");
  D9D_CHECK_INDEX(tensor.dim() > 0, "split: cannot split a 0-dim tensor");
  const int64_t d = wrap_dim(dim, tensor.dim(), "split");
  int64_t sum = 0;
  for (int64_t s : sizes) {
    D9D_CHECK(s >= 0, "split: negative size ", s, " in ", Dims(sizes));
    sum += s;
  }
  D9D_CHECK(sum == tensor.size(d), "split: sizes ", Dims(sizes), " add up to ", sum,
            " but dim ", dim, " of shape ", tensor.shape(), " has size ", tensor.size(d));
  std::vector<Tensor> out;
  out.reserve(sizes.size());
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(tensor.narrow(d, start, s));
    start += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& tensor, int64_t chunks, int64_t dim) {
  detail::check_defined(tensor, "chunk");
  D9D_CHECK(chunks > 0, "chunk: the number of chunks must be positive, got ", chunks);
  D9D_CHECK_INDEX(tensor.dim() > 0, "chunk: cannot chunk a 0-dim tensor");
  const int64_t size = tensor.size(dim);
  if (size == 0) return split(tensor, std::vector<int64_t>(static_cast<size_t>(chunks), 0), dim);
  const int64_t step = (size + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < size; start += step) sizes.push_back(std::min(step, size - start));
  return split(tensor, sizes, dim);
}

std::vector<Tensor> unbind(const Tensor& tensor, int64_t dim) {
  detail::check_defined(tensor, "unbind");
  D9D_CHECK_INDEX(tensor.dim() > 0, "unbind: cannot unbind a 0-dim tensor");
  const int64_t d = wrap_dim(dim, tensor.dim(), "unbind");
  std::vector<Tensor> out;
  out.reserve(static_cast<size_t>(tensor.size(d)));
  for (int64_t i = 0; i < tensor.size(d); ++i) out.push_back(tensor.select(d, i));
  return out;
}

bool equal(const Tensor& a, const Tensor& b) {
  detail::check_defined(a, "equal");
  detail::check_defined(b, "equal");
  D9D_CHECK_AS(DeviceError, a.device() == b.device(), "equal: ", a.str(), " and ", b.str(),
               " are on different devices");
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  // On a CUDA device: packed there by the copy kernel, compared here.
  const Tensor pa = a.contiguous().to(Device::cpu());
  const Tensor pb = b.contiguous().to(Device::cpu());
  const auto n = static_cast<size_t>(pa.nbytes());
  return n == 0 || std::memcmp(pa.data_ptr(), pb.data_ptr(), n) == 0;
}

}  // namespace d9d
