#!/usr/bin/env python3
"""Tensor- and expert-parallel conversions (the built-in *_tp specs; Note [slice pushdown]).

  - `d9d convert CKPT OUT --spec llama_tp --set tp=N --set tp_rank=r`, for N = 1, 2, 3, 4, 8 and
    every r, on tiny faithful llama / qwen3 / qwen3_moe checkpoints: every tensor bit for bit what
    numpy makes of the transformers tensors by the layout's rules (torch.chunk pieces; q, k, v and
    gate, up fused per rank; KV heads replicated to tp / n_kv_heads ranks when fewer than the
    ranks; the vocabulary padded with zero rows to a multiple of max(64, tp); experts by ep);
  - the ranks' pieces put back together are the single-process `llama` conversion's tensors;
  - `d9d plan --set tp=4` reports every rank's bytes read (the plan's sum is what a run reads), and
    names an op that cannot narrow its read;
  - from a cold page cache, a rank's conversion reads about its share of the checkpoint: at most
    the plan's bytes plus a page per row run plus 4 MiB (the process's block input, getrusage),
    where the whole-tensor conversion reads all of it;
  - `mpirun -np 4 d9d convert CKPT OUT --spec llama_tp` writes OUT/rank-0000r/, byte for byte the
    single-process rank-r checkpoints (when mpirun is given).

  python3 tp.py D9D SPECS_DIR [MPIRUN]
"""
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np

import arch_models
from clitest import (D9D, check, d9d, d9d_ok, finish, llama_state, load_checkpoint,
                     save_hub_sharded)

MPIRUN = sys.argv[3] if len(sys.argv) > 3 else None
SPEC = {"llama": "llama_tp", "qwen3": "qwen3_tp", "qwen3_moe": "qwen3_moe_tp"}


def piece(a, axis, parts, index):
    """The index-th of `parts` pieces of `a` along `axis` by torch.chunk's rule (an index past its
    last piece is empty)."""
    n = a.shape[axis]
    size = -(-n // parts)
    start = min(index * size, n)
    return np.take(a, np.arange(start, start + min(size, n - start)), axis=axis)


def padded(a, multiple):
    rows = -(-a.shape[0] // multiple) * multiple
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


def expected(hf, cfg, tp, r, ep=1):
    """Rank r's tensors of the *_tp specs' layout, made by numpy from the transformers tensors."""
    nkv = cfg["num_key_value_heads"]
    kv_parts = min(tp, nkv)
    kv_index = r * kv_parts // tp
    per_ep = tp // ep
    multiple = max(64, tp)
    embed = hf["model.embed_tokens.weight"]
    out = {"embed.weight": piece(padded(embed, multiple), 0, tp, r),
           "lm_head.weight": piece(padded(hf.get("lm_head.weight", embed), multiple), 0, tp, r),
           "norm.weight": hf["model.norm.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        m, p = f"model.layers.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            q = hf.get(f"{m}self_attn.q_proj.{kind}")
            if q is not None:
                out[f"{p}attn.qkv.{kind}"] = np.concatenate([
                    piece(q, 0, tp, r),
                    piece(hf[f"{m}self_attn.k_proj.{kind}"], 0, kv_parts, kv_index),
                    piece(hf[f"{m}self_attn.v_proj.{kind}"], 0, kv_parts, kv_index)])
        out[f"{p}attn.out.weight"] = piece(hf[f"{m}self_attn.o_proj.weight"], 1, tp, r)
        for norm, to in (("self_attn.q_norm", "attn.q_norm"), ("self_attn.k_norm", "attn.k_norm"),
                         ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")):
            if f"{m}{norm}.weight" in hf:
                out[f"{p}{to}.weight"] = hf[f"{m}{norm}.weight"]
        if f"{m}mlp.gate_proj.weight" in hf:
            out[f"{p}mlp.gate_up.weight"] = np.concatenate([
                piece(hf[f"{m}mlp.gate_proj.weight"], 0, tp, r),
                piece(hf[f"{m}mlp.up_proj.weight"], 0, tp, r)])
            out[f"{p}mlp.down.weight"] = piece(hf[f"{m}mlp.down_proj.weight"], 1, tp, r)
        if f"{m}mlp.gate.weight" in hf:
            out[f"{p}moe.router.weight"] = hf[f"{m}mlp.gate.weight"]
            experts = range(cfg["num_experts"])
            e = f"{m}mlp.experts."
            gate_up = np.stack([np.concatenate([
                piece(hf[f"{e}{x}.gate_proj.weight"], 0, per_ep, r % per_ep),
                piece(hf[f"{e}{x}.up_proj.weight"], 0, per_ep, r % per_ep)]) for x in experts])
            down = np.stack([piece(hf[f"{e}{x}.down_proj.weight"], 1, per_ep, r % per_ep)
                             for x in experts])
            out[f"{p}moe.experts.gate_up.weight"] = piece(gate_up, 0, ep, r // per_ep)
            out[f"{p}moe.experts.down.weight"] = piece(down, 0, ep, r // per_ep)
    return out


def same(got, want, what):
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [k for k in sorted(set(got) & set(want))
           if got[k].dtype != want[k].dtype or got[k].shape != want[k].shape
           or got[k].tobytes() != want[k].tobytes()]
    return check(not missing and not extra and not bad,
                 f"{what}: every tensor bit for bit (missing {missing[:3]}, extra {extra[:3]}, "
                 f"differ {bad[:3]})")


def convert_rank(src, out, spec, tp, r, *extra):
    return d9d_ok("convert", src, out, "--spec", spec, "--set", f"tp={tp}",
                  "--set", f"tp_rank={r}", "--no-progress", *extra)


def disk_read_bytes(*args):
    """Runs d9d; returns (CompletedProcess, bytes its process read from the block device)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock
    r = d9d(*args)
    return r, (resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock - before) * 512


def drop_from_page_cache(ckpt):
    for name in os.listdir(ckpt):
        fd = os.open(os.path.join(ckpt, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def test_layouts(tmp):
    for arch in ("llama", "qwen3", "qwen3_moe"):
        src = os.path.join(tmp, arch)
        arch_models.write(arch, src, shard_bytes=200_000)
        hf, cfg = load_checkpoint(src), arch_models.config(arch)
        layouts = [(tp, 1) for tp in (1, 2, 3, 4, 8)] + ([(4, 2), (4, 4)] if arch == "qwen3_moe" else [])
        for tp, ep in layouts:
            for r in range(tp):
                out = os.path.join(tmp, f"{arch}-tp{tp}-ep{ep}-r{r}")
                ep_args = ["--set", f"ep={ep}", "--set", f"ep_rank={r // (tp // ep)}"] if ep > 1 else []
                convert_rank(src, out, SPEC[arch], tp, r, *ep_args)
                same(load_checkpoint(out), expected(hf, cfg, tp, r, ep),
                     f"{arch} tp={tp} ep={ep} rank {r}")
        print(f"ok: {arch}: every rank of tp 1, 2, 3, 4, 8 matches numpy")


def test_union(tmp):
    """The ranks' pieces together are the whole-model conversion's tensors."""
    src = os.path.join(tmp, "llama")
    cfg = arch_models.config("llama")
    whole = os.path.join(tmp, "llama-whole")
    d9d_ok("convert", src, whole, "--spec", "llama", "--no-progress")
    full = load_checkpoint(whole)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim", hidden // heads)
    q_rows = heads * head_dim
    for tp in (1, 2, 3, 4, 8):
        ranks = [load_checkpoint(os.path.join(tmp, f"llama-tp{tp}-ep1-r{r}")) for r in range(tp)]
        q_per_rank = [piece(np.zeros(q_rows), 0, tp, r).shape[0] for r in range(tp)]
        for i in range(cfg["num_hidden_layers"]):
            p = f"layers.{i}."
            q = np.concatenate([rk[p + "attn.qkv.weight"][:n] for rk, n in zip(ranks, q_per_rank)])
            check(q.tobytes() == full[p + "attn.qkv.weight"][:q_rows].tobytes(),
                  f"tp={tp} layer {i}: the ranks' q rows are the fused qkv's q rows")
            out = np.concatenate([rk[p + "attn.out.weight"] for rk in ranks], axis=1)
            check(out.tobytes() == full[p + "attn.out.weight"].tobytes(),
                  f"tp={tp} layer {i}: the ranks' out columns are the whole out")
            down = np.concatenate([rk[p + "mlp.down.weight"] for rk in ranks], axis=1)
            check(down.tobytes() == full[p + "mlp.down.weight"].tobytes(),
                  f"tp={tp} layer {i}: the ranks' down columns are the whole down")
            gates = [rk[p + "mlp.gate_up.weight"] for rk in ranks]
            gate = np.concatenate([g[:g.shape[0] // 2] for g in gates])
            inter = full[p + "mlp.gate_up.weight"].shape[0] // 2
            check(gate.tobytes() == full[p + "mlp.gate_up.weight"][:inter].tobytes(),
                  f"tp={tp} layer {i}: the ranks' gate rows are the fused gate_up's gate rows")
        embed = np.concatenate([rk["embed.weight"] for rk in ranks])
        vocab = full["embed.weight"].shape[0]
        check(embed[:vocab].tobytes() == full["embed.weight"].tobytes() and
              not embed[vocab:].view(np.uint16).any() and embed.shape[0] % max(64, tp) == 0,
              f"tp={tp}: the ranks' embedding rows are the embedding, then zero rows up to a "
              f"multiple of {max(64, tp)}")
    print("ok: the ranks' pieces put together are the whole conversion's tensors")


def test_gqa(tmp):
    """8 ranks, 2 KV heads: each KV head on 4 ranks, whole."""
    cfg = arch_models.config("llama")
    hf = load_checkpoint(os.path.join(tmp, "llama"))
    nkv, heads = cfg["num_key_value_heads"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // heads)
    k = hf["model.layers.0.self_attn.k_proj.weight"]
    for r in range(8):
        got = load_checkpoint(os.path.join(tmp, f"llama-tp8-ep1-r{r}"))["layers.0.attn.qkv.weight"]
        q_rows = piece(np.zeros(heads * head_dim), 0, 8, r).shape[0]
        head = r * nkv // 8
        check(got[q_rows:q_rows + head_dim].tobytes() == k[head * head_dim:(head + 1) * head_dim].tobytes(),
              f"tp=8 rank {r}: k is KV head {head} whole (replicated to {8 // nkv} ranks)")
    print("ok: GQA: KV heads replicated to tp / n_kv_heads ranks")


def test_plan(tmp):
    src = os.path.join(tmp, "llama")
    plan = json.loads(d9d_ok("plan", src, "--spec", "llama_tp", "--set", "tp=4", "--json").stdout)
    ranks = plan["ranks"]
    check([r["tp_rank"] for r in ranks] == [0, 1, 2, 3], f"plan --json lists 4 ranks ({ranks})")
    total = plan["input_bytes"]
    for r in ranks:
        check(r["read_bytes"] < total and r["not_narrowed"] == [],
              f"rank {r['tp_rank']} reads {r['read_bytes']} of {total} bytes, every op narrowed")
    check(plan["read_bytes"] == ranks[0]["read_bytes"], "the plan itself is rank 0's (tp_rank's default)")
    text = d9d_ok("plan", src, "--spec", "llama_tp", "--set", "tp=4").stdout
    check("per rank (tp = 4" in text and "(only the parts the outputs need)" in text,
          f"plan's report has the per-rank table ({text[:2000]})")
    # An op that cannot carry a region (interleave: gate and up rows alternating) reads its group
    # whole, and plan says so.
    spec = os.path.join(tmp, "interleaved.json")
    with open(spec, "w") as fh:
        json.dump({"d9d_mapper_spec": 1, "unmatched": "keep", "stages": [
            {"rules": [{"op": "interleave", "sources": [
                "model.layers.{L}.mlp.gate_proj.weight", "model.layers.{L}.mlp.up_proj.weight"],
                "target": "gate_up.{L}", "dim": 0}]},
            {"rules": [{"op": "shard_tensor", "source": "gate_up.{L}", "dim": 0, "parts": 2,
                        "index": 1}]}]}, fh)
    plan = json.loads(d9d_ok("plan", src, "--spec", spec, "--json").stdout)
    check(any(n.startswith("interleave(") for n in plan["not_narrowed"]),
          f"plan names the op that read whole inputs ({plan['not_narrowed']})")
    print("ok: plan reports every rank's reads and the ops not narrowed")


def test_cold_reads(tmp):
    """A rank's conversion from a cold page cache reads about its share of the checkpoint."""
    rng = np.random.default_rng(5)
    # Beside the build (meson test runs in it), on the disk, not on a tmpfs.
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as disk:
        src = os.path.join(disk, "ck")
        state = llama_state(rng, hidden=256, layers=2, heads=8, kv_heads=2, intermediate=2048,
                            vocab=8000, random_bits=True)
        save_hub_sharded(state, src, 4_000_000)
        with open(os.path.join(src, "config.json"), "w") as fh:
            json.dump({"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 2,
                       "num_hidden_layers": 2, "tie_word_embeddings": False}, fh)
        os.sync()  # DONTNEED drops clean pages only
        total = sum(v.nbytes for v in state.values())
        plan = json.loads(d9d_ok("plan", src, "--spec", "llama_tp", "--set", "tp=4", "--json").stdout)
        # Row-parallel slices (attn.out, mlp.down: columns of each row) are a run per row.
        row_runs = sum(v.shape[0] for k, v in state.items() if k.endswith(("o_proj.weight", "down_proj.weight")))
        drop_from_page_cache(src)
        r, whole = disk_read_bytes("convert", src, os.path.join(disk, "whole"), "--spec", "llama",
                                   "--no-progress", "--no-hashes")
        check(r.returncode == 0 and whole >= 0.95 * total,
              f"the whole-tensor conversion reads the checkpoint from a cold cache ({whole} of {total} bytes)")
        for rank in (0, 1, 3):
            drop_from_page_cache(src)
            r, read = disk_read_bytes("convert", src, os.path.join(disk, f"r{rank}"), "--spec",
                                      "llama_tp", "--set", "tp=4", "--set", f"tp_rank={rank}",
                                      "--no-progress", "--no-hashes")
            planned = plan["ranks"][rank]["read_bytes"]
            bound = planned + row_runs * 4096 + (4 << 20)
            check(r.returncode == 0 and 0.9 * planned <= read <= bound and read < 0.45 * total,
                  f"rank {rank} of 4 reads {read} bytes from a cold cache: the plan's {planned} "
                  f"(at most {bound}), of the checkpoint's {total} ({r.stderr.strip()})")
        print(f"ok: cold reads: a rank of 4 reads its share ({read / total:.2f} of the checkpoint)")


def test_mpirun(tmp):
    if MPIRUN is None:
        print("note: no mpirun: the per-rank checkpoints of `mpirun d9d convert` are not checked")
        return
    src = os.path.join(tmp, "llama")
    out = os.path.join(tmp, "llama-mpi")
    r = subprocess.run([MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", "4", D9D, "convert",
                        src, out, "--spec", "llama_tp", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, f"mpirun -np 4 d9d convert --spec llama_tp ({r.stderr[-2000:]})")
    check(sorted(os.listdir(out)) == [f"rank-{r:05d}" for r in range(4)],
          f"one directory per rank ({os.listdir(out)})")
    for rank in range(4):
        mine = os.path.join(out, f"rank-{rank:05d}")
        single = os.path.join(tmp, f"llama-tp4-ep1-r{rank}")
        for name in ("model.safetensors", "d9d-hashes.json"):
            with open(os.path.join(mine, name), "rb") as a, open(os.path.join(single, name), "rb") as b:
                check(a.read() == b.read(), f"mpirun rank {rank}: {name} is the single-process rank's")
    r = subprocess.run([MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", "2", D9D, "convert",
                        src, out + "2", "--spec", "llama_tp", "--set", "tp=4", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 1 and "--set tp=4 but mpirun started 2 ranks" in r.stderr,
          f"tp that is not the world's size is an error ({r.returncode}, {r.stderr[-500:]})")
    # Expert parallelism: --set ep=2 under 4 ranks gives ep_rank = rank / 2.
    moe = os.path.join(tmp, "moe-mpi")
    r = subprocess.run([MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", "4", D9D, "convert",
                        os.path.join(tmp, "qwen3_moe"), moe, "--spec", "qwen3_moe_tp", "--set",
                        "ep=2", "--no-progress"], capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, f"mpirun -np 4 d9d convert --spec qwen3_moe_tp --set ep=2 ({r.stderr[-2000:]})")
    for rank in range(4):
        with open(os.path.join(moe, f"rank-{rank:05d}", "model.safetensors"), "rb") as a, \
                open(os.path.join(tmp, f"qwen3_moe-tp4-ep2-r{rank}", "model.safetensors"), "rb") as b:
            check(a.read() == b.read(), f"mpirun qwen3_moe ep=2 rank {rank}: the single-process rank's")
    # d9d load: each rank loads its share and reports it.
    r = subprocess.run([MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", "2", D9D, "load",
                        src, "--spec", "llama_tp", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 0 and all(f"d9d load rank {k} of 2: " in r.stdout for k in range(2)),
          f"mpirun -np 2 d9d load --spec llama_tp: each rank's report ({r.stdout[-1500:]} {r.stderr[-800:]})")
    r = subprocess.run([MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", "2", D9D, "load",
                        src, "--no-progress"], capture_output=True, text=True, timeout=300)
    check(r.returncode != 0 and "tensor-parallel" in r.stderr,
          f"mpirun d9d load without a tp spec is refused ({r.returncode}, {r.stderr[-500:]})")
    print("ok: mpirun -np 4 writes rank-0000r/ checkpoints, the single-process ones byte for byte")


with tempfile.TemporaryDirectory() as tmp:
    test_layouts(tmp)
    test_union(tmp)
    test_gqa(tmp)
    test_plan(tmp)
    test_cold_reads(tmp)
    test_mpirun(tmp)
finish("cli_tp")
