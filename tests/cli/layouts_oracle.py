#!/usr/bin/env python3
"""The model-layout ops through spec files and the CLI, against numpy oracles written from the
code that defines each layout (Note [model layouts] in d9d/mapper/layout_ops.cpp):

1. RoPE: llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (HF -> interleaved, k by the KV
   head count, 1-D biases too) and transformers' convert_llama_weights_to_hf.py permute
   (interleaved -> HF), with the head counts from config.json (and from text_config, and from
   --set), back bit-exact with --reverse.
2. GQA QKV: Megatron-Bridge's merge_qkv_weights (per KV group: its q heads, then k, then v).
3. gpt-oss: gate = gate_up_proj[..., ::2], up = gate_up_proj[..., 1::2], and back.
4. Experts: transformers v5's MergeModulelist(dim=0) + Concatenate(dim=1) for gate/up (Mixtral's
   w1/w3 too) and MergeModulelist(dim=0) for down, counted by config.json; a missing expert is
   an error naming its key.
5. Tied embeddings: lm_head made from the embedding when config.json ties them, dropped again
   with --reverse.
6. plan --json (groups with their ops in op order, inferred outputs, params, reads) and --dot.

  python3 layouts_oracle.py D9D
"""
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import safetensors.numpy as stnp

from clitest import BF16, check, d9d, d9d_ok, expect_failure, finish, load_checkpoint

rng = np.random.default_rng(20261201)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def write(ckpt, state, config=None):
    os.makedirs(ckpt, exist_ok=True)
    stnp.save_file(state, os.path.join(ckpt, "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(ckpt, "config.json"), "w") as fh:
            json.dump(config, fh)


def write_spec(path, spec):
    with open(path, "w") as fh:
        json.dump(spec, fh)
    return path


def round_trip(tmp, name, ckpt, spec, want, extra=()):
    """Converts `ckpt` through `spec`, checks every output against `want` (name -> array) bit for
    bit, then converts back with --reverse and checks the original comes back."""
    out = os.path.join(tmp, name + "-out")
    back = os.path.join(tmp, name + "-back")
    d9d_ok("convert", ckpt, out, "--spec", spec, "--no-progress", *extra)
    got = load_checkpoint(out)
    check(sorted(got) == sorted(want), f"{name}: outputs {sorted(got)} == {sorted(want)}")
    for k, v in want.items():
        check(k in got and same(got[k], v), f"{name}: {k} matches the oracle")
    d9d_ok("convert", out, back, "--reverse", "--no-progress")
    orig = load_checkpoint(ckpt)
    again = load_checkpoint(back)
    check(sorted(again) == sorted(orig), f"{name}: --reverse gives the original names")
    for k, v in orig.items():
        check(k in again and same(again[k], v), f"{name}: {k} comes back bit-exact")
    return out


# ---- the oracles ----------------------------------------------------------------------------------

def llama_cpp_permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def hf_permute(w, n_heads, dim1, dim2):
    """transformers convert_llama_weights_to_hf.py permute (interleaved -> HF rotate-half):
    w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)."""
    return w.reshape(n_heads, dim1 // n_heads // 2, 2, dim2).swapaxes(1, 2).reshape(dim1, dim2)


def megatron_merge_qkv(q, k, v, head_num, num_query_groups):
    """Megatron-Bridge param_mapping.py merge_qkv_weights."""
    heads_per_group = head_num // num_query_groups
    head_size = q.shape[0] // head_num
    rest = q.shape[1:]
    qr = q.reshape(head_num, head_size, *rest)
    kr = k.reshape(num_query_groups, head_size, *rest)
    vr = v.reshape(num_query_groups, head_size, *rest)
    parts = []
    for i in range(num_query_groups):
        parts += [qr[i * heads_per_group:(i + 1) * heads_per_group], kr[i:i + 1], vr[i:i + 1]]
    return np.concatenate(parts, axis=0).reshape(-1, *rest)


def merge_modulelist_concat(gates, ups):
    """transformers v5: MergeModulelist(dim=0) (torch.stack) then Concatenate(dim=1)."""
    return np.concatenate([np.stack(gates, axis=0), np.stack(ups, axis=0)], axis=1)


# ---- 1. RoPE --------------------------------------------------------------------------------------

def test_rope(tmp):
    heads, kv, hd, hidden, layers = 8, 2, 6, 12, 2
    state = {}
    for l in range(layers):
        p = f"model.layers.{l}.self_attn."
        state[p + "q_proj.weight"] = rng.standard_normal((heads * hd, hidden), dtype=np.float32)
        state[p + "k_proj.weight"] = rng.standard_normal((kv * hd, hidden), dtype=np.float32)
        state[p + "q_proj.bias"] = rng.standard_normal(heads * hd, dtype=np.float32)
        state[p + "k_proj.bias"] = rng.standard_normal(kv * hd, dtype=np.float32)
        state[p + "v_proj.weight"] = rng.standard_normal((kv * hd, hidden), dtype=np.float32).astype(BF16)
    spec = write_spec(os.path.join(tmp, "rope.json"), {
        "d9d_mapper_spec": 1, "unmatched": "keep",
        "params": {"heads": "config.num_attention_heads", "kv": "config.num_key_value_heads"},
        "rules": [
            {"op": "permute_for_rope", "source": "model.layers.{L}.self_attn.q_proj.{w}",
             "n_heads": "{heads}", "direction": "from_hf"},
            {"op": "permute_for_rope", "source": "model.layers.{L}.self_attn.k_proj.{w}",
             "n_heads": "{kv}", "direction": "from_hf"}]})
    want = {}
    for k, v in state.items():
        if ".q_proj." in k:
            want[k] = llama_cpp_permute(v, heads, heads)
        elif ".k_proj." in k:
            want[k] = llama_cpp_permute(v, heads, kv)
        else:
            want[k] = v
    config = {"num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": hidden}
    ckpt = os.path.join(tmp, "rope-hf")
    write(ckpt, state, config)
    gguf = round_trip(tmp, "rope from_hf", ckpt, spec, want)

    # The same counts under text_config (a multimodal config), and from --set.
    mm = os.path.join(tmp, "rope-mm")
    write(mm, state, {"model_type": "llava", "text_config": config})
    round_trip(tmp, "rope text_config", mm, spec, want)
    bare = os.path.join(tmp, "rope-bare")
    write(bare, state, {"num_attention_heads": heads})
    set_out = round_trip(tmp, "rope --set", bare, spec, want, extra=("--set", f"kv={kv}"))
    d9d_ok("verify", bare, set_out, "--spec", spec, "--set", f"kv={kv}", "--no-progress")
    check(d9d("verify", bare, set_out, "--spec", spec, "--set", "kv=1", "--no-progress").returncode
          == 1, "verify --set kv=1: another permutation, so the checkpoints differ")
    expect_failure("rope without kv", ["convert", bare, os.path.join(tmp, "nokv"), "--spec", spec],
                   ["$.params.kv", "num_key_value_heads"], out=os.path.join(tmp, "nokv"))
    expect_failure("--set of an undeclared param",
                   ["plan", ckpt, "--spec", spec, "--set", "tp=2"], ["\"tp\"", "does not declare"])
    expect_failure("--set without =", ["plan", ckpt, "--spec", spec, "--set", "kv"],
                   ["NAME=VALUE"], code=2)
    expect_failure("--set twice", ["plan", ckpt, "--spec", spec, "--set", "kv=1", "--set", "kv=2"],
                   ["set twice"], code=2)

    # Back to HF with to_hf: transformers' permute() of the interleaved weights.
    to_hf = write_spec(os.path.join(tmp, "rope_to_hf.json"), {
        "d9d_mapper_spec": 1,
        "params": {"heads": "config.num_attention_heads", "kv": "config.num_key_value_heads"},
        "rules": [
            {"op": "permute_for_rope", "source": "model.layers.{L}.self_attn.q_proj.weight",
             "n_heads": "{heads}", "direction": "to_hf"},
            {"op": "permute_for_rope", "source": "model.layers.{L}.self_attn.k_proj.weight",
             "n_heads": "{kv}", "direction": "to_hf"}]})
    shutil.copy(os.path.join(ckpt, "config.json"), os.path.join(gguf, "config.json"))
    meta = load_checkpoint(gguf)
    want_hf = dict(meta)
    for l in range(layers):
        p = f"model.layers.{l}.self_attn."
        want_hf[p + "q_proj.weight"] = hf_permute(meta[p + "q_proj.weight"], heads, heads * hd, hidden)
        want_hf[p + "k_proj.weight"] = hf_permute(meta[p + "k_proj.weight"], kv, kv * hd, hidden)
        check(same(want_hf[p + "q_proj.weight"], state[p + "q_proj.weight"]),
              "transformers' permute undoes llama.cpp's (q)")
        check(same(want_hf[p + "k_proj.weight"], state[p + "k_proj.weight"]),
              "transformers' permute undoes llama.cpp's (k)")
    round_trip(tmp, "rope to_hf", gguf, to_hf, want_hf)


# ---- 2. GQA QKV -----------------------------------------------------------------------------------

def test_qkv(tmp):
    heads, kv, hd, hidden = 8, 2, 4, 16
    state = {"attn.q.weight": rng.standard_normal((heads * hd, hidden), dtype=np.float32).astype(BF16),
             "attn.k.weight": rng.standard_normal((kv * hd, hidden), dtype=np.float32).astype(BF16),
             "attn.v.weight": rng.standard_normal((kv * hd, hidden), dtype=np.float32).astype(BF16),
             "attn.q.bias": rng.standard_normal(heads * hd, dtype=np.float32),
             "attn.k.bias": rng.standard_normal(kv * hd, dtype=np.float32),
             "attn.v.bias": rng.standard_normal(kv * hd, dtype=np.float32)}
    ckpt = os.path.join(tmp, "qkv")
    write(ckpt, state, {"num_attention_heads": heads, "num_key_value_heads": kv})
    spec = write_spec(os.path.join(tmp, "qkv.json"), {
        "d9d_mapper_spec": 1, "unmatched": "error",
        "params": {"heads": "config.num_attention_heads", "groups": "config.num_key_value_heads"},
        "rules": [{"op": "interleave_qkv", "target": "attn.linear_qkv.{w}",
                   "sources": ["attn.q.{w}", "attn.k.{w}", "attn.v.{w}"],
                   "n_heads": "{heads}", "n_kv_heads": "{groups}"}]})
    want = {f"attn.linear_qkv.{w}": megatron_merge_qkv(state[f"attn.q.{w}"], state[f"attn.k.{w}"],
                                                       state[f"attn.v.{w}"], heads, kv)
            for w in ("weight", "bias")}
    round_trip(tmp, "interleave_qkv", ckpt, spec, want)


# ---- 3. gpt-oss interleaved gate / up --------------------------------------------------------------

def test_interleave(tmp):
    experts, hidden, inter = 4, 6, 5
    state = {"model.layers.0.mlp.experts.gate_up_proj":
             rng.standard_normal((experts, hidden, 2 * inter), dtype=np.float32).astype(BF16),
             "model.layers.0.mlp.experts.gate_up_proj_bias":
             rng.standard_normal((experts, 2 * inter), dtype=np.float32).astype(BF16)}
    ckpt = os.path.join(tmp, "gpt-oss")
    write(ckpt, state)
    spec = write_spec(os.path.join(tmp, "deinterleave.json"), {
        "d9d_mapper_spec": 1,
        "rules": [{"op": "deinterleave", "source": "model.layers.{L}.mlp.experts.gate_up_proj",
                   "targets": ["layers.{L}.experts.gate", "layers.{L}.experts.up"], "dim": -1},
                  {"op": "deinterleave", "source": "model.layers.{L}.mlp.experts.gate_up_proj_bias",
                   "targets": ["layers.{L}.experts.gate_bias", "layers.{L}.experts.up_bias"],
                   "dim": -1}]})
    want = {}
    for b in ("", "_bias"):
        x = state["model.layers.0.mlp.experts.gate_up_proj" + b]
        want["layers.0.experts.gate" + b] = np.ascontiguousarray(x[..., ::2])
        want["layers.0.experts.up" + b] = np.ascontiguousarray(x[..., 1::2])
    round_trip(tmp, "deinterleave gpt-oss", ckpt, spec, want)


# ---- 4. stacked experts ---------------------------------------------------------------------------

def experts_state(layers, experts, hidden, inter, names):
    gate, up, down = names
    s = {}
    for l in range(layers):
        for e in range(experts):
            p = f"model.layers.{l}.mlp.experts.{e}."
            s[p + gate] = rng.standard_normal((inter, hidden), dtype=np.float32).astype(BF16)
            s[p + up] = rng.standard_normal((inter, hidden), dtype=np.float32).astype(BF16)
            s[p + down] = rng.standard_normal((hidden, inter), dtype=np.float32).astype(BF16)
    return s


def test_experts(tmp):
    layers, experts, hidden, inter = 2, 12, 8, 6
    for model, count_key, names in (
            ("qwen3_moe", "num_experts", ("gate_proj.weight", "up_proj.weight", "down_proj.weight")),
            ("mixtral", "num_local_experts", ("w1.weight", "w3.weight", "w2.weight"))):
        gate, up, down = names
        state = experts_state(layers, experts, hidden, inter, names)
        ckpt = os.path.join(tmp, model)
        write(ckpt, state, {"model_type": model, count_key: experts})
        spec = write_spec(os.path.join(tmp, model + ".json"), {
            "d9d_mapper_spec": 1, "unmatched": "error",
            "params": {"experts": "config." + count_key},
            "rules": [
                {"op": "stack_experts", "over": "E", "count": "{experts}",
                 "sources": ["model.layers.{L}.mlp.experts.{E}." + gate,
                             "model.layers.{L}.mlp.experts.{E}." + up],
                 "target": "model.layers.{L}.mlp.experts.gate_up_proj"},
                {"op": "stack_experts", "over": "E", "count": "{experts}",
                 "source": "model.layers.{L}.mlp.experts.{E}." + down,
                 "target": "model.layers.{L}.mlp.experts.down_proj"}]})
        want = {}
        for l in range(layers):
            p = f"model.layers.{l}.mlp.experts."
            want[p + "gate_up_proj"] = merge_modulelist_concat(
                [state[f"{p}{e}.{gate}"] for e in range(experts)],
                [state[f"{p}{e}.{up}"] for e in range(experts)])
            want[p + "down_proj"] = np.stack([state[f"{p}{e}.{down}"] for e in range(experts)])
            check(want[p + "gate_up_proj"].shape == (experts, 2 * inter, hidden),
                  "gate_up_proj is [E, 2I, H]")
            check(want[p + "down_proj"].shape == (experts, hidden, inter), "down_proj is [E, H, I]")
        out = round_trip(tmp, "stack_experts " + model, ckpt, spec, want)

        if model == "qwen3_moe":
            plan_checks(tmp, ckpt, spec, experts, gate, up)
            # Unstacked by a spec of its own (the count from config.json again).
            shutil.copy(os.path.join(ckpt, "config.json"), os.path.join(out, "config.json"))
            unstack = write_spec(os.path.join(tmp, "unstack.json"), {
                "d9d_mapper_spec": 1, "unmatched": "error",
                "params": {"experts": "config.num_experts"},
                "rules": [
                    {"op": "unstack_experts", "over": "E", "count": "{experts}",
                     "source": "model.layers.{L}.mlp.experts.gate_up_proj",
                     "targets": ["model.layers.{L}.mlp.experts.{E}." + gate,
                                 "model.layers.{L}.mlp.experts.{E}." + up]},
                    {"op": "unstack_experts", "over": "E", "count": "{experts}",
                     "source": "model.layers.{L}.mlp.experts.down_proj",
                     "target": "model.layers.{L}.mlp.experts.{E}." + down}]})
            round_trip(tmp, "unstack_experts", out, unstack, state)

        # A missing expert is an error naming its key.
        gap = dict(state)
        missing = f"model.layers.1.mlp.experts.7.{up}"
        del gap[missing]
        gap_ckpt = os.path.join(tmp, model + "-gap")
        write(gap_ckpt, gap, {"model_type": model, count_key: experts})
        expect_failure(f"{model}: a missing expert",
                       ["convert", gap_ckpt, os.path.join(tmp, "gap-out"), "--spec", spec],
                       ["$.rules[0]", missing], out=os.path.join(tmp, "gap-out"))
        last = {k: v for k, v in state.items() if ".experts.11." not in k}
        last_ckpt = os.path.join(tmp, model + "-last")
        write(last_ckpt, last, {"model_type": model, count_key: experts})
        expect_failure(f"{model}: the last expert missing (only the count tells)",
                       ["plan", last_ckpt, "--spec", spec],
                       ["0..11", f"model.layers.0.mlp.experts.11.{gate}"])


def plan_checks(tmp, ckpt, spec, experts, gate, up):
    r = d9d_ok("plan", ckpt, "--spec", spec, "--json")
    j = json.loads(r.stdout)
    for key in ("checkpoint", "spec", "ok", "groups", "input_bytes", "output_bytes", "outputs",
                "shards", "missing_inputs", "unmatched_keys", "unconsumed_keys", "unused_rules"):
        check(key in j, f"plan --json keeps {key!r}")
    check(j["params"]["experts"] == {"value": experts, "from": os.path.join(ckpt, "config.json") +
                                     ": num_experts"}, f"plan --json params: {j['params']}")
    check(j["coverage"]["checkpoint_tensors"] == j["coverage"]["read"], "every tensor is read")
    check(len(j["reads"]) == 1 and j["reads"][0]["file"] == "model.safetensors" and
          j["reads"][0]["bytes"] == j["input_bytes"], f"plan --json reads: {j['reads']}")
    details = j["group_details"]
    check(len(details) == j["groups"] == 4, "a group_details entry per group")
    fused = [g for g in details if g["outputs"] == ["model.layers.0.mlp.experts.gate_up_proj"]]
    if check(len(fused) == 1, "the layer 0 gate_up group"):
        g = fused[0]
        check(len(g["ops"]) == 1 and g["ops"][0]["op"] == "stack_experts", f"its op: {g['ops']}")
        order = [f"model.layers.0.mlp.experts.{e}.{w}" for e in range(experts) for w in (gate, up)]
        check(g["ops"][0]["inputs"] == order, "inputs in the op's order: expert by expert, gate then up")
        out = g["ops"][0]["outputs"][0]
        check(out["name"] == "model.layers.0.mlp.experts.gate_up_proj" and out["dtype"] == "BF16" and
              out["shape"][0] == experts, f"the inferred output: {out}")
        check(all("file" in i and "shape" in i for i in g["inputs"]), "inputs with files and specs")
    r = d9d_ok("plan", ckpt, "--spec", spec, "--dot")
    dot = r.stdout
    check(dot.startswith("digraph d9d_plan {") and dot.rstrip().endswith("}"), "plan --dot is a digraph")
    check(dot.count("subgraph cluster_") == 4, "a cluster per group")
    check(dot.count('label="stack_experts"') == 4, "an op node per stack")
    check('[label="23"]' in dot, "the 24 inputs of a fused stack are numbered in the op's order")
    if shutil.which("dot"):
        p = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True)
        check(p.returncode == 0, f"Graphviz reads plan --dot: {p.stderr}")
    expect_failure("--dot with --json", ["plan", ckpt, "--spec", spec, "--dot", "--json"], [], code=2)


# ---- 5. tied embeddings ---------------------------------------------------------------------------

def test_tied(tmp):
    state = {"model.embed_tokens.weight": rng.standard_normal((32, 8), dtype=np.float32).astype(BF16),
             "model.norm.weight": rng.standard_normal(8, dtype=np.float32)}
    spec = write_spec(os.path.join(tmp, "tied.json"), {
        "d9d_mapper_spec": 1,
        "params": {"tied": {"from": "config.tie_word_embeddings", "default": True}},
        "rules": [{"op": "untie_embeddings", "embedding": "model.embed_tokens.weight",
                   "lm_head": "lm_head.weight", "tied": "{tied}"}]})
    ckpt = os.path.join(tmp, "tied")
    write(ckpt, state, {"tie_word_embeddings": True})
    want = dict(state)
    want["lm_head.weight"] = state["model.embed_tokens.weight"]
    round_trip(tmp, "untie_embeddings", ckpt, spec, want)
    # A config that says untied, without lm_head: an error naming both.
    untied = os.path.join(tmp, "untied")
    write(untied, state, {"tie_word_embeddings": False})
    expect_failure("untied without lm_head", ["plan", untied, "--spec", spec],
                   ["lm_head.weight", "not tied"])
    # Tied, but with an lm_head of its own: kept, and the convert says so.
    both = os.path.join(tmp, "both")
    write(both, want, {"tie_word_embeddings": True})
    r = d9d_ok("convert", both, os.path.join(tmp, "both-out"), "--spec", spec, "--no-progress")
    check("lm_head.weight' is present although the embeddings are tied" in r.stderr,
          f"the note on a tied lm_head: {r.stderr!r}")


def main():
    with tempfile.TemporaryDirectory(prefix="d9d-layouts-") as tmp:
        for test in (test_rope, test_qkv, test_interleave, test_experts, test_tied):
            sub = os.path.join(tmp, test.__name__)
            os.makedirs(sub)
            test(sub)
    finish("layouts_oracle")


if __name__ == "__main__":
    main()
