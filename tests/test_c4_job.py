"""The whole build-c4 job: conformance with TFDS's graph, determinism, output formats."""

import glob
import gzip
import json
import os
import random
from pathlib import Path

import pytest
from conftest import DEMO_WET

from t5forge.beam_jobs import c4, job, sentences, wet

BADWORDS = ["kill", "execute", "abort", "strip tease", "slave"]


def _record(page, url, timestamp, text=None):
    body = text if text is not None else page.text
    header = (
        f"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: {url}\r\n"
        f"WARC-Date: {timestamp}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n"
    )
    return gzip.compress((header + body + "\r\n\r\n").encode("utf-8"), mtime=0)


@pytest.fixture(scope="module")
def wet_files(tmp_path_factory):
    """The demo slice plus a file of URL variants and mirrored pages."""
    rng = random.Random(7)
    pages = list(wet.read_wet_file(DEMO_WET))[:40]
    out = []
    for i, page in enumerate(pages):
        path = page.url.split("://", 1)[1]
        older, newer = "2019-04-01T00:00:00Z", "2019-05-30T00:00:00Z"
        extra = "\nThis is an older revision of the page that nobody should keep around."
        # www/http variant: newer than the original for even pages, older for odd.
        out.append(
            _record(page, f"http://www.{path}", newer if i % 2 == 0 else older, page.text + extra)
        )
        out.append(
            _record(
                page, f"https://{path}?utm_source=newsletter", older, page.text + extra + " Utm."
            )
        )
        out.append(_record(page, f"https://{path}/", "2019-04-02T00:00:00Z", page.text + extra))
        if i % 3 == 0:  # a full mirror on another host
            out.append(_record(page, f"https://mirror.example.org/{path}", newer))
        elif i % 3 == 1:  # a partial mirror: a random half of the lines
            lines = page.text.split("\n")
            half = "\n".join(sorted(rng.sample(lines, len(lines) // 2), key=lines.index))
            out.append(_record(page, f"https://copy.example.net/{i}.html", older, half))
    d = tmp_path_factory.mktemp("wet")
    dup = d / "duplicates.warc.wet.gz"
    dup.write_bytes(b"".join(out))
    words = d / "badwords.txt"
    words.write_text("\n".join(BADWORDS) + "\n")
    return [DEMO_WET, str(dup)], str(words)


def run_ours(
    paths,
    output,
    workers,
    fmt="tfrecord",
    shard_bytes=c4.DEFAULT_SHARD_BYTES,
    badwords=None,
    variant="en",
):
    config = c4.C4Config(
        variant=variant,
        output_format=fmt,
        shard_bytes=shard_bytes,
        badwords={"en": badwords} if badwords else None,
    )
    return job.run_job(
        build=lambda p, tmp, progress: c4.build_c4(p, paths, config, tmp),
        output_dir=output,
        overwrite=False,
        own_files=lambda n: n.startswith("c4-") or n == "stats.json",
        beam_args=[],
        workers=workers,
        describe={"job": "build-c4"},
        splits=c4.SPLITS,
        funnel=c4.funnel,
    )


def read_tfrecord_corpus(directory):
    tf = pytest.importorskip("tensorflow")
    rows = set()
    for path in sorted(glob.glob(os.path.join(directory, "c4-*.tfrecord-*"))):
        split = "validation" if "-validation." in path else "train"
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            ex = tf.train.Example.FromString(raw)
            f = {k: v.bytes_list.value[0].decode() for k, v in ex.features.feature.items()}
            assert set(f) == {"url", "text", "timestamp", "content-type", "content-length"}
            rows.add(
                (split, f["url"], f["text"], f["timestamp"], f["content-type"], f["content-length"])
            )
    return rows


def read_reference(prefix):
    rows = set()
    for path in glob.glob(prefix + "-*"):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            rows.add(
                (
                    r["split"],
                    r["url"],
                    r["text"],
                    r["timestamp"],
                    r["content-type"],
                    r["content-length"],
                )
            )
    return rows


def test_job_equals_tfds_graph(wet_files, tmp_path):
    from c4_reference import run_tfds_c4

    from t5forge.beam_jobs.badwords import load_badwords

    paths, badwords_file = wet_files
    words = load_badwords(badwords_file)
    run_tfds_c4(
        paths, str(tmp_path / "ref"), sentences.get_sentence_counter("punkt"), badwords=words
    )
    expected = read_reference(str(tmp_path / "ref"))
    stats = run_ours(paths, str(tmp_path / "ours"), workers=2, badwords=sorted(words["en"]))
    got = read_tfrecord_corpus(str(tmp_path / "ours"))
    assert got == expected
    # The fixture exercises every step: duplicates, mirrors, bad words.
    counters = stats["counters"]
    assert counters["duplicate-url-filter"]["filtered"] >= 80
    assert counters["dedupe-lines"]["line-filtered:global_duplicate"] > 100
    assert counters["badwords-filter"]["filtered"] > 0
    assert len(got) > 200
    assert stats["splits"]["train"]["pages"] + stats["splits"]["validation"]["pages"] == len(got)


def test_noclean_variant_equals_tfds_graph(wet_files, tmp_path):
    from c4_reference import run_tfds_c4

    paths, _ = wet_files
    run_tfds_c4(
        paths,
        str(tmp_path / "ref"),
        sentences.get_sentence_counter("punkt"),
        clean=False,
        dedupe=False,
    )
    run_ours(paths, str(tmp_path / "ours"), workers=1, variant="en.noclean")
    assert read_tfrecord_corpus(str(tmp_path / "ours")) == read_reference(str(tmp_path / "ref"))


def _file_bytes(directory):
    return {
        os.path.basename(p): open(p, "rb").read()
        for p in sorted(glob.glob(os.path.join(directory, "c4-*")))
    }


@pytest.mark.parametrize("fmt", ["tfrecord", "jsonl"])
def test_one_and_two_workers_write_identical_shards(wet_files, tmp_path, fmt):
    paths, _ = wet_files
    run_ours(paths, str(tmp_path / "w1"), workers=1, fmt=fmt, shard_bytes=300_000)
    run_ours(paths, str(tmp_path / "w2"), workers=2, fmt=fmt, shard_bytes=300_000)
    one, two = _file_bytes(str(tmp_path / "w1")), _file_bytes(str(tmp_path / "w2"))
    assert one == two
    assert len([n for n in one if "-train." in n]) > 3  # several shards
    assert any("-validation." in n for n in one)  # an (empty) validation shard exists


def test_jsonl_records(wet_files, tmp_path):
    paths, _ = wet_files
    stats = run_ours(paths[:1], str(tmp_path / "j"), workers=1, fmt="jsonl")
    names = stats["files"]
    assert "c4-train.00000-of-00001.json.gz" in names
    rows = [
        json.loads(line)
        for line in gzip.open(
            tmp_path / "j" / "c4-train.00000-of-00001.json.gz", "rt", encoding="utf-8"
        )
    ]
    assert len(rows) == stats["splits"]["train"]["pages"] > 100
    assert set(rows[0]) == {"url", "timestamp", "text"}


def test_existing_output_needs_overwrite(wet_files, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(job.OutputExistsError, match="--overwrite"):
        run_ours(wet_files[0][:1], str(out), workers=1)
    assert sorted(os.listdir(out)) == ["something.txt"]  # nothing half-written


def test_failed_job_leaves_no_partial_output(tmp_path, monkeypatch):
    def broken_build(pipeline, tmp, progress):
        import apache_beam as beam

        def explode(x):
            raise RuntimeError("worker died")

        _ = pipeline | beam.Create([1]) | beam.Map(explode)

    with pytest.raises(Exception, match="worker died"):
        run_tiny_job(tmp_path / "f", broken_build)
    assert not (tmp_path / "f").exists()  # the job created it, so the job removes it


def run_tiny_job(output, build=None, **overrides):
    """run_job with a one-element pipeline (or `build`), for the tests of its error handling."""
    import apache_beam as beam

    def one_element(pipeline, tmp, progress):
        _ = pipeline | beam.Create([1])

    settings = dict(
        build=build or one_element,
        output_dir=str(output),
        overwrite=False,
        own_files=lambda n: True,
        beam_args=[],
        workers=1,
        describe={},
        splits=(),
        funnel=lambda c: [],
    )
    settings.update(overrides)
    return job.run_job(**settings)


def test_interrupted_job_removes_the_directories_it_created(tmp_path):
    def interrupted(pipeline, tmp, progress):
        assert os.path.isdir(tmp)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_tiny_job(tmp_path / "new" / "corpus", build=interrupted)
    assert os.listdir(tmp_path) == []  # neither "new" nor "new/corpus" is left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(KeyboardInterrupt):
        run_tiny_job(tmp_path / "mine", build=interrupted, overwrite=True)
    assert os.listdir(tmp_path / "mine") == ["keep.txt"]  # a directory it found stays


def test_interrupt_while_moving_the_output_into_place_lets_the_move_finish(tmp_path, monkeypatch):
    """Ctrl-C during the final renames: a whole corpus (not a partial one), then the interrupt."""
    import signal

    def three_shards(pipeline, tmp, progress):
        import apache_beam as beam

        _ = pipeline | beam.Create([1])
        for index in range(3):
            (Path(tmp) / f"c4-train.{index}.json.gz").write_bytes(b"x")

    real_finalize = job.finalize_output

    def finalize_with_ctrl_c(tmp_dir, output_dir, own_files):
        os.kill(os.getpid(), signal.SIGINT)  # handled at once: between two Python bytecodes
        return real_finalize(tmp_dir, output_dir, own_files)

    monkeypatch.setattr(job, "finalize_output", finalize_with_ctrl_c)
    with pytest.raises(job.OutputWrittenInterrupt) as raised:
        run_tiny_job(tmp_path / "corpus", build=three_shards)
    assert raised.value.output_dir == str(tmp_path / "corpus")
    assert sorted(os.listdir(tmp_path / "corpus")) == [
        "c4-train.0.json.gz",
        "c4-train.1.json.gz",
        "c4-train.2.json.gz",
        "stats.json",
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_failure_after_the_pipeline_leaves_nothing(tmp_path):
    """A step after the run (stats, a counters check) failing still removes the temp dir."""

    def impossible(counters):
        raise ValueError("--temperature 0.0: must be a positive number")

    with pytest.raises(ValueError, match="--temperature"):
        run_tiny_job(tmp_path / "o", summarize=impossible)
    assert os.listdir(tmp_path) == []


def test_all_inputs_unreadable_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "a_directory").mkdir()
    paths = [str(tmp_path / "a_directory"), str(tmp_path / "gone.warc.wet.gz")]
    with pytest.raises(c4.UnreadableInputError) as raised:
        run_tiny_job(
            tmp_path / "o",
            build=lambda p, tmp, progress: c4.build_c4(p, paths, c4.C4Config(), tmp),
            check_counters=lambda counters: c4.require_pages_read(counters, paths),
        )
    message = str(raised.value)
    assert "input files that could not be opened: 2" in message
    assert "a_directory" in message and "nothing written" in message
    assert sorted(os.listdir(tmp_path)) == ["a_directory"]


def test_require_pages_read_accepts_partly_damaged_or_empty_input():
    paths = ["a.wet.gz"]
    damaged = {"wet-file": 2, "corrupt:unreadable_file": 1}
    c4.require_pages_read({"split-wet-file": {**damaged, "passed": 3}}, paths)
    c4.require_pages_read({"split-wet-file": {"wet-file": 1}}, paths)  # intact, no pages
    with pytest.raises(c4.UnreadableInputError, match="cut off before their end: 1"):
        c4.require_pages_read(
            {"split-wet-file": {"wet-file": 1, "corrupt:truncated_file": 1}}, paths
        )


def test_output_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as raised:
        run_tiny_job(tmp_path / "afile")
    assert str(raised.value) == f"--output {tmp_path / 'afile'}: exists and is not a directory"
    assert sorted(os.listdir(tmp_path)) == ["afile"]
    assert (tmp_path / "afile").read_text() == "x"


def test_pipeline_options_reject_fewer_than_one_worker():
    with pytest.raises(ValueError, match="--workers -1"):
        job.pipeline_options([], -1)


def test_fast_langdetect_equals_langdetect():
    """Our vectorised langdetect gives langdetect's exact probabilities, seed 0."""
    import langdetect
    from conftest import DEBIAN_WET, PYTHON_DOCS_WET
    from langdetect.lang_detect_exception import LangDetectException

    from t5forge.beam_jobs import langid

    texts = []
    for path in (DEBIAN_WET, PYTHON_DOCS_WET):
        if os.path.exists(path):
            texts += [p.text for p in wet.read_wet_file(path)][:120]
    rng = random.Random(0)
    alphabet = "abcXYZ éüßÆ ΩΔ ЖЯ 漢字かなカナ 한국 ١٢ ًٌ ‐—“” \u0301\u0300  ..!,AB\u1ea1"
    alphabet += " http://x.org a@b.cc"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))) for _ in range(150)]

    def outcome(detect, text):
        try:
            return [(p.lang, p.prob) for p in detect(text)]
        except LangDetectException:
            return "no features"

    def reference(text):
        langdetect.DetectorFactory.seed = 0
        return langdetect.detect_langs(text)

    for text in texts:
        assert outcome(langid.detect_langs, text) == outcome(reference, text)


def test_overwrite_replaces_an_mc4_corpus_too(tmp_path):
    """build-c4 --overwrite over a build-mc4 corpus removes its language shards (tokenize and
    train-spm would read them with the new ones), and keeps files that are not a corpus's."""
    out, new = tmp_path / "out", tmp_path / "out" / ".new"
    old = [
        "stats.json",
        "de/train/c4-de-train.00000-of-00001.json.gz",
        "und/validation/c4-und-validation.tfrecord-00000-of-00001",
    ]
    for name in old + ["notes.txt", "de/notes.txt"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("old")
    new.mkdir()
    for name in ["stats.json", "c4-train.00000-of-00001.json.gz"]:
        (new / name).write_text("new")
    job.finalize_output(str(new), str(out), c4.is_output_file)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["c4-train.00000-of-00001.json.gz", "de/notes.txt", "notes.txt", "stats.json"]
