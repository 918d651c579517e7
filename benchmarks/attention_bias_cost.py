"""What the relative-position bias's gradient costs in fused attention, per layer.

Times forward + backward of `jax.nn.dot_product_attention` at one T5 encoder layer's shapes
(default: t5.1.1-base at batch 128, 512 tokens, 12 heads of 64) for:

- bias (1, heads, q, k) whose gradient is taken (what training T5 needs),
- the same bias held constant (no bias gradient: the kernel computes dq in place),
- no bias at all,

each with the padding as sequence lengths. The difference between the first two is what a
kernel that sums the bias gradient per relative-position bucket inside the backward pass
could save at most.

    python benchmarks/attention_bias_cost.py --impl cudnn --out bias_cost.json
    python benchmarks/attention_bias_cost.py --impl xla --batch 2 --length 64   # CPU check
    python benchmarks/attention_bias_cost.py --impl pallas [--block-q 128 --num-warps 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, args, repeats: int) -> float:
    """Median milliseconds of fn(*args), after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default="cudnn", choices=("cudnn", "xla", "pallas"))
    parser.add_argument("--block-q", type=int, default=64, help="pallas tiles")
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--num-stages", type=int, default=2)
    parser.add_argument(
        "--bias-grad", default="recompute", choices=("recompute", "store"), help="pallas"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    b, n, h, d = args.batch, args.length, args.heads, args.head_dim
    dtype = jnp.bfloat16

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    q, k, v, do = normal(b, n, h, d), normal(b, n, h, d), normal(b, n, h, d), normal(b, n, h, d)
    bias = normal(1, h, n, n)
    lengths = jnp.asarray(rng.integers(n * 9 // 10, n + 1, size=b), jnp.int32)

    def attention(q, k, v, bias):
        if args.impl == "pallas":
            from t5forge.model.flash_t5 import t5_attention

            return t5_attention(
                q,
                k,
                v,
                bias,
                lengths,
                block_q=args.block_q,
                block_k=args.block_k,
                num_warps=args.num_warps,
                num_stages=args.num_stages,
                bias_grad=args.bias_grad,
                interpret=jax.default_backend() != "gpu",
            )
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            bias=bias,
            query_seq_lengths=lengths,
            key_value_seq_lengths=lengths,
            implementation=args.impl,
        )

    def loss(q, k, v, bias):
        return jnp.sum(attention(q, k, v, bias).astype(jnp.float32) * do.astype(jnp.float32))

    cases = {
        "bias with its gradient": jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))),
        "bias held constant": jax.jit(
            jax.grad(lambda q, k, v, bias: loss(q, k, v, jax.lax.stop_gradient(bias)), (0, 1, 2))
        ),
        "no bias": jax.jit(jax.grad(lambda q, k, v, bias: loss(q, k, v, None), (0, 1, 2))),
        "forward only, bias": jax.jit(attention),
    }
    flops_forward = 4 * b * h * n * n * d
    results = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, **vars(args)}
    for name, fn in cases.items():
        ms = timed(fn, (q, k, v, bias), args.repeats)
        flops = flops_forward * (1 if name.startswith("forward") else 3.5)
        results[name] = {"ms": ms, "tflops_per_second": flops / ms / 1e9}
        print(f"{name:26s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
