"""The C4 (English) corpus job: TFDS's C4 graph, offline and corruption-tolerant.

Graph, in TFDS 3.1's order: read WET files -> length filter -> [realnewslike
domain filter] -> newest page per normalized URL -> [clean pages] -> [line
dedup, >= 3 sentences] -> langdetect English >= 0.99 -> [bad words] -> split by
md5(normalized url) % 1000 -> deterministic shards. Bracketed steps depend on
the variant (`VARIANTS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from t5forge.beam_jobs import cleaning, sentences
from t5forge.beam_jobs.badwords import BadwordsFilter
from t5forge.beam_jobs.counters import Counters
from t5forge.beam_jobs.dedup import DeduplicateLines, DeduplicateUrls
from t5forge.beam_jobs.langid import MIN_ENGLISH_PROBABILITY, detect_english
from t5forge.beam_jobs.wet import Page, read_wet_file
from t5forge.beam_jobs.writers import SplitNaming, WriteShards

SPLITS = ("train", "validation")
DEFAULT_SHARD_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class Variant:
    """Which optional C4 steps run (TFDS builder config flags)."""

    clean: bool
    dedupe: bool
    badwords: bool
    realnewslike: bool = False


VARIANTS = {
    "en": Variant(clean=True, dedupe=True, badwords=True),
    "en.noclean": Variant(clean=False, dedupe=False, badwords=False),
    "en.noblocklist": Variant(clean=True, dedupe=True, badwords=False),
    "realnewslike": Variant(clean=True, dedupe=True, badwords=True, realnewslike=True),
}


@dataclasses.dataclass
class C4Config:
    """Everything the C4 graph needs besides its inputs and output.

    Attributes:
      variant: a key of `VARIANTS`.
      sentence_splitter: a name from `sentences.SENTENCE_SPLITTERS`.
      badwords: language -> words; None turns the bad-words step off.
      badwords_filter_fraction: share of matched pages dropped (1.0 for C4).
      realnews_domains: domain -> allowed subdomains (a list) or anything else
        for "all subdomains" (Grover's file); required for realnewslike.
      output_format: "tfrecord" or "jsonl".
      shard_bytes: target shard size; the shard count per split follows from it.
    """

    variant: str = "en"
    sentence_splitter: str = "punkt"
    badwords: Mapping[str, list[str]] | None = None
    badwords_filter_fraction: float = 1.0
    realnews_domains: Mapping[str, Any] | None = None
    min_english_probability: float = MIN_ENGLISH_PROBABILITY
    max_page_length: int = cleaning.MAX_PAGE_LENGTH
    output_format: str = "tfrecord"
    shard_bytes: int = DEFAULT_SHARD_BYTES

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}"
            )
        if VARIANTS[self.variant].realnewslike and not self.realnews_domains:
            raise ValueError("the realnewslike variant needs a realnews domain list")


class ReadWetFn(beam.DoFn):
    """WET file path -> pages; damaged records are counted, never fatal."""

    def __init__(self, download_dir: str | None = None, progress_dir: str | None = None):
        self._download_dir = download_dir
        self._progress_dir = progress_dir
        self._counters = Counters("split-wet-file")

    def process(self, path: str):
        yield from read_wet_file(path, self._counters, self._download_dir)
        if self._progress_dir:
            marker = hashlib.md5(path.encode("utf-8")).hexdigest()
            with open(os.path.join(self._progress_dir, marker), "w"):
                pass


class CleanPageFn(beam.DoFn):
    """C4's line and page rules, counting each reason as TFDS does."""

    def __init__(self, sentence_splitter: str):
        # A SentenceCounter pickles by name and loads its tokenizer on first use.
        self._count_sentences = sentences.get_sentence_counter(sentence_splitter)
        self._counters = Counters("clean-page")

    def process(self, page: Page):
        text, counts = cleaning.clean_page_with_reasons(
            page.text, count_sentences=self._count_sentences
        )
        for name, n in counts.items():
            self._counters(name, n)
        if text is not None:
            yield dataclasses.replace(page, text=text)


class EnoughSentences:
    """Predicate for line dedup: the new page text has >= 3 sentences (whole-text count)."""

    def __init__(self, sentence_splitter: str, min_num_sentences: int = cleaning.MIN_NUM_SENTENCES):
        self.counter = sentences.get_sentence_counter(sentence_splitter)
        self.min_num_sentences = min_num_sentences

    def __call__(self, text: str) -> bool:
        return self.counter.count_up_to(text, self.min_num_sentences) >= self.min_num_sentences


def _detect_english(page: Page, min_probability: float, counters: Counters):
    outcome = detect_english(page.text, min_probability)
    counters(outcome)
    if outcome == "passed":
        yield dataclasses.replace(page, language="en")


def length_ok(page: Page, max_length: int, counters: Counters) -> bool:
    ok = cleaning.is_valid_length(page.text, max_length)
    counters("passed" if ok else "filtered")
    return ok


def is_realnews_domain(page: Page, domains: Mapping[str, Any], counters: Counters) -> bool:
    """TFDS's realnewslike rule: registered domain listed, subdomain allowed if restricted."""
    ext = _tld_extractor()(page.normalized_url)
    main_domain = ext.domain + "." + ext.suffix
    if main_domain not in domains:
        counters("filtered:bad_domain")
        return False
    allowed = domains[main_domain]
    if isinstance(allowed, list) and ext.subdomain not in allowed:
        counters("filtered:bad_subdomain")
        return False
    counters("passed")
    return True


_EXTRACTOR = None


def _tld_extractor():
    # The public-suffix snapshot bundled with tldextract: no network, same
    # answer on every worker.
    global _EXTRACTOR
    if _EXTRACTOR is None:
        import tldextract

        _EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    return _EXTRACTOR


def badwords_ok(page: Page, badwords_filter: BadwordsFilter, counters: Counters) -> bool:
    outcome = badwords_filter.check(page.text, page.language or "en", page.normalized_url)
    counters(outcome)
    return outcome != "filtered"


def split_of(normalized_url: str) -> str:
    """C4's split: validation iff md5(normalized url) % 1000 == 0."""
    value = int(hashlib.md5(normalized_url.encode("utf-8")).hexdigest(), 16)
    return "validation" if value % 1000 == 0 else "train"


def is_output_file(relative_path: str) -> bool:
    """Files a C4 job owns in its output directory (replaced by --overwrite).

    Its own `c4-*` shards, stats.json and report.html, and also a build-mc4 corpus's
    `<language>/<split>/c4-<language>-<split>*` shards: --overwrite replaces a corpus of
    either kind, so no old shard is left for train-spm or tokenize to read with the new ones.
    """
    parts = relative_path.split("/")
    if len(parts) == 1:
        return relative_path.startswith("c4-") or relative_path in ("stats.json", "report.html")
    return (
        len(parts) == 3 and parts[1] in SPLITS and parts[2].startswith(f"c4-{parts[0]}-{parts[1]}")
    )


# Longer path lists are read from a staged file rather than embedded in the job
# graph (a Common Crawl dump lists ~60k WET files; Dataflow caps a job graph at 10 MB).
MAX_EMBEDDED_PATHS = 1000


def input_paths(pipeline, paths: list[str], staging_dir: str | None = None):
    """A PCollection of WET paths, spread over workers."""
    if len(paths) > MAX_EMBEDDED_PATHS and staging_dir:
        from apache_beam.io.filesystems import FileSystems

        listing = FileSystems.join(staging_dir, ".input-paths.txt")
        with FileSystems.create(listing) as f:
            f.write("".join(p + "\n" for p in paths).encode("utf-8"))
        source = pipeline | "InputPaths" >> beam.io.ReadFromText(listing)
    else:
        source = pipeline | "InputPaths" >> beam.Create(paths)
    return source | "SpreadFiles" >> beam.Reshuffle()


def c4_pages(
    pipeline,
    paths: list[str],
    config: C4Config,
    download_dir: str | None = None,
    staging_dir: str | None = None,
    progress_dir: str | None = None,
):
    """Builds the graph up to the final pages (before splitting); returns that PCollection."""
    variant = VARIANTS[config.variant]
    pages = (
        input_paths(pipeline, paths, staging_dir)
        | "ReadWet" >> beam.ParDo(ReadWetFn(download_dir, progress_dir))
        | "LengthFilter"
        >> beam.Filter(length_ok, config.max_page_length, Counters("too-long-filter"))
    )
    if variant.realnewslike:
        pages |= "RealnewsDomains" >> beam.Filter(
            is_realnews_domain, dict(config.realnews_domains), Counters("realnews-domain-filter")
        )
    pages |= "UrlDedup" >> DeduplicateUrls()
    if variant.clean:
        pages |= "CleanPages" >> beam.ParDo(CleanPageFn(config.sentence_splitter))
    if variant.dedupe:
        enough = EnoughSentences(config.sentence_splitter) if variant.clean else None
        pages |= "LineDedup" >> DeduplicateLines(enough)
    pages |= "English" >> beam.FlatMap(
        _detect_english, config.min_english_probability, Counters("english-filter")
    )
    if variant.badwords and config.badwords is not None:
        pages |= "Badwords" >> beam.Filter(
            badwords_ok,
            BadwordsFilter(config.badwords, config.badwords_filter_fraction),
            Counters("badwords-filter"),
        )
    return pages


def build_c4(
    pipeline,
    paths: list[str],
    config: C4Config,
    output_dir: str,
    download_dir: str | None = None,
    progress_dir: str | None = None,
):
    """Adds the whole C4 job to `pipeline`, writing shards into `output_dir`."""
    pages = c4_pages(
        pipeline, paths, config, download_dir, staging_dir=output_dir, progress_dir=progress_dir
    )
    return (
        pages
        | "SplitByUrlHash" >> beam.Map(lambda p: (split_of(p.normalized_url), p))
        | "Write"
        >> WriteShards(
            output_dir,
            SplitNaming("c4", config.output_format, SPLITS),
            config.output_format,
            config.shard_bytes,
        )
    )


class UnreadableInputError(ValueError):
    """Every input was damaged: not a single page could be read."""


def require_pages_read(counters: Mapping[str, Mapping[str, int]], inputs: list[str]) -> None:
    """Raises UnreadableInputError when damaged input left the job without a single page.

    One corrupt file in a large job is counted and skipped; but when nothing at all could be
    read because the inputs are damaged (unopenable paths, a directory, truncated gzip), the
    user's input is wrong and an empty corpus would only hide that. Inputs that are intact
    but hold no pages are not an error.
    """
    from t5forge.beam_jobs.report import describe_damage

    read = counters.get("split-wet-file", {})
    damage = describe_damage({"split-wet-file": dict(read)})
    if read.get("passed", 0) or not damage:
        return
    named = ", ".join(inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    raise UnreadableInputError(
        f"no page could be read from the {len(inputs)} input file(s) {named}: {damage}; "
        "nothing written"
    )


# Funnel steps for the report: (label, namespace, counter names that pass).
FUNNEL = (
    ("WET records read", "split-wet-file", ("passed",)),
    ("length <= 190,000 chars", "too-long-filter", ("passed",)),
    ("realnewslike domain", "realnews-domain-filter", ("passed",)),
    ("newest page per URL", "duplicate-url-filter", ("passed",)),
    ("clean_page rules", "clean-page", ("passed",)),
    ("line dedup", "dedupe-lines", ("passed",)),
    ("langdetect English >= 0.99", "english-filter", ("passed",)),
    ("bad words", "badwords-filter", ("passed", "soft-passed")),
)


def funnel(counters: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """Pages left after each step that ran, from the job's counters."""
    rows = []
    for label, namespace, names in FUNNEL:
        if namespace in counters:
            rows.append({"step": label, "pages": sum(counters[namespace].get(n, 0) for n in names)})
    return rows
