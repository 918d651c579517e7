"""Tests for t5forge.vocabularies.train (SentencePiece training the T5/mT5 way)."""

import gzip
import hashlib
import json
import os
import re

import pytest
import sentencepiece as spm
from conftest import DEBIAN_WET

from t5forge.vocabularies.records import CorpusError
from t5forge.vocabularies.train import language_quotas, sample_corpus, train_sentencepiece

VALIDATION_MARKER = "VALIDATIONMARKER sentence that must never be sampled"
UND_MARKER = "UNDMARKER sentence that must never be sampled"


def write_jsonl_gz(path, documents):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def write_stats(directory, **stats):
    with open(os.path.join(directory, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f)


def listing(directory):
    return sorted(os.listdir(directory)) if os.path.exists(directory) else None


@pytest.fixture(scope="module")
def c4_dir(tmp_path_factory, python_docs_pages):
    """A build-c4 style directory: train shard of real pages, validation shard of markers."""
    directory = str(tmp_path_factory.mktemp("c4"))
    texts = [page.text for page in python_docs_pages[:150]]
    write_jsonl_gz(os.path.join(directory, "c4-train.00000-of-00001.json.gz"), texts)
    write_jsonl_gz(
        os.path.join(directory, "c4-validation.00000-of-00001.json.gz"), [VALIDATION_MARKER]
    )
    write_stats(directory, splits=["train", "validation"])
    return directory


@pytest.fixture(scope="module")
def english_model(tmp_path_factory, c4_dir):
    prefix = str(tmp_path_factory.mktemp("model") / "en")
    settings = train_sentencepiece(
        [c4_dir], prefix, 1000, character_coverage=1.0, sample_sentences=20_000, seed=0
    )
    return prefix, settings


@pytest.fixture(scope="module")
def debian_lines():
    """Non-empty lines of the Debian reference pages, by the language in their URL."""
    if not os.path.exists(DEBIAN_WET):
        pytest.skip("shared Debian WET file not available")
    from t5forge.beam_jobs import wet

    lines = {}
    for page in wet.read_wet_file(DEBIAN_WET):
        match = re.search(r"\.([a-z]{2}(?:-[a-z]+)?)\.html$", page.url)
        if match:
            lang = match.group(1)
            lines.setdefault(lang, []).extend(x for x in page.text.split("\n") if x.strip())
    return lines


@pytest.fixture(scope="module")
def mc4_dir(tmp_path_factory, debian_lines):
    """A build-mc4 style directory with a hand-made stats.json (page counts invented)."""
    directory = str(tmp_path_factory.mktemp("mc4"))

    def shard(lang, split, lines):
        name = f"c4-{lang}-{split}.00000-of-00001.json.gz"
        docs = ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
        write_jsonl_gz(os.path.join(directory, lang, split, name), docs)

    for lang in ("de", "fr", "ja"):
        shard(lang, "train", debian_lines[lang])
    shard("pt", "train", debian_lines["pt"][:5])  # far fewer sentences than its quota
    shard("de", "validation", [VALIDATION_MARKER])
    shard("und", "train", [UND_MARKER] * 50)
    pages = {"de": 1000, "fr": 100, "ja": 10, "pt": 500, "und": 5000, "it": 0}
    write_stats(
        directory,
        languages={
            lang: {"train_pages": n, "validation_pages": 1, "train_bytes": 1, "validation_bytes": 1}
            for lang, n in pages.items()
        },
    )
    return directory


# Quotas for 600 sentences, rate ~ pages ** 0.3 over de, fr, ja, pt: weights
# 7.943, 3.981, 1.995, 6.452 give 233.95, 117.25, 58.77, 190.03; floors add up
# to 598 and the two largest remainders (de, ja) get one more each.
EXPECTED_QUOTAS = {"de": 234, "fr": 117, "ja": 59, "pt": 190}


def test_model_round_trips_text_and_has_t5_id_layout(english_model, python_docs_pages):
    prefix, settings = english_model
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    assert sp.get_piece_size() == 1000
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert [sp.piece_to_id(p) for p in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert not any("extra_id" in sp.id_to_piece(i) for i in range(sp.get_piece_size()))

    lines = [x for page in python_docs_pages[150:250] for x in page.text.split("\n") if x]
    unknown = 0
    for line in lines[:1000]:
        ids = sp.encode(line)
        once = sp.decode(ids)
        if sp.unk_id() in ids:  # a character left out by character_coverage
            unknown += 1
            assert "\u2047" in once  # decodes as " ⁇ ", which NFKC turns into "??"
        else:
            assert sp.decode(sp.encode(once)) == once
    assert unknown < 20
    plain = [
        x for x in lines if re.fullmatch(r"[A-Za-z0-9,.;:()'?!-]+( [A-Za-z0-9,.;:()'?!-]+)*", x)
    ]
    assert len(plain) > 50
    for line in plain:
        assert sp.decode(sp.encode(line)) == line

    with open(prefix + ".settings.json", encoding="utf-8") as f:
        assert json.load(f) == settings
    with open(prefix + ".model", "rb") as f:
        assert settings["model_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert settings["extra_ids"] == 100
    assert settings["sentences_sampled"] == 20_000 < settings["sentences_seen"]
    assert settings["languages"] is None
    trainer = settings["trainer"]
    assert (trainer["model_type"], trainer["vocab_size"], trainer["byte_fallback"]) == (
        "unigram",
        1000,
        False,
    )
    assert (trainer["pad_id"], trainer["eos_id"], trainer["unk_id"], trainer["bos_id"]) == (
        0,
        1,
        2,
        -1,
    )


def test_seqio_appends_the_extra_ids(english_model):
    seqio = pytest.importorskip("seqio")
    vocab = seqio.SentencePieceVocabulary(english_model[0] + ".model", extra_ids=100)
    assert vocab.vocab_size == 1100
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.encode("<extra_id_0>")[-1] == 1099


def test_same_seed_gives_byte_identical_model(tmp_path, english_model, c4_dir):
    prefix, settings = english_model
    again = train_sentencepiece(
        [c4_dir],
        str(tmp_path / "other" / "name"),
        1000,
        character_coverage=1.0,
        sample_sentences=20_000,
        seed=0,
    )
    with open(prefix + ".model", "rb") as a, open(tmp_path / "other" / "name.model", "rb") as b:
        assert a.read() == b.read()
    assert again["model_sha256"] == settings["model_sha256"]
    assert listing(tmp_path / "other") == ["name.model", "name.settings.json", "name.vocab"]


def test_seed_decides_the_sample_and_validation_is_skipped(c4_dir):
    first, _ = sample_corpus([c4_dir], 2000, seed=0)
    assert first == sample_corpus([c4_dir], 2000, seed=0)[0]
    other, _ = sample_corpus([c4_dir], 2000, seed=1)
    assert len(first) == len(other) == 2000
    assert first != other
    everything, sources = sample_corpus([c4_dir], 10**9)
    assert VALIDATION_MARKER not in everything
    assert sources[0].seen == len(everything)
    assert all(x == x.strip() and x and "\n" not in x for x in everything)


def test_language_quotas_follow_temperature():
    pages = {"de": 1000, "fr": 100, "ja": 10, "pt": 500, "und": 5000, "it": 0}
    quotas = language_quotas(pages, 600, 1 / 0.3)
    assert {lang: quota for lang, (_, quota) in quotas.items()} == EXPECTED_QUOTAS
    assert sum(rate for rate, _ in quotas.values()) == pytest.approx(1.0)
    assert quotas["de"][0] / quotas["fr"][0] == pytest.approx(10**0.3)
    flat = language_quotas(pages, 600, 1.0)  # temperature 1: proportional to pages
    assert flat["de"][1] == round(600 * 1000 / 1610)


def test_mc4_sampling_uses_quotas_and_skips_und_and_validation(mc4_dir, debian_lines):
    sentences, sources = sample_corpus([mc4_dir], 600, seed=3)
    by_lang = {s.name: s for s in sources}
    assert {lang: s.quota for lang, s in by_lang.items()} == EXPECTED_QUOTAS
    assert {lang: s.sampled for lang, s in by_lang.items()} == {**EXPECTED_QUOTAS, "pt": 5}
    assert len(sentences) == 600 - 190 + 5
    assert UND_MARKER not in sentences and VALIDATION_MARKER not in sentences
    start = 0
    for lang in ("de", "fr", "ja", "pt"):
        part = sentences[start : start + by_lang[lang].sampled]
        assert set(part) <= {x.strip() for x in debian_lines[lang]}
        start += by_lang[lang].sampled


def test_one_language_of_an_mc4_directory_reads_its_train_shards_only(mc4_dir, debian_lines):
    sentences, sources = sample_corpus([os.path.join(mc4_dir, "de")], 10**9)
    assert VALIDATION_MARKER not in sentences
    assert [s.name for s in sources] == [""]  # one pool, like a single directory
    assert set(sentences) == {x.strip() for x in debian_lines["de"]}


def test_mc4_training_records_languages_and_byte_fallback(tmp_path, mc4_dir, debian_lines):
    prefix = str(tmp_path / "mc4")
    settings = train_sentencepiece(
        [mc4_dir], prefix, 1500, byte_fallback=True, character_coverage=0.99999,
        sample_sentences=600, seed=3,
    )  # fmt: skip
    langs = settings["languages"]
    assert {lang: v["quota"] for lang, v in langs.items()} == EXPECTED_QUOTAS
    assert langs["pt"]["sentences_sampled"] == 5 and langs["pt"]["train_pages"] == 500
    assert settings["sentences_sampled"] == 415
    assert settings["trainer"]["character_coverage"] == 0.99999
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    text = "Grüße aus Köln, ☃ und ꙮ"  # rare characters come back through bytes
    assert sp.decode(sp.encode(text)) == text
    assert sp.piece_to_id("<0x00>") != sp.unk_id()
    for lang in ("de", "fr", "ja", "pt", "zh-cn", "en"):
        for line in debian_lines[lang][:100]:
            ids = sp.encode(line)
            assert sp.unk_id() not in ids  # byte fallback: nothing is unknown
            once = sp.decode(ids)
            assert sp.decode(sp.encode(once)) == once


@pytest.fixture
def tiny_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(f"line number {i} of a tiny corpus" for i in range(20)) + "\n")
    return str(path)


def test_missing_input(tmp_path, tiny_text):
    missing = str(tmp_path / "nope.json.gz")
    with pytest.raises(FileNotFoundError, match="nope.json.gz"):
        train_sentencepiece([tiny_text, missing], str(tmp_path / "out" / "spm"), 100)
    assert listing(tmp_path / "out") is None


@pytest.mark.parametrize(
    "name,data",
    [
        ("broken.json.gz", gzip.compress(b'{"text": "some text"}\n' * 500, mtime=0)[:40]),
        ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1")),
        ("notjson.jsonl", b"this is not json\n"),
    ],
    ids=["truncated-gzip", "latin1", "not-json"],  # stable ids: pytest-xdist workers must agree
)
def test_damaged_input(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=re.escape(str(path))):
        train_sentencepiece([str(path)], str(tmp_path / "out" / "spm"), 100)
    assert listing(tmp_path / "out") is None


def test_no_sentences(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n   \n\n")
    with pytest.raises(ValueError, match="no sentences.*blank.txt"):
        train_sentencepiece([str(path)], str(tmp_path / "out" / "spm"), 100)
    assert listing(tmp_path / "out") is None


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_vocab_too_large_for_sample(tmp_path, tiny_text, model_type):
    with pytest.raises(ValueError, match=r"vocab_size 5000 is too large.*20 sentences.*tiny.txt"):
        train_sentencepiece(
            [tiny_text], str(tmp_path / "out" / "deeper" / "spm"), 5000, model_type=model_type
        )
    assert listing(tmp_path / "out") is None


def test_vocab_too_small(tmp_path, tiny_text):
    with pytest.raises(ValueError, match="vocab_size 5 is too small"):
        train_sentencepiece([tiny_text], str(tmp_path / "spm"), 5)
    assert listing(tmp_path) == ["tiny.txt"]


def test_bad_values_name_their_flag(tmp_path, tiny_text):
    cases = [
        ({"vocab_size": 0}, "--vocab-size must be positive"),
        ({"sample_sentences": 0}, "--sample-sentences must be positive"),
        ({"extra_ids": -1}, "--extra-ids must be not negative"),
        ({"temperature": 0}, "--temperature must be above 0"),
        ({"character_coverage": 2.0}, r"--character-coverage must be in \(0, 1\]"),
    ]
    for kwargs, message in cases:
        arguments = {"vocab_size": 100, **kwargs}
        with pytest.raises(ValueError, match=message):
            train_sentencepiece([tiny_text], str(tmp_path / "spm"), **arguments)
    # A directory as --output would write hidden ".model" files into it.
    (tmp_path / "out").mkdir()
    for output in (str(tmp_path / "out"), str(tmp_path / "out") + os.sep):
        with pytest.raises(ValueError, match="a directory; give a file prefix"):
            train_sentencepiece([tiny_text], output, 100)
    assert listing(tmp_path) == ["out", "tiny.txt"] and listing(tmp_path / "out") == []


def test_unknown_model_type(tmp_path, tiny_text):
    with pytest.raises(ValueError, match="model_type.*'word'"):
        train_sentencepiece([tiny_text], str(tmp_path / "spm"), 100, model_type="word")


def test_existing_output_is_kept_unless_overwrite(tmp_path, tiny_text):
    prefix = str(tmp_path / "spm")
    (tmp_path / "spm.vocab").write_text("old")
    with pytest.raises(FileExistsError, match=re.escape(prefix + ".vocab")):
        train_sentencepiece([tiny_text], prefix, 60)
    assert listing(tmp_path) == ["spm.vocab", "tiny.txt"]
    assert (tmp_path / "spm.vocab").read_text() == "old"
    settings = train_sentencepiece([tiny_text], prefix, 60, model_type="bpe", overwrite=True)
    assert listing(tmp_path) == ["spm.model", "spm.settings.json", "spm.vocab", "tiny.txt"]
    assert (tmp_path / "spm.vocab").read_text() != "old"
    assert settings["trainer"]["model_type"] == "bpe"
    assert settings["sentences_sampled"] == settings["sentences_seen"] == 20


def test_cli_reports_progress_on_stderr(tmp_path, tiny_text, capsys):
    from t5forge.cli import main

    assert main(["train-spm", "--input", tiny_text, "--output", str(tmp_path / "spm"),
                 "--vocab-size", "60", "--model-type", "bpe"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert re.search(r"read corpus \(1 file\(s\)\): 20(\.0)? sentences", captured.err)
    assert "training SentencePiece (bpe, 60 pieces) on 20 sentences" in captured.err
    assert re.search(r"trained in \d+\.\d s", captured.err)
    assert '"sentences_sampled": 20' in captured.out  # stdout keeps only the settings


def test_raw_wet_file_is_refused_with_a_pointer_to_build_c4(tmp_path, capsys):
    """train-spm on a WET file trained on its WARC headers; it must ask for a corpus first."""
    from conftest import DEMO_WET

    from t5forge.cli import main

    plain = tmp_path / "demo.warc.wet"
    plain.write_bytes(gzip.decompress(open(DEMO_WET, "rb").read()))
    for path in (DEMO_WET, str(plain)):
        with pytest.raises(CorpusError, match=re.escape(f"t5forge build-c4 --input {path}`")):
            train_sentencepiece([path], str(tmp_path / "out" / "spm"), 100)
        assert listing(tmp_path / "out") is None
    code = main(["train-spm", "--input", str(plain), "--output", str(tmp_path / "spm"),
                 "--vocab-size", "60"])  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith(f"t5forge train-spm: error: {plain}: a WARC/WET file")
    assert listing(tmp_path) == ["demo.warc.wet"]
