"""Human-readable summaries of a corpus job's ``stats.json``.

``format_table`` gives a plain-text summary for the terminal; ``write_report`` writes a
self-contained ``report.html`` (tables plus matplotlib charts embedded as base64 PNGs) next to
the stats so a run can be inspected or shared without any other file or network access.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from typing import Any

_STRUCTURED_KEYS = ("counters", "funnel", "splits", "languages", "mixing_rates", "und_share")
_RULE_PREFIXES = ("filtered", "line-filtered")
_DAMAGE_PREFIXES = ("corrupt:", "skipped:")
# What each of the WET reader's damage counters (namespace "split-wet-file") counts. Damaged input
# is skipped, not fatal, so these rows are the only place a user learns that data was lost.
INPUT_DAMAGE = {
    "corrupt:unreadable_file": "input files that could not be opened",
    "corrupt:read_error": "input files that failed part-way through reading",
    "corrupt:not_a_warc_file": "input files that are not WARC/WET files (no WARC record)",
    "corrupt:truncated_file": "input files cut off before their end",
    "corrupt:bad_gzip_member": "corrupt gzip members skipped",
    "corrupt:lost_record": "records lost in damaged data",
    "corrupt:invalid_utf8": "records that are not valid UTF-8",
    "skipped:known_corrupt_file": "input files on TFDS's list of corrupt WET files (not read)",
}
_MAX_HISTOGRAMS = 6  # more splits than this (mC4: two per language) get no length histograms


def _funnel_rows(stats: dict) -> list[list[str]]:
    """Rows of (step, pages left, pages removed by the step, % of the pages read)."""
    funnel = stats.get("funnel") or []
    read = funnel[0]["pages"] if funnel else 0
    rows, previous = [], read
    for entry in funnel:
        pages = entry["pages"]
        share = f"{100.0 * pages / read:.1f}%" if read else "-"
        rows.append([str(entry["step"]), f"{pages:,}", f"{previous - pages:,}", share])
        previous = pages
    return rows


def _rule_rows(stats: dict) -> list[list[str]]:
    """Rows of (namespace, rule, count) for every counter that records a filtering rule."""
    return [
        [namespace, name, f"{count:,}"]
        for namespace, counters in sorted((stats.get("counters") or {}).items())
        for name, count in sorted(counters.items())
        if name.startswith(_RULE_PREFIXES)
    ]


def damage_counts(counters: dict[str, dict[str, int]]) -> dict[str, int]:
    """The non-zero damaged-input counters ("corrupt:*", "skipped:*") of all namespaces."""
    counts: dict[str, int] = {}
    for namespace_counters in counters.values():
        for name, count in namespace_counters.items():
            if name.startswith(_DAMAGE_PREFIXES) and count:
                counts[name] = counts.get(name, 0) + count
    return dict(sorted(counts.items()))


def describe_damage(counters: dict[str, dict[str, int]]) -> str:
    """One line of the damaged-input counts, e.g. "input files that could not be opened: 2"."""
    return "; ".join(
        f"{INPUT_DAMAGE.get(name, name)}: {count:,}"
        for name, count in damage_counts(counters).items()
    )


def _damage_rows(stats: dict) -> list[list[str]]:
    """Rows of (counter, what it counts, count) for every kind of damaged input met."""
    return [
        [name, INPUT_DAMAGE.get(name, ""), f"{count:,}"]
        for name, count in damage_counts(stats.get("counters") or {}).items()
    ]


def _split_rows(stats: dict) -> list[list[str]]:
    """Rows of (split, pages, MB written), one per split in the stats."""
    return [
        [name, f"{split.get('pages', 0):,}", f"{split.get('bytes', 0) / 1e6:.2f}"]
        for name, split in (stats.get("splits") or {}).items()
    ]


def _pages(entry: dict) -> int:
    """Train plus validation pages of one ``languages`` entry."""
    return entry.get("train_pages", 0) + entry.get("validation_pages", 0)


def _bytes(entry: dict) -> int:
    """Train plus validation bytes of one ``languages`` entry."""
    return entry.get("train_bytes", 0) + entry.get("validation_bytes", 0)


def _rate(stats: dict, method: str, language: str) -> str:
    """A language's mixing rate under ``method`` as a percentage, or "-" when not recorded."""
    rate = ((stats.get("mixing_rates") or {}).get(method) or {}).get("rates", {}).get(language)
    return "-" if rate is None else f"{100.0 * rate:.2f}%"


def _language_rows(stats: dict) -> list[list[str]]:
    """Rows of (language, train pages, validation pages, MB, temperature rate, UniMax rate).

    Sorted by train pages, largest first (ties by language code).
    """
    languages = stats.get("languages") or {}
    order = sorted(languages, key=lambda code: (-languages[code].get("train_pages", 0), code))
    return [
        [
            code,
            f"{languages[code].get('train_pages', 0):,}",
            f"{languages[code].get('validation_pages', 0):,}",
            f"{_bytes(languages[code]) / 1e6:.2f}",
            _rate(stats, "temperature", code),
            _rate(stats, "unimax", code),
        ]
        for code in order
    ]


def _und_share(stats: dict) -> str:
    """The share of written pages with unknown language, e.g. "3.10%"."""
    return f"{100.0 * stats['und_share']:.2f}%"


def _run_lines(stats: dict) -> list[str]:
    """und share (mC4), run time and input throughput, where the stats record them."""
    lines = []
    if stats.get("und_share") is not None:
        lines.append(f"und share: {_und_share(stats)} of written pages")
    requested = stats.get("languages_requested")
    if isinstance(requested, list) and isinstance(stats.get("languages"), dict):
        missing = [code for code in requested if code not in stats["languages"]]
        if missing:  # a language absent from the input, or a wrong (valid) code
            lines.append(f"no pages found for requested language(s): {', '.join(missing)}")
    if stats.get("seconds") is not None:
        lines.append(f"run time: {stats['seconds']:.1f} s")
    if stats.get("input_mb_per_second") is not None:
        lines.append(f"input throughput: {stats['input_mb_per_second']:.3f} MB/s")
    return lines


def _sections(stats: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The (title, header, rows) tables shared by the text and the HTML report.

    Multilingual stats (with a "languages" key) get a per-language table instead of the long
    list of "<language>/<split>" splits. The "Damaged input" table appears only when some input
    was corrupt or skipped.
    """
    if "languages" in stats:
        header = ["language", "train pages", "validation pages", "MB"]
        header += ["temperature rate", "UniMax rate"]
        written = ("Languages written", header, _language_rows(stats))
    else:
        written = ("Splits written", ["split", "pages", "MB"], _split_rows(stats))
    sections = [("Funnel", ["step", "pages left", "removed", "% of read"], _funnel_rows(stats))]
    damage = _damage_rows(stats)
    if damage:
        sections.append(("Damaged input", ["counter", "what it counts", "count"], damage))
    sections.append(("Filter rules", ["namespace", "rule", "count"], _rule_rows(stats)))
    sections.append(written)
    return sections


def _numeric_columns(header: list[str], rows: list[list[str]]) -> list[bool]:
    """Which columns hold only numbers (or "-"), so they can be right-aligned."""
    return [all(r[i][:1].isdigit() or r[i] == "-" for r in rows) for i in range(len(header))]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    """Fixed-width columns: numbers right-aligned, text left-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = _numeric_columns(header, rows)

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_table(stats: dict[str, Any]) -> str:
    """Plain-text summary of ``stats``: funnel, damaged input, rule counts, splits and run speed."""
    blocks = [f"{title}\n{_text_table(header, rows)}" for title, header, rows in _sections(stats)]
    blocks.append("\n".join(_run_lines(stats)))
    return "\n\n".join(b for b in blocks if b) + "\n"


def _png(fig: Any) -> str:
    """Render a matplotlib figure to a ``data:image/png`` URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _funnel_chart(stats: dict) -> str:
    """Horizontal bars of the pages left after each step, first step on top."""
    import matplotlib.pyplot as plt

    funnel = stats.get("funnel") or []
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(funnel) + 1.2))
    labels = [str(e["step"]) for e in funnel]
    pages = [e["pages"] for e in funnel]
    bars = ax.barh(range(len(funnel)), pages, color="tab:blue")
    ax.bar_label(bars, labels=[f"{p:,}" for p in pages], padding=3)
    ax.set_yticks(range(len(funnel)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("pages left")
    ax.set_title("Pages left after each step")
    ax.margins(x=0.15)
    return _png(fig)


def _length_chart(name: str, split: dict) -> str:
    """Document-length histogram of one split on a log character axis."""
    import matplotlib.pyplot as plt

    histogram = split.get("length_histogram") or {}
    buckets = histogram.get("bucket_index") or []
    counts = histogram.get("counts") or []
    fig, ax = plt.subplots(figsize=(8, 3))
    lows = [2 ** (k / 4) for k in buckets]
    widths = [2 ** ((k + 1) / 4) - low for k, low in zip(buckets, lows, strict=True)]
    ax.bar(lows, counts, width=widths, align="edge", color="tab:green", edgecolor="white")
    ax.set_xscale("log")
    if not buckets:
        ax.set_xlim(1, 1e6)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no documents", transform=ax.transAxes, ha="center")
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.set_title(f"Document lengths: {name}")
    return _png(fig)


def _language_chart(stats: dict) -> str:
    """Per-language bars of pages and of MB written, side by side, largest language on top.

    The height grows with the number of languages so that 100+ labels stay legible; "und"
    (unknown language) is drawn in grey. A log axis is used so small languages stay visible.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    languages = stats.get("languages") or {}
    order = sorted(languages, key=lambda code: (-_pages(languages[code]), code))
    colors = ["tab:gray" if code == "und" else "tab:blue" for code in order]
    height = 0.2 * len(order) + 1.5
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(10, height), layout="constrained")
    columns = [
        ("pages (train + validation)", [_pages(languages[c]) for c in order]),
        ("MB (train + validation)", [_bytes(languages[c]) / 1e6 for c in order]),
    ]
    for ax, (label, values) in zip(axes, columns, strict=True):
        ax.barh(range(len(order)), values, color=colors)
        if any(v > 0 for v in values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels of 2x10^k etc. overlap
        ax.set_xlabel(label)
    axes[0].set_yticks(range(len(order)), order, fontsize=8)
    axes[0].set_ylim(len(order) - 0.5, -0.5)  # first (largest) language on top
    share = f"; und: {_und_share(stats)} of pages" if stats.get("und_share") is not None else ""
    fig.suptitle(f"Pages and MB per language ({len(order)} languages{share})")
    return _png(fig)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    """An escaped HTML table; numeric columns get class "n" (right-aligned)."""
    numeric = _numeric_columns(header, rows)

    def tr(tag: str, cells: list[str]) -> str:
        opens = [f'<{tag} class="n">' if num else f"<{tag}>" for num in numeric]
        tds = (f"{o}{html.escape(c)}</{tag}>" for o, c in zip(opens, cells, strict=True))
        return "<tr>" + "".join(tds) + "</tr>"

    return f"<table>{tr('th', header)}{''.join(tr('td', row) for row in rows)}</table>"


def _setting(value: Any, limit: int = 300) -> str:
    """One setting as text, long lists (e.g. thousands of input paths) cut to ``limit`` chars."""
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= limit else text[:limit] + " …"


def _html(stats: dict) -> str:
    """The complete self-contained report page."""
    title = f"t5forge report: {stats.get('job', 'job')}"
    settings = [
        [str(k), _setting(v)] for k, v in sorted(stats.items()) if k not in _STRUCTURED_KEYS
    ]
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Settings</h2>"]
    parts.append(_html_table(["setting", "value"], settings))
    for heading, header, rows in _sections(stats):
        parts += [f"<h2>{html.escape(heading)}</h2>", _html_table(header, rows)]
    parts += [f"<p>{html.escape(line)}</p>" for line in _run_lines(stats)]
    parts += ["<h2>Charts</h2>", f'<img alt="funnel" src="{_funnel_chart(stats)}">']
    if stats.get("languages"):
        parts.append(f'<img alt="languages" src="{_language_chart(stats)}">')
    splits = stats.get("splits") or {}
    if len(splits) <= _MAX_HISTOGRAMS:
        for name, split in splits.items():
            uri = _length_chart(name, split)
            parts.append(f'<img alt="{html.escape(name)} lengths" src="{uri}">')
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}.n{text-align:right}"
        "img{display:block;margin:1em 0}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_report(directory: str) -> str:
    """Write ``directory/report.html`` from ``directory/stats.json`` and return its path.

    The file is written to a temporary name first and then renamed, so a reader never sees a
    half-written report.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; chosen lazily so importing this module is cheap
    stats_path = os.path.join(directory, "stats.json")
    if not os.path.isfile(stats_path):
        raise FileNotFoundError(f"no stats.json in {directory}")
    with open(stats_path, encoding="utf-8") as f:
        try:
            stats = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON in {stats_path}: {e}") from e
    if not isinstance(stats, dict):
        raise ValueError(f"{stats_path} does not hold a JSON object")
    page = _html(stats)
    target = os.path.join(directory, "report.html")
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes the file private; a report is not
            f.write(page)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return target
