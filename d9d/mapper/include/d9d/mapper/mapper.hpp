// ModelStateMapper: the interface every state transformation implements.
//
// A mapper has a declarative side and an imperative side, kept apart:
//   - declarative: state_dependency_groups() (topology: which keys go in together and what comes
//     out) and infer() (the specs of the outputs from the specs of the inputs), both without data.
//     Planning, validation, sharding and scheduling use only these.
//   - imperative: apply(), which transforms the tensors of one group.
// Mappers are immutable once built, so one mapper may apply different groups on several threads
// at once. Errors are exceptions derived from d9d::Error; they name the keys and values involved.
//
// A subclass fills groups_ (its state_dependency_groups()) in its constructor and overrides
// apply(), and where it can infer(), do_inverse() and describe(). inverse() is not virtual: it
// calls do_inverse(), so a subclass overrides one function and callers keep inverse() and
// inverse(specs) alike.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <d9d/error.hpp>
#include <d9d/mapper/region.hpp>
#include <d9d/mapper/state_group.hpp>
#include <d9d/mapper/tensor_spec.hpp>

namespace d9d::mapper {

class ModelStateMapper;
using MapperPtr = std::shared_ptr<const ModelStateMapper>;

// inverse() of a mapper that has none (a lossy cast, a selection) or that needs input specs it
// was not given.
class NotInvertibleError : public Error {
 public:
  using Error::Error;
};

// infer() of a mapper that cannot tell its output specs without data (a user-defined mapper that
// does not override infer()).
class NotInferableError : public Error {
 public:
  using Error::Error;
};

class ModelStateMapper {
 public:
  ModelStateMapper(const ModelStateMapper&) = delete;
  ModelStateMapper& operator=(const ModelStateMapper&) = delete;
  virtual ~ModelStateMapper() = default;

  // The independent groups this mapper handles; groups never share an input or an output key.
  // Ten independent renames are ten groups, so they can be sharded and streamed one by one.
  const std::set<StateGroup>& state_dependency_groups() const { return groups_; }

  // Transforms one group: `group` holds exactly the inputs of one of state_dependency_groups()
  // (anything else is a ValueError, "undefined group"); the result holds exactly its outputs.
  virtual StateDict apply(StateDict group) const = 0;

  // The specs apply() would produce for inputs of these specs, without data; the same errors
  // apply() would raise for them (mismatched shapes, bad dims, too many chunks) are raised here.
  // The default throws NotInferableError.
  virtual SpecDict infer(const SpecDict& group) const;

  // Whether apply() of `group` (one of state_dependency_groups()) reads the bytes of its inputs:
  // copies, joins, casts. False promises that, given contiguous inputs (tensors as a file holds
  // them), apply() reads no byte and returns each output as a contiguous view of an input
  // (identity, rename, reshape, squeeze, chunks along dim 0). The streamed reader hands such
  // groups views of the files and reads the inputs of every other group into memory first (Note
  // [truncated files] in <d9d/io/mapped_file.hpp>). The default, true, is always safe.
  virtual bool moves_data(const StateGroup& group) const;
  // When apply() of `group` makes its one output by laying the bytes of its inputs end to end
  // (concatenate_tensors and stack_tensors along dim 0, for contiguous inputs), those inputs in
  // that order; empty otherwise (the default). The streamed reader then reads the inputs from the
  // files straight into the output instead of applying the group: the read is the op's copy.
  virtual std::vector<std::string> concatenated_inputs(const StateGroup& group) const;

  // Which parts of a group's inputs apply() reads to make the `wanted` parts of its outputs (Note
  // [slice pushdown] in region.cpp): `inputs` are the specs of exactly one group's inputs,
  // `wanted` a box per output wanted (an output absent is not wanted). The answer holds a box per
  // input to read (an input absent is not read): a superset, so that apply() on inputs right
  // inside those boxes makes outputs right inside `wanted`. The default reads every input whole
  // and, when less than the whole outputs was wanted, adds describe() to `whole` (may be null):
  // the ops that could not narrow the read.
  virtual RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                   std::vector<std::string>* whole) const;

  // The mapper that undoes this one: sequential({m, m->inverse()}) passes every group's data
  // through unchanged. `input_specs` are the specs of this mapper's inputs (extra keys are
  // ignored); ops whose inverse depends on them (cast: from which dtype; concatenate: the sizes
  // of the parts; reshape, squeeze: from which shape) need them and throw NotInvertibleError
  // naming what is missing otherwise. A subclass provides it by overriding do_inverse().
  MapperPtr inverse(const SpecDict& input_specs = {}) const { return do_inverse(input_specs); }

  // A short description for messages: "rename_tensor(a -> b)", "parallel(12 mappers)".
  virtual std::string describe() const;

 protected:
  ModelStateMapper() = default;

  // inverse()'s body. The default throws NotInvertibleError.
  virtual MapperPtr do_inverse(const SpecDict& input_specs) const;

  // What state_dependency_groups() returns: filled by the subclass's constructor, never changed
  // after (mappers are immutable once built).
  std::set<StateGroup> groups_;
};

// Applies every group of `mapper` to an in-memory state (the whole model at once): each group's
// inputs are taken from `state`; keys no group consumes are dropped. Throws ValueError naming
// every input missing from `state`. Returns the outputs of all groups.
StateDict apply_all(const ModelStateMapper& mapper, StateDict state);
// infer()'s counterpart of apply_all: the output specs of every group.
SpecDict infer_all(const ModelStateMapper& mapper, const SpecDict& specs);

// Every input key / every output key over all groups of `mapper`.
std::set<std::string> all_inputs(const ModelStateMapper& mapper);
std::set<std::string> all_outputs(const ModelStateMapper& mapper);

}  // namespace d9d::mapper
