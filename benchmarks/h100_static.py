"""What XLA makes of a training step for an H100, compiled on a machine without one.

JAX compiles ahead of time for a GPU it does not have: the CUDA plugin builds a compile-only
H100 from a description (`H100_TARGET` below), and XLA runs its whole GPU pipeline on the
step (fusion, layouts, cuDNN attention graphs, Triton and ptxas for flash_t5's Pallas
kernels) except autotuning, which needs the device: GEMM tilings are XLA's heuristics. The
result is the compiled step's HLO and its memory plan. Per model and variant this reports:

- whether the train step compiles for sm_90 at all (for `attention_impl=pallas` that covers
  flash_t5's kernels end to end, down to the cubin);
- the memory XLA plans: arguments (parameters, optimizer state, batch) plus temporaries. On
  the H100 (session 4) t5.1.1-base measured a 35.6 GB peak; the plan of the same step says
  35.6 GB;
- kernels per step and the bytes each class of kernel reads and writes: matmuls, cuDNN
  attention, Pallas kernels, elementwise fusions, reductions. For the memory-bound classes
  the bytes over 3.0 TB/s (near the H100's practical HBM bandwidth) estimate their time;
  on the H100 GEGLU's backward fusion measured 0.53 ms a call, its bytes say 0.54 ms;
- the operations moving the most bytes, summed over layers.

It compares variants of the code without a GPU; it does not replace timing on one. Without
autotuning XLA can fail to pick tiles for some fused GEMMs: `--override dropout_rate=0.1` stops
with "Couldn't find output tile sizes" (the default, dropout-free pretraining step compiles).

Needs jaxlib's CUDA plugin (`pip install "jax[cuda12]==<this jax's version>"`, best in a
separate virtual environment: importing it on a machine without a GPU warns) and no GPU:

    JAX_PLATFORMS=cpu python benchmarks/h100_static.py --models t5.1.1-small,t5.1.1-base \\
        --variants cudnn,pallas,cudnn-grouped --out h100_static.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# One H100 SXM 80GB as XLA describes it (GpuTargetConfigProto; the values CUDA reports).
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
BANDWIDTH = 3.0e12  # bytes/s for the time estimates of memory-bound kernels

# name -> (model overrides, --group-updates)
VARIANTS = {
    "cudnn": ({"attention_impl": "cudnn", "padding": "lengths"}, False),
    "cudnn-grouped": ({"attention_impl": "cudnn", "padding": "lengths"}, True),
    "pallas": ({"attention_impl": "pallas", "padding": "lengths"}, False),
    "pallas-grouped": ({"attention_impl": "pallas", "padding": "lengths"}, True),
    "xla": ({"attention_impl": "xla", "padding": "mask"}, False),
}

_ARRAY = re.compile(r"\b(bf16|f16|f32|f64|s8|u8|s16|u16|s32|u32|s64|u64|pred)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_INSTRUCTION = re.compile(r"^(?:ROOT )?%(\S+) = (.+?) ([\w-]+)\((.*?)\)(.*)$")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all"}


def array_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple's elements summed)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * _BYTES.get(dtype, 8 if dtype.endswith("64") else 4)
    return total


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """The instructions of each computation of an HLO module's text, and the entry's name."""
    bodies: dict[str, list[str]] = {}
    entry = current = None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%(\S+) .*\{$", line)
        if header:
            current = header.group(2)
            bodies[current] = []
            entry = current if header.group(1) else entry
        elif current and line.startswith("  "):
            bodies[current].append(line.strip())
    return bodies, entry


def kernel_class(op: str, name: str, rest: str) -> str:
    if "cudnn" in rest:
        return "cudnn attention"
    if op == "custom-call" and "triton" in rest:
        return "pallas"
    if "gemm" in name or "__cublas" in rest:
        return "matmul"
    kind = re.search(r"kind=(\w+)", rest)
    if op == "fusion" and kind:
        return {"kLoop": "elementwise", "kInput": "reduction"}.get(kind.group(1), "other fusion")
    return "copy" if op == "copy" else "other"


def kernels(hlo: str) -> list[dict]:
    """Each kernel a step launches (while-loop bodies times their trip count): class, bytes
    read and written, and its operation name with layer indices folded."""
    bodies, entry = computations(hlo)
    shapes: dict[str, str] = {}
    found = []

    def walk(lines: list[str], times: int) -> None:
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            name, shape, op, operands, rest = match.groups()
            shapes[name] = shape
            if op in _FREE:
                continue
            if op == "while":
                body = re.search(r"body=%([^,\s]+)", rest).group(1)
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
                walk(bodies[body], times * (int(trips.group(1)) if trips else 1))
                continue
            inputs = [a.strip().lstrip("%") for a in operands.split(",") if "%" in a]
            op_name = re.search(r'op_name="([^"]*)"', rest)
            label = op_name.group(1) if op_name else name
            label = re.sub(r"layers_\d+", "layers_N", label.replace("jit(train_step)/", ""))
            found.append(
                {
                    "class": kernel_class(op, name, rest),
                    "bytes": sum(array_bytes(shapes.get(i, "")) for i in inputs)
                    + array_bytes(shape),
                    "times": times,
                    "op": label,
                }
            )

    walk(bodies[entry], 1)
    return found


def summarize(found: list[dict], top: int) -> dict:
    by_class: dict[str, dict] = collections.defaultdict(lambda: {"kernels": 0, "gb": 0.0})
    by_op: dict[tuple, dict] = collections.defaultdict(lambda: {"kernels": 0, "gb": 0.0})
    for k in found:
        for table, key in ((by_class, k["class"]), (by_op, (k["class"], k["op"]))):
            table[key]["kernels"] += k["times"]
            table[key]["gb"] += k["bytes"] * k["times"] / 1e9
    memory_bound = ("elementwise", "reduction", "copy", "other fusion")
    for name, row in by_class.items():
        if name in memory_bound:
            row["ms_at_3TBps"] = row["gb"] * 1e9 / BANDWIDTH * 1e3
    ops = sorted(by_op.items(), key=lambda item: -item[1]["gb"])
    return {
        "kernels": sum(k["times"] for k in found),
        "by_class": dict(sorted(by_class.items(), key=lambda item: -item[1]["gb"])),
        "memory_bound_gb": sum(r["gb"] for n, r in by_class.items() if n in memory_bound),
        "top_ops": [
            {"class": cls, "op": op, "kernels": row["kernels"], "gb": round(row["gb"], 3)}
            for (cls, op), row in ops
            if cls != "matmul"
        ][:top],
    }


def compile_step(model: str, overrides: dict, group_updates: bool, batch: int, lengths: dict):
    """The compiled train step of `t5forge train` for one compile-only H100."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies

    from t5forge.model.data import ENCDEC_FEATURES
    from t5forge.model.network import Transformer
    from t5forge.model.optim import OptimizerConfig, make_optimizer
    from t5forge.model.trainer import TrainConfig, TrainState, make_train_step, random_params

    topology = topologies.get_topology_desc(
        platform="cuda", topology="1x1x1", target_config=H100_TARGET
    )
    device = jax.sharding.SingleDeviceSharding(topology.devices[0])
    config = TrainConfig(
        output="unused",
        model=model,
        model_overrides=overrides,
        steps=1,
        batch_size=batch,
        optimizer=OptimizerConfig(name="adafactor", group_updates=group_updates),
    )
    model_config = config.model_config()
    optimizer, schedule = make_optimizer(config.optimizer)
    init_model = Transformer(model_config.replace(padding="mask"))

    init = functools.partial(random_params, init_model, lengths)
    params = jax.eval_shape(init, jax.random.key(0))
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(optimizer.init, params),
    )
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), state)
    batch_shapes = {
        name: jax.ShapeDtypeStruct(
            (batch, lengths["inputs" if name.startswith("encoder") else "targets"]),
            jnp.int32,
            sharding=device,
        )
        for name in ENCDEC_FEATURES
    }
    step = jax.jit(
        make_train_step(Transformer(model_config), optimizer, schedule, config),
        donate_argnums=(0,),
    )
    return step.lower(state, batch_shapes).compile()


def run(model: str, variant: str, args) -> dict:
    from t5forge.model.commands import parse_overrides

    overrides, group_updates = VARIANTS[variant]
    overrides = {**overrides, **parse_overrides(args.override)}
    start = time.perf_counter()
    compiled = compile_step(
        model, overrides, group_updates, args.batch_size, {"inputs": 512, "targets": 114}
    )
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    result = {
        "model": model,
        "variant": variant,
        "overrides": overrides,
        "group_updates": group_updates,
        "batch_size": args.batch_size,
        "compile_seconds": round(seconds, 1),
        "arguments_gb": memory.argument_size_in_bytes / 1e9,
        "temporaries_gb": memory.temp_size_in_bytes / 1e9,
        "planned_peak_gb": (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 1e9,
    }
    result.update(summarize(kernels(compiled.as_text()), args.top))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="t5.1.1-small,t5.1.1-base")
    parser.add_argument("--variants", default="cudnn,pallas", help=", ".join(VARIANTS))
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, all runs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--top", type=int, default=12, help="operations listed per run")
    parser.add_argument("--out")
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    os.environ["T5FORGE_PALLAS_COMPILED"] = "1"  # the kernels, not their interpreter
    results = []
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            r = run(model, variant, args)
            results.append(r)
            print(
                f"{model} {variant}: compiled in {r['compile_seconds']:.0f} s; planned peak "
                f"{r['planned_peak_gb']:.1f} GB; {r['kernels']} kernels; memory-bound "
                f"{r['memory_bound_gb']:.1f} GB",
                flush=True,
            )
            for name, row in r["by_class"].items():
                estimate = row.get("ms_at_3TBps")
                print(
                    f"  {name:16s} {row['kernels']:6d} kernels {row['gb']:8.2f} GB"
                    + (f"  ~{estimate:.1f} ms" if estimate is not None else "")
                )
            for row in r["top_ops"]:
                line = f"{row['gb']:7.2f} GB {row['kernels']:5d}x {row['class']:12s} {row['op']}"
                print("    " + line[:140])
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"target": "H100 SXM (compile-only)", "results": results}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
