"""C4's two deduplication steps, built on combiners so no key gets hot.

* URL dedup: pages with the same normalized URL collapse to the one with the
  newest WARC-Date (TFDS 3.1's `select_newest_page`).
* Line dedup: every line (md5 of its stripped, lower-cased text) survives only
  in the page whose md5(url) is smallest, and only at its first occurrence in
  that page (TFDS's `remove_duplicate_text`). The winner per line comes from a
  `min` combiner, never from grouping all pages of a line.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam

from t5forge.beam_jobs.counters import Counters
from t5forge.beam_jobs.wet import Page


def md5_digest(text: str) -> bytes:
    """md5 of the UTF-8 text. Digests order as TFDS's hex digests do."""
    return hashlib.md5(text.encode("utf-8")).digest()


def newer_page(a: Page, b: Page) -> Page:
    """The page URL dedup keeps: the newest timestamp.

    TFDS keeps whichever of two equally new pages it happened to see first; we
    break the tie by the larger md5 of the text (then of the raw URL) so every
    runner picks the same page.
    """
    if a.timestamp != b.timestamp:
        return a if a.timestamp > b.timestamp else b
    key_a = (md5_digest(a.text), a.url)
    key_b = (md5_digest(b.text), b.url)
    return a if key_a >= key_b else b


class NewestPageFn(beam.CombineFn):
    """Combines the pages of one normalized URL into (newest page, number seen)."""

    def create_accumulator(self):
        return (None, 0)

    def add_input(self, acc, page):
        best, n = acc
        return (page if best is None else newer_page(best, page), n + 1)

    def merge_accumulators(self, accs):
        best, total = None, 0
        for page, n in accs:
            total += n
            if page is not None:
                best = page if best is None else newer_page(best, page)
        return (best, total)

    def extract_output(self, acc):
        return acc


def _count_url_duplicates(kv, counters: Counters) -> Page:
    _, (page, seen) = kv
    counters("filtered", seen - 1)
    counters("passed")
    return page


@beam.ptransform_fn
def DeduplicateUrls(pages):  # noqa: N802 - Beam transform naming
    """Keeps the newest page for each normalized URL."""
    counters = Counters("duplicate-url-filter")
    return (
        pages
        | "KeyByNormalizedUrl" >> beam.Map(lambda p: (p.normalized_url, p))
        | "SelectNewest" >> beam.CombinePerKey(NewestPageFn())
        | "CountUrlDuplicates" >> beam.Map(_count_url_duplicates, counters=counters)
    )


def line_key(line: str) -> bytes:
    """The identity of a line for dedup: md5 of its stripped, lower-cased text."""
    return hashlib.md5(line.strip().lower().encode("utf-8")).digest()


def _emit_line_owners(page: Page) -> Iterator[tuple[bytes, bytes]]:
    url_hash = md5_digest(page.url)
    # One claim per distinct line: repeats in a page make the same claim.
    for key in {line_key(line) for line in page.text.split("\n")}:
        yield key, url_hash


def remove_lines(
    page: Page,
    lines_to_keep: set[bytes],
    has_enough_sentences: Callable[[str], bool] | None,
    counters: Callable[..., None],
) -> Page | None:
    """Keeps the page's lines it won, first occurrences only; None if too little is left."""
    new_lines = []
    seen: set[bytes] = set()
    global_duplicates = local_duplicates = 0
    for line in page.text.split("\n"):
        key = line_key(line)
        if key not in lines_to_keep:
            global_duplicates += 1
        elif key in seen:
            local_duplicates += 1
        else:
            new_lines.append(line)
            seen.add(key)
    # Counted once per page: a Beam counter update per line is costly.
    if global_duplicates:
        counters("line-filtered:global_duplicate", global_duplicates)
    if local_duplicates:
        counters("line-filtered:local_duplicate", local_duplicates)
    if new_lines:
        counters("line-passed", len(new_lines))
    new_text = "\n".join(new_lines)
    if not new_text:
        counters("filtered:empty")
        return None
    if has_enough_sentences is not None and not has_enough_sentences(new_text):
        counters("filtered:too_few_sentences")
        return None
    counters("passed")
    return dataclasses.replace(page, text=new_text)


def _join_page_and_lines(kv, has_enough_sentences, counters: Counters) -> Iterable[Page]:
    url_hash, joined = kv
    pages = list(joined["pages"])
    if len(pages) != 1:
        raise ValueError(f"line dedup expected one page per URL, got {len(pages)}")
    page = remove_lines(pages[0], set(joined["lines"]), has_enough_sentences, counters)
    if page is not None:
        yield page


@beam.ptransform_fn
def DeduplicateLines(pages, has_enough_sentences=None):  # noqa: N802
    """Removes lines seen in another page (or earlier in the same page).

    Args:
      pages: a PCollection of pages with unique URLs.
      has_enough_sentences: optional predicate on the new page text; pages
        failing it are dropped (C4 re-checks >= 3 sentences; mC4 does not).
    """
    counters = Counters("dedupe-lines")
    lines_to_keep = (
        pages
        | "EmitLineClaims" >> beam.FlatMap(_emit_line_owners)
        | "PickLineOwner" >> beam.CombinePerKey(min)
        | "ByOwnerUrl" >> beam.Map(lambda kv: (kv[1], kv[0]))
    )
    keyed_pages = pages | "KeyByUrlHash" >> beam.Map(lambda p: (md5_digest(p.url), p))
    return (
        {"pages": keyed_pages, "lines": lines_to_keep}
        | "JoinPagesAndLines" >> beam.CoGroupByKey()
        | "RemoveDuplicateLines"
        >> beam.FlatMap(
            _join_page_and_lines, has_enough_sentences=has_enough_sentences, counters=counters
        )
    )
