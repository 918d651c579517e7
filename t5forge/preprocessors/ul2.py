"""UL2's mixture of denoisers (Tay et al., 2022) as one seqio preprocessor.

Seven denoisers (paper §3.1.2, Table 1; the mode token each one's inputs start with):

    R  [NLU]  mean span 3, rate 0.15      R  [NLU]  mean span 8, rate 0.15
    S  [S2S]  prefix-LM: the last 25% of the segment is the target
    X  [NLG]  3 / 0.5,  8 / 0.5,  64 / 0.15,  64 / 0.5

Documents flow as in T5's span corruption (a random chunk of at most 65536
tokens, optionally 128 documents concatenated), then the token stream is cut
into segments whose denoisers are drawn one per segment with a stateless
categorical draw from the example's seed (`weights`, uniform by default as in
the paper's appendix code), each segment being as long as its denoiser's raw
length. R and X segments are span-corrupted with unique sentinels (T5's
noise mask and `noise_span_to_unique_sentinel`, with the density and mean
span read from a table by denoiser index, so one graph serves all seven);
S segments are split into prefix (inputs) and suffix (targets), which is the
same mask with exactly one noise span. The mode token is then prepended to
the inputs.

Lengths (`ul2_lengths`): each denoiser's raw length comes from
`random_spans_helper` for the inputs length minus one position for the mode
token, then is checked with the float32 counts the noise mask really uses
(the helper rounds in float64 and can count 0 spans where the mask makes 1),
so no real token is ever cut by the final `append_eos_after_trim`. A
configured targets length shorter than what a denoiser needs raises
ValueError naming it.

Sentinel budget: five sentinels are reserved (`reserved_ids`: the three mode
tokens and PEGASUS's two masks), so span denoisers may use E - 5 of the E
sentinels a vocabulary has (95 for T5's 100 extra ids). X at 3/0.5 on 512
inputs needs 128. With `sentinel_overflow="shrink"` (default) such a
denoiser's raw length is reduced until its spans fit (X 3/0.5 at 512: 573 raw
tokens, inputs of 384), with a warning giving the numbers; "error" raises
instead. The reference's alternative, counting down into ordinary ids, is not
offered: those ids collide with real text.

The S-denoiser follows the paper (25% of the segment as target), not the
appendix code, which reuses T5's prefix_lm (split point uniform over the
segment); see docs/objectives.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from t5forge.preprocessors import denoising
from t5forge.preprocessors.reserved_ids import reserved_id, span_sentinel_budget

logger = logging.getLogger(__name__)
# (denoiser, inputs length, budget) already reported, so that rebuilding a
# pipeline (seqio does on every get_dataset) does not repeat the warning.
_shrink_warned: set[tuple] = set()

MODE_TOKENS = {"R": "[NLU]", "S": "[S2S]", "X": "[NLG]"}
SENTINEL_OVERFLOW_POLICIES = ("shrink", "error")
# The S-denoiser: prefix-LM with this fraction of the segment as targets.
S_TARGET_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoiser of the mixture.

    Attributes:
      kind: "R", "S" or "X" (which also picks the mode token).
      noise_density: fraction of the segment that goes to the targets.
      mean_noise_span_length: mean noise span; None for the S-denoiser, whose
        one "span" is the segment's suffix.
    """

    kind: str
    noise_density: float
    mean_noise_span_length: float | None = None

    def __post_init__(self):
        if self.kind not in MODE_TOKENS:
            raise ValueError(f"denoiser kind {self.kind!r}: choose one of {list(MODE_TOKENS)}")
        if (self.kind == "S") != (self.mean_noise_span_length is None):
            raise ValueError(f"{self}: only the S-denoiser (and every S) has no mean span length")
        if not 0.0 < self.noise_density < 1.0 or (self.kind != "S" and self.noise_density > 0.5):
            raise ValueError(
                f"{self}: noise_density must be in (0, 1) (at most 0.5 for span denoisers)"
            )
        if self.mean_noise_span_length is not None and self.mean_noise_span_length < 1:
            raise ValueError(f"{self}: mean_noise_span_length must be >= 1")

    @property
    def mode(self) -> str:
        """The mode token prepended to this denoiser's inputs."""
        return MODE_TOKENS[self.kind]

    @property
    def name(self) -> str:
        """A short label such as "R(3, 0.15)" or "S(0.25)"."""
        if self.mean_noise_span_length is None:
            return f"{self.kind}({self.noise_density:g})"
        return f"{self.kind}({self.mean_noise_span_length:g}, {self.noise_density:g})"


UL2_DENOISERS = (
    Denoiser("R", 0.15, 3.0),
    Denoiser("R", 0.15, 8.0),
    Denoiser("S", S_TARGET_FRACTION),
    Denoiser("X", 0.5, 3.0),
    Denoiser("X", 0.5, 8.0),
    Denoiser("X", 0.15, 64.0),
    Denoiser("X", 0.5, 64.0),
)


@dataclasses.dataclass(frozen=True)
class DenoiserLengths:
    """Lengths of one denoiser's examples (the longest; the last segment of a stream is shorter).

    Attributes:
      tokens_length: raw tokens per segment.
      inputs_length: inputs with mode token and EOS.
      targets_length: targets with EOS.
      num_spans: sentinels used (0 for S).
      shrunk: whether the raw length was reduced to fit the sentinel budget.
    """

    tokens_length: int
    inputs_length: int
    targets_length: int
    num_spans: int
    shrunk: bool = False


def _noise_counts(length: int, denoiser: Denoiser) -> tuple[int, int]:
    """(noise tokens, spans) of a `length`-token segment, rounded in float32 as the mask is."""
    noise = int(np.round(np.float32(length) * np.float32(denoiser.noise_density)))
    noise = min(max(noise, 1), max(length - 1, 1))
    if denoiser.mean_noise_span_length is None:
        return noise, 0
    return noise, denoising.max_noise_spans(
        length, denoiser.noise_density, denoiser.mean_noise_span_length
    )


def _encoded(length: int, denoiser: Denoiser, mode_tokens: int) -> tuple[int, int, int]:
    """(inputs, targets, spans) of a `length`-token segment, mode token and EOS included."""
    noise, spans = _noise_counts(length, denoiser)
    return length - noise + spans + 1 + mode_tokens, noise + spans + 1, spans


def ul2_lengths(
    sequence_length: Mapping[str, int],
    vocabulary: Any,
    denoisers: Sequence[Denoiser] = UL2_DENOISERS,
    mode_tokens: bool = True,
    sentinel_overflow: str = "shrink",
    input_feature_key: str = "inputs",
) -> list[DenoiserLengths]:
    """Each denoiser's segment and example lengths, checked against the budget.

    Args:
      sequence_length: lengths of `input_feature_key` and 'targets', EOS included.
      vocabulary: gives the sentinel budget (`reserved_ids.span_sentinel_budget`).
      denoisers: the mixture.
      mode_tokens: leave the first inputs position for the mode token.
      sentinel_overflow: "shrink" a denoiser that needs more sentinels than
        the budget, or raise ("error").
      input_feature_key: name of the inputs feature.

    Returns:
      one `DenoiserLengths` per denoiser, in order.

    Raises:
      ValueError: a bad policy, inputs too short, a targets length shorter
        than a denoiser needs, or sentinel overflow under "error" (or with no
        sentinels left at all).
    """
    if sentinel_overflow not in SENTINEL_OVERFLOW_POLICIES:
        raise ValueError(
            f"sentinel_overflow={sentinel_overflow!r}; choose one of "
            f"{', '.join(SENTINEL_OVERFLOW_POLICIES)}"
        )
    inputs_length = int(sequence_length[input_feature_key])
    targets_length = int(sequence_length["targets"])
    reserved = 1 if mode_tokens else 0
    if inputs_length < 3 + reserved:
        raise ValueError(
            f"ul2: inputs length {inputs_length} is too short (need >= {3 + reserved})"
        )
    budget = span_sentinel_budget(vocabulary)
    return [
        _denoiser_lengths(
            denoiser, inputs_length, targets_length, reserved, budget, sentinel_overflow
        )
        for denoiser in denoisers
    ]


def _denoiser_lengths(
    denoiser: Denoiser,
    inputs_length: int,
    targets_length: int,
    reserved: int,
    budget: int,
    sentinel_overflow: str,
) -> DenoiserLengths:
    """One denoiser's lengths for `ul2_lengths` (arguments as there; `reserved`: mode tokens)."""
    if denoiser.mean_noise_span_length is None:  # S: no sentinels
        tokens, _ = denoising.random_spans_helper(
            inputs_length - reserved, denoiser.noise_density, 1.0, 0, 0
        )
    else:
        tokens, _ = denoising.random_spans_helper(
            inputs_length - reserved, denoiser.noise_density, denoiser.mean_noise_span_length, 1, 1
        )
    while tokens > 2 and _encoded(tokens, denoiser, reserved)[0] > inputs_length:
        tokens -= 1  # the helper counted 0 spans where the mask makes 1
    needed = _encoded(tokens, denoiser, reserved)[2]
    shrunk = needed > budget
    if shrunk and (sentinel_overflow == "error" or budget == 0):
        raise ValueError(
            f"ul2 denoiser {denoiser.name} at inputs length {inputs_length}: {needed} "
            f"noise spans need {needed} sentinels, but the vocabulary leaves "
            f"{budget} (its sentinels minus the 5 reserved ids); use a vocabulary "
            "with more extra ids (PATH.model:N), a shorter inputs length, or "
            "sentinel_overflow='shrink'"
        )
    while _encoded(tokens, denoiser, reserved)[2] > budget:
        tokens -= 1  # spans never grow as a segment shortens
    inputs, targets, spans = _encoded(tokens, denoiser, reserved)
    if targets > targets_length:
        raise ValueError(
            f"ul2 denoiser {denoiser.name}: inputs length {inputs_length} makes targets of "
            f"{targets} tokens, but the configured targets length is only {targets_length}"
        )
    return DenoiserLengths(tokens, inputs, targets, spans, shrunk)


def _check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Sampling probabilities from per-denoiser weights (None: uniform); ValueError if invalid."""
    if weights is None:
        return np.full(count, 1.0 / count)
    values = np.asarray(weights, dtype=np.float64)
    if values.shape != (count,) or (values < 0).any() or not values.sum() > 0:
        raise ValueError(
            f"weights={tuple(weights)!r}: need {count} non-negative numbers, one per denoiser, "
            "not all 0"
        )
    return values / values.sum()


def assign_denoisers(
    dataset: tf.data.Dataset,
    tokens_lengths: Sequence[int],
    weights: Sequence[float],
    feature_key: str = "targets",
    denoiser_key: str = "denoiser",
) -> tf.data.Dataset:
    """Cuts each token sequence into segments, each with a denoiser drawn by `weights`.

    Per example, enough denoiser indices to cover the sequence are drawn at
    once (`tf.random.stateless_categorical`, the example's seed); segment k
    is `tokens_lengths[choice k]` tokens long and starts where segment k - 1
    ended. The draw for a segment never depends on whether it is the last, so
    every segment's denoiser follows `weights`. Only the last segment of a
    sequence can be shorter than its denoiser's length.

    Returns:
      a dataset of {feature_key: segment tokens, denoiser_key: int32 index}.
    """
    lengths = tf.constant(list(tokens_lengths), tf.int32)
    shortest, longest = int(min(tokens_lengths)), int(max(tokens_lengths))
    logits = tf.math.log(tf.constant([list(weights)], tf.float64))

    @seqio.map_over_dataset(num_seeds=1)
    def cut(features, seed):
        tokens = features[feature_key]
        n_tokens = tf.size(tokens)
        # Draws of the shortest length alone would cover the sequence.
        draws = n_tokens // shortest + 1
        choice = tf.random.stateless_categorical(logits, draws, seed, dtype=tf.int32)[0]
        ends = tf.cumsum(tf.gather(lengths, choice))
        starts = ends - tf.gather(lengths, choice)
        used = starts < n_tokens
        starts, choice = tf.boolean_mask(starts, used), tf.boolean_mask(choice, used)
        sizes = tf.minimum(tf.boolean_mask(ends, used), n_tokens) - starts
        # One padded row per segment (a gather, as split_tokens pads and reshapes).
        positions = tf.minimum(starts[:, None] + tf.range(longest)[None, :], n_tokens - 1)
        rows = tf.gather(tokens, positions)
        return tf.data.Dataset.from_tensor_slices((rows, sizes, choice))

    def unpad(row, size, choice):
        return {feature_key: row[:size], denoiser_key: choice}

    nonempty = dataset.filter(lambda ex: tf.size(ex[feature_key]) > 0)
    segments = cut(nonempty).flat_map(lambda rows: rows)
    return segments.map(unpad, num_parallel_calls=tf.data.AUTOTUNE)


# The S-denoiser's "mean span": so long that every segment has exactly one
# noise span, which the mask puts at the end, i.e. the suffix.
_ONE_SPAN = 1e9


def mixture_noise_mask(
    length: tf.Tensor, noise_density: tf.Tensor, mean_noise_span_length: tf.Tensor, seeds
) -> tf.Tensor:
    """`random_spans_noise_mask` with the density and mean span as float32 tensors.

    The same counts (float32, half to even) and the same draws for the same
    seeds, so one graph serves every denoiser without branching; a mean span
    of `_ONE_SPAN` gives the single-span mask, the S-denoiser's suffix.
    """
    orig_length = length
    length = tf.maximum(length, 2)
    num_noise, num_spans = denoising._span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = denoising._random_composition(num_noise, num_spans, seeds[0])
    nonnoise_lengths = denoising._random_composition(length - num_noise, num_spans, seeds[1])
    alternating = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    boundaries = tf.cumsum(alternating)[:-1]
    run_index = tf.cumsum(
        tf.math.unsorted_segment_sum(tf.ones_like(boundaries), boundaries, length)
    )
    return tf.equal(run_index % 2, 1)[:orig_length]


def ul2_denoisers(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    denoisers: Sequence[Denoiser] = UL2_DENOISERS,
    weights: Sequence[float] | None = None,
    mode_tokens: bool = True,
    sentinel_overflow: str = "shrink",
    merge_examples_to_reduce_padding: bool = True,
    denoiser_key: str | None = None,
    input_feature_key: str = "inputs",
) -> tf.data.Dataset:
    """UL2's mixture of denoisers over tokenized documents.

    Args:
      dataset: examples with a tokenized 'targets' feature (no EOS).
      sequence_length: lengths of `input_feature_key` and 'targets', EOS included.
      output_features: features; the 'targets' vocabulary gives sentinel and
        mode-token ids (`reserved_ids`).
      denoisers: the mixture (default `UL2_DENOISERS`, the paper's seven).
      weights: sampling weight per denoiser (normalised; default uniform).
      mode_tokens: prepend [NLU] / [S2S] / [NLG] (its position is reserved,
        so real tokens are never cut for it).
      sentinel_overflow: "shrink" or "error" (see `ul2_lengths`).
      merge_examples_to_reduce_padding: concatenate up to 128 documents
        before cutting, as span corruption does.
      denoiser_key: if set, each example also holds its denoiser's index in
        `denoisers` under this key (for analysis; tasks leave it out).
      input_feature_key: name of the output inputs feature.

    Returns:
      a dataset of {input_feature_key, 'targets'} examples without EOS.

    Raises:
      ValueError: see `ul2_lengths`; bad weights; inputs and targets with
        different vocabularies.
    """
    vocabulary = output_features["targets"].vocabulary
    if (
        input_feature_key in output_features
        and output_features[input_feature_key].vocabulary != vocabulary
    ):
        raise ValueError("ul2_denoisers: inputs and targets must share one vocabulary")
    if not denoisers:
        raise ValueError("ul2_denoisers: no denoisers given")
    probabilities = _check_weights(weights, len(denoisers))
    lengths = ul2_lengths(
        sequence_length, vocabulary, denoisers, mode_tokens, sentinel_overflow, input_feature_key
    )
    for denoiser, size in zip(denoisers, lengths, strict=True):
        key = (denoiser, sequence_length[input_feature_key], span_sentinel_budget(vocabulary))
        if size.shrunk and key not in _shrink_warned:
            _shrink_warned.add(key)
            logger.warning(
                "ul2 denoiser %s: segments shortened to %d raw tokens (inputs %d of %d) so that "
                "its %d noise spans fit the vocabulary's %d free sentinels (logged once)",
                denoiser.name,
                size.tokens_length,
                size.inputs_length,
                sequence_length[input_feature_key],
                size.num_spans,
                span_sentinel_budget(vocabulary),
            )
    mode_ids = [reserved_id(vocabulary, denoiser.mode) for denoiser in denoisers]

    ds = denoising.select_random_chunk(
        dataset,
        output_features=output_features,
        feature_key="targets",
        max_length=denoising._CHUNK_MAX_LENGTH,
    )
    if merge_examples_to_reduce_padding:
        ds = denoising.reduce_concat_tokens(
            ds, feature_key="targets", batch_size=denoising._CONCAT_BATCH_SIZE
        )
    ds = assign_denoisers(
        ds, [size.tokens_length for size in lengths], probabilities, denoiser_key="denoiser"
    )

    densities = tf.constant([d.noise_density for d in denoisers], tf.float32)
    mean_spans = tf.constant([d.mean_noise_span_length or _ONE_SPAN for d in denoisers], tf.float32)
    is_prefix_lm = tf.constant([d.mean_noise_span_length is None for d in denoisers])
    mode_ids = tf.constant(mode_ids, tf.int32)

    @seqio.map_over_dataset(num_seeds=1)
    def denoise_one(features, seed):
        tokens, index = features["targets"], features["denoiser"]
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        mask = mixture_noise_mask(tf.size(tokens), densities[index], mean_spans[index], seeds=seeds)
        inputs = denoising.noise_span_to_unique_sentinel(tokens, mask, vocabulary, None)
        targets = denoising.nonnoise_span_to_unique_sentinel(tokens, mask, vocabulary, None)
        # Prefix-LM: the one sentinel (last in the inputs, first in the
        # targets) is dropped, leaving prefix -> suffix. A 1-token segment
        # has no noise, hence no sentinel to drop.
        drop = tf.cast(tf.logical_and(is_prefix_lm[index], tf.reduce_any(mask)), tf.int32)
        inputs = inputs[: tf.size(inputs) - drop]
        targets = targets[drop:]
        if mode_tokens:
            inputs = tf.concat([tf.cast(mode_ids[index : index + 1], tokens.dtype), inputs], 0)
        out = {input_feature_key: inputs, "targets": targets}
        if denoiser_key:
            out[denoiser_key] = index
        return out

    return denoise_one(ds)
