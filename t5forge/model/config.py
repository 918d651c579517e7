"""Model configurations: one frozen dataclass and the released architectures by name.

`get_config(name, **overrides)` returns the shapes of Google's released checkpoints (t5x gins,
mesh-TF gins and the Hugging Face configs that ship with the checkpoints). Shapes and their
sources are listed in docs/models.md. Nothing here imports JAX, so `t5forge model-info` and
the parameter/FLOP arithmetic work anywhere.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

ACTIVATIONS = ("relu", "gelu", "gelu_exact", "silu", "linear")


PADDING_MODES = ("auto", "mask", "lengths", "features")
ATTENTION_IMPLS = ("auto", "cudnn", "xla", "plain", "pallas", "pallas_bias")


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and numerics of one T5-family encoder-decoder.

    `num_heads` and `d_ff` apply to every layer unless `layer_heads` / `layer_d_ff` give one
    value per layer (first-layers-narrow models); those per-layer tuples apply to the encoder
    and the decoder alike, and to the decoder's cross-attention as well.
    """

    name: str = "custom"
    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 8
    d_kv: int = 64
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    # ("relu",) = T5 1.0 MLP; ("gelu", "linear") = GEGLU of T5 1.1 (wi_0 -> gelu, times wi_1).
    activations: tuple[str, ...] = ("gelu", "linear")
    # T5 1.0: logits = decoder output @ embedding^T / sqrt(d_model); 1.1: separate fp32 dense.
    tie_embeddings: bool = False
    layer_heads: tuple[int, ...] | None = None
    layer_d_ff: tuple[int, ...] | None = None
    talking_heads: bool = False
    # umT5 gives every layer its own relative-position table; T5 shares one per stack.
    relpos_per_layer: bool = False
    relpos_buckets: int = 32
    relpos_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.0
    # Activations / parameters. Parameters stay fp32 (t5x); the classifier's result and the
    # loss are in `logits_dtype` (fp32 in t5x). The classifier multiplies in
    # `classifier_dtype` (None: `dtype`) and accumulates in `logits_dtype`: bf16 operands
    # with fp32 accumulation is what t5x's fp32 classifier does on a TPU at default precision;
    # "float32" gives fp32 operands (TF32 on a GPU: t5.1.1-small trains 4.4% slower on an H100).
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    logits_dtype: str = "float32"
    classifier_dtype: str | None = None
    # "auto": cuDNN fused attention on GPU with bf16/fp16, XLA's fused path otherwise, and
    # the plain einsum path where neither applies (talking heads, attention dropout).
    # "pallas": flash_t5's kernels (opt-in; interpret mode off the GPU). "pallas_bias": flash_t5
    # where a learned position bias needs its gradient (self-attention), cuDNN elsewhere.
    attention_impl: str = "auto"
    float32_attention_logits: bool = False
    # How an unpacked batch's padding reaches the attention kernels: "mask" (a boolean mask,
    # which jax's cuDNN wrapper folds with the position bias into a per-example tensor),
    # "lengths" (per-example lengths: cuDNN's own padding mask; padding must be trailing, as
    # seqio's converters make it) or "features" (one extra query/key feature that adds a large
    # negative number to q.k at padding keys; no mask at all). Both keep the position bias one
    # (1, heads, q, k) tensor. "auto": lengths where attention runs on cuDNN, mask elsewhere.
    # Packed batches always use segment masks.
    padding: str = "auto"
    # Rematerialisation of each layer in the backward pass: "none", "full", "dots"
    # (keep matmul outputs, recompute the rest).
    remat: str = "none"

    def __post_init__(self) -> None:
        self._check_types()
        for act in self.activations:
            if act not in ACTIVATIONS:
                raise ValueError(f"{self.name}: unknown activation {act!r} (known: {ACTIVATIONS})")
        depth = max(self.num_encoder_layers, self.num_decoder_layers)
        for field in ("layer_heads", "layer_d_ff"):
            values = getattr(self, field)
            if values is not None and len(values) < depth:
                raise ValueError(
                    f"{self.name}: {field} has {len(values)} entries for {depth} layers"
                )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"{self.name}: attention_impl must be one of {ATTENTION_IMPLS}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"{self.name}: padding must be one of {PADDING_MODES}")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"{self.name}: remat must be none, full or dots")
        if self.relpos_buckets % 2:
            raise ValueError(f"{self.name}: relpos_buckets must be even")

    def _check_types(self) -> None:
        """Shapes are positive ints, rates and epsilons numbers, dtypes numpy float names:
        `--override num_heads=abc` must fail here, naming the field, not deep in JAX."""
        positive = (
            "vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
            "num_decoder_layers", "relpos_buckets", "relpos_max_distance",
        )  # fmt: skip
        for field in positive:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        for field in ("layer_heads", "layer_d_ff"):
            values = getattr(self, field)
            if values is not None and not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
            ):
                raise ValueError(f"{self.name}: {field} must be positive integers, got {values!r}")
        for field, low, high in (("dropout_rate", 0.0, 1.0), ("layer_norm_epsilon", 0.0, 1.0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{self.name}: {field} must be a number, got {value!r}")
            if not low <= value < high:
                raise ValueError(f"{self.name}: {field} must be in [{low}, {high}), got {value}")
        for field in ("dtype", "param_dtype", "logits_dtype", "classifier_dtype"):
            value = getattr(self, field)
            if value is None and field == "classifier_dtype":
                continue
            if value not in FLOAT_DTYPES:
                raise ValueError(
                    f"{self.name}: {field} must be one of {FLOAT_DTYPES}, got {value!r}"
                )

    def heads(self, layer: int) -> int:
        return self.num_heads if self.layer_heads is None else self.layer_heads[layer]

    def ff(self, layer: int) -> int:
        return self.d_ff if self.layer_d_ff is None else self.layer_d_ff[layer]

    @property
    def relpos_heads(self) -> int:
        """Rows of the shared relative-position table: the widest layer's head count.

        With per-layer head counts, a layer with h heads reads the table's first h rows.
        """
        if self.layer_heads is None:
            return self.num_heads
        return max(self.layer_heads)

    @property
    def gated(self) -> bool:
        return len(self.activations) > 1

    def replace(self, **overrides) -> T5Config:
        return dataclasses.replace(self, **overrides)


# ---------------------------------------------------------------------------------------------
# Named architectures

T5_VOCAB = 32128  # 32000 SentencePiece pieces + 100 sentinels, padded to a multiple of 128
MT5_VOCAB = 250112
UMT5_VOCAB = 256384
BYTE_VOCAB = 384  # 259 real ids (3 special + 256 bytes), padded to a multiple of 128

# (d_model, d_ff, heads, d_kv, encoder layers, decoder layers)
_V1_0 = {
    "small": (512, 2048, 8, 64, 6, 6),
    "base": (768, 3072, 12, 64, 12, 12),
    "large": (1024, 4096, 16, 64, 24, 24),
    "3b": (1024, 16384, 32, 128, 24, 24),
    "11b": (1024, 65536, 128, 128, 24, 24),
}
_V1_1 = {
    "small": (512, 1024, 6, 64, 8, 8),
    "base": (768, 2048, 12, 64, 12, 12),
    "large": (1024, 2816, 16, 64, 24, 24),
    "xl": (2048, 5120, 32, 64, 24, 24),
    "xxl": (4096, 10240, 64, 64, 24, 24),
}
_BYT5 = {
    "small": (1472, 3584, 6, 64, 12, 4),
    "base": (1536, 3968, 12, 64, 18, 6),
    "large": (1536, 3840, 16, 64, 36, 12),
    "xl": (2560, 6720, 32, 64, 36, 12),
    "xxl": (4672, 12352, 64, 64, 36, 12),
}
# T5-Efficient ("Scale Efficiently", Tay et al.): T5 1.0 blocks (ReLU, tied). d_kv is 64 for
# every size: the released config.json files say so (google/t5-efficient-tiny: d_kv 64), and
# only d_kv 64 reproduces the released sizes (tiny 15.58M); the model cards' "kv 32" column
# is wrong for tiny/mini/small. kv32 models exist as explicit overrides (t5-efficient-small-kv32).
_EFFICIENT = {
    "tiny": (256, 1024, 4, 64, 4, 4),
    "mini": (384, 1536, 8, 64, 4, 4),
    "small": (512, 2048, 8, 64, 6, 6),
    "base": (768, 3072, 12, 64, 12, 12),
    "large": (1024, 4096, 16, 64, 24, 24),
    "xl": (1024, 16384, 32, 128, 24, 24),
    "xxl": (1024, 65536, 128, 128, 24, 24),
}
# First-layers-narrow: 14 layers per stack, the first 4 narrow (heads, d_ff), 10 wide.
_N4W10 = {
    "base": (768, (6, 1024), (12, 2048)),
    "large": (1024, (16, 2560), (32, 5120)),
    "xl": (2048, (32, 5120), (64, 10240)),
}
# Talking heads: T5 1.1 shapes with 24/32 heads of size 32.
_TALKING_HEADS = {
    "base": (768, 2048, 24, 32, 12, 12),
    "large": (1024, 2816, 32, 32, 24, 24),
}

_GEGLU = ("gelu", "linear")


def _shape(name, row, **kw) -> T5Config:
    d_model, d_ff, heads, d_kv, enc, dec = row
    return T5Config(
        name=name,
        d_model=d_model,
        d_ff=d_ff,
        num_heads=heads,
        d_kv=d_kv,
        num_encoder_layers=enc,
        num_decoder_layers=dec,
        **kw,
    )


def _named() -> dict[str, T5Config]:
    configs: dict[str, T5Config] = {}
    for size, row in _V1_0.items():
        name = f"t5.1.0-{size}"
        # Released T5 1.0 checkpoints were pretrained with dropout 0.1 (multitask mixture).
        configs[name] = _shape(
            name, row, activations=("relu",), tie_embeddings=True, dropout_rate=0.1
        )
    for size, row in _V1_1.items():
        for family, vocab in (("t5.1.1", T5_VOCAB), ("mt5", MT5_VOCAB), ("umt5", UMT5_VOCAB)):
            name = f"{family}-{size}"
            configs[name] = _shape(
                name,
                row,
                vocab_size=vocab,
                activations=_GEGLU,
                relpos_per_layer=family == "umt5",
            )
        # LM-adapted and Flan-T5 checkpoints keep the T5 1.1 shapes.
        for alias in ("t5.1.1.lm100k", "flan-t5"):
            name = f"{alias}-{size}"
            configs[name] = configs[f"t5.1.1-{size}"].replace(name=name)
    for size, row in _BYT5.items():
        name = f"byt5-{size}"
        configs[name] = _shape(name, row, vocab_size=BYTE_VOCAB, activations=_GEGLU)
    for size, row in _TALKING_HEADS.items():
        name = f"t5.1.th-{size}"
        configs[name] = _shape(name, row, activations=_GEGLU, talking_heads=True)
    for size, (d_model, narrow, wide) in _N4W10.items():
        name = f"t5.1.n4w10-{size}"
        configs[name] = T5Config(
            name=name,
            d_model=d_model,
            num_heads=wide[0],
            d_kv=64,
            d_ff=wide[1],
            num_encoder_layers=14,
            num_decoder_layers=14,
            activations=_GEGLU,
            layer_heads=(narrow[0],) * 4 + (wide[0],) * 10,
            layer_d_ff=(narrow[1],) * 4 + (wide[1],) * 10,
        )
    for size, row in _EFFICIENT.items():
        name = f"t5-efficient-{size}"
        configs[name] = _shape(name, row, activations=("relu",), tie_embeddings=True)
    # Small enough for unit tests and the CPU quickstart (ours, not a released shape).
    configs["t5.1.1-tiny"] = T5Config(
        name="t5.1.1-tiny",
        d_model=64,
        num_heads=4,
        d_kv=16,
        d_ff=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        activations=_GEGLU,
    )
    return configs


NAMED_CONFIGS: dict[str, T5Config] = _named()

# T5-Efficient override grammar: "t5-efficient-<size>(-<key><int>)*".
_EFFICIENT_KEYS = {
    "el": ("num_encoder_layers",),
    "dl": ("num_decoder_layers",),
    "nl": ("num_encoder_layers", "num_decoder_layers"),
    "ff": ("d_ff",),
    "dm": ("d_model",),
    "kv": ("d_kv",),
    "nh": ("num_heads",),
}
_EFFICIENT_RE = re.compile(r"^t5-efficient-(tiny|mini|small|base|large|xl|xxl)((?:-[a-z]+\d+)*)$")
_ALIASES = {
    # Hugging Face hub names.
    "t5-small": "t5.1.0-small",
    "t5-base": "t5.1.0-base",
    "t5-large": "t5.1.0-large",
    "t5-3b": "t5.1.0-3b",
    "t5-11b": "t5.1.0-11b",
}


def _efficient(name: str) -> T5Config | None:
    match = _EFFICIENT_RE.match(name)
    if not match:
        return None
    config = NAMED_CONFIGS[f"t5-efficient-{match.group(1)}"]
    overrides: dict[str, int] = {}
    for part in filter(None, match.group(2).split("-")):
        key, value = re.match(r"([a-z]+)(\d+)$", part).groups()
        if key not in _EFFICIENT_KEYS:
            raise ValueError(
                f"{name}: unknown override {part!r} (keys: {', '.join(_EFFICIENT_KEYS)})"
            )
        for field in _EFFICIENT_KEYS[key]:
            overrides[field] = int(value)
    return config.replace(name=name, **overrides)


def available_configs() -> list[str]:
    return sorted(NAMED_CONFIGS)


def get_config(name: str, **overrides) -> T5Config:
    """The named architecture, with dataclass fields replaced by `overrides`.

    Names: t5.1.0-{small,base,large,3b,11b} (also t5-small ...), t5.1.1-{small,...,xxl},
    t5.1.1.lm100k-*, flan-t5-*, mt5-*, umt5-*, byt5-*, t5.1.th-{base,large},
    t5.1.n4w10-{base,large,xl}, t5-efficient-<size>[-el|dl|nl|ff|dm|kv|nh<N>...], t5.1.1-tiny.

    Raises:
      ValueError: unknown name or override field.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    config = NAMED_CONFIGS.get(key) or _efficient(key)
    if config is None:
        close = [n for n in available_configs() if key.split("-")[0] in n][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown model config {name!r}{hint}; see `t5forge model-info --list`")
    fields = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config fields {unknown} for {name!r}")
    return config.replace(**overrides) if overrides else config


# ---------------------------------------------------------------------------------------------
# Arithmetic: parameters and FLOPs, in closed form (tests check them against the real model).


def _attention_params(d_model: int, heads: int, d_kv: int) -> int:
    return 4 * d_model * heads * d_kv


def _mlp_params(config: T5Config, layer: int) -> int:
    return (len(config.activations) + 1) * config.d_model * config.ff(layer)


def param_count(config: T5Config) -> int:
    """Number of parameters of the model built from `config`."""
    d = config.d_model
    total = config.vocab_size * d * (1 if config.tie_embeddings else 2)
    for i in range(config.num_encoder_layers):
        h = config.heads(i)
        total += _attention_params(d, h, config.d_kv) + _mlp_params(config, i) + 2 * d
        if config.talking_heads:
            total += 2 * h * h
    for i in range(config.num_decoder_layers):
        h = config.heads(i)
        total += 2 * _attention_params(d, h, config.d_kv) + _mlp_params(config, i) + 3 * d
        if config.talking_heads:
            total += 4 * h * h
    total += 2 * d  # encoder_norm, decoder_norm
    tables = 1
    if config.relpos_per_layer:
        tables = config.num_encoder_layers  # decoder handled below
    total += tables * config.relpos_buckets * config.relpos_heads
    tables = config.num_decoder_layers if config.relpos_per_layer else 1
    total += tables * config.relpos_buckets * config.relpos_heads
    return total


def forward_flops(config: T5Config, inputs_length: int, targets_length: int) -> float:
    """Matmul FLOPs of one forward pass over one (inputs, targets) example.

    2 FLOPs per weight per token for every projection (the encoder on the inputs; the decoder's
    self-attention, cross-attention queries/outputs, MLP and classifier on the targets; the
    cross-attention keys/values on the encoder output), plus 4 * q * k * heads * d_kv per
    attention for scores and weighted values, and with talking heads 4 * q * k * heads^2 for
    the (heads, heads) mixes before and after the softmax. Causal attention is counted in
    full, as is usual for MFU. Norms, softmax and activations are left out.
    """
    d, k = config.d_model, config.d_kv
    li, lt = inputs_length, targets_length

    def attention(q_len: int, k_len: int, heads: int) -> float:
        mixes = heads if config.talking_heads else 0
        return 4 * q_len * k_len * heads * (k + mixes)

    flops = 0.0
    for i in range(config.num_encoder_layers):
        h = config.heads(i)
        flops += 2 * li * (_attention_params(d, h, k) + _mlp_params(config, i))
        flops += attention(li, li, h)
    for i in range(config.num_decoder_layers):
        h = config.heads(i)
        proj = 4 * d * h * k
        flops += 2 * lt * (proj + proj // 2 + _mlp_params(config, i))  # self + cross q,o
        flops += 2 * li * (proj // 2)  # cross-attention keys and values
        flops += attention(lt, lt, h) + attention(lt, li, h)
    flops += 2 * lt * d * config.vocab_size
    return flops


def train_flops(config: T5Config, inputs_length: int, targets_length: int) -> float:
    """Forward + backward FLOPs per example (3x the forward)."""
    return 3.0 * forward_flops(config, inputs_length, targets_length)


def describe(config: T5Config, lengths: Sequence[int] = (512, 114)) -> dict:
    """Summary for `t5forge model-info`: shapes, parameter count and FLOPs."""
    li, lt = lengths
    flops = train_flops(config, li, lt)
    return {
        "name": config.name,
        "parameters": param_count(config),
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_ff": list(config.layer_d_ff) if config.layer_d_ff else config.d_ff,
        "num_heads": list(config.layer_heads) if config.layer_heads else config.num_heads,
        "d_kv": config.d_kv,
        "encoder_layers": config.num_encoder_layers,
        "decoder_layers": config.num_decoder_layers,
        "mlp": "GEGLU" if config.activations == _GEGLU else "+".join(config.activations),
        "tied_embeddings": config.tie_embeddings,
        "talking_heads": config.talking_heads,
        "lengths": {"inputs": li, "targets": lt},
        "train_flops_per_example": flops,
        "train_flops_per_token": flops / (li + lt),
    }
