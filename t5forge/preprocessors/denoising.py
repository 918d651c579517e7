"""Self-supervised denoising objectives (span corruption, iid, prefix-LM, full-LM).

These preprocessors have the names, signatures and defaults of the ones in
`t5.data.preprocessors` (t5 0.9.4) and, for the same input dataset under the same
`seqio.map_seed_manager(seed)`, produce the same examples in the same order. That
requires drawing randomness exactly as the reference does:

* every seeded transform is a `seqio.map_over_dataset(num_seeds=1)` map, and each
  one takes its seeds from seqio's global counter in the same order as the
  reference pipeline (`select_random_chunk`, `split_tokens`, then `denoise`),
  including transforms that end up not using their seed;
* per-example seeds are split with `tf.random.experimental.stateless_split` into
  the same number of parts, and each part feeds the same stateless op with the
  same shape, bounds and dtype;
* counts such as the number of noise tokens are rounded in float32 with
  `tf.round` (half to even), not with Python floats.

One behaviour is kept but made visible: unique sentinels count down from
`vocab_size - 1`, so when a sequence has more spans than the vocabulary has
extra ids, ordinary token ids are used as sentinels. A warning with the numbers
is logged once per process when that happens.

This module imports only TensorFlow, seqio and numpy.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

logger = logging.getLogger(__name__)

FeatureType = Mapping[str, tf.Tensor]
NoiseMaskFn = Callable[..., tf.Tensor]
TokensFn = Callable[..., tf.Tensor]

# Span corruption passes documents of up to this many tokens through whole.
_CHUNK_MAX_LENGTH = 65536
# Number of documents `reduce_concat_tokens` joins into one sequence.
_CONCAT_BATCH_SIZE = 128

_sentinel_warning_lock = threading.Lock()
_sentinel_warning_issued = False
_reserved_warning_issued = False


# ----------------------------------------------------------------------------
# Length arithmetic
# ----------------------------------------------------------------------------


def _encoded_lengths(
    raw_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int,
    extra_tokens_per_span_targets: int,
) -> tuple[int, int]:
    """Returns (inputs, targets) lengths, EOS included, for `raw_length` tokens."""
    noise = int(round(raw_length * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    inputs = raw_length - noise + spans * extra_tokens_per_span_inputs + 1
    targets = noise + spans * extra_tokens_per_span_targets + 1
    return inputs, targets


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int,
    extra_tokens_per_span_targets: int,
    verbose: bool = False,
) -> tuple[int, int]:
    """Computes the raw segment length and targets length for span corruption.

    Finds the longest raw token segment whose corrupted inputs (non-noise
    tokens, `extra_tokens_per_span_inputs` per noise span, and one EOS) still fit
    in `inputs_length`, so that examples need no padding. Counts use Python's
    `round` (half to even), as the reference does.

    With `noise_density == 0.5`, when the targets would come out one longer
    than the inputs, the raw length and the targets length are both reduced by
    one so that targets equal inputs.

    Args:
      inputs_length: desired length of the encoded inputs, EOS included.
      noise_density: fraction of tokens to corrupt.
      mean_noise_span_length: mean length of a noise span.
      extra_tokens_per_span_inputs: sentinel tokens per noise span in inputs.
      extra_tokens_per_span_targets: sentinel tokens per span in targets.
      verbose: whether to log the computed lengths.

    Returns:
      (tokens_length, targets_length): the raw segment length to split
      documents into, and the resulting targets length including EOS.
    """
    lengths = functools.partial(
        _encoded_lengths,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        extra_tokens_per_span_inputs=extra_tokens_per_span_inputs,
        extra_tokens_per_span_targets=extra_tokens_per_span_targets,
    )
    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    encoded_inputs, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > encoded_inputs:
        tokens_length -= 1
        targets_length -= 1
    if verbose:
        logger.info(
            "tokens_length=%s inputs_length=%s targets_length=%s noise_density=%s "
            "mean_noise_span_length=%s",
            tokens_length,
            encoded_inputs,
            targets_length,
            noise_density,
            mean_noise_span_length,
        )
    return tokens_length, targets_length


# ----------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    mean_noise_span_length: float = 3.0,
    noise_density: float = 0.15,
    input_feature_key: str = "inputs",
    merge_examples_to_reduce_padding: bool = True,
    reserved_for_packing: int | None = None,
    passthrough_feature_keys: Sequence[str] | None = None,
    sentinel_overflow: str = "warn",
) -> tf.data.Dataset:
    """T5's span-corruption pretraining objective (Raffel et al., 2019).

    Chooses a random chunk of each document (at most 65536 tokens), optionally
    concatenates documents, splits them into segments whose corrupted inputs
    exactly fill `sequence_length[input_feature_key]` (after EOS), and replaces
    random noise spans by unique sentinels. Inputs hold the non-noise tokens
    with one sentinel per noise span; targets hold each sentinel followed by
    its span's tokens.

    Args:
      dataset: examples with a tokenized 'targets' feature (no EOS).
      sequence_length: feature lengths; uses `input_feature_key` and 'targets'.
      output_features: features; the 'targets' vocabulary provides sentinels.
      mean_noise_span_length: mean length of a noise span.
      noise_density: fraction of tokens to corrupt.
      input_feature_key: name of the output inputs feature.
      merge_examples_to_reduce_padding: concatenate up to 128 documents before
        splitting, so that few segments are short.
      reserved_for_packing: if set, this many inputs positions are left free.
      passthrough_feature_keys: features copied to every output example; only
        allowed without merging.
      sentinel_overflow: t5forge's option for segments with more noise spans
        than the vocabulary has sentinels, where t5 silently counts down into
        ordinary ids: "warn" (default; t5's output, one warning with the
        numbers), "error" (raise ValueError before building anything) or
        "ignore" (t5's output, silently).

    Returns:
      a dataset of {input_feature_key, 'targets', *passthrough} examples.

    Raises:
      ValueError: if `sequence_length['targets']` is shorter than the targets
        the inputs length produces, or if passthrough keys are combined with
        merging.
    """
    inputs_length = sequence_length[input_feature_key]
    if reserved_for_packing:
        inputs_length -= reserved_for_packing
    tokens_length, targets_length = random_spans_helper(
        inputs_length=inputs_length,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        extra_tokens_per_span_inputs=1,
        extra_tokens_per_span_targets=1,
    )
    if sequence_length["targets"] < targets_length:
        raise ValueError(
            f"span_corruption: inputs length {inputs_length} produces targets of "
            f"{targets_length} tokens (noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length}), but the configured "
            f"targets length is only {sequence_length['targets']}"
        )
    check_sentinel_budget(
        max_noise_spans(tokens_length, noise_density, mean_noise_span_length),
        output_features["targets"].vocabulary,
        f"span_corruption at inputs length {inputs_length}",
        sentinel_overflow,
    )
    if merge_examples_to_reduce_padding and passthrough_feature_keys:
        raise ValueError(
            "span_corruption: passthrough_feature_keys "
            f"{list(passthrough_feature_keys)} need merge_examples_to_reduce_padding=False"
        )
    ds = select_random_chunk(
        dataset,
        output_features=output_features,
        feature_key="targets",
        max_length=_CHUNK_MAX_LENGTH,
        passthrough_feature_keys=passthrough_feature_keys,
    )
    if merge_examples_to_reduce_padding:
        ds = reduce_concat_tokens(ds, feature_key="targets", batch_size=_CONCAT_BATCH_SIZE)
    ds = split_tokens(
        ds,
        feature_key="targets",
        min_tokens_per_segment=None,
        max_tokens_per_segment=tokens_length,
        passthrough_feature_keys=passthrough_feature_keys,
    )
    return denoise(
        ds,
        output_features,
        noise_density=noise_density,
        noise_mask_fn=functools.partial(
            random_spans_noise_mask, mean_noise_span_length=mean_noise_span_length
        ),
        inputs_fn=noise_span_to_unique_sentinel,
        targets_fn=nonnoise_span_to_unique_sentinel,
        input_feature_key=input_feature_key,
        passthrough_feature_keys=passthrough_feature_keys,
    )


def iid_denoising(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """T5's baseline objective: each token is noise independently with p = 0.15.

    Documents are chunked, concatenated in groups of 128 and split to the
    inputs length (minus one for EOS); each run of noise tokens becomes one
    unique sentinel in the inputs, and targets hold the sentinels and noise.
    The targets length is not controlled, so later trimming may cut targets.
    """
    ds = select_random_chunk(
        dataset,
        output_features=output_features,
        feature_key="targets",
        max_length=_CHUNK_MAX_LENGTH,
    )
    ds = reduce_concat_tokens(ds, feature_key="targets", batch_size=_CONCAT_BATCH_SIZE)
    ds = split_tokens_to_inputs_length(
        ds, sequence_length=sequence_length, output_features=output_features
    )
    return denoise(
        ds,
        output_features,
        noise_density=0.15,
        noise_mask_fn=iid_noise_mask,
        inputs_fn=noise_span_to_unique_sentinel,
        targets_fn=nonnoise_span_to_unique_sentinel,
    )


def prefix_lm(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = 0.5,
) -> tf.data.Dataset:
    """T5's prefix language-modeling objective.

    Each document chunk is split (without concatenating documents) into
    segments of the inputs length minus one; a random prefix of each segment
    becomes the inputs and the rest the targets. With the default density the
    prefix length is uniform in [1, segment length - 1].
    """
    ds = select_random_chunk(
        dataset,
        output_features=output_features,
        feature_key="targets",
        max_length=_CHUNK_MAX_LENGTH,
    )
    ds = split_tokens_to_inputs_length(
        ds, sequence_length=sequence_length, output_features=output_features
    )
    return denoise(
        ds,
        output_features,
        noise_density=noise_density,
        noise_mask_fn=random_prefix_noise_mask,
        inputs_fn=drop_nonnoise_tokens,
        targets_fn=drop_noise_tokens,
    )


def full_lm(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """Full language modeling over concatenated documents, EOS between documents.

    EOS is appended to every chunk before up to 128 chunks are concatenated,
    so segments of `sequence_length['targets']` tokens carry EOS only where a
    document (chunk) ended; no further EOS room is reserved.
    """
    ds = select_random_chunk(
        dataset,
        output_features=output_features,
        feature_key="targets",
        max_length=_CHUNK_MAX_LENGTH,
    )
    ds = seqio.preprocessors.append_eos(ds, output_features)
    ds = reduce_concat_tokens(ds, feature_key="targets", batch_size=_CONCAT_BATCH_SIZE)
    return split_tokens(ds, max_tokens_per_segment=sequence_length["targets"])


# ----------------------------------------------------------------------------
# Chunking, concatenation, splitting
# ----------------------------------------------------------------------------


def _check_disjoint(what: str, keys: Sequence[str], passthrough: Sequence[str] | None) -> None:
    """Raises ValueError if a passthrough key is also a key being cut."""
    overlap = set(keys) & set(passthrough or ())
    if overlap:
        raise ValueError(f"{what} keys {sorted(overlap)} are also passthrough keys")


def _chunk_bounds(
    n_tokens: tf.Tensor, length: tf.Tensor, seed: tf.Tensor, uniform_random_start: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns [start, end) of a random chunk of at most `length` of `n_tokens`."""
    if uniform_random_start:
        start = tf.random.stateless_uniform(
            [], minval=1 - length, maxval=n_tokens, dtype=tf.int32, seed=seed
        )
        return tf.maximum(start, 0), tf.minimum(start + length, n_tokens)
    n_chunks = tf.cast(
        tf.math.ceil(tf.cast(n_tokens, tf.float32) / tf.cast(length, tf.float32)), tf.int32
    )
    start = length * tf.random.stateless_uniform([], maxval=n_chunks, dtype=tf.int32, seed=seed)
    return start, tf.minimum(start + length, n_tokens)


def single_example_select_random_chunk(
    features: FeatureType,
    seed: tf.Tensor,
    output_features: Mapping[str, seqio.Feature],
    max_length: int | None = None,
    feature_key: str = "targets",
    additional_feature_keys: Sequence[str] | None = None,
    passthrough_feature_keys: Sequence[str] | None = None,
    sequence_length: Mapping[str, int] | None = None,
    uniform_random_start: bool = False,
    min_length: int | None = None,
) -> dict[str, tf.Tensor]:
    """Cuts one random chunk of at most `max_length` tokens out of an example.

    Shorter sequences are returned whole. By default the chunk is one of the
    consecutive `max_length`-aligned pieces of the sequence, each equally
    likely; with `uniform_random_start` the start is uniform in
    [1 - max_length, n) and clipped at 0. With `min_length`, the chunk length
    is first drawn uniformly from [min_length, max_length).

    Args:
      features: one example holding `feature_key`.
      seed: the example's seed; split in two (length, start).
      output_features: features, used for `add_eos` with `sequence_length`.
      max_length: maximum chunk length; takes priority over sequence_length.
      feature_key: the feature to cut.
      additional_feature_keys: features of the same length cut identically.
      passthrough_feature_keys: features copied unchanged.
      sequence_length: used when `max_length` is None (minus one for EOS).
      uniform_random_start: whether the start is uniform rather than aligned.
      min_length: if set, the lower bound of a random chunk length.

    Returns:
      the chunked features plus the passthrough features.
    """
    _check_disjoint(
        "chunk", [feature_key, *(additional_feature_keys or ())], passthrough_feature_keys
    )
    if max_length is None and sequence_length is not None:
        max_length = sequence_length[feature_key]
        if output_features[feature_key].add_eos:
            max_length -= 1
    if max_length is None:
        raise ValueError("select_random_chunk needs max_length or sequence_length")

    length_seed, start_seed = tf.unstack(tf.random.experimental.stateless_split(seed))
    tokens = features[feature_key]
    if min_length is None:
        length = max_length
    else:
        length = tf.random.stateless_uniform(
            [], minval=min_length, maxval=max_length, dtype=tf.int32, seed=length_seed
        )
    n_tokens = tf.shape(tokens)[0]
    start, end = _chunk_bounds(n_tokens, length, start_seed, uniform_random_start)
    chunk = {feature_key: tokens[start:end]}
    for key in additional_feature_keys or ():
        same_size = tf.debugging.assert_equal(
            n_tokens,
            tf.shape(features[key])[0],
            message=f"select_random_chunk: feature {key} differs in length from {feature_key}",
        )
        with tf.control_dependencies([same_size]):
            chunk[key] = features[key][start:end]
    for key in passthrough_feature_keys or ():
        chunk[key] = features[key]
    return chunk


def _drop_empty(dataset: tf.data.Dataset, feature_key: str) -> tf.data.Dataset:
    """Removes examples whose `feature_key` has no elements."""
    return dataset.filter(lambda ex: tf.size(ex[feature_key]) > 0)


def select_random_chunk(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    max_length: int | None = None,
    feature_key: str = "targets",
    additional_feature_keys: Sequence[str] | None = None,
    passthrough_feature_keys: Sequence[str] | None = None,
    sequence_length: Mapping[str, int] | None = None,
    uniform_random_start: bool = False,
    min_length: int | None = None,
    **unused_kwargs: Any,
) -> tf.data.Dataset:
    """Drops empty examples, then keeps one random chunk of each.

    See `single_example_select_random_chunk`; takes one seed per example
    from seqio's map seed counter.
    """

    @seqio.map_over_dataset(num_seeds=1)
    def chunk_one(features, seed):
        return single_example_select_random_chunk(
            features,
            seed,
            output_features=output_features,
            max_length=max_length,
            feature_key=feature_key,
            additional_feature_keys=additional_feature_keys,
            passthrough_feature_keys=passthrough_feature_keys,
            sequence_length=sequence_length,
            uniform_random_start=uniform_random_start,
            min_length=min_length,
        )

    return chunk_one(_drop_empty(dataset, feature_key))


def reduce_concat_tokens(
    dataset: tf.data.Dataset,
    feature_key: str = "targets",
    batch_size: int = 128,
    **unused_kwargs: Any,
) -> tf.data.Dataset:
    """Concatenates `feature_key` of each run of `batch_size` examples.

    Other features are dropped. Documents are joined with no separator, and
    every token equal to 0 is removed along with the batch padding (so real
    id-0 tokens are lost too), as in the reference.
    """
    only_key = dataset.map(
        lambda ex: {feature_key: ex[feature_key]}, num_parallel_calls=tf.data.AUTOTUNE
    )
    batched = only_key.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

    def flatten_nonzero(batch):
        flat = tf.reshape(batch[feature_key], [-1])
        return {feature_key: tf.boolean_mask(flat, tf.not_equal(flat, 0))}

    return batched.map(flatten_nonzero, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(
    dataset: tf.data.Dataset,
    min_tokens_per_segment: int | None = None,
    max_tokens_per_segment: int | None = None,
    feature_key: str = "targets",
    additional_feature_keys: Sequence[str] | None = None,
    passthrough_feature_keys: Sequence[str] | None = None,
    **unused_kwargs: Any,
) -> tf.data.Dataset:
    """Splits each example into consecutive segments, one output example each.

    Segments have `max_tokens_per_segment` tokens, except the last of each
    example, which may be shorter. With `min_tokens_per_segment`, a segment
    length is drawn per example, log-uniformly in [min, max). A seed is taken
    from seqio's counter even when no length is drawn. Empty examples are
    dropped first.

    Args:
      dataset: examples holding `feature_key`.
      min_tokens_per_segment: optional lower bound of a random segment length.
      max_tokens_per_segment: the segment length (required).
      feature_key: the feature to split.
      additional_feature_keys: same-length features split identically.
      passthrough_feature_keys: features copied to every segment.

    Returns:
      a dataset with one example per segment.
    """
    if max_tokens_per_segment is None:
        raise ValueError("split_tokens needs max_tokens_per_segment")
    _check_disjoint(
        "split", [feature_key, *(additional_feature_keys or ())], passthrough_feature_keys
    )
    split_keys = [feature_key, *(additional_feature_keys or ())]

    @seqio.map_over_dataset(num_seeds=1)
    def to_segments(features, seed):
        tokens = features[feature_key]
        n_tokens = tf.shape(tokens)[0]
        if min_tokens_per_segment is None:
            length = max_tokens_per_segment
        else:
            log_length = tf.random.stateless_uniform(
                [],
                minval=math.log(min_tokens_per_segment),
                maxval=math.log(max_tokens_per_segment),
                seed=seed,
            )
            length = tf.cast(tf.exp(log_length), tf.int32)
        n_segments = tf.cast(
            tf.math.ceil(tf.cast(n_tokens, tf.float32) / tf.cast(length, tf.float32)), tf.int32
        )
        pad = n_segments * length - n_tokens
        last_length = length - pad
        rows, kept = {}, {}
        for key in split_keys:
            value = features[key]
            same_size = tf.debugging.assert_equal(
                n_tokens,
                tf.shape(value)[0],
                message=f"split_tokens: feature {key} differs in length from {feature_key}",
            )
            with tf.control_dependencies([same_size]):
                inner_rank = len(value.shape) - 1
                paddings = tf.concat([[[0, pad]], tf.zeros([inner_rank, 2], tf.int32)], axis=0)
                padded = tf.pad(value, paddings)
                rows[key] = tf.reshape(
                    padded, tf.concat([[-1, length], tf.shape(value)[1:]], axis=0)
                )
                kept[key] = tf.concat([tf.fill([n_segments - 1], length), [last_length]], axis=0)
        pieces = tf.data.Dataset.zip(
            tf.data.Dataset.from_tensor_slices(rows), tf.data.Dataset.from_tensor_slices(kept)
        )
        if passthrough_feature_keys:
            copied = {key: features[key] for key in passthrough_feature_keys}
            repeats = tf.data.Dataset.from_tensors(copied).repeat(tf.cast(n_segments, tf.int64))
            return tf.data.Dataset.zip(pieces, repeats)
        return pieces

    def unpad(pieces, copied):
        rows, kept = pieces
        out = {key: rows[key][: kept[key]] for key in rows}
        out.update(copied)
        return out

    segmented = to_segments(_drop_empty(dataset, feature_key)).flat_map(lambda d: d)
    if passthrough_feature_keys:
        return segmented.map(unpad, num_parallel_calls=tf.data.AUTOTUNE)
    return segmented.map(
        lambda rows, kept: unpad((rows, kept), {}), num_parallel_calls=tf.data.AUTOTUNE
    )


def _split_to_length(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    length_key: str,
    **kwargs: Any,
) -> tf.data.Dataset:
    """split_tokens to `sequence_length[length_key]`, minus one for EOS if added."""
    max_tokens = sequence_length[length_key]
    if output_features[length_key].add_eos:
        max_tokens -= 1
    return split_tokens(dataset, max_tokens_per_segment=max_tokens, **kwargs)


def split_tokens_to_inputs_length(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    **kwargs: Any,
) -> tf.data.Dataset:
    """Splits into segments that fit the inputs length once EOS is appended."""
    return _split_to_length(dataset, sequence_length, output_features, "inputs", **kwargs)


def split_tokens_to_targets_length(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    **kwargs: Any,
) -> tf.data.Dataset:
    """Splits into segments that fit the targets length once EOS is appended."""
    return _split_to_length(dataset, sequence_length, output_features, "targets", **kwargs)


def split_tokens_to_random_length(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    **kwargs: Any,
) -> tf.data.Dataset:
    """Splits into log-uniform random lengths in [8, inputs length (minus EOS))."""
    return _split_to_length(
        dataset, sequence_length, output_features, "inputs", min_tokens_per_segment=8, **kwargs
    )


# ----------------------------------------------------------------------------
# denoise
# ----------------------------------------------------------------------------


def single_example_denoise(
    features: FeatureType,
    seed: tf.Tensor,
    *,
    output_features: Mapping[str, Any],
    noise_density: float,
    noise_mask_fn: NoiseMaskFn,
    inputs_fn: TokensFn,
    targets_fn: TokensFn | None = None,
    passthrough_feature_keys: Sequence[str] | None = None,
    input_feature_key: str = "inputs",
) -> dict[str, tf.Tensor]:
    """Turns the 'targets' tokens of one example into a denoising pair.

    The example's seed is split into six: two for `noise_mask_fn`, two for
    `inputs_fn` and two for `targets_fn`. The noise mask is computed over the
    'targets' tokens; `inputs_fn` and `targets_fn` map (tokens, mask) to the
    new inputs and targets (targets stay the original tokens if `targets_fn`
    is None). Both use the 'targets' vocabulary, which therefore must be the
    inputs vocabulary too.

    Args:
      features: one example holding 'targets'.
      seed: the example's seed.
      output_features: features; 'targets' gives the vocabulary.
      noise_density: passed to `noise_mask_fn`.
      noise_mask_fn: (length, noise_density, seeds) -> bool mask.
      inputs_fn: (tokens, mask, vocabulary, seeds) -> inputs tokens.
      targets_fn: (tokens, mask, vocabulary, seeds) -> targets tokens, or None.
      passthrough_feature_keys: features copied to the output.
      input_feature_key: name of the output inputs feature.

    Returns:
      {input_feature_key: inputs, 'targets': targets, *passthrough}.
    """
    passthrough = list(passthrough_feature_keys or ())
    if input_feature_key in passthrough or "targets" in passthrough:
        raise ValueError(f"passthrough keys cannot contain {input_feature_key!r} or 'targets'")
    vocabulary = output_features["targets"].vocabulary
    if (
        input_feature_key in output_features
        and output_features[input_feature_key].vocabulary != vocabulary
    ):
        raise ValueError(
            "denoise builds inputs from the tokenized targets, so inputs and targets "
            "must share one vocabulary"
        )
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    tokens = features["targets"]
    noise_mask = noise_mask_fn(tf.size(tokens), noise_density, seeds=seeds[0:2])
    inputs = inputs_fn(tokens, noise_mask, vocabulary, seeds=seeds[2:4])
    targets = (
        tokens
        if targets_fn is None
        else targets_fn(tokens, noise_mask, vocabulary, seeds=seeds[4:6])
    )
    out = {input_feature_key: inputs, "targets": targets}
    out.update({key: features[key] for key in features if key in passthrough})
    return out


def denoise(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, Any],
    noise_density: float,
    noise_mask_fn: NoiseMaskFn,
    inputs_fn: TokensFn,
    targets_fn: TokensFn | None = None,
    passthrough_feature_keys: Sequence[str] | None = None,
    input_feature_key: str = "inputs",
    **unused_kwargs: Any,
) -> tf.data.Dataset:
    """Maps `single_example_denoise` over a dataset, one seed per example."""

    @seqio.map_over_dataset(num_seeds=1)
    def denoise_one(features, seed):
        return single_example_denoise(
            features,
            seed,
            output_features=output_features,
            noise_density=noise_density,
            noise_mask_fn=noise_mask_fn,
            inputs_fn=inputs_fn,
            targets_fn=targets_fn,
            passthrough_feature_keys=passthrough_feature_keys,
            input_feature_key=input_feature_key,
        )

    return denoise_one(dataset)


# ----------------------------------------------------------------------------
# Noise masks
# ----------------------------------------------------------------------------


def iid_noise_mask(
    length: tf.Tensor, noise_density: float, seeds: Sequence[tf.Tensor]
) -> tf.Tensor:
    """Marks each of `length` positions as noise independently with p = density."""
    return tf.random.stateless_uniform([length], seed=seeds[0]) < noise_density


def _random_composition(total: tf.Tensor, parts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Splits `total` items into `parts` positive lengths, all splits equally likely.

    Of the `total - 1` gaps between items, `parts - 1` are chosen at random
    (a stateless shuffle of a 0/1 vector) to start a new part.
    """
    gap_starts_part = tf.cast(tf.range(total - 1) < parts - 1, tf.int32)
    starts_part = tf.concat([[0], seqio.stateless_shuffle(gap_starts_part, seed)], axis=0)
    part_of_item = tf.cumsum(starts_part)
    return tf.math.segment_sum(tf.ones_like(part_of_item), part_of_item)


def _span_counts(length: tf.Tensor, noise_density: float, mean_span: float):
    """Returns (noise tokens, noise spans) for a mask of `length` >= 2 positions.

    Rounded in float32 half to even; at least one noise and one non-noise
    token, and at least one span.
    """
    as_float = tf.cast(length, tf.float32)
    noise = tf.cast(tf.round(as_float * noise_density), tf.int32)
    noise = tf.clip_by_value(noise, 1, length - 1)
    spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_span), tf.int32)
    return noise, tf.maximum(spans, 1)


def random_spans_noise_mask(
    length: tf.Tensor,
    noise_density: float,
    seeds: Sequence[tf.Tensor],
    mean_noise_span_length: float = 3.0,
    random_roll: bool = False,
) -> tf.Tensor:
    """Noise mask made of random spans, alternating non-noise then noise.

    The counts are fixed by the length: noise tokens =
    round(length * noise_density) (float32, half to even, kept within
    [1, length - 1]) and noise spans = non-noise spans =
    max(1, round(noise tokens / mean_noise_span_length)). Given the counts,
    every mask that starts with non-noise and ends with noise is equally
    likely; `seeds[0]` draws the noise span lengths and `seeds[1]` the
    non-noise ones. Lengths below 2 are computed as 2 and truncated.

    Args:
      length: int32 scalar, number of tokens.
      noise_density: approximate fraction of noise.
      seeds: two seeds (a [2, 2] int tensor or a pair of pairs).
      mean_noise_span_length: mean length of a noise span.
      random_roll: roll the mask by a uniform random offset in [0, length),
        so that single spans are not always at the end.

    Returns:
      a bool tensor of shape [length].
    """
    if noise_density == 0.0:
        return tf.zeros(length, tf.bool)
    orig_length = length
    length = tf.maximum(length, 2)
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_composition(num_noise, num_spans, seeds[0])
    nonnoise_lengths = _random_composition(length - num_noise, num_spans, seeds[1])
    alternating = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    boundaries = tf.cumsum(alternating)[:-1]
    run_index = tf.cumsum(
        tf.math.unsorted_segment_sum(tf.ones_like(boundaries), boundaries, length)
    )
    mask = tf.equal(run_index % 2, 1)[:orig_length]
    if random_roll:
        roll_seed = (seeds[0][0] + seeds[1][1], seeds[0][1] - seeds[1][0])
        shift = tf.random.stateless_uniform(
            [1], seed=roll_seed, dtype=tf.int32, minval=0, maxval=length
        )[0]
        mask = tf.roll(mask, shift=shift, axis=0)
    return mask


def random_prefix_noise_mask(
    length: tf.Tensor, noise_density: float, seeds: Sequence[tf.Tensor]
) -> tf.Tensor:
    """Marks a random-length prefix as noise (the inputs of prefix_lm).

    The prefix length is uniform in
    [min(L-1, max(1, round((1 - 2 * density) * (L-1)))), L-1] for L = length
    (float32 rounding, half to even), so density 0.5 gives [1, L-1].

    Raises:
      NotImplementedError: if `noise_density` exceeds 0.5.
    """
    if noise_density > 0.5:
        raise NotImplementedError("random_prefix_noise_mask needs noise_density <= 0.5")
    longest = length - 1
    shortest = tf.cast(
        tf.math.round((1 - 2 * noise_density) * tf.cast(longest, tf.float32)), tf.int32
    )
    shortest = tf.minimum(longest, tf.maximum(1, shortest))
    prefix = tf.random.stateless_uniform(
        [], minval=shortest, maxval=longest + 1, dtype=tf.int32, seed=seeds[0]
    )
    return tf.range(length, dtype=tf.int32) < prefix


# ----------------------------------------------------------------------------
# Inputs / targets functions
# ----------------------------------------------------------------------------


def sentinel_id(vocabulary: Any, return_value: int | None = None) -> int:
    """The first sentinel: `return_value` if given, else the last vocabulary id."""
    if return_value is not None:
        return return_value
    return vocabulary.vocab_size - 1


def _sentinel_budget(vocabulary: Any) -> int:
    """Sentinel ids the vocabulary really has (t5forge.vocabularies.num_sentinels).

    Counts `<extra_id_i>` pieces baked into a SentencePiece model too, and for
    bytes the 11 ids of bytes UTF-8 never uses (ByT5's 258, 257, ...).
    """
    from t5forge.vocabularies import num_sentinels

    try:
        return num_sentinels(vocabulary)
    except AttributeError:
        return int(getattr(vocabulary, "extra_ids", 0) or 0)


def max_noise_spans(length: int, noise_density: float, mean_noise_span_length: float) -> int:
    """Noise spans `random_spans_noise_mask` makes in `length` tokens (float32, as it does).

    Never smaller for a longer sequence, so it bounds every shorter segment too.
    """
    import numpy as np

    noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    noise = min(max(noise, 1), length - 1)
    return max(int(np.round(np.float32(noise) / np.float32(mean_noise_span_length))), 1)


SENTINEL_OVERFLOW_POLICIES = ("warn", "error", "ignore")


def check_sentinel_budget(
    num_spans: int, vocabulary: Any, where: str, policy: str = "warn"
) -> None:
    """Acts when `num_spans` sentinels exceed what the vocabulary has.

    The reference keeps counting down into ordinary ids (they then collide with
    real tokens). "warn" keeps its output and logs the numbers once per
    process; "error" raises ValueError; "ignore" does nothing.
    """
    global _sentinel_warning_issued
    if policy not in SENTINEL_OVERFLOW_POLICIES:
        raise ValueError(
            f"sentinel_overflow={policy!r}; choose one of {', '.join(SENTINEL_OVERFLOW_POLICIES)}"
        )
    budget = _sentinel_budget(vocabulary)
    if policy == "ignore":
        return
    if num_spans <= budget:
        _note_reserved_overlap(num_spans, vocabulary, where, budget)
        return
    if policy == "error":
        raise ValueError(
            f"{where}: up to {num_spans} noise spans need {num_spans} sentinels, but the "
            f"vocabulary has only {budget}; use more extra ids, a shorter inputs length, a "
            f"longer mean span, or sentinel_overflow='warn' to keep t5's behaviour"
        )
    with _sentinel_warning_lock:
        if _sentinel_warning_issued:
            return
        _sentinel_warning_issued = True
    vocab_size = int(vocabulary.vocab_size)
    logger.warning(
        "%s: up to %d noise spans but the vocabulary has only %d sentinel ids, so "
        "sentinels %d..%d are ordinary vocabulary ids that also occur as text "
        "(sentinels count down from vocab_size - 1 = %d, as in t5.data.preprocessors). "
        "Logged once.",
        where,
        num_spans,
        budget,
        vocab_size - budget - 1,
        vocab_size - num_spans,
        vocab_size - 1,
    )


def _note_reserved_overlap(num_spans: int, vocabulary: Any, where: str, budget: int) -> None:
    """Logs once when t5's sentinels reach the ids t5forge reserves for UL2 and PEGASUS.

    Span corruption keeps t5's sentinels (its output must equal t5's), so past
    `budget - 5` spans they are ids that t5forge's UL2 and PEGASUS tasks give other
    meanings: harmless alone, two meanings for one id in a mixture with those tasks.
    ByT5 at 1024/189 (9 spans of the 11 byte sentinels) is the common case.
    """
    global _reserved_warning_issued
    from t5forge.preprocessors.reserved_ids import RESERVED_TOKENS, span_sentinel_budget

    if num_spans <= span_sentinel_budget(vocabulary):
        return
    with _sentinel_warning_lock:
        if _reserved_warning_issued:
            return
        _reserved_warning_issued = True
    vocab_size = int(vocabulary.vocab_size)
    first_reserved = vocab_size - budget
    overlap = range(max(first_reserved, vocab_size - num_spans), first_reserved + 5)
    logger.warning(
        "%s: up to %d noise spans use sentinels %d..%d, which include ids %d..%d that "
        "t5forge's UL2 and PEGASUS tasks use for %s. Fine on its own; do not mix this task "
        "with those on this vocabulary, or give it more extra ids (e.g. `byte:9`, "
        "`PATH.model:N`). Logged once.",
        where,
        num_spans,
        vocab_size - 1,
        vocab_size - num_spans,
        overlap.start,
        overlap.stop - 1,
        ", ".join(RESERVED_TOKENS[overlap.start - first_reserved : overlap.stop - first_reserved]),
    )


def noise_span_to_unique_sentinel(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """Replaces the k-th run of noise tokens (k = 1, 2, ...) by id `vocab_size - k`.

    Non-noise tokens are kept; each noise run shrinks to its sentinel, so the
    sentinels in the inputs match the ones `nonnoise_span_to_unique_sentinel`
    puts in the targets. With more runs than the vocabulary has sentinels,
    they continue into ordinary ids, as in the reference (`span_corruption`
    checks its budget up front with `check_sentinel_budget`).

    Args:
      tokens: 1-D integer tensor.
      noise_mask: bool tensor shaped like `tokens`.
      vocabulary: provides `vocab_size` (and `extra_ids`, if it has them).
      seeds: unused.

    Returns:
      a 1-D tensor of the dtype of `tokens`.
    """
    del seeds
    follows_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
    run_start = tf.logical_and(noise_mask, tf.logical_not(follows_noise))
    run_rest = tf.logical_and(noise_mask, follows_noise)
    run_number = tf.cumsum(tf.cast(run_start, tokens.dtype))
    sentinels = sentinel_id(vocabulary) + 1 - run_number
    replaced = tf.where(run_start, sentinels, tokens)
    return tf.boolean_mask(replaced, tf.logical_not(run_rest))


def nonnoise_span_to_unique_sentinel(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """`noise_span_to_unique_sentinel` applied to the non-noise runs instead."""
    return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary, seeds)


def noise_token_to_sentinel(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """Replaces every noise token by the single sentinel `vocab_size - 1`."""
    del seeds
    return tf.where(noise_mask, tf.cast(sentinel_id(vocabulary), tokens.dtype), tokens)


def noise_span_to_sentinel(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """Replaces every run of noise tokens by one copy of the sentinel `vocab_size - 1`."""
    replaced = noise_token_to_sentinel(tokens, noise_mask, vocabulary, seeds)
    follows_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
    return tf.boolean_mask(replaced, tf.logical_not(tf.logical_and(noise_mask, follows_noise)))


def nonnoise_span_to_sentinel(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """`noise_span_to_sentinel` applied to the non-noise runs instead."""
    return noise_span_to_sentinel(tokens, tf.logical_not(noise_mask), vocabulary, seeds)


def drop_noise_tokens(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """Keeps only the non-noise tokens, inserting nothing."""
    del vocabulary, seeds
    return tf.boolean_mask(tokens, tf.logical_not(noise_mask))


def drop_nonnoise_tokens(
    tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: Any, seeds: Any
) -> tf.Tensor:
    """Keeps only the noise tokens, inserting nothing."""
    del vocabulary, seeds
    return tf.boolean_mask(tokens, noise_mask)
