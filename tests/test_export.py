"""`t5forge export`: model-ready batches in a .npz that numpy alone reads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DEMO_WET

from t5forge.beam_jobs import wet
from t5forge.beam_jobs.writers import encode_example, tfrecord_frame
from t5forge.pipelines import export

SPM = os.path.join(os.path.dirname(__file__), "fixtures", "objectives", "spm2000.model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("c4")
    pages = list(wet.read_wet_file(DEMO_WET))[:40]
    with open(d / "c4-train.tfrecord-00000-of-00001", "wb") as f:
        for p in pages:
            f.write(tfrecord_frame(encode_example({"text": p.text, "url": p.url})))
    return str(d)


def run(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "t5forge.cli", "export", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_export_packed_and_unpacked(corpus, tmp_path):
    for pack in (False, True):
        out = tmp_path / f"sc-{pack}"
        result = run(
            tmp_path,
            "--corpus",
            corpus,
            "--vocab",
            SPM,
            "--task",
            "corpus_span_corruption",
            "--examples",
            "24",
            "--output",
            str(out),
            *(["--pack"] if pack else []),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        info = json.loads((tmp_path / f"sc-{pack}.json").read_text())
        assert info["examples"] == 24 and info["pack"] is pack
        assert os.stat(str(out) + ".npz").st_mode & 0o777 == 0o644  # not mkstemp's 0600
        # numpy alone reads it: TensorFlow is made unimportable in the reader.
        code = (
            "import sys; sys.modules['tensorflow'] = None\n"
            "import numpy as np\n"
            f"d = np.load({str(out) + '.npz'!r})\n"
            "print(sorted(d.files), d['encoder_input_tokens'].shape)"
        )
        read = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert read.returncode == 0, read.stderr
        data = np.load(str(out) + ".npz")
        assert data["encoder_input_tokens"].shape == (24, 512)
        assert data["decoder_target_tokens"].shape == (24, 114)
        weights, targets = data["decoder_loss_weights"], data["decoder_target_tokens"]
        assert np.array_equal(weights, (targets != 0).astype(np.int32))
        # Teacher forcing: decoder inputs are the targets shifted right (per segment).
        if not pack:
            assert np.array_equal(data["decoder_input_tokens"][:, 1:], targets[:, :-1])
            assert "encoder_segment_ids" not in data.files
        else:
            # Span-corruption segments already fill 512 inputs, so one per row here;
            # segment ids mark exactly the real tokens.
            segments, tokens = data["encoder_segment_ids"], data["encoder_input_tokens"]
            assert np.array_equal(segments > 0, tokens != 0)
            assert info["non_padding_fraction"]["encoder_input_tokens"] > 0.9


def test_export_is_deterministic(corpus, tmp_path):
    from t5forge.pipelines import register_corpus_tasks

    register_corpus_tasks("det", corpus, SPM)
    a = export.export_task(
        "det_prefix_lm",
        str(tmp_path / "a"),
        {"inputs": 256, "targets": 256},
        8,
        converter="encdec",
        seed=5,
    )
    b = export.export_task(
        "det_prefix_lm",
        str(tmp_path / "b"),
        {"inputs": 256, "targets": 256},
        8,
        converter="encdec",
        seed=5,
    )
    da, db = np.load(a["output"]), np.load(b["output"])
    for name in da.files:
        assert np.array_equal(da[name], db[name])


def test_export_errors(corpus, tmp_path):
    result = run(tmp_path, "--task", "no_such_task", "--examples", "2", "--output", "x")
    assert result.returncode == 2 and "no_such_task" in result.stderr
    result = run(
        tmp_path,
        "--task",
        "t",
        "--examples",
        "2",
        "--output",
        "x",
        "--sequence-length",
        "inputs=512,targets",
    )
    assert result.returncode == 2 and "inputs=512,targets" in result.stderr
    (tmp_path / "x.npz").write_bytes(b"")
    result = run(
        tmp_path,
        "--corpus",
        corpus,
        "--vocab",
        SPM,
        "--task",
        "corpus_full_lm",
        "--sequence-length",
        "targets=128",
        "--converter",
        "decoder",
        "--examples",
        "2",
        "--output",
        "x",
    )
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    # Checked before the tasks are registered (minutes on a large corpus): a missing corpus
    # is never reached.
    result = run(
        tmp_path,
        *("--corpus", str(tmp_path / "missing"), "--vocab", SPM, "--task", "corpus_full_lm"),
        *("--sequence-length", "targets=128", "--examples", "2", "--output", "x"),
    )
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert "missing" not in result.stderr


def test_lengths_and_split_are_checked_against_the_task(corpus, tmp_path):
    from t5forge.pipelines import export, register_corpus_tasks

    register_corpus_tasks("chk", corpus, SPM, replace=True)
    with pytest.raises(ValueError, match="chk_span_corruption needs a length for targets"):
        export.export_task("chk_span_corruption", str(tmp_path / "a"), {"inputs": 64}, 2)
    with pytest.raises(ValueError, match="--split nosuch: chk_span_corruption has splits train"):
        export.export_task(
            "chk_span_corruption",
            str(tmp_path / "a"),
            {"inputs": 64, "targets": 16},
            2,
            split="nosuch",
        )
    assert os.listdir(tmp_path) == []


def test_fast_packer_export_equals_seqio_packer(corpus, tmp_path):
    """Prefix-LM at 128/128 merges examples per row; both packers give the same arrays."""
    from t5forge.pipelines import register_corpus_tasks

    register_corpus_tasks("pk", corpus, SPM)
    lengths = {"inputs": 128, "targets": 128}
    outputs = {}
    for packer in ("fast", "seqio"):
        info = export.export_task(
            "pk_prefix_lm", str(tmp_path / packer), lengths, 40, pack=True, packer=packer, seed=1
        )
        outputs[packer] = np.load(info["output"])
    assert outputs["fast"].files == outputs["seqio"].files
    for name in outputs["fast"].files:
        assert np.array_equal(outputs["fast"][name], outputs["seqio"][name]), name
    assert outputs["fast"]["encoder_segment_ids"].max() >= 2  # rows really hold several examples


def _limit_memory():
    # A regression would make TensorFlow allocate ~18 GiB (seen on inputs=1 before the
    # check): fail fast with an allocation error instead of swapping the test machine.
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))


def test_inputs_too_short_for_span_corruption_is_an_error_and_writes_nothing(corpus, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "t5forge.cli", "export", "--corpus", corpus, "--vocab", SPM,
         "--task", "corpus_span_corruption", "--sequence-length", "inputs=1,targets=114",
         "--examples", "2", "--output", "out"],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=_limit_memory, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "t5forge export: error: corpus_span_corruption: sequence length inputs=1 is too short "
        "for span_corruption (its segments would hold no document tokens); inputs must be at "
        "least 2"
    )
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_export_of_an_empty_split_is_an_error_and_writes_nothing(tmp_path):
    """A corpus whose validation split has no pages (the demo's, for one): an empty .npz
    would look like a success and then fail in train with a misleading message."""
    from t5forge.pipelines import register_corpus_tasks

    corpus = tmp_path / "c4"
    corpus.mkdir()
    pages = list(wet.read_wet_file(DEMO_WET))[:3]
    with open(corpus / "c4-train.tfrecord-00000-of-00001", "wb") as f:
        for p in pages:
            f.write(tfrecord_frame(encode_example({"text": p.text, "url": p.url})))
    (corpus / "c4-validation.tfrecord-00000-of-00001").write_bytes(b"")
    register_corpus_tasks("empty_val", str(corpus), SPM, replace=True)
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"--task empty_val_span_corruption: split 'validation' gave no examples"
    ):
        export.export_task(
            "empty_val_span_corruption",
            str(out / "val"),
            {"inputs": 64, "targets": 16},
            5,
            split="validation",
        )
    assert not out.exists()
    info = export.export_task(
        "empty_val_span_corruption", str(out / "train"), {"inputs": 64, "targets": 16}, 5
    )
    assert info["examples"] == 5
