"""Reading corpus documents without TensorFlow.

Understands what `build-c4` / `build-mc4` write (TFRecord files of tf.Example
with a "text" feature; gzipped JSON lines with a "text" field) and plain text
(UTF-8, one document per line). A directory means every corpus file under it.
A raw WARC/WET file is refused with a pointer to `build-c4`, which makes a corpus of it.
Damaged input raises `CorpusError` naming the file, never yields garbage; or, for long
jobs, is counted and skipped (`iter_documents(..., damage=Counter())`).
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import google_crc32c

logger = logging.getLogger(__name__)


class CorpusError(ValueError):
    """A corpus file that cannot be read as what its name says it is."""


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_tfrecords(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file, with both CRCs checked."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorpusError(f"{path}: truncated TFRecord header")
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(header[:8]) != length_crc:
                raise CorpusError(f"{path}: corrupt TFRecord (length checksum)")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise CorpusError(f"{path}: truncated TFRecord")
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise CorpusError(f"{path}: corrupt TFRecord (data checksum)")
            yield data


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, payload) of the length-delimited fields of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 2:
            size, pos = _varint(buf, pos)
            yield key >> 3, buf[pos : pos + size]
            pos += size
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def example_bytes_feature(example: bytes, name: str) -> bytes | None:
    """The first bytes value of feature `name` in a serialized tf.train.Example."""
    target = name.encode("utf-8")
    for number, features in _fields(example):
        if number != 1:
            continue
        for entry_number, entry in _fields(features):
            if entry_number != 1:
                continue
            key = value = None
            for field, payload in _fields(entry):
                if field == 1:
                    key = payload
                elif field == 2:
                    value = payload
            if key != target or value is None:
                continue
            for kind, bytes_list in _fields(value):
                if kind == 1:  # Feature.bytes_list
                    for item_field, item in _fields(bytes_list):
                        if item_field == 1:
                            return item
            return None
    return None


def corpus_files(path: str) -> list[str]:
    """The corpus files named by `path` (a file, or every corpus file under a directory)."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "manifest.json")) and any(
            name.endswith(".tokens.npy") for name in os.listdir(path)
        ):
            raise CorpusError(
                f"{path}: token ids written by t5forge tokenize, not text; give the corpus "
                "it was made from (or turn it back into text with tokenize --decode)"
            )
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith(".") or name in ("stats.json", "report.html", "manifest.json"):
                    continue
                found.append(os.path.join(root, name))
        if not found:
            raise CorpusError(f"{path}: directory holds no corpus files")
        return found
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def file_format(path: str) -> str:
    """ "tfrecord", "jsonl" or "text", from the file name."""
    name = os.path.basename(path)
    if ".tfrecord" in name:
        return "tfrecord"
    if name.endswith((".json.gz", ".jsonl.gz", ".jsonl", ".json")):
        return "jsonl"
    return "text"


def _open_binary(path: str):
    raw = open(path, "rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw)
    raw.seek(0)
    return raw


def iter_documents(
    path: str, field: str = "text", damage: collections.Counter | None = None
) -> Iterator[str]:
    """The documents of one corpus file, in file order.

    Without `damage`, any damage raises `CorpusError`. With a Counter, damage inside a
    file that has yielded good documents is counted and skipped, as a long job must:
    a JSON line that does not parse ("corrupt:malformed_line", the next line is read),
    and a stream that breaks (bad gzip data, a broken TFRecord; "corrupt:rest_of_file",
    the file ends there). A file whose every record is bad is not a damaged corpus file
    but the wrong input, and still raises.
    """
    good = 0
    bad_lines = 0
    try:
        for document in _documents(path, field):
            if isinstance(document, _BadLine):
                if damage is None:
                    raise CorpusError(f"{path}:{document.number}: not a JSON object with {field!r}")
                bad_lines += 1
                continue
            good += 1
            yield document
    except CorpusError as e:
        if damage is None or not good:
            raise
        damage["corrupt:rest_of_file"] += 1
        logger.warning("%s: skipping the rest of the file: %s", path, e)
    if bad_lines:
        if not good:
            raise CorpusError(f"{path}: no line is a JSON object with {field!r}")
        damage["corrupt:malformed_line"] += bad_lines
        logger.warning("%s: skipped %d line(s) that are not JSON with %r", path, bad_lines, field)


class JsonLineError(NamedTuple):
    """Why a JSON line has no string `field` (for the message that names the file)."""

    reason: str


def json_text(line: str | bytes, field: str = "text") -> str | JsonLineError:
    """The string `field` of one JSON line, or why there is none. The one rule for corpus
    lines, shared by this reader and the seqio source (`pipelines.tasks`)."""
    try:
        value = json.loads(line)[field]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return JsonLineError(f"{type(e).__name__}: {e}")
    if not isinstance(value, str):
        return JsonLineError(f"{field!r} is a {type(value).__name__}")
    return value


class _BadLine(NamedTuple):
    """A JSON line that does not parse (1-based line number)."""

    number: int


_LINE_BREAK = re.compile("\r\n|\r|\n")  # what a universal-newline text reader splits on
# A WARC record's version line: the first line of every WARC/WET file (Common Crawl's included).
_WARC_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+")


def _check_not_warc(path: str, first_line: bytes) -> None:
    """Refuses a raw WARC/WET file: read as text it would yield its headers as documents.

    Only a first line that is a whole version line ("WARC/1.0") counts, so a text corpus whose
    first document merely begins with "WARC/" is still read.
    """
    if _WARC_VERSION_LINE.fullmatch(first_line.strip()):
        raise CorpusError(
            f"{path}: a WARC/WET file (raw web crawl data), not a corpus; build a corpus from it "
            f"first with `t5forge build-c4 --input {path}`"
        )


def _documents(path: str, field: str) -> Iterator[str | _BadLine]:
    """The documents of one corpus file, and a `_BadLine` for a JSON line that does not parse."""
    kind = file_format(path)
    try:
        if kind == "tfrecord":
            for record in iter_tfrecords(path):
                value = example_bytes_feature(record, field)
                if value is None:
                    raise CorpusError(f"{path}: a record has no {field!r} feature")
                yield value.decode("utf-8")
            return
        with _open_binary(path) as f:
            for number, raw_line in enumerate(f, 1):
                if number == 1:
                    _check_not_warc(path, raw_line)
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    if kind == "jsonl":
                        yield _BadLine(number)
                        continue
                    raise CorpusError(
                        f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start})"
                    ) from e
                if kind == "jsonl":
                    if not line.strip():
                        continue
                    document = json_text(line, field)
                    yield _BadLine(number) if isinstance(document, JsonLineError) else document
                else:
                    yield from filter(None, _LINE_BREAK.split(line))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorpusError(f"{path}: corrupt gzip data ({e})") from e
    except (ValueError, IndexError) as e:
        if isinstance(e, CorpusError):
            raise
        raise CorpusError(f"{path}: corrupt record ({e})") from e
