"""Training metrics as JSON lines and TensorBoard event files, with the standard library only.

The GPU machine that trains has JAX but neither TensorFlow nor the tensorboard package, so the
event files are encoded here by hand (protobuf wire format in TFRecord framing). Layout of a run
directory:

    DIRECTORY/metrics.jsonl                                   one JSON object per write
    DIRECTORY/tensorboard/<split>/events.out.tfevents.<time>.<host>   one event file per writer

metrics.jsonl lines are `{"step": int, "split": str, "time": unix seconds, name: value, ...}`.
Values are floats; non-finite values are written as the strings "nan", "inf" and "-inf" (JSON has
no NaN; a string keeps which non-finite value it was, where null would not), and `read_metrics`
turns them back into floats. Every line is valid JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Any

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
RESERVED_KEYS = ("step", "split", "time")
FILE_VERSION = "brain.Event:2"

_STRING_TO_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# A split names a TensorBoard subdirectory, so it must be a safe single path component.
_SPLIT_PATTERN = re.compile(r"[A-Za-z0-9_\-]+")


# --------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), as TFRecord framing requires.

_CRC32C_REFLECTED_POLY = 0x82F63B78


def _crc32c_table() -> tuple[int, ...]:
    """The 256-entry lookup table of the reflected CRC-32C polynomial."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_REFLECTED_POLY if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c_pure_python(data: bytes) -> int:
    """CRC-32C of `data`, one table lookup per byte (slow, but event records are small)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _google_crc32c() -> Callable[[bytes], int] | None:
    """google_crc32c.value when its C extension is installed, else None."""
    # google_crc32c warns and falls back to its own pure-Python code without the C extension;
    # ours is then just as good, so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import google_crc32c
        except ImportError:
            return None
    if getattr(google_crc32c, "implementation", None) != "c":
        return None
    return google_crc32c.value


crc32c: Callable[[bytes], int] = _google_crc32c() or crc32c_pure_python


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (rotated and offset, so CRCs of CRCs don't degenerate)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# --------------------------------------------------------------------------------------------
# Protobuf wire format for tensorflow.Event / Summary / SessionLog (the fields used here only).

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_SESSION_LOG_START = 1


def _varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values as their 64-bit two's complement."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _varint_field(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def _double_field(field: int, value: float) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
    try:
        packed = struct.pack("<f", value)
    except OverflowError:  # beyond float32's range: what a float32 cast would give
        packed = struct.pack("<f", math.copysign(math.inf, value))
    return _key(field, _FIXED32) + packed


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, what: bytes) -> bytes:
    """An Event message: wall_time (1), step (2) and one field of its `what` oneof."""
    return _double_field(1, wall_time) + _varint_field(2, step) + what


def file_version_event(wall_time: float) -> bytes:
    """The Event that opens every event file; version 2 makes TensorBoard honour SessionLogs."""
    return _event(wall_time, 0, _bytes_field(3, FILE_VERSION.encode()))


def session_start_event(wall_time: float, step: int) -> bytes:
    """Event(session_log {status: START}) at `step`: TensorBoard drops data at steps >= step."""
    return _event(wall_time, step, _bytes_field(7, _varint_field(1, _SESSION_LOG_START)))


def scalars_event(wall_time: float, step: int, scalars: Mapping[str, float]) -> bytes:
    """Event(summary {value {tag, simple_value}...}): one float32 value per scalar."""
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _float_field(2, value))
        for tag, value in scalars.items()
    )
    return _event(wall_time, step, _bytes_field(5, summary))


class EventFileWriter:
    """Appends framed Event records to a new `events.out.tfevents.<time>.<host>` file."""

    def __init__(self, directory: str, wall_time: float):
        os.makedirs(directory, exist_ok=True)
        self.path, self._file = _create_event_file(directory, wall_time)
        self.write(file_version_event(wall_time))

    def write(self, event: bytes) -> None:
        """Appends one Event and hands it to the OS, so TensorBoard sees it right away."""
        self._file.write(tfrecord_frame(event))
        self._file.flush()

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _create_event_file(directory: str, wall_time: float) -> tuple[str, IO[bytes]]:
    """Creates the event file, with a counter suffix if a writer this second took the name."""
    base = os.path.join(directory, f"events.out.tfevents.{int(wall_time)}.{socket.gethostname()}")
    path, counter = base, 0
    while True:
        try:
            return path, open(path, "xb")
        except FileExistsError:
            counter += 1
            path = f"{base}.{counter}"


# --------------------------------------------------------------------------------------------
# metrics.jsonl


def _json_value(value: float) -> float | str:
    """A float JSON can hold: non-finite values become "nan", "inf" or "-inf"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _metrics_line(step: int, split: str, wall_time: float, metrics: Mapping[str, float]) -> str:
    record: dict[str, Any] = {"step": step, "split": split, "time": wall_time}
    record.update((name, _json_value(value)) for name, value in metrics.items())
    return json.dumps(record, allow_nan=False) + "\n"


def _parse_line(path: str, line_number: int, line: str) -> dict[str, Any]:
    """One metrics.jsonl record, non-finite strings back to floats; ValueError names the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{line_number}: corrupt metrics line ({error})") from None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("step"), int)
        or not isinstance(record.get("split"), str)
    ):
        raise ValueError(
            f"{path}:{line_number}: a metrics line must be a JSON object with an integer "
            f'"step" and a string "split"'
        )
    for name, value in record.items():
        if name != "split" and isinstance(value, str) and value in _STRING_TO_NON_FINITE:
            record[name] = _STRING_TO_NON_FINITE[value]
    return record


def _read_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of the complete lines; an unterminated last line that does not parse
    is a write cut short (a crash, or a writer mid-line) and is left out."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: corrupt metrics file, not UTF-8 text ({error})") from None
    lines = text.split("\n")
    unterminated = lines.pop()  # "" when the file ends with a newline
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if unterminated.strip() and _parses_as_json(unterminated):
        numbered.append((len(lines) + 1, unterminated))
    return numbered


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def read_metrics(directory: str, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The records of DIRECTORY/metrics.jsonl in file order.

    Non-finite values come back as float NaN/inf. Raises FileNotFoundError if the file is
    missing and ValueError (naming path and line) for a corrupt line, unless `skipped` is a
    list: then each corrupt line is left out and its error message appended there. An
    unterminated last line, the trace of an interrupted write, is always left out.
    """
    path = os.path.join(directory, METRICS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics file {path}")
    records = []
    for number, line in _read_lines(path):
        try:
            records.append(_parse_line(path, number, line))
        except ValueError as error:
            if skipped is None:
                raise
            skipped.append(str(error))
    return records


def _truncate_after_step(path: str, resume_step: int) -> None:
    """Rewrites `path` without the lines of steps > resume_step (and any torn last line)."""
    kept = [
        line + "\n"
        for number, line in _read_lines(path)
        if _parse_line(path, number, line)["step"] <= resume_step
    ]
    directory = os.path.dirname(path)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{METRICS_FILENAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), os.stat(path).st_mode & 0o777)  # mkstemp's is private
            file.writelines(kept)
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


def _end_with_newline(path: str) -> None:
    """Makes appended lines start on a line of their own after an interrupted write: a last
    line without its newline gets one if it is a whole record, and is cut off if it is not."""
    if not os.path.isfile(path):
        return
    with open(path, "r+b") as file:
        data = file.read()
        if not data or data.endswith(b"\n"):
            return
        start_of_last_line = data.rfind(b"\n") + 1
        if _parses_as_json(data[start_of_last_line:].decode("utf-8", errors="replace")):
            file.write(b"\n")
        else:
            file.truncate(start_of_last_line)


# --------------------------------------------------------------------------------------------
# The writer


def _checked_split(split: str) -> str:
    if not isinstance(split, str) or not _SPLIT_PATTERN.fullmatch(split):
        raise ValueError(f"split must be a name of letters, digits, '_' or '-', not {split!r}")
    return split


def _checked_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics as Python floats (numpy/JAX scalars included), names checked."""
    checked = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, not {name!r}")
        if name in RESERVED_KEYS:
            raise ValueError(f"metric name {name!r} is reserved (reserved: {RESERVED_KEYS})")
        checked[name] = float(value)
    return checked


class MetricsWriter:
    """Writes training/eval metrics to DIRECTORY/metrics.jsonl and TensorBoard event files.

    Args:
      directory: the run directory (created if missing).
      tensorboard: also write DIRECTORY/tensorboard/<split>/events.out.tfevents.*.
      resume_step: the checkpoint step a resumed run restarts from. The interrupted run may have
        logged later steps; those lines are removed from metrics.jsonl so that each step appears
        once, and each new event file starts with a SessionLog START at resume_step + 1, which
        tells TensorBoard to drop the old files' events after resume_step.
      enabled: False makes every method a no-op (multi-host runs: only process 0 writes).

    Every write is handed to the OS at once (a crash loses nothing already written and a
    reader sees whole lines); `flush` also forces it to disk.
    """

    def __init__(
        self,
        directory: str,
        *,
        tensorboard: bool = True,
        resume_step: int | None = None,
        enabled: bool = True,
    ):
        self.directory = directory
        self.enabled = enabled
        self._tensorboard = tensorboard
        self._resume_step = resume_step
        self._event_writers: dict[str, EventFileWriter] = {}
        self._jsonl: IO[str] | None = None
        self._closed = False
        if enabled:
            self._jsonl = self._open_jsonl()

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.directory, METRICS_FILENAME)

    def _open_jsonl(self) -> IO[str]:
        os.makedirs(self.directory, exist_ok=True)
        path = self.metrics_path
        if self._resume_step is not None and os.path.isfile(path):
            _truncate_after_step(path, self._resume_step)
        else:
            _end_with_newline(path)
        return open(path, "a", encoding="utf-8")

    def _event_writer(self, split: str, wall_time: float) -> EventFileWriter:
        """The split's event file, created on its first write."""
        writer = self._event_writers.get(split)
        if writer is None:
            directory = os.path.join(self.directory, TENSORBOARD_DIRNAME, split)
            writer = EventFileWriter(directory, wall_time)
            if self._resume_step is not None:
                writer.write(session_start_event(wall_time, self._resume_step + 1))
            self._event_writers[split] = writer
        return writer

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        """Records `metrics` (name -> number) at `step` for `split` ("train" or "eval")."""
        if self._closed:
            raise ValueError(f"MetricsWriter for {self.directory} is closed")
        if not self.enabled:
            return
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, not {step!r}")
        split = _checked_split(split)
        values = _checked_metrics(metrics)
        wall_time = time.time()
        assert self._jsonl is not None
        self._jsonl.write(_metrics_line(step, split, wall_time, values))
        self._jsonl.flush()
        if self._tensorboard and values:
            self._event_writer(split, wall_time).write(scalars_event(wall_time, step, values))

    def flush(self) -> None:
        """Forces everything written so far to disk (e.g. before saving a checkpoint)."""
        if self._closed or not self.enabled:
            return
        assert self._jsonl is not None
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        for writer in self._event_writers.values():
            writer.sync()

    def close(self) -> None:
        """Closes the files; further writes raise ValueError. Closing twice is fine."""
        if self._closed:
            return
        self._closed = True
        if self._jsonl is not None:
            self._jsonl.close()
        for writer in self._event_writers.values():
            writer.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
