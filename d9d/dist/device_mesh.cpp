#include <d9d/dist/device_mesh.hpp>

#include <algorithm>
#include <ostream>
#include <sstream>

namespace d9d::dist {

using d9d::detail::str_cat;

struct DeviceMesh::Impl {
  ProcessGroupPtr root;  // the group the root mesh was built over
  std::vector<int64_t> shape;
  std::vector<std::string> names;
  std::vector<int> ranks;               // of root, row-major
  std::vector<int64_t> coordinate;      // this rank's
  std::vector<ProcessGroupPtr> groups;  // one per dim
};

namespace {

std::string shape_str(const std::vector<int64_t>& shape, const std::vector<std::string>& names) {
  std::ostringstream out;
  out << '(';
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out << ", ";
    if (!names.empty()) out << names[i] << '=';
    out << shape[i];
  }
  out << ')';
  return out.str();
}

}  // namespace

DeviceMesh::DeviceMesh(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

DeviceMesh::DeviceMesh(ProcessGroupPtr group, std::vector<int64_t> shape,
                       std::vector<std::string> dim_names) {
  D9D_CHECK(group != nullptr, "DeviceMesh: the process group is null");
  D9D_CHECK(!shape.empty(), "DeviceMesh: the mesh needs at least one dim");
  int64_t count = 1;
  for (const int64_t s : shape) {
    D9D_CHECK(s > 0, "DeviceMesh: every dim needs at least one rank, got shape ",
              shape_str(shape, {}));
    count *= s;
  }
  D9D_CHECK(count == group->size(), "DeviceMesh: a mesh of shape ", shape_str(shape, {}), " holds ",
            count, " ranks but the ", backend_name(group->backend()), " group has ", group->size());
  if (!dim_names.empty()) {
    D9D_CHECK(dim_names.size() == shape.size(), "DeviceMesh: ", dim_names.size(),
              " names for a mesh of ", shape.size(), " dims");
    for (size_t i = 0; i < dim_names.size(); ++i) {
      D9D_CHECK(!dim_names[i].empty(), "DeviceMesh: dim ", i, " has an empty name");
      for (size_t j = 0; j < i; ++j) {
        D9D_CHECK(dim_names[i] != dim_names[j], "DeviceMesh: the dim name '", dim_names[i],
                  "' is given twice");
      }
    }
  }
  auto impl = std::make_shared<Impl>();
  impl->root = group;
  impl->shape = std::move(shape);
  impl->names = std::move(dim_names);
  impl->ranks.resize(static_cast<size_t>(count));
  for (int r = 0; r < count; ++r) impl->ranks[static_cast<size_t>(r)] = r;
  const size_t ndim = impl->shape.size();
  impl->coordinate.resize(ndim);
  int64_t rest = group->rank();
  for (size_t d = ndim; d-- > 0;) {
    impl->coordinate[d] = rest % impl->shape[d];
    rest /= impl->shape[d];
  }
  // One group per dim: the ranks with this rank's coordinates on every other dim. Its color is
  // the row-major index of those other coordinates, its key the coordinate along the dim.
  for (size_t d = 0; d < ndim; ++d) {
    if (ndim == 1) {
      impl->groups.push_back(group);
      break;
    }
    int64_t color = 0;
    for (size_t e = 0; e < ndim; ++e) {
      if (e != d) color = color * impl->shape[e] + impl->coordinate[e];
    }
    ProcessGroupPtr sub =
        group->split(static_cast<int>(color), static_cast<int>(impl->coordinate[d]));
    D9D_ASSERT(sub != nullptr && sub->size() == impl->shape[d] &&
               sub->rank() == impl->coordinate[d]);
    impl->groups.push_back(std::move(sub));
  }
  impl_ = std::move(impl);
}

int64_t DeviceMesh::ndim() const {
  return static_cast<int64_t>(impl_->shape.size());
}
const std::vector<int64_t>& DeviceMesh::shape() const {
  return impl_->shape;
}
int64_t DeviceMesh::size() const {
  return static_cast<int64_t>(impl_->ranks.size());
}
const std::vector<std::string>& DeviceMesh::mesh_dim_names() const {
  return impl_->names;
}
const std::vector<int>& DeviceMesh::ranks() const {
  return impl_->ranks;
}

int64_t DeviceMesh::size(int64_t dim) const {
  D9D_CHECK_INDEX(dim >= 0 && dim < ndim(), "DeviceMesh: dim ", dim, " is out of range for ",
                  str());
  return impl_->shape[static_cast<size_t>(dim)];
}

int64_t DeviceMesh::dim_index(std::string_view name) const {
  for (size_t i = 0; i < impl_->names.size(); ++i) {
    if (impl_->names[i] == name) return static_cast<int64_t>(i);
  }
  d9d::detail::throw_error<ValueError>("DeviceMesh: no dim is named '", name, "' in ", str());
}

DeviceMesh DeviceMesh::operator[](std::string_view dim_name) const {
  return (*this)[std::vector<std::string>{std::string(dim_name)}];
}

DeviceMesh DeviceMesh::operator[](const std::vector<std::string>& dim_names) const {
  D9D_CHECK(!dim_names.empty(), "DeviceMesh: slicing needs at least one dim name");
  std::vector<size_t> dims;
  for (const std::string& name : dim_names) {
    const auto d = static_cast<size_t>(dim_index(name));
    D9D_CHECK(dims.empty() || d > dims.back(), "DeviceMesh: the dims to slice, ",
              shape_str({}, dim_names), ", must be distinct and in the mesh's order ", str());
    dims.push_back(d);
  }
  auto impl = std::make_shared<Impl>();
  impl->root = impl_->root;
  for (const size_t d : dims) {
    impl->shape.push_back(impl_->shape[d]);
    impl->names.push_back(impl_->names[d]);
    impl->coordinate.push_back(impl_->coordinate[d]);
    impl->groups.push_back(impl_->groups[d]);
  }
  // The ranks of the sub-grid: this rank's coordinates on the other dims, every value on these.
  const size_t ndim = impl_->shape.size();
  std::vector<int64_t> strides(ndim, 1);
  for (size_t d = ndim - 1; d-- > 0;) strides[d] = strides[d + 1] * impl_->shape[d + 1];
  int64_t base = 0;
  for (size_t d = 0; d < ndim; ++d) {
    if (std::find(dims.begin(), dims.end(), d) == dims.end()) {
      base += impl_->coordinate[d] * strides[d];
    }
  }
  std::vector<int64_t> index(dims.size(), 0);
  for (;;) {
    int64_t flat = base;
    for (size_t k = 0; k < dims.size(); ++k) flat += index[k] * strides[dims[k]];
    impl->ranks.push_back(impl_->ranks[static_cast<size_t>(flat)]);
    size_t k = dims.size();
    while (k > 0 && ++index[k - 1] == impl->shape[k - 1]) index[--k] = 0;
    if (k == 0) break;
  }
  return DeviceMesh(std::move(impl));
}

int DeviceMesh::get_rank() const {
  return impl_->root->rank();
}

int DeviceMesh::get_local_rank() const {
  D9D_CHECK(ndim() == 1, "DeviceMesh::get_local_rank: name a dim of the ", ndim(), "-D mesh ",
            str());
  return get_local_rank(0);
}
int DeviceMesh::get_local_rank(int64_t dim) const {
  size(dim);  // checks the range
  return static_cast<int>(impl_->coordinate[static_cast<size_t>(dim)]);
}
int DeviceMesh::get_local_rank(std::string_view dim_name) const {
  return get_local_rank(dim_index(dim_name));
}

std::vector<int64_t> DeviceMesh::get_coordinate() const {
  return impl_->coordinate;
}

const ProcessGroupPtr& DeviceMesh::get_group() const {
  D9D_CHECK(ndim() == 1, "DeviceMesh::get_group: name a dim of the ", ndim(), "-D mesh ", str());
  return impl_->groups[0];
}
const ProcessGroupPtr& DeviceMesh::get_group(int64_t dim) const {
  size(dim);  // checks the range
  return impl_->groups[static_cast<size_t>(dim)];
}
const ProcessGroupPtr& DeviceMesh::get_group(std::string_view dim_name) const {
  return get_group(dim_index(dim_name));
}

std::string DeviceMesh::str() const {
  std::ostringstream out;
  out << "DeviceMesh(" << shape_str(impl_->shape, impl_->names) << ", ranks=[";
  const auto& ranks = impl_->ranks;
  const bool elide = ranks.size() > 8;  // "0, 1, 2, ..., 15"
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (elide && i == 3) {
      out << ", ...";
      i = ranks.size() - 1;
    }
    out << (i > 0 ? ", " : "") << ranks[i];
  }
  out << "])";
  return out.str();
}

bool operator==(const DeviceMesh& a, const DeviceMesh& b) {
  if (a.impl_ == b.impl_) return true;
  return a.impl_->root == b.impl_->root && a.impl_->shape == b.impl_->shape &&
         a.impl_->names == b.impl_->names && a.impl_->ranks == b.impl_->ranks;
}

std::ostream& operator<<(std::ostream& out, const DeviceMesh& mesh) {
  return out << mesh.str();
}

}  // namespace d9d::dist
