"""Tests for t5forge.beam_jobs.report: the text summary and the self-contained HTML report."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from t5forge.beam_jobs.report import format_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _histogram(buckets: dict[int, int]) -> dict:
    return {
        "bucket_index": list(buckets),
        "bucket_edges_chars": [round(2 ** (k / 4)) for k in buckets],
        "counts": list(buckets.values()),
    }


STATS = {
    "counters": {
        "clean-page": {
            "filtered:squigglybracket": 33,
            "line-filtered:javascript": 11,
            "line-filtered:no_endmark": 68092,
            "line-passed": 15184,
            "passed": 276,
        },
        "dedupe-lines": {"filtered:too_few_sentences": 27, "passed": 249},
        "too-long-filter": {"filtered": 1, "passed": 309},
        "odd<ns>": {"filtered:a&b<c>": 5},
        "write": {"train:bytes": 2028192, "train:pages": 249},
    },
    "funnel": [
        {"step": "WET records read", "pages": 310},
        {"step": "length <= 190,000 chars", "pages": 309},
        {"step": "clean_page rules", "pages": 276},
        {"step": "line dedup", "pages": 249},
    ],
    "splits": {
        "train": {
            "pages": 249,
            "bytes": 2028192,
            "length_histogram": _histogram({25: 1, 40: 100, 50: 120, 66: 28}),
        },
        "validation": {"pages": 0, "bytes": 0, "length_histogram": _histogram({})},
    },
    "job": "build-c4",
    "runner": "DirectRunner",
    "workers": 2,
    "seconds": 8.04,
    "input_bytes": 1898649,
    "input_mb_per_second": 0.236,
    "finished": "2026-11-22T15:40:18+00:00",
    "some_future_key": {"nested": [1, 2]},
}


def _language(train_pages: int, validation_pages: int, train_bytes: int) -> dict:
    return {
        "train_pages": train_pages,
        "validation_pages": validation_pages,
        "train_bytes": train_bytes,
        "validation_bytes": 10_000 * validation_pages,
    }


MC4_STATS = {
    "job": "build-mc4",
    "funnel": [{"step": "WET records read", "pages": 1000}, {"step": "written", "pages": 900}],
    "counters": {"clean-page": {"filtered:too_few_lines": 100}},
    "splits": {
        f"{code}/{split}": {"pages": 1, "bytes": 1, "length_histogram": _histogram({40: 1})}
        for code in ("de", "en", "sw", "und")
        for split in ("train", "validation")
    },
    "languages": {
        "de": _language(120, 1, 2_345_678),
        "en": _language(700, 7, 9_000_000),
        "sw": _language(30, 0, 250_000),
        "und": _language(28, 0, 100_000),
    },
    "und_share": 0.031,
    "mixing_rates": {
        "temperature": {
            "temperature": 3.3333,
            "basis": "train pages",
            "rates": {"en": 0.5, "de": 0.3, "sw": 0.2},
        },
        "unimax": {
            "budget_bytes": 123456789,
            "max_epochs": 1,
            "basis": "train bytes",
            "rates": {"en": 0.45678, "de": 0.44322, "sw": 0.1},
        },
    },
}


def _write_stats(directory, stats) -> str:
    (directory / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    return str(directory)


def _report(directory, stats) -> str:
    """Write ``stats`` to ``directory``, render the report and return the HTML page."""
    return Path(write_report(_write_stats(directory, stats))).read_text(encoding="utf-8")


def _row(text: str, first_cell: str) -> list[str]:
    """The whitespace-separated cells after ``first_cell`` on the line starting with it."""
    line = next(ln for ln in text.splitlines() if ln.startswith(first_cell + "  "))
    return line[len(first_cell) :].split()


def _line_index(text: str, first_cell: str) -> int:
    """Index of the table line starting with ``first_cell``."""
    lines = text.splitlines()
    return next(i for i, ln in enumerate(lines) if ln.startswith(first_cell + "  "))


def test_format_table_funnel_numbers_and_removed_counts():
    text = format_table(STATS)
    assert _row(text, "WET records read") == ["310", "0", "100.0%"]
    assert _row(text, "length <= 190,000 chars") == ["309", "1", "99.7%"]
    assert _row(text, "clean_page rules") == ["276", "33", "89.0%"]
    assert _row(text, "line dedup") == ["249", "27", "80.3%"]


def test_format_table_rules_splits_and_speed():
    text = format_table(STATS)
    assert _row(text, "clean-page") == ["filtered:squigglybracket", "33"]
    assert "line-filtered:no_endmark" in text and "68,092" in text
    assert "too-long-filter" in text
    # Counters that are not filtering rules are left out.
    assert "line-passed" not in text and "train:bytes" not in text
    assert _row(text, "train") == ["249", "2.03"]
    assert _row(text, "validation") == ["0", "0.00"]
    assert "8.0 s" in text and "0.236 MB/s" in text


def test_format_table_tolerates_missing_optional_keys():
    text = format_table({"funnel": [], "counters": {}, "splits": {}})
    assert "Funnel" in text and "MB/s" not in text
    assert "step" in format_table({})


def test_write_report_embeds_decodable_pngs_and_escapes(tmp_path):
    path = write_report(_write_stats(tmp_path, STATS))
    assert path == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # funnel + one histogram per split
    for data in images:
        assert base64.b64decode(data, validate=True).startswith(PNG_SIGNATURE)

    assert "line-filtered:no_endmark" in page and "68,092" in page
    assert "filtered:a&amp;b&lt;c&gt;" in page and "odd&lt;ns&gt;" in page
    assert "<c>" not in page and "length &lt;= 190,000 chars" in page
    assert "DirectRunner" in page and "build-c4" in page
    assert "http" not in page.lower()
    assert "<script" not in page.lower()


def test_write_report_empty_split_and_unknown_keys(tmp_path):
    stats = copy.deepcopy(STATS)
    stats["splits"]["de/train"] = {"pages": 0, "bytes": 0, "length_histogram": {}}
    stats["splits"]["empty"] = {}
    del stats["input_mb_per_second"]
    page = open(write_report(_write_stats(tmp_path, stats)), encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 5
    assert "de/train" in page and "MB/s" not in page


def test_write_report_missing_stats_names_directory(tmp_path):
    missing = tmp_path / "no-such-job"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="no-such-job"):
        write_report(str(missing))


def test_write_report_invalid_json_names_file(tmp_path):
    (tmp_path / "stats.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="stats.json"):
        write_report(str(tmp_path))


def test_write_report_leaves_no_temp_file_and_overwrites(tmp_path):
    directory = _write_stats(tmp_path, STATS)
    write_report(directory)
    write_report(directory)
    assert sorted(os.listdir(directory)) == ["report.html", "stats.json"]


def test_import_does_not_load_matplotlib():
    code = "import sys, t5forge.beam_jobs.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _png_height(data: bytes) -> int:
    """Pixel height from a PNG's IHDR chunk."""
    return int.from_bytes(data[20:24], "big")


def _language_png(page: str) -> bytes:
    """The decoded language figure of a report page (checked to be a PNG)."""
    match = re.search(r'alt="languages" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no language figure"
    data = base64.b64decode(match.group(1), validate=True)
    assert data.startswith(PNG_SIGNATURE)
    return data


def test_format_table_language_rows_sorted_with_rates():
    text = format_table(MC4_STATS)
    assert "Languages written" in text and "Splits written" not in text
    assert "de/train" not in text
    assert _row(text, "en") == ["700", "7", "9.07", "50.00%", "45.68%"]
    assert _row(text, "de") == ["120", "1", "2.36", "30.00%", "44.32%"]
    assert _row(text, "sw") == ["30", "0", "0.25", "20.00%", "10.00%"]
    assert _row(text, "und") == ["28", "0", "0.10", "-", "-"]
    order = [_line_index(text, code) for code in ("en", "de", "sw", "und")]
    assert order == sorted(order)  # by train pages, largest first
    assert "und share: 3.10% of written pages" in text


def test_language_rates_dash_without_mixing_rates_and_zero_pages(tmp_path):
    stats = copy.deepcopy(MC4_STATS)
    del stats["mixing_rates"]
    stats["und_share"] = 0.0
    stats["languages"]["xx"] = _language(0, 0, 0)
    text = format_table(stats)
    assert _row(text, "de") == ["120", "1", "2.36", "-", "-"]
    assert _row(text, "xx") == ["0", "0", "0.00", "-", "-"]
    assert _line_index(text, "und") < _line_index(text, "xx")
    assert "und share: 0.00% of written pages" in text
    page = _report(tmp_path, stats)
    _language_png(page)
    assert "xx" in page


def test_requested_languages_without_pages_are_named(tmp_path):
    """build-mc4 --languages de,sw on input without Swahili: the summary says so."""
    stats = copy.deepcopy(MC4_STATS)
    stats["languages_requested"] = ["de", "sw", "zu"]
    del stats["languages"]["sw"]
    line = "no pages found for requested language(s): sw, zu"
    assert line in format_table(stats)
    assert line in _report(tmp_path, stats)
    stats["languages_requested"] = "all"
    assert "no pages found" not in format_table(stats)


def test_write_report_language_figure_table_and_und_share(tmp_path):
    page = _report(tmp_path, MC4_STATS)
    _language_png(page)
    # Eight "<language>/<split>" splits: too many for per-split length histograms.
    assert page.count("data:image/png;base64,") == 2  # funnel + languages
    assert "de/train" not in page and "Splits written" not in page
    assert "Languages written" in page and "44.32%" in page and "9.07" in page
    assert "und share: 3.10% of written pages" in page
    # The structured keys get their own table, not a JSON dump in the settings.
    assert "budget_bytes" not in page


def test_language_figure_grows_with_language_count(tmp_path):
    many = copy.deepcopy(MC4_STATS)
    many["languages"] = {f"l{i:03d}": _language(10 * i, 1, 1000 * i) for i in range(107)}
    many["languages"]["und"] = _language(5, 0, 100)
    heights = []
    for name, stats in (("few", MC4_STATS), ("many", many)):
        (tmp_path / name).mkdir()
        heights.append(_png_height(_language_png(_report(tmp_path / name, stats))))
    few_height, many_height = heights
    assert many_height > 15 * 108  # at least ~15 pixels per language label
    assert few_height < many_height / 5


def test_c4_stats_keep_split_sections(tmp_path):
    text = format_table(STATS)
    assert "Splits written" in text and "Languages written" not in text
    assert "und share" not in text
    page = _report(tmp_path, STATS)
    assert "Splits written" in page and 'alt="languages"' not in page
    assert 'alt="train lengths"' in page and 'alt="validation lengths"' in page


DAMAGED_STATS = copy.deepcopy(STATS)
DAMAGED_STATS["counters"]["split-wet-file"] = {
    "wet-file": 5,
    "passed": 310,
    "filtered:no_url": 2,
    "corrupt:unreadable_file": 2,
    "corrupt:bad_gzip_member": 3,
    "corrupt:truncated_file": 1,
    "corrupt:invalid_utf8": 4,
    "corrupt:lost_record": 7,
    "corrupt:read_error": 1,
    "skipped:known_corrupt_file": 1,
}


def test_damaged_input_is_listed_in_the_printed_summary():
    text = format_table(DAMAGED_STATS)
    assert "Damaged input" in text
    assert _row(text, "corrupt:unreadable_file")[-1] == "2"
    assert " ".join(_row(text, "corrupt:unreadable_file")[:-1]) == (
        "input files that could not be opened"
    )
    for name, count in [
        ("corrupt:bad_gzip_member", "3"),
        ("corrupt:truncated_file", "1"),
        ("corrupt:invalid_utf8", "4"),
        ("corrupt:lost_record", "7"),
        ("corrupt:read_error", "1"),
        ("skipped:known_corrupt_file", "1"),
    ]:
        assert _row(text, name)[-1] == count
    # Between the funnel and the rules, so it is seen before the long rule table.
    assert _line_index(text, "WET records read") < _line_index(text, "corrupt:lost_record")
    assert _line_index(text, "corrupt:lost_record") < _line_index(text, "clean-page")
    assert "Damaged input" not in format_table(STATS)  # the section only when something was


def test_damaged_input_is_listed_in_the_html_report(tmp_path):
    page = _report(tmp_path, DAMAGED_STATS)
    assert "<h2>Damaged input</h2>" in page
    row = "<td>corrupt:unreadable_file</td><td>input files that could not be opened</td>"
    assert row + '<td class="n">2</td>' in page
    assert "<td>skipped:known_corrupt_file</td>" in page
