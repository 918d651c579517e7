"""Where a T5 training step's time goes: each component timed alone, forward + backward.

Compiling the whole train step takes minutes on a GPU; these pieces compile in seconds, so
one run on an accelerator shows which part is far from its FLOP or bandwidth bound:

- one encoder layer (attention + MLP) per attention path (cuDNN, XLA) and padding mode (boolean
  mask, sequence lengths, extra head features);
- one decoder layer per padding mode of its cross-attention;
- classifier + cross-entropy (+ z-loss): bf16 operands into float32 logits (the default),
  float32 operands, and bf16 logits;
- the token-embedding lookup and its gradient;
- one optimizer update (Adafactor or scaled AdamW) over the model's full parameter tree, per
  parameter and with `--group-updates` (per group of layers).

    python benchmarks/step_components.py --model t5.1.1-small --batch-size 128 --out parts.json

Times are medians of --repeats runs after a warm-up, in milliseconds, with achieved TFLOP/s
where the FLOPs are well defined. On CPU use small shapes (--batch-size 2) to check it runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from t5forge.model.config import get_config
from t5forge.model.layers import PaddingFeatures, PaddingLengths, mixed_dot
from t5forge.model.losses import loss_and_metrics
from t5forge.model.network import DecoderLayer, EncoderLayer, Transformer, attention_mask
from t5forge.model.optim import OptimizerConfig, make_optimizer


def _time(fn, *args, repeats: int) -> float:
    """Median wall time of fn(*args) in ms (blocking on the result), after one warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _fwd_bwd(module, params, *inputs):
    """jit of d(sum of outputs)/d(params, first input): forward + backward of one module."""

    def loss(p, x):
        out = module.apply({"params": p}, x, *inputs[1:])
        return jnp.sum(out.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1))), (params, inputs[0])


def _lengths_batch(batch: int, length: int, rng) -> np.ndarray:
    """Realistic padding: most rows full, some shorter (as span corruption's last chunks)."""
    lengths = np.full(batch, length)
    short = rng.random(batch) < 0.1
    lengths[short] = rng.integers(length // 4, length, short.sum())
    return lengths


def run(args) -> list[dict]:
    cfg = get_config(args.model, dtype=args.dtype)
    b, li, lt = args.batch_size, args.inputs, args.targets
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(args.dtype)
    results = []

    def record(name, ms, flops=None, **extra):
        row = {"component": name, "ms": round(ms, 3), **extra}
        if flops:
            row["tflops_per_s"] = round(flops / ms / 1e9, 1)
        results.append(row)
        print(json.dumps(row), flush=True)

    enc_len = _lengths_batch(b, li, rng)
    segments = (np.arange(li)[None] < enc_len[:, None]).astype(np.int32)
    x_enc = jnp.asarray(rng.normal(size=(b, li, cfg.d_model)), dtype)
    x_dec = jnp.asarray(rng.normal(size=(b, lt, cfg.d_model)), dtype)
    h, k = cfg.num_heads, cfg.d_kv
    layer_flops_enc = (
        3
        * (2 * li * (4 * cfg.d_model * h * k + 3 * cfg.d_model * cfg.d_ff) + 4 * li * li * h * k)
        * b
    )

    # Whole layers, per attention path and padding mode.
    for impl in args.impls:
        for padding in ("mask", "lengths", "features"):
            layer_cfg = cfg.replace(attention_impl=impl, padding=padding)
            bias = jnp.zeros((1, h, li, li), dtype)
            if padding == "mask":
                mask = attention_mask(jnp.asarray(segments), jnp.asarray(segments))
            elif padding == "lengths":
                lengths = jnp.asarray(enc_len, jnp.int32)
                mask = PaddingLengths(lengths, lengths)
            else:
                real = jnp.asarray(segments != 0)
                mask = PaddingFeatures(real, real)
            layer = EncoderLayer(layer_cfg, 0)
            try:
                params = layer.init(jax.random.key(0), x_enc, bias, mask)["params"]
                fn, fn_args = _fwd_bwd(layer, nn.meta.unbox(params), x_enc, bias, mask)
                ms = _time(fn, *fn_args, repeats=args.repeats)
                record(f"encoder layer ({impl}, {padding})", ms, layer_flops_enc)
            except Exception as e:  # noqa: BLE001 - report and go on with the other parts
                record(f"encoder layer ({impl}, {padding})", float("nan"), error=str(e)[:300])

    real = jnp.asarray(segments != 0)
    crosses = {
        "mask": jnp.broadcast_to(real[:, None, None, :], (b, 1, lt, li)),
        "lengths": PaddingLengths(None, jnp.asarray(enc_len, jnp.int32)),
        "features": PaddingFeatures(None, real),
    }
    dec_bias = jnp.zeros((1, h, lt, lt), dtype)
    for padding, cross in crosses.items():
        dec_layer = DecoderLayer(cfg.replace(attention_impl=args.impls[0], padding=padding), 0)
        name = f"decoder layer ({args.impls[0]}, {padding})"
        try:
            params = dec_layer.init(jax.random.key(0), x_dec, x_enc, dec_bias, None, cross)
            fn, fn_args = _fwd_bwd(
                dec_layer, nn.meta.unbox(params["params"]), x_dec, x_enc, dec_bias, None, cross
            )
            record(name, _time(fn, *fn_args, repeats=args.repeats))
        except Exception as e:  # noqa: BLE001 - report and go on with the other parts
            record(name, float("nan"), error=str(e)[:300])

    # The classifier and the loss.
    kernel = jnp.asarray(rng.normal(size=(cfg.d_model, cfg.vocab_size)) * 0.02, jnp.float32)
    targets = jnp.asarray(rng.integers(2, cfg.vocab_size, (b, lt)), jnp.int32)
    weights = jnp.ones((b, lt), jnp.float32)
    # (operands, logits): the default, classifier_dtype=float32, logits_dtype=bfloat16.
    for operand_dtype, logits_dtype in (
        ("bfloat16", "float32"),
        ("float32", "float32"),
        ("bfloat16", "bfloat16"),
    ):

        def head_loss(kernel, x, operand_dtype=operand_dtype, logits_dtype=logits_dtype):
            logits = mixed_dot(x, kernel, operand_dtype, logits_dtype)
            loss, _ = loss_and_metrics(logits, targets, weights)
            return loss

        fn = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
        flops = 3 * 2 * b * lt * cfg.d_model * cfg.vocab_size
        record(
            f"classifier ({operand_dtype} operands) + cross-entropy ({logits_dtype} logits)",
            _time(fn, kernel, x_dec, repeats=args.repeats),
            flops,
        )

    # Embedding lookup and gradient.
    table = jnp.asarray(rng.normal(size=(cfg.vocab_size, cfg.d_model)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, li + lt)), jnp.int32)

    def embed(table):
        return jnp.sum(jnp.take(table, ids, axis=0).astype(dtype).astype(jnp.float32))

    record(
        "embedding lookup + gradient", _time(jax.jit(jax.grad(embed)), table, repeats=args.repeats)
    )

    # One optimizer update over the real parameter tree.
    model = Transformer(cfg)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32)
    )
    params = jax.tree.map(
        lambda s: jnp.full(s.shape, 0.01, s.dtype), nn.meta.unbox(shapes["params"])
    )
    for name, grouped in itertools.product(("adafactor", "adamw-scaled"), (False, True)):
        optimizer, _ = make_optimizer(OptimizerConfig(name=name, group_updates=grouped))
        state = optimizer.init(params)

        @jax.jit
        def update(params, state, grads, optimizer=optimizer):
            updates, state = optimizer.update(grads, state, params)
            return jax.tree.map(jnp.add, params, updates), state

        record(
            f"optimizer update ({name}{', grouped' if grouped else ''})",
            _time(update, params, state, params, repeats=args.repeats),
            parameters=int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t5.1.1-small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--targets", type=int, default=114)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--impls", default=None, help="attention paths (default: cudnn,xla on GPU, xla on CPU)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.impls is None:
        args.impls = "cudnn,xla" if jax.default_backend() == "gpu" else "xla"
    args.impls = args.impls.split(",")
    results = run(args)
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, **vars(args)}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
