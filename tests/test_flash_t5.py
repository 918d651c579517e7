"""flash_t5's Pallas kernels against plain attention, in Pallas's interpret mode (CPU).

Also: each kernel's Triton module built and verified for CUDA without a GPU, and the kernels
under shard_map on 8 simulated devices. Not timed here: benchmarks/gpu_suite.sh pallas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5forge.model.config import get_config
from t5forge.model.flash_t5 import t5_attention, triton_modules_for_cuda
from t5forge.model.losses import loss_and_metrics
from t5forge.model.network import Transformer


def reference(q, k, v, bias, lengths, causal):
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if bias is not None:
        s = s + bias
    k_pos, q_pos = jnp.arange(k.shape[1]), jnp.arange(q.shape[1])
    keep = k_pos[None, None, None, :] < lengths[:, None, None, None]
    if causal:
        keep = keep & (k_pos[None, None, None, :] <= q_pos[None, None, :, None])
    p = jax.nn.softmax(jnp.where(keep, s, -1e30), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize(
    "causal, with_bias, q_len, k_len, lengths, d, bias_grad",
    [
        (False, True, 64, 96, (96, 59, 5), 16, "recompute"),  # encoder-like, ragged lengths
        (True, True, 57, 57, (57, 37, 3), 16, "recompute"),  # decoder: causal, off the tiles
        (False, False, 40, 100, (100, 63, 5), 16, "recompute"),  # cross-attention: no bias
        (False, True, 32, 40, (40, 17, 33), 24, "recompute"),  # head size padded to 32
        (False, True, 64, 96, (96, 59, 5), 16, "store"),  # dS written, summed by XLA
        (True, True, 57, 57, (57, 37, 3), 16, "store"),
    ],
)
def test_forward_and_all_gradients_match_plain_attention(
    causal, with_bias, q_len, k_len, lengths, d, bias_grad
):
    rng = np.random.default_rng(0)
    batch, heads = 3, 2

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    q = normal(batch, q_len, heads, d)
    k, v = normal(batch, k_len, heads, d), normal(batch, k_len, heads, d)
    bias = normal(1, heads, q_len, k_len) if with_bias else None
    lengths = jnp.asarray(lengths, jnp.int32)
    d_out = normal(batch, q_len, heads, d)

    def flash(q, k, v, bias):
        return t5_attention(
            q,
            k,
            v,
            bias,
            lengths,
            causal=causal,
            block_q=32,
            block_k=32,
            bias_grad=bias_grad,
            interpret=True,
        )

    def plain(q, k, v, bias):
        return reference(q, k, v, bias, lengths, causal)

    np.testing.assert_allclose(flash(q, k, v, bias), plain(q, k, v, bias), atol=1e-5, rtol=1e-5)
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    got = jax.grad(lambda *a: jnp.sum(flash(*a) * d_out), argnums)(q, k, v, bias)
    want = jax.grad(lambda *a: jnp.sum(plain(*a) * d_out), argnums)(q, k, v, bias)
    for name, a, b in zip("qkvb", got, want, strict=False):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5, err_msg=f"d{name}")


@pytest.mark.parametrize(
    "padding, impl", [("lengths", "pallas"), ("features", "pallas"), ("lengths", "pallas_bias")]
)
def test_model_with_pallas_attention_matches_xla(padding, impl):
    """A whole t5.1.1-tiny (float32): loss and every gradient leaf, padded batch; padding as
    key lengths, or as the extra head features (head size 32 + 8, padded to 64 in the kernel).
    pallas_bias: flash_t5 for the two self-attentions (they carry the position bias), auto's
    path for cross-attention."""
    cfg = get_config("t5.1.1-tiny", vocab_size=128, dtype="float32")
    rng = np.random.default_rng(1)
    enc = rng.integers(2, 128, (2, 48)).astype(np.int32)
    enc[1, 30:] = 0
    targets = rng.integers(2, 128, (2, 20)).astype(np.int32)
    targets[1, 12:] = 0
    dec_in = np.zeros_like(targets)
    dec_in[:, 1:] = targets[:, :-1]
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(0), enc, dec_in))["params"]

    def loss(params, impl):
        model = Transformer(cfg.replace(attention_impl=impl, padding=padding))
        logits = model.apply({"params": params}, enc, dec_in)
        return loss_and_metrics(logits, targets, (targets > 0).astype(np.float32))[0]

    kernels = str(jax.make_jaxpr(lambda p: loss(p, impl))(params)).count("pallas_call")
    layers = cfg.num_encoder_layers + cfg.num_decoder_layers * (2 if impl == "pallas" else 1)
    assert kernels == layers  # one forward kernel per flash_t5 attention
    (want, want_grads), (got, got_grads) = (
        jax.value_and_grad(loss)(params, i) for i in ("xla", impl)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(got_grads)[0], jax.tree.leaves(want_grads), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
    "causal, with_bias, d, bias_grad",
    [
        (False, True, 64, "recompute"),
        (True, True, 64, "recompute"),
        (False, False, 64, "recompute"),
        (False, True, 72, "recompute"),
        (False, True, 64, "store"),
        (True, True, 64, "store"),
    ],
)
def test_kernels_lower_to_triton_for_cuda_on_any_machine(causal, with_bias, d, bias_grad):
    """Pallas's Triton lowering (block shapes, loads, loops) runs for the GPU without one.

    Cross-platform lowering produces each kernel's Triton module here on the CPU and each is
    verified, so a kernel that Pallas cannot express for Triton fails here, not on the GPU.
    """
    batch, q_len, k_len, heads = 2, 114, 512, 4  # 114 targets are padded to tiles, 72 to 128
    q = jax.ShapeDtypeStruct((batch, q_len, heads, d), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((batch, q_len if causal else k_len, heads, d), jnp.bfloat16)
    bias = jax.ShapeDtypeStruct((1, heads, q_len, kv.shape[1]), jnp.bfloat16) if with_bias else None
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)

    def loss(q, k, v, bias, lengths):
        out = t5_attention(q, k, v, bias, lengths, causal=causal, bias_grad=bias_grad)
        return jnp.sum(out.astype(jnp.float32))

    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    modules = triton_modules_for_cuda(jax.grad(loss, argnums), q, kv, kv, bias, lengths)
    kernels = ["forward", "dkdv", "dq"] + (
        ["dbias"] if with_bias and bias_grad == "recompute" else []
    )
    assert sorted(modules) == sorted(f"t5_attention_{name}" for name in kernels)
    for text in modules.values():
        assert "tt.dot" in text  # the matmuls reach Triton as tensor-core dots


SHARDED = textwrap.dedent(
    """
    import json

    import jax
    import numpy as np
    from flax import linen as nn

    from t5forge.model import sharding as sh
    from t5forge.model.config import get_config
    from t5forge.model.losses import loss_and_metrics
    from t5forge.model.network import Transformer

    cfg = get_config("t5.1.1-tiny", vocab_size=128, dtype="float32", padding="lengths")
    rng = np.random.default_rng(3)
    enc = rng.integers(2, 128, (8, 40)).astype(np.int32)
    enc[1, 25:] = 0
    enc[6, 9:] = 0
    targets = rng.integers(2, 128, (8, 12)).astype(np.int32)
    targets[2, 7:] = 0
    dec = np.zeros_like(targets)
    dec[:, 1:] = targets[:, :-1]
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(0), enc, dec))["params"]

    def loss(p, impl):
        logits = Transformer(cfg.replace(attention_impl=impl)).apply({"params": p}, enc, dec)
        return loss_and_metrics(logits, targets, (targets > 0).astype(np.float32))[0]

    step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    want, want_grads = step(params, "xla")
    mesh = sh.make_mesh("data=2,fsdp=2,tensor=2")
    with jax.set_mesh(mesh), nn.logical_axis_rules(sh.LOGICAL_AXIS_RULES):
        boxed = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), enc, dec)
        placed = jax.device_put(params, sh.logical_shardings(boxed["params"], mesh))
        got, got_grads = step(placed, "pallas")
        jaxpr = str(jax.make_jaxpr(loss, static_argnums=1)(placed, "pallas"))
    relative = {
        jax.tree_util.keystr(path): float(np.abs(a - b).max() / np.abs(b).max())
        for (path, a), b in zip(
            jax.tree_util.tree_flatten_with_path(jax.device_get(got_grads))[0],
            jax.tree.leaves(jax.device_get(want_grads)),
        )
    }
    result = {
        "loss": [float(got), float(want)],
        "grad_rel": relative,
        "shard_maps": jaxpr.count("shard_map"),
    }
    print("RESULT " + json.dumps(result))
    """
)


def test_sharded_pallas_attention_matches_unsharded_xla():
    """Under a data x fsdp x tensor mesh the kernels run per device shard (shard_map on batch
    and heads); loss and every gradient, the position tables' included, match XLA's path."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    got, want = result["loss"]
    assert abs(got - want) <= 1e-5 * abs(want)
    # one shard_map per attention call: 2 encoder self, 2 decoder self, 2 cross (tiny: 2+2)
    assert result["shard_maps"] == 6
    worst = max(result["grad_rel"], key=result["grad_rel"].get)
    assert result["grad_rel"][worst] < 1e-4, worst
    assert any("relpos" in name for name in result["grad_rel"])


def test_packed_batches_take_the_auto_path():
    """Segment masks are not what flash_t5 takes: a packed batch runs auto's path, same logits."""
    cfg = get_config("t5.1.1-tiny", vocab_size=128, dtype="float32")
    rng = np.random.default_rng(5)
    enc = rng.integers(2, 128, (2, 16)).astype(np.int32)
    dec = rng.integers(2, 128, (2, 8)).astype(np.int32)
    enc_seg = np.repeat([[1] * 10 + [2] * 6], 2, axis=0).astype(np.int32)
    dec_seg = np.repeat([[1] * 5 + [2] * 3], 2, axis=0).astype(np.int32)
    dec[:, [0, 5]] = 0
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(0), enc, dec))["params"]

    def logits(impl):
        model = Transformer(cfg.replace(attention_impl=impl))
        return model.apply({"params": params}, enc, dec, enc_seg, dec_seg)

    np.testing.assert_array_equal(logits("pallas"), logits("auto"))
