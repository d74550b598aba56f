// Helpers shared by the mapper sources (private to the mapper layer).
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include <d9d/mapper/mapper.hpp>

namespace d9d::mapper::detail {

// "[a, b, c]"; past `limit` keys "[a, b, ... and 97 more]", so that a message about a
// 100,000-key group stays readable.
template <class Range>
std::string keys_str(const Range& keys, size_t limit = 8) {
  std::ostringstream out;
  out << '[';
  size_t i = 0;
  const size_t n = std::size(keys);
  for (const auto& k : keys) {
    if (i == limit) {
      out << ", ... and " << (n - limit) << " more";
      break;
    }
    out << (i ? ", " : "") << k;
    ++i;
  }
  out << ']';
  return out.str();
}

template <class V>
std::set<std::string> keys_of(const std::map<std::string, V>& dict) {
  std::set<std::string> out;
  for (const auto& kv : dict) out.insert(out.end(), kv.first);
  return out;
}

// Whether the keys of `dict` are exactly `keys`.
template <class V>
bool same_keys(const std::map<std::string, V>& dict, const std::set<std::string>& keys) {
  if (dict.size() != keys.size()) return false;
  auto it = keys.begin();
  for (const auto& kv : dict) {
    if (kv.first != *it++) return false;
  }
  return true;
}

// The first key of a group's inputs (a StateDict, a SpecDict or a key set), what compose mappers
// route a group by; nullopt when it has none.
inline std::optional<std::string_view> first_key(const std::set<std::string>& keys) {
  if (keys.empty()) return std::nullopt;
  return *keys.begin();
}
template <class V>
std::optional<std::string_view> first_key(const std::map<std::string, V>& dict) {
  if (dict.empty()) return std::nullopt;
  return dict.begin()->first;
}

// "[a, b] -> [r]", shortened like keys_str.
inline std::string group_str(const StateGroup& group) {
  return keys_str(group.inputs) + " -> " + keys_str(group.outputs);
}

// Throws ValueError unless the keys of `dict` are exactly the inputs of `group`.
template <class V>
void check_group_inputs(const ModelStateMapper& who, const StateGroup& group,
                        const std::map<std::string, V>& dict) {
  if (same_keys(dict, group.inputs)) return;
  std::set<std::string> missing, unexpected;
  for (const auto& k : group.inputs) {
    if (!dict.count(k)) missing.insert(k);
  }
  for (const auto& kv : dict) {
    if (!group.inputs.count(kv.first)) unexpected.insert(kv.first);
  }
  throw ValueError(d9d::detail::str_cat(who.describe(), ": got an undefined group ",
                                        keys_str(keys_of(dict)), ": expected the inputs ",
                                        keys_str(group.inputs), " (missing ", keys_str(missing),
                                        ", unexpected ", keys_str(unexpected), ")"));
}

// Throws ValueError for a group `dict` that matches none of `who`'s groups.
template <class V>
[[noreturn]] void throw_undefined_group(const ModelStateMapper& who,
                                        const std::map<std::string, V>& dict) {
  throw ValueError(
      d9d::detail::str_cat(who.describe(), ": got an undefined group ", keys_str(keys_of(dict)),
                           ": the keys are not exactly the inputs of one group; pass groups as "
                           "state_dependency_groups() returns them"));
}

// Throws ValueError unless `out` holds exactly the outputs of `group` (a sub-mapper that returns
// other keys than it declared would corrupt everything downstream of it).
template <class V>
void check_group_outputs(const ModelStateMapper& who, const StateGroup& group,
                         const std::map<std::string, V>& out, const char* call) {
  if (same_keys(out, group.outputs)) return;
  throw ValueError(d9d::detail::str_cat(who.describe(), ": ", call, "() returned the keys ",
                                        keys_str(keys_of(out)), " but its group ", group_str(group),
                                        " declares the outputs ", keys_str(group.outputs)));
}

// Common checks of the ops that join tensors (stack, cat, interleave, stack_experts, ...): one
// dtype, with addressable elements (TypeError naming the two that differ). In leaf.cpp.
void check_joinable(const std::vector<std::string>& names,
                    const std::vector<const TensorSpec*>& inputs, const char* op);

// Rethrows the active exception with `context` before its message, keeping its type, so that a
// shape error from a rule says which mapper and tensor it was about.
[[noreturn]] inline void rethrow_with(const std::string& context) {
  try {
    throw;
  } catch (const IndexError& e) {
    throw IndexError(context + e.what());
  } catch (const TypeError& e) {
    throw TypeError(context + e.what());
  } catch (const ValueError& e) {
    throw ValueError(context + e.what());
  } catch (const DeviceError& e) {
    throw DeviceError(context + e.what());
  } catch (const Error& e) {
    throw Error(context + e.what());
  }
}

}  // namespace d9d::mapper::detail
