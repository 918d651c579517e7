"""Writing corpus shards: TFRecord of tf.Example, or gzipped JSON lines.

Shards are deterministic: a page goes to shard ``md5("shard:" + url) %
num_shards`` and pages inside a shard are ordered by md5(url), so any runner
with any parallelism writes byte-identical files. Each shard is written under a
temporary name and renamed when complete.

tf.Example records are encoded here (a few lines of protobuf wire format) so
Beam workers need no TensorFlow; `tests/` checks them with TensorFlow's parser.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import struct
from collections.abc import Iterable

import apache_beam as beam
import google_crc32c

from t5forge.beam_jobs.counters import Counters
from t5forge.beam_jobs.wet import Page

FORMATS = ("tfrecord", "jsonl")
# TFDS's C4 feature names (note the hyphens).
EXAMPLE_FEATURES = ("content-length", "content-type", "text", "timestamp", "url")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features: dict[str, str]) -> bytes:
    """Serialises a tf.train.Example whose features are single UTF-8 bytes values."""
    entries = []
    for name in sorted(features):
        bytes_list = _field(1, features[name].encode("utf-8"))
        feature = _field(1, bytes_list)  # Feature.bytes_list
        entry = _field(1, name.encode("utf-8")) + _field(2, feature)
        entries.append(_field(1, entry))  # Features.feature map entry
    return _field(1, b"".join(entries))  # Example.features


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + record
        + struct.pack("<I", _masked_crc(record))
    )


def page_features(page: Page) -> dict[str, str]:
    return {
        "content-length": page.content_length,
        "content-type": page.content_type,
        "text": page.text,
        "timestamp": page.timestamp,
        "url": page.url,
    }


def encode_page(page: Page, fmt: str, with_language: bool = False) -> bytes:
    """One page as it is stored in a shard of format `fmt`."""
    if fmt == "tfrecord":
        features = page_features(page)
        if with_language:
            features["language"] = page.language or ""
        return tfrecord_frame(encode_example(features))
    if fmt == "jsonl":
        record = {"url": page.url, "timestamp": page.timestamp, "text": page.text}
        if with_language:
            record["language"] = page.language
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


def shard_file_name(prefix: str, split: str, fmt: str, shard: int, num_shards: int) -> str:
    """Names readers expect: TFDS's for TFRecord, AllenAI C4's for JSON lines."""
    if fmt == "tfrecord":
        return f"{prefix}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"
    return f"{prefix}-{split}.{shard:05d}-of-{num_shards:05d}.json.gz"


def url_digest(url: str) -> bytes:
    return hashlib.md5(url.encode("utf-8")).digest()


def shard_of(url: str, num_shards: int) -> int:
    digest = hashlib.md5(b"shard:" + url.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def length_bucket(num_chars: int) -> int:
    """Quarter-octave bucket of a document length: k covers [2**(k/4), 2**((k+1)/4))."""
    return int(math.log2(max(num_chars, 1)) * 4)


def num_shards_for(num_bytes: int, shard_bytes: int) -> int:
    return max(1, -(-num_bytes // shard_bytes))


class SplitNaming:
    """C4's layout: `<prefix>-<split>...` files directly in the output directory."""

    def __init__(self, prefix: str, fmt: str, splits: tuple[str, ...]):
        self.prefix, self.fmt, self.splits = prefix, fmt, tuple(splits)

    def path(self, destination: str, shard: int, num_shards: int) -> str:
        return shard_file_name(self.prefix, destination, self.fmt, shard, num_shards)

    def required(self, present: Iterable[str]) -> list[str]:
        """Destinations that must have a file even when empty."""
        return list(self.splits)


class _WriteShardFn(beam.DoFn):
    """Writes one shard from its (sort key, record) pairs: temp name, then rename."""

    def __init__(self, directory: str, naming, fmt: str):
        self._directory = directory
        self._naming = naming
        self._fmt = fmt

    def process(self, element, num_shards):
        (destination, shard), records = element
        name = self._naming.path(destination, shard, num_shards.get(destination, 1))
        yield write_shard(self._directory, name, (r for _, r in sorted(records)), self._fmt)


def write_shard(directory: str, name: str, records: Iterable[bytes], fmt: str) -> str:
    """Writes records to `directory/name` atomically (gzip for JSON lines); returns the path.

    `name` may contain subdirectories; they are created as needed.
    """
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    final = FileSystems.join(directory, name)
    parent, base = final.rsplit("/", 1)
    tmp = f"{parent}/.tmp-{base}"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if fmt == "jsonl":
            # mtime=0 keeps the gzip bytes identical from run to run.
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=6) as g:
                for record in records:
                    g.write(record)
        else:
            for record in records:
                f.write(record)
    FileSystems.rename([tmp], [final])
    return final


@beam.ptransform_fn
def WriteShards(  # noqa: N802
    pages_by_destination,
    directory: str,
    naming,
    fmt: str,
    shard_bytes: int,
    with_language: bool = False,
):
    """Writes (destination, page) pairs as deterministic shards: one write for all destinations.

    A destination is a split ("train") or a language and split ("de/train");
    `naming` maps (destination, shard, number of shards) to a file path and says
    which destinations must exist even when empty. The shard count of each
    destination follows from its size. Returns the PCollection of written paths.
    """
    counters = Counters("write")

    def encode(kv):
        destination, page = kv
        record = encode_page(page, fmt, with_language)
        counters(f"{destination}:pages")
        counters(f"{destination}:bytes", len(page.text.encode("utf-8")))
        counters(f"{destination}:length_bucket:{length_bucket(len(page.text))}")
        return destination, url_digest(page.url), page.url, record

    encoded = pages_by_destination | "Encode" >> beam.Map(encode)
    sizes = (
        encoded
        | "RecordSize" >> beam.Map(lambda e: (e[0], len(e[3])))
        | "BytesPerDestination" >> beam.CombinePerKey(sum)
    )
    num_shards = sizes | "ShardsPerDestination" >> beam.Map(
        lambda kv: (kv[0], num_shards_for(kv[1], shard_bytes))
    )
    shards_side = beam.pvalue.AsDict(num_shards)
    written = (
        encoded
        | "AssignShard"
        >> beam.Map(
            lambda e, n: ((e[0], shard_of(e[2], n.get(e[0], 1))), (e[1], e[3])), n=shards_side
        )
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(_WriteShardFn(directory, naming, fmt), num_shards=shards_side)
    )

    def write_empty(_, n):
        return [
            write_shard(directory, naming.path(destination, 0, 1), [], fmt)
            for destination in naming.required(n)
            if destination not in n
        ]

    empty = (
        pages_by_destination.pipeline
        | "Once" >> beam.Create([None])
        | "WriteEmptyDestinations" >> beam.FlatMap(write_empty, n=shards_side)
    )
    return (written, empty) | "AllFiles" >> beam.Flatten()
