"""The bench_mapper graph built with the reference, Python d9d (d9d.model_state.mapper).

Same keys, same renames, same two stages, same 8 shards as tests/mapper/moe_graph.hpp. Prints one
JSON object for the size given on the command line:

    python reference_bench.py LAYERS EXPERTS
"""

import json
import sys
import time

from d9d.model_state.mapper.compose import (
    ModelStateMapperParallel,
    ModelStateMapperSequential,
    ModelStateMapperShard,
)
from d9d.model_state.mapper.leaf import (
    ModelStateMapperConcatenateTensors,
    ModelStateMapperRename,
    ModelStateMapperStackTensors,
)

LAYER_KEYS = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
    "mlp.gate.weight", "mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
    "mlp.shared_expert.down_proj.weight",
]


def keys(layers, experts):
    out = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for l in range(layers):
        p = f"model.layers.{l}."
        out += [p + k for k in LAYER_KEYS]
        for e in range(experts):
            out += [f"{p}mlp.experts.{e}.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    return out


def renamed(key):  # as moe::renamed in moe_graph.hpp
    out = key[6:] if key.startswith("model.") else key
    out = out.removesuffix(".weight") if out != ".weight" else out
    out = out.replace("self_attn.", "attn.", 1).replace("mlp.", "", 1).replace("_proj", "", 1)
    return out


def main():
    layers, experts = int(sys.argv[1]), int(sys.argv[2])
    all_keys = keys(layers, experts)

    t0 = time.perf_counter()
    renames = [ModelStateMapperRename(k, renamed(k)) for k in all_keys]
    fusions = []
    for l in range(layers):
        p = f"layers.{l}."
        fusions.append(ModelStateMapperConcatenateTensors([p + "attn.q", p + "attn.k", p + "attn.v"], p + "attn.qkv", 0))
        fusions.append(ModelStateMapperConcatenateTensors(
            [p + "shared_expert.gate", p + "shared_expert.up"], p + "shared_expert.gate_up", 0))
        if experts:
            for w in ("gate", "up", "down"):
                fusions.append(ModelStateMapperStackTensors(
                    [f"{p}experts.{e}.{w}" for e in range(experts)], f"{p}moe.{w}", 0))
    s1 = ModelStateMapperParallel(renames)
    s2 = ModelStateMapperParallel(fusions)
    build = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = ModelStateMapperSequential([s1, s2])
    group = time.perf_counter() - t0

    t0 = time.perf_counter()
    dealt = sum(len(ModelStateMapperShard(m, 8, r).state_dependency_groups()) for r in range(8))
    shard = time.perf_counter() - t0
    assert dealt == len(m.state_dependency_groups())

    print(json.dumps({
        "impl": "d9d-python-0.24", "tensors": len(all_keys), "layers": layers, "experts": experts,
        "groups": len(m.state_dependency_groups()), "build_s": build, "group_s": group,
        "shard_s": shard, "total_s": build + group + shard,
    }))


if __name__ == "__main__":
    main()
