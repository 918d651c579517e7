"""The T5 encoder-decoder (t5x `examples/t5/network.py` layout), built from a `T5Config`.

Pre-norm residual blocks; one relative-position table per stack shared by all its layers (per
layer for umT5); a token embedding shared by encoder and decoder; logits tied to the embedding
(T5 1.0, scaled by 1/sqrt(d_model)) or from a separate `logits_dense` (T5 1.1), either one
multiplying in the activation dtype and accumulating in `logits_dtype`. Inputs are integer
token arrays; padding is id 0. Packed examples pass segment ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5forge.model.config import T5Config
from t5forge.model.layers import (
    Dense,
    Embed,
    LayerNorm,
    MlpBlock,
    MultiHeadAttention,
    PaddingFeatures,
    PaddingLengths,
    RelativePositionBiases,
    constrain,
    resolve_attention_impl,
)

_HIDDEN = ("activation_batch", "activation_length", "activation_embed")


def attention_mask(q_segments: jax.Array, k_segments: jax.Array) -> jax.Array:
    """Boolean (batch, 1, q, k): a query sees keys of its own segment.

    Padding queries (segment 0) see every key, so no row is fully masked: their outputs are
    discarded anyway, and a fully masked row would give NaN in fused kernels.
    """
    same = q_segments[:, :, None] == k_segments[:, None, :]
    return jnp.logical_or(same, (q_segments == 0)[:, :, None])[:, None]


def config_attention_impl(config: T5Config, *, dropout: bool = False) -> str:
    """The attention path (`resolve_attention_impl`) that `config`'s layers take."""
    return resolve_attention_impl(
        config.attention_impl,
        dtype=config.dtype,
        talking_heads=config.talking_heads,
        dropout=dropout,
        head_dim=config.d_kv,
    )


def resolve_padding(config: T5Config) -> str:
    """How an unpacked batch's padding reaches the attention kernels: "mask", "lengths" or
    "features" (see `T5Config.padding`); packed batches always use segment masks.

    "auto" avoids the boolean mask where attention runs on cuDNN: jax's cuDNN wrapper adds a
    mask into the bias, which turns the shared (1, heads, q, k) position bias into a
    (batch, heads, q, k) tensor written, read and differentiated per layer. There it sends
    sequence lengths (cuDNN's own padding mask). Elsewhere all give the same numbers and the
    mask is kept.
    """
    if config.padding != "auto":
        return config.padding
    fused = ("cudnn", "pallas", "pallas_bias")
    return "lengths" if config_attention_impl(config) in fused else "mask"


def _remat(module_cls, policy: str):
    if policy == "none":
        return module_cls
    checkpoint_policy = None
    if policy == "dots":
        checkpoint_policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return nn.remat(module_cls, policy=checkpoint_policy, prevent_cse=True)


class _Block(nn.Module):
    config: T5Config
    layer: int
    deterministic: bool = True

    def _dtype(self):
        return jnp.dtype(self.config.dtype), jnp.dtype(self.config.param_dtype)

    def norm(self, name: str) -> LayerNorm:
        dtype, param_dtype = self._dtype()
        return LayerNorm(
            self.config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype, name=name
        )

    def attention(self, name: str) -> MultiHeadAttention:
        cfg = self.config
        dtype, param_dtype = self._dtype()
        return MultiHeadAttention(
            num_heads=cfg.heads(self.layer),
            d_kv=cfg.d_kv,
            dropout_rate=cfg.dropout_rate,
            deterministic=self.deterministic,
            talking_heads=cfg.talking_heads,
            impl=cfg.attention_impl,
            float32_logits=cfg.float32_attention_logits,
            dtype=dtype,
            param_dtype=param_dtype,
            name=name,
        )

    def mlp(self) -> MlpBlock:
        cfg = self.config
        dtype, param_dtype = self._dtype()
        return MlpBlock(
            d_ff=cfg.ff(self.layer),
            activations=cfg.activations,
            dropout_rate=cfg.dropout_rate,
            deterministic=self.deterministic,
            dtype=dtype,
            param_dtype=param_dtype,
            name="mlp",
        )

    def dropout(self, x: jax.Array) -> jax.Array:
        # t5x drops the same units at every position (broadcast over the length axis).
        return nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=self.deterministic
        )

    def layer_bias(self, shared_bias, q_len: int, k_len: int, bidirectional: bool):
        """The relative-position bias this layer adds: its own table (umT5) or the stack's."""
        cfg = self.config
        heads = cfg.heads(self.layer)
        if cfg.relpos_per_layer:
            return RelativePositionBiases(
                num_heads=heads,
                bidirectional=bidirectional,
                num_buckets=cfg.relpos_buckets,
                max_distance=cfg.relpos_max_distance,
                dtype=self._dtype()[0],
                name="relpos_bias",
            )(q_len, k_len)
        return shared_bias[:, :heads]


class EncoderLayer(_Block):
    @nn.compact
    def __call__(self, x, relpos_bias, mask):
        length = x.shape[-2]
        bias = self.layer_bias(relpos_bias, length, length, bidirectional=True)
        y = self.norm("pre_attention_layer_norm")(x)
        y = self.attention("attention")(y, y, bias, mask)
        x = constrain(x + self.dropout(y), _HIDDEN)
        y = self.mlp()(self.norm("pre_mlp_layer_norm")(x))
        return constrain(x + self.dropout(y), _HIDDEN)


class DecoderLayer(_Block):
    @nn.compact
    def __call__(self, x, encoded, relpos_bias, self_mask, cross_mask):
        length = x.shape[-2]
        bias = self.layer_bias(relpos_bias, length, length, bidirectional=False)
        y = self.norm("pre_self_attention_layer_norm")(x)
        y = self.attention("self_attention")(y, y, bias, self_mask, is_causal=True)
        x = x + self.dropout(y)
        y = self.norm("pre_cross_attention_layer_norm")(x)
        y = self.attention("encoder_decoder_attention")(y, encoded, None, cross_mask)
        x = constrain(x + self.dropout(y), _HIDDEN)
        y = self.mlp()(self.norm("pre_mlp_layer_norm")(x))
        return constrain(x + self.dropout(y), _HIDDEN)


class _Stack(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    def shared_bias(self, q_len: int, k_len: int, bidirectional: bool):
        cfg = self.config
        if cfg.relpos_per_layer:
            return None
        return RelativePositionBiases(
            num_heads=cfg.relpos_heads,
            bidirectional=bidirectional,
            num_buckets=cfg.relpos_buckets,
            max_distance=cfg.relpos_max_distance,
            dtype=jnp.dtype(cfg.dtype),
            name="relpos_bias",
        )(q_len, k_len)

    def dropout(self, x: jax.Array, deterministic: bool) -> jax.Array:
        return nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=deterministic
        )

    def embed(self, tokens: jax.Array, deterministic: bool) -> jax.Array:
        x = self.dropout(self.shared_embedding(tokens), deterministic)
        return constrain(x.astype(jnp.dtype(self.config.dtype)), _HIDDEN)

    def final_norm(self, name: str) -> LayerNorm:
        cfg = self.config
        return LayerNorm(
            cfg.layer_norm_epsilon,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            name=name,
        )


class Encoder(_Stack):
    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array,
        deterministic: bool = True,
        padding: PaddingLengths | PaddingFeatures | None = None,
    ) -> jax.Array:
        """`padding`: an unpacked batch's padding in a kernel-friendly form, else None
        (segment masks from `segment_ids`)."""
        cfg = self.config
        length = tokens.shape[-1]
        bias = self.shared_bias(length, length, bidirectional=True)
        mask = attention_mask(segment_ids, segment_ids) if padding is None else padding
        x = self.embed(tokens, deterministic)
        layer_cls = _remat(EncoderLayer, cfg.remat)
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, i, deterministic, name=f"layers_{i}")(x, bias, mask)
        return self.dropout(self.final_norm("encoder_norm")(x), deterministic)


class Decoder(_Stack):
    @nn.compact
    def __call__(
        self,
        encoded: jax.Array,
        decoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array,
        decoder_segment_ids: jax.Array | None,
        deterministic: bool = True,
        cross_padding: PaddingLengths | PaddingFeatures | None = None,
    ) -> jax.Array:
        cfg = self.config
        length = decoder_input_tokens.shape[-1]
        bias = self.shared_bias(length, length, bidirectional=False)
        if cross_padding is not None:
            self_mask = None  # causality alone: padding comes last
            cross_mask = cross_padding
        elif decoder_segment_ids is None:
            # Unpacked: causality alone keeps real targets from seeing padding (it comes last);
            # every target sees every real input token.
            self_mask = None
            cross_mask = (encoder_segment_ids != 0)[:, None, None, :]
            cross_mask = jnp.broadcast_to(
                cross_mask, (cross_mask.shape[0], 1, length, cross_mask.shape[-1])
            )
        else:
            self_mask = attention_mask(decoder_segment_ids, decoder_segment_ids)
            cross_mask = attention_mask(decoder_segment_ids, encoder_segment_ids)
        x = self.embed(decoder_input_tokens, deterministic)
        layer_cls = _remat(DecoderLayer, cfg.remat)
        for i in range(cfg.num_decoder_layers):
            x = layer_cls(cfg, i, deterministic, name=f"layers_{i}")(
                x, encoded, bias, self_mask, cross_mask
            )
        x = self.dropout(self.final_norm("decoder_norm")(x), deterministic)
        logits_dtype = jnp.dtype(cfg.logits_dtype)
        operand_dtype = jnp.dtype(cfg.classifier_dtype or cfg.dtype)
        if cfg.tie_embeddings:
            # T5 1.0 rescales the decoder output before the tied projection.
            x = x * cfg.d_model**-0.5
            logits = self.shared_embedding.attend(x, operand_dtype, logits_dtype)
        else:
            logits = Dense(
                cfg.vocab_size,
                ("embed", "vocab"),
                kernel_init=jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                dtype=operand_dtype,
                param_dtype=jnp.dtype(cfg.param_dtype),
                out_dtype=logits_dtype,
                name="logits_dense",
            )(x)
        return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


class Transformer(nn.Module):
    """T5 encoder-decoder. `__call__` returns logits (batch, target length, vocab).

    `deterministic=False` turns dropout on (needs a "dropout" RNG).
    """

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
        )
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def _padding(self, encoder_input_tokens, packed: bool):
        """(encoder self-attention, cross-attention) padding for the kernels when an unpacked
        batch's padding does not go as a boolean mask (`resolve_padding`), else (None, None)."""
        mode = "mask" if packed else resolve_padding(self.config)
        if mode == "lengths":
            positions = jnp.arange(1, encoder_input_tokens.shape[-1] + 1)
            last = jnp.max(jnp.where(encoder_input_tokens > 0, positions, 0), axis=-1)
            # An all-padding row keeps one key so that no attention row is empty.
            lengths = jnp.maximum(last, 1).astype(jnp.int32)
            return PaddingLengths(lengths, lengths), PaddingLengths(None, lengths)
        if mode == "features":
            real = encoder_input_tokens > 0
            return PaddingFeatures(real, real), PaddingFeatures(None, real)
        return None, None

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, deterministic=True):
        padding, _ = self._padding(encoder_input_tokens, encoder_segment_ids is not None)
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_input_tokens > 0).astype(jnp.int32)
        return self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic, padding)

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        packed = encoder_segment_ids is not None
        padding, cross_padding = self._padding(encoder_input_tokens, packed)
        if not packed:
            encoder_segment_ids = (encoder_input_tokens > 0).astype(jnp.int32)
        encoded = self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic, padding)
        return self.decoder(
            encoded,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids if packed else None,
            deterministic,
            cross_padding,
        )
