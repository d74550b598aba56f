#include <d9d/dist/placement.hpp>

#include <ostream>

#include <d9d/error.hpp>

namespace d9d::dist {

int64_t Placement::dim() const {
  D9D_CHECK(is_shard(), "Placement::dim: Replicate() has no dim");
  return std::get<Shard>(kind_).dim;
}

std::string Placement::str() const {
  if (is_replicate()) return "Replicate()";
  return "Shard(dim=" + std::to_string(std::get<Shard>(kind_).dim) + ")";
}

std::ostream& operator<<(std::ostream& out, const Placement& placement) {
  return out << placement.str();
}

std::string to_string(std::span<const Placement> placements) {
  std::string out = "(";
  for (size_t i = 0; i < placements.size(); ++i) {
    if (i > 0) out += ", ";
    out += placements[i].str();
  }
  if (placements.size() == 1) out += ",";  // a Python 1-tuple
  return out + ")";
}

}  // namespace d9d::dist
