"""Where the device time of profiled training steps went, from a jax.profiler Perfetto trace.

`t5forge train --profile-steps FIRST:LAST` writes OUTPUT/profile/plugins/profile/<run>/
perfetto_trace.json.gz. This reads it with the standard library alone (the GPU machines have no
TensorBoard profile plugin) and prints, per device thread, the busy time per step and the
kernels that took it, grouped into matrix products, fused attention, other fusions and copies:

    python benchmarks/profile_summary.py run/profile --steps 5 --top 40 --out summary.json

--steps is the number of traced steps (LAST - FIRST + 1), to report milliseconds per step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

# Kernel names by kind, first match wins. cuBLAS/CUTLASS/Triton matmuls carry gemm-like names;
# cuDNN's fused attention kernels are named after the SDPA graph it generated.
KINDS = (
    ("attention", re.compile(r"sdpa|fmha|flash|cudnn|t5_attention", re.I)),
    ("matmul", re.compile(r"gemm|xmma|cutlass|nvjet|wgmma|cublas|matmul|dot", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|transpose", re.I)),
    ("reduction", re.compile(r"reduce|reduction", re.I)),
)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other fusion"


def find_trace(path: str) -> str:
    """The newest perfetto_trace.json.gz at or under `path`."""
    if os.path.isfile(path):
        return path
    found = glob.glob(os.path.join(path, "**", "perfetto_trace.json.gz"), recursive=True)
    if not found:
        raise FileNotFoundError(f"{path}: no perfetto_trace.json.gz under it")
    return max(found, key=os.path.getmtime)


def summarize(trace_path: str, steps: int, top: int, process_pattern: str = "device:GPU") -> dict:
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") != "M":
            continue
        if event["name"] == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        elif event["name"] == "thread_name":
            threads[event["pid"], event["tid"]] = event["args"]["name"]
    per_thread: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    counts: dict = collections.defaultdict(collections.Counter)
    for event in events:
        if event.get("ph") != "X" or process_pattern not in processes.get(event["pid"], ""):
            continue
        key = (processes[event["pid"]], threads.get((event["pid"], event["tid"]), "?"))
        per_thread[key][event["name"]] += event["dur"] / 1000.0  # microseconds -> ms
        counts[key][event["name"]] += 1
    report = []
    for (process, thread), by_name in sorted(per_thread.items()):
        by_kind: dict = collections.defaultdict(float)
        for name, ms in by_name.items():
            by_kind[kind_of(name)] += ms
        ranked = sorted(by_name.items(), key=lambda item: -item[1])[:top]
        report.append(
            {
                "process": process,
                "thread": thread,
                "ms_per_step": sum(by_name.values()) / steps,
                "by_kind_ms_per_step": {k: v / steps for k, v in sorted(by_kind.items())},
                "top": [
                    {
                        "name": name,
                        "ms_per_step": ms / steps,
                        "calls_per_step": counts[process, thread][name] / steps,
                    }
                    for name, ms in ranked
                ],
            }
        )
    return {"trace": trace_path, "steps": steps, "threads": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a perfetto_trace.json.gz or a directory holding one")
    parser.add_argument("--steps", type=int, default=1, help="traced steps, for per-step times")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--process", default="device:GPU", help="processes whose name holds this")
    parser.add_argument("--out")
    args = parser.parse_args()
    summary = summarize(find_trace(args.path), args.steps, args.top, args.process)
    for thread in summary["threads"]:
        print(f"\n{thread['process']} / {thread['thread']}: {thread['ms_per_step']:.2f} ms/step")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in thread["by_kind_ms_per_step"].items()))
        for row in thread["top"]:
            ms, calls = row["ms_per_step"], row["calls_per_step"]
            print(f"  {ms:8.3f} ms {calls:6.1f}x  {row['name'][:110]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
