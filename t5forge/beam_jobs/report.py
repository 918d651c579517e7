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

_STRUCTURED_KEYS = ("counters", "funnel", "splits")
_RULE_PREFIXES = ("filtered", "line-filtered")


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


def _split_rows(stats: dict) -> list[list[str]]:
    """Rows of (split, pages, MB written), one per split in the stats."""
    return [
        [name, f"{split.get('pages', 0):,}", f"{split.get('bytes', 0) / 1e6:.2f}"]
        for name, split in (stats.get("splits") or {}).items()
    ]


def _run_lines(stats: dict) -> list[str]:
    """Run time and input throughput, where the stats record them."""
    lines = []
    if stats.get("seconds") is not None:
        lines.append(f"run time: {stats['seconds']:.1f} s")
    if stats.get("input_mb_per_second") is not None:
        lines.append(f"input throughput: {stats['input_mb_per_second']:.3f} MB/s")
    return lines


def _sections(stats: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The (title, header, rows) tables shared by the text and the HTML report."""
    return [
        ("Funnel", ["step", "pages left", "removed", "% of read"], _funnel_rows(stats)),
        ("Filter rules", ["namespace", "rule", "count"], _rule_rows(stats)),
        ("Splits written", ["split", "pages", "MB"], _split_rows(stats)),
    ]


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
    """Plain-text summary of ``stats``: funnel, per-rule filter counts, splits and run speed."""
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
    for name, split in (stats.get("splits") or {}).items():
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
