// validate_safetensors that also hands back the name index it builds for the duplicate check, so
// that SafetensorsFile::open does not hash every name twice (private to io).
#pragma once

#include <span>
#include <string_view>

#include <d9d/io/safetensors.hpp>

#include "name_index.hpp"

namespace d9d::io::detail {

// As d9d::io::validate_safetensors; on return `index` maps each name to its position in the
// returned header's tensors (its accessor reads that vector: rebind it if the names move).
SafetensorsHeader validate_safetensors(std::span<const std::byte> file, std::string_view name,
                                       NameIndex& index);

}  // namespace d9d::io::detail
