"""Reading Common Crawl WET files into pages, tolerating corrupt data.

The text of every page is what TFDS's `c4_utils.split_wet_file` yields for a
valid file: lines split as a universal-newline text reader splits them, each
stripped, empty ones skipped, header-looking lines (``WARC*``, ``Content-*``,
``CONTENT-*``) dropped even inside the body, and the rest joined with "\\n".

Where TFDS decodes a whole file strictly and dies on the first bad byte, we
decode one record at a time: a bad gzip member, a truncated file or invalid
UTF-8 loses only the records it touches, each loss is counted, and reading
resumes at the next gzip member. Uncompressed WET files are read too; a file
without a single WARC record (not a WARC file at all) is counted as damaged.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

CounterFn = Callable[..., None]

COMMON_CRAWL_BASE_URL = "https://data.commoncrawl.org/"
_CC_VERSION = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")

_PAGE_DELIMITER = "WARC/1.0"
_URL_KEY = "WARC-Target-URI:"
_DATE_KEY = "WARC-Date:"
_CONTENT_TYPE_KEY = "Content-Type:"
_CONTENT_LENGTH_KEY = "Content-Length:"
_METADATA_PREFIXES = ("WARC", "CONTENT-", "Content-")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_READ_SIZE = 1 << 20

# TFDS 3.1's `_KNOWN_CORRUPT_WET_FILES` (c4.py): files its builder leaves out of every build
# (a UnicodeDecodeError). We could read their decodable records, but the released corpora do
# not contain them, so we leave them out too, and count it.
KNOWN_CORRUPT_WET_FILES = (
    "crawl-data/CC-MAIN-2017-13/segments/1490218203536.73/wet/"
    "CC-MAIN-20170322213003-00052-ip-10-233-31-227.ec2.internal.warc.wet.gz",
)


def is_known_corrupt(path: str) -> bool:
    """Whether `path` (a listing entry, URL or local path) is one of TFDS's excluded files."""
    return any(path == p or path.endswith("/" + p) for p in KNOWN_CORRUPT_WET_FILES)


@dataclasses.dataclass
class Page:
    """One web page: the WET record's metadata and its text."""

    url: str = ""
    normalized_url: str = ""
    timestamp: str = ""
    content_type: str = ""
    content_length: str = ""
    text: str = ""
    language: str | None = None


def normalize_url(url: str) -> str:
    """C4's URL key: no scheme or `www.`, no utm/ref/feed query, no trailing /."""
    url = re.sub(r"https?:\/\/(www\.)?", "", url)
    url = re.sub(r"\?(utm_|ref|feed).*", "", url)
    return url.rstrip("/")


def _ignore(name: str, amount: int = 1) -> None:
    del name, amount


class _DataLost:
    """Marks a gap in the decompressed stream (a corrupt or truncated member)."""


# A member broke after it had produced text: the record being read is damaged.
_LOST = _DataLost()
# A member broke before producing any text. Common Crawl writes one gzip
# member per record, so the record read so far is complete; the lost member's
# own record is gone and counted as a bad member.
_LOST_AT_BOUNDARY = _DataLost()


def _decompressed_chunks(raw: BinaryIO, count: CounterFn) -> Iterator[bytes | _DataLost]:  # noqa: C901
    """Decompresses a (multi-member) gzip stream, skipping corrupt members.

    Yields byte chunks, and `_LOST` or `_LOST_AT_BOUNDARY` wherever data could
    not be decoded. After a decoding error, reading resumes at the next gzip
    header found after the start of the broken member.
    """
    member = bytearray()  # raw bytes of the member being decoded, for resync
    member_output = False  # whether that member has produced text yet
    decoder = zlib.decompressobj(31)
    pending = b""
    scanning = False  # looking for the next gzip header after an error
    between = False  # a member just ended: NUL padding may follow, as gzip allows
    eof = False
    while True:
        if not pending:
            if eof:
                break
            pending = raw.read(_READ_SIZE)
            if not pending:
                eof = True
                break
        if between:
            # Python's gzip module skips zero bytes after a member; so do we, rather than
            # count them as a broken member.
            pending = pending.lstrip(b"\x00")
            if not pending:
                continue
            between = False
        if scanning:
            pos = pending.find(_GZIP_MAGIC)
            if pos < 0:
                # Keep the last bytes: a header may straddle two reads.
                tail = pending[-(len(_GZIP_MAGIC) - 1) :]
                more = raw.read(_READ_SIZE)
                if not more:
                    eof = True
                    pending = b""
                    break
                pending = tail + more
                continue
            pending = pending[pos:]
            scanning = False
            member = bytearray()
            member_output = False
            decoder = zlib.decompressobj(31)
        data, pending = pending, b""
        member += data
        try:
            out = decoder.decompress(data)
        except zlib.error:
            count("corrupt:bad_gzip_member")
            yield _LOST if member_output else _LOST_AT_BOUNDARY
            # Rescan from just after the broken member's first byte.
            pending = bytes(member[1:])
            scanning = True
            continue
        if out:
            member_output = True
            yield out
        if decoder.eof:
            rest = decoder.unused_data
            decoder = zlib.decompressobj(31)
            member = bytearray()
            member_output = False
            between = True
            if rest:
                pending = rest
    if scanning:
        return
    if member and not decoder.eof:
        count("corrupt:truncated_file")
        yield _LOST if member_output else _LOST_AT_BOUNDARY


def _raw_lines(chunks: Iterable[bytes | _DataLost]) -> Iterator[bytes | _DataLost]:
    """Splits byte chunks into lines at \\n and \\r (universal newlines)."""
    carry = b""
    for chunk in chunks:
        if chunk is _LOST_AT_BOUNDARY:
            continue
        if chunk is _LOST:
            carry = b""
            yield _LOST
            continue
        if b"\r" in chunk:
            # A \r\n split over two chunks makes an extra empty line, which
            # the parser skips like every empty line.
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry


_DELIMITER_BYTES = _PAGE_DELIMITER.encode()


def _is_delimiter(line: bytes) -> bool:
    try:
        return line.decode("utf-8").strip() == _PAGE_DELIMITER
    except UnicodeDecodeError:
        return False


_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+")
# How far into a stream a first WARC version line is looked for. Real WET files have one on
# their first line (and every record within Common Crawl's 1 MiB content limit); past this, a
# stream without one is not read on, so that a large file of another kind given by mistake
# is not held in memory as one giant record.
NOT_WARC_SCAN_BYTES = 64 << 20


def _is_version_line(line: bytes) -> bool:
    """Whether `line` is a WARC record's version line ("WARC/1.0", "WARC/1.1", ...)."""
    return b"WARC/" in line and _VERSION_LINE.fullmatch(line.strip()) is not None


def _parse_record(lines: list[bytes], count: CounterFn) -> Page | None:
    """Builds a page from one record's lines exactly as `split_wet_file` does."""
    try:
        text = b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        count("corrupt:invalid_utf8")
        return None
    page = Page()
    body = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line[0] in "WCc":
            if line.startswith(_URL_KEY):
                page.url = line[len(_URL_KEY) :].strip()
                page.normalized_url = normalize_url(page.url)
            elif line.startswith(_DATE_KEY):
                page.timestamp = line[len(_DATE_KEY) :].strip()
            elif line.startswith(_CONTENT_TYPE_KEY):
                page.content_type = line[len(_CONTENT_TYPE_KEY) :].strip()
            elif line.startswith(_CONTENT_LENGTH_KEY):
                page.content_length = line[len(_CONTENT_LENGTH_KEY) :].strip()
            if line.startswith(_METADATA_PREFIXES):
                continue
        body.append(line)
    page.text = "\n".join(body)
    if not page.url:
        count("filtered:no_url")
    elif not page.text:
        count("filtered:no_content")
    elif not page.timestamp:
        count("filtered:no_timestamp")
    else:
        count("passed")
        return page
    return None


def parse_wet_stream(raw: BinaryIO, count: CounterFn = _ignore) -> Iterator[Page]:
    """Yields the valid pages of a WET stream (gzip or plain), counting losses.

    Args:
      raw: the file's bytes, gzip-compressed (one or many members) or plain.
      count: called as ``count(name)`` for every record outcome: "passed",
        "filtered:no_url|no_content|no_timestamp" (TFDS's names) and
        "corrupt:bad_gzip_member|truncated_file|invalid_utf8|lost_record"; and
        "corrupt:not_a_warc_file" once for an intact stream without a single WARC version line
        (empty, or not a WARC/WET file at all), which then yields nothing; such a stream is
        read no further than `NOT_WARC_SCAN_BYTES` (past that it cannot be a WET file).
    """
    decoding_damaged = False

    def count_decoding(name: str, amount: int = 1) -> None:
        nonlocal decoding_damaged
        decoding_damaged = True
        count(name, amount)

    head = raw.read(2)
    if head == _GZIP_MAGIC[:2]:
        chunks = _decompressed_chunks(_Prepend(head, raw), count_decoding)
    else:
        chunks = _plain_chunks(_Prepend(head, raw))
    record: list[bytes] = []
    damaged = False
    first = True
    # Real WET files start with a "WARC/1.0" warcinfo record, so this is settled on their first
    # line; only a stream without one pays for the check on later lines.
    warc = False
    scanned = 0  # bytes read before the first version line
    for line in _raw_lines(chunks):
        if line is _LOST:
            damaged = True
            continue
        if not warc:
            if _is_version_line(line):
                warc = True
            else:
                scanned += len(line) + 1
                if scanned > NOT_WARC_SCAN_BYTES and not damaged and not decoding_damaged:
                    count("corrupt:not_a_warc_file")
                    return
        if _DELIMITER_BYTES in line and _is_delimiter(line):
            # TFDS does not judge the (empty) page before a first delimiter.
            if not first or record:
                if damaged:
                    count("corrupt:lost_record")
                else:
                    page = _parse_record(record, count)
                    if page is not None:
                        yield page
            record, damaged = [line], False
        else:
            record.append(line)
        first = False
    if damaged:
        count("corrupt:lost_record")
    elif not warc and not decoding_damaged:
        # Not a WARC file (plain text, another format, an empty file): TFDS would judge the whole
        # file as one page ("filtered:no_url") or, not gzip, fail the job on it. It is the
        # wrong input, not a filtered page: counting it as damage lets `require_pages_read`
        # reject a job whose every input is like this. (Where decoding already lost data, that
        # damage is counted and the file is judged as before.)
        count("corrupt:not_a_warc_file")
    elif record or first:
        page = _parse_record(record, count)
        if page is not None:
            yield page


class _Prepend(io.RawIOBase):
    """A reader that first returns `head`, then the rest of `raw`."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            if size < 0:
                return head + self._raw.read()
            rest = self._raw.read(size - len(head)) if size > len(head) else b""
            return head + (rest or b"")
        return self._raw.read(size)

    def readable(self) -> bool:
        return True


def _plain_chunks(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(_READ_SIZE):
        yield chunk


def _open_input(path: str, download_dir: str | None = None) -> tuple[BinaryIO, str | None]:
    """Opens a WET path for reading raw bytes; http(s) files are downloaded."""
    if path.startswith(("http://", "https://")):
        local = download_file(path, download_dir)
        return open(local, "rb"), local
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED), None


def read_wet_file(
    path: str, count: CounterFn = _ignore, download_dir: str | None = None
) -> Iterator[Page]:
    """Yields the pages of one WET file; never raises for a damaged file.

    `path` is anything Beam's FileSystems opens (local, gs://, s3://, ...) or
    an http(s) URL, which is downloaded first. A file that cannot be opened at
    all is counted as "corrupt:unreadable_file" and logged, one that holds no
    WARC record at all as "corrupt:not_a_warc_file"; one of TFDS's
    `KNOWN_CORRUPT_WET_FILES` is not read ("skipped:known_corrupt_file").
    """
    count("wet-file")
    if is_known_corrupt(path):
        logging.warning("skipping %s: TFDS's C4 builder excludes it as corrupt", path)
        count("skipped:known_corrupt_file")
        return
    try:
        raw, local = _open_input(path, download_dir)
    except Exception as e:  # noqa: BLE001 - one bad file must not end the job
        logging.warning("cannot open WET file %s: %s", path, e)
        count("corrupt:unreadable_file")
        return

    def count_and_log(name: str, amount: int = 1) -> None:
        if name == "corrupt:not_a_warc_file":
            # The counter alone cannot say which input it was; the log can.
            logging.warning("skipping %s: not a WARC/WET file (no WARC record in it)", path)
        count(name, amount)

    try:
        yield from parse_wet_stream(raw, count_and_log)
    except OSError as e:
        logging.warning("error while reading WET file %s: %s", path, e)
        count("corrupt:read_error")
    finally:
        raw.close()
        if local:
            os.remove(local)


def download_file(url: str, directory: str | None = None, attempts: int = 3) -> str:
    """Downloads `url` to a new file in `directory` (temp then rename); returns its path."""
    directory = directory or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(attempts):
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, _READ_SIZE)
            final = tmp[: -len(".part")]
            os.replace(tmp, final)
            return final
        except OSError as e:
            last_error = e
            if os.path.exists(tmp):
                os.remove(tmp)
            time.sleep(min(2**attempt, 10))
    raise OSError(f"could not download {url}: {last_error}")


def common_crawl_listing_url(cc_version: str) -> str:
    """URL of the `wet.paths.gz` listing of a Common Crawl dump (CC-MAIN-YYYY-WW)."""
    if not _CC_VERSION.match(cc_version):
        raise ValueError(f"--cc-version {cc_version!r} is not of the form CC-MAIN-YYYY-WW")
    return f"{COMMON_CRAWL_BASE_URL}crawl-data/{cc_version}/wet.paths.gz"


def read_path_listing(listing: str, base_url: str = COMMON_CRAWL_BASE_URL) -> list[str]:
    """Reads a `wet.paths(.gz)` listing: one path per line, made absolute with `base_url`.

    Lines that already are URLs or absolute paths are kept as they are.
    """
    if listing.startswith(("http://", "https://")):
        local = download_file(listing)
        try:
            return read_path_listing(local, base_url)
        finally:
            os.remove(local)
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(listing):
        raise FileNotFoundError(f"input list {listing} does not exist")
    with FileSystems.open(listing, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC[:2]:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"input list {listing} is not a readable gzip file: {e}") from e
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"input list {listing} is not UTF-8 text") from e
    paths = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if "://" in line or line.startswith("/"):
            paths.append(line)
        else:
            paths.append(base_url.rstrip("/") + "/" + line.lstrip("/"))
    if not paths:
        raise ValueError(f"input list {listing} lists no files")
    return paths


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Expands file globs with Beam's FileSystems; errors name what matched nothing."""
    from apache_beam.io.filesystems import FileSystems

    paths: list[str] = []
    for pattern in patterns:
        if pattern.startswith(("http://", "https://")):
            paths.append(pattern)
            continue
        if "://" not in pattern and os.path.isdir(pattern):  # e.g. a corpus, or a WET folder
            raise IsADirectoryError(
                f"--input {pattern}: a directory; give WET files or a glob such as "
                f"'{os.path.join(pattern, '*.warc.wet.gz')}'"
            )
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"--input {pattern}: no such file")
        paths.extend(sorted(m.path for m in matched))
    return paths
