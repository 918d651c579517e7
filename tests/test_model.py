"""The Flax T5 model (t5forge.model: config, layers, network, sharding) against independent
references: brute-force relative-position buckets, numpy norms/MLPs/attention, published
parameter counts and FLOPs, and behavioural properties of the network (causality, padding,
packing, dropout, remat, sharding on 8 simulated CPU devices).

Parity with PyTorch transformers checkpoints lives in test_hf_checkpoint.py. Big configs are
only ever built abstractly (jax.eval_shape); everything that runs uses tiny fp32 shapes.

Speed (2 CPU cores): XLA compilation dominates, so each network variant is jitted once
(`compiled_apply`) with one set of batch shapes, weights are drawn with numpy instead of
compiling `init`, and the two slow, independent jobs (abstract parameter census of every
named config plus XLA FLOP counts; the 8-device sharded forward) start in background
processes when the module's first test runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5forge.model import sharding
from t5forge.model.config import (
    NAMED_CONFIGS,
    available_configs,
    describe,
    forward_flops,
    get_config,
    param_count,
    train_flops,
)
from t5forge.model.layers import (
    LayerNorm,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBiases,
    plain_attention,
    relative_position_bucket,
    resolve_attention_impl,
    toeplitz,
)
from t5forge.model.losses import cross_entropy_with_z_loss
from t5forge.model.network import Transformer

VOCAB = 96
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Standard batch shapes of the network tests: (2, ENC_LEN) inputs, (2, DEC_LEN) targets.
ENC_LEN, DEC_LEN = 9, 6


def tiny(**overrides):
    """t5.1.1-tiny (d_model 64, 4 heads of 16, d_ff 128, 2+2 layers, GEGLU) in fp32."""
    return get_config("t5.1.1-tiny", **{"vocab_size": VOCAB, "dtype": "float32", **overrides})


@functools.cache
def abstract_params(cfg):
    """ShapeDtypeStructs of Transformer(cfg).init(...)["params"], never allocated."""
    model = Transformer(cfg)
    tokens = jnp.ones((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda key: model.init(key, tokens, tokens), jax.random.key(0))
    return nn.meta.unbox(shapes)["params"]


def random_params(cfg, seed=0):
    """Weights for the tree of Transformer(cfg), drawn with numpy at T5-like scales."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "embedding":
            value = rng.normal(size=leaf.shape)
        elif name == "scale":
            value = 1 + 0.1 * rng.normal(size=leaf.shape)
        elif name == "rel_embedding":
            value = 0.5 * rng.normal(size=leaf.shape)
        else:
            value = rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


def compiled_apply(cfg, **static):
    """jax.jit(Transformer(cfg).apply) with static keyword arguments, one per config."""
    return _compiled_apply(cfg.replace(name="custom"), **static)  # the name changes nothing


@functools.cache
def _compiled_apply(cfg, **static):
    return jax.jit(functools.partial(Transformer(cfg).apply, **static))


def apply(cfg, params, *args, deterministic=True, rngs=None):
    logits = compiled_apply(cfg, deterministic=deterministic)({"params": params}, *args, rngs=rngs)
    return np.asarray(logits)


def random_tokens(rng, shape, low=2):
    return rng.integers(low, VOCAB, size=shape).astype(np.int32)


def padded_batch(rng, enc_lengths=(7, 4), dec_lengths=(5, 3)):
    """Two rows, right-padded with 0; decoder inputs are shifted right (start with 0)."""
    enc = np.zeros((2, ENC_LEN), np.int32)
    dec = np.zeros((2, DEC_LEN), np.int32)
    for row, n in enumerate(enc_lengths):
        enc[row, :n] = random_tokens(rng, n)
    for row, n in enumerate(dec_lengths):
        dec[row, 1:n] = random_tokens(rng, n - 1)
    return enc, dec


def flat(tree):
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Background jobs


CENSUS = textwrap.dedent(
    """
    import json, math, sys

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from t5forge.model.config import forward_flops, get_config
    from t5forge.model.network import Transformer

    job = json.loads(sys.argv[1])
    tokens = jnp.ones((1, 1), jnp.int32)

    def abstract(cfg):
        model = Transformer(cfg)
        shapes = jax.eval_shape(lambda k: model.init(k, tokens, tokens), jax.random.key(0))
        return nn.meta.unbox(shapes)["params"]

    # Configs that differ only in name or dropout have the same parameter tree, and the tree
    # does not depend on the attention path (test_param_tree_independent_of_attention_impl);
    # the plain path is the cheapest to trace.
    done = {}
    counts = {}
    for name in job["names"]:
        key = get_config(name).replace(name="-", dropout_rate=0.0, attention_impl="plain")
        if key not in done:
            leaves = jax.tree.leaves(abstract(key))
            done[key] = {
                "count": sum(math.prod(x.shape) for x in leaves),
                "dtypes": sorted({str(x.dtype) for x in leaves}),
            }
        counts[name] = done[key]

    flops = {}
    for label, name, overrides in job["flops"]:
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        cfg = get_config(name, **overrides)
        li, lt = 64, 16
        enc, dec = jnp.ones((1, li), jnp.int32), jnp.ones((1, lt), jnp.int32)
        lowered = jax.jit(Transformer(cfg).apply).lower({"params": abstract(cfg)}, enc, dec)
        flops[label] = {"xla": lowered.cost_analysis()["flops"], "ours": forward_flops(cfg, li, lt)}
    print("RESULT " + json.dumps({"counts": counts, "flops": flops}))
    """
)

SHARDED_FORWARD = textwrap.dedent(
    """
    import json

    import jax
    import numpy as np
    from flax import linen as nn

    from t5forge.model import sharding as sh
    from t5forge.model.config import get_config
    from t5forge.model.network import Transformer

    result = {"devices": jax.device_count()}
    cfg = get_config("t5.1.1-tiny", vocab_size=128, dtype="float32")
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 128, (8, 12)).astype(np.int32)
    enc[:, 9:] = 0
    enc[3, 5:] = 0
    dec = rng.integers(2, 128, (8, 6)).astype(np.int32)
    dec[:, 0] = 0
    mesh = sh.make_mesh("data=2,fsdp=2,tensor=2")
    result["mesh"] = dict(mesh.shape)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sh.LOGICAL_AXIS_RULES):
        # random init straight into the sharded layout, as the trainer does
        boxed = jax.eval_shape(model.init, jax.random.key(0), enc, dec)
        shardings = sh.logical_shardings(boxed["params"], mesh)
        init = jax.jit(
            lambda key: nn.meta.unbox(model.init(key, enc, dec))["params"], out_shardings=shardings
        )
        initialised = init(jax.random.key(0))
    params = jax.device_get(initialised)
    reference = np.asarray(jax.jit(model.apply)({"params": params}, enc, dec))

    def std(array):
        return float(np.std(np.asarray(array)))

    layer = params["encoder"]["layers_0"]
    result["init_std"] = {
        "query": std(layer["attention"]["query"]["kernel"]),
        "key": std(layer["attention"]["key"]["kernel"]),
        "out": std(layer["attention"]["out"]["kernel"]),
        "wi_0": std(layer["mlp"]["wi_0"]["kernel"]),
        "wo": std(layer["mlp"]["wo"]["kernel"]),
        "embedding": std(params["token_embedder"]["embedding"]),
        "logits_dense": std(params["decoder"]["logits_dense"]["kernel"]),
        "rel_embedding": std(params["encoder"]["relpos_bias"]["rel_embedding"]),
        "norm_scale": std(layer["pre_attention_layer_norm"]["scale"] - 1),
    }

    with jax.set_mesh(mesh), nn.logical_axis_rules(sh.LOGICAL_AXIS_RULES):
        placed = jax.device_put(params, shardings)
        batch = [jax.device_put(x, sh.batch_sharding(mesh)) for x in (enc, dec)]
        logits = jax.jit(model.apply)({"params": placed}, *batch)
        result["max_diff"] = float(np.abs(np.asarray(logits) - reference).max())
        result["logits_spec"] = str(logits.sharding.spec)

    def describe(array):
        return {
            "spec": [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec],
            "shard": list(array.addressable_shards[0].data.shape),
        }

    result["params"] = {
        "embedding": describe(placed["token_embedder"]["embedding"]),
        "wi_0": describe(placed["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]),
        "query": describe(placed["decoder"]["layers_1"]["self_attention"]["query"]["kernel"]),
        "relpos": describe(placed["encoder"]["relpos_bias"]["rel_embedding"]),
        "norm": describe(placed["encoder"]["encoder_norm"]["scale"]),
        "logits_dense": describe(placed["decoder"]["logits_dense"]["kernel"]),
    }
    same = jax.tree.map(lambda a, b: a.sharding == b.sharding, initialised, placed)
    result["init_sharded_alike"] = all(jax.tree.leaves(same))
    result["batch_shard"] = list(batch[0].addressable_shards[0].data.shape)
    result["default_mesh"] = dict(sh.make_mesh(None).shape)
    result["fsdp_rest"] = dict(sh.make_mesh("fsdp=-1,tensor=2").shape)
    errors = {}
    for spec in ("data=3", "data=3,fsdp=-1", "data=-1,fsdp=-1"):
        try:
            sh.make_mesh(spec)
        except ValueError as e:
            errors[spec] = str(e)
    result["errors"] = errors
    print("RESULT " + json.dumps(result))
    """
)

EFFICIENT_VARIANTS = [
    "t5-efficient-small-el16",
    "t5-efficient-tiny-nl32",
    "t5-efficient-base-dl2",
    "t5-efficient-small-kv32",
    "t5-efficient-mini-ff512-nh4",
    "t5-efficient-large-dm512",
]
CENSUS_NAMES = available_configs() + EFFICIENT_VARIANTS
# (label, name, overrides): forward FLOPs checked against XLA's cost analysis
FLOPS_CASES = [
    ("t5.1.1-small", "t5.1.1-small", {"dtype": "float32"}),
    # tied ReLU (2+2 layers); asymmetric ByT5 (3+1 layers): fewer layers, faster to lower
    (
        "t5.1.0-small-2+2",
        "t5.1.0-small",
        {"dtype": "float32", "num_encoder_layers": 2, "num_decoder_layers": 2},
    ),
    (
        "byt5-small-3+1",
        "byt5-small",
        {"dtype": "float32", "vocab_size": 512, "num_encoder_layers": 3, "num_decoder_layers": 1},
    ),
    # talking heads: the (heads, heads) mixes before and after the softmax are matmuls too
    (
        "th-base-2+2",
        "t5.1.th-base",
        {"dtype": "float32", "vocab_size": 512, "num_encoder_layers": 2, "num_decoder_layers": 2},
    ),
    (
        "n4w10-shrunk",
        "t5.1.n4w10-base",
        {
            "d_model": 128,
            "d_kv": 32,
            "vocab_size": 256,
            "dtype": "float32",
            "num_encoder_layers": 6,
            "num_decoder_layers": 5,
            "layer_heads": [2] * 4 + [4] * 10,
            "layer_d_ff": [256] * 4 + [512] * 10,
        },
    ),
]


class Background:
    """A Python script run in a subprocess; `result()` waits for its "RESULT {json}" line."""

    def __init__(self, script: str, *args: str, devices: int = 1):
        env = dict(os.environ)
        env["JAX_PLATFORMS"] = "cpu"
        if devices > 1:
            flag = f"--xla_force_host_platform_device_count={devices}"
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result = None

    def result(self) -> dict:
        if self._result is None:
            out, err = self.proc.communicate(timeout=600)
            assert self.proc.returncode == 0, err[-4000:]
            line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
            self._result = json.loads(line[len("RESULT ") :])
        return self._result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def background():
    jobs = {
        "census": Background(CENSUS, json.dumps({"names": CENSUS_NAMES, "flops": FLOPS_CASES})),
        "sharded": Background(SHARDED_FORWARD, devices=8),
    }
    yield jobs
    for job in jobs.values():
        job.stop()


@pytest.fixture(scope="module")
def census(background):
    return background["census"].result()


@pytest.fixture(scope="module")
def sharded_run(background):
    return background["sharded"].result()


# ---------------------------------------------------------------------------------------------
# 1. Relative position buckets


def brute_force_bucket(rel: int, bidirectional: bool, num_buckets=32, max_distance=128) -> int:
    """The T5 bucket of offset rel = key - query, from the definition, in exact integers.

    Bidirectional: 16 buckets per direction (keys after the query in the upper half); causal:
    32 buckets for keys at or before the query (later keys fall in bucket 0). In a direction
    with n buckets, distances 0..n/2-1 are exact; a distance d >= n/2 gets n/2 + j, j the
    number of log-spaced thresholds (n/2) * (max_distance / (n/2))^(i / (n/2)), i = 1, 2, ...
    that d reaches, capped at the last bucket.
    """
    distance = -rel
    offset = 0
    n = num_buckets
    if bidirectional:
        n //= 2
        if distance < 0:
            offset = n
            distance = -distance
    else:
        distance = max(distance, 0)
    exact = n // 2
    if distance < exact:
        return offset + distance
    steps = n - exact
    j = 0
    # exact * (max_distance / exact)^(i / steps) <= d  <=>  max^i * exact^(steps - i) <= d^steps
    while j + 1 < steps and (max_distance ** (j + 1) * exact ** (steps - j - 1) <= distance**steps):
        j += 1
    return offset + exact + j


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_brute_force(bidirectional):
    offsets = np.arange(-300, 301)
    got = relative_position_bucket(offsets, bidirectional=bidirectional)
    want = np.array([brute_force_bucket(int(r), bidirectional) for r in offsets])
    bad = offsets[got != want]
    assert bad.size == 0, f"offsets {bad[:10]}: got {got[got != want][:10]}"
    assert got.dtype == np.int32


def test_relative_position_bucket_landmarks():
    def bi(r):
        return int(relative_position_bucket(np.array(r), bidirectional=True))

    def causal(r):
        return int(relative_position_bucket(np.array(r), bidirectional=False))

    # bidirectional: keys before the query 0..15, after it 16..31; 8 exact per side
    assert [bi(r) for r in (0, -1, -7, 1, 7)] == [0, 1, 7, 17, 23]
    assert bi(-8) == 8 and bi(8) == 24
    assert bi(-16) == 10 and bi(-15) == 9  # 8 * 16^(2/8) = 16
    assert bi(-90) == 14 and bi(-91) == 15 and bi(91) == 31  # 8 * 16^(7/8) = 90.5
    assert bi(-128) == 15 and bi(-10_000) == 15 and bi(10_000) == 31
    # causal: all 32 buckets for keys at or before the query, 16 exact; later keys: bucket 0
    assert [causal(r) for r in (0, -1, -15, -16)] == [0, 1, 15, 16]
    assert causal(5) == 0 and causal(-112) == 30 and causal(-113) == 31  # 16 * 8^(15/16)
    assert causal(-10_000) == 31
    buckets = [causal(-d) for d in range(300)]
    assert buckets == sorted(buckets) and set(buckets) == set(range(32))


def test_toeplitz_layout():
    rng = np.random.default_rng(0)
    layout = jax.jit(toeplitz, static_argnums=(1, 2))
    for q_len, k_len in [(1, 5), (3, 7), (7, 3)]:
        per_offset = rng.normal(size=(2, q_len + k_len - 1)).astype(np.float32)
        got = np.asarray(layout(jnp.asarray(per_offset), q_len, k_len))
        want = np.empty((2, q_len, k_len), np.float32)
        for i in range(q_len):
            for j in range(k_len):
                want[:, i, j] = per_offset[:, (j - i) + (q_len - 1)]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_biases_equal_direct_gather(bidirectional):
    module = RelativePositionBiases(num_heads=3, bidirectional=bidirectional)
    table = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    bias_of = jax.jit(module.apply, static_argnums=(1, 2))
    for q_len, k_len in [(4, 4), (3, 9), (9, 3), (150, 140)]:
        bias = np.asarray(bias_of({"params": {"rel_embedding": table}}, q_len, k_len))
        assert bias.shape == (1, 3, q_len, k_len)
        rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
        buckets = np.vectorize(lambda r: brute_force_bucket(int(r), bidirectional))(rel)
        np.testing.assert_array_equal(bias[0], table[:, buckets])
    shapes = jax.eval_shape(lambda key: module.init(key, 4, 4), jax.random.key(0))
    assert nn.meta.unbox(shapes)["params"]["rel_embedding"].shape == (3, 32)


# ---------------------------------------------------------------------------------------------
# 2. Norm, MLP, logits


def rms_norm_reference(x, scale, eps=1e-6):
    x32 = np.asarray(x, np.float32)
    return x32 / np.sqrt(np.mean(np.square(x32), axis=-1, keepdims=True) + eps) * scale


def test_layer_norm_float32():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 3, 48)) * 5 + 1).astype(np.float32)
    scale = rng.normal(size=(48,)).astype(np.float32)
    got = LayerNorm().apply({"params": {"scale": scale}}, x)
    np.testing.assert_allclose(np.asarray(got), rms_norm_reference(x, scale), rtol=1e-5, atol=1e-6)
    ones = np.ones(8, np.float32)
    # no mean subtraction: a constant row normalises to 1, not to 0
    out = LayerNorm().apply({"params": {"scale": ones}}, np.full((1, 8), 3.0, np.float32))
    np.testing.assert_allclose(np.asarray(out), np.ones((1, 8)), rtol=1e-5)
    # epsilon 1e-6 inside the root: rows of 1e-3 come out as 1e-3 / sqrt(2e-6)
    out = LayerNorm().apply({"params": {"scale": ones}}, np.full((1, 8), 1e-3, np.float32))
    np.testing.assert_allclose(np.asarray(out), 1e-3 / np.sqrt(2e-6), rtol=1e-5)


def test_layer_norm_bfloat16_input_uses_float32_statistics():
    # Reference: statistics and normalisation in fp32, one rounding to bf16, then the product
    # with the bf16-cast scale rounded to bf16. The fp32 path reproduces it bit for bit; doing
    # the normalisation in bf16 (x * rsqrt(mean) with bf16 intermediates) misses ~30-60% of
    # the entries by an ulp (checked when this test was written).
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 1024)) * 3, jnp.bfloat16)
    scale = (1 + 0.1 * rng.normal(size=(1024,))).astype(np.float32)
    module = LayerNorm(dtype=jnp.bfloat16)
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), x))
    assert shapes["params"]["scale"].dtype == jnp.float32
    got = module.apply({"params": {"scale": scale}}, x)
    assert got.dtype == jnp.bfloat16

    def bf16(a):
        return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)

    y = bf16(rms_norm_reference(np.asarray(x, np.float32), np.float32(1.0)))
    want = bf16(y * bf16(scale))
    got = np.asarray(got, np.float32)
    mismatched = got != want
    assert mismatched.mean() < 0.01  # rsqrt vs 1/sqrt may flip a rare rounding
    np.testing.assert_allclose(got, want, rtol=2**-7)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def test_mlp_block_geglu_and_relu():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)

    def weights(module):
        shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), x))["params"]
        return {
            name: {"kernel": rng.normal(size=p["kernel"].shape).astype(np.float32) / 4}
            for name, p in shapes.items()
        }

    geglu = MlpBlock(d_ff=24, activations=("gelu", "linear"))
    params = weights(geglu)
    assert set(params) == {"wi_0", "wi_1", "wo"}
    wi0, wi1, wo = (params[n]["kernel"] for n in ("wi_0", "wi_1", "wo"))
    assert wi0.shape == wi1.shape == (16, 24) and wo.shape == (24, 16)
    want = (gelu_tanh(x @ wi0) * (x @ wi1)) @ wo
    got = geglu.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # the tanh approximation, not the exact erf GELU
    exact = MlpBlock(d_ff=24, activations=("gelu_exact", "linear")).apply({"params": params}, x)
    assert np.abs(np.asarray(exact) - want).max() > 1e-4

    relu = MlpBlock(d_ff=24, activations=("relu",))
    params = weights(relu)
    assert set(params) == {"wi", "wo"}
    wi, wo = params["wi"]["kernel"], params["wo"]["kernel"]
    got = relu.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), np.maximum(x @ wi, 0) @ wo, rtol=1e-5, atol=1e-5)


def test_geglu_backward_recomputes_the_activation(capsys):
    from jax.ad_checkpoint import print_saved_residuals

    from t5forge.model.layers import gated_activation

    rng = np.random.default_rng(3)
    h0, h1, cotangent = (jnp.asarray(rng.normal(size=(2, 5, 24)), jnp.float32) for _ in range(3))

    def plain(a, b):  # what autodiff saw before: tanh(...) is kept for the backward pass
        return jax.nn.gelu(a, approximate=True) * b

    out, vjp = jax.vjp(functools.partial(gated_activation, ("gelu", "linear")), h0, h1)
    want_out, want_vjp = jax.vjp(plain, h0, h1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want_out))
    for got, want in zip(vjp(cotangent), want_vjp(cotangent), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)

    # What the backward pass keeps of the forward one: the two pre-activations and nothing
    # else (left to autodiff it keeps intermediates too; after XLA's simplification, the tanh).
    print_saved_residuals(plain, h0, h1)
    kept_plain = capsys.readouterr().out.count("f32[2,5,24]")
    print_saved_residuals(functools.partial(gated_activation, ("gelu", "linear")), h0, h1)
    kept = capsys.readouterr().out.count("f32[2,5,24]")
    assert kept == 2 and kept_plain > 2


def test_mlp_dropout_is_broadcast_over_length():
    # t5x drops the same hidden units at every position: identical positions stay identical.
    x = np.tile(np.random.default_rng(0).normal(size=(2, 1, 16)), (1, 7, 1)).astype(np.float32)
    mlp = MlpBlock(d_ff=64, activations=("relu",), dropout_rate=0.5, deterministic=False)
    rng = np.random.default_rng(1)
    params = {
        "params": {
            "wi": {"kernel": rng.normal(size=(16, 64)).astype(np.float32)},
            "wo": {"kernel": rng.normal(size=(64, 16)).astype(np.float32)},
        }
    }
    out = np.asarray(jax.jit(mlp.apply)(params, x, rngs={"dropout": jax.random.key(1)}))
    clean = np.asarray(jax.jit(mlp.clone(deterministic=True).apply)(params, x))
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-6)
    assert not np.allclose(out, clean)
    assert not np.allclose(out[0], out[1])  # batch rows get different masks


def test_attention_dropout_is_broadcast_over_queries():
    # t5x (examples/t5/layers.py dot_product_attention) drops the same keys for every query
    # (keep mask of shape (batch, heads, 1, keys)): identical queries stay identical.
    rng = np.random.default_rng(2)
    q_in = np.tile(rng.normal(size=(2, 1, 16)), (1, 6, 1)).astype(np.float32)
    kv_in = rng.normal(size=(2, 7, 16)).astype(np.float32)
    mha = MultiHeadAttention(num_heads=2, d_kv=8, dropout_rate=0.5, deterministic=False)
    shapes = nn.meta.unbox(jax.eval_shape(mha.init, jax.random.key(0), q_in, kv_in))
    params = jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(np.float32) / 4, shapes["params"]
    )
    out = jax.jit(mha.apply)(
        {"params": params}, q_in, kv_in, rngs={"dropout": jax.random.key(3, impl="rbg")}
    )
    clean = jax.jit(mha.clone(deterministic=True).apply)({"params": params}, q_in, kv_in)
    out, clean = np.asarray(out), np.asarray(clean)
    assert np.abs(out - clean).max() > 1e-3  # dropout happened
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-6)


def decoder_output_and_logits(cfg, params, enc, dec):
    forward = compiled_apply(cfg, capture_intermediates=True, mutable=("intermediates",))
    logits, state = forward({"params": params}, enc, dec)
    out = state["intermediates"]["decoder"]["decoder_norm"]["__call__"][0]
    return np.asarray(out, np.float32), logits


def test_tied_and_untied_logits():
    enc, dec = padded_batch(np.random.default_rng(0))

    tied = tiny(activations=("relu",), tie_embeddings=True)
    params = random_params(tied)
    assert "logits_dense" not in params["decoder"]
    out, logits = decoder_output_and_logits(tied, params, enc, dec)
    embedding = np.asarray(params["token_embedder"]["embedding"])
    want = (out * tied.d_model**-0.5) @ embedding.T
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)

    untied = tiny()
    params = random_params(untied)
    kernel = np.asarray(params["decoder"]["logits_dense"]["kernel"])
    assert kernel.shape == (64, VOCAB) and kernel.dtype == np.float32
    out, logits = decoder_output_and_logits(untied, params, enc, dec)
    np.testing.assert_allclose(np.asarray(logits), out @ kernel, rtol=1e-5, atol=1e-5)

    # bf16 activations: the classifier multiplies bf16 operands into fp32 logits, tied or
    # untied; classifier_dtype="float32" gives fp32 operands, logits_dtype="bfloat16" bf16 logits
    mixed = untied.replace(dtype="bfloat16")
    fp32, bf16 = ("float32",) * 3, ("bfloat16",) * 3
    accumulate = ("bfloat16", "bfloat16", "float32")
    assert classifier_dtypes(mixed, params, enc, dec) == [accumulate]
    assert classifier_dtypes(mixed.replace(classifier_dtype="float32"), params, enc, dec) == [fp32]
    assert classifier_dtypes(mixed.replace(logits_dtype="bfloat16"), params, enc, dec) == [bf16]
    tied_params = random_params(tied)
    assert classifier_dtypes(tied.replace(dtype="bfloat16"), tied_params, enc, dec) == [accumulate]


def test_mixed_dot_multiplies_bf16_and_accumulates_fp32_in_both_passes():
    """The classifier's matmul and both of its gradients: bf16 operands, float32 results; a
    float32 kernel gets a float32 gradient (not one rounded to bf16)."""
    from t5forge.model.layers import mixed_dot

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 48)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(48, 40)) * 0.1, jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(3, 5, 40)), jnp.float32)

    def f(x, kernel):
        return jnp.sum(mixed_dot(x, kernel, jnp.bfloat16, jnp.float32) * cotangent)

    grad_x, grad_kernel = jax.grad(f, argnums=(0, 1))(x, kernel)
    assert (grad_x.dtype, grad_kernel.dtype) == (jnp.bfloat16, jnp.float32)
    y = mixed_dot(x, kernel, jnp.bfloat16, jnp.float32)
    assert y.dtype == jnp.float32

    def as64(a):  # the bf16-rounded operands, in float64
        return np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32), np.float64)

    x64, k64, g64 = as64(x), as64(kernel), as64(cotangent)
    np.testing.assert_allclose(np.asarray(y), x64 @ k64, rtol=1e-5, atol=1e-5)
    want_kernel = np.einsum("bld,blv->dv", x64, g64)
    np.testing.assert_allclose(np.asarray(grad_kernel), want_kernel, rtol=1e-5, atol=1e-5)
    want_x = g64 @ k64.T  # rounded to bf16 at the end, as x is bf16
    np.testing.assert_allclose(np.asarray(grad_x, np.float64), want_x, rtol=1e-2, atol=1e-2)

    dots = [
        eqn
        for eqn in jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, kernel).jaxpr.eqns
        for eqn in _all_eqns(eqn)
        if eqn.primitive.name == "dot_general"
    ]
    assert len(dots) == 3
    for eqn in dots:
        operands = tuple(str(v.aval.dtype) for v in eqn.invars)
        assert operands == ("bfloat16", "bfloat16") and str(eqn.outvars[0].aval.dtype) == "float32"


def test_tied_classifier_gradient_runs_compiled_with_bf16_operands():
    """The tied head multiplies by embedding.T: its compiled gradient failed on XLA:CPU
    ("Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32"), so a T5 1.0 model
    could not train on CPU in its default bf16 dtype."""
    from t5forge.model.layers import mixed_dot

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 48)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(40, 48)) * 0.1, jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(3, 5, 40)), jnp.float32)

    def f(x, embedding):
        logits = mixed_dot(x, embedding.T, jnp.bfloat16, jnp.float32)
        return jnp.sum(logits * cotangent)

    grad_x, grad_embedding = jax.jit(jax.grad(f, argnums=(0, 1)))(x, embedding)
    x64 = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    g64 = np.asarray(cotangent.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    want = np.einsum("bld,blv->vd", x64, g64)
    np.testing.assert_allclose(np.asarray(grad_embedding), want, rtol=1e-5, atol=1e-5)
    assert grad_x.shape == x.shape


def _all_eqns(eqn):
    """eqn and the equations of every jaxpr nested in its parameters."""
    yield eqn
    for value in eqn.params.values():
        for sub in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(sub, "jaxpr", sub)
            for nested in getattr(inner, "eqns", ()):
                yield from _all_eqns(nested)


def classifier_dtypes(cfg, params, enc, dec):
    """(lhs, rhs, out) dtypes of every matmul that produces vocabulary-sized outputs."""
    closed = jax.make_jaxpr(Transformer(cfg).apply)({"params": params}, enc, dec)
    return [
        tuple(str(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars))
        for top in closed.jaxpr.eqns
        for eqn in _all_eqns(top)
        if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1] == VOCAB
    ]


# ---------------------------------------------------------------------------------------------
# 3. Parameter counts and FLOPs


def test_param_tree_independent_of_attention_impl():
    shapes = {impl: abstract_params(tiny(attention_impl=impl)) for impl in ("xla", "plain")}
    assert jax.tree.map(jnp.shape, shapes["xla"]) == jax.tree.map(jnp.shape, shapes["plain"])
    assert count(shapes["xla"]) == param_count(tiny())


PUBLISHED_EXACT = {
    "t5.1.1-small": 76_961_152,
    "t5.1.1-base": 247_577_856,
    "t5.1.0-small": 60_506_624,
    "t5.1.0-base": 222_903_552,
    "t5.1.0-large": 737_668_096,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXACT))
def test_param_count_published_exact(name):
    assert param_count(get_config(name)) == PUBLISHED_EXACT[name]


# (name, value, unit) as rounded in the reference (§1.2, 1.3, 1.7, 1.8)
PUBLISHED_ROUNDED = [
    ("t5.1.1-large", "783.2", 1e6),
    ("t5.1.1-xl", "2.85", 1e9),
    ("t5.1.1-xxl", "11.1", 1e9),
    ("t5.1.0-3b", "2.85", 1e9),
    ("t5.1.0-11b", "11.3", 1e9),
    ("t5-efficient-tiny", "15.57", 1e6),
    ("t5-efficient-mini", "31.22", 1e6),
    ("t5-efficient-small", "60.51", 1e6),
    ("t5-efficient-base", "222.90", 1e6),
    ("t5-efficient-tiny-nl32", "67.0", 1e6),
    ("mt5-small", "300", 1e6),
    ("mt5-base", "582", 1e6),
    ("mt5-large", "1.23", 1e9),
    ("mt5-xl", "3.74", 1e9),
    ("mt5-xxl", "12.9", 1e9),
]


@pytest.mark.parametrize("name,value,unit", PUBLISHED_ROUNDED)
def test_param_count_published_rounded(name, value, unit):
    decimals = len(value.split(".")[1]) if "." in value else 0
    assert round(param_count(get_config(name)) / unit, decimals) == float(value)


@pytest.mark.parametrize(
    "name,released,tolerance",
    [
        # sizes of the released google/t5-efficient-* checkpoints (model cards); ours are
        # 0.01-0.06% lower, tiny-nl32 0.11% lower (unexplained, see docs/models.md)
        ("t5-efficient-tiny", 15.58e6, 0.001),
        ("t5-efficient-mini", 31.23e6, 0.001),
        ("t5-efficient-small", 60.52e6, 0.001),
        ("t5-efficient-base", 222.93e6, 0.001),
        ("t5-efficient-tiny-nl32", 67.06e6, 0.002),
        # ByT5 README
        ("byt5-small", 300e6, 0.03),
        ("byt5-base", 580e6, 0.03),
        ("byt5-large", 1.2e9, 0.03),
        ("byt5-xl", 3.7e9, 0.03),
        ("byt5-xxl", 13e9, 0.03),
    ],
)
def test_param_count_released_sizes(name, released, tolerance):
    assert abs(param_count(get_config(name)) / released - 1) < tolerance


def test_efficient_kv32_would_not_match_released_sizes():
    # The model cards' "kv 32" column would give 14.0M / 26.5M / 51.1M.
    for size, released, kv32_size in (
        ("tiny", 15.58e6, "14.0"),
        ("mini", 31.23e6, "26.5"),
        ("small", 60.52e6, "51.1"),
    ):
        kv32 = param_count(get_config(f"t5-efficient-{size}-kv32"))
        assert f"{kv32 / 1e6:.1f}" == kv32_size
        assert abs(kv32 / released - 1) > 0.1
    assert get_config("t5-efficient-tiny").d_kv == 64


@pytest.mark.parametrize(
    "name,gflops",
    [("t5.1.1-small", 106), ("t5.1.1-base", 426), ("t5.1.1-large", 1468), ("t5.1.1-xl", 5346)],
)
def test_train_flops_reference(name, gflops):
    cfg = get_config(name)
    flops = train_flops(cfg, 512, 114)
    assert abs(flops / 1e9 - gflops) <= 0.5
    assert flops == 3 * forward_flops(cfg, 512, 114)


def test_describe():
    info = describe(get_config("t5.1.1-base"))
    assert info["parameters"] == 247_577_856
    assert info["mlp"] == "GEGLU" and info["tied_embeddings"] is False
    assert info["lengths"] == {"inputs": 512, "targets": 114}
    assert info["train_flops_per_token"] == pytest.approx(info["train_flops_per_example"] / 626)
    info = describe(get_config("t5.1.n4w10-base"), lengths=(128, 32))
    assert info["num_heads"] == [6] * 4 + [12] * 10 and info["d_ff"][4] == 2048
    assert describe(get_config("t5-small"))["mlp"] == "relu"
    json.dumps(describe(get_config("t5.1.th-base")))  # plain JSON for `model-info`


# ---------------------------------------------------------------------------------------------
# 4. Attention paths, talking heads


def test_plain_and_xla_attention_agree_on_transformer():
    enc, dec = padded_batch(np.random.default_rng(0))
    params = random_params(tiny())
    # fp32 "auto" is the XLA path on CPU and GPU (cuDNN needs bf16/fp16)
    assert (
        resolve_attention_impl(
            "auto", dtype=jnp.float32, talking_heads=False, dropout=False, head_dim=16
        )
        == "xla"
    )
    xla = apply(tiny(), params, enc, dec)
    plain = apply(tiny(attention_impl="plain"), params, enc, dec)
    assert np.all(np.isfinite(xla))
    np.testing.assert_allclose(plain, xla, atol=1e-5, rtol=0)
    # and with packing masks (segment ids)
    seg_e, seg_d = (enc > 0).astype(np.int32), np.ones_like(dec)
    xla = apply(tiny(), params, enc, dec, seg_e, seg_d)
    plain = apply(tiny(attention_impl="plain"), params, enc, dec, seg_e, seg_d)
    np.testing.assert_allclose(plain, xla, atol=1e-5, rtol=0)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_plain_attention_with_talking_heads_matches_numpy():
    rng = np.random.default_rng(0)
    b, length, h, d = 2, 5, 3, 4
    q, k, v = (rng.normal(size=(b, length, h, d)).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(1, h, length, length)).astype(np.float32)
    pre, post = (rng.normal(size=(h, h)).astype(np.float32) for _ in range(2))
    keys = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    mask = np.broadcast_to(keys[:, None, None, :], (b, 1, length, length))

    # mix the heads of the logits, add the bias on the softmax heads, mix the weights again
    logits = np.einsum("bqhd,bkhd->bhqk", q, k)
    logits = np.einsum("bhqk,hg->bgqk", logits, pre) + bias
    visible = mask & np.tril(np.ones((length, length), bool))
    weights = softmax(np.where(visible, logits, -np.inf))
    weights = np.einsum("bhqk,hg->bgqk", weights, post)
    want = np.einsum("bhqk,bkhd->bqhd", weights, v)

    got = jax.jit(functools.partial(plain_attention, is_causal=True))(
        q, k, v, bias, mask, pre_softmax_mix=pre, post_softmax_mix=post
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # without mixes: the same as jax.nn.dot_product_attention with scale 1 (T5 style)
    got, ref = jax.jit(
        lambda *a: (
            plain_attention(*a, is_causal=True),
            jax.nn.dot_product_attention(*a[:3], bias=a[3], mask=a[4], scale=1.0, is_causal=True),
        )
    )(q, k, v, bias, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


_TINY_SHAPE = ("d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers")


def talking_heads_config(**overrides):
    # t5.1.th-base shrunk to the tiny shapes (so that compiled primitives are shared)
    shape = {field: getattr(tiny(), field) for field in _TINY_SHAPE}
    return get_config("t5.1.th-base", **shape, vocab_size=VOCAB, dtype="float32", **overrides)


def test_talking_heads():
    cfg = talking_heads_config()
    assert cfg.talking_heads and cfg.gated
    assert (NAMED_CONFIGS["t5.1.th-base"].num_heads, NAMED_CONFIGS["t5.1.th-base"].d_kv) == (24, 32)
    enc, dec = padded_batch(np.random.default_rng(0))
    params = random_params(cfg)
    assert count(params) == param_count(cfg)
    attentions = [params["encoder"][f"layers_{i}"]["attention"] for i in range(2)] + [
        params["decoder"][f"layers_{i}"][name]
        for i in range(2)
        for name in ("self_attention", "encoder_decoder_attention")
    ]
    for attention in attentions:
        assert attention["pre_softmax_mix"].shape == (4, 4)
        assert attention["post_softmax_mix"].shape == (4, 4)

    logits = apply(cfg, params, enc, dec)
    assert np.all(np.isfinite(logits))

    def strip(tree):
        return {
            k: strip(v) if isinstance(v, dict) else v
            for k, v in tree.items()
            if not k.endswith("softmax_mix")
        }

    def identity_mixes(tree):
        return {
            k: identity_mixes(v)
            if isinstance(v, dict)
            else (jnp.eye(4) if k.endswith("softmax_mix") else v)
            for k, v in tree.items()
        }

    # identity mixes = the same model without talking heads (same other weights)
    without = apply(cfg.replace(talking_heads=False), strip(params), enc, dec)
    identity = apply(cfg, identity_mixes(params), enc, dec)
    np.testing.assert_allclose(identity, without, atol=1e-5, rtol=0)
    assert np.abs(logits - without).max() > 1e-2
    # the talking-heads (plain) path is taken whatever impl is asked for
    for impl in ("xla", "cudnn"):
        shapes = abstract_params(cfg.replace(attention_impl=impl))
        assert shapes["decoder"]["layers_1"]["self_attention"]["post_softmax_mix"].shape == (4, 4)


def test_resolve_attention_impl():
    resolve = functools.partial(resolve_attention_impl, dtype=jnp.bfloat16, head_dim=64)
    for requested in ("auto", "xla", "cudnn", "plain"):
        assert resolve(requested, talking_heads=True, dropout=False) == "plain"
        assert resolve(requested, talking_heads=False, dropout=True) == "plain"
    assert resolve("xla", talking_heads=False, dropout=False) == "xla"
    assert resolve("cudnn", talking_heads=False, dropout=False) == "cudnn"
    if jax.default_backend() == "cpu":
        assert resolve("auto", talking_heads=False, dropout=False) == "xla"


# ---------------------------------------------------------------------------------------------
# 5. Network behaviour


def test_decoder_is_causal():
    enc, dec = padded_batch(np.random.default_rng(0), dec_lengths=(6, 6))
    params = random_params(tiny())
    base = apply(tiny(), params, enc, dec)
    for t in (1, 3, 5):
        changed = dec.copy()
        changed[:, t] = (changed[:, t] + 7) % (VOCAB - 2) + 2
        logits = apply(tiny(), params, enc, changed)
        np.testing.assert_allclose(logits[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert np.abs(logits[:, t] - base[:, t]).max() > 1e-4


def test_encoder_padding_is_invisible():
    rng = np.random.default_rng(1)
    enc, dec = padded_batch(rng)
    params = random_params(tiny())
    base = apply(tiny(), params, enc, dec)
    # more padding at the end
    longer = np.pad(enc, ((0, 0), (0, 7)))
    np.testing.assert_allclose(apply(tiny(), params, longer, dec), base, atol=1e-5, rtol=0)
    # padding content: with explicit segment ids (0 = padding) the tokens there can be anything
    segments = (enc > 0).astype(np.int32)
    garbage = np.where(segments > 0, enc, random_tokens(rng, enc.shape))
    got = apply(tiny(), params, garbage, dec, segments, np.ones_like(dec))
    np.testing.assert_allclose(got, base, atol=1e-5, rtol=0)
    # whereas real tokens are seen, by their own row only
    other = enc.copy()
    other[1, 0] = (other[1, 0] + 1) % (VOCAB - 2) + 2
    moved = apply(tiny(), params, other, dec)
    assert np.abs(moved[1] - base[1]).max() > 1e-4
    np.testing.assert_allclose(moved[0], base[0], atol=1e-6, rtol=0)
    # an input row that is all padding (the empty rows that pad a last evaluation batch):
    # its cross-attention rows are fully masked, yet the logits stay finite on both paths
    empty = enc.copy()
    empty[1] = 0
    for cfg in (tiny(), tiny(attention_impl="plain")):
        logits = apply(cfg, params, empty, dec)
        assert np.all(np.isfinite(logits))
        np.testing.assert_allclose(logits[0], base[0], atol=1e-5, rtol=0)


def test_packed_equals_separate():
    rng = np.random.default_rng(2)
    a_in, a_out = random_tokens(rng, 4), random_tokens(rng, 3)
    b_in, b_out = random_tokens(rng, 4), random_tokens(rng, 2)

    def shift(targets):
        return np.concatenate([[0], targets[:-1]]).astype(np.int32)

    def pad(x, n):
        return np.pad(x, (0, n - len(x)))

    # row 0 packs A then B, row 1 packs B then A; one padding position at the end of each
    enc = np.stack([pad(np.concatenate(p), ENC_LEN) for p in ((a_in, b_in), (b_in, a_in))])
    enc_seg = np.array([[1] * 4 + [2] * 4 + [0]] * 2, np.int32)
    dec = np.stack(
        [
            pad(np.concatenate([shift(a_out), shift(b_out)]), DEC_LEN),
            pad(np.concatenate([shift(b_out), shift(a_out)]), DEC_LEN),
        ]
    )
    dec_seg = np.array([[1] * 3 + [2] * 2 + [0], [1] * 2 + [2] * 3 + [0]], np.int32)
    # decoder inputs restart with the start token 0 at every segment
    assert dec[0, 0] == dec[0, 3] == dec[1, 0] == dec[1, 2] == 0

    cfg = tiny()
    params = random_params(cfg)
    packed = apply(cfg, params, enc, dec, enc_seg, dec_seg)
    alone = apply(
        cfg,
        params,
        np.stack([pad(a_in, ENC_LEN), pad(b_in, ENC_LEN)]),
        np.stack([pad(shift(a_out), DEC_LEN), pad(shift(b_out), DEC_LEN)]),
    )
    a, b = alone[0, :3], alone[1, :2]
    np.testing.assert_allclose(packed[0, :3], a, atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[0, 3:5], b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[1, :2], b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[1, 2:5], a, atol=1e-5, rtol=0)
    # Sanity: without segment ids the two examples would see each other.
    mixed = apply(cfg, params, enc, dec)
    assert np.abs(mixed[0, 3:5] - b).max() > 1e-4


def test_per_layer_heads_shapes():
    params = abstract_params(get_config("t5.1.n4w10-base"))
    for stack in ("encoder", "decoder"):
        layers = params[stack]
        assert len([k for k in layers if k.startswith("layers_")]) == 14
        names = (
            ["attention"] if stack == "encoder" else ["self_attention", "encoder_decoder_attention"]
        )
        for i in range(14):
            heads, d_ff = (6, 1024) if i < 4 else (12, 2048)
            layer = layers[f"layers_{i}"]
            for name in names:
                for proj in ("query", "key", "value"):
                    assert layer[name][proj]["kernel"].shape == (768, heads * 64)
                assert layer[name]["out"]["kernel"].shape == (heads * 64, 768)
            assert layer["mlp"]["wi_0"]["kernel"].shape == (768, d_ff)
            assert layer["mlp"]["wo"]["kernel"].shape == (d_ff, 768)
        # one shared table per stack, sized to the widest layer
        assert layers["relpos_bias"]["rel_embedding"].shape == (12, 32)


def test_narrow_layers_read_first_rows_of_shared_table():
    # One 2-head layer per stack; the shared table has max(layer_heads) = 4 rows, of which
    # the layer reads the first 2.
    cfg = tiny(num_encoder_layers=1, num_decoder_layers=1, layer_heads=(2, 4), layer_d_ff=(32, 64))
    enc, dec = padded_batch(np.random.default_rng(3))
    params = random_params(cfg)
    assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (64, 32)
    assert params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].shape == (64, 32)
    base = apply(cfg, params, enc, dec)
    bump = 3.0 * (jnp.arange(32) % 3)  # not constant over buckets (softmax would ignore it)
    for stack in ("encoder", "decoder"):
        table = params[stack]["relpos_bias"]["rel_embedding"]
        assert table.shape == (4, 32)

        def with_rows(rows, stack=stack, table=table):
            changed = jax.tree.map(lambda x: x, params)
            changed[stack]["relpos_bias"]["rel_embedding"] = table.at[rows].add(bump)
            return apply(cfg, changed, enc, dec)

        np.testing.assert_allclose(with_rows(slice(2, 4)), base, atol=1e-6, rtol=0)
        assert np.abs(with_rows(slice(1, 2)) - base).max() > 1e-3


def test_umt5_relpos_table_per_layer():
    full = abstract_params(get_config("umt5-small"))
    for stack in ("encoder", "decoder"):
        assert "relpos_bias" not in full[stack]
        for i in range(8):
            assert full[stack][f"layers_{i}"]["relpos_bias"]["rel_embedding"].shape == (6, 32)
    assert full["token_embedder"]["embedding"].shape == (256384, 512)

    cfg = tiny(relpos_per_layer=True)
    enc, dec = padded_batch(np.random.default_rng(4))
    params = random_params(cfg)
    base = apply(cfg, params, enc, dec)
    for stack in ("encoder", "decoder"):
        changed = jax.tree.map(lambda x: x, params)
        table = changed[stack]["layers_1"]["relpos_bias"]["rel_embedding"]
        changed[stack]["layers_1"]["relpos_bias"]["rel_embedding"] = table + 3.0 * (
            jnp.arange(32) % 3
        )
        assert np.abs(apply(cfg, changed, enc, dec) - base).max() > 1e-3


def test_dropout_needs_rng_and_changes_outputs():
    cfg = tiny(dropout_rate=0.3)
    enc, dec = padded_batch(np.random.default_rng(5))
    params = random_params(cfg)
    clean = apply(tiny(), params, enc, dec)  # = cfg with deterministic=True
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        apply(cfg, params, enc, dec, deterministic=False)
    # rbg keys: the model does not care which PRNG, and threefry takes seconds to compile
    noisy = [
        apply(
            cfg,
            params,
            enc,
            dec,
            deterministic=False,
            rngs={"dropout": jax.random.key(s, impl="rbg")},
        )
        for s in (0, 0, 1)
    ]
    assert all(np.all(np.isfinite(x)) for x in noisy)
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert np.abs(noisy[0] - clean).max() > 1e-3
    assert np.abs(noisy[0] - noisy[2]).max() > 1e-3


def _numpy_loss(logits, targets, weights, z_loss):
    """float64 reference: per-token CE + z_loss * log(Z)^2, and d(sum w * loss)/d logits."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    target_logit = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    z_term = z_loss * log_z**2
    softmax = np.exp(logits - log_z[..., None])
    one_hot = np.eye(logits.shape[-1])[targets]
    grad = weights[..., None] * (softmax * (1 + 2 * z_loss * log_z[..., None]) - one_hot)
    return log_z - target_logit + z_term, z_term, grad


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_with_z_loss_and_its_gradient_match_numpy(dtype):
    from t5forge.model.losses import loss_and_metrics

    rng = np.random.default_rng(11)
    logits = (rng.normal(size=(3, 7, 53)) * 4).astype(np.float32)
    logits = np.asarray(jnp.asarray(logits, dtype).astype(jnp.float32))  # exactly representable
    targets = rng.integers(0, 53, (3, 7))
    weights = (rng.random((3, 7)) > 0.3).astype(np.float32)
    total, z_term, grad = _numpy_loss(logits, targets, weights, 1e-2)

    got_total, got_z = cross_entropy_with_z_loss(jnp.asarray(logits, dtype), targets, 1e-2)
    assert got_total.dtype == jnp.float32
    np.testing.assert_allclose(got_total, total, rtol=1e-5)
    np.testing.assert_allclose(got_z, z_term, rtol=1e-5)

    def summed(x):
        return loss_and_metrics(x, targets, weights, z_loss=1e-2)[0]

    np.testing.assert_allclose(jax.grad(summed)(jnp.asarray(logits)), grad, atol=1e-6)
    _, metrics = loss_and_metrics(jnp.asarray(logits), targets, weights, z_loss=1e-2)
    np.testing.assert_allclose(metrics["cross_entropy"], np.sum((total - z_term) * weights), 1e-5)
    np.testing.assert_allclose(metrics["z_loss"], np.sum(z_term * weights), rtol=1e-5)
    correct = (logits.argmax(-1) == targets) * weights
    assert float(metrics["correct"]) == correct.sum() and float(metrics["weight"]) == weights.sum()


def test_log_partition_is_exact_at_extremes():
    from t5forge.model.losses import loss_and_metrics

    # Rows far from 0, a row whose logits are all equal, a row with -inf (masked) entries and
    # one where a single logit dominates: log Z and its gradient (the softmax) against numpy
    # in float64, where one-pass merging of partial maxima must not overflow or give NaN.
    logits = np.array(
        [
            [1e4, 1e4 - 1, 1e4 - 50, 1e4 + 3],
            [-1e4, -1e4 + 2, -1e4 - 7, -1e4],
            [5.0, 5.0, 5.0, 5.0],
            [-np.inf, 2.0, -np.inf, -1.0],
            [80.0, -80.0, 0.0, -5.0],
        ],
        np.float32,
    )[None]
    targets = np.array([[3, 1, 0, 1, 0]])
    weights = np.ones((1, 5), np.float32)
    finite = np.where(np.isinf(logits), -1e30, logits).astype(np.float64)
    top = finite.max(-1, keepdims=True)
    log_z = np.log(np.exp(finite - top).sum(-1)) + top[..., 0]
    target_logit = np.take_along_axis(finite, targets[..., None], -1)[..., 0]
    total, z_term = cross_entropy_with_z_loss(jnp.asarray(logits), targets, 1e-4)
    np.testing.assert_allclose(np.asarray(total), log_z - target_logit + 1e-4 * log_z**2, rtol=1e-6)

    def summed(x):
        return loss_and_metrics(x, targets, weights, z_loss=0.0)[0]

    grad = np.asarray(jax.grad(summed)(jnp.asarray(logits)))
    softmax = np.exp(finite - log_z[..., None])
    np.testing.assert_allclose(grad, softmax - np.eye(4)[targets], atol=1e-6)
    assert np.isfinite(grad).all()


def test_loss_normalizations_follow_t5x():
    from t5forge.model.losses import loss_and_metrics, loss_weights

    rng = np.random.default_rng(12)
    logits = jnp.asarray(rng.normal(size=(4, 6, 29)), jnp.float32)
    targets = rng.integers(0, 29, (4, 6))
    weights = np.ones((4, 6), np.float32)
    weights[1, 3:] = 0
    weights[3, 1:] = 0
    per_token = np.asarray(cross_entropy_with_z_loss(logits, targets)[0])
    expected = {
        "sum": np.sum(per_token * weights),
        "num_real_target_tokens": np.sum(per_token * weights) / weights.sum(),
        "num_total_target_tokens": np.sum(per_token * weights) / weights.size,
        # t5x's AVERAGE_PER_SEQUENCE: the mean over sequences of each one's mean token loss
        "per_sequence": np.mean(np.sum(per_token * weights, -1) / weights.sum(-1)),
    }
    for normalization, value in expected.items():
        token_weights, divisor = loss_weights(jnp.asarray(weights), normalization)
        loss, _ = loss_and_metrics(
            logits, targets, weights, token_weights=token_weights, divisor=divisor
        )
        assert float(loss) == pytest.approx(value, rel=1e-5), normalization
    with pytest.raises(ValueError, match="normalization"):
        loss_weights(jnp.asarray(weights), "per_token")

    # Packed rows: the sequences are the segments (t5x normalises per packed segment), and a
    # row of padding alone counts for nothing.
    segments = np.array(
        [[1, 1, 1, 1, 1, 2], [1, 1, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0], [0, 0, 0, 0, 0, 0]]
    )
    packed_weights = (segments > 0).astype(np.float32)
    packed_weights[0, 2] = 0  # a real position without loss (e.g. a prefix)
    means = [
        np.sum(per_token[row] * packed_weights[row] * (segments[row] == seg))
        / np.sum(packed_weights[row] * (segments[row] == seg))
        for row in range(4)
        for seg in set(segments[row]) - {0}
    ]
    token_weights, divisor = loss_weights(
        jnp.asarray(packed_weights), "per_sequence", jnp.asarray(segments)
    )
    assert float(divisor) == len(means) == 7
    loss, _ = loss_and_metrics(
        logits, targets, packed_weights, token_weights=token_weights, divisor=divisor
    )
    assert float(loss) == pytest.approx(np.mean(means), rel=1e-5)


def test_remat_gives_same_loss_and_gradients():
    enc, dec = padded_batch(np.random.default_rng(6))
    targets = np.roll(dec, -1, axis=1)
    weights = (targets > 0).astype(np.float32)
    # one layer per stack: both layer types are wrapped; compiling dominates on CPU
    cfg = tiny(num_encoder_layers=1, num_decoder_layers=1)
    params = random_params(cfg)

    def loss_fn(p, remat):
        logits = Transformer(cfg.replace(remat=remat)).apply({"params": p}, enc, dec)
        return jnp.sum(cross_entropy_with_z_loss(logits, targets)[0] * weights)

    # one compilation for the three variants
    results = jax.jit(
        lambda p: {r: jax.value_and_grad(loss_fn)(p, r) for r in ("none", "full", "dots")}
    )(params)
    loss, grads = results["none"]
    assert np.isfinite(loss) and loss > 0
    grads = flat(grads)
    assert grads.keys() == flat(params).keys()
    assert all(np.abs(np.asarray(g)).max() > 0 for g in grads.values())
    for remat in ("full", "dots"):
        other_loss, other_grads = results[remat]
        np.testing.assert_allclose(other_loss, loss, rtol=1e-5)
        other_grads = flat(other_grads)
        for key, grad in grads.items():
            np.testing.assert_allclose(
                np.asarray(other_grads[key]), np.asarray(grad), atol=1e-5, rtol=1e-5, err_msg=key
            )


# ---------------------------------------------------------------------------------------------
# 6. Sharding


def test_parse_mesh_spec():
    assert sharding.parse_mesh_spec(None) == {"data": -1, "fsdp": 1, "tensor": 1}
    assert sharding.parse_mesh_spec("data=2,fsdp=2,tensor=2") == {
        "data": 2,
        "fsdp": 2,
        "tensor": 2,
    }
    assert sharding.parse_mesh_spec("fsdp=-1") == {"data": 1, "fsdp": -1, "tensor": 1}
    assert sharding.parse_mesh_spec(" tensor=4") == {"data": -1, "fsdp": 1, "tensor": 4}
    with pytest.raises(ValueError, match="pipeline=2"):
        sharding.parse_mesh_spec("data=2,pipeline=2")
    with pytest.raises(ValueError, match="data=N,fsdp=N,tensor=N"):
        sharding.parse_mesh_spec("data")
    with pytest.raises(ValueError, match="fsdp must be an integer"):
        sharding.parse_mesh_spec("fsdp=two")


def test_make_mesh_errors_on_one_device():
    devices = jax.devices()[:1]
    with pytest.raises(ValueError, match="needs 2 devices, 1 available"):
        sharding.make_mesh("data=1,tensor=2", devices=devices)
    with pytest.raises(ValueError, match="does not divide 1 devices"):
        sharding.make_mesh("tensor=2", devices=devices)
    mesh = sharding.make_mesh(None, devices=devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert mesh.axis_names == sharding.MESH_AXES


def test_logical_axis_rules_cover_every_parameter_axis():
    rules = dict(sharding.LOGICAL_AXIS_RULES)
    boxed = jax.eval_shape(
        Transformer(talking_heads_config()).init,
        jax.random.key(0),
        jnp.ones((1, 1), jnp.int32),
        jnp.ones((1, 1), jnp.int32),
    )["params"]
    specs = jax.tree.leaves(
        nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    names = {axis for spec in specs for axis in spec if axis is not None}
    assert names <= set(rules), names - set(rules)
    assert names >= {"vocab", "embed", "mlp", "heads", "joined_kv", "relpos_buckets"}


# ---------------------------------------------------------------------------------------------
# 7. get_config


def test_get_config_aliases_and_overrides():
    assert get_config("t5-small") == get_config("t5.1.0-small")
    assert get_config("T5-Base") == get_config("t5.1.0-base")
    small = get_config("t5.1.1-small")
    assert (small.d_model, small.d_ff, small.num_heads, small.d_kv) == (512, 1024, 6, 64)
    assert small.activations == ("gelu", "linear") and not small.tie_embeddings
    v10 = get_config("t5.1.0-small")
    assert v10.activations == ("relu",) and v10.tie_embeddings
    changed = get_config("t5.1.1-small", dropout_rate=0.1, remat="full")
    assert changed.dropout_rate == 0.1 and changed.remat == "full"
    assert get_config("t5.1.1-small").dropout_rate == 0.0  # the registry is not mutated
    assert get_config("flan-t5-xl").replace(name="x") == get_config("t5.1.1-xl").replace(name="x")
    assert get_config("mt5-small").vocab_size == 250112
    assert get_config("umt5-small").relpos_per_layer
    assert get_config("byt5-small").vocab_size == 384


def test_get_config_errors():
    with pytest.raises(ValueError, match="t5.1.1-huge"):
        get_config("t5.1.1-huge")
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("gpt2")
    with pytest.raises(ValueError, match="num_layers"):
        get_config("t5.1.1-small", num_layers=4)
    with pytest.raises(ValueError, match="unknown activation"):
        get_config("t5.1.1-small", activations=("swish",))
    with pytest.raises(ValueError, match="layer_heads"):
        get_config("t5.1.1-tiny", layer_heads=(2,))
    with pytest.raises(ValueError, match="attention_impl"):
        get_config("t5.1.1-tiny", attention_impl="flash")
    with pytest.raises(ValueError, match="remat"):
        get_config("t5.1.1-tiny", remat="some")
    # what `--override FIELD=VALUE` can hand over: text, negative or zero sizes, bad dtypes
    for field, value in (
        ("num_heads", "abc"),
        ("vocab_size", -5),
        ("d_model", 0),
        ("num_heads", True),
        ("dropout_rate", 1.5),
        ("dtype", "float99"),
        ("layer_d_ff", (0, 8)),
    ):
        with pytest.raises(ValueError, match=field):
            get_config("t5.1.1-tiny", **{field: value})


@pytest.mark.parametrize(
    "name,expected",
    [
        (
            "t5-efficient-tiny",
            dict(
                num_encoder_layers=4,
                num_decoder_layers=4,
                d_ff=1024,
                d_model=256,
                d_kv=64,
                num_heads=4,
            ),
        ),
        ("t5-efficient-small-el16", dict(num_encoder_layers=16, num_decoder_layers=6)),
        ("t5-efficient-base-dl2", dict(num_encoder_layers=12, num_decoder_layers=2)),
        ("t5-efficient-tiny-nl32", dict(num_encoder_layers=32, num_decoder_layers=32)),
        ("t5-efficient-small-ff1024", dict(d_ff=1024, d_model=512)),
        ("t5-efficient-base-dm512", dict(d_model=512, d_ff=3072)),
        ("t5-efficient-small-kv32", dict(d_kv=32, num_heads=8)),
        ("t5-efficient-large-nh8", dict(num_heads=8, d_kv=64)),
        (
            "t5-efficient-mini-nl8-kv16-nh2",
            dict(num_encoder_layers=8, num_decoder_layers=8, d_kv=16, num_heads=2),
        ),
    ],
)
def test_efficient_grammar(name, expected):
    cfg = get_config(name)
    assert cfg.name == name
    assert cfg.activations == ("relu",) and cfg.tie_embeddings
    for field, value in expected.items():
        assert getattr(cfg, field) == value, field


def test_efficient_grammar_errors():
    with pytest.raises(ValueError, match="xx4"):
        get_config("t5-efficient-small-xx4")
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("t5-efficient-small-el")
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("t5-efficient-huge")


def test_named_configs_cover_families():
    names = set(available_configs())
    for family, sizes in {
        "t5.1.0": ("small", "base", "large", "3b", "11b"),
        "t5.1.1": ("small", "base", "large", "xl", "xxl"),
        "t5.1.1.lm100k": ("small", "base", "large", "xl", "xxl"),
        "flan-t5": ("small", "base", "large", "xl", "xxl"),
        "mt5": ("small", "base", "large", "xl", "xxl"),
        "umt5": ("small", "base", "large", "xl", "xxl"),
        "byt5": ("small", "base", "large", "xl", "xxl"),
        "t5.1.th": ("base", "large"),
        "t5.1.n4w10": ("base", "large", "xl"),
        "t5-efficient": ("tiny", "mini", "small", "base", "large", "xl", "xxl"),
    }.items():
        for size in sizes:
            assert f"{family}-{size}" in names


# ---------------------------------------------------------------------------------------------
# 8. Results of the background jobs (last, so that the tests above overlap with them)


@pytest.mark.parametrize("name", CENSUS_NAMES)
def test_param_count_matches_model(name, census):
    entry = census["counts"][name]
    assert entry["count"] == param_count(get_config(name))
    assert entry["dtypes"] == ["float32"]


@pytest.mark.parametrize("label", [case[0] for case in FLOPS_CASES])
def test_forward_flops_match_xla_cost_analysis(label, census):
    # XLA's count of the lowered forward (64 inputs, 16 targets) is matmuls plus elementwise
    # work, so it may only exceed the matmul count, and only by a little.
    entry = census["flops"][label]
    assert 1.0 <= entry["xla"] / entry["ours"] < 1.02


def test_init_scales(sharded_run):
    # t5x initialisation (from the real `init` of t5.1.1-tiny, vocab 128, run in the
    # background job): fan-in normal kernels, 1/sqrt(d_kv) folded into the query kernel,
    # embedding std 1, relpos uniform fan_avg over (heads 4, buckets 32), norms at one.
    d_model, d_kv, d_ff = 64, 16, 128
    expected = {
        "query": d_model**-0.5 * d_kv**-0.5,
        "key": d_model**-0.5,
        "out": d_model**-0.5,
        "wi_0": d_model**-0.5,
        "wo": d_ff**-0.5,
        "embedding": 1.0,
        "logits_dense": d_model**-0.5,
        "rel_embedding": (2 / (4 + 32)) ** 0.5,
    }
    stds = sharded_run["init_std"]
    for name, want in expected.items():
        tolerance = 0.2 if name == "rel_embedding" else 0.06  # 128 vs >= 4096 samples
        assert abs(stds[name] / want - 1) < tolerance, (name, stds[name], want)
    assert stds["norm_scale"] == 0.0


def test_sharded_forward_equals_unsharded(sharded_run):
    assert sharded_run["devices"] == 8
    assert sharded_run["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharded_run["max_diff"] < 1e-5
    assert "data" in sharded_run["logits_spec"] and "fsdp" in sharded_run["logits_spec"]
    assert sharded_run["batch_shard"] == [2, 12]  # batch 8 over data x fsdp = 4
    assert sharded_run["init_sharded_alike"]  # jit(init, out_shardings) = device_put layout


def test_parameters_are_sharded(sharded_run):
    p = sharded_run["params"]
    assert p["embedding"] == {"spec": ["tensor", "fsdp"], "shard": [64, 32]}
    assert p["wi_0"] == {"spec": ["fsdp", "tensor"], "shard": [32, 64]}
    assert p["query"] == {"spec": ["fsdp", "tensor"], "shard": [32, 32]}
    assert p["logits_dense"] == {"spec": ["fsdp", "tensor"], "shard": [32, 64]}
    assert p["relpos"]["spec"][0] == "tensor" and p["relpos"]["shard"] == [2, 32]
    assert p["norm"] == {"spec": ["fsdp"], "shard": [32]}


def test_make_mesh_on_eight_devices(sharded_run):
    assert sharded_run["default_mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert sharded_run["fsdp_rest"] == {"data": 1, "fsdp": 4, "tensor": 2}
    errors = sharded_run["errors"]
    assert "needs 3 devices, 8 available" in errors["data=3"]
    assert "does not divide 8 devices" in errors["data=3,fsdp=-1"]
    assert "only one axis may be -1" in errors["data=-1,fsdp=-1"]


@pytest.mark.parametrize("impl", ["xla", "plain"])
def test_length_and_feature_padding_give_the_mask_padding_logits(impl):
    """padding="lengths" (cuDNN's own padding mask on GPU) and "features" (extra q/k head
    features) change nothing for real examples, and an all-padding row stays finite."""
    rng = np.random.default_rng(7)
    enc = rng.integers(2, 200, (4, 40)).astype(np.int32)
    enc[1, 25:] = 0
    enc[2, :] = 0
    enc[3, 39:] = 0
    dec = rng.integers(2, 200, (4, 12)).astype(np.int32)
    dec[:, 0] = 0
    logits = {}
    for padding in ("mask", "lengths", "features"):
        cfg = get_config(
            "t5.1.1-tiny", vocab_size=200, dtype="float32", attention_impl=impl, padding=padding
        )
        model = Transformer(cfg)
        params = nn.meta.unbox(model.init(jax.random.key(0), enc, dec))
        logits[padding] = np.asarray(model.apply(params, enc, dec))
    real = [0, 1, 3]
    for padding in ("lengths", "features"):
        np.testing.assert_allclose(logits[padding][real], logits["mask"][real], atol=1e-5)
        assert np.isfinite(logits[padding]).all()
    # features keeps the mask's semantics even for the all-padding row
    np.testing.assert_allclose(logits["features"], logits["mask"], atol=1e-5)
    with pytest.raises(ValueError, match="padding"):
        get_config("t5.1.1-tiny", padding="segments")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_padding_features_add_zero_to_kept_pairs_and_mask_padding_keys(dtype):
    from t5forge.model.layers import PaddingFeatures, add_padding_features

    rng = np.random.default_rng(13)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 3, 16)), dtype) for _ in range(3))
    real = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    wq, wk, wv = add_padding_features(q, k, v, PaddingFeatures(jnp.asarray(real), real))
    assert wq.shape == wk.shape == wv.shape == (2, 5, 3, 24)
    assert not np.asarray(wv[..., 16:], np.float32).any()
    logits = np.asarray(jnp.einsum("bqhd,bkhd->bhqk", wq, wk, preferred_element_type=jnp.float32))
    plain = np.asarray(jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32))
    keep = real[:, None, None, :] | ~real[:, None, :, None]  # padding queries see every key
    keep = np.broadcast_to(keep, logits.shape)
    np.testing.assert_array_equal(logits[keep], plain[keep])  # exactly: the extra terms are 0
    assert np.isfinite(logits).all() and (logits[~keep] < -1e4).all()


def test_old_jax_never_gets_a_per_example_bias_on_cudnn():
    """jax < 0.8 drops the cuDNN gradient of a bias with batch > 1 (a mask folded into the
    shared position bias makes it per-example): such calls must take XLA's path there."""
    from t5forge.model.layers import cudnn_keeps_bias_gradient

    shared, mask = (1, 8, 512, 512), (128, 1, 512, 512)
    assert cudnn_keeps_bias_gradient(shared, None, "0.7.2")
    assert cudnn_keeps_bias_gradient(shared, (1, 1, 512, 512), "0.7.2")
    assert cudnn_keeps_bias_gradient(None, mask, "0.7.2")  # no learned bias (cross-attention)
    assert not cudnn_keeps_bias_gradient(shared, mask, "0.7.2")
    assert not cudnn_keeps_bias_gradient(shared, mask, "0.4.35")
    assert cudnn_keeps_bias_gradient(shared, mask, "0.8.0")
    assert cudnn_keeps_bias_gradient(shared, mask, "0.11.2")


def test_auto_padding_uses_lengths_exactly_where_attention_runs_on_cudnn():
    from t5forge.model.network import resolve_padding

    tiny = get_config("t5.1.1-tiny")
    assert tiny.padding == "auto"
    on_gpu = jax.default_backend() == "gpu"
    # bf16 by default: cuDNN exactly on GPU
    assert resolve_padding(tiny) == ("lengths" if on_gpu else "mask")
    assert resolve_padding(tiny.replace(attention_impl="cudnn")) == "lengths"
    assert resolve_padding(tiny.replace(attention_impl="xla")) == "mask"
    assert resolve_padding(tiny.replace(attention_impl="cudnn", talking_heads=True)) == "mask"
    for explicit in ("mask", "lengths", "features"):
        assert resolve_padding(tiny.replace(padding=explicit, attention_impl="cudnn")) == explicit
