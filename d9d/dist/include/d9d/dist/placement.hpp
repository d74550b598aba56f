// Placement: how a distributed tensor is laid out over one dim of a device mesh, as PyTorch's
// torch.distributed.tensor Shard and Replicate.
//
//   std::vector<Placement> placements = {Shard{0}, Replicate{}};   // over a 2-D mesh
#pragma once

#include <cstdint>
#include <iosfwd>
#include <span>
#include <string>
#include <variant>

namespace d9d::dist {

// The tensor is split along `dim` over the ranks of a mesh dim, as torch.chunk splits it: pieces
// of ceil(size / ranks), the last smaller, the last ranks empty when there are fewer pieces than
// ranks (size 5 over 4 ranks: 2, 2, 1, 0). `dim` may be negative (counted from the end).
struct Shard {
  int64_t dim = 0;
  friend bool operator==(const Shard&, const Shard&) = default;
};

// Every rank of a mesh dim holds the whole tensor.
struct Replicate {
  friend bool operator==(const Replicate&, const Replicate&) = default;
};

// Shard{dim} or Replicate{}: a value type, implicitly made from either.
class Placement {
 public:
  Placement() = default;                                // Replicate
  Placement(Shard shard) : kind_(shard) {}              // NOLINT(google-explicit-constructor)
  Placement(Replicate replicate) : kind_(replicate) {}  // NOLINT(google-explicit-constructor)

  bool is_shard() const { return std::holds_alternative<Shard>(kind_); }
  bool is_shard(int64_t dim) const { return is_shard() && std::get<Shard>(kind_).dim == dim; }
  bool is_replicate() const { return std::holds_alternative<Replicate>(kind_); }
  // The dim of a Shard; throws ValueError for Replicate.
  int64_t dim() const;
  const std::variant<Replicate, Shard>& kind() const { return kind_; }
  // As PyTorch prints them: "Shard(dim=0)", "Replicate()".
  std::string str() const;

  friend bool operator==(const Placement&, const Placement&) = default;

 private:
  std::variant<Replicate, Shard> kind_;
};

std::ostream& operator<<(std::ostream& out, const Placement& placement);
// "(Shard(dim=0), Replicate())", as PyTorch prints a DTensor's placements.
std::string to_string(std::span<const Placement> placements);

}  // namespace d9d::dist
