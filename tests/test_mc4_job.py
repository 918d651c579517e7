"""The build-mc4 job: conformance with TFDS's multilingual graph, language id, determinism."""

import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import DEBIAN_WET, DEMO_WET

from t5forge.beam_jobs import job, mc4, wet

pytestmark = pytest.mark.skipif(not os.path.exists(DEBIAN_WET), reason="shared data missing")

# Words that occur in some but not all pages of their language ("sm" is on
# TFDS's Japanese allowlist and would otherwise match 14 of 15 ja pages).
BADWORDS = {
    "de": ["drucker"],
    "es": ["impresora"],
    "en": ["printer", "samba"],
    "ja": ["フォント", "sm"],
    "zh": ["字体"],
}


def run_ours(
    paths,
    output,
    workers=1,
    fmt="jsonl",
    badwords=None,
    languages=None,
    shard_bytes=mc4.DEFAULT_SHARD_BYTES,
):
    config = mc4.MC4Config(output_format=fmt, badwords=badwords, shard_bytes=shard_bytes)
    if languages:
        config = mc4.MC4Config(
            languages=languages, output_format=fmt, badwords=badwords, shard_bytes=shard_bytes
        )
    return job.run_job(
        build=lambda p, tmp, progress: mc4.build_mc4(p, paths, config, tmp),
        output_dir=output,
        overwrite=False,
        own_files=mc4.is_output_file,
        beam_args=[],
        workers=workers,
        describe={"job": "build-mc4"},
        splits=None,
        funnel=mc4.funnel,
        summarize=mc4.language_summary,
    )


def read_jsonl_corpus(directory):
    rows = set()
    for path in glob.glob(os.path.join(directory, "*", "*", "*.json.gz")):
        language, split = path.split(os.sep)[-3:-1]
        for line in gzip.open(path, "rt", encoding="utf-8"):
            r = json.loads(line)
            assert r["language"] == language
            rows.add((language, split, r["url"], r["text"], r["timestamp"]))
    return rows


def read_tfrecord_corpus(directory):
    import tensorflow as tf

    rows = set()
    for path in glob.glob(os.path.join(directory, "*", "*", "*.tfrecord-*")):
        language, split = path.split(os.sep)[-3:-1]
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            f = {
                k: v.bytes_list.value[0].decode()
                for k, v in tf.train.Example.FromString(raw).features.feature.items()
            }
            assert f["language"] == language
            rows.add((language, split, f["url"], f["text"], f["timestamp"]))
    return rows


def read_reference(prefix):
    rows = set()
    for path in glob.glob(prefix + "*"):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            rows.add((r["language"], r["split"], r["url"], r["text"], r["timestamp"]))
    return rows


@pytest.fixture(scope="module")
def badwords():
    from t5forge.beam_jobs.badwords import ALLOWLIST

    words = {k: set(v) for k, v in BADWORDS.items()}
    for lang, allowed in ALLOWLIST.items():
        if lang in words:
            words[lang] -= allowed
    return words


def test_job_equals_tfds_multilingual_graph(tmp_path, badwords):
    from c4_reference import run_tfds_mc4

    run_tfds_mc4([DEBIAN_WET], str(tmp_path / "ref"), badwords=badwords)
    expected = read_reference(str(tmp_path / "ref"))
    stats = run_ours(
        [DEBIAN_WET],
        str(tmp_path / "ours"),
        workers=2,
        badwords={k: sorted(v) for k, v in badwords.items()},
    )
    got = read_jsonl_corpus(str(tmp_path / "ours"))
    assert got == expected
    assert {row[0] for row in got} >= {"de", "en", "es", "fr", "it", "ja", "pt", "und"}
    counters = stats["counters"]
    assert counters["badwords-filter"]["filtered"] > 0
    assert counters["paragraph-filter"]["filtered"] > 0
    assert counters["dedupe-lines"]["line-filtered:global_duplicate"] > 1000
    assert sum(e["train_pages"] + e["validation_pages"] for e in stats["languages"].values()) == (
        len(got)
    )
    assert sum(stats["mixing_rates"]["temperature"]["rates"].values()) == pytest.approx(1.0)
    assert "und" not in stats["mixing_rates"]["unimax"]["rates"]


def test_language_subset_and_tfrecord(tmp_path):
    tf = pytest.importorskip("tensorflow")
    stats = run_ours([DEBIAN_WET], str(tmp_path / "o"), fmt="tfrecord", languages=("de", "ja"))
    assert set(stats["languages"]) == {"de", "ja", "und"}
    assert stats["counters"]["language-filter"]["filtered:ignored_language"] > 50
    path = glob.glob(str(tmp_path / "o" / "ja" / "train" / "c4-ja-train.tfrecord-*"))[0]
    raw = next(tf.data.TFRecordDataset(path).as_numpy_iterator())
    features = tf.train.Example.FromString(raw).features.feature
    assert features["language"].bytes_list.value[0] == b"ja"
    assert set(features) == {
        "url",
        "text",
        "timestamp",
        "content-type",
        "content-length",
        "language",
    }
    # Both splits exist for every language with pages (validation possibly empty).
    assert os.path.exists(tmp_path / "o" / "de" / "validation")


def test_language_accuracy_against_url(tmp_path):
    """cld3's label vs the language in each Debian page's URL (apa.de.html -> de).

    cld3's own mistakes are part of the reference; this records how often it is right.
    """
    stats = run_ours([DEBIAN_WET], str(tmp_path / "o"))
    rows = read_jsonl_corpus(str(tmp_path / "o"))
    confusion = collections.Counter()
    for language, _, url, _, _ in rows:
        expected = re.search(r"\.([a-z]{2}(?:-[a-z]{2})?)\.html$", url).group(1)
        expected = {"zh-cn": "zh", "zh-tw": "zh", "pt-br": "pt"}.get(expected, expected)
        confusion[(expected, language)] += 1
    labelled = sum(n for (exp, got), n in confusion.items() if got != "und")
    correct = sum(n for (exp, got), n in confusion.items() if exp == got)
    accuracy = correct / labelled
    print(
        f"cld3 accuracy on labelled pages: {correct}/{labelled} = {accuracy:.3f}; "
        f"und share {stats['und_share']:.3f}; confusion {dict(confusion)}"
    )
    assert accuracy > 0.9


def test_one_and_two_workers_identical(tmp_path):
    run_ours([DEBIAN_WET, DEMO_WET], str(tmp_path / "w1"), workers=1, shard_bytes=200_000)
    run_ours([DEBIAN_WET, DEMO_WET], str(tmp_path / "w2"), workers=2, shard_bytes=200_000)

    def files(d):
        return {
            os.path.relpath(p, d): open(p, "rb").read()
            for p in glob.glob(os.path.join(d, "*", "*", "*"))
        }

    one, two = files(str(tmp_path / "w1")), files(str(tmp_path / "w2"))
    assert one == two
    assert len([n for n in one if n.startswith("en/train/")]) > 1  # several en shards


def test_corrupt_file_counted(tmp_path):
    data = open(DEBIAN_WET, "rb").read()
    (tmp_path / "cut.wet.gz").write_bytes(data[: len(data) // 2])
    stats = run_ours(
        [str(tmp_path / "cut.wet.gz"), str(tmp_path / "missing.wet.gz")], str(tmp_path / "o")
    )
    read = stats["counters"]["split-wet-file"]
    assert read["corrupt:truncated_file"] == 1
    assert read["corrupt:unreadable_file"] == 1
    assert read["passed"] > 40


def test_cld3_after_tensorflow_in_one_process():
    """TensorFlow first, then cld3: the identifier moves to a helper process."""
    code = (
        "import tensorflow\n"
        "from t5forge.beam_jobs.cld3 import LanguageIdentifier\n"
        "from t5forge.beam_jobs import wet\n"
        f"pages = list(wet.read_wet_file({DEBIAN_WET!r}))[:30]\n"
        "li = LanguageIdentifier()\n"
        "print([li.identify(p.text)[0] for p in pages])\n"
        "print(type(li._backend).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    labels, backend = out.stdout.strip().splitlines()[-2:]
    assert backend == "_HelperProcess"
    from t5forge.beam_jobs.cld3 import LanguageIdentifier

    li = LanguageIdentifier()
    pages = list(wet.read_wet_file(DEBIAN_WET))[:30]
    assert labels == str([li.identify(p.text)[0] for p in pages])


def test_bad_language_code():
    with pytest.raises(ValueError, match="xx"):
        mc4.MC4Config(languages=("de", "xx"))


@pytest.mark.parametrize(
    "settings, flag",
    [
        ((0, None, 1.0), "--temperature 0"),
        ((-1, None, 1.0), "--temperature -1"),
        ((float("nan"), None, 1.0), "--temperature nan"),
        ((3.3, None, 0), "--unimax-max-epochs 0"),
        ((3.3, -5, 1.0), "--unimax-budget-bytes -5"),
        ((3.3, 0, 1.0), "--unimax-budget-bytes 0"),
    ],
)
def test_impossible_mixing_settings_are_rejected_before_the_job(settings, flag):
    with pytest.raises(ValueError, match=flag):
        mc4.check_mixing_settings(*settings)
    mc4.check_mixing_settings(1 / 0.3, None, 1.0)
    mc4.check_mixing_settings(1.0, 1e6, 2.0)


def test_overwrite_replaces_a_c4_corpus_too(tmp_path):
    """build-mc4 --overwrite over a build-c4 corpus removes its top-level shards (tokenize
    would read them with the new language shards), and keeps files that are not a corpus's."""
    out, new = tmp_path / "out", tmp_path / "out" / ".new"
    for name in ["stats.json", "report.html", "c4-train.tfrecord-00000-of-00001", "notes.txt"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("old")
    new.mkdir()
    (new / "de" / "train").mkdir(parents=True)
    (new / "de" / "train" / "c4-de-train.tfrecord-00000-of-00001").write_text("new")
    (new / "stats.json").write_text("new")
    job.finalize_output(str(new), str(out), mc4.is_output_file)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["de/train/c4-de-train.tfrecord-00000-of-00001", "notes.txt", "stats.json"]
