"""WET reading: TFDS-identical pages for valid files, counted losses for damaged ones."""

import collections
import gzip
import io
import os

import pytest
from conftest import DEBIAN_WET, PYTHON_DOCS_WET

from t5forge.beam_jobs import wet


def record(url, body, date="2019-04-20T10:00:00Z", extra_headers=""):
    headers = (
        "WARC/1.0\r\nWARC-Type: conversion\r\n"
        + (f"WARC-Target-URI: {url}\r\n" if url else "")
        + (f"WARC-Date: {date}\r\n" if date else "")
        + extra_headers
        + "Content-Type: text/plain\r\n"
        + f"Content-Length: {len(body.encode('utf-8'))}\r\n\r\n"
    )
    return (headers + body + "\r\n\r\n").encode("utf-8")


def members(*records):
    return b"".join(gzip.compress(r, mtime=0) for r in records)


def read(data):
    counts = collections.Counter()
    pages = list(wet.parse_wet_stream(io.BytesIO(data), lambda n, a=1: counts.update({n: a})))
    return pages, counts


BODIES = [f"Body of page {i}.\nSecond line of page {i}." for i in range(5)]
URLS = [f"https://example.com/page{i}" for i in range(5)]


def valid_file():
    return [record(u, b) for u, b in zip(URLS, BODIES, strict=True)]


def test_parses_records():
    pages, counts = read(members(*valid_file()))
    assert [p.url for p in pages] == URLS
    assert [p.text for p in pages] == BODIES
    assert pages[0].normalized_url == "example.com/page0"
    assert pages[0].timestamp == "2019-04-20T10:00:00Z"
    assert pages[0].content_type == "text/plain"
    assert pages[0].content_length == str(len(BODIES[0]))
    assert counts["passed"] == 5


def test_plain_uncompressed_wet():
    pages, _ = read(b"".join(valid_file()))
    assert [p.text for p in pages] == BODIES


def test_header_like_body_lines_follow_tfds():
    # TFDS treats body lines starting with WARC/Content- as headers, even late ones.
    body = "Real text here.\nContent-Length: 7\nWARC is a file format.\nMore text."
    pages, _ = read(members(record("https://a.org/x", body)))
    assert pages[0].text == "Real text here.\nMore text."
    assert pages[0].content_length == "7"


def test_missing_url_or_date_counted():
    pages, counts = read(
        members(
            record(None, "No URL here."),
            record("https://a.org/1", "No date.", date=None),
            record("https://a.org/2", ""),
            record("https://a.org/3", "Fine."),
        )
    )
    assert [p.url for p in pages] == ["https://a.org/3"]
    assert counts["filtered:no_url"] == 1
    assert counts["filtered:no_timestamp"] == 1
    assert counts["filtered:no_content"] == 1


def test_bad_gzip_member_loses_only_that_record():
    recs = [gzip.compress(r, mtime=0) for r in valid_file()]
    broken = bytearray(recs[2])
    broken[len(broken) // 2] ^= 0xFF  # corrupt the deflate stream
    broken[len(broken) // 2 + 1] ^= 0xFF
    pages, counts = read(b"".join(recs[:2]) + bytes(broken) + b"".join(recs[3:]))
    assert [p.url for p in pages] == [URLS[0], URLS[1], URLS[3], URLS[4]]
    assert counts["corrupt:bad_gzip_member"] >= 1
    assert counts["passed"] == 4


def test_member_broken_after_producing_text_loses_its_record(monkeypatch):
    monkeypatch.setattr(wet, "_READ_SIZE", 512)  # decode each member in many steps
    big = "".join(f"Line {i} of a long text that fills the member.\n" for i in range(3000))
    recs = [gzip.compress(record(u, b + big), mtime=0) for u, b in zip(URLS, BODIES, strict=True)]
    broken = bytearray(recs[2])
    for i in range(len(broken) * 3 // 4, len(broken) * 3 // 4 + 64):
        broken[i] ^= 0x5A
    pages, counts = read(b"".join(recs[:2]) + bytes(broken) + b"".join(recs[3:]))
    assert [p.url for p in pages] == [URLS[0], URLS[1], URLS[3], URLS[4]]
    assert counts["corrupt:lost_record"] == 1


def test_truncated_file_keeps_complete_records():
    data = members(*valid_file())
    pages, counts = read(data[:-40])
    assert [p.url for p in pages] == URLS[:4]
    assert counts["corrupt:truncated_file"] == 1
    assert counts["corrupt:lost_record"] == 1


def test_invalid_utf8_loses_only_that_record():
    recs = valid_file()
    recs[1] = recs[1].replace(b"Body of page 1.", b"Body of \xff\xfe page 1.")
    pages, counts = read(members(*recs))
    assert [p.url for p in pages] == [URLS[0]] + URLS[2:]
    assert counts["corrupt:invalid_utf8"] == 1


def test_garbage_between_members_is_skipped():
    recs = [gzip.compress(r, mtime=0) for r in valid_file()]
    pages, counts = read(recs[0] + b"\x00garbage bytes\x00" * 10 + b"".join(recs[1:]))
    assert [p.url for p in pages] == URLS
    assert counts["corrupt:bad_gzip_member"] >= 1


def test_zero_padding_is_not_corruption():
    # gzip allows NUL bytes after a member (Python's gzip module, hence TFDS, skips them);
    # they must not be counted as a broken member.
    recs = [gzip.compress(r, mtime=0) for r in valid_file()]
    padded = recs[0] + b"\x00" * 700 + b"".join(recs[1:]) + b"\x00" * 512
    assert [p.url for p in gzip_pages(padded)] == URLS
    pages, counts = read(padded)
    assert [p.url for p in pages] == URLS
    assert [p.text for p in pages] == BODIES
    assert counts == {"passed": 5}


def gzip_pages(data):
    """The pages of `data` as Python's gzip module decompresses it (no damage tolerated)."""
    pages, _ = read(gzip.decompress(data))
    return pages


def test_tfds_known_corrupt_file_is_skipped_and_counted(tmp_path):
    # TFDS's builder leaves this file out of every build; a valid file elsewhere is read.
    (relative,) = wet.KNOWN_CORRUPT_WET_FILES
    excluded = tmp_path / relative
    excluded.parent.mkdir(parents=True)
    excluded.write_bytes(members(*valid_file()))
    other = tmp_path / relative.replace("00052", "00053")
    other.write_bytes(members(*valid_file()))
    counts = collections.Counter()
    for path in (excluded, other):
        pages = list(wet.read_wet_file(str(path), lambda n, a=1: counts.update({n: a})))
    assert [p.url for p in pages] == URLS
    assert counts == {"wet-file": 2, "skipped:known_corrupt_file": 1, "passed": 5}
    assert wet.is_known_corrupt("https://data.commoncrawl.org/" + relative)
    assert wet.is_known_corrupt(relative)
    assert not wet.is_known_corrupt("x" + relative)


def test_unreadable_file_is_counted_not_raised(tmp_path):
    counts = collections.Counter()
    pages = list(
        wet.read_wet_file(str(tmp_path / "missing.wet.gz"), lambda n, a=1: counts.update({n: a}))
    )
    assert pages == []
    assert counts["corrupt:unreadable_file"] == 1


@pytest.mark.parametrize("path", [PYTHON_DOCS_WET, DEBIAN_WET])
def test_same_pages_as_tfds_split_wet_file(path):
    if not os.path.exists(path):
        pytest.skip(f"shared data {path} is not present in this checkout")
    c4_utils = pytest.importorskip("tensorflow_datasets.text.c4_utils")
    ref = list(c4_utils.split_wet_file(path, counter_inc_fn=lambda *a: None))
    ours = list(wet.read_wet_file(path))
    assert len(ours) == len(ref) > 100
    for a, b in zip(ours, ref, strict=True):
        assert (a.url, a.normalized_url, a.timestamp, a.content_type, a.content_length, a.text) == (
            b.url,
            b.normalized_url,
            b.timestamp,
            b.content_type,
            b.content_length,
            b.text,
        )


def test_path_listing(tmp_path):
    listing = tmp_path / "wet.paths.gz"
    listing.write_bytes(
        gzip.compress(b"crawl-data/CC-MAIN-2019-18/a.warc.wet.gz\n\n/abs/b.warc.wet.gz\n")
    )
    assert wet.read_path_listing(str(listing)) == [
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2019-18/a.warc.wet.gz",
        "/abs/b.warc.wet.gz",
    ]
    assert wet.common_crawl_listing_url("CC-MAIN-2019-18") == (
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2019-18/wet.paths.gz"
    )
    with pytest.raises(ValueError, match="CC-MAIN-YYYY-WW"):
        wet.common_crawl_listing_url("2019-18")
    with pytest.raises(FileNotFoundError, match="nope"):
        wet.read_path_listing(str(tmp_path / "nope.gz"))


def test_expand_inputs_refuses_a_directory(tmp_path):
    """--input mc4/ (a corpus, or a folder of WET files) fails at once, naming a glob; it used
    to run the whole job and end with "input files that could not be opened: 1"."""
    with pytest.raises(IsADirectoryError, match=r"--input .*: a directory; .*\*\.warc\.wet\.gz"):
        wet.expand_inputs([str(tmp_path)])


def test_http_download_and_read(tmp_path, serve_directory):
    """WET files and listings given as URLs are downloaded (here from a local server)."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.warc.wet.gz").write_bytes(members(*valid_file()))
    (tmp_path / "srv" / "wet.paths").write_text("f.warc.wet.gz\n")
    base = serve_directory(tmp_path / "srv").url
    paths = wet.read_path_listing(base + "wet.paths", base_url=base)
    assert paths == [base + "f.warc.wet.gz"]
    dl = tmp_path / "dl"
    pages = list(wet.read_wet_file(paths[0], download_dir=str(dl)))
    assert [p.url for p in pages] == URLS
    assert os.listdir(dl) == []  # the download is removed after reading


@pytest.mark.parametrize(
    "data",
    [
        b"hello world\nthis is plain text, not WARC\n",
        gzip.compress(b"hello world\nthis is gzipped text, not WARC\n", mtime=0),
        b"",
        gzip.compress(b"", mtime=0),
        b"\n  \r\n",
    ],
    ids=["plain-text", "gzipped-text", "empty", "empty-gzip", "blank-lines"],
)
def test_file_without_a_warc_record_is_counted_as_damaged(data):
    # Not a filtered page ("filtered:no_url", as TFDS would count a gzipped one): the wrong input.
    pages, counts = read(data)
    assert pages == []
    assert counts == {"corrupt:not_a_warc_file": 1}


class _LongText(io.RawIOBase):
    """`size` bytes of text lines, made as they are read; counts the bytes read."""

    def __init__(self, size):
        self.size = size
        self.bytes_read = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        line = b"a line of some text file that is not a WET file\n"
        wanted = min(len(buffer), self.size - self.bytes_read)
        data = (line * (wanted // len(line) + 1))[:wanted]
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)


def test_a_large_file_without_a_warc_record_is_not_read_to_its_end(monkeypatch):
    # A multi-gigabyte file of another kind would otherwise be read whole and held as one record.
    monkeypatch.setattr(wet, "NOT_WARC_SCAN_BYTES", 1 << 20)
    stream = _LongText(64 << 20)
    counts = collections.Counter()
    pages = list(wet.parse_wet_stream(stream, lambda n, a=1: counts.update({n: a})))
    assert pages == []
    assert counts == {"corrupt:not_a_warc_file": 1}
    assert (1 << 20) < stream.bytes_read < (1 << 20) + 4 * wet._READ_SIZE
    # A WET file whose first version line comes within the limit is read as before.
    junk = b"x" * 1000 + b"\n"
    pages, counts = read(junk * 1000 + b"".join(valid_file()))
    assert [p.url for p in pages] == URLS


def test_files_with_warc_records_are_not_called_not_warc():
    plain = b"".join(valid_file())
    # Uncompressed WET, and junk before the first record (judged as TFDS judges it: a page).
    for data in (plain, b"junk line\n" + plain, members(*valid_file())):
        pages, counts = read(data)
        assert [p.url for p in pages] == URLS
        assert "corrupt:not_a_warc_file" not in counts
    # Another WARC version: not TFDS's delimiter, so one page as in TFDS, but a WARC file.
    pages, counts = read(plain.replace(b"WARC/1.0", b"WARC/1.1"))
    assert counts == {"passed": 1}
    # Decoding damage that left no text is counted as that damage, not as a second one.
    _, counts = read(b"\x1f\x8b\x08" + b"x" * 100)
    assert counts["corrupt:bad_gzip_member"] == 1
    assert "corrupt:not_a_warc_file" not in counts


def test_not_a_warc_file_is_counted_by_read_wet_file(tmp_path):
    (tmp_path / "text.wet.gz").write_bytes(b"just some text\n")
    (tmp_path / "good.wet.gz").write_bytes(members(*valid_file()))
    counts = collections.Counter()
    pages = [
        p
        for name in ("text.wet.gz", "good.wet.gz")
        for p in wet.read_wet_file(str(tmp_path / name), lambda n, a=1: counts.update({n: a}))
    ]
    assert [p.url for p in pages] == URLS
    assert counts == {"wet-file": 2, "corrupt:not_a_warc_file": 1, "passed": 5}
