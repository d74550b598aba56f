// DTensor: a tensor laid out over a device mesh, as PyTorch's torch.distributed.tensor.DTensor.
//
//   DTensor w = distribute_tensor(full, mesh, {Shard{0}});   // this rank's slice, no communication
//   w.local(); w.shape(); w.placements(); Tensor back = w.full_tensor();   // all-gather
//   state["w"] = w.as_tensor();   // a StateDict value that is a distributed tensor
//
// Note [DTensor in a StateDict]: mappers and the streamed engine pass Tensors (a StateDict is
// name -> Tensor), and core knows nothing of ranks. So a DTensor travels as its local tensor
// carrying the DTensor's spec (global shape, mesh, placements) as a tensor attachment (Note
// [tensor attachment] in <d9d/tensor.hpp>): as_tensor() makes that Tensor, as_dtensor() reads it
// back. Copies of the Tensor keep the spec; any view or op on it gives a plain tensor again, so a
// spec can never describe bytes it does not match. Mappers see the global spec (TensorSpec::of
// of such a Tensor is its global dtype and shape); identity, rename_tensor, distribute and
// gather_full_tensor pass or produce DTensors, the data-moving mappers refuse them; the writers
// refuse them too (gather_full_tensor first, as save_model_state_pipeline_parallel does), and
// load_model_state fills DTensor targets with this rank's slice only.
//
// Note [uneven shards]: Shard{d} over a mesh dim of n ranks splits dim d as torch.chunk(n) does:
// pieces of ceil(size / n), the last smaller and the last ranks empty (PyTorch pads them with
// empty tensors), applied mesh dim by mesh dim, so Shard{0} twice splits rank pieces again.
// Local tensors are views of the full tensor (no copy; PyTorch makes them contiguous), so a slice
// of a memory-mapped tensor touches no byte until it is read.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <d9d/dist/device_mesh.hpp>
#include <d9d/dist/placement.hpp>
#include <d9d/tensor.hpp>

namespace d9d::dist {

// What a Tensor carries to be a DTensor (Note [DTensor in a StateDict]).
struct DTensorSpec final : TensorAttachment {
  DTensorSpec(DeviceMesh mesh, std::vector<Placement> placements, Shape shape)
      : mesh(std::move(mesh)), placements(std::move(placements)), shape(std::move(shape)) {}
  DeviceMesh mesh;
  std::vector<Placement> placements;  // one per mesh dim; Shard dims non-negative
  Shape shape;                        // global
};

// The part of a global tensor one rank holds: the shape of its slice and where the slice starts
// (torch's compute_local_shape_and_global_offset).
struct LocalSlice {
  Shape shape;
  Shape offset;
};

// Placements checked against `mesh` and a tensor of `ndim` dims, Shard dims made non-negative,
// padded with Replicate to one per mesh dim (as distribute_tensor does). Throws ValueError for
// more placements than mesh dims or a Shard dim out of range.
std::vector<Placement> normalize_placements(const DeviceMesh& mesh,
                                            const std::vector<Placement>& placements, int64_t ndim);

// This rank's slice of a tensor of `shape` laid out by (normalized) `placements` over `mesh`.
LocalSlice compute_local_shape_and_global_offset(const Shape& shape, const DeviceMesh& mesh,
                                                 const std::vector<Placement>& placements);

class DTensor {
 public:
  // torch's DTensor.from_local: `local` is this rank's piece of a tensor of global `shape` laid out
  // by `placements` over `mesh`. Its shape must be the one that layout gives this rank, and its
  // dtype is the DTensor's. Throws ValueError otherwise.
  static DTensor from_local(Tensor local, DeviceMesh mesh, std::vector<Placement> placements,
                            Shape shape);

  // This rank's piece (a plain tensor).
  const Tensor& local() const { return local_; }
  const Shape& shape() const { return spec_->shape; }  // global
  DType dtype() const { return local_.dtype(); }
  int64_t numel() const { return numel_of(spec_->shape); }
  const DeviceMesh& device_mesh() const { return spec_->mesh; }
  const std::vector<Placement>& placements() const { return spec_->placements; }
  const std::shared_ptr<const DTensorSpec>& spec() const { return spec_; }

  // The whole tensor on every rank: all-gathers along every Shard mesh dim, last to first
  // (collective over those dims' groups). On the mesh's device (the local tensor is moved there
  // first when it is elsewhere); packed.
  Tensor full_tensor() const;

  // The local tensor carrying this DTensor's spec: what a StateDict holds (Note [DTensor in a
  // StateDict]).
  Tensor as_tensor() const { return local_.with_attachment(spec_); }

  // "DTensor(F32, [4, 2], local [2, 2], (Shard(dim=0),), DeviceMesh(...))".
  std::string str() const;

 private:
  DTensor(Tensor local, std::shared_ptr<const DTensorSpec> spec)
      : local_(std::move(local)), spec_(std::move(spec)) {}
  friend std::optional<DTensor> as_dtensor(const Tensor& tensor);
  friend DTensor distribute_tensor(const Tensor& tensor, const DeviceMesh& mesh,
                                   std::vector<Placement> placements);
  Tensor local_;
  std::shared_ptr<const DTensorSpec> spec_;
};

// The DTensor a Tensor carries (Note [DTensor in a StateDict]), or nullopt for a plain tensor.
std::optional<DTensor> as_dtensor(const Tensor& tensor);
bool is_dtensor(const Tensor& tensor);
// The shape of the tensor a Tensor stands for: the global shape of a DTensor, else its own.
const Shape& global_shape(const Tensor& tensor);

// torch's distribute_tensor(tensor, device_mesh, placements, src_data_rank=None): this rank's
// slice of `tensor` as a view, with no communication (every rank passes the same full tensor).
// Placements are normalized (normalize_placements). A Tensor that already is a DTensor comes back
// as it is when its mesh and placements are these, and is an error otherwise (PyTorch's rule;
// redistributing is not supported).
DTensor distribute_tensor(const Tensor& tensor, const DeviceMesh& mesh,
                          std::vector<Placement> placements);

// A new DTensor of global `shape` whose local tensor is uninitialized / zero, on `device`
// (torch.distributed.tensor.empty / zeros): a preallocated target for load_model_state.
DTensor empty(const Shape& shape, DType dtype, const DeviceMesh& mesh,
              std::vector<Placement> placements, Device device = Device::cpu());
DTensor zeros(const Shape& shape, DType dtype, const DeviceMesh& mesh,
              std::vector<Placement> placements, Device device = Device::cpu());

}  // namespace d9d::dist
