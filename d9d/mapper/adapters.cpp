#include <d9d/mapper/adapters.hpp>

#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>

namespace d9d::mapper {

MapperPtr identity_mapper_from_mapper_outputs(const ModelStateMapper& mapper) {
  std::vector<MapperPtr> identities;
  for (const auto& group : mapper.state_dependency_groups()) {
    for (const auto& name : group.outputs) identities.push_back(identity(name));
  }
  return parallel(std::move(identities));
}

MapperPtr identity_mapper_from_mapper_outputs(const MapperPtr& mapper) {
  D9D_CHECK(mapper != nullptr, "identity_mapper_from_mapper_outputs: the mapper is null");
  return identity_mapper_from_mapper_outputs(*mapper);
}

MapperPtr identity_mapper_from_state(const StateDict& state) {
  std::vector<MapperPtr> identities;
  identities.reserve(state.size());
  for (const auto& kv : state) identities.push_back(identity(kv.first));
  return parallel(std::move(identities));
}

MapperPtr identity_mapper_from_names(const std::vector<std::string>& names) {
  std::vector<MapperPtr> identities;
  identities.reserve(names.size());
  for (const auto& name : names) identities.push_back(identity(name));
  return parallel(std::move(identities));
}

}  // namespace d9d::mapper
