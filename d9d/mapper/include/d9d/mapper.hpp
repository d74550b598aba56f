// The whole mapper API: StateGroup, ModelStateMapper, leaf and compose mappers, adapters, quantized
// weights, specs.
#pragma once

#include <d9d/mapper/adapters.hpp>
#include <d9d/mapper/builtin_specs.hpp>
#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>
#include <d9d/mapper/mapper.hpp>
#include <d9d/mapper/quantized.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/mapper/state_group.hpp>
#include <d9d/mapper/tensor_spec.hpp>
