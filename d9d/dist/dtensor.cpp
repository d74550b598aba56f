#include <d9d/dist/dtensor.hpp>

#include <sstream>

namespace d9d::dist {

using d9d::detail::str_cat;

namespace {

// torch.chunk's piece `index` of a dim of `size` over `n` ranks: (start, length); ranks past the
// last piece get an empty one at the end (Note [uneven shards]).
std::pair<int64_t, int64_t> chunk_piece(int64_t size, int64_t n, int64_t index) {
  const int64_t piece = (size + n - 1) / n;
  const int64_t start = std::min(index * piece, size);
  return {start, std::min(piece, size - start)};
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

}  // namespace

std::vector<Placement> normalize_placements(const DeviceMesh& mesh,
                                            const std::vector<Placement>& placements,
                                            int64_t ndim) {
  D9D_CHECK(static_cast<int64_t>(placements.size()) <= mesh.ndim(),
            "distribute_tensor: ", placements.size(), " placements ", to_string(placements),
            " for the ", mesh.ndim(), "-D mesh ", mesh.str());
  std::vector<Placement> out;
  out.reserve(static_cast<size_t>(mesh.ndim()));
  for (const Placement& p : placements) {
    if (p.is_replicate()) {
      out.emplace_back(Replicate{});
      continue;
    }
    int64_t d = p.dim();
    D9D_CHECK_INDEX(d >= -ndim && d < ndim, "distribute_tensor: ", p.str(),
                    " is out of range for a tensor of ", ndim, " dim", ndim == 1 ? "" : "s");
    if (d < 0) d += ndim;
    out.emplace_back(Shard{d});
  }
  while (static_cast<int64_t>(out.size()) < mesh.ndim()) out.emplace_back(Replicate{});
  return out;
}

LocalSlice compute_local_shape_and_global_offset(const Shape& shape, const DeviceMesh& mesh,
                                                 const std::vector<Placement>& placements) {
  const std::vector<Placement> normal =
      normalize_placements(mesh, placements, static_cast<int64_t>(shape.size()));
  LocalSlice slice{shape, Shape(shape.size(), 0)};
  for (size_t i = 0; i < normal.size(); ++i) {
    if (!normal[i].is_shard()) continue;
    const auto d = static_cast<size_t>(normal[i].dim());
    const auto [start, length] = chunk_piece(slice.shape[d], mesh.size(static_cast<int64_t>(i)),
                                             mesh.get_local_rank(static_cast<int64_t>(i)));
    slice.offset[d] += start;
    slice.shape[d] = length;
  }
  return slice;
}

DTensor DTensor::from_local(Tensor local, DeviceMesh mesh, std::vector<Placement> placements,
                            Shape shape) {
  D9D_CHECK(local.defined(), "DTensor::from_local: the local tensor is undefined");
  D9D_CHECK(!local.attachment(), "DTensor::from_local: the local tensor ", local.str(),
            " already is a DTensor");
  placements = normalize_placements(mesh, placements, static_cast<int64_t>(shape.size()));
  const LocalSlice slice = compute_local_shape_and_global_offset(shape, mesh, placements);
  D9D_CHECK(local.shape() == slice.shape, "DTensor::from_local: rank ", mesh.get_rank(),
            "'s piece of a ", shape_str(shape), " tensor laid out ", to_string(placements),
            " over ", mesh.str(), " has shape ", shape_str(slice.shape), ", not ",
            shape_str(local.shape()));
  auto spec =
      std::make_shared<const DTensorSpec>(std::move(mesh), std::move(placements), std::move(shape));
  return DTensor(std::move(local), std::move(spec));
}

Tensor DTensor::full_tensor() const {
  const DeviceMesh& mesh = spec_->mesh;
  const std::vector<Placement>& placements = spec_->placements;
  const size_t ndim = placements.size();
  // before[i]: the shape after the splits of mesh dims 0..i-1 (this rank's coordinates).
  std::vector<Shape> before{spec_->shape};
  for (size_t i = 0; i < ndim; ++i) {
    Shape next = before.back();
    if (placements[i].is_shard()) {
      const auto d = static_cast<size_t>(placements[i].dim());
      next[d] = chunk_piece(next[d], mesh.size(static_cast<int64_t>(i)),
                            mesh.get_local_rank(static_cast<int64_t>(i)))
                    .second;
    }
    before.push_back(std::move(next));
  }
  const Device device = mesh.get_group(0)->device();
  Tensor current = local_.device() == device ? local_ : local_.to(device);
  // Undo the splits last to first: along mesh dim i, the ranks of its group share every other
  // coordinate, so their pieces are the chunks of one tensor of shape before[i].
  for (size_t i = ndim; i-- > 0;) {
    if (!placements[i].is_shard()) continue;
    const int64_t d = placements[i].dim();
    ProcessGroup& group = *mesh.get_group(static_cast<int64_t>(i));
    const int64_t full = before[i][static_cast<size_t>(d)];
    std::vector<int64_t> sizes;
    for (int r = 0; r < group.size(); ++r)
      sizes.push_back(chunk_piece(full, group.size(), r).second);
    if (d == 0) {  // the pieces are the rows of the result, back to back
      const Tensor out = Tensor::empty(before[i], current.dtype(), device);
      group.all_gather_into_tensor(out, current, sizes);
      current = out;
      continue;
    }
    int64_t total = 0;
    std::vector<Shape> shapes;
    for (const int64_t s : sizes) {
      Shape shape = before[i + 1];
      shape[static_cast<size_t>(d)] = s;
      total += numel_of(shape) * dtype_bits(current.dtype()) / 8;
      shapes.push_back(std::move(shape));
    }
    const Storage staging = Storage::allocate(static_cast<size_t>(total), device);
    std::vector<Tensor> pieces;
    int64_t offset = 0;
    for (const Shape& shape : shapes) {
      pieces.push_back(Tensor::from_storage(staging, current.dtype(), shape, offset));
      offset += pieces.back().nbytes();
    }
    group.all_gather(pieces, current);
    current = cat(pieces, d);
  }
  return current.contiguous();
}

std::string DTensor::str() const {
  return str_cat("DTensor(", dtype_name(local_.dtype()), ", ", shape_str(spec_->shape), ", local ",
                 shape_str(local_.shape()), ", ", to_string(spec_->placements), ", ",
                 spec_->mesh.str(), ")");
}

std::optional<DTensor> as_dtensor(const Tensor& tensor) {
  auto spec = std::dynamic_pointer_cast<const DTensorSpec>(tensor.attachment());
  if (!spec) return std::nullopt;
  return DTensor(tensor.with_attachment(nullptr), std::move(spec));
}

bool is_dtensor(const Tensor& tensor) {
  return dynamic_cast<const DTensorSpec*>(tensor.attachment().get()) != nullptr;
}

const Shape& global_shape(const Tensor& tensor) {
  if (const auto* spec = dynamic_cast<const DTensorSpec*>(tensor.attachment().get())) {
    return spec->shape;
  }
  return tensor.shape();
}

DTensor distribute_tensor(const Tensor& tensor, const DeviceMesh& mesh,
                          std::vector<Placement> placements) {
  D9D_CHECK(tensor.defined(), "distribute_tensor: the tensor is undefined");
  if (std::optional<DTensor> already = as_dtensor(tensor)) {
    placements =
        normalize_placements(mesh, placements, static_cast<int64_t>(already->shape().size()));
    D9D_CHECK(already->device_mesh() == mesh, "distribute_tensor: ", already->str(),
              " is distributed over another mesh than ", mesh.str());
    D9D_CHECK(already->placements() == placements, "distribute_tensor: ", already->str(),
              " is laid out as ", to_string(already->placements()), ", not as ",
              to_string(placements), " (redistributing is not supported)");
    return *already;
  }
  placements = normalize_placements(mesh, placements, tensor.dim());
  const LocalSlice slice = compute_local_shape_and_global_offset(tensor.shape(), mesh, placements);
  Tensor local = tensor;
  for (size_t d = 0; d < slice.shape.size(); ++d) {
    if (slice.shape[d] != tensor.shape()[d]) {
      local = local.narrow(static_cast<int64_t>(d), slice.offset[d], slice.shape[d]);
    }
  }
  auto spec = std::make_shared<const DTensorSpec>(mesh, std::move(placements), tensor.shape());
  return DTensor(std::move(local), std::move(spec));
}

namespace {

// A new DTensor whose local tensor `make` allocates from its shape.
template <class Make>
DTensor new_dtensor(const Shape& shape, const DeviceMesh& mesh, std::vector<Placement> placements,
                    Make make) {
  placements = normalize_placements(mesh, placements, static_cast<int64_t>(shape.size()));
  const LocalSlice slice = compute_local_shape_and_global_offset(shape, mesh, placements);
  return DTensor::from_local(make(slice.shape), mesh, std::move(placements), shape);
}

}  // namespace

DTensor empty(const Shape& shape, DType dtype, const DeviceMesh& mesh,
              std::vector<Placement> placements, Device device) {
  return new_dtensor(shape, mesh, std::move(placements),
                     [&](const Shape& local) { return Tensor::empty(local, dtype, device); });
}

DTensor zeros(const Shape& shape, DType dtype, const DeviceMesh& mesh,
              std::vector<Placement> placements, Device device) {
  return new_dtensor(shape, mesh, std::move(placements),
                     [&](const Shape& local) { return Tensor::zeros(local, dtype, device); });
}

}  // namespace d9d::dist
