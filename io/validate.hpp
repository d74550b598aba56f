// validate_safetensors that also hands back the name index it builds for the duplicate check, so
// that SafetensorsFile::open does not hash every name twice (private to io).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include <d9d/io/safetensors.hpp>

#include "name_index.hpp"

namespace d9d::io::detail {

// As d9d::io::validate_safetensors, for a file of `file_size` bytes whose first bytes are `head`:
// its first 8 (all of them if it has fewer), and the whole header as well when the header length
// passes rules 2 and 3 (only those bytes are read). On return `index` maps each name to its
// position in the returned header's tensors (its accessor reads that vector: rebind it if the
// names move).
SafetensorsHeader validate_safetensors(std::span<const std::byte> head, uint64_t file_size,
                                       std::string_view name, NameIndex& index);

}  // namespace d9d::io::detail
