// Compose mappers: mappers built from other mappers.
//
// Building, grouping and sharding are near-linear in the number of groups (hash maps and one
// union-find pass), so a mapper over 100,000 tensors builds in well under a second.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <d9d/mapper/mapper.hpp>

namespace d9d::mapper {

// ---- factories ----------------------------------------------------------------------------------

// Runs the mappers side by side. Mappers without inputs and outputs are dropped. Throws
// ValueError naming the keys when two groups share an input key ("colliding input keys") or an
// output key ("colliding output keys"). apply() takes exactly one group's inputs.
MapperPtr parallel(std::vector<MapperPtr> mappers);
// Runs the mappers as stages, one after another. Gap filling: a key that a later stage (or the
// result) needs passes unchanged through the stages between. Group merging: the groups are the
// net dependencies, so {a}->{t} then {t, b}->{r} is one group {a, b}->{r}. Throws ValueError when
// no mapper has inputs or outputs, and when a stage consumes a key that a later stage also needs
// ("colliding input keys") or produces a key that passes through it ("colliding output keys").
MapperPtr sequential(std::vector<MapperPtr> mappers);
// The groups of `mapper` with index % total == current, in StateGroup order (sorted inputs): the
// same assignment as the reference's ModelStateMapperShard.
MapperPtr shard(MapperPtr mapper, int64_t total, int64_t current);
// Runs `mapper` with `source_prefix` before every input key and `target_prefix` before every
// output key (a mapper written for a submodule, applied to its parent's state).
MapperPtr prefix_scope(MapperPtr mapper, std::string source_prefix, std::string target_prefix);
// The mappers that have at least one group with an input or an output.
std::vector<MapperPtr> filter_empty_mappers(const std::vector<MapperPtr>& mappers);

// ---- classes ------------------------------------------------------------------------------------

class ParallelMapper final : public ModelStateMapper {
 public:
  explicit ParallelMapper(std::vector<MapperPtr> mappers);
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  bool moves_data(const StateGroup& group) const override;
  std::vector<std::string> concatenated_inputs(const StateGroup& group) const override;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const override;
  std::string describe() const override;
  const std::vector<MapperPtr>& mappers() const { return mappers_; }

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  struct Route {
    const StateGroup* group;
    const ModelStateMapper* mapper;
  };
  template <class Dict, class Call>
  Dict run(Dict group, Call call) const;
  // The route of the group with input `key` (nullopt: of the group without inputs); nullptr if
  // there is none. Callers check that the group's inputs are exactly theirs.
  const Route* find_route(std::optional<std::string_view> key) const;

  std::vector<MapperPtr> mappers_;
  // Input key -> its group (inputs never collide, so any one key of a group finds it); a group
  // without inputs is found under "".
  std::unordered_map<std::string_view, Route> routes_;
  std::optional<Route> no_input_route_;
};

class SequentialMapper final : public ModelStateMapper {
 public:
  explicit SequentialMapper(std::vector<MapperPtr> mappers);
  ~SequentialMapper() override;
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  bool moves_data(const StateGroup& group) const override;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const override;
  std::string describe() const override;
  const std::vector<MapperPtr>& stages() const { return stages_; }

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  struct Plan;  // the stage-by-stage execution plan of every net group (sequential.cpp)
  template <class Dict, class Call>
  Dict run(Dict group, Call call) const;
  // The net group with input `key` (nullopt: the one without inputs), if there is one. Callers
  // check that its inputs are exactly theirs.
  std::optional<uint32_t> find_net(std::optional<std::string_view> key) const;

  std::vector<MapperPtr> stages_;
  std::unique_ptr<const Plan> plan_;
};

class ShardMapper final : public ModelStateMapper {
 public:
  ShardMapper(MapperPtr mapper, int64_t total, int64_t current);
  // Takes exactly the inputs of one of this shard's groups.
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  bool moves_data(const StateGroup& group) const override;
  std::vector<std::string> concatenated_inputs(const StateGroup& group) const override;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const override;
  std::string describe() const override;

 protected:
  // The inverse of the whole mapper, restricted to the groups that read this shard's outputs.
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  ShardMapper(MapperPtr mapper, std::set<StateGroup> groups, int64_t total, int64_t current);
  void index_groups();
  const StateGroup& group_of(const std::set<std::string>& keys) const;

  MapperPtr mapper_;
  int64_t total_, current_;
  std::unordered_map<std::string_view, const StateGroup*> routes_;
};

class PrefixScopeMapper final : public ModelStateMapper {
 public:
  PrefixScopeMapper(MapperPtr mapper, std::string source_prefix, std::string target_prefix);
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  bool moves_data(const StateGroup& group) const override;
  std::vector<std::string> concatenated_inputs(const StateGroup& group) const override;
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const override;
  std::string describe() const override;

 protected:
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  template <class Dict, class Call>
  Dict run(Dict group, Call call) const;
  // The inner mapper's group for one of this mapper's groups (nullopt for keys without the
  // prefixes).
  std::optional<StateGroup> unscoped(const StateGroup& group) const;

  MapperPtr mapper_;
  std::string source_prefix_, target_prefix_;
};

}  // namespace d9d::mapper
