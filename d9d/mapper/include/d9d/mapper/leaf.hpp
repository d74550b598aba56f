// Leaf mappers: each transforms one tensor or one fixed set of tensors.
//
// The factories are the API (they return MapperPtr); the classes are public so that code can
// build them with explicit source and target names and extend them. Ops follow PyTorch's
// semantics (dims may be negative; torch.chunk may give fewer pieces, which is an error here).
// Data-moving ops (transpose, permute, stack, unstack, chunk, split, concatenate) return
// contiguous tensors, as the reference does; view ops (squeeze, unsqueeze, reshape) do not copy.
//
// Inverses: identity <-> identity, rename_tensor(a, b) <-> rename_tensor(b, a),
// transpose <-> the same transpose, permute <-> the inverse permutation, unsqueeze <-> squeeze,
// stack <-> unstack, chunk <-> concatenate, split <-> concatenate with the split's sizes,
// distribute <-> gather_full_tensor. With the input specs also: concatenate -> split with the
// recorded sizes, reshape -> reshape back to the input shape, squeeze(dim) -> unsqueeze (or
// identity when that dim was not 1), cast -> cast back when the cast widens losslessly (or, with
// CastSelection::inverse_even_if_lossy, always). Not invertible: select_child_modules, squeeze()
// of every size-1 dim without specs, a lossy cast.
// The model-layout ops (permute_for_rope, ..., at the end) invert without specs.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <d9d/dims.hpp>
#include <d9d/dist/device_mesh.hpp>
#include <d9d/dist/placement.hpp>
#include <d9d/dtype.hpp>
#include <d9d/mapper/mapper.hpp>

namespace d9d::mapper {

// ---- factories ----------------------------------------------------------------------------------

// Passes `name` through unchanged (the very same tensor).
MapperPtr identity(std::string name);
// `from` becomes `to`. (Not `rename`: an unqualified rename("a", "b") would call C's ::rename.)
MapperPtr rename_tensor(std::string from, std::string to);
// "{parent}.{base}" becomes "{base}" for every base name: one group per name.
MapperPtr select_child_modules(std::vector<std::string> base_names, const std::string& parent);
// Swaps two dims; contiguous result.
MapperPtr transpose(std::string name, int64_t dim0, int64_t dim1);
// Drops every dim of size 1 / drops `dim` if it has size 1 (else leaves the tensor as it is).
MapperPtr squeeze(std::string name);
MapperPtr squeeze(std::string name, int64_t dim);
// Inserts a dim of size 1 at `dim` (in [-(n+1), n]).
MapperPtr unsqueeze(std::string name, int64_t dim);
// torch.stack of `sources`, in order, into `target` along the new dim `dim`; contiguous.
MapperPtr stack_tensors(std::vector<std::string> sources, std::string target, int64_t dim);
// torch.unbind of `source` along `dim`; the size of `dim` must equal the number of targets.
MapperPtr unstack_tensors(std::string source, std::vector<std::string> targets, int64_t dim);
// torch.chunk of `source` into one piece per target (an error where torch.chunk would give fewer
// pieces); contiguous pieces.
MapperPtr chunk_tensors(std::string source, std::vector<std::string> targets, int64_t dim);
// torch.cat of `sources`, in order, into `target` along `dim`; contiguous.
MapperPtr concatenate_tensors(std::vector<std::string> sources, std::string target, int64_t dim);
// Element conversion to `dtype` (round-to-nearest-even, as Tensor::to).
MapperPtr cast(std::string name, DType dtype);
// A view of `name` with `shape` (one entry may be -1); copies only when no view is possible.
MapperPtr reshape(std::string name, Shape shape);
// Reorders the dims (a permutation of 0..n-1, entries may be negative); contiguous.
MapperPtr permute(std::string name, Dims dims);
// Splits `source` along `dim` into pieces of `sizes` (which add up to the dim's size), one per
// target: uneven splits such as a GQA-fused QKV. Contiguous pieces.
MapperPtr split_tensors(std::string source, std::vector<std::string> targets,
                        std::vector<int64_t> sizes, int64_t dim);
// Distributed tensors (Note [DTensor in a StateDict] in <d9d/dist/dtensor.hpp>). distribute makes
// `name` this rank's slice as a DTensor (dist::distribute_tensor: a view, no communication; the
// spec stays the global one); gather_full_tensor all-gathers a DTensor into the whole tensor
// (collective over the mesh; anything but a DTensor is a ValueError, as in the reference).
MapperPtr distribute(std::string name, const dist::DeviceMesh& mesh,
                     const std::vector<dist::Placement>& placements);
MapperPtr gather_full_tensor(std::string name);

// ---- classes ------------------------------------------------------------------------------------

// One input tensor to one output tensor (source and target may differ, so a spec rule can
// rename and transform in one step). Subclasses say what happens to the spec and to the data;
// this class checks the group, validates through infer_one() before touching data, and names
// the tensor in every error.
class SingleTensorMapper : public ModelStateMapper {
 public:
  StateDict apply(StateDict group) const final;
  SpecDict infer(const SpecDict& group) const final;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const final;
  const std::string& source() const { return source_; }
  const std::string& target() const { return target_; }

 protected:
  SingleTensorMapper(std::string source, std::string target);
  // The box of the input apply_one() reads to make `wanted` of its output (Note [slice pushdown]
  // in region.cpp); nullopt (the default): the whole input, named in the plan.
  virtual std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const;
  // Whether apply_one() takes a DTensor (Note [DTensor in a StateDict]); the ops that move data
  // do not (an error naming the tensor says to gather it first).
  virtual bool accepts_dtensor() const { return false; }
  // The output spec for an input spec; throws the errors apply_one() would.
  virtual TensorSpec infer_one(const TensorSpec& input) const = 0;
  // The output tensor; called only after infer_one() accepted the input's spec.
  virtual Tensor apply_one(Tensor input) const = 0;
  // "op(source -> target, args)" or "op(name, args)".
  std::string describe_op(const std::string& op, const std::string& args) const;
  const TensorSpec& input_spec(const SpecDict& specs) const;  // throws NotInvertibleError

 private:
  std::string source_;
  std::string target_;
};

class IdentityMapper final : public SingleTensorMapper {
 public:
  explicit IdentityMapper(std::string name);
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  bool accepts_dtensor() const override { return true; }
  TensorSpec infer_one(const TensorSpec& input) const override { return input; }
  Tensor apply_one(Tensor input) const override { return input; }
};

class RenameTensorMapper final : public SingleTensorMapper {
 public:
  RenameTensorMapper(std::string from, std::string to);
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  bool accepts_dtensor() const override { return true; }
  TensorSpec infer_one(const TensorSpec& input) const override { return input; }
  Tensor apply_one(Tensor input) const override { return input; }
};

class TransposeMapper final : public SingleTensorMapper {
 public:
  TransposeMapper(std::string source, std::string target, int64_t dim0, int64_t dim1);
  std::string describe() const override;
  int64_t dim0() const { return dim0_; }
  int64_t dim1() const { return dim1_; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  int64_t dim0_, dim1_;
};

class PermuteMapper final : public SingleTensorMapper {
 public:
  // Throws ValueError unless `dims` is a permutation of 0..n-1 (entries may be negative).
  PermuteMapper(std::string source, std::string target, Dims dims);
  std::string describe() const override;

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  Dims dims_;
};

class SqueezeMapper final : public SingleTensorMapper {
 public:
  // dim empty: every size-1 dim. require_size_one: `dim` must have size 1 (an error otherwise,
  // where torch.squeeze would leave the tensor as it is); inverse() of unsqueeze builds such a
  // squeeze, whose own inverse is then known without specs.
  SqueezeMapper(std::string source, std::string target, std::optional<int64_t> dim,
                bool require_size_one = false);
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  std::optional<int64_t> dim_;
  bool require_size_one_;
};

class UnsqueezeMapper final : public SingleTensorMapper {
 public:
  UnsqueezeMapper(std::string source, std::string target, int64_t dim);
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  int64_t dim_;
};

class ReshapeMapper final : public SingleTensorMapper {
 public:
  // input_shape: when given, the input must have exactly that shape (inverse() records the
  // forward output shape there, so the inverse of an inverse needs no specs).
  ReshapeMapper(std::string source, std::string target, Shape shape,
                std::optional<Shape> input_shape = std::nullopt);
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  Shape shape_;
  std::optional<Shape> input_shape_;
};

// What a spec's cast rule may add (Note [casts a rule did not ask for] in spec_ops.cpp).
struct CastSelection {
  // Only inputs of these dtypes are cast; any other passes through as it is (an identity).
  std::optional<std::set<DType>> from;
  // A TypeError for an integer input cast to a floating-point dtype (unless `from` names it).
  bool refuse_integers_to_floats = false;
  // inverse() casts back to the input dtype even when this cast loses values: the inverse gives
  // the original dtype, not the original values (d9d convert --reverse --allow-lossy).
  bool inverse_even_if_lossy = false;
};

class CastMapper final : public SingleTensorMapper {
 public:
  // input_dtype: when given, the input must have that dtype, and inverse() needs no specs.
  CastMapper(std::string source, std::string target, DType dtype,
             std::optional<DType> input_dtype = std::nullopt, CastSelection selection = {});
  std::string describe() const override;
  // To its own dtype, to() returns the tensor itself.
  bool moves_data(const StateGroup&) const override { return input_dtype_ != dtype_; }

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  // The dtype an input of `dtype` becomes (itself when the selection passes it through).
  DType output_dtype(DType dtype) const;

  DType dtype_;
  std::optional<DType> input_dtype_;
  CastSelection selection_;
};

// Whether every value of `from` converts to `to` and back to the same bits (NaN payloads aside):
// BF16 -> F32 does, F32 -> BF16 does not.
bool is_lossless_cast(DType from, DType to);

class DistributeMapper final : public SingleTensorMapper {
 public:
  DistributeMapper(std::string name, dist::DeviceMesh mesh,
                   std::vector<dist::Placement> placements);
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }
  const dist::DeviceMesh& device_mesh() const { return mesh_; }
  const std::vector<dist::Placement>& placements() const { return placements_; }

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  bool accepts_dtensor() const override { return true; }
  // The spec stays the global one; a Shard dim out of range is an error here already.
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  dist::DeviceMesh mesh_;
  std::vector<dist::Placement> placements_;
};

class GatherFullTensorMapper final : public SingleTensorMapper {
 public:
  explicit GatherFullTensorMapper(std::string name);
  std::string describe() const override;

 protected:
  bool accepts_dtensor() const override { return true; }
  TensorSpec infer_one(const TensorSpec& input) const override { return input; }
  Tensor apply_one(Tensor input) const override;
};

class SelectChildModulesMapper final : public ModelStateMapper {
 public:
  SelectChildModulesMapper(std::vector<std::string> base_names, const std::string& parent);
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  std::string describe() const override;
  bool moves_data(const StateGroup&) const override { return false; }

 protected:
  // Throws NotInvertibleError: a selection out of a parent module has no inverse.
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  const std::string& child_of(const std::string& key) const;  // checks the group
  std::string parent_prefix_;                                 // "parent."
};

// Several named tensors in, one out (stack, concatenate).
class ManyToOneMapper : public ModelStateMapper {
 public:
  StateDict apply(StateDict group) const final;
  SpecDict infer(const SpecDict& group) const final;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const final;
  // None by default: an op says where its output is its inputs' bytes in order (stack and
  // concatenate along dim 0), a promise the reader builds on (Note [views or copies]).
  std::vector<std::string> concatenated_inputs(const StateGroup&) const override { return {}; }
  const std::vector<std::string>& sources() const { return sources_; }
  const std::string& target() const { return target_; }
  int64_t dim() const { return dim_; }

 protected:
  ManyToOneMapper(const char* op, std::vector<std::string> sources, std::string target,
                  int64_t dim);
  virtual TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const = 0;
  virtual Tensor apply_many(const std::vector<Tensor>& inputs) const = 0;
  // The box of each input (in sources() order; nullopt: not read) that apply_many() reads to
  // make `wanted` of its output (Note [slice pushdown] in region.cpp); nullopt (the default):
  // every input whole, named in the plan.
  virtual std::optional<std::vector<std::optional<Region>>> input_regions_many(
      const std::vector<const TensorSpec*>& inputs, const Region& wanted) const;
  std::vector<const TensorSpec*> specs_of_inputs(const SpecDict& specs) const;  // NotInvertible
  std::string describe_op(const char* op) const;

 private:
  std::vector<std::string> sources_;
  std::string target_;
  int64_t dim_;
};

// One named tensor in, several out (unstack, chunk, split).
class OneToManyMapper : public ModelStateMapper {
 public:
  StateDict apply(StateDict group) const final;
  SpecDict infer(const SpecDict& group) const final;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const final;
  // Copies by default: an op whose pieces are contiguous views says so (unstack, chunk and split
  // along dim 0), a promise the reader builds on (Note [views or copies]).
  bool moves_data(const StateGroup&) const override { return true; }
  const std::string& source() const { return source_; }
  const std::vector<std::string>& targets() const { return targets_; }
  int64_t dim() const { return dim_; }

 protected:
  OneToManyMapper(const char* op, std::string source, std::vector<std::string> targets,
                  int64_t dim);
  // The specs of the pieces, one per target; throws the errors apply_pieces() would.
  virtual std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const = 0;
  virtual std::vector<Tensor> apply_pieces(const Tensor& input) const = 0;
  // The box of the input apply_pieces() reads to make the `wanted` boxes of its pieces (one per
  // target; nullopt: not wanted) (Note [slice pushdown] in region.cpp); nullopt (the default):
  // the whole input, named in the plan. Called with at least one piece wanted.
  virtual std::optional<Region> input_region_pieces(
      const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const;
  std::string describe_op(const char* op, const std::string& extra) const;

 private:
  std::string source_;
  std::vector<std::string> targets_;
  int64_t dim_;
};

class StackTensorsMapper final : public ManyToOneMapper {
 public:
  StackTensorsMapper(std::vector<std::string> sources, std::string target, int64_t dim);
  std::string describe() const override;
  // Along dim 0, the output's bytes are the inputs' bytes in order (legacy empty parts of a cat
  // are 0 bytes).
  std::vector<std::string> concatenated_inputs(const StateGroup&) const override {
    return dim() == 0 ? sources() : std::vector<std::string>{};
  }

 protected:
  std::optional<std::vector<std::optional<Region>>> input_regions_many(
      const std::vector<const TensorSpec*>& inputs, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const override;
  Tensor apply_many(const std::vector<Tensor>& inputs) const override;
};

class ConcatenateTensorsMapper final : public ManyToOneMapper {
 public:
  // What the parts are known to be, which makes the inverse known without specs: anything
  // (kAny), the pieces torch.chunk gives (kChunks: the inverse of chunk_tensors), or pieces of
  // fixed sizes along dim (kSizes: the inverse of split_tensors). Parts of another layout are an
  // error for kChunks and kSizes.
  enum class Parts : uint8_t { kAny, kChunks, kSizes };
  ConcatenateTensorsMapper(std::vector<std::string> sources, std::string target, int64_t dim,
                           Parts parts = Parts::kAny, std::vector<int64_t> sizes = {});
  std::string describe() const override;
  // Along dim 0, the output's bytes are the inputs' bytes in order (legacy empty parts of a cat
  // are 0 bytes).
  std::vector<std::string> concatenated_inputs(const StateGroup&) const override {
    return dim() == 0 ? sources() : std::vector<std::string>{};
  }

 protected:
  std::optional<std::vector<std::optional<Region>>> input_regions_many(
      const std::vector<const TensorSpec*>& inputs, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const override;
  Tensor apply_many(const std::vector<Tensor>& inputs) const override;

 private:
  Parts parts_;
  std::vector<int64_t> sizes_;
};

class UnstackTensorsMapper final : public OneToManyMapper {
 public:
  UnstackTensorsMapper(std::string source, std::vector<std::string> targets, int64_t dim);
  std::string describe() const override;
  // Pieces along dim 0 of a contiguous tensor are contiguous views; along another dim, copies.
  bool moves_data(const StateGroup&) const override { return dim() != 0; }

 protected:
  std::optional<Region> input_region_pieces(
      const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;
};

class ChunkTensorsMapper final : public OneToManyMapper {
 public:
  ChunkTensorsMapper(std::string source, std::vector<std::string> targets, int64_t dim);
  std::string describe() const override;
  // Pieces along dim 0 of a contiguous tensor are contiguous views; along another dim, copies.
  bool moves_data(const StateGroup&) const override { return dim() != 0; }

 protected:
  std::optional<Region> input_region_pieces(
      const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;
};

class SplitTensorsMapper final : public OneToManyMapper {
 public:
  // One size per target, each >= 0.
  SplitTensorsMapper(std::string source, std::vector<std::string> targets,
                     std::vector<int64_t> sizes, int64_t dim);
  std::string describe() const override;
  // Pieces along dim 0 of a contiguous tensor are contiguous views; along another dim, copies.
  bool moves_data(const StateGroup&) const override { return dim() != 0; }
  const std::vector<int64_t>& sizes() const { return sizes_; }

 protected:
  std::optional<Region> input_region_pieces(
      const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;

 private:
  std::vector<int64_t> sizes_;
};

// ---- tensor-parallel layouts (tp_ops.cpp)
// --------------------------------------------------------
//
// What a tensor- or expert-parallel rank holds: one piece of a tensor, and tensors padded to a
// multiple of the ranks (vocabulary-parallel embeddings). Reads of these ops' outputs narrow the
// read of their inputs (Note [slice pushdown] in region.cpp).

// The `index`-th of `parts` pieces of `source` along `dim`, by torch.chunk's rule: pieces of
// ceil(size / parts), the last one shorter; an index past torch.chunk's last piece (5 rows in 4
// parts make 3 pieces) is an empty piece. 0 <= index < parts.
MapperPtr shard_tensor(std::string source, std::string target, int64_t dim, int64_t parts,
                       int64_t index);
// `source` with zeros appended along `dim` up to a multiple of `multiple` (>= 1). Its inverse
// drops them (given the input spec).
MapperPtr pad(std::string source, std::string target, int64_t dim, int64_t multiple);
// `length` elements of `source` along `dim` from `start` (torch.narrow); pad's inverse.
MapperPtr narrow(std::string source, std::string target, int64_t dim, int64_t start,
                 int64_t length);

// A part of a tensor along one dim: `length` elements from `start` (narrow), or the `index`-th of
// `parts` torch.chunk pieces (shard_tensor), whose bounds depend on the input's size.
class NarrowMapper final : public SingleTensorMapper {
 public:
  struct Piece {
    int64_t parts;
    int64_t index;
  };
  NarrowMapper(std::string source, std::string target, int64_t dim, int64_t start, int64_t length);
  NarrowMapper(std::string source, std::string target, int64_t dim, Piece piece);
  std::string describe() const override;
  // A part along dim 0 of a contiguous tensor is a contiguous view; along another dim, a copy.
  bool moves_data(const StateGroup&) const override { return dim_ != 0; }

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;  // none: a selection
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  // [start, start + length) of a dim of `size`; checks that it fits.
  std::pair<int64_t, int64_t> range(int64_t size) const;
  int64_t dim_;
  int64_t start_ = 0, length_ = 0;  // narrow
  std::optional<Piece> piece_;      // shard_tensor
};

class PadMapper final : public SingleTensorMapper {
 public:
  PadMapper(std::string source, std::string target, int64_t dim, int64_t multiple);
  std::string describe() const override;

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  int64_t dim_, multiple_;
};

// ---- model layouts ------------------------------------------------------------------------------
//
// Ops that move a model's weights between the layouts its implementations use: the RoPE row
// order of q / k, Megatron's grouped QKV, interleaved halves, stacked experts, tied embeddings.
// Where each layout comes from is in Note [model layouts] (layout_ops.cpp). Only bytes move, so
// every op is exact, and each has an exact inverse that needs no specs: permute_for_rope <-> the
// other direction, interleave_qkv <-> deinterleave_qkv, interleave <-> deinterleave,
// stack_experts <-> unstack_experts, untie_embeddings <-> tie_embeddings. They are views and
// copies of core, so they run on CUDA tensors as on host ones.

// Which way permute_for_rope goes. kToHf: from the interleaved RoPE layout (Meta's original
// checkpoints, GGUF: the two elements of each rotated pair adjacent) to transformers' rotate-half
// layout (the pair's elements half a head apart), as transformers' convert_llama_weights_to_hf.py
// permute() does. kFromHf: back, as llama.cpp's convert_hf_to_gguf.py LlamaModel.permute does.
enum class RopeDirection : uint8_t { kToHf, kFromHf };

// Permutes the rows of `name` (a q or k projection weight [n_heads * head_dim, ...], or its 1-D
// bias) within each of `n_heads` heads; for a GQA k, n_heads is the number of KV heads.
MapperPtr permute_for_rope(std::string name, int64_t n_heads, RopeDirection direction);
// Megatron's fused QKV from q [n_heads * d, ...], k and v [n_kv_heads * d, ...] (or 1-D biases):
// for each of the n_kv_heads groups, its n_heads / n_kv_heads q heads, then its k head, then its v
// head (Megatron-Bridge's merge_qkv_weights). `qkv` names q, k, v in that order.
MapperPtr interleave_qkv(std::vector<std::string> qkv, std::string target, int64_t n_heads,
                         int64_t n_kv_heads);
// The inverse: q, k, v out of a grouped QKV.
MapperPtr deinterleave_qkv(std::string source, std::vector<std::string> qkv, int64_t n_heads,
                           int64_t n_kv_heads);
// Tensors of one shape interleaved element by element along `dim`: element j of source i lands at
// j * n + i (n sources). deinterleave is the inverse: target i takes elements i, i + n, ... (for
// gpt-oss's gate_up_proj, gate = the even elements of the last dim, up = the odd).
MapperPtr interleave(std::vector<std::string> sources, std::string target, int64_t dim);
MapperPtr deinterleave(std::string source, std::vector<std::string> targets, int64_t dim);
// Experts stacked into one tensor: experts[e] names expert e's parts (one shape for all), which
// are concatenated along `part_dim` (of the part's dims) and the experts stacked along `dim` (of
// the result's): per-expert gate_proj [I, H] and up_proj [I, H] become [E, 2I, H] with gate
// first, as transformers v5's MergeModulelist(dim=0) + Concatenate(dim=1); down_proj alone
// becomes [E, H, I]. unstack_experts is the inverse.
MapperPtr stack_experts(std::vector<std::vector<std::string>> experts, std::string target,
                        int64_t dim = 0, int64_t part_dim = 0);
MapperPtr unstack_experts(std::string source, std::vector<std::vector<std::string>> experts,
                          int64_t dim = 0, int64_t part_dim = 0);
// Tied embeddings. untie_embeddings passes `embedding` through and gives the very same tensor as
// `lm_head` too (no copy); tie_embeddings drops `lm_head` after checking that it holds the
// embedding's bytes (a ValueError otherwise: they are not tied).
MapperPtr untie_embeddings(std::string embedding, std::string lm_head);
MapperPtr tie_embeddings(std::string embedding, std::string lm_head);

class PermuteForRopeMapper final : public SingleTensorMapper {
 public:
  // head_dim: when given, the rows must be exactly n_heads * head_dim (else any multiple of
  // 2 * n_heads). n_heads and head_dim must be positive.
  PermuteForRopeMapper(std::string source, std::string target, int64_t n_heads,
                       RopeDirection direction, std::optional<int64_t> head_dim = std::nullopt);
  std::string describe() const override;

 protected:
  std::optional<Region> input_region(const TensorSpec& input, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_one(const TensorSpec& input) const override;
  Tensor apply_one(Tensor input) const override;

 private:
  int64_t n_heads_;
  RopeDirection direction_;
  std::optional<int64_t> head_dim_;
};

class InterleaveQkvMapper final : public ManyToOneMapper {
 public:
  InterleaveQkvMapper(std::vector<std::string> qkv, std::string target, int64_t n_heads,
                      int64_t n_kv_heads);
  std::string describe() const override;

 protected:
  std::optional<std::vector<std::optional<Region>>> input_regions_many(
      const std::vector<const TensorSpec*>& inputs, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const override;
  Tensor apply_many(const std::vector<Tensor>& inputs) const override;

 private:
  int64_t n_heads_, n_kv_heads_;
};

class DeinterleaveQkvMapper final : public OneToManyMapper {
 public:
  DeinterleaveQkvMapper(std::string source, std::vector<std::string> qkv, int64_t n_heads,
                        int64_t n_kv_heads);
  std::string describe() const override;

 protected:
  std::optional<Region> input_region_pieces(
      const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;

 private:
  int64_t n_heads_, n_kv_heads_;
};

class InterleaveMapper final : public ManyToOneMapper {
 public:
  InterleaveMapper(std::vector<std::string> sources, std::string target, int64_t dim);
  std::string describe() const override;

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const override;
  Tensor apply_many(const std::vector<Tensor>& inputs) const override;
};

class DeinterleaveMapper final : public OneToManyMapper {
 public:
  DeinterleaveMapper(std::string source, std::vector<std::string> targets, int64_t dim);
  std::string describe() const override;

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;
};

class StackExpertsMapper final : public ManyToOneMapper {
 public:
  // experts: [E][P] names (E, P >= 1); sources() lists them expert by expert.
  StackExpertsMapper(std::vector<std::vector<std::string>> experts, std::string target, int64_t dim,
                     int64_t part_dim);
  std::string describe() const override;
  // Experts stacked along dim 0, each whole or its parts joined along its own first dim: the
  // inputs' bytes in order (sources() lists them expert by expert).
  std::vector<std::string> concatenated_inputs(const StateGroup&) const override {
    return dim() == 0 && (parts_ == 1 || part_dim_ == 0) ? sources() : std::vector<std::string>{};
  }
  int64_t experts() const;
  int64_t parts() const { return parts_; }

 protected:
  std::optional<std::vector<std::optional<Region>>> input_regions_many(
      const std::vector<const TensorSpec*>& inputs, const Region& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const override;
  Tensor apply_many(const std::vector<Tensor>& inputs) const override;

 private:
  int64_t parts_, part_dim_;
};

class UnstackExpertsMapper final : public OneToManyMapper {
 public:
  // experts: [E][P] names (E, P >= 1); targets() lists them expert by expert.
  UnstackExpertsMapper(std::string source, std::vector<std::vector<std::string>> experts,
                       int64_t dim, int64_t part_dim);
  std::string describe() const override;
  // Experts along dim 0, each whole or cut along its own first dim: contiguous views.
  bool moves_data(const StateGroup&) const override {
    return !(dim() == 0 && (parts_ == 1 || part_dim_ == 0));
  }
  int64_t experts() const;
  int64_t parts() const { return parts_; }

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;

 private:
  int64_t parts_, part_dim_;
};

class UntieEmbeddingsMapper final : public OneToManyMapper {
 public:
  UntieEmbeddingsMapper(std::string embedding, std::string lm_head);
  std::string describe() const override;

 protected:
  std::optional<Region> input_region_pieces(
      const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const override;
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  std::vector<TensorSpec> infer_pieces(const TensorSpec& input) const override;
  std::vector<Tensor> apply_pieces(const Tensor& input) const override;
};

class TieEmbeddingsMapper final : public ManyToOneMapper {
 public:
  TieEmbeddingsMapper(std::string embedding, std::string lm_head);
  std::string describe() const override;

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;
  TensorSpec infer_many(const std::vector<const TensorSpec*>& inputs) const override;
  Tensor apply_many(const std::vector<Tensor>& inputs) const override;
};

}  // namespace d9d::mapper
