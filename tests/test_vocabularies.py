"""Vocabulary specs, sentinels, the TF-free tokenizer against seqio, and `t5forge tokenize`."""

import gzip
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import DEBIAN_WET, DEMO_WET

from t5forge.beam_jobs import wet
from t5forge.vocabularies import (
    Tokenizer,
    VocabularyError,
    get_vocabulary,
    num_sentinels,
    parse_vocab_spec,
    records,
    sentinel_id,
    shards,
    tokenize,
    train,
)


def _texts():
    path = DEBIAN_WET if os.path.exists(DEBIAN_WET) else DEMO_WET
    return [p.text for p in wet.read_wet_file(path)]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A small unigram model trained on shared text with T5's id layout."""
    import sentencepiece

    d = tmp_path_factory.mktemp("spm")
    lines = [line for text in _texts()[:60] for line in text.split("\n") if line.strip()]
    (d / "sentences.txt").write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(d / "sentences.txt"),
        model_prefix=str(d / "m"),
        vocab_size=1500,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
        character_coverage=0.9995,
    )
    return str(d / "m.model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A JSON-lines corpus and a plain-text corpus of shared pages."""
    d = tmp_path_factory.mktemp("corpus")
    texts = _texts()
    with gzip.open(d / "a.json.gz", "wt", encoding="utf-8") as f:
        for t in texts[:70]:
            f.write(json.dumps({"url": "u", "text": t}) + "\n")
    (d / "b.txt").write_text("\n".join(t.replace("\n", " ") for t in texts[70:]), encoding="utf-8")
    return d


def test_spec_parsing(spm_model, tmp_path):
    assert str(parse_vocab_spec("byte")) == "byte"
    assert parse_vocab_spec("byte:125").extra_ids == 125
    assert parse_vocab_spec(spm_model).extra_ids == 100  # T5's default
    assert parse_vocab_spec(spm_model + ":7").extra_ids == 7
    settings = tmp_path / "own.settings.json"
    (tmp_path / "own.model").write_bytes(open(spm_model, "rb").read())
    settings.write_text(json.dumps({"extra_ids": 42}))
    assert parse_vocab_spec(str(tmp_path / "own.model")).extra_ids == 42
    with pytest.raises(VocabularyError, match="nope.model"):
        parse_vocab_spec("nope.model")
    with pytest.raises(VocabularyError, match="'x' after ':' must be a number of extra ids"):
        parse_vocab_spec(spm_model + ":x")
    (tmp_path / "junk.model").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(VocabularyError, match="junk.model"):
        Tokenizer(str(tmp_path / "junk.model") + ":0")


@pytest.mark.parametrize("extra", ["", ":0", ":100"])
def test_tokenizer_equals_seqio_sentencepiece(spm_model, extra):
    spec = spm_model + extra
    ours, theirs = Tokenizer(spec), get_vocabulary(spec)
    assert ours.vocab_size == theirs.vocab_size
    texts = _texts()[:25] + ["A <extra_id_0> B <extra_id_1>.", "", "  spaces   here  "]
    for text in texts:
        ids = ours.encode(text)
        assert ids == list(theirs.encode(text))
        assert ours.decode(ids) == theirs.decode(ids)
    junk = [5, 9, ours.vocab_size + 3, 1, 7, 8]
    assert ours.decode(junk) == theirs.decode(junk)


@pytest.mark.parametrize("spec", ["byte", "byte:125"])
def test_tokenizer_equals_seqio_bytes(spec):
    ours, theirs = Tokenizer(spec), get_vocabulary(spec)
    assert ours.vocab_size == theirs.vocab_size
    for text in _texts()[:20] + ["né 日本 🎉"]:
        ids = ours.encode(text)
        assert ids == list(theirs.encode(text))
        assert ours.decode(ids) == theirs.decode(ids) == text
    broken = [3 + 0xE6, 3 + 0x97, 3 + ord("a"), 258, 1, 3 + ord("b")]
    assert ours.decode(broken) == theirs.decode(broken)


def test_sentinel_layout(spm_model, tmp_path):
    vocab = get_vocabulary(spm_model + ":100")
    ours = Tokenizer(spm_model + ":100")
    assert sentinel_id(vocab, 0) == vocab.vocab_size - 1 == 1599
    assert vocab.tokenizer.IdToPiece(sentinel_id(vocab, 0)) == "▁<extra_id_0>"
    assert ours.id_to_piece(sentinel_id(ours, 99)) == "▁<extra_id_99>"
    assert num_sentinels(vocab) == num_sentinels(ours) == 100
    assert num_sentinels(get_vocabulary(spm_model + ":0")) == 0
    # A model with the extra ids baked in (like cc_all.32000.100extra).
    baked = tmp_path / "baked.model"
    baked.write_bytes(ours._sp.serialized_model_proto())
    assert parse_vocab_spec(str(baked)).extra_ids == 0
    assert num_sentinels(Tokenizer(str(baked))) == 100
    assert Tokenizer(str(baked)).vocab_size == 1600
    # ByT5: sentinels count down from 258 over bytes UTF-8 never uses.
    byte = get_vocabulary("byte")
    assert [sentinel_id(byte, i) for i in range(3)] == [258, 257, 256]
    assert num_sentinels(byte) == 11
    assert num_sentinels(get_vocabulary("byte:125")) == 136


def test_tokenize_and_decode_round_trip(spm_model, corpus, tmp_path):
    for spec in (spm_model, "byte"):
        out = tmp_path / spec.replace("/", "_")
        manifest = tokenize.tokenize_corpus(
            spec, [str(corpus)], str(out), workers=1, progress=False
        )
        docs = [d for f in records.corpus_files(str(corpus)) for d in records.iter_documents(f)]
        assert manifest["documents"] == len(docs) > 100
        tok = Tokenizer(spec)
        got = list(shards.iter_token_documents(str(out)))
        assert [list(map(int, g)) for g in got] == [tok.encode(d) for d in docs]
        assert manifest["dtype"] == "uint16"
        decoded_dir = tmp_path / ("dec-" + out.name)
        tokenize.decode_corpus(spec, str(out), str(decoded_dir))
        decoded = [
            json.loads(line)["text"]
            for name in sorted(os.listdir(decoded_dir))
            for line in open(decoded_dir / name, encoding="utf-8")
        ]
        if spec == "byte":
            assert decoded == docs  # bytes round-trip exactly
        else:  # SentencePiece returns its normalised text (NFKC, collapsed spaces)
            assert decoded == [tok.decode(tok.encode(d)) for d in docs]


def test_one_and_two_workers_identical(spm_model, corpus, tmp_path):
    one = tokenize.tokenize_corpus(
        spm_model,
        [str(corpus)],
        str(tmp_path / "w1"),
        workers=1,
        progress=False,
        batch_chars=50_000,
    )
    two = tokenize.tokenize_corpus(
        spm_model,
        [str(corpus)],
        str(tmp_path / "w2"),
        workers=2,
        progress=False,
        batch_chars=50_000,
    )
    assert one["shards"] == two["shards"]
    assert os.stat(tmp_path / "w1").st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    for name in sorted(os.listdir(tmp_path / "w1")):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_bad_inputs(spm_model, corpus, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(records.CorpusError, match="latin1.txt"):
        tokenize.tokenize_corpus(
            "byte", [str(tmp_path / "latin1.txt")], str(tmp_path / "o"), progress=False
        )
    assert not (tmp_path / "o").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    (tmp_path / "o").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        tokenize.tokenize_corpus("byte", [str(corpus)], str(tmp_path / "o"), progress=False)
    out = tmp_path / "t"
    tokenize.tokenize_corpus("byte", [str(corpus)], str(out), progress=False)
    with pytest.raises(ValueError, match="not the vocabulary"):
        tokenize.decode_corpus(spm_model, str(out), str(tmp_path / "d"))
    # A damaged shard is named, not reported as numpy's "mmap length is greater than ..."
    shard = out / "00000.tokens.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"00000.tokens.npy: unreadable token shard"):
        tokenize.decode_corpus("byte", str(out), str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_damage_inside_a_file_is_counted_and_skipped(tmp_path):
    """A long job skips a bad line, or the broken rest of a file, and counts it; without a
    counter, or when a file has no good record at all, damage is an error naming the file."""
    import collections

    good = [json.dumps({"text": f"document {i}"}) for i in range(6)]
    lines = [good[0], '{"text": "cut off', good[1], b"\xff\xfe".decode("latin-1"), good[2]]
    jsonl = tmp_path / "c4-train.00000-of-00002.json.gz"
    jsonl.write_bytes(gzip.compress("\n".join(lines).encode("utf-8") + b"\n", mtime=0))
    with pytest.raises(records.CorpusError, match=rf"{re.escape(str(jsonl))}:2: not a JSON"):
        list(records.iter_documents(str(jsonl)))
    damage = collections.Counter()
    docs = list(records.iter_documents(str(jsonl), damage=damage))
    assert docs == ["document 0", "document 1", "document 2"]
    assert damage == {"corrupt:malformed_line": 2}

    # A gzip stream that breaks after good lines: what came before is kept.
    whole = gzip.compress(("\n".join(good) + "\n").encode("utf-8") * 400, mtime=0)
    cut = tmp_path / "c4-train.00001-of-00002.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    damage = collections.Counter()
    docs = list(records.iter_documents(str(cut), damage=damage))
    assert 0 < len(docs) < 2400 and docs[:6] == [f"document {i}" for i in range(6)]
    assert damage == {"corrupt:rest_of_file": 1}
    with pytest.raises(records.CorpusError, match="corrupt gzip"):
        list(records.iter_documents(str(cut)))

    # Nothing good at all: the wrong input, not a damaged corpus.
    wrong = tmp_path / "notes.jsonl"
    wrong.write_text("plain text\nmore plain text\n")
    with pytest.raises(records.CorpusError, match="no line is a JSON object"):
        list(records.iter_documents(str(wrong), damage=collections.Counter()))

    # tokenize counts it in its manifest and keeps the rest.
    manifest = tokenize.tokenize_corpus(
        "byte", [str(jsonl)], str(tmp_path / "tokens"), progress=False
    )
    assert manifest["documents"] == 3
    assert manifest["damaged_records_skipped"] == {"corrupt:malformed_line": 2}


def test_tfrecord_corpus_without_tensorflow(tmp_path):
    """build-c4's TFRecord shards are read with our own parser (checked against TF's)."""
    tf = pytest.importorskip("tensorflow")
    from t5forge.beam_jobs.writers import encode_example, tfrecord_frame

    path = tmp_path / "c4-train.tfrecord-00000-of-00001"
    texts = _texts()[:10]
    path.write_bytes(
        b"".join(
            tfrecord_frame(encode_example({"text": t, "url": "u", "timestamp": "x"})) for t in texts
        )
    )
    assert list(records.iter_documents(str(path))) == texts
    assert [
        tf.train.Example.FromString(r).features.feature["text"].bytes_list.value[0].decode()
        for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    ] == texts
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(records.CorpusError, match="checksum"):
        list(records.iter_documents(str(path)))


def test_cli_errors_and_inspect(spm_model, corpus, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "t5forge.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    result = run("tokenize", "--vocab", "missing.model", "--input", str(corpus), "--output", "o")
    assert result.returncode == 2 and "missing.model" in result.stderr
    result = run("tokenize", "--vocab", "byte", "--input", "nothing-here", "--output", "o")
    assert result.returncode == 2 and "nothing-here" in result.stderr
    assert not (tmp_path / "o").exists()
    result = run(
        "tokenize", "--vocab", "byte", "--input", str(corpus), "--output", "o", "--workers", "2"
    )
    assert result.returncode == 0, result.stderr
    assert "MB/s" in result.stdout
    result = run("inspect", "--vocab", spm_model, "Fill in <extra_id_0> here.")
    assert result.returncode == 0
    assert "1599=<extra_id_0>" in result.stdout
    assert "<extra_id_0> = 1599" in result.stdout


def test_raw_wet_file_is_refused_with_a_pointer_to_build_c4(tmp_path):
    """A WET file read as plain text would yield its WARC headers as documents."""
    import collections

    plain = tmp_path / "demo.warc.wet"
    plain.write_bytes(gzip.decompress(open(DEMO_WET, "rb").read()))
    named_jsonl = tmp_path / "crawl.jsonl"
    named_jsonl.write_bytes(plain.read_bytes())
    for path in (DEMO_WET, str(plain), str(named_jsonl)):
        message = (
            rf"^{re.escape(path)}: a WARC/WET file .*`t5forge build-c4 --input {re.escape(path)}`"
        )
        with pytest.raises(records.CorpusError, match=message):
            list(records.iter_documents(path))
        # Not damage to count and skip in a long job: the wrong input.
        with pytest.raises(records.CorpusError, match=message):
            list(records.iter_documents(path, damage=collections.Counter()))
    with pytest.raises(records.CorpusError, match="build-c4 --input"):
        tokenize.tokenize_corpus("byte", [str(tmp_path)], str(tmp_path / "o"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["crawl.jsonl", "demo.warc.wet"]
    # Text that merely mentions WARC first is still a text corpus.
    text = tmp_path / "notes.txt"
    text.write_text("WARC/1.0 is the web archive format.\nWARC/1.1\n")
    assert list(records.iter_documents(str(text))) == [
        "WARC/1.0 is the web archive format.",
        "WARC/1.1",
    ]


def test_tokenized_directory_given_as_text_is_refused(corpus, tmp_path):
    """tokenize (or train-spm) over tokenize's own output: one clear error, not "offsets.npy:1:
    not UTF-8 text"."""
    tokens = tmp_path / "tokens"
    tokenize.tokenize_corpus("byte", [str(corpus)], str(tokens), workers=1, progress=False)
    message = rf"^{re.escape(str(tokens))}: token ids written by t5forge tokenize, not text"
    with pytest.raises(records.CorpusError, match=message):
        tokenize.tokenize_corpus("byte", [str(tokens)], str(tmp_path / "again"), progress=False)
    with pytest.raises(records.CorpusError, match=message):
        train.plan_sources([str(tokens)], 100, 3.0)
    assert not (tmp_path / "again").exists()
