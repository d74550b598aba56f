// A MoE-like checkpoint's keys (HF naming) and the two-stage mapper that converts it, built leaf by
// leaf and as a spec file: the graph the scale test checks and bench/mapper times
// (bench/mapper/reference_bench.py builds the same graph with the reference).
//
// Per layer: q/k/v/o projections, two norms, a router, a shared expert (gate/up/down) and E routed
// experts (gate/up/down each); plus embed, norm and lm_head. Stage 1 renames every key; stage 2
// concatenates q/k/v and the shared gate/up and stacks each expert projection over the experts.
#pragma once

#include <string>
#include <vector>

#include <d9d/mapper.hpp>

namespace d9d::mapper::moe {

struct Size {
  int layers;
  int experts;
  size_t tensors() const { return static_cast<size_t>(layers) * (10 + 3 * experts) + 3; }
};

inline std::string cat(const std::string& a, int i, const std::string& b) {
  std::string out = a;
  out += std::to_string(i);
  out += b;
  return out;
}

inline std::vector<std::string> keys(Size size) {
  std::vector<std::string> out{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int l = 0; l < size.layers; ++l) {
    const std::string p = cat("model.layers.", l, ".");
    for (const char* k :
         {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
          "self_attn.o_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
          "mlp.gate.weight", "mlp.shared_expert.gate_proj.weight",
          "mlp.shared_expert.up_proj.weight", "mlp.shared_expert.down_proj.weight"}) {
      out.push_back(p + k);
    }
    for (int e = 0; e < size.experts; ++e) {
      for (const char* w : {"gate_proj", "up_proj", "down_proj"}) {
        out.push_back(cat(p + "mlp.experts.", e, ".") + w + ".weight");
      }
    }
  }
  return out;
}

// "model.layers.3.mlp.experts.7.up_proj.weight" -> "layers.3.experts.7.up",
// "model.layers.3.self_attn.q_proj.weight" -> "layers.3.attn.q"; every key drops "model." and
// ".weight".
inline std::string renamed(const std::string& key) {
  std::string out = key.rfind("model.", 0) == 0 ? key.substr(6) : key;
  const std::string suffix = ".weight";
  if (out.size() > suffix.size() &&
      out.compare(out.size() - suffix.size(), suffix.size(), suffix) == 0) {
    out.resize(out.size() - suffix.size());
  }
  auto replace = [&out](const std::string& from, const std::string& to) {
    if (size_t at = out.find(from); at != std::string::npos) out.replace(at, from.size(), to);
  };
  replace("self_attn.", "attn.");
  replace("mlp.", "");
  replace("_proj", "");
  return out;
}

struct Stages {
  std::vector<MapperPtr> renames;  // stage 1
  std::vector<MapperPtr> fusions;  // stage 2
};

inline Stages stages(Size size, const std::vector<std::string>& all_keys) {
  Stages s;
  s.renames.reserve(all_keys.size());
  for (const auto& k : all_keys) s.renames.push_back(rename_tensor(k, renamed(k)));
  for (int l = 0; l < size.layers; ++l) {
    const std::string p = cat("layers.", l, ".");
    s.fusions.push_back(
        concatenate_tensors({p + "attn.q", p + "attn.k", p + "attn.v"}, p + "attn.qkv", 0));
    s.fusions.push_back(concatenate_tensors({p + "shared_expert.gate", p + "shared_expert.up"},
                                            p + "shared_expert.gate_up", 0));
    if (size.experts == 0) continue;
    for (const char* w : {"gate", "up", "down"}) {
      std::vector<std::string> sources;
      for (int e = 0; e < size.experts; ++e) sources.push_back(cat(p + "experts.", e, ".") + w);
      s.fusions.push_back(stack_tensors(std::move(sources), p + "moe." + w, 0));
    }
  }
  return s;
}

// The same conversion as a spec, two stages of rules (the format `d9d convert --spec` reads).
inline constexpr const char* kSpec = R"({"d9d_mapper_spec": 1, "unmatched": "error", "stages": [
  {"rules": [{"op": "rename_tensor", "source": "model.layers.{L}.mlp.experts.{E}.{W}_proj.weight",
              "target": "layers.{L}.experts.{E}.{W}"},
             {"op": "rename_tensor", "source": "model.layers.{L}.self_attn.{P}_proj.weight",
              "target": "layers.{L}.attn.{P}"},
             {"op": "rename_tensor", "source": "model.layers.{L}.mlp.shared_expert.{W}_proj.weight",
              "target": "layers.{L}.shared_expert.{W}"},
             {"op": "rename_tensor", "source": "model.layers.{L}.mlp.gate.weight",
              "target": "layers.{L}.gate"},
             {"op": "rename_tensor", "source": "model.layers.{L}.{N}_layernorm.weight",
              "target": "layers.{L}.{N}_layernorm"},
             {"op": "rename_tensor", "source": "model.{X}.weight", "target": "{X}"},
             {"op": "rename_tensor", "source": "lm_head.weight", "target": "lm_head"}]},
  {"rules": [{"op": "concatenate_tensors", "sources": ["layers.{L}.attn.q", "layers.{L}.attn.k",
               "layers.{L}.attn.v"], "target": "layers.{L}.attn.qkv"},
             {"op": "concatenate_tensors", "sources": ["layers.{L}.shared_expert.gate",
               "layers.{L}.shared_expert.up"], "target": "layers.{L}.shared_expert.gate_up"},
             {"op": "stack_tensors", "source": "layers.{L}.experts.{E}.{W}", "over": "E",
              "target": "layers.{L}.moe.{W}"}]}]})";

// Net groups of the whole conversion: per layer qkv, shared gate_up, 3 expert stacks (when there
// are experts) and 5 passed-through tensors (o, 2 norms, router, shared down); plus 3.
inline size_t expected_groups(Size size) {
  return static_cast<size_t>(size.layers) * (2 + (size.experts ? 3 : 0) + 5) + 3;
}

}  // namespace d9d::mapper::moe
