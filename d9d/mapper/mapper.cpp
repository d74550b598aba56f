// StateGroup, TensorSpec, the ModelStateMapper defaults, and whole-state helpers.
#include <d9d/mapper/mapper.hpp>

#include <ostream>
#include <sstream>
#include <string_view>
#include <vector>

#include <d9d/dist/dtensor.hpp>

#include "internal.hpp"

namespace d9d::mapper {

// ---- StateGroup ---------------------------------------------------------------------------------

std::ostream& operator<<(std::ostream& out, const StateGroup& group) {
  auto print = [&out](const std::set<std::string>& keys) {
    out << '{';
    bool first = true;
    for (const auto& k : keys) {
      out << (first ? "" : ", ") << k;
      first = false;
    }
    out << '}';
  };
  print(group.inputs);
  out << " -> ";
  print(group.outputs);
  return out;
}

std::string to_string(const StateGroup& group) {
  std::ostringstream out;
  out << group;
  return out.str();
}

// ---- TensorSpec ---------------------------------------------------------------------------------

TensorSpec TensorSpec::of(const Tensor& tensor) {
  return {tensor.dtype(), dist::global_shape(tensor)};
}

std::string TensorSpec::str() const {
  std::ostringstream out;
  out << *this;
  return out.str();
}

std::ostream& operator<<(std::ostream& out, const TensorSpec& spec) {
  return out << spec.dtype << spec.shape;
}

SpecDict specs_of(const std::map<std::string, Tensor>& state) {
  SpecDict out;
  for (const auto& [name, tensor] : state)
    out.emplace_hint(out.end(), name, TensorSpec::of(tensor));
  return out;
}

// ---- ModelStateMapper defaults ------------------------------------------------------------------

SpecDict ModelStateMapper::infer(const SpecDict& group) const {
  throw NotInferableError(
      d9d::detail::str_cat(describe(), ": cannot infer output specs without data (for the group ",
                           detail::keys_str(detail::keys_of(group)),
                           "); override infer() to support plans and dry runs"));
}

bool ModelStateMapper::moves_data(const StateGroup& /*group*/) const {
  return true;
}

std::vector<std::string> ModelStateMapper::concatenated_inputs(const StateGroup& /*group*/) const {
  return {};
}

RegionDict ModelStateMapper::input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                           std::vector<std::string>* whole) const {
  RegionDict out;
  if (wanted.empty()) return out;  // nothing wanted: nothing read
  for (const auto& [name, spec] : inputs) out.emplace(name, Region::whole(spec.shape));
  if (whole != nullptr) {
    bool all = true;
    try {
      const SpecDict outputs = infer(inputs);
      for (const auto& [name, spec] : outputs) {
        const auto it = wanted.find(name);
        all = all && it != wanted.end() && it->second.covers(spec.shape);
      }
    } catch (const NotInferableError&) {
      all = false;
    }
    if (!all) whole->push_back(describe());
  }
  return out;
}

MapperPtr ModelStateMapper::do_inverse(const SpecDict& /*input_specs*/) const {
  throw NotInvertibleError(
      d9d::detail::str_cat(describe(), ": has no inverse (override do_inverse() to provide one)"));
}

std::string ModelStateMapper::describe() const {
  return "user-defined mapper";
}

// ---- whole-state helpers ------------------------------------------------------------------------

namespace {

template <class V, class Call>
std::map<std::string, V> run_all(const ModelStateMapper& mapper, std::map<std::string, V> state,
                                 Call call) {
  const auto& groups = mapper.state_dependency_groups();
  std::vector<std::string_view> missing;
  for (const auto& group : groups) {
    for (const auto& k : group.inputs) {
      if (!state.count(k)) missing.push_back(k);
    }
  }
  D9D_CHECK(missing.empty(), mapper.describe(), ": ", missing.size(),
            " input(s) missing from the state: ", detail::keys_str(missing));
  std::map<std::string, V> out;
  for (const auto& group : groups) {
    std::map<std::string, V> sub;
    for (const auto& k : group.inputs) {
      auto node = state.extract(k);
      sub.insert(std::move(node));
    }
    std::map<std::string, V> result = call(mapper, std::move(sub));
    detail::check_group_outputs(mapper, group, result, "apply");
    out.merge(result);  // outputs never collide between groups
  }
  return out;
}

}  // namespace

StateDict apply_all(const ModelStateMapper& mapper, StateDict state) {
  return run_all(mapper, std::move(state), [](const ModelStateMapper& m, StateDict group) {
    return m.apply(std::move(group));
  });
}

SpecDict infer_all(const ModelStateMapper& mapper, const SpecDict& specs) {
  return run_all(mapper, specs,
                 [](const ModelStateMapper& m, const SpecDict& group) { return m.infer(group); });
}

std::set<std::string> all_inputs(const ModelStateMapper& mapper) {
  std::set<std::string> out;
  for (const auto& group : mapper.state_dependency_groups()) {
    out.insert(group.inputs.begin(), group.inputs.end());
  }
  return out;
}

std::set<std::string> all_outputs(const ModelStateMapper& mapper) {
  std::set<std::string> out;
  for (const auto& group : mapper.state_dependency_groups()) {
    out.insert(group.outputs.begin(), group.outputs.end());
  }
  return out;
}

}  // namespace d9d::mapper

size_t std::hash<d9d::mapper::StateGroup>::operator()(
    const d9d::mapper::StateGroup& group) const noexcept {
  size_t h = 0x9e3779b97f4a7c15ULL;
  auto mix = [&h](const std::string& s) {
    h ^= std::hash<std::string>{}(s) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  };
  for (const auto& k : group.inputs) mix(k);
  h ^= 0x51ed270b27e1f3a5ULL;  // keeps {a} -> {} and {} -> {a} apart
  for (const auto& k : group.outputs) mix(k);
  return h;
}
