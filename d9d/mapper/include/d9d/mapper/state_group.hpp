// StateGroup: the atomic unit of the mapper graph, and StateDict, the tensors one group carries.
#pragma once

#include <compare>
#include <cstddef>
#include <functional>
#include <iosfwd>
#include <map>
#include <set>
#include <string>

#include <d9d/tensor.hpp>

namespace d9d::mapper {

// A contract between the complete set of keys a transformation needs (inputs) and the complete
// set of keys it produces (outputs). Groups order by their sorted inputs, then their sorted
// outputs: that order is what shard() deals out, and it equals the reference's
// sorted(groups, key=lambda g: sorted(g.inputs)) wherever the reference's order is defined.
struct StateGroup {
  std::set<std::string> inputs;
  std::set<std::string> outputs;

  friend bool operator==(const StateGroup&, const StateGroup&) = default;
  friend std::strong_ordering operator<=>(const StateGroup&, const StateGroup&) = default;
};

// name -> tensor: the inputs of one group going into apply(), its outputs coming out.
using StateDict = std::map<std::string, Tensor>;

// "{a, b} -> {r}".
std::ostream& operator<<(std::ostream& out, const StateGroup& group);
std::string to_string(const StateGroup& group);

}  // namespace d9d::mapper

template <>
struct std::hash<d9d::mapper::StateGroup> {
  size_t operator()(const d9d::mapper::StateGroup& group) const noexcept;
};
