"""Parity with the reference: random mapper graphs built by the reference Python d9d and by d9d
(tests/mapper/graph_tool) must have the same net groups, the same shards, and fail alike.

    python reference_parity.py GRAPH_TOOL [COUNT]

Needs the reference (`pip install d9d==0.24.0`, which needs torch); exits 77 (skipped) without it.

The reference's ModelStateMapperSequential._merge_groups reads its own (inputs, outputs) pairs as
(outputs, inputs) from its second pass on, so whenever two traced groups merge, every net group
comes out with inputs and outputs swapped ({a} -> chunk -> two renames gives {x, y} -> {a}).
d9d reports {a} -> {x, y}, as the reference documents. The comparison runs against the reference
with that one loop fixed (same algorithm, same orientation on every pass), and counts the graphs
on which the unfixed reference swaps.
"""

import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from oracle import check, finish, skip  # noqa: E402

try:
    from d9d.model_state.mapper.compose import (
        ModelStateMapperParallel,
        ModelStateMapperSequential,
        ModelStateMapperShard,
    )
    from d9d.model_state.mapper.leaf import (
        ModelStateMapperChunkTensors,
        ModelStateMapperConcatenateTensors,
        ModelStateMapperIdentity,
        ModelStateMapperRename,
        ModelStateMapperStackTensors,
        ModelStateMapperUnstackTensors,
    )
except ImportError as e:
    skip("reference_parity", f"the reference d9d 0.24 is not installed: {e}")


from d9d.model_state.mapper import StateGroup

_merge_groups_as_shipped = ModelStateMapperSequential._merge_groups


def _merge_groups_fixed(groups):
    pairs = [(set(i), set(o)) for o, i in groups]
    modified = True
    while modified:
        modified = False
        saved = []
        for ins, outs in pairs:
            merged = False
            for g in saved:
                if g[0] & ins or g[1] & outs:
                    g[0].update(ins)
                    g[1].update(outs)
                    merged = modified = True
            if not merged:
                saved.append((set(ins), set(outs)))
        pairs = saved
    return frozenset(StateGroup(inputs=frozenset(i), outputs=frozenset(o)) for i, o in pairs)


def build_op(op):
    kind = op["op"]
    if kind == "rename":
        return ModelStateMapperRename(op["from"], op["to"])
    if kind == "identity":
        return ModelStateMapperIdentity(op["name"])
    if kind == "stack":
        return ModelStateMapperStackTensors(op["sources"], op["target"], 0)
    if kind == "concat":
        return ModelStateMapperConcatenateTensors(op["sources"], op["target"], 0)
    if kind == "chunk":
        return ModelStateMapperChunkTensors(op["source"], op["targets"], 0)
    if kind == "unstack":
        return ModelStateMapperUnstackTensors(op["source"], op["targets"], 0)
    raise ValueError(kind)


def canon(groups):
    return sorted([sorted(g.inputs), sorted(g.outputs)] for g in groups)


def reference(graph, fixed=True):
    ModelStateMapperSequential._merge_groups = staticmethod(
        _merge_groups_fixed if fixed else _merge_groups_as_shipped)
    try:
        stages = [ModelStateMapperParallel([build_op(op) for op in stage]) for stage in graph["stages"]]
        m = stages[0] if len(stages) == 1 else ModelStateMapperSequential(stages)
        return {
            "groups": canon(m.state_dependency_groups()),
            "shards": [canon(ModelStateMapperShard(m, graph["shards"], s).state_dependency_groups())
                       for s in range(graph["shards"])],
        }
    except ValueError:
        return {"error": "ValueError"}


def random_graph(rng):
    """A few stages of random ops over the keys the stage before left; now and then a stage also
    consumes a key a later stage needs, or produces one that passes through it (both errors)."""
    keys = [f"k{i}" for i in range(rng.randint(1, 30))]
    stages = []
    fresh = iter(range(10**6))
    for _ in range(rng.randint(1, 4)):
        pool = keys[:]
        rng.shuffle(pool)
        ops, out = [], []
        while pool:
            kind = rng.choice(["rename", "rename", "identity", "stack", "concat", "chunk", "unstack", "skip"])
            if kind in ("stack", "concat"):
                n = min(len(pool), rng.randint(1, 4))
                srcs, pool = pool[:n], pool[n:]
                t = f"t{next(fresh)}"
                ops.append({"op": kind, "sources": srcs, "target": t})
                out.append(t)
            else:
                k = pool.pop()
                if kind == "skip":
                    out.append(k)  # untouched: gap filling passes it
                elif kind == "identity":
                    ops.append({"op": "identity", "name": k})
                    out.append(k)
                elif kind == "rename":
                    t = f"t{next(fresh)}" if rng.random() > 0.05 else rng.choice(keys)
                    ops.append({"op": "rename", "from": k, "to": t})
                    out.append(t)
                else:
                    ts = [f"t{next(fresh)}" for _ in range(rng.randint(1, 3))]
                    ops.append({"op": kind, "source": k, "targets": ts})
                    out += ts
        if not ops:
            ops.append({"op": "identity", "name": keys[0]})
        stages.append(ops)
        keys = sorted(set(out)) or keys
    return {"stages": stages, "shards": rng.randint(1, 5)}


def main():
    tool = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    rng = random.Random(20261128)
    errors = swapped = 0
    for i in range(count):
        graph = random_graph(rng)
        want = reference(graph)
        got = json.loads(subprocess.run([tool], input=json.dumps(graph), capture_output=True,
                                        text=True, check=True).stdout)
        if "error" in got:
            got = {"error": got["error"]}
        errors += "error" in want
        if "error" not in want and reference(graph, fixed=False)["groups"] != want["groups"]:
            swapped += 1
        check(got == want,
              lambda: f"graph {i}: {json.dumps(graph)}\n  reference: {want}\n  d9d:       {got}")
    print(f"reference_parity: {errors} graphs fail in both; on {swapped} the shipped reference swaps "
          f"inputs and outputs (see the docstring)")
    finish("reference_parity")


if __name__ == "__main__":
    main()
