#!/usr/bin/env python3
"""The reference: Python d9d 0.24 doing the conversion of examples/specs/llama_hf_to_fused.json
(q/k/v concatenated to qkv, gate/up to gate_up, the rest renamed), read_model_state piped into
write_model_state_local on the CPU, 1 GiB shards. Run with the reference's virtualenv:

  .venv-ref/bin/python bench/convert/reference_convert.py SRC_DIR DEST_DIR [SHARD_SIZE_GB]

The mapper is built in code from the checkpoint's keys, as a reference user would write it.
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
from d9d.model_state.mapper.compose import ModelStateMapperParallel  # noqa: E402
from d9d.model_state.mapper.leaf import (ModelStateMapperConcatenateTensors,  # noqa: E402
                                         ModelStateMapperIdentity, ModelStateMapperRename)

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

mappers = []
for i in layers:
    p, q = f"model.layers.{i}.", f"layers.{i}."
    mappers += [
        ModelStateMapperConcatenateTensors(
            [p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
             p + "self_attn.v_proj.weight"], q + "attn.qkv.weight", dim=0),
        ModelStateMapperConcatenateTensors(
            [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], q + "mlp.gate_up.weight", dim=0),
        ModelStateMapperRename(p + "self_attn.o_proj.weight", q + "attn.out.weight"),
        ModelStateMapperRename(p + "mlp.down_proj.weight", q + "mlp.down.weight"),
        ModelStateMapperRename(p + "input_layernorm.weight", q + "attn_norm.weight"),
        ModelStateMapperRename(p + "post_attention_layernorm.weight", q + "mlp_norm.weight"),
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
