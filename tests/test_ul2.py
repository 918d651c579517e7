"""UL2's mixture of denoisers on real tokens: frequencies, per-denoiser statistics, lengths.

The corpus is the shared python-docs WET file encoded with the fixture
SentencePiece model (2000 pieces + 100 extra ids, so every id >= 2000 is a
special token: 2000-2004 are t5forge's reserved ids, 2005-2099 sentinels).
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np
import pytest
from conftest import PYTHON_DOCS_WET

pytestmark = pytest.mark.skipif(
    not os.path.exists(PYTHON_DOCS_WET), reason="needs ../shared/data/wet/python-docs-3.11"
)

SPM = os.path.join(os.path.dirname(__file__), "fixtures", "objectives", "spm2000.model")
BASE = 2000  # ordinary ids are below this
NLU, S2S, NLG = 2000, 2001, 2002
FIRST_SENTINEL = 2005  # the lowest sentinel a span may use (95 of the 100)
EOS = 1
LENGTHS = {"inputs": 512, "targets": 512}
WEIGHTS = (3.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0)  # deliberately not uniform
NUM_EXAMPLES = 10_000


@functools.cache
def _vocabulary(extra_ids: int = 100):
    import seqio

    return seqio.SentencePieceVocabulary(SPM, extra_ids=extra_ids)


def _features(vocabulary=None):
    import seqio

    vocabulary = vocabulary or _vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


@functools.cache
def _documents() -> tuple[np.ndarray, ...]:
    """Token ids of the pages that span corruption passes whole (<= 65536 tokens)."""
    from t5forge.beam_jobs import wet

    texts = [page.text for page in wet.read_wet_file(PYTHON_DOCS_WET)]
    encoded = _vocabulary().tokenizer.EncodeAsIds(texts)
    return tuple(np.asarray(ids, np.int32) for ids in encoded if 0 < len(ids) <= 65536)


def _token_dataset(documents, repeats: int = 1):
    import tensorflow as tf

    lengths = [len(d) for d in documents]
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(documents), lengths)
    return tf.data.Dataset.from_tensor_slices({"targets": ragged}).repeat(repeats)


def _ul2(documents, lengths=LENGTHS, seed=17, repeats=1, vocabulary=None, **options):
    import seqio

    from t5forge.preprocessors import ul2_denoisers

    features = _features(vocabulary)
    with seqio.map_seed_manager(seed):
        ds = ul2_denoisers(
            _token_dataset(documents, repeats), lengths, features, denoiser_key="k", **options
        )
        ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
    return ds


@functools.cache
def _mixture_run() -> tuple[dict, ...]:
    """10,000 examples of the weighted mixture at 512/512 (the corpus about 2.2 times)."""
    ds = _ul2(_documents(), weights=WEIGHTS, repeats=3).take(NUM_EXAMPLES)
    return tuple(ds.as_numpy_iterator())


def _denoisers():
    from t5forge.preprocessors import UL2_DENOISERS

    return UL2_DENOISERS


def _segment(example) -> np.ndarray:
    """The raw tokens an example was made from (sentinels matched up, mode and EOS dropped)."""
    inputs, targets = example["inputs"][1:-1], example["targets"][:-1]
    if _denoisers()[int(example["k"])].kind == "S":  # prefix + suffix, no sentinels
        assert not (inputs >= BASE).any() and not (targets >= BASE).any()
        return np.concatenate([inputs, targets])
    pieces = []
    spans = np.split(targets, np.flatnonzero(targets >= BASE))[1:]
    noise = {int(span[0]): span[1:] for span in spans}
    for token in inputs:
        pieces.append(noise[int(token)] if token >= BASE else [token])
    return np.concatenate(pieces)


# ----------------------------------------------------------------------------
# Lengths and the sentinel budget
# ----------------------------------------------------------------------------


def _counts32(length, density: float, mean: float | None):
    """Noise tokens and spans of segments (int or array), as T5's mask counts them (float32)."""
    length = np.asarray(length)
    noise = np.round(length.astype(np.float32) * np.float32(density)).astype(np.int64)
    noise = np.clip(noise, 1, length - 1)
    if mean is None:
        return noise, np.zeros_like(noise)
    spans = np.round(noise.astype(np.float32) / np.float32(mean)).astype(np.int64)
    return noise, np.maximum(spans, 1)


@pytest.mark.parametrize("inputs_length", [512, 64])
def test_lengths_fit_every_segment_length(inputs_length):
    from t5forge.preprocessors import random_spans_helper, ul2_lengths

    lengths = {"inputs": inputs_length, "targets": inputs_length}
    sizes = ul2_lengths(lengths, _vocabulary())
    for denoiser, size in zip(_denoisers(), sizes, strict=True):
        mean = denoiser.mean_noise_span_length
        extra = 0 if mean is None else 1
        helper = random_spans_helper(
            inputs_length - 1, denoiser.noise_density, mean or 1.0, extra, extra
        )[0]
        assert size.tokens_length <= helper  # from the helper, lowered only when needed
        if size.tokens_length < helper:  # one more token would overflow something
            noise, spans = _counts32(size.tokens_length + 1, denoiser.noise_density, mean)
            too_long = size.tokens_length + 1 - noise + spans + 2 > inputs_length
            assert too_long or (size.shrunk and spans > 95), denoiser.name
        # Every segment up to that length fits, mode token and EOS included.
        length = np.arange(2, size.tokens_length + 1)
        noise, spans = _counts32(length, denoiser.noise_density, mean)
        assert (length - noise + spans + 2 <= inputs_length).all(), denoiser.name
        assert (noise + spans + 1 <= size.targets_length).all()
        assert (spans <= 95).all()
        noise, spans = _counts32(size.tokens_length, denoiser.noise_density, mean)
        assert (size.inputs_length, size.num_spans) == (
            size.tokens_length - noise + spans + 2,
            spans,
        )
    if inputs_length == 512:
        by_name = {d.name: s for d, s in zip(_denoisers(), sizes, strict=True)}
        assert by_name["R(3, 0.15)"].tokens_length == random_spans_helper(511, 0.15, 3, 1, 1)[0]
        assert by_name["S(0.25)"].targets_length == 171  # 680 tokens, the last 170 + EOS
        assert by_name["X(3, 0.5)"].shrunk and by_name["X(3, 0.5)"].num_spans == 95


def test_sentinel_budget_error_names_the_denoiser():
    from t5forge.preprocessors import ul2_lengths

    # objectives.md: X at 3/0.5 on 512 inputs needs 128 sentinels (no mode token here).
    with pytest.raises(ValueError, match=r"X\(3, 0.5\).*128 noise spans.*leaves 95"):
        ul2_lengths(LENGTHS, _vocabulary(), mode_tokens=False, sentinel_overflow="error")
    # With 200 extra ids the whole mixture fits at full length.
    roomy = ul2_lengths(LENGTHS, _vocabulary(200), sentinel_overflow="error")
    assert not any(size.shrunk for size in roomy)
    with pytest.raises(ValueError, match="sentinel_overflow='warn'"):
        ul2_lengths(LENGTHS, _vocabulary(), sentinel_overflow="warn")


def test_targets_too_short_raise_naming_the_denoiser():
    from t5forge.preprocessors import ul2_lengths

    with pytest.raises(ValueError, match=r"S\(0.25\).*171.*only 114"):
        ul2_lengths({"inputs": 512, "targets": 114}, _vocabulary())


# ----------------------------------------------------------------------------
# 10,000 examples of the mixture
# ----------------------------------------------------------------------------


def test_denoiser_frequencies_match_the_weights():
    from scipy import stats

    examples = _mixture_run()
    assert len(examples) == NUM_EXAMPLES
    observed = np.bincount([int(ex["k"]) for ex in examples], minlength=len(WEIGHTS))
    expected = NUM_EXAMPLES * np.asarray(WEIGHTS) / sum(WEIGHTS)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(0.999, df=len(WEIGHTS) - 1), (observed, expected)
    # The draw really follows the weights (uniform draws would fail the same test).
    uniform = np.full(len(WEIGHTS), NUM_EXAMPLES / len(WEIGHTS))
    assert ((observed - uniform) ** 2 / uniform).sum() > stats.chi2.ppf(0.999, df=6)


def test_every_example_fits_and_starts_with_its_mode_token():
    mode = {"R": NLU, "S": S2S, "X": NLG}
    denoisers = _denoisers()
    for ex in _mixture_run():
        inputs, targets = ex["inputs"], ex["targets"]
        assert len(inputs) <= 512 and len(targets) <= 512
        assert inputs[-1] == EOS and targets[-1] == EOS
        assert inputs[0] == mode[denoisers[int(ex["k"])].kind]
        # Mode tokens appear only in front; PEGASUS's masks and sentinels the
        # budget keeps free never appear.
        specials = np.concatenate([inputs[1:], targets])
        specials = specials[specials >= BASE]
        assert (specials >= FIRST_SENTINEL).all()


def test_examples_rebuild_the_token_stream():
    """Inputs + targets of consecutive examples give back the corpus, token for token.

    So no real token is lost to the mode token or to trimming, and segments
    follow each other through the concatenated documents.
    """
    stream = np.concatenate(_documents()[:256])  # two concatenation batches of 128
    rebuilt, size = [], 0
    for example in _mixture_run():
        rebuilt.append(_segment(example))
        size += len(rebuilt[-1])
        if size >= len(stream):
            break
    np.testing.assert_array_equal(np.concatenate(rebuilt)[: len(stream)], stream)


def test_each_denoiser_statistics_match_its_span_and_rate():
    from t5forge.preprocessors import ul2_lengths

    sizes = ul2_lengths(LENGTHS, _vocabulary())
    noise = collections.Counter()
    raw = collections.Counter()
    spans = collections.Counter()
    span_lengths = collections.defaultdict(set)
    full = collections.Counter()
    denoisers = _denoisers()
    for ex in _mixture_run():
        k = int(ex["k"])
        segment = _segment(ex)
        if len(segment) != sizes[k].tokens_length:
            continue  # the shorter last segment of a concatenation batch
        full[k] += 1
        targets = ex["targets"][:-1]
        starts = np.flatnonzero(targets >= BASE)
        if denoisers[k].kind == "S":
            assert not (ex["inputs"][1:] >= BASE).any() and not starts.size
            noise[k] += len(targets)
            spans[k] += 1
        else:
            pieces = np.split(targets, starts)[1:]
            noise[k] += sum(len(p) - 1 for p in pieces)
            spans[k] += len(pieces)
            span_lengths[k].update(len(p) - 1 for p in pieces)
            # Sentinels count down from the top, one per span, same order both sides.
            sentinels = targets[starts].tolist()
            assert sentinels == list(range(2099, 2099 - len(sentinels), -1))
            assert ex["inputs"][ex["inputs"] >= FIRST_SENTINEL].tolist() == sentinels
        raw[k] += len(segment)
    for k, denoiser in enumerate(denoisers):
        assert full[k] > 300, denoiser.name
        density = noise[k] / raw[k]
        assert abs(density - denoiser.noise_density) < 0.002, (denoiser.name, density)
        mean_span = noise[k] / spans[k]
        if denoiser.kind == "S":  # one span: the last quarter of the segment
            assert mean_span == pytest.approx(sizes[k].tokens_length / 4, abs=1)
            continue
        want_noise, want_spans = _counts32(
            sizes[k].tokens_length, denoiser.noise_density, denoiser.mean_noise_span_length
        )
        assert mean_span == pytest.approx(want_noise / want_spans)
        if denoiser.name != "X(64, 0.15)":
            assert abs(mean_span / denoiser.mean_noise_span_length - 1) < 0.05, denoiser.name
        else:  # 90 noise tokens in 599 make round(90 / 64) = 1 span (T5's counting)
            assert want_spans == 1
        if denoiser.mean_noise_span_length <= 8:
            assert len(span_lengths[k]) > 5  # span lengths vary around the mean


# ----------------------------------------------------------------------------
# Seeds, small lengths, bytes
# ----------------------------------------------------------------------------


def test_seeded_and_deterministic():
    documents = _documents()[:40]
    first = list(_ul2(documents, seed=5).as_numpy_iterator())
    again = list(_ul2(documents, seed=5).as_numpy_iterator())
    other = list(_ul2(documents, seed=6).as_numpy_iterator())
    assert len(first) == len(again) > 50
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(a[key], b[key]) for key in ("inputs", "targets", "k"))
    assert [int(a["k"]) for a in first[:40]] != [int(c["k"]) for c in other[:40]]


def test_short_lengths_fit_even_where_the_helper_counts_no_span():
    """At 64 inputs, X(64, 0.15) has 10 noise tokens: the helper counts 0 spans, the mask 1."""
    lengths = {"inputs": 64, "targets": 64}
    examples = list(_ul2(_documents()[:20], lengths).as_numpy_iterator())
    assert len(examples) > 300
    seen = set()
    for ex in examples:
        assert len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 64
        assert ex["inputs"][-1] == EOS
        seen.add(int(ex["k"]))
    assert seen == set(range(7))
    rebuilt = np.concatenate([_segment(ex) for ex in examples])
    stream = np.concatenate(_documents()[:20])
    np.testing.assert_array_equal(rebuilt, stream)


def test_byte_vocabulary_shrinks_to_its_six_free_sentinels(caplog, monkeypatch):
    import logging

    import seqio

    from t5forge.preprocessors import ul2

    monkeypatch.setattr(ul2, "_shrink_warned", set())

    vocabulary = seqio.ByteVocabulary()
    documents = tuple(
        np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + 3 for text in _texts(10)
    )
    lengths = {"inputs": 256, "targets": 256}
    with caplog.at_level(logging.WARNING, logger="t5forge.preprocessors.ul2"):
        examples = list(_ul2(documents, lengths, vocabulary=vocabulary).as_numpy_iterator())
    assert "fit the vocabulary's 6 free sentinels" in caplog.text
    for ex in examples:
        assert len(ex["inputs"]) <= 256 and len(ex["targets"]) <= 256
        assert ex["inputs"][0] in (248, 249, 250)  # [NLU] [S2S] [NLG]: bytes 0xF5-0xF7
        sentinels = ex["targets"][ex["targets"] >= 253]
        assert len(sentinels) <= 6


def test_bad_weights_and_denoisers():
    import tensorflow as tf

    from t5forge.preprocessors import Denoiser, ul2_denoisers

    ds = tf.data.Dataset.from_tensor_slices({"targets": [[5, 6, 7]]})
    with pytest.raises(ValueError, match="weights"):
        ul2_denoisers(ds, LENGTHS, _features(), weights=(1, 2))
    with pytest.raises(ValueError, match="weights"):
        ul2_denoisers(ds, LENGTHS, _features(), weights=(0,) * 7)
    with pytest.raises(ValueError, match="noise_density"):
        Denoiser("X", 0.7, 3.0)
    with pytest.raises(ValueError, match="mean span"):
        Denoiser("S", 0.25, 3.0)
    with pytest.raises(ValueError, match="kind"):
        Denoiser("Q", 0.25, 3.0)


# ----------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------


def _write_jsonl(path, texts, language=None) -> None:
    import gzip
    import json

    with gzip.open(path, "wt", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")


def _texts(count: int) -> list[str]:
    from t5forge.beam_jobs import wet

    return [
        page.text for page, _ in zip(wet.read_wet_file(PYTHON_DOCS_WET), range(count), strict=False)
    ]


def test_registered_task_equals_the_preprocessor_by_hand(tmp_path):
    import seqio
    import tensorflow as tf

    from t5forge import pipelines
    from t5forge.preprocessors import ul2_denoisers

    texts = _texts(12)
    _write_jsonl(tmp_path / "c4-train.00000-of-00001.json.gz", texts)
    with pytest.raises(ValueError, match=r"S\(0.25\)"):
        pipelines.register_corpus_tasks(
            "ul2_task",
            str(tmp_path),
            SPM,
            objectives=["ul2"],
            sequence_length={"inputs": 512, "targets": 114},
        )
    names = pipelines.register_corpus_tasks(
        "ul2_task", str(tmp_path), SPM, objectives=["ul2"], sequence_length=LENGTHS
    )
    assert names == ["ul2_task_ul2"]
    task = seqio.get_mixture_or_task("ul2_task_ul2")
    got = list(task.get_dataset(LENGTHS, shuffle=False, seed=3).as_numpy_iterator())
    features = task.output_features
    with seqio.map_seed_manager(3 + 84):  # post-cache seed: placeholder at index 2
        ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
        ds = seqio.preprocessors.tokenize(ds, features, copy_pretokenized=False)
        ds = ul2_denoisers(ds, LENGTHS, features)
        ds = seqio.preprocessors.append_eos_after_trim(ds, features, LENGTHS)
    want = list(ds.as_numpy_iterator())
    assert len(got) == len(want) > 20
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])
        assert x["inputs"][0] in (NLU, S2S, NLG)


def test_mc4_language_tasks_and_mixtures(tmp_path):
    """Both new objectives get a task per language and a mixture, like the others."""
    import json

    import seqio

    from t5forge import pipelines

    texts = _texts(30)
    languages = {"de": texts[:14], "fr": texts[14:30]}
    stats = {"languages": {}, "mixing_rates": {"temperature": {"rates": {"de": 0.6, "fr": 0.4}}}}
    for language, chunk in languages.items():
        directory = tmp_path / language / "train"
        directory.mkdir(parents=True)
        _write_jsonl(directory / f"c4-{language}-train.00000-of-00001.json.gz", chunk)
        stats["languages"][language] = {"train_pages": len(chunk)}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    names = pipelines.register_corpus_tasks(
        "ul2_mc4", str(tmp_path), SPM, objectives=["pegasus_gsg", "ul2"]
    )
    assert names == [
        "ul2_mc4_de_pegasus_gsg",
        "ul2_mc4_fr_pegasus_gsg",
        "ul2_mc4_de_ul2",
        "ul2_mc4_fr_ul2",
        "ul2_mc4_pegasus_gsg",
        "ul2_mc4_ul2",
    ]
    for objective in ("pegasus_gsg", "ul2"):
        mixture = seqio.get_mixture_or_task(f"ul2_mc4_{objective}")
        rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
        assert rates == {f"ul2_mc4_de_{objective}": 0.6, f"ul2_mc4_fr_{objective}": 0.4}
        examples = list(
            mixture.get_dataset(LENGTHS, shuffle=False, seed=1, num_epochs=1)
            .take(8)
            .as_numpy_iterator()
        )
        assert len(examples) == 8
        for ex in examples:
            assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
            assert len(ex["inputs"]) <= 512 and len(ex["targets"]) <= 512
