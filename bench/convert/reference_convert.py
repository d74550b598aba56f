#!/usr/bin/env python3
"""The reference: Python d9d 0.24 doing the conversion d9d is measured on, read_model_state piped
into write_model_state_local on the CPU, 1 GiB shards. Run with the reference's virtualenv:

  .venv-ref/bin/python bench/convert/reference_convert.py SRC_DIR DEST_DIR [SHARD_SIZE_GB]

The conversion (per layer L), as examples/specs/llama_hf_to_fused.json and, for a Qwen3-MoE
checkpoint (config.json's num_experts), d9d's built-in qwen3_moe spec (what `--spec auto` picks):

  layers.L.attn.qkv.weight            cat(q_proj, k_proj, v_proj, dim 0)
  layers.L.attn.out.weight            o_proj
  layers.L.attn.{q,k}_norm.weight     self_attn.{q,k}_norm (MoE)
  layers.L.attn_norm.weight           input_layernorm
  layers.L.mlp_norm.weight            post_attention_layernorm
  layers.L.mlp.gate_up.weight         cat(gate_proj, up_proj, dim 0) (dense)
  layers.L.mlp.down.weight            down_proj (dense)
  layers.L.moe.router.weight          mlp.gate (MoE)
  layers.L.moe.experts.gate_up.weight stack over e of cat(experts.e.gate_proj, experts.e.up_proj,
                                      dim 0): [E, 2I, H] (MoE)
  layers.L.moe.experts.down.weight    stack over e of experts.e.down_proj: [E, H, I] (MoE)
  embed.weight, norm.weight           model.embed_tokens, model.norm; lm_head.weight kept

The mapper is built in code from the checkpoint's keys, as a reference user would write it. The
reference has no single mapper that concatenates within each expert and stacks over experts, so
each layer's gate_up is two stages: ModelStateMapperSequential of a parallel stage of per-expert
concatenations (to layers.L.moe.experts.E.gate_up, an intermediate name) and a stack of those.
"""
import json
import os
import re
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

from d9d.model_state.io import read_model_state, write_model_state_local  # noqa: E402
from d9d.model_state.mapper.adapters import identity_mapper_from_mapper_outputs  # noqa: E402
from d9d.model_state.mapper.compose import (ModelStateMapperParallel,  # noqa: E402
                                            ModelStateMapperSequential)
from d9d.model_state.mapper.leaf import (ModelStateMapperConcatenateTensors,  # noqa: E402
                                         ModelStateMapperIdentity, ModelStateMapperRename,
                                         ModelStateMapperStackTensors)

src, dest = sys.argv[1], sys.argv[2]
shard_size_gb = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0

index = os.path.join(src, "model.safetensors.index.json")
if os.path.exists(index):
    keys = set(json.load(open(index))["weight_map"])
else:
    from safetensors import safe_open
    with safe_open(os.path.join(src, "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
layers = sorted({int(m.group(1)) for k in keys if (m := re.match(r"model\.layers\.(\d+)\.", k))})

config_path = os.path.join(src, "config.json")
experts = (json.load(open(config_path)).get("num_experts", 0)
           if os.path.exists(config_path) else 0)

mappers = []
for i in layers:
    p, q = f"model.layers.{i}.", f"layers.{i}."
    mappers += [
        ModelStateMapperConcatenateTensors(
            [p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
             p + "self_attn.v_proj.weight"], q + "attn.qkv.weight", dim=0),
        ModelStateMapperRename(p + "self_attn.o_proj.weight", q + "attn.out.weight"),
        ModelStateMapperRename(p + "input_layernorm.weight", q + "attn_norm.weight"),
        ModelStateMapperRename(p + "post_attention_layernorm.weight", q + "mlp_norm.weight"),
    ]
    if not experts:
        mappers += [
            ModelStateMapperConcatenateTensors(
                [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], q + "mlp.gate_up.weight",
                dim=0),
            ModelStateMapperRename(p + "mlp.down_proj.weight", q + "mlp.down.weight"),
        ]
        continue
    x = [p + f"mlp.experts.{e}." for e in range(experts)]
    mappers += [
        ModelStateMapperRename(p + "self_attn.q_norm.weight", q + "attn.q_norm.weight"),
        ModelStateMapperRename(p + "self_attn.k_norm.weight", q + "attn.k_norm.weight"),
        ModelStateMapperRename(p + "mlp.gate.weight", q + "moe.router.weight"),
        # gate_up: [E, 2I, H], each expert's gate rows then its up rows.
        ModelStateMapperSequential([
            ModelStateMapperParallel([
                ModelStateMapperConcatenateTensors(
                    [x[e] + "gate_proj.weight", x[e] + "up_proj.weight"],
                    q + f"moe.experts.{e}.gate_up.weight", dim=0)
                for e in range(experts)]),
            ModelStateMapperStackTensors(
                [q + f"moe.experts.{e}.gate_up.weight" for e in range(experts)],
                q + "moe.experts.gate_up.weight", dim=0),
        ]),
        # down: [E, H, I].
        ModelStateMapperStackTensors([x[e] + "down_proj.weight" for e in range(experts)],
                                     q + "moe.experts.down.weight", dim=0),
    ]
mappers += [ModelStateMapperRename("model.embed_tokens.weight", "embed.weight"),
            ModelStateMapperRename("model.norm.weight", "norm.weight")]
if "lm_head.weight" in keys:
    mappers.append(ModelStateMapperIdentity("lm_head.weight"))
mapper = ModelStateMapperParallel(mappers)

write_model_state_local(
    dest_dir=Path(dest),
    mapper=identity_mapper_from_mapper_outputs(mapper),
    state_generator=read_model_state(Path(src), mapper, device="cpu",
                                     show_progress=False),
    shard_size_gb=shard_size_gb,
    show_progress=False)
