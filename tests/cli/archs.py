#!/usr/bin/env python3
"""The built-in spec library (specs/*.json) on a small checkpoint of every architecture it covers,
made by tests/cli/arch_models.py with the real models' key names, dtypes, shape rules and a real
(reduced) config.json:

1. `d9d specs` lists every spec, `--json` too, and `d9d specs NAME` prints it.
2. For each architecture: `d9d convert --spec auto` picks the spec from config.json, and its output
   equals, tensor for tensor and bit for bit, the engine layout computed here with numpy from the
   HF tensors (engine_layout below, written from specs/README.md, not from the spec files); `plan
   --spec auto --json` names the same outputs; `--reverse` gives the original back bit-exact;
   `--spec NAME` picks the same spec.
3. A missing expert, a missing FP8 scale and a tensor the spec does not know are errors naming the
   key, with nothing written; a config.json no spec claims is an error listing the library.

  python3 archs.py D9D
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from clitest import check, d9d_ok, expect_failure, finish

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arch_models  # noqa: E402


# ---- the engine layout, from specs/README.md ------------------------------------------------------

def cat(*arrays, axis=0):
    return np.concatenate(arrays, axis=axis)


def engine_layout(arch, hf, cfg):
    """The engine layout of the HF state dict `hf` (numpy arrays): what the built-in spec must
    write. Pops what it uses; whatever is left over is a key the layout does not know."""
    s = dict(hf)
    out = {}
    tied = cfg.get("tie_word_embeddings", arch in ("gemma2", "gemma3", "gpt2", "bert"))

    def layers(prefix):
        return sorted({int(k[len(prefix):].split(".")[0]) for k in s if k.startswith(prefix)})

    def move(src, dst):
        if src in s:
            out[dst] = s.pop(src)

    def fuse(srcs, dst, axis=0):
        if all(k in s for k in srcs):
            out[dst] = cat(*[s.pop(k) for k in srcs], axis=axis)

    if arch == "gpt2":
        for L in layers("h."):
            h, e = f"h.{L}.", f"layers.{L}."
            for src, dst in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.out"),
                             ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.down")):
                out[e + dst + ".weight"] = np.ascontiguousarray(s.pop(h + src + ".weight").T)
                move(h + src + ".bias", e + dst + ".bias")
            for p in ("weight", "bias"):
                move(h + "ln_1." + p, e + "attn_norm." + p)
                move(h + "ln_2." + p, e + "mlp_norm." + p)
            move(h + "attn.bias", e + "attn.causal_mask")
            move(h + "attn.masked_bias", e + "attn.masked_bias")
        out["embed.weight"] = s.pop("wte.weight")
        if "lm_head.weight" not in s and tied:
            out["lm_head.weight"] = out["embed.weight"]
        move("lm_head.weight", "lm_head.weight")
        move("wpe.weight", "pos_embed.weight")
        for p in ("weight", "bias"):
            move("ln_f." + p, "norm." + p)
        return out, s

    if arch == "bert":
        for L in layers("bert.encoder.layer."):
            b, e = f"bert.encoder.layer.{L}.", f"layers.{L}."
            for p in ("weight", "bias", "gamma", "beta"):
                fuse([b + f"attention.self.{x}.{p}" for x in ("query", "key", "value")],
                     e + f"attn.qkv.{p}")
                move(b + f"attention.output.dense.{p}", e + f"attn.out.{p}")
                move(b + f"attention.output.LayerNorm.{p}", e + f"attn_post_norm.{p}")
                move(b + f"intermediate.dense.{p}", e + f"mlp.up.{p}")
                move(b + f"output.dense.{p}", e + f"mlp.down.{p}")
                move(b + f"output.LayerNorm.{p}", e + f"mlp_post_norm.{p}")
        for src, dst in (("word", "embed"), ("position", "pos_embed"), ("token_type", "type_embed")):
            move(f"bert.embeddings.{src}_embeddings.weight", dst + ".weight")
        for p in ("weight", "bias", "gamma", "beta"):
            move("bert.embeddings.LayerNorm." + p, "embed_norm." + p)
            move("bert.pooler.dense." + p, "pooler." + p)
        move("bert.embeddings.position_ids", "pos_ids")
        for k in [k for k in s if k.startswith("cls.")]:
            move(k, "heads." + k[len("cls."):])
        return out, s

    # The decoder-only models in transformers' model.layers.{L} names.
    experts = {"qwen3_moe": "num_experts", "mixtral": "num_local_experts",
               "deepseek_v3": "n_routed_experts"}.get(arch)
    n_experts = cfg.get(experts) if experts else None
    for L in layers("model.layers."):
        m, e = f"model.layers.{L}.", f"layers.{L}."
        a = m + "self_attn."
        for p in ("weight", "bias"):
            fuse([a + f"{x}_proj.{p}" for x in "qkv"], e + f"attn.qkv.{p}")
            move(a + f"qkv_proj.{p}", e + f"attn.qkv.{p}")  # phi3: already fused
            move(a + f"o_proj.{p}", e + f"attn.out.{p}")
            fuse([m + f"mlp.gate_proj.{p}", m + f"mlp.up_proj.{p}"], e + f"mlp.gate_up.{p}")
            move(m + f"mlp.gate_up_proj.{p}", e + f"mlp.gate_up.{p}")  # phi3
            move(m + f"mlp.down_proj.{p}", e + f"mlp.down.{p}")
        move(a + "q_norm.weight", e + "attn.q_norm.weight")
        move(a + "k_norm.weight", e + "attn.k_norm.weight")
        move(a + "sinks", e + "attn.sinks")
        move(m + "input_layernorm.weight", e + "attn_norm.weight")
        if arch in ("gemma2", "gemma3"):
            move(m + "post_attention_layernorm.weight", e + "attn_post_norm.weight")
            move(m + "pre_feedforward_layernorm.weight", e + "mlp_norm.weight")
            move(m + "post_feedforward_layernorm.weight", e + "mlp_post_norm.weight")
        else:
            move(m + "post_attention_layernorm.weight", e + "mlp_norm.weight")
        # MoE
        if arch == "mixtral":
            gate, up, down, base = "w1", "w3", "w2", m + "block_sparse_moe."
        else:
            gate, up, down, base = "gate_proj", "up_proj", "down_proj", m + "mlp."
        move(base + "gate.weight", e + "moe.router.weight")
        move(base + "gate.e_score_correction_bias", e + "moe.router.score_bias")
        if n_experts and base + "experts.0." + gate + ".weight" in s:
            for suffix in (".weight", ".weight_scale_inv"):
                x = base + "experts.{}."
                if x.format(0) + gate + suffix not in s:
                    continue
                out[e + "moe.experts.gate_up" + suffix] = np.stack(
                    [cat(s.pop(x.format(i) + gate + suffix), s.pop(x.format(i) + up + suffix))
                     for i in range(n_experts)])
                out[e + "moe.experts.down" + suffix] = np.stack(
                    [s.pop(x.format(i) + down + suffix) for i in range(n_experts)])
        sh = m + "mlp.shared_experts."
        for suffix in (".weight", ".weight_scale_inv"):
            fuse([sh + "gate_proj" + suffix, sh + "up_proj" + suffix], e + "moe.shared.gate_up" + suffix)
            move(sh + "down_proj" + suffix, e + "moe.shared.down" + suffix)
        # DeepSeek's MLA and MTP, FP8 scales beside their weights
        for suffix in (".weight", ".weight_scale_inv"):
            fuse([a + "q_a_proj" + suffix, a + "kv_a_proj_with_mqa" + suffix], e + "attn.qkv_a" + suffix)
            move(a + "q_b_proj" + suffix, e + "attn.q_b" + suffix)
            move(a + "kv_b_proj" + suffix, e + "attn.kv_b" + suffix)
            move(a + "o_proj" + suffix, e + "attn.out" + suffix)
            fuse([m + "mlp.gate_proj" + suffix, m + "mlp.up_proj" + suffix], e + "mlp.gate_up" + suffix)
            move(m + "mlp.down_proj" + suffix, e + "mlp.down" + suffix)
            move(m + "eh_proj" + suffix, e + "mtp.eh_proj" + suffix)
            move(m + "shared_head.head" + suffix, e + "mtp.head" + suffix)
        move(a + "q_a_layernorm.weight", e + "attn.q_a_norm.weight")
        move(a + "kv_a_layernorm.weight", e + "attn.kv_a_norm.weight")
        for src, dst in (("enorm", "enorm"), ("hnorm", "hnorm"), ("embed_tokens", "embed"),
                         ("shared_head.norm", "norm")):
            move(m + src + ".weight", e + "mtp." + dst + ".weight")
        # gpt-oss: the router, and the MXFP4 experts as stored (gate/up interleaved)
        for p in ("weight", "bias"):
            move(m + "mlp.router." + p, e + "moe.router." + p)
        for p in ("blocks", "scales", "bias"):
            move(m + "mlp.experts.gate_up_proj_" + p, e + "moe.experts.gate_up_interleaved_" + p)
            move(m + "mlp.experts.down_proj_" + p, e + "moe.experts.down_" + p)
    out["embed.weight"] = s.pop("model.embed_tokens.weight")
    move("model.norm.weight", "norm.weight")
    if "lm_head.weight" in s:
        out["lm_head.weight"] = s.pop("lm_head.weight")
    elif tied:
        out["lm_head.weight"] = out["embed.weight"]
    return out, s


# ---- the checks ---------------------------------------------------------------------------------

def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def compare(what, got, want):
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    check(not missing and not extra, f"{what}: the keys (missing {missing[:5]}, extra {extra[:5]})")
    bad = [k for k in sorted(set(got) & set(want)) if not same_bits(got[k], want[k])]
    check(not bad, f"{what}: bit-exact ({len(bad)} differ: {bad[:5]})")
    return not missing and not extra and not bad


def test_listing():
    r = d9d_ok("specs")
    for name in arch_models.ARCHS:
        check(f"\n{name}\n" in "\n" + r.stdout, f"d9d specs lists {name}")
    listed = json.loads(d9d_ok("specs", "--json").stdout)
    # Every architecture, and the tensor-parallel variants (picked by name only: no applies_to).
    tp_variants = ["llama_tp", "qwen3_moe_tp", "qwen3_tp"]
    check(sorted(x["name"] for x in listed) == sorted(list(arch_models.ARCHS) + tp_variants),
          f"d9d specs --json lists exactly the architectures ({[x['name'] for x in listed]})")
    check(all(not x["model_type"] and not x["architectures"] for x in listed if x["name"] in tp_variants),
          "the tp variants are not picked by --spec auto")
    claimed = [t for x in listed for t in x["model_type"]]
    check(len(claimed) == len(set(claimed)), f"no model_type is claimed twice ({claimed})")
    text = d9d_ok("specs", "qwen3_moe", "--json").stdout
    check(json.loads(text)["applies_to"]["model_type"] == ["qwen3_moe"],
          "d9d specs NAME --json prints the spec")
    expect_failure("d9d specs with an unknown name", ["specs", "llama9"], ["llama9", "qwen3_moe"])


def test_arch(arch, tmp):
    src, out, back = (os.path.join(tmp, arch, x) for x in ("hf", "engine", "back"))
    arch_models.write(arch, src, seed=len(arch), shard_bytes=1 << 20)
    hf = arch_models.load(src)
    cfg = arch_models.config(arch)
    want, unknown = engine_layout(arch, hf, cfg)
    check(not unknown, f"{arch}: the oracle knows every tensor (left: {sorted(unknown)[:5]})")

    planned = json.loads(d9d_ok("plan", src, "--spec", "auto", "--json").stdout)
    names = {o["name"] for o in planned["outputs"]}
    check(names == set(want), f"{arch}: plan --json names the engine layout's tensors "
          f"(missing {sorted(set(want) - names)[:3]}, extra {sorted(names - set(want))[:3]})")

    r = d9d_ok("convert", src, out, "--spec", "auto", "--no-progress")
    check(f"the built-in spec {arch}" in r.stderr, f"{arch}: --spec auto says which spec ({r.stderr!r})")
    check("matched no tensor" not in r.stderr,
          f"{arch}: no notes about rules that may find nothing ({r.stderr!r})")
    ok = compare(f"{arch}: convert --spec auto", arch_models.load(out), want)
    d9d_ok("convert", out, back, "--reverse", "--no-progress")
    ok &= compare(f"{arch}: --reverse", arch_models.load(back), hf)
    d9d_ok("verify", src, out, "--spec", arch, "--no-progress")  # --spec NAME: the same spec
    if ok:
        print(f"ok: {arch}: {len(hf)} tensors -> {len(want)}, and back, bit-exact")
    return src


def test_errors(tmp, sources):
    # A missing expert, named.
    src = os.path.join(tmp, "no-expert")
    state = arch_models.state("qwen3_moe")
    victim = "model.layers.1.mlp.experts.77.up_proj.weight"
    del state[victim]
    arch_models.write_state(src, state, arch_models.config("qwen3_moe"))
    expect_failure("qwen3_moe without one expert's up_proj", ["convert", src, src + "-out", "--spec",
                   "auto"], [victim], out=src + "-out")
    # The last expert, which a stack over the experts present would not miss.
    src = os.path.join(tmp, "no-last-expert")
    state = arch_models.state("mixtral")
    n = arch_models.config("mixtral")["num_local_experts"]
    for w in ("w1", "w2", "w3"):
        del state[f"model.layers.0.block_sparse_moe.experts.{n - 1}.{w}.weight"]
    arch_models.write_state(src, state, arch_models.config("mixtral"))
    expect_failure("mixtral without its last expert", ["convert", src, src + "-out", "--spec", "auto"],
                   [f"experts.{n - 1}."], out=src + "-out")
    # A missing FP8 scale: the weight is then not quantized, and its fusion with a quantized one
    # would separate the others from their scales.
    src = os.path.join(tmp, "no-scale")
    state = arch_models.state("deepseek_v3")
    victim = "model.layers.0.mlp.up_proj.weight_scale_inv"
    del state[victim]
    arch_models.write_state(src, state, arch_models.config("deepseek_v3"))
    expect_failure("deepseek_v3 without one scale", ["convert", src, src + "-out", "--spec", "auto"],
                   ["model.layers.0.mlp.up_proj.weight"], out=src + "-out")
    # A tensor the spec does not know.
    src = os.path.join(tmp, "extra")
    state = arch_models.state("llama")
    state["model.layers.0.self_attn.rotary_emb.extra"] = state["model.norm.weight"]
    arch_models.write_state(src, state, arch_models.config("llama"))
    expect_failure("llama with a tensor the spec does not know", ["convert", src, src + "-out",
                   "--spec", "auto"], ["model.layers.0.self_attn.rotary_emb.extra"], out=src + "-out")
    # config.json no spec claims, and none at all.
    src = os.path.join(tmp, "unknown")
    cfg = dict(arch_models.config("llama"), model_type="mamba", architectures=["MambaForCausalLM"])
    arch_models.write_state(src, arch_models.state("llama"), cfg)
    expect_failure("a model_type no spec claims", ["convert", src, src + "-out", "--spec", "auto"],
                   ['"model_type": "mamba"', "MambaForCausalLM", "qwen3_moe (qwen3_moe",
                    "--spec FILE.json"], out=src + "-out")
    os.remove(os.path.join(src, "config.json"))
    expect_failure("no config.json", ["plan", src, "--spec", "auto"], ["has no config.json"])
    expect_failure("--spec naming nothing", ["plan", sources["llama"], "--spec", "lama"],
                   ["no such file, and no built-in spec", "llama ("])


def main():
    tmp = tempfile.mkdtemp(prefix="d9d-archs-")
    try:
        test_listing()
        sources = {arch: test_arch(arch, tmp) for arch in arch_models.ARCHS}
        test_errors(tmp, sources)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish("cli_archs")


main()
