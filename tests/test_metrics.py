"""MetricsWriter (metrics.jsonl + hand-encoded TensorBoard events), read_metrics and plot_run.

TensorFlow reads the event files back: its record reader checks both CRCs of every record, so
a file it parses has valid framing.
"""

import glob
import json
import math
import os
import random
import socket
import time

import numpy as np
import pytest

from t5forge.model import metrics as metrics_module
from t5forge.model.metrics import MetricsWriter, crc32c_pure_python, read_metrics
from t5forge.model.plot import plot_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def event_files(directory, split):
    return sorted(glob.glob(os.path.join(directory, "tensorboard", split, "events.out.tfevents.*")))


def read_events(tf, path):
    return list(tf.compat.v1.train.summary_iterator(path))


def scalars(events):
    """[(step, {tag: value})] of the events that carry a summary."""
    return [
        (event.step, {value.tag: value.simple_value for value in event.summary.value})
        for event in events
        if event.HasField("summary")
    ]


def jsonl_lines(directory):
    with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as file:
        return file.read().splitlines()


# ------------------------------------------------------------------------------------------
# CRC-32C


def test_crc32c_check_value():
    # The CRC-32C check value of the standard test string (RFC 3720, B.4).
    assert crc32c_pure_python(b"123456789") == 0xE3069283
    assert crc32c_pure_python(b"") == 0


def test_crc32c_pure_python_equals_google_crc32c():
    google_crc32c = pytest.importorskip("google_crc32c")
    rng = random.Random(0)
    for length in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 255, 256, 1000, 4096]:
        data = rng.randbytes(length)
        assert crc32c_pure_python(data) == google_crc32c.value(data), length
    assert crc32c_pure_python(b"\xff" * 64) == google_crc32c.value(b"\xff" * 64)


def test_tfrecord_frame_is_byte_identical_to_tensorflows_writer(tf, tmp_path):
    payloads = [b"", b"x", random.Random(1).randbytes(3000)]
    path = str(tmp_path / "records.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    framed = b"".join(metrics_module.tfrecord_frame(payload) for payload in payloads)
    assert framed == open(path, "rb").read()


# ------------------------------------------------------------------------------------------
# Event files


@pytest.mark.parametrize("crc", ["default", "pure_python"])
def test_event_files_parse_with_tensorflow(tf, tmp_path, monkeypatch, crc):
    if crc == "pure_python":
        monkeypatch.setattr(metrics_module, "crc32c", crc32c_pure_python)
    run = str(tmp_path / "run")
    with MetricsWriter(run) as writer:
        for step in (10, 20, 30):
            writer.write(step, {"loss": 5.0 / step, "learning_rate": np.float32(0.01 * step)})
        writer.write(20, {"cross_entropy": 2.5, "accuracy": 0.25}, split="eval")

    [train_file] = event_files(run, "train")
    [eval_file] = event_files(run, "eval")
    assert os.path.basename(train_file).startswith("events.out.tfevents.")
    train_events = read_events(tf, train_file)
    assert train_events[0].file_version == "brain.Event:2"
    got = scalars(train_events)
    assert [step for step, _ in got] == [10, 20, 30]
    for step, values in got:
        assert set(values) == {"loss", "learning_rate"}
        assert values["loss"] == pytest.approx(5.0 / step, rel=1e-6)
        assert values["learning_rate"] == pytest.approx(0.01 * step, rel=1e-6)
    assert scalars(read_events(tf, eval_file)) == [(20, {"cross_entropy": 2.5, "accuracy": 0.25})]

    # The event and the JSON line of a write share their wall time.
    records = read_metrics(run)
    assert [event.wall_time for event in train_events[1:]] == [
        record["time"] for record in records if record["split"] == "train"
    ]


def test_tensorflow_rejects_a_corrupted_event_file(tf, tmp_path):
    """TF really checks the CRCs, so the parse above vouches for them."""
    run = str(tmp_path)
    with MetricsWriter(run) as writer:
        writer.write(1, {"loss": 1.0})
    [path] = event_files(run, "train")
    data = bytearray(open(path, "rb").read())
    data[-6] ^= 0x01  # a byte of the last record's payload
    with open(path, "wb") as file:
        file.write(data)
    with pytest.raises(tf.errors.DataLossError):
        read_events(tf, path)


def test_non_finite_and_out_of_float32_range_values_in_events(tf, tmp_path):
    run = str(tmp_path)
    with MetricsWriter(run) as writer:
        writer.write(1, {"nan": math.nan, "inf": math.inf, "big": 1e40, "small": -1e40})
    [(step, values)] = scalars(read_events(tf, event_files(run, "train")[0]))
    assert step == 1
    assert math.isnan(values["nan"])
    assert values["inf"] == math.inf
    assert values["big"] == math.inf and values["small"] == -math.inf


def test_writers_started_in_the_same_second_get_their_own_event_files(tmp_path):
    first = metrics_module.EventFileWriter(str(tmp_path), wall_time=1000.0)
    second = metrics_module.EventFileWriter(str(tmp_path), wall_time=1000.0)
    first.close()
    second.close()
    assert first.path != second.path
    assert os.path.basename(first.path) == f"events.out.tfevents.1000.{socket.gethostname()}"


# ------------------------------------------------------------------------------------------
# metrics.jsonl


def test_jsonl_lines_hold_step_split_time_and_metrics(tmp_path):
    with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write(0, {"loss": 3.0, "tokens_per_second": 1234})
        writer.write(0, {"loss": 2.5}, split="eval")
    lines = [json.loads(line) for line in jsonl_lines(tmp_path)]
    assert [(r["step"], r["split"], r["loss"]) for r in lines] == [
        (0, "train", 3.0),
        (0, "eval", 2.5),
    ]
    assert list(lines[0]) == ["step", "split", "time", "loss", "tokens_per_second"]
    assert isinstance(lines[0]["tokens_per_second"], float)
    assert abs(lines[0]["time"] - time.time()) < 60
    assert not os.path.exists(tmp_path / "tensorboard")


def test_non_finite_values_are_strings_in_valid_json(tmp_path):
    with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write(1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5})

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    [line] = jsonl_lines(tmp_path)
    raw = json.loads(line, parse_constant=no_constants)
    assert (raw["a"], raw["b"], raw["c"], raw["d"]) == ("nan", "inf", "-inf", 1.5)
    [record] = read_metrics(str(tmp_path))
    assert math.isnan(record["a"])
    assert (record["b"], record["c"], record["d"]) == (math.inf, -math.inf, 1.5)
    assert record["split"] == "train"


def write_steps(directory, steps, *, value, resume_step=None, eval_every=2):
    with MetricsWriter(directory, resume_step=resume_step) as writer:
        for step in steps:
            writer.write(step, {"loss": value})
            if step % eval_every == 0:
                writer.write(step, {"cross_entropy": value}, split="eval")


def test_resume_step_removes_the_interrupted_runs_later_steps(tf, tmp_path):
    run = str(tmp_path)
    write_steps(run, range(1, 6), value=1.0)
    with open(os.path.join(run, "metrics.jsonl"), "a") as file:
        file.write('{"step": 6, "spl')  # the crash cut this write short
    permissions = os.stat(os.path.join(run, "metrics.jsonl")).st_mode & 0o777

    write_steps(run, range(4, 8), value=2.0, resume_step=3)

    records = read_metrics(run)
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    assert train == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0), (7, 2.0)]
    evals = [(r["step"], r["cross_entropy"]) for r in records if r["split"] == "eval"]
    assert evals == [(2, 1.0), (4, 2.0), (6, 2.0)]
    assert not [name for name in os.listdir(run) if name.endswith(".tmp")]
    assert os.stat(os.path.join(run, "metrics.jsonl")).st_mode & 0o777 == permissions

    # The resumed run's event file tells TensorBoard to drop the old file's steps >= 4.
    old, new = event_files(run, "train")
    events = read_events(tf, new)
    assert events[1].session_log.status == events[1].session_log.START
    assert events[1].step == 4
    assert [step for step, _ in scalars(events)] == [4, 5, 6, 7]
    assert [step for step, _ in scalars(read_events(tf, old))] == [1, 2, 3, 4, 5]


def test_resume_step_with_no_metrics_file_starts_one(tmp_path):
    write_steps(str(tmp_path), [4], value=1.0, resume_step=3)
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [4, 4]


def test_appending_after_an_interrupted_write(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split": "tr')
    with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write(3, {"loss": 3.0})
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 3]

    # A whole record that only lacks its newline is kept.
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}')
    with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write(2, {"loss": 2.0})
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_disabled_writer_writes_nothing(tmp_path):
    run = tmp_path / "run"
    with MetricsWriter(str(run), enabled=False) as writer:
        writer.write(1, {"loss": 1.0})
        writer.flush()
    assert not run.exists()


def test_flush_then_close_then_write_fails(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(1, {"loss": 1.0})
    writer.flush()
    assert len(jsonl_lines(tmp_path)) == 1
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(2, {"loss": 1.0})


@pytest.mark.parametrize(
    "step, metrics, split, message",
    [
        (1, {"step": 1.0}, "train", "reserved"),
        (1, {"": 1.0}, "train", "non-empty"),
        (-1, {"loss": 1.0}, "train", "non-negative"),
        (1.0, {"loss": 1.0}, "train", "non-negative"),
        (1, {"loss": 1.0}, "../x", "split"),
    ],
    ids=["reserved-name", "empty-name", "negative-step", "float-step", "split-path"],
)
def test_write_rejects_bad_arguments(tmp_path, step, metrics, split, message):
    with MetricsWriter(str(tmp_path)) as writer, pytest.raises(ValueError, match=message):
        writer.write(step, metrics, split=split)
    assert jsonl_lines(tmp_path) == []


# ------------------------------------------------------------------------------------------
# read_metrics errors


def test_read_metrics_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        read_metrics(str(tmp_path))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "train"}\n', ":2:"),
        ('{"step": 1, "split": "train"}\n[1, 2]\n', ":2: a metrics line must be"),
        ('{"split": "train"}\n', ":1: a metrics line must be"),
        (b'{"step": 1, "split": "\xff"}\n', ": corrupt metrics file, not UTF-8"),
    ],
    ids=["corrupt-json", "not-an-object", "no-step", "not-utf8"],
)
def test_read_metrics_corrupt_line_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "metrics.jsonl"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ValueError, match=r"metrics\.jsonl" + message):
        read_metrics(str(tmp_path))


def test_read_metrics_skips_only_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "sp')
    assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train"}]


# ------------------------------------------------------------------------------------------
# plot_run


def test_plot_run_writes_a_png(tmp_path):
    run = str(tmp_path)
    with MetricsWriter(run, tensorboard=False) as writer:
        for step in range(0, 200, 10):
            writer.write(
                step,
                {
                    "loss": 10.0 / (step + 1),
                    "cross_entropy": 8.0 / (step + 1),
                    "tokens_per_second": 5000.0 + step,
                    "learning_rate": 1e-3,
                },
            )
            if step % 50 == 0:
                writer.write(step, {"cross_entropy": 9.0 / (step + 1)}, split="eval")
        writer.write(200, {"loss": math.nan, "cross_entropy": math.inf})

    path = plot_run(run)
    assert path == os.path.join(run, "curves.png")
    data = open(path, "rb").read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert not [name for name in os.listdir(run) if name.endswith(".tmp")]


def test_plot_run_skips_missing_metrics_and_honours_output(tmp_path):
    run = str(tmp_path / "run")
    with MetricsWriter(run, tensorboard=False) as writer:
        writer.write(1, {"tokens_per_second": 10.0, "grad_norm": 1.0})
        writer.write(2, {"tokens_per_second": 12.0})
    output = str(tmp_path / "plots" / "throughput.png")
    assert plot_run(run, output) == output
    assert open(output, "rb").read(8) == PNG_SIGNATURE
    assert not os.path.exists(os.path.join(run, "curves.png"))


def test_plot_run_without_metrics_names_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"metrics\.jsonl"):
        plot_run(str(tmp_path))
    with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write(1, {"grad_norm": 1.0})
    with pytest.raises(ValueError, match=r"nothing to plot in .*metrics\.jsonl"):
        plot_run(str(tmp_path))
    assert not os.path.exists(tmp_path / "curves.png")


def test_plot_cli_skips_a_corrupt_middle_line_and_says_so(tmp_path, capsys):
    from t5forge.cli import main

    lines = [json.dumps({"step": step, "split": "train", "loss": 1.0 / step}) for step in (1, 2, 3)]
    lines[1] = lines[1][:15] + "\x00\x00garbage"  # a line damaged in place, not a torn tail
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["plot", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert (
        "skipped 1 corrupt metrics line(s)" in captured.err and "metrics.jsonl:2:" in captured.err
    )
    assert open(tmp_path / "curves.png", "rb").read(8) == PNG_SIGNATURE
    # The library call still raises by default; only the skipping caller opts in.
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2:"):
        read_metrics(str(tmp_path))
    skipped = []
    assert [r["step"] for r in read_metrics(str(tmp_path), skipped)] == [1, 3] and len(skipped) == 1
