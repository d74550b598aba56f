// Adapters: identity mappers built from what already names the keys.
#pragma once

#include <string>
#include <vector>

#include <d9d/mapper/mapper.hpp>

namespace d9d::mapper {

// An identity for every output key of `mapper` (to write what `mapper` produced as it is).
MapperPtr identity_mapper_from_mapper_outputs(const ModelStateMapper& mapper);
MapperPtr identity_mapper_from_mapper_outputs(const MapperPtr& mapper);
// An identity for every key of `state` (the C++ stand-in for the reference's
// identity_mapper_from_module: a model's weights as a StateDict).
MapperPtr identity_mapper_from_state(const StateDict& state);
// An identity for every name; a repeated name is a ValueError ("colliding input keys").
MapperPtr identity_mapper_from_names(const std::vector<std::string>& names);

}  // namespace d9d::mapper
