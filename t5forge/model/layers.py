"""T5 building blocks in Flax Linen: RMS norm, dense, MLP, relative position biases, attention.

Parameter names, shapes and initialisations follow t5x's `examples/t5/layers.py`, so a t5x
or Hugging Face checkpoint maps onto these parameters one to one (see `hf_checkpoint.py`):
kernels are 2-D (in_features, out_features), the attention scale 1/sqrt(d_kv) lives in the
query kernel's initialisation, and every parameter carries logical axis names that
`sharding.py` maps onto a device mesh.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec

Initializer = jax.nn.initializers.Initializer

# Large negative logit for masked attention positions (finite, so fully masked rows stay finite).
_MASKED = -1e10

attention_kernel_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
mlp_kernel_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
relpos_init = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
embedding_init = jax.nn.initializers.normal(stddev=1.0)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint on an activation; a no-op outside a mesh with rules."""
    return nn.with_logical_constraint(x, tuple(axes))


def scaled_init(init: Initializer, factor: float) -> Initializer:
    """`init` multiplied by `factor` (the query kernel: T5 folds 1/sqrt(d_kv) into it)."""

    def scaled(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * jnp.asarray(factor, dtype)

    return scaled


class LayerNorm(nn.Module):
    """T5's RMS norm: no mean subtraction, no bias; statistics in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(mean_square + self.epsilon)).astype(self.dtype)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(jax.nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        return y * scale.astype(self.dtype)


def mixed_dot(x: jax.Array, kernel: jax.Array, compute_dtype, out_dtype) -> jax.Array:
    """x @ kernel (kernel 2-D) with operands in `compute_dtype`, accumulated and returned in
    `out_dtype`, in the forward and the backward pass alike.

    This is how the T5 classifier runs on a TPU (t5x computes it "in float32", and a TPU's
    default-precision float32 matmul takes bfloat16 inputs with float32 accumulation) and
    under torch autocast. Plain `jnp.dot(..., preferred_element_type=float32)` would not do:
    its transpose multiplies the float32 cotangent with a bfloat16 operand, which runs as a
    float32 (TF32) matmul on a GPU, and rounds the kernel's gradient to bfloat16.
    The gradients come back in the input dtypes (a float32 kernel gets a float32 gradient).
    """
    compute_dtype, out_dtype = jnp.dtype(compute_dtype), jnp.dtype(out_dtype)
    if jnp.finfo(out_dtype).bits <= jnp.finfo(compute_dtype).bits:
        y = jnp.dot(x.astype(compute_dtype), kernel.astype(compute_dtype))
        return y.astype(out_dtype)
    return _mixed_dot(x, kernel, (compute_dtype, out_dtype, x.dtype, kernel.dtype))


# dtypes = (compute, out, x's, kernel's): static, so the backward pass knows what to return.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_dot(x, kernel, dtypes):
    return _mixed_dot_fwd(x, kernel, dtypes)[0]


def _mixed_dot_fwd(x, kernel, dtypes):
    compute, out = dtypes[:2]
    x_c, kernel_c = x.astype(compute), kernel.astype(compute)
    return jnp.dot(x_c, kernel_c, preferred_element_type=out), (x_c, kernel_c)


def _mixed_dot_bwd(dtypes, residuals, grad):
    compute, out, x_dtype, kernel_dtype = dtypes
    x_c, kernel_c = residuals
    grad_c = grad.astype(compute)
    grad_x = jnp.dot(grad_c, kernel_c.T, preferred_element_type=out)
    # One 2-D matmul over the flattened rows: XLA:CPU has no bf16 x bf16 -> f32 kernel for the
    # transposed layout that a multi-axis contraction gets when the kernel is a transposed
    # view (the tied classifier's embedding.T), and fails at run time.
    rows_x, rows_grad = x_c.reshape(-1, x_c.shape[-1]), grad_c.reshape(-1, grad_c.shape[-1])
    grad_kernel = jax.lax.dot_general(
        rows_x, rows_grad, (((0,), (0,)), ((), ())), preferred_element_type=out
    )
    return grad_x.astype(x_dtype), grad_kernel.astype(kernel_dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


class Dense(nn.Module):
    """y = x @ kernel over the last axis; no bias (T5 has none). Kernel (in, out)."""

    features: int
    axes: tuple[str, str]
    kernel_init: Initializer = attention_kernel_init
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    # The result's dtype and accumulation when it differs from `dtype` (the classifier).
    out_dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        return mixed_dot(x, kernel, self.dtype, self.out_dtype or self.dtype)


class Embed(nn.Module):
    """Token embedding shared by encoder and decoder; `attend` gives tied logits."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array, dtype: jnp.dtype, out_dtype: jnp.dtype) -> jax.Array:
        """Tied logits x @ embedding^T: operands in `dtype`, result in `out_dtype`."""
        return mixed_dot(x, self.embedding.T, dtype, out_dtype)


def _activation(name: str):
    return {
        "relu": jax.nn.relu,
        "gelu": functools.partial(jax.nn.gelu, approximate=True),  # t5x/HF "gelu_new"
        "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
        "silu": jax.nn.silu,
        "linear": lambda x: x,
    }[name]


def _gated_product(activations: tuple[str, ...], *pre_activations: jax.Array) -> jax.Array:
    hidden = _activation(activations[0])(pre_activations[0])
    for act, h in zip(activations[1:], pre_activations[1:], strict=True):
        hidden = hidden * _activation(act)(h)
    return hidden


def gated_activation(activations: tuple[str, ...], *pre_activations: jax.Array) -> jax.Array:
    """act_0(h_0) * act_1(h_1) * ...: a single activation, or a gated unit such as GEGLU.

    A gated unit is rematerialised: its backward pass recomputes the activations from the
    pre-activations, which it reads anyway, instead of keeping them from the forward pass.
    Left to autodiff, GEGLU's forward pass writes tanh(...) of the whole (batch, length,
    d_ff) pre-activation as a second output and the backward pass reads it back: one more
    write and read of the layer's largest activation, pure memory traffic on a GPU (about
    2.6 ms and 3.6 GB of a t5.1.1-base step at batch 128, from the H100-compiled step).
    """
    if len(pre_activations) == 1:
        return _gated_product(activations, *pre_activations)
    return jax.checkpoint(_gated_product, static_argnums=(0,))(activations, *pre_activations)


class MlpBlock(nn.Module):
    """Position-wise MLP: (gated) activations of wi_0, wi_1, ... multiplied, then wo.

    ("relu",) is T5 1.0's single `wi`; ("gelu", "linear") is T5 1.1's GEGLU.
    """

    d_ff: int
    activations: tuple[str, ...]
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(
            Dense, kernel_init=mlp_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        gated = len(self.activations) > 1
        pre_activations = [
            dense(self.d_ff, ("embed", "mlp"), name=f"wi_{i}" if gated else "wi")(x)
            for i in range(len(self.activations))
        ]
        hidden = gated_activation(self.activations, *pre_activations)
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=self.deterministic
        )
        return dense(x.shape[-1], ("mlp", "embed"), name="wo")(hidden)


# ---------------------------------------------------------------------------------------------
# Relative position biases


def relative_position_bucket(
    relative_position: np.ndarray,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """T5's bucket of each (key - query) offset.

    Bidirectional: half the buckets for keys after the query. Within a direction the first
    half of the buckets hold offsets 0..n-1 exactly, the rest are log-spaced up to
    `max_distance`, beyond which everything shares the last bucket. Causal attention only
    sees offsets <= 0 and uses all buckets for them. Computed in float32 as mesh-TF, t5x and
    Hugging Face do, so rounding at bucket edges matches released checkpoints.
    """
    relative_position = np.asarray(relative_position)
    bucket = np.zeros_like(relative_position, dtype=np.int32)
    distance = -relative_position
    if bidirectional:
        num_buckets //= 2
        bucket += (distance < 0).astype(np.int32) * num_buckets
        distance = np.abs(distance)
    else:
        distance = np.maximum(distance, 0)
    max_exact = num_buckets // 2
    # Offsets below max_exact take the exact branch; 1 keeps log() finite for them.
    far = np.maximum(distance, 1).astype(np.float32)
    log_ratio = np.log(far / np.float32(max_exact)) / np.float32(np.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(num_buckets - max_exact)).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return bucket + np.where(distance < max_exact, distance, large).astype(np.int32)


def toeplitz(per_offset: jax.Array, q_len: int, k_len: int) -> jax.Array:
    """(..., q_len + k_len - 1) values per offset k - q (ascending) -> (..., q_len, k_len)."""
    lead = per_offset.shape[:-1]
    width = q_len + k_len - 1
    tiled = jnp.broadcast_to(per_offset[..., None, :], (*lead, q_len, width))
    flat = tiled.reshape(*lead, q_len * width)
    flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, q_len)])
    # Row r of the (width + 1)-strided view starts r places further into the offsets.
    skewed = flat.reshape(*lead, q_len, width + 1)[..., :k_len]
    return skewed[..., ::-1, :]


class RelativePositionBiases(nn.Module):
    """Learned per-head bias for each relative-position bucket: table (heads, buckets)."""

    num_heads: int
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> jax.Array:
        """Bias of shape (1, heads, q_len, k_len)."""
        # The bias depends only on the offset k - q: look it up once per offset (q + k - 1
        # values), then lay it out as a (q, k) Toeplitz matrix by broadcast-reshape-slice,
        # whose gradient is a plain sum. Gathering all q * k entries would make the gradient
        # a scatter-add of q * k values into 32 entries per head (contended atomics on GPU).
        offsets = np.arange(-(q_len - 1), k_len)  # every k - q, ascending
        buckets = relative_position_bucket(
            offsets,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        per_offset = jnp.take(table, jnp.asarray(buckets), axis=1)  # (heads, q+k-1)
        bias = toeplitz(per_offset, q_len, k_len)
        return bias[None].astype(self.dtype)


# ---------------------------------------------------------------------------------------------
# Attention


class PaddingLengths(NamedTuple):
    """Padding of unpacked examples as lengths: positions >= length are padding.

    For the fused kernels this replaces a boolean mask: jax's cuDNN wrapper folds a boolean mask
    into the bias, which turns the shared (1, heads, q, k) bias into a per-example tensor, while
    sequence lengths use cuDNN's own padding mask. `query` None means every query is real.
    """

    query: jax.Array | None
    key_value: jax.Array


class PaddingFeatures(NamedTuple):
    """Padding of unpacked examples as per-token flags, applied through extra head features.

    The fused kernels then get no mask at all: one more query feature (1 for a real query, 0
    for a padding query) meets one more key feature (0 for a real key, a large negative number
    for a padding key), so q.k gains exactly 0 for every pair that the mask keeps and the large
    negative number where it masks a padding key; the head size is padded to the next multiple
    of 8 with zeros. The position bias stays one (1, heads, q, k) tensor, the configuration the
    fused kernels support best (as for causal decoder self-attention). Same semantics as
    `attention_mask` on segment ids `tokens > 0`: padding queries see every key.
    """

    query: jax.Array | None  # (batch, q) bool, None: every query is real
    key: jax.Array  # (batch, k) bool


def _feature_mask_value(dtype) -> float:
    """Added to q.k for a masked pair in the features path: far below any real logit, yet
    finite in `dtype` (a row with only padding keys stays finite, as on the mask paths, and
    0 x value stays 0 for padding queries): -1e9, or half the most negative float16."""
    return max(-1e9, float(jnp.finfo(dtype).min) / 2)


def features_mask(padding: PaddingFeatures, q_len: int) -> jax.Array:
    """The boolean (batch, 1, q, k) mask equivalent to `padding`."""
    keys = padding.key[:, None, None, :]
    if padding.query is None:
        return jnp.broadcast_to(keys, (keys.shape[0], 1, q_len, keys.shape[-1]))
    return jnp.logical_or(keys, ~padding.query[:, None, :, None])


def add_padding_features(q, k, v, padding: PaddingFeatures):
    """q, k, v (batch, len, heads, d) -> the same with d padded to a multiple of 8 (at least
    one more) carrying the padding as described in `PaddingFeatures`."""
    d = q.shape[-1]
    extra = (-(d + 1) % 8) + 1
    batch, q_len, heads = q.shape[:3]
    k_len = k.shape[1]
    real_query = (
        jnp.ones((batch, q_len), q.dtype)
        if padding.query is None
        else padding.query.astype(q.dtype)
    )
    key_penalty = jnp.where(padding.key, 0.0, _feature_mask_value(k.dtype)).astype(k.dtype)

    def widen(x, feature, length):
        feature = jnp.broadcast_to(feature[:, :, None, None], (batch, length, heads, 1))
        zeros = jnp.zeros((batch, length, heads, extra - 1), x.dtype)
        return jnp.concatenate([x, feature, zeros], axis=-1)

    q = widen(q, real_query, q_len)
    k = widen(k, key_penalty, k_len)
    v = jnp.concatenate([v, jnp.zeros((*v.shape[:-1], extra), v.dtype)], axis=-1)
    return q, k, v


def lengths_mask(lengths: PaddingLengths, q_len: int, k_len: int) -> jax.Array:
    """The boolean (batch, 1, q, k) mask equivalent to `lengths` (padding queries see all)."""
    keys = jnp.arange(k_len)[None, None, None, :] < lengths.key_value[:, None, None, None]
    if lengths.query is None:
        return jnp.broadcast_to(keys, (keys.shape[0], 1, q_len, k_len))
    padded_query = jnp.arange(q_len)[None, None, :, None] >= lengths.query[:, None, None, None]
    return jnp.logical_or(keys, padded_query)


def resolve_attention_impl(
    requested: str, *, dtype, talking_heads: bool, dropout: bool, head_dim: int
) -> str:
    """Which attention path runs: "cudnn", "xla" (both via jax.nn.dot_product_attention),
    "plain" (explicit softmax: talking heads and attention dropout need the weights),
    "pallas" (flash_t5's kernels) or "pallas_bias" (flash_t5 where a position bias is
    differentiated, auto's choice elsewhere); the last two only when requested."""
    if talking_heads or dropout:
        return "plain"
    if requested != "auto":
        return requested
    on_gpu = jax.default_backend() == "gpu"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if on_gpu and half and head_dim <= 128 and head_dim % 8 == 0:
        return "cudnn"
    return "xla"


def _version(text: str) -> tuple[int, int]:
    major, minor = (int(part) for part in text.split(".")[:2])
    return major, minor


def cudnn_keeps_bias_gradient(bias_shape, mask_shape, jax_version: str = jax.__version__) -> bool:
    """Whether jax's cuDNN path returns the gradient of a learned bias for these shapes.

    Before jax 0.8, `should_export_dbias` asked cuDNN for the bias gradient only when the bias
    has batch dimension 1; a per-example boolean mask folded into the bias makes it
    (batch, heads, q, k), and the position bias's gradient was then silently zero.
    """
    if bias_shape is None:
        return True
    batch = max(bias_shape[0], 1 if mask_shape is None else mask_shape[0])
    return batch == 1 or _version(jax_version) >= (0, 8)


def plain_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    *,
    is_causal: bool,
    pre_softmax_mix: jax.Array | None = None,
    post_softmax_mix: jax.Array | None = None,
    float32_logits: bool = False,
    dropout: nn.Dropout | None = None,
    deterministic: bool = True,
) -> jax.Array:
    """Softmax(q k^T + bias) v with the weights in memory. q (b, q, h, d), k/v (b, k, h, d).

    Talking heads (Shazeer et al. 2020) mix the heads of the logits before the softmax
    (`pre_softmax_mix`, (h, h)) and of the weights after it (`post_softmax_mix`); the
    relative-position bias is added after the first mix, on the softmax heads.
    """
    if float32_logits:
        q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if pre_softmax_mix is not None:
        logits = jnp.einsum("bhqk,hg->bgqk", logits, pre_softmax_mix.astype(logits.dtype))
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    if is_causal:
        q_len, k_len = logits.shape[-2:]
        causal = np.tril(np.ones((q_len, k_len), dtype=bool))
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.asarray(_MASKED, logits.dtype))
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    if dropout is not None:
        weights = dropout(weights, deterministic=deterministic)
    if post_softmax_mix is not None:
        weights = jnp.einsum("bhqk,hg->bgqk", weights, post_softmax_mix.astype(weights.dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


# Set to 1 to compile flash_t5's kernels for a GPU even where this process has none (ahead of
# time, for a GPU described to XLA: benchmarks/h100_static.py).
PALLAS_COMPILED_ENV = "T5FORGE_PALLAS_COMPILED"


def pallas_interpret() -> bool:
    """Whether flash_t5's kernels run in Pallas's interpret mode: off the GPU (tests), unless
    $T5FORGE_PALLAS_COMPILED is 1."""
    if os.environ.get(PALLAS_COMPILED_ENV) == "1":
        return False
    return jax.default_backend() != "gpu"


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    kv_lengths: jax.Array | None,
    *,
    causal: bool,
    axes: Sequence[str],
) -> jax.Array:
    """flash_t5's kernels on (batch, length, heads, d) inputs, one device's shard at a time.

    XLA cannot partition a Pallas kernel: under a mesh it would gather every operand and run
    the whole batch on each device. Attention is independent per example and head, so the
    kernels run under `shard_map` on the batch and head shards that the logical axis rules
    give `axes` (q's logical names), the bias sharded by head only; its gradient is summed
    over the batch shards by shard_map's transpose. Off the GPU the kernels run in Pallas's
    interpret mode, which is for tests.
    """
    from t5forge.model.flash_t5 import t5_attention

    if kv_lengths is None:
        kv_lengths = jnp.full(q.shape[:1], k.shape[1], jnp.int32)
    interpret = pallas_interpret()

    def run(q, k, v, kv_lengths, *bias):
        return t5_attention(
            q, k, v, bias[0] if bias else None, kv_lengths, causal=causal, interpret=interpret
        )

    args = (q, k, v, kv_lengths) + (() if bias is None else (bias,))
    if jax.sharding.get_abstract_mesh().empty:
        return run(*args)
    batch, _, heads, _ = nn.logical_to_mesh_axes(tuple(axes))
    qkv = PartitionSpec(batch, None, heads, None)
    specs = (qkv, qkv, qkv, PartitionSpec(batch), PartitionSpec(None, heads, None, None))
    # check_vma=False: pallas_call does not take part in shard_map's replication checks.
    sharded = jax.shard_map(run, in_specs=specs[: len(args)], out_specs=qkv, check_vma=False)
    return sharded(*args)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, T5 style: no biases, no 1/sqrt(d) in the forward pass."""

    num_heads: int
    d_kv: int
    dropout_rate: float = 0.0
    deterministic: bool = True
    talking_heads: bool = False
    impl: str = "auto"
    float32_logits: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        bias: jax.Array | None = None,
        mask: jax.Array | PaddingLengths | PaddingFeatures | None = None,
        *,
        is_causal: bool = False,
    ) -> jax.Array:
        h, d = self.num_heads, self.d_kv
        dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        query_init = scaled_init(attention_kernel_init, d**-0.5)
        qkv_axes = ("embed", "joined_kv")
        q = dense(h * d, qkv_axes, kernel_init=query_init, name="query")(inputs_q)
        k = dense(h * d, qkv_axes, name="key")(inputs_kv)
        v = dense(h * d, qkv_axes, name="value")(inputs_kv)
        split = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q = constrain(q.reshape(*q.shape[:-1], h, d), split)
        k = constrain(k.reshape(*k.shape[:-1], h, d), split)
        v = constrain(v.reshape(*v.shape[:-1], h, d), split)

        use_dropout = self.dropout_rate > 0 and not self.deterministic
        impl = resolve_attention_impl(
            self.impl,
            dtype=self.dtype,
            talking_heads=self.talking_heads,
            dropout=use_dropout,
            head_dim=d,
        )
        if bias is not None:
            bias = bias.astype(self.dtype)
        lengths = None
        if isinstance(mask, PaddingLengths):
            if impl == "plain":
                mask = lengths_mask(mask, q.shape[1], k.shape[1])
            else:
                lengths, mask = mask, None
        elif isinstance(mask, PaddingFeatures):
            if impl == "plain":
                mask = features_mask(mask, q.shape[1])
            else:
                q, k, v = add_padding_features(q, k, v, mask)
                mask = None
        if impl == "pallas_bias":  # flash_t5 only where a position bias needs its gradient
            impl = "pallas" if bias is not None else "auto"
        if impl == "pallas" and mask is not None:
            impl = "auto"  # segment masks: flash_t5 takes key lengths only
        if impl == "auto":
            impl = resolve_attention_impl(
                "auto", dtype=self.dtype, talking_heads=False, dropout=False, head_dim=d
            )
        if impl == "cudnn" and not cudnn_keeps_bias_gradient(
            None if bias is None else bias.shape, None if mask is None else mask.shape
        ):
            impl = "xla"  # correct gradients first: this jax would drop the bias gradient
        if impl == "plain":
            mixes = {}
            if self.talking_heads:
                mix_init = nn.with_logical_partitioning(attention_kernel_init, ("heads", None))
                for key in ("pre_softmax_mix", "post_softmax_mix"):
                    mixes[key] = self.param(key, mix_init, (h, h), self.param_dtype)
            out = plain_attention(
                q,
                k,
                v,
                bias,
                mask,
                is_causal=is_causal,
                float32_logits=self.float32_logits,
                dropout=nn.Dropout(self.dropout_rate, broadcast_dims=(2,)) if use_dropout else None,
                deterministic=self.deterministic,
                **mixes,
            )
        elif impl == "pallas":
            kv_lengths = None if lengths is None else lengths.key_value
            out = flash_attention(q, k, v, bias, kv_lengths, causal=is_causal, axes=split)[..., :d]
        else:
            out = jax.nn.dot_product_attention(
                q,
                k,
                v,
                bias=bias,
                mask=mask,
                scale=1.0,
                is_causal=is_causal,
                query_seq_lengths=None if lengths is None else lengths.query,
                key_value_seq_lengths=None if lengths is None else lengths.key_value,
                implementation=impl,
            )[..., :d]
        out = constrain(out, split).reshape(*out.shape[:-2], h * d)
        return dense(inputs_q.shape[-1], ("joined_kv", "embed"), name="out")(out)
