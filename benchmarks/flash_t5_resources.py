"""Screen flash_t5's tile choices for an H100 without one: shared memory, registers, spills.

Lowers the four kernels (forward, dK/dV, dQ, bias gradient) for CUDA on any machine, as
jax's cross-platform lowering allows, keeps each kernel's Triton module (TTIR), and compiles
it for sm_90 with the `triton` package's own compiler and ptxas (`pip install triton`; no GPU
or driver needed). A tile that spills registers to the stack or needs more than the H100's
227 KB of shared memory per block is not worth a device minute.

The `triton` package is newer than the Triton inside jaxlib, so its numbers are a close
estimate of what XLA will build, not the same binary.

    python benchmarks/flash_t5_resources.py --tiles 64,64,4,2 128,64,8,2 --heads 12
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5forge.model import flash_t5  # noqa: E402

H100_SHARED_BYTES = 227 * 1024


def triton_modules(shape, causal, with_bias, tiles):
    """The TTIR text of each kernel in the gradient of t5_attention, by kernel name."""
    batch, q_len, k_len, heads, d = shape
    block_q, block_k, num_warps, num_stages = tiles
    q = jax.ShapeDtypeStruct((batch, q_len, heads, d), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((batch, k_len, heads, d), jnp.bfloat16)
    bias = jax.ShapeDtypeStruct((1, heads, q_len, k_len), jnp.bfloat16) if with_bias else None
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)

    def loss(q, k, v, bias, lengths):
        out = flash_t5.t5_attention(
            q,
            k,
            v,
            bias,
            lengths,
            causal=causal,
            block_q=block_q,
            block_k=block_k,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        return jnp.sum(out.astype(jnp.float32))

    grad = jax.grad(loss, (0, 1, 2, 3) if with_bias else (0, 1, 2))
    return flash_t5.triton_modules_for_cuda(grad, q, kv, kv, bias, lengths)


def compile_for_sm90(name, ttir, num_warps, num_stages):
    """Registers, stack (spill) bytes and shared memory of one kernel built for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.ttir")
        with open(path, "w") as f:
            f.write(ttir)
        try:
            kernel = triton.compile(
                path,
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": num_warps, "num_stages": num_stages},
            )
        except Exception as e:  # the compiler's own message is the result here
            return {"error": str(e).strip().splitlines()[-1][:300]}
        cubin = os.path.join(tmp, f"{name}.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        usage = subprocess.run(
            [os.path.join(tools, "cuobjdump"), "-res-usage", cubin],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
    shared = kernel.metadata.shared
    return {
        "registers": int(found.group(1)) if found else None,
        "stack_bytes": int(found.group(2)) if found else None,
        "shared_bytes": shared,
        "fits": shared <= H100_SHARED_BYTES and (found is None or found.group(2) == "0"),
        "wgmma_instructions": kernel.asm["ptx"].count("wgmma.mma_async"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiles",
        nargs="+",
        default=["64,64,4,2", "128,64,8,2", "64,128,4,3", "128,128,8,2"],
        help="block_q,block_k,num_warps,num_stages",
    )
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    try:
        import triton  # noqa: F401
    except ImportError:
        raise SystemExit(
            "flash_t5_resources.py needs the triton package: pip install triton"
        ) from None
    shapes = {  # t5.1.1 at 512/114: encoder self, decoder self (causal), cross (no bias)
        "encoder": ((8, 512, 512, args.heads, args.head_dim), False, True),
        "decoder": ((8, 114, 114, args.heads, args.head_dim), True, True),
        "cross": ((8, 114, 512, args.heads, args.head_dim), False, False),
    }
    results = []
    for spec in args.tiles:
        tiles = tuple(int(x) for x in spec.split(","))
        for where, (shape, causal, with_bias) in shapes.items():
            modules = triton_modules(shape, causal, with_bias, tiles)
            for name, ttir in sorted(modules.items()):
                row = {"tiles": spec, "attention": where, "kernel": name}
                row.update(compile_for_sm90(name, ttir, tiles[2], tiles[3]))
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
