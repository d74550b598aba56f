#!/usr/bin/env python3
"""The conversion benchmark: `d9d convert` beside the reference Python d9d 0.24 and `cp -r`.

  .venv/bin/python3 bench/convert/run.py [BUILD_DIR] [--dir DIR] [--runs 5] [--layers 16]
  .venv/bin/python3 bench/convert/run.py [BUILD_DIR] --model moe [--layers 9] [--experts 128]

--model llama (the default) makes (once, cached in DIR) a synthetic Llama-shaped checkpoint of
about 2 GB: Llama-3.2-1B's shapes (hidden 2048, 32 heads, 8 KV heads, intermediate 8192, 16
layers, tied embeddings) with a 32000-token vocabulary. --model moe makes a Qwen3-MoE-shaped one of
about 2 GB (1.99 GB at the defaults): hidden 1024, 16 heads, 4 KV heads, head_dim 64, q/k norms,
a router and 128 experts a layer (moe_intermediate 256), 9 layers, a 32000-token vocabulary,
untied lm_head, 3,540 tensors, with a transformers-like config.json (model_type qwen3_moe,
Qwen3MoeForCausalLM, num_experts). Either is BF16 random bits, written by Python safetensors and
sharded by huggingface_hub at 1 GB. It reads the files once so they are page-cached, then for
--runs rounds, each tool in a fresh process on the same bytes:

  d9d convert      llama: examples/specs/llama_hf_to_fused.json (qkv = cat(q, k, v), gate_up =
                   cat(gate, up), renames); moe: --spec auto, which picks the built-in
                   qwen3_moe spec from config.json (qkv = cat(q, k, v); experts stacked:
                   gate_up [E, 2I, H] = stack over e of cat(gate_e, up_e), down [E, H, I] = stack
                   over e of down_e; renames); --shard-size 1GiB, --memory-budget 256MiB (the
                   README's figures were measured at it), defaults otherwise (fsync on)
  d9d --no-fsync   the same without fsync, as the two below write
  reference        Python d9d 0.24: read_model_state piped into write_model_state_local, CPU
                   torch, shard_size_gb=1, the same conversion built from the reference's mapper
                   classes (bench/convert/reference_convert.py; the moe one from
                   config.json's num_experts), in $D9D_REF_VENV, default .venv-ref; skipped with
                   a note when it cannot run
  cp -r            the same bytes copied (the limit: read once, write once), and the same
                   followed by `sync` of the copied files (durable, as d9d's default output is)

(in a shuffled order each round, each measured run after a discarded one of the same tool:
Note [warm-up run]) and reports the median seconds, GB/s (source bytes / seconds), peak RSS (GNU time's maximum
resident set size; Note [measuring peak RSS]) and the ratios as a Markdown table, with the load
average. The output is written under DIR and
removed after each run (`sync` between runs, untimed, so one run's writeback does not land in the
next). Finally d9d's output is checked tensor by tensor against the reference's (d9d verify).
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(ROOT, "examples", "specs", "llama_hf_to_fused.json")
DEFAULT_LAYERS = {"llama": 16, "moe": 9}


def make_checkpoint(src, layers):
    """The Llama-shaped checkpoint (--model llama)."""
    hidden, heads, kv_heads, inter, vocab = 2048, 32, 8, 8192, 32000
    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * hd, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * hd, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * hd, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * hd),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        })
    shapes["model.norm.weight"] = (hidden,)
    write_checkpoint(src, shapes)


# The Qwen3-MoE-shaped checkpoint's dimensions (--model moe); 1.99 GB at 9 layers, 128 experts.
MOE = dict(hidden=1024, heads=16, kv_heads=4, head_dim=64, moe_inter=256, vocab=32000)


def make_moe_checkpoint(src, layers, experts):
    """The Qwen3-MoE-shaped checkpoint (--model moe), with transformers' names and a config.json."""
    m = MOE
    hidden, hd = m["hidden"], m["head_dim"]
    shapes = {"model.embed_tokens.weight": (m["vocab"], hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (m["heads"] * hd, hidden),
            p + "self_attn.k_proj.weight": (m["kv_heads"] * hd, hidden),
            p + "self_attn.v_proj.weight": (m["kv_heads"] * hd, hidden),
            p + "self_attn.o_proj.weight": (hidden, m["heads"] * hd),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate.weight": (experts, hidden),
        })
        for e in range(experts):
            x = p + f"mlp.experts.{e}."
            shapes.update({
                x + "gate_proj.weight": (m["moe_inter"], hidden),
                x + "up_proj.weight": (m["moe_inter"], hidden),
                x + "down_proj.weight": (hidden, m["moe_inter"]),
            })
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (m["vocab"], hidden)
    config = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "decoder_sparse_step": 1,
        "eos_token_id": 2,
        "head_dim": hd,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 32768,
        "max_window_layers": layers,
        "mlp_only_layers": [],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": m["moe_inter"],
        "norm_topk_prob": True,
        "num_attention_heads": m["heads"],
        "num_experts": experts,
        "num_experts_per_tok": min(8, experts),
        "num_hidden_layers": layers,
        "num_key_value_heads": m["kv_heads"],
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": m["vocab"],
    }
    write_checkpoint(src, shapes, config)


def write_checkpoint(src, shapes, config=None):
    """BF16 random bits of these shapes, sharded at 1 GB by huggingface_hub, written to src (by way
    of src.partial), with config.json where given."""
    import ml_dtypes
    import numpy as np
    import safetensors.numpy as stnp
    from huggingface_hub import split_state_dict_into_shards_factory

    rng = np.random.default_rng(2026)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    sizes = {k: int(np.prod(s)) * 2 for k, s in shapes.items()}
    split = split_state_dict_into_shards_factory(
        sizes, get_storage_size=lambda n: n, filename_pattern="model{suffix}.safetensors",
        max_shard_size="1GB")
    tmp = src + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for filename, names in split.filename_to_tensors.items():
        tensors = {k: rng.integers(0, 1 << 16, size=shapes[k], dtype=np.uint16).view(bf16)
                   for k in names}
        stnp.save_file(tensors, os.path.join(tmp, filename), metadata={"format": "pt"})
        del tensors
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, fh, indent=2)
    if config is not None:
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(config, fh, indent=2)
    os.rename(tmp, src)


def source_bytes(src):
    return sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)
               if f.endswith(".safetensors"))


def warm(src):
    """Reads the source once so it is page-cached, into one small buffer: reading it in fresh
    64 MB bytes objects (mmap, munmap, 32 times) made the next d9d run 2x slower here (Note
    [warm-up run])."""
    buf = bytearray(4 << 20)
    for f in sorted(os.listdir(src)):
        with open(os.path.join(src, f), "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


TIME = "/usr/bin/time"


def run_once(cmd):
    """Wall seconds and peak RSS (bytes) of one process.

    Note [measuring peak RSS]: a child's ru_maxrss includes the RSS of the process that spawned
    it (Linux carries the high-water mark of the old address space across exec), so wait4 on a
    child of this Python driver would add the driver's own memory. GNU time, itself small, spawns
    the command and reports that grandchild's figure; wait4 is the fallback without it.
    """
    if os.access(TIME, os.X_OK):
        with tempfile.NamedTemporaryFile("r") as rep, tempfile.TemporaryFile() as errf:
            t0 = time.perf_counter()
            code = subprocess.call([TIME, "-f", "%M", "-o", rep.name, *cmd],
                                   stdout=subprocess.DEVNULL, stderr=errf)
            seconds = time.perf_counter() - t0
            errf.seek(0)
            err = errf.read().decode(errors="replace")
            if code != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
            return seconds, int(rep.read().split()[-1]) * 1024
    with tempfile.TemporaryFile() as errf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        errf.seek(0)
        err = errf.read().decode(errors="replace")
    code = proc.returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def settle(out):
    """Removes the last run's output; sync, so its writeback does not land in the next run."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"])


def loadavg():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-bench-convert"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", choices=["llama", "moe"], default="llama",
                    help="the checkpoint and conversion (default: llama)")
    ap.add_argument("--layers", type=int,
                    help=f"default: {DEFAULT_LAYERS['llama']} (llama), {DEFAULT_LAYERS['moe']} (moe)")
    ap.add_argument("--experts", type=int, default=128, help="experts a layer (moe; default 128)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="measure every run (default: a discarded run of the tool first)")
    ap.add_argument("--make", metavar="SRC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.layers is None:
        args.layers = DEFAULT_LAYERS[args.model]
    if args.make:
        if args.model == "moe":
            make_moe_checkpoint(args.make, args.layers, args.experts)
        else:
            make_checkpoint(args.make, args.layers)
        return

    d9d = os.path.join(ROOT, args.build, "d9d", "cli", "d9d")
    if not os.access(d9d, os.X_OK):
        subprocess.run(["ninja", "-C", os.path.join(ROOT, args.build), "d9d/cli/d9d"], check=True)
    venv = os.environ.get("D9D_REF_VENV", os.path.join(ROOT, ".venv-ref"))
    ref_python = os.path.join(venv, "bin", "python")

    os.makedirs(args.dir, exist_ok=True)
    if args.model == "moe":
        src = os.path.join(args.dir, f"qwen3moe-{args.layers}l-{args.experts}e")
        spec = "auto"
    else:
        src = os.path.join(args.dir, f"llama-{args.layers}l")
        spec = SPEC
    if not os.path.exists(src):
        print(f"making the source checkpoint in {src} ...", file=sys.stderr)
        # In a child, so that this driver stays small (Note [measuring peak RSS]).
        subprocess.run([sys.executable, os.path.abspath(__file__), "--make", src, "--model",
                        args.model, "--layers", str(args.layers), "--experts",
                        str(args.experts)], check=True)
    nbytes = source_bytes(src)
    out = os.path.join(args.dir, "out")
    warm(src)

    tools = [
        ("d9d convert", [d9d, "convert", src, out, "--spec", spec, "--shard-size", "1GiB",
                         "--memory-budget", "256MiB", "--no-progress"]),
        ("d9d convert --no-fsync", [d9d, "convert", src, out, "--spec", spec, "--shard-size",
                                    "1GiB", "--memory-budget", "256MiB", "--no-progress",
                                    "--no-fsync"]),
        ("reference (Python d9d 0.24)", [ref_python, os.path.join(HERE, "reference_convert.py"),
                                         src, out, "1.0"]),
        ("cp -r", ["cp", "-r", src, out]),
        # The same copy made durable as d9d's default is: GNU sync with file names fsyncs them.
        ("cp -r, then sync of its files", ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "sh",
                                           src, out]),
    ]
    notes = []
    probe = subprocess.run([ref_python, "-c", "import d9d.model_state.io, torch, numpy"],
                           capture_output=True, text=True) if os.path.exists(ref_python) else None
    if probe is None or probe.returncode != 0:
        notes.append(f"reference skipped: {ref_python} cannot import d9d 0.24, torch and numpy (safetensors.torch.save_file needs numpy) "
                     f"({(probe.stderr.strip().splitlines() or ['missing'])[-1] if probe else 'missing'})")
        tools = [t for t in tools if not t[0].startswith("reference")]

    load_before = loadavg()
    results = {name: [] for name, _ in tools}
    for r in range(args.runs):
        # A different order each round: this VM's page-cache writes have slow spells, and a
        # fixed order would pin them on whichever tool comes first.
        order = list(tools)
        random.Random(r).shuffle(order)
        for name, cmd in order:
            # Note [warm-up run]: each measured run follows a discarded run of the same tool.
            # This VM gives freed memory back to its host, and the next process to touch that
            # much memory pays the host's page faults: d9d convert --no-fsync took 2.7 s right
            # after the reference (which frees 2.3 GB at exit), 0.55-0.64 s after itself, as
            # long as cp -r. After itself, every tool meets the conditions it makes.
            for _ in range(1 if args.no_warmup else 2):
                settle(out)
                warm(src)
                seconds, rss = run_once(cmd)
            results[name].append((seconds, rss))
            print(f"run {r + 1}: {name}: {seconds:.2f} s, {rss / 2**20:.0f} MiB", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    load_after = loadavg()

    # The reference and d9d wrote the same tensors.
    if any(n.startswith("reference") for n, _ in tools):
        a, b = os.path.join(args.dir, "check-d9d"), os.path.join(args.dir, "check-ref")
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run(tools[0][1][:3] + [a] + tools[0][1][4:], check=True)
        subprocess.run(tools[2][1][:3] + [b, "1.0"], check=True)
        v = subprocess.run([d9d, "verify", a, b, "--no-progress"], capture_output=True, text=True)
        notes.append("d9d's output equals the reference's tensor by tensor" if v.returncode == 0
                     else f"d9d's output DIFFERS from the reference's:\n{v.stdout}")
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)

    med = {n: (statistics.median(s for s, _ in v), max(m for _, m in v)) for n, v in results.items()}
    best = {n: min(s for s, _ in v) for n, v in results.items()}
    base_t, base_rss = med["d9d convert"]
    if args.model == "moe":
        what = (f"Qwen3-MoE-shaped checkpoint ({args.layers} layers, {args.experts} experts a "
                f"layer, BF16, page-cached) to d9d's qwen3_moe layout (--spec auto: fused QKV, "
                f"experts stacked to gate_up [E, 2I, H] and down [E, H, I])")
    else:
        what = (f"Llama-shaped checkpoint ({args.layers} layers, BF16, page-cached) to fused "
                f"QKV + gate_up")
    print(f"\nConversion of a {nbytes / 1e9:.2f} GB {what}, 1 GiB shards; "
          f"median of {args.runs} runs; {os.cpu_count()} cores; load average "
          f"{load_before} before, {load_after} after.\n")
    print("| tool | seconds (median) | GB/s | best run, s | peak RSS | speed vs d9d convert | "
          "peak RSS vs d9d convert |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (t, rss) in med.items():
        print(f"| {name} | {t:.2f} | {nbytes / t / 1e9:.2f} | {best[name]:.2f} | "
              f"{rss / 2**20:.0f} MiB | {base_t / t:.2f} | {rss / base_rss:.2f} |")
    print()
    ref = next((v for n, v in med.items() if n.startswith("reference")), None)
    llama = args.model == "llama"  # the expected figures are the Llama conversion's
    if ref:
        print(f"- d9d convert (fsync on) is {ref[0] / base_t:.1f}x faster than the reference"
              f"{' (expected >= 3x)' if llama else ''}; "
              f"its peak RSS is {base_rss / ref[1]:.2f}x the reference's"
              f"{' (expected <= 0.25x)' if llama else ''}")
    cp = med.get("cp -r")
    cp_sync = med.get("cp -r, then sync of its files")
    nofsync = med["d9d convert --no-fsync"][0]
    if ref:
        print(f"- like for like (neither fsyncs): d9d convert --no-fsync is "
              f"{ref[0] / nofsync:.1f}x faster than the reference")
    if cp and cp_sync:
        print(f"- d9d convert runs at {cp_sync[0] / base_t:.2f} of the speed of cp -r + sync"
              f"{' (expected >= 0.7)' if llama else ''}; d9d convert --no-fsync at "
              f"{cp[0] / nofsync:.2f} of cp -r's")
    for n in notes:
        print(f"\n{n}")


if __name__ == "__main__":
    main()
