"""Flash attention with T5's shared relative-position bias, as Pallas kernels.

Opt-in (`attention_impl="pallas"`, or "pallas_bias" for the biased self-attentions only):
forward and every gradient match plain attention in Pallas's interpret mode, and each kernel's
Triton module is built and verified for CUDA on a CPU-only machine (tests/test_flash_t5.py);
benchmarks/flash_t5_resources.py compiles them for sm_90 to screen tile sizes for register
spills and shared memory. On an H100 (2026-11-23) the whole model matches XLA's attention
(tests/test_gpu.py --fused pallas) but trains slower than with cuDNN: t5.1.1-base 167.2 ms per
step against 153.2 ms; one base encoder layer's forward + backward takes 3.44-4.08 ms
depending on the tiles against cuDNN's 3.46 ms (docs/models.md, "Measured on one H100").

Why: cuDNN's fused attention takes T5's bias as a (1, heads, q, k) tensor and then runs a path
1.8x slower than without a bias (benchmarks/attention_bias_cost.py: 3.46 ms against 1.92 ms
forward + backward per t5.1.1-base encoder layer on an H100), whether or not the bias gets a
gradient. These kernels are FlashAttention-2 (online softmax forward; backward split into a
dK/dV kernel over key blocks and a dQ kernel over query blocks) with the bias tile added to the
scores and padding given as per-example key lengths. The bias gradient (dS summed over the
batch) comes from a third kernel that owns one (head, query block, key block) tile and
recomputes dS there for each example in turn, summing on chip; cuDNN instead writes dS for the
whole batch (805 MB per base encoder layer in bf16) and reduces it in a separate pass.

Layout as `jax.nn.dot_product_attention`: q (batch, q_len, heads, d), k and v (batch, k_len,
heads, d); no 1/sqrt(d) scaling (T5 folds it into the query initialisation).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_MASKED = -1e30
# Triton's compiler parameters: CompilerParams in recent jax (0.10 here), TritonCompilerParams
# in older releases.
_TritonParams = getattr(plgpu, "CompilerParams", None) or plgpu.TritonCompilerParams
BIAS_GRADIENTS = ("recompute", "store")


class _Options(NamedTuple):
    """Static settings of one attention call (hashable: custom_vjp's nondiff argument)."""

    causal: bool
    has_bias: bool
    block_q: int
    block_k: int
    interpret: bool
    num_warps: int
    num_stages: int
    bias_grad: str  # "recompute": the dbias kernel; "store": dQ writes dS, XLA sums the batch


def t5_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    *,
    causal: bool = False,
    block_q: int = 64,
    block_k: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    bias_grad: str = "recompute",
    interpret: bool = False,
) -> jax.Array:
    """softmax(q k^T + bias, keys >= kv_lengths masked, causal) v per head.

    bias: (1, heads, q_len, k_len) shared by the batch, or None. kv_lengths: (batch,) int32
    (keys at positions >= length are padding; at least 1), or None for all keys. block_q,
    block_k: tile sizes (powers of two, at least 16); num_warps, num_stages: Triton's. bias_grad:
    how the bias gradient is formed, "recompute" (a kernel per bias tile sums dS over the batch
    on chip) or "store" (the dQ kernel writes dS for the whole batch, then XLA sums it).
    """
    if bias_grad not in BIAS_GRADIENTS:
        raise ValueError(f"bias_grad must be one of {BIAS_GRADIENTS}, not {bias_grad!r}")
    batch, q_len, heads, head_dim = q.shape
    k_len = k.shape[1]
    if kv_lengths is None:
        kv_lengths = jnp.full((batch,), k_len, jnp.int32)
    # Triton tiles are powers of two (at least 16 for tensor-core dots), so lengths that are
    # not a multiple of the tile (T5's 114 targets) and head sizes that are not a power of two
    # are padded. Padding keys lie beyond kv_lengths; padding queries are sliced off; zero
    # features change no q.k product and give output features that are sliced off.
    q_pad, k_pad = -q_len % block_q, -k_len % block_k
    d_pad = max(16, 1 << (head_dim - 1).bit_length()) - head_dim
    if q_pad or k_pad or d_pad:
        q = jnp.pad(q, ((0, 0), (0, q_pad), (0, 0), (0, d_pad)))
        k = jnp.pad(k, ((0, 0), (0, k_pad), (0, 0), (0, d_pad)))
        v = jnp.pad(v, ((0, 0), (0, k_pad), (0, 0), (0, d_pad)))
        if bias is not None:
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, q_pad), (0, k_pad)))
    has_bias = bias is not None
    if bias is None:
        bias = jnp.zeros((1, heads, block_q, block_k), q.dtype)  # never read
    options = _Options(
        causal, has_bias, block_q, block_k, interpret, num_warps, num_stages, bias_grad
    )
    out = _attention(q, k, v, bias, kv_lengths.astype(jnp.int32), options)
    return out[:, :q_len, :, :head_dim]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, bias, lengths, options):
    return _forward(q, k, v, bias, lengths, options)[0]


def _compiler_params(options):
    return _TritonParams(num_warps=options.num_warps, num_stages=options.num_stages)


def _keep(q_pos, k_pos, length, causal):
    keep = k_pos[None, :] < length
    if causal:
        keep = keep & (k_pos[None, :] <= q_pos[:, None])
    return keep


def _key_blocks_seen(qi, length, options):
    """How many key blocks query block qi attends to: those holding keys before `length`,
    and for causal attention none wholly after the block's last query."""
    n_blocks = (length + options.block_k - 1) // options.block_k
    if options.causal:
        last = ((qi + 1) * options.block_q + options.block_k - 1) // options.block_k
        n_blocks = jnp.minimum(n_blocks, last)
    return n_blocks


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, o_ref, lse_ref, *, options):
    causal, has_bias, block_q, block_k = options[:4]
    qi = pl.program_id(2)
    q = q_ref[...]
    length = len_ref[0]
    q_pos = qi * block_q + jnp.arange(block_q)

    def body(kb, carry):
        acc, m, l_sum = carry
        keys = pl.ds(kb * block_k, block_k)
        s = jnp.dot(q, k_ref[keys, :].T, preferred_element_type=jnp.float32)
        if has_bias:
            s = s + bias_ref[:, keys].astype(jnp.float32)
        s = jnp.where(_keep(q_pos, kb * block_k + jnp.arange(block_k), length, causal), s, _MASKED)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[:, None])
        correction = jnp.exp(m - m_new)
        v = v_ref[keys, :]
        acc = acc * correction[:, None] + jnp.dot(
            p.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        return acc, m_new, l_sum * correction + jnp.sum(p, axis=-1)

    n_blocks = _key_blocks_seen(qi, length, options)
    init = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, m, l_sum = jax.lax.fori_loop(0, n_blocks, body, init)
    o_ref[...] = (acc / l_sum[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l_sum)


def _q_blocked(block_q, d):
    return pl.BlockSpec((None, block_q, None, d), lambda b, h, i: (b, i, h, 0))


def _whole(length, d):
    return pl.BlockSpec((None, length, None, d), lambda b, h, i: (b, 0, h, 0))


def _bias_rows(has_bias, block_q, block_k, k_len):
    """The bias rows of one query block (a dummy tile, never read, when there is no bias)."""
    if has_bias:
        return pl.BlockSpec((None, None, block_q, k_len), lambda b, h, i: (0, h, i, 0))
    return pl.BlockSpec((None, None, block_q, block_k), lambda b, h, i: (0, h, 0, 0))


def _bias_columns(has_bias, block_q, block_k, q_len):
    """The bias columns of one key block (a dummy tile, never read, when there is no bias)."""
    if has_bias:
        return pl.BlockSpec((None, None, q_len, block_k), lambda b, h, j: (0, h, 0, j))
    return pl.BlockSpec((None, None, block_q, block_k), lambda b, h, j: (0, h, 0, 0))


_LENGTH = pl.BlockSpec((1,), lambda b, h, i: (b,))  # this example's key length


def _query_block_inputs(has_bias, block_q, block_k, k_len, d):
    """q, k, v, bias, lengths for a program that owns one query block and loops over keys."""
    bias = _bias_rows(has_bias, block_q, block_k, k_len)
    return [_q_blocked(block_q, d), _whole(k_len, d), _whole(k_len, d), bias, _LENGTH]


def _forward(q, k, v, bias, lengths, options):
    causal, has_bias, block_q, block_k, interpret = options[:5]
    params = _compiler_params(options)
    batch, q_len, heads, d = q.shape
    k_len = k.shape[1]
    out, lse = pl.pallas_call(
        functools.partial(_forward_kernel, options=options),
        grid=(batch, heads, q_len // block_q),
        in_specs=_query_block_inputs(has_bias, block_q, block_k, k_len, d),
        out_specs=[
            _q_blocked(block_q, d),
            pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=params,
        name="t5_attention_forward",
    )(q, k, v, bias, lengths)
    return out, (q, k, v, bias, lengths, out, lse)


def _dkdv_kernel(
    q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, options
):
    causal, has_bias, block_q, block_k = options[:4]
    kb = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    length = len_ref[0]
    k_pos = kb * block_k + jnp.arange(block_k)

    def body(qb, carry):
        dk, dv = carry
        rows = pl.ds(qb * block_q, block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        s = jnp.dot(q, k.T, preferred_element_type=jnp.float32)
        if has_bias:
            s = s + bias_ref[rows, :].astype(jnp.float32)
        keep = _keep(qb * block_q + jnp.arange(block_q), k_pos, length, causal)
        p = jnp.where(keep, jnp.exp(s - lse_ref[rows][:, None]), 0.0)
        dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
        dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[rows][:, None])
        dk = dk + jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32)
        return dk, dv

    first = (kb * block_k) // block_q if causal else 0
    # A key block wholly beyond this example's length gets zero gradients: no loop at all.
    # (Arithmetic, not jnp.where: Pallas's Triton lowering turns a select between two Python
    # ints into an i1 select, which then fails to verify as a loop bound.)
    n_q_blocks = jnp.maximum(first, (kb * block_k < length) * (q_ref.shape[0] // block_q))
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(first, n_q_blocks, body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
    q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, delta_ref, dq_ref, *ds_ref, options
):
    causal, has_bias, block_q, block_k = options[:4]
    qi = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    length = len_ref[0]
    q_pos = qi * block_q + jnp.arange(block_q)
    if ds_ref:  # bias_grad="store": key blocks the loop skips keep these zeros
        ds_ref[0][...] = jnp.zeros(ds_ref[0].shape, ds_ref[0].dtype)

    def body(kb, dq):
        keys = pl.ds(kb * block_k, block_k)
        k, v = k_ref[keys, :], v_ref[keys, :]
        s = jnp.dot(q, k.T, preferred_element_type=jnp.float32)
        if has_bias:
            s = s + bias_ref[:, keys].astype(jnp.float32)
        keep = _keep(q_pos, kb * block_k + jnp.arange(block_k), length, causal)
        p = jnp.where(keep, jnp.exp(s - lse[:, None]), 0.0)
        dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[:, None])
        if ds_ref:
            ds_ref[0][:, keys] = ds.astype(ds_ref[0].dtype)
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    n_blocks = _key_blocks_seen(qi, length, options)
    dq = jax.lax.fori_loop(0, n_blocks, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dbias_kernel(
    q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, delta_ref, dbias_ref, *, options
):
    causal, _, block_q, block_k = options[:4]
    qi, kb = pl.program_id(1), pl.program_id(2)
    q_pos = qi * block_q + jnp.arange(block_q)
    k_pos = kb * block_k + jnp.arange(block_k)
    bias = bias_ref[...].astype(jnp.float32)

    def body(n, acc):
        q, do = q_ref[n, :, :], do_ref[n, :, :]
        k, v = k_ref[n, :, :], v_ref[n, :, :]
        s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) + bias
        keep = _keep(q_pos, k_pos, len_ref[n], causal)
        p = jnp.where(keep, jnp.exp(s - lse_ref[n, :][:, None]), 0.0)
        dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
        return acc + p * (dp - delta_ref[n, :][:, None])

    n_examples = q_ref.shape[0]
    if causal:  # a tile wholly above the diagonal gets no gradient: skip its batch loop
        n_examples = (kb * block_k < (qi + 1) * block_q) * n_examples
    acc = jax.lax.fori_loop(0, n_examples, body, jnp.zeros((block_q, block_k), jnp.float32))
    dbias_ref[...] = acc


def _backward(options, residuals, d_out):
    causal, has_bias, block_q, block_k, interpret = options[:5]
    params = _compiler_params(options)
    q, k, v, bias, lengths, out, lse = residuals
    batch, q_len, heads, d = q.shape
    k_len = k.shape[1]
    # delta_i = sum_j P_ij dP_ij = rowsum(dO * O), per (batch, head, query).
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    stats_blocked = pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))
    stats_whole = pl.BlockSpec((None, None, q_len), lambda b, h, i: (b, h, 0))
    k_blocked = pl.BlockSpec((None, block_k, None, d), lambda b, h, j: (b, j, h, 0))

    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, options=options),
        grid=(batch, heads, k_len // block_k),
        in_specs=[
            _whole(q_len, d),
            k_blocked,
            k_blocked,
            _bias_columns(has_bias, block_q, block_k, q_len),
            _LENGTH,
            _whole(q_len, d),
            stats_whole,
            stats_whole,
        ],
        out_specs=[k_blocked, k_blocked],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=interpret,
        compiler_params=params,
        name="t5_attention_dkdv",
    )(q, k, v, bias, lengths, d_out, lse, delta)

    store_ds = has_bias and options.bias_grad == "store"
    out_specs = [_q_blocked(block_q, d)]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    if store_ds:
        out_specs.append(pl.BlockSpec((None, None, block_q, k_len), lambda b, h, i: (b, h, i, 0)))
        out_shape.append(jax.ShapeDtypeStruct((batch, heads, q_len, k_len), q.dtype))
    dq, *ds = pl.pallas_call(
        functools.partial(_dq_kernel, options=options),
        grid=(batch, heads, q_len // block_q),
        in_specs=[
            *_query_block_inputs(has_bias, block_q, block_k, k_len, d),
            _q_blocked(block_q, d),
            stats_blocked,
            stats_blocked,
        ],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=params,
        name="t5_attention_dq",
    )(q, k, v, bias, lengths, d_out, lse, delta)
    if not has_bias:
        return dq, dk, dv, jnp.zeros_like(bias), None
    if store_ds:  # dS for the whole batch in bf16, summed over the batch by XLA (as cuDNN does)
        d_bias = jnp.sum(ds[0].astype(jnp.float32), axis=0, keepdims=True)
        return dq, dk, dv, d_bias.astype(bias.dtype), None

    # The bias gradient is dS summed over the batch. Rather than write dS (batch x heads x
    # q x k, 0.8 GB per t5.1.1-base encoder layer) and reduce it, a third kernel owns one
    # (head, query block, key block) tile, recomputes dS there for every example (two small
    # matmuls each) and keeps the running sum on chip: one float32 tile written per program.
    batch_tile = lambda rows: pl.BlockSpec((batch, rows, None, d), lambda h, i, j: (0, i, h, 0))
    key_tile = pl.BlockSpec((batch, block_k, None, d), lambda h, i, j: (0, j, h, 0))
    stats_tile = pl.BlockSpec((batch, None, block_q), lambda h, i, j: (0, h, i))
    d_bias = pl.pallas_call(
        functools.partial(_dbias_kernel, options=options),
        grid=(heads, q_len // block_q, k_len // block_k),
        in_specs=[
            batch_tile(block_q),
            key_tile,
            key_tile,
            pl.BlockSpec((None, None, block_q, block_k), lambda h, i, j: (0, h, i, j)),
            pl.BlockSpec((batch,), lambda h, i, j: (0,)),
            batch_tile(block_q),
            stats_tile,
            stats_tile,
        ],
        out_specs=pl.BlockSpec((None, None, block_q, block_k), lambda h, i, j: (0, h, i, j)),
        out_shape=jax.ShapeDtypeStruct((1, heads, q_len, k_len), jnp.float32),
        interpret=interpret,
        compiler_params=params,
        name="t5_attention_dbias",
    )(q, k, v, bias, lengths, d_out, lse, delta)
    return dq, dk, dv, d_bias.astype(bias.dtype), None


_attention.defvjp(_forward, _backward)


def triton_modules_for_cuda(fn, *args) -> dict[str, str]:
    """Lower jit(fn)(*args) for CUDA on any machine; each Pallas kernel's Triton module as text.

    A development check: cross-platform lowering runs Pallas's Triton lowering without a GPU,
    and every module is verified here (XLA would otherwise receive an unverified module and
    fail only on the GPU). args may be jax.ShapeDtypeStruct. Relies on a private hook of
    jax's Pallas, where the module is still an MLIR object.
    """
    from jax._src.pallas.triton import pallas_call_registration as registration

    lower = getattr(registration.lowering, "lower_jaxpr_to_triton_module", None)
    if lower is None:
        raise RuntimeError("this jax has no lower_jaxpr_to_triton_module: update flash_t5")
    modules = {}

    def verified(*a, **kw):
        result = lower(*a, **kw)
        op = result.module.operation
        name = op.attributes["sym_name"].value
        try:
            op.verify()
        except Exception as e:
            raise RuntimeError(f"Triton module {name} does not verify: {e}") from None
        modules[name] = op.get_asm()
        return result

    registration.lowering.lower_jaxpr_to_triton_module = verified
    try:
        jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    return modules
