"""t5forge.pipelines: seqio tasks and mixtures over TFRecord / JSON-lines corpora."""

from __future__ import annotations

import functools
import gzip
import json
import os

import numpy as np
import pytest
import seqio
from conftest import DEMO_WET

from t5forge import pipelines, preprocessors
from t5forge.beam_jobs import wet
from t5forge.beam_jobs.writers import encode_example, tfrecord_frame
from t5forge.vocabularies.records import CorpusError

SPM = os.path.join(os.path.dirname(__file__), "fixtures", "objectives", "spm2000.model")
LENGTHS = {"inputs": 512, "targets": 114}
EOS = 1


@functools.cache
def _pages() -> tuple[dict, ...]:
    return tuple(
        {"url": p.url, "timestamp": p.timestamp, "text": p.text}
        for p in list(wet.read_wet_file(DEMO_WET))[:48]
    )


def _write_tfrecord(path, pages) -> None:
    with open(path, "wb") as f:
        for page in pages:
            features = {
                "text": page["text"],
                "url": page["url"],
                "timestamp": page["timestamp"],
                "content-type": "text/plain",
                "content-length": str(len(page["text"].encode("utf-8"))),
            }
            f.write(tfrecord_frame(encode_example(features)))


def _write_jsonl(path, pages, language=None) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for page in pages:
            row = dict(page)
            if language:
                row["language"] = language
            f.write(json.dumps(row) + "\n")


def _shards(pages):
    """Two train shards and one validation shard (file name, split, pages)."""
    return [
        (0, 2, "train", pages[0:20]),
        (1, 2, "train", pages[20:40]),
        (0, 1, "validation", pages[40:48]),
    ]


def _write_c4(directory, fmt: str, prefix: str = "c4", pages=None) -> None:
    pages = list(_pages()) if pages is None else pages
    os.makedirs(directory, exist_ok=True)
    for shard, count, split, chunk in _shards(pages):
        if fmt == "tfrecord":
            name = f"{prefix}-{split}.tfrecord-{shard:05d}-of-{count:05d}"
            _write_tfrecord(os.path.join(directory, name), chunk)
        else:
            name = f"{prefix}-{split}.{shard:05d}-of-{count:05d}.json.gz"
            _write_jsonl(os.path.join(directory, name), chunk)


@pytest.fixture(scope="module")
def c4_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("c4")
    _write_c4(root / "tf", "tfrecord")
    _write_c4(root / "json", "jsonl")
    return str(root / "tf"), str(root / "json")


MC4_LANGS = {"de": (0, 24), "fr": (24, 36), "zh-Latn": (36, 44), "und": (44, 48)}


@pytest.fixture(scope="module")
def mc4_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc4")
    pages = list(_pages())
    languages = {}
    for lang, (start, stop) in MC4_LANGS.items():
        chunk = pages[start:stop]
        train, validation = chunk[:-2], chunk[-2:]
        for split, split_pages in (("train", train), ("validation", validation)):
            d = root / lang / split
            d.mkdir(parents=True)
            _write_tfrecord(str(d / f"c4-{lang}-{split}.tfrecord-00000-of-00001"), split_pages)
        languages[lang] = {
            "train_pages": len(train),
            "validation_pages": len(validation),
            "train_bytes": sum(len(p["text"].encode()) for p in train),
            "validation_bytes": sum(len(p["text"].encode()) for p in validation),
        }
    stats = {
        "languages": languages,
        "mixing_rates": {
            "temperature": {"rates": {"de": 0.5, "fr": 0.3, "zh-Latn": 0.2}},
            "unimax": {"rates": {"de": 0.25, "fr": 0.35, "zh-Latn": 0.4}},
        },
    }
    (root / "stats.json").write_text(json.dumps(stats))
    return str(root)


def _examples(name, lengths=LENGTHS, split="train", seed=3, limit=None):
    ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False, seed=seed)
    if limit:
        ds = ds.take(limit)
    return list(ds.as_numpy_iterator())


def test_register_c4_names_and_span_corruption(c4_dirs):
    tf_dir, _ = c4_dirs
    names = pipelines.register_corpus_tasks("pl_c4", tf_dir, SPM, sequence_length=LENGTHS)
    assert names == [
        "pl_c4_span_corruption",
        "pl_c4_iid_denoising",
        "pl_c4_prefix_lm",
        "pl_c4_full_lm",
        "pl_c4_pegasus_gsg",
        "pl_c4_ul2",
    ]
    task = seqio.get_mixture_or_task("pl_c4_span_corruption")
    assert task.output_features["inputs"].required is False
    assert task.output_features["targets"].add_eos
    vocab = task.output_features["targets"].vocabulary
    examples = _examples("pl_c4_span_corruption")
    assert len(examples) > 10
    for ex in examples:
        inputs, targets = ex["inputs"], ex["targets"]
        assert len(inputs) <= 512 and len(targets) <= 114
        assert inputs[-1] == EOS and inputs[-2] >= vocab.vocab_size - 100  # sentinel + EOS
        assert targets[-1] == EOS and targets[0] == vocab.vocab_size - 1
    # Full segments (all but the last, shorter one) fill 512 / 114 exactly.
    assert (len(examples[0]["inputs"]), len(examples[0]["targets"])) == (512, 114)
    # Re-registering must not crash; replace=False refuses.
    pipelines.register_corpus_tasks("pl_c4", tf_dir, SPM)
    with pytest.raises(ValueError, match="pl_c4_span_corruption"):
        pipelines.register_corpus_tasks("pl_c4", tf_dir, SPM, replace=False)


def test_other_objectives_produce_examples(c4_dirs):
    tf_dir, _ = c4_dirs
    pipelines.register_corpus_tasks("pl_obj", tf_dir, SPM)
    for objective in ("iid_denoising", "prefix_lm"):
        examples = _examples(f"pl_obj_{objective}", limit=4)
        assert examples
        for ex in examples:
            assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
            assert len(ex["inputs"]) <= 512 and len(ex["targets"]) <= 114
    full = _examples("pl_obj_full_lm", {"targets": 256}, limit=4)
    assert [len(ex["targets"]) for ex in full] == [256] * 4
    assert set(full[0]) == {"targets"}


def test_tfrecord_and_jsonl_give_the_same_examples(c4_dirs):
    tf_dir, json_dir = c4_dirs
    pipelines.register_corpus_tasks("pl_fmt_tf", tf_dir, SPM, objectives=["span_corruption"])
    pipelines.register_corpus_tasks("pl_fmt_js", json_dir, SPM, objectives=["span_corruption"])
    a = _examples("pl_fmt_tf_span_corruption")
    b = _examples("pl_fmt_js_span_corruption")
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])
    # A different seed gives different examples.
    c = _examples("pl_fmt_js_span_corruption", seed=4)
    assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c, strict=False))


@pytest.mark.parametrize("which", [0, 1])
def test_splits_read_their_own_files(c4_dirs, which):
    source = pipelines.corpus_source(c4_dirs[which])
    pages = list(_pages())
    for split, expected in (("train", pages[:40]), ("validation", pages[40:48])):
        texts = [
            ex["text"].decode("utf-8")
            for ex in source.get_dataset(split=split, shuffle=False).as_numpy_iterator()
        ]
        assert sorted(texts) == sorted(p["text"] for p in expected)


def test_validation_split_task(c4_dirs):
    pipelines.register_corpus_tasks("pl_val", c4_dirs[0], SPM, objectives=["span_corruption"])
    val = _examples("pl_val_span_corruption", split="validation")
    train = _examples("pl_val_span_corruption", split="train")
    assert 0 < len(val) < len(train)


def test_task_equals_preprocessors_by_hand(c4_dirs):
    tf_dir, _ = c4_dirs
    pipelines.register_corpus_tasks("pl_hand", tf_dir, SPM, objectives=["span_corruption"])
    task = seqio.get_mixture_or_task("pl_hand_span_corruption")
    got = _examples("pl_hand_span_corruption")

    import tensorflow as tf

    texts = [ex["text"] for ex in task.source.get_dataset("train", shuffle=False)]
    assert sorted(t.numpy().decode() for t in texts) == sorted(p["text"] for p in _pages()[:40])
    features = task.output_features
    ds = tf.data.Dataset.from_tensor_slices({"targets": tf.stack(texts)})
    ds = seqio.preprocessors.tokenize(ds, features)
    # seqio runs post-cache steps under seed + 42 * (index of CacheDatasetPlaceholder = 2).
    with seqio.map_seed_manager(3 + 84):
        ds = preprocessors.span_corruption(ds, LENGTHS, features)
        ds = seqio.preprocessors.append_eos_after_trim(ds, features, LENGTHS)
    want = list(ds.as_numpy_iterator())
    assert len(got) == len(want)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


def test_byt5_task(c4_dirs):
    byt5 = {"inputs": 1024, "targets": 189}
    names = pipelines.register_corpus_tasks("pl_byte", c4_dirs[1], "byte", sequence_length=byt5)
    assert "pl_byte_byt5_span_corruption" in names
    vocab = (
        seqio.get_mixture_or_task("pl_byte_byt5_span_corruption")
        .output_features["targets"]
        .vocabulary
    )
    assert isinstance(vocab, seqio.ByteVocabulary) and vocab.vocab_size == 259
    examples = _examples("pl_byte_byt5_span_corruption", byt5, limit=8)
    assert (len(examples[0]["inputs"]), len(examples[0]["targets"])) == (1024, 189)
    for ex in examples:
        assert len(ex["inputs"]) <= 1024 and len(ex["targets"]) <= 189
        assert ex["inputs"][-1] == EOS and 250 <= ex["inputs"][-2] <= 258
        assert ex["targets"][0] == 258
        # Mean span 20 over 1193 bytes: 9 spans, sentinels 258 down to 250.
        sentinels = [t for t in ex["targets"] if t >= 250]
        assert len(sentinels) <= 9
    # The same lengths are impossible for T5's mean span of 3 with bytes (needs 229).
    with pytest.raises(ValueError, match="1024.*189"):
        pipelines.register_corpus_tasks(
            "pl_byte3", c4_dirs[1], "byte", sequence_length=byt5, objectives=["span_corruption"]
        )


def test_impossible_lengths_raise(c4_dirs):
    with pytest.raises(ValueError, match=r"inputs 512 / targets 50") as info:
        pipelines.register_corpus_tasks(
            "pl_bad", c4_dirs[0], SPM, sequence_length={"inputs": 512, "targets": 50}
        )
    assert "114" in str(info.value)
    assert "pl_bad_span_corruption" not in seqio.TaskRegistry.names()
    with pytest.raises(ValueError, match="inputs 512 / targets 113"):
        pipelines.check_sequence_length({"inputs": 512, "targets": 113})
    assert pipelines.check_sequence_length(LENGTHS) == (568, 114)


def test_missing_or_empty_directory(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(CorpusError, match="nope"):
        pipelines.register_corpus_tasks("pl_missing", missing, SPM)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a corpus")
    with pytest.raises(CorpusError, match=str(empty)):
        pipelines.register_corpus_tasks("pl_empty", str(empty), SPM)
    with pytest.raises(ValueError, match="prefix"):
        pipelines.register_corpus_tasks("bad name!", str(empty), SPM)


def test_both_formats_need_a_choice(tmp_path):
    pages = list(_pages())[:48]
    _write_c4(tmp_path, "tfrecord", pages=pages)
    _write_c4(tmp_path, "jsonl", pages=pages)
    with pytest.raises(CorpusError, match="format="):
        pipelines.corpus_source(str(tmp_path))
    source = pipelines.corpus_source(str(tmp_path), format="jsonl")
    assert isinstance(source, pipelines.JsonLinesDataSource)


def test_mc4_tasks_and_mixtures(mc4_dir):
    names = pipelines.register_corpus_tasks("pl_mc4", mc4_dir, SPM, sequence_length=LENGTHS)
    for objective in pipelines.OBJECTIVES:
        for lang in ("de", "fr", "zh_Latn"):
            assert f"pl_mc4_{lang}_{objective}" in names
        assert f"pl_mc4_{objective}" in names
    assert not any("und" in name for name in names)
    with open(os.path.join(mc4_dir, "stats.json")) as f:
        stats = json.load(f)
    mixture = seqio.get_mixture_or_task("pl_mc4_span_corruption")
    assert isinstance(mixture, seqio.Mixture)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    expected = stats["mixing_rates"]["temperature"]["rates"]
    assert rates == {
        f"pl_mc4_{lang.replace('-', '_')}_span_corruption": rate for lang, rate in expected.items()
    }
    examples = list(
        mixture.get_dataset(LENGTHS, split="train", shuffle=False, seed=3, num_epochs=1)
        .take(6)
        .as_numpy_iterator()
    )
    assert len(examples) == 6
    for ex in examples:
        assert len(ex["inputs"]) <= 512 and len(ex["targets"]) <= 114

    pipelines.register_corpus_tasks(
        "pl_mc4", mc4_dir, SPM, mixing_method="unimax", objectives=["span_corruption"]
    )
    mixture = seqio.get_mixture_or_task("pl_mc4_span_corruption")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates["pl_mc4_fr_span_corruption"] == stats["mixing_rates"]["unimax"]["rates"]["fr"]
    with pytest.raises(ValueError, match="mixing_method"):
        pipelines.register_corpus_tasks("pl_mc4", mc4_dir, SPM, mixing_method="uniform")


@pytest.mark.parametrize("command", ["export", "train"])
@pytest.mark.parametrize("method", ["temperature", "unimax"])
def test_cli_mixing_flag_chooses_the_stats_rates(mc4_dir, command, method):
    from t5forge.cli import build_parser
    from t5forge.model.commands import register_tasks

    flags = ["--task", "x", "--corpus", mc4_dir, "--vocab", SPM, "--prefix", f"pl_{command}"]
    flags += ["--mixing", method] if method != "temperature" else []  # the default
    flags += ["--output", "o", *(["--examples", "1"] if command == "export" else ["--steps", "1"])]
    register_tasks(build_parser().parse_args([command, *flags]))
    mixture = seqio.get_mixture_or_task(f"pl_{command}_span_corruption")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates[f"pl_{command}_fr_span_corruption"] == {"temperature": 0.3, "unimax": 0.35}[method]


def test_mc4_language_validation_reads_its_files(mc4_dir):
    source = pipelines.corpus_source(os.path.join(mc4_dir, "fr"))
    texts = [
        ex["text"].decode()
        for ex in source.get_dataset(split="validation", shuffle=False).as_numpy_iterator()
    ]
    assert texts == [p["text"] for p in _pages()[34:36]]


def test_bad_json_lines_are_skipped_and_counted(tmp_path, caplog):
    from t5forge.pipelines import tasks

    path = tmp_path / "c4-train.00000-of-00001.json.gz"
    lines = [
        json.dumps({"text": "fine"}),
        "",
        '{"url": "no text"}',
        '{"text": "cut off',
        json.dumps({"text": 7}),
        json.dumps({"text": "also fine"}),
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    source = pipelines.corpus_source(str(tmp_path))
    for _ in range(2):  # a second pass over the file does not count its lines again
        examples = source.get_dataset("train", shuffle=False).as_numpy_iterator()
        texts = [ex["text"] for ex in examples]
        assert texts == [b"fine", b"also fine"]
    assert tasks.malformed_line_counts()[str(path)] == 3
    assert str(path) in caplog.text and "further ones in this file are counted" in caplog.text


def test_mt5_style_pipeline_with_a_vocabulary_from_train_spm(mc4_dir, tmp_path):
    """mT5's recipe end to end: train-spm on the mC4 directory, then its language tasks."""
    from t5forge.vocabularies import num_sentinels
    from t5forge.vocabularies.train import train_sentencepiece

    settings = train_sentencepiece(
        [mc4_dir], str(tmp_path / "mc4spm"), 1200, byte_fallback=True, sample_sentences=20000
    )
    assert settings["extra_ids"] == 100
    model = str(tmp_path / "mc4spm.model")
    names = pipelines.register_corpus_tasks("mt5t", mc4_dir, model)
    assert "mt5t_de_span_corruption" in names and "mt5t_span_corruption" in names
    vocabulary = (
        seqio.get_mixture_or_task("mt5t_de_span_corruption").output_features["targets"].vocabulary
    )
    assert vocabulary.vocab_size == 1300 and num_sentinels(vocabulary) == 100
    examples = _examples("mt5t_span_corruption", limit=4)
    assert examples
    for ex in examples:
        assert ex["inputs"][-1] == EOS and ex["inputs"][-2] >= 1300 - 100
        assert ex["targets"][0] == 1299  # <extra_id_0>


def test_inputs_too_short_for_the_objective_fail_when_the_dataset_is_built(c4_dirs):
    """At inputs 1 the objectives cut documents into 0-token segments: t5 0.9.4 (whose
    arithmetic t5forge keeps) then makes TensorFlow allocate many GiB and fail with
    "Paddings must be non-negative". The tasks refuse it while the dataset is built, so
    nothing is iterated here; the smallest length that works is named."""
    objectives = ["span_corruption", "iid_denoising", "prefix_lm", "full_lm"]
    pipelines.register_corpus_tasks("pl_short", c4_dirs[1], SPM, objectives=objectives)
    short = {"inputs": 1, "targets": 114}
    for objective in objectives[:3]:
        assert pipelines.tasks.minimum_inputs_length(objective) == 2
        task = seqio.get_mixture_or_task(f"pl_short_{objective}")
        with pytest.raises(
            ValueError,
            match=rf"pl_short_{objective}: sequence length inputs=1 is too short for "
            rf"{objective} .* at least 2",
        ):
            task.get_dataset(short, shuffle=False)
    assert pipelines.tasks.minimum_inputs_length("byt5_span_corruption") == 2
    # full_lm cuts by the targets length (and has no inputs): nothing to refuse.
    assert pipelines.tasks.minimum_inputs_length("full_lm") is None
    assert _examples("pl_short_full_lm", {"targets": 8}, limit=1)

    # From 2 up the examples are t5 0.9.4's, unchanged: a 1-token segment whose single
    # noise span is its token, so seqio's trim to 2 keeps [token, EOS] and cuts the
    # sentinel off (t5 with seqio gives the same rows; checked by hand against t5 0.9.4).
    sentinel = 2099  # spm2000: 2000 pieces + 100 extra ids
    for ex in _examples("pl_short_span_corruption", {"inputs": 2, "targets": 114}, limit=4):
        assert len(ex["inputs"]) == 2 and ex["inputs"][-1] == EOS
        assert list(ex["targets"]) == [sentinel, EOS]
