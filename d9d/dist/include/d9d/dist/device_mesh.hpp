// DeviceMesh: the ranks of a process group laid out in an N-D grid with named dims, as PyTorch's
// init_device_mesh / DeviceMesh.
//
//   DeviceMesh mesh(world, {4, 2}, {"pp", "dp"});   // 8 ranks: rank = pp * 2 + dp
//   DeviceMesh dp = mesh["dp"];                      // this rank's 1-D sub-mesh along "dp"
//   dp.get_group()->all_gather(t);                   // the 2 ranks that share this rank's pp
//
// Building a mesh is collective over its group: it splits one group per mesh dim (MPI_Comm_split
// or ncclCommSplit), the ranks that differ only in that dim. Sub-meshes (mesh["dp"],
// mesh[{"pp", "dp"}]) share those groups, so slicing needs no communication. A DeviceMesh is a
// cheap handle: copies share the groups.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/dist/process_group.hpp>

namespace d9d::dist {

class DeviceMesh {
 public:
  // The ranks of `group` laid out row-major in `shape` (whose product must be group->size()), with
  // one name per dim or none. Collective over `group`.
  DeviceMesh(ProcessGroupPtr group, std::vector<int64_t> shape,
             std::vector<std::string> dim_names = {});

  int64_t ndim() const;
  const std::vector<int64_t>& shape() const;
  int64_t size() const;             // ranks in the mesh
  int64_t size(int64_t dim) const;  // ranks along `dim`
  // Empty when the mesh was built without names.
  const std::vector<std::string>& mesh_dim_names() const;
  // The index of the dim named `name`; throws ValueError naming the mesh's dims otherwise.
  int64_t dim_index(std::string_view name) const;

  // This rank's 1-D sub-mesh along the named dim (torch: mesh["pp"]).
  DeviceMesh operator[](std::string_view dim_name) const;
  // This rank's sub-mesh along the named dims, which must be in the mesh's order
  // (torch: mesh["pp", "dp"]).
  DeviceMesh operator[](const std::vector<std::string>& dim_names) const;

  // This process's rank in the group the root mesh was built over (the world's rank when built
  // over the world, as torch's get_rank()).
  int get_rank() const;
  // This rank's coordinate along `dim` (torch's get_local_rank(mesh_dim)); without a dim the mesh
  // must be 1-D.
  int get_local_rank() const;
  int get_local_rank(int64_t dim) const;
  int get_local_rank(std::string_view dim_name) const;
  // This rank's coordinates, one per dim.
  std::vector<int64_t> get_coordinate() const;
  // The group of the ranks that differ from this one only along `dim`; without a dim the mesh must
  // be 1-D.
  const ProcessGroupPtr& get_group() const;
  const ProcessGroupPtr& get_group(int64_t dim) const;
  const ProcessGroupPtr& get_group(std::string_view dim_name) const;
  // The ranks of the mesh (as get_rank() counts them), row-major: torch's mesh.mesh.flatten().
  const std::vector<int>& ranks() const;

  // "DeviceMesh((pp=4, dp=2), ranks=[0, ..., 7])".
  std::string str() const;

  // Same root group, shape, names and ranks (torch compares the mesh and the names).
  friend bool operator==(const DeviceMesh& a, const DeviceMesh& b);

 private:
  struct Impl;
  explicit DeviceMesh(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

std::ostream& operator<<(std::ostream& out, const DeviceMesh& mesh);

}  // namespace d9d::dist
