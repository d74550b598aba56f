// libFuzzer target: the spec parser (mapper::from_spec) and the conversion record reader
// (model_state::parse_sidecar, what `d9d convert --reverse` reads), the two JSON files a user or a
// downloaded checkpoint hands d9d.
//
// Beyond "no crash, no sanitizer report, no exception that is not a d9d::Error": an accepted spec
// uses only keys it was given, and its mapper infers on them (or says why not) with a d9d::Error;
// an accepted record writes back (sidecar_json) to a record that parses to the same thing.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/model_state/conversion.hpp>

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

// A small Llama-like checkpoint's keys, and some that exercise captures and segments.
const std::vector<std::string>& keys() {
  static const std::vector<std::string> k = [] {
    std::vector<std::string> out = {"model.embed_tokens.weight",
                                    "model.norm.weight",
                                    "lm_head.weight",
                                    "experts_0.w",
                                    "experts_1.w",
                                    "a",
                                    "b.c"};
    for (const char* layer : {"0", "1"}) {
      for (const char* w : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                            "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"}) {
        out.push_back(std::string("model.layers.") + layer + "." + w + ".weight");
      }
    }
    return out;
  }();
  return k;
}

void spec(std::string_view text) {
  d9d::mapper::SpecMapping m;
  try {
    m = d9d::mapper::from_spec(text, keys());
  } catch (const d9d::Error&) {
    return;
  }
  d9d::mapper::SpecDict specs;
  for (const std::string& in : d9d::mapper::all_inputs(*m.mapper)) {
    require(std::find(keys().begin(), keys().end(), in) != keys().end());
    specs.emplace(in, d9d::mapper::TensorSpec{d9d::DType::BF16, {4, 6}});
  }
  try {
    d9d::mapper::infer_all(*m.mapper, specs);
    m.mapper->inverse(specs);
  } catch (const d9d::Error&) {
  }
}

void record(std::string_view text) {
  d9d::model_state::Sidecar s;
  try {
    s = d9d::model_state::parse_sidecar(text, "fuzz");
  } catch (const d9d::Error&) {
    return;
  }
  const d9d::model_state::Sidecar again = d9d::model_state::parse_sidecar(d9d::model_state::sidecar_json(s), "again");
  require(again.spec == s.spec && again.spec_origin == s.spec_origin && again.source == s.source &&
          again.dropped == s.dropped);
  // What --reverse does next: the recorded spec over the recorded keys, then its inverse.
  std::vector<std::string> names;
  for (const auto& [name, tensor] : s.source) names.push_back(name);
  try {
    const d9d::mapper::SpecMapping m = d9d::mapper::from_spec(s.spec, names);
    m.mapper->inverse(s.source);
  } catch (const d9d::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  spec(text);
  record(text);
  return 0;
}
