"""t5forge.pipelines.packing.pack_dataset against seqio's trim_and_pack_dataset.

Every test compares, example for example, our output with
`seqio.utils.trim_and_pack_dataset(ds, lengths, use_custom_ops=False)` on the
same input: same number of rows, same keys, dtypes, shapes and values.
The converter tests run `seqio.EncDecFeatureConverter(pack=True)` /
`seqio.DecoderFeatureConverter(pack=True)` twice, once as is and once with
`seqio.utils.trim_and_pack_dataset` monkeypatched to `pack_dataset` (the one
call the converters make to pack), so everything else the converters do is
seqio's own code in both runs.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
from conftest import DEMO_WET

from t5forge import preprocessors
from t5forge.beam_jobs import wet
from t5forge.pipelines.packing import pack_dataset

SPM = os.path.join(os.path.dirname(__file__), "fixtures", "objectives", "spm2000.model")
SEQIO_PACK = seqio.utils.trim_and_pack_dataset


def _assert_same(ours: tf.data.Dataset, theirs: tf.data.Dataset) -> int:
    assert ours.element_spec == theirs.element_spec
    got = list(ours.as_numpy_iterator())
    want = list(theirs.as_numpy_iterator())
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.keys() == b.keys(), i
        for k in b:
            assert a[k].dtype == b[k].dtype, (i, k)
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"row {i}, {k}")
    return len(want)


def _compare_packers(make, lengths) -> int:
    return _assert_same(pack_dataset(make(), lengths), SEQIO_PACK(make(), lengths, False))


def _synthetic(seed, n, specs, extra=False, ragged=False, zeros=False):
    """{key: random int vectors} with lengths from 0 to well past the packed length."""
    rng = np.random.default_rng(seed)
    cols = {}
    for k, (max_len, dtype) in specs.items():
        sizes = rng.integers(0, max_len + 1, size=n)
        sizes[rng.random(n) < 0.15] = 0  # plenty of empty sequences
        vals = [rng.integers(1, 32000, size=s).astype(dtype) for s in sizes]
        if zeros:  # a zero inside a sequence: seqio keeps only count_nonzero tokens
            for v in vals:
                if len(v) > 2 and rng.random() < 0.3:
                    v[rng.integers(0, len(v))] = 0
        cols[k] = vals

    def make():
        if ragged:
            ds = tf.data.Dataset.from_tensor_slices(
                {
                    k: tf.RaggedTensor.from_row_lengths(
                        np.concatenate(v), np.array([len(x) for x in v], dtype=np.int64)
                    )
                    for k, v in cols.items()
                }
            )
        else:

            def gen():
                for i in range(n):
                    yield {k: v[i] for k, v in cols.items()}

            ds = tf.data.Dataset.from_generator(
                gen,
                output_signature={
                    k: tf.TensorSpec([None], tf.as_dtype(dtype)) for k, (_, dtype) in specs.items()
                },
            )
        if extra:
            ds = ds.enumerate().map(lambda i, x: {**x, "idx": i, "text": tf.strings.as_string(i)})
        return ds

    return make


@pytest.mark.parametrize(
    "lengths,specs,options",
    [
        ({"inputs": 16, "targets": 12}, {"inputs": 30, "targets": 25}, {}),
        ({"inputs": 16, "targets": 12}, {"inputs": 30, "targets": 25}, {"extra": True}),
        ({"inputs": 16, "targets": 12}, {"inputs": 30, "targets": 25}, {"ragged": True}),
        ({"inputs": 16, "targets": 12}, {"inputs": 30, "targets": 25}, {"zeros": True}),
        ({"targets": 16}, {"targets": 40}, {}),
        ({"targets": 16}, {"targets": 40}, {"extra": True, "zeros": True}),
        ({"targets": 64}, {"targets": 20}, {"dtype": np.int64}),
        ({"a": 8, "b": 20, "c": 5}, {"a": 10, "b": 10, "c": 10}, {"dtype": np.int64}),
    ],
    ids=[
        "encdec",
        "encdec-extra",
        "encdec-ragged",
        "encdec-zeros",
        "dec",
        "dec-extra-zeros",
        "dec-int64",
        "three-keys-int64",
    ],
)
def test_synthetic_identical(lengths, specs, options):
    options = dict(options)
    dtype = options.pop("dtype", np.int32)
    make = _synthetic(len(specs), 300, {k: (m, dtype) for k, m in specs.items()}, **options)
    rows = _compare_packers(make, lengths)
    assert rows < 300  # several examples share rows


def test_edge_cases_identical():
    lengths = {"inputs": 4, "targets": 3}

    def make(rows):
        return lambda: tf.data.Dataset.from_generator(
            lambda: iter(rows),
            output_signature={k: tf.TensorSpec([None], tf.int32) for k in lengths},
        )

    empty = {"inputs": np.zeros([0], np.int32), "targets": np.zeros([0], np.int32)}
    cases = [
        [],  # no examples at all
        [empty] * 9,  # whole batches of empty examples: one all-padding row each
        [empty, {"inputs": [1, 2, 3, 4, 5, 6], "targets": [7]}, empty]
        + [{"inputs": [], "targets": [5, 6, 7, 8]}, {"inputs": [9], "targets": []}] * 5,
    ]
    for rows in cases:
        rows = [{k: np.asarray(v, np.int32) for k, v in r.items()} for r in rows]
        _compare_packers(make(rows), lengths)


def test_validation():
    ds = tf.data.Dataset.from_tensors({"targets": tf.zeros([2, 3], tf.int32)})
    with pytest.raises(ValueError, match="one-dimensional"):
        pack_dataset(ds, {"targets": 4})
    with pytest.raises(ValueError, match="not found"):
        pack_dataset(ds, {"inputs": 4})


@functools.cache
def _tokens(count: int = 8) -> tuple[np.ndarray, ...]:
    texts = [p.text for p in wet.read_wet_file(DEMO_WET) if p.text.strip()][:count]
    features = _features()
    ds = seqio.preprocessors.tokenize(
        tf.data.Dataset.from_tensor_slices({"targets": texts}), features, copy_pretokenized=False
    )
    return tuple(ex["targets"] for ex in ds.as_numpy_iterator())


@functools.cache
def _features():
    vocab = seqio.SentencePieceVocabulary(SPM, extra_ids=100)
    return {
        "inputs": seqio.Feature(vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }


def _objective(name, lengths, seed=5):
    tokens = _tokens()
    features = _features()
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "targets": tf.RaggedTensor.from_row_lengths(
                np.concatenate(tokens).astype(np.int32), [len(t) for t in tokens]
            )
        }
    )
    with seqio.map_seed_manager(seed):
        ds = getattr(preprocessors, name)(ds, sequence_length=lengths, output_features=features)
        ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
    # Materialise once so both packers see exactly the same examples.
    examples = list(ds.as_numpy_iterator())
    return lambda: tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]},
    )


@pytest.mark.parametrize(
    "objective,objective_lengths,converter,task_lengths",
    [
        # Span-corruption examples fill their inputs length, so rows rarely merge.
        ("span_corruption", {"inputs": 512, "targets": 114}, "encdec", None),
        ("prefix_lm", {"inputs": 128, "targets": 128}, "encdec", None),
        ("prefix_lm", {"inputs": 128, "targets": 128}, "decoder", None),  # decoder length 256
        ("prefix_lm", {"inputs": 128, "targets": 128}, "decoder", {"targets": 256}),
    ],
    ids=["span-512-114", "prefix-encdec-128", "prefix-decoder-256", "lm-256"],
)
def test_converter_on_real_data_identical(
    monkeypatch, objective, objective_lengths, converter, task_lengths
):
    make = _objective(objective, objective_lengths)
    lengths = task_lengths or objective_lengths
    if task_lengths is not None and "inputs" not in task_lengths:
        inner = make
        make = lambda: inner().map(lambda x: {"targets": x["targets"]})  # noqa: E731
    convert = (
        seqio.EncDecFeatureConverter if converter == "encdec" else seqio.DecoderFeatureConverter
    )

    want = convert(pack=True)(make(), lengths)
    calls = []

    def ours(ds, feature_lengths, use_custom_ops=False):
        assert not use_custom_ops
        calls.append(dict(feature_lengths))
        return pack_dataset(ds, feature_lengths)

    monkeypatch.setattr(seqio.utils, "trim_and_pack_dataset", ours)
    got = convert(pack=True)(make(), lengths)
    assert calls, "the converter did not pack through seqio.utils.trim_and_pack_dataset"
    rows = _assert_same(got, want)
    examples = sum(1 for _ in make())
    if objective == "prefix_lm":
        assert rows < examples, (rows, examples)  # packing merged examples into rows
