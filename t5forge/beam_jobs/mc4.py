"""The mC4 (multilingual) corpus job: TFDS's multilingual C4 graph.

Graph, in TFDS 3.1's order: read WET files -> length filter -> newest page per
normalized URL -> paragraph filter (>= 3 lines of >= 200 characters) -> line
dedup with no sentence minimum -> cld3 language id ("und" when unreliable or
below the threshold; codes outside the kept list dropped) -> per-language bad
words, soft-filtered at 0.999 by URL hash -> train/validation by URL hash ->
one sharded write to `<language>/<split>/` for every language at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import apache_beam as beam

from t5forge import mixing
from t5forge.beam_jobs import c4, cleaning
from t5forge.beam_jobs.badwords import BadwordsFilter
from t5forge.beam_jobs.c4 import (
    DEFAULT_SHARD_BYTES,
    SPLITS,
    ReadWetFn,
    badwords_ok,
    input_paths,
    length_ok,
    split_of,
)
from t5forge.beam_jobs.cld3 import MC4_LANGUAGES, MIN_PROBABILITY, UNKNOWN_LANGUAGE
from t5forge.beam_jobs.counters import Counters
from t5forge.beam_jobs.dedup import DeduplicateLines, DeduplicateUrls
from t5forge.beam_jobs.wet import Page
from t5forge.beam_jobs.writers import WriteShards, shard_file_name

MULTILINGUAL_BADWORDS_FRACTION = 0.999


@dataclasses.dataclass
class MC4Config:
    """Settings of the mC4 graph besides its inputs and output.

    Attributes:
      languages: cld3 codes to keep (pages in other languages are dropped;
        "und" pages are always kept).
      min_probability: cld3 probability below which a page becomes "und".
      badwords: language -> words; None turns the bad-words step off.
      badwords_filter_fraction: share of matched pages dropped (0.999 for mC4).
    """

    languages: tuple[str, ...] = tuple(MC4_LANGUAGES)
    min_probability: float = MIN_PROBABILITY
    badwords: Mapping[str, list[str]] | None = None
    badwords_filter_fraction: float = MULTILINGUAL_BADWORDS_FRACTION
    max_page_length: int = cleaning.MAX_PAGE_LENGTH
    output_format: str = "tfrecord"
    shard_bytes: int = DEFAULT_SHARD_BYTES

    def __post_init__(self):
        unknown = sorted(set(self.languages) - set(MC4_LANGUAGES))
        if unknown:
            raise ValueError(
                f"--languages: {', '.join(unknown)} not among the 107 mC4 cld3 codes "
                f"({' '.join(MC4_LANGUAGES)})"
            )
        if not 0.0 <= self.min_probability <= 1.0:
            raise ValueError(f"--min-probability {self.min_probability} is not in [0, 1]")


class LanguageSplitNaming:
    """mC4's layout: `<language>/<split>/c4-<language>-<split>...` files."""

    def __init__(self, fmt: str):
        self.fmt = fmt

    def path(self, destination: str, shard: int, num_shards: int) -> str:
        language, split = destination.split("/")
        name = shard_file_name(f"c4-{language}", split, self.fmt, shard, num_shards)
        return f"{language}/{split}/{name}"

    def required(self, present: Iterable[str]) -> list[str]:
        """Both splits of every language that has pages."""
        languages = sorted({d.split("/")[0] for d in present})
        return [f"{lang}/{split}" for lang in languages for split in SPLITS]


def _paragraph_ok(page: Page, counters: Counters) -> bool:
    ok = cleaning.paragraph_filter(page.text)
    counters("passed" if ok else "filtered")
    return ok


class IdentifyLanguageFn(beam.DoFn):
    """cld3 language id, counting outcomes with TFDS's names."""

    def __init__(self, languages: Iterable[str], min_probability: float):
        self._languages = sorted(languages)
        self._min_probability = min_probability
        self._counters = Counters("language-filter")

    def setup(self):
        from t5forge.beam_jobs.cld3 import LanguageIdentifier

        self._identifier = LanguageIdentifier(self._languages, self._min_probability)

    def process(self, page: Page):
        language, outcome = self._identifier.identify(page.text)
        if outcome != "passed":
            self._counters(outcome)
        if language is None:
            return
        self._counters("passed")
        self._counters(f"passed:{language}")
        yield dataclasses.replace(page, language=language)


def mc4_pages(
    pipeline,
    paths: list[str],
    config: MC4Config,
    download_dir: str | None = None,
    staging_dir: str | None = None,
    progress_dir: str | None = None,
):
    """Builds the graph up to the final, language-labelled pages."""
    pages = (
        input_paths(pipeline, paths, staging_dir)
        | "ReadWet" >> beam.ParDo(ReadWetFn(download_dir, progress_dir))
        | "LengthFilter"
        >> beam.Filter(length_ok, config.max_page_length, Counters("too-long-filter"))
        | "UrlDedup" >> DeduplicateUrls()
        | "ParagraphFilter" >> beam.Filter(_paragraph_ok, Counters("paragraph-filter"))
        | "LineDedup" >> DeduplicateLines(None)
        | "Language" >> beam.ParDo(IdentifyLanguageFn(config.languages, config.min_probability))
    )
    if config.badwords is not None:
        pages |= "Badwords" >> beam.Filter(
            badwords_ok,
            BadwordsFilter(config.badwords, config.badwords_filter_fraction),
            Counters("badwords-filter"),
        )
    return pages


def build_mc4(
    pipeline,
    paths: list[str],
    config: MC4Config,
    output_dir: str,
    download_dir: str | None = None,
    progress_dir: str | None = None,
):
    """Adds the whole mC4 job to `pipeline`, writing `<language>/<split>/` shards."""
    pages = mc4_pages(pipeline, paths, config, download_dir, output_dir, progress_dir)
    return (
        pages
        | "Destination" >> beam.Map(lambda p: (f"{p.language}/{split_of(p.normalized_url)}", p))
        | "Write"
        >> WriteShards(
            output_dir,
            LanguageSplitNaming(config.output_format),
            config.output_format,
            config.shard_bytes,
            with_language=True,
        )
    )


def is_output_file(relative_path: str) -> bool:
    """Files an mC4 job owns in its output directory (replaced by --overwrite).

    Also a build-c4 corpus's top-level `c4-*` shards (`c4.is_output_file`): --overwrite
    replaces a corpus of either kind.
    """
    first = relative_path.split("/")[0]
    return c4.is_output_file(relative_path) or (
        "/" in relative_path and (first in MC4_LANGUAGES or first == UNKNOWN_LANGUAGE)
    )


FUNNEL = (
    ("WET records read", "split-wet-file", ("passed",)),
    ("length <= 190,000 chars", "too-long-filter", ("passed",)),
    ("newest page per URL", "duplicate-url-filter", ("passed",)),
    ("paragraph filter (3 x 200 chars)", "paragraph-filter", ("passed",)),
    ("line dedup", "dedupe-lines", ("passed",)),
    ("cld3 language (incl. und)", "language-filter", ("passed",)),
    ("bad words", "badwords-filter", ("passed", "soft-passed")),
)


def funnel(counters: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """Pages left after each step that ran."""
    return [
        {"step": label, "pages": sum(counters[ns].get(n, 0) for n in names)}
        for label, ns, names in FUNNEL
        if ns in counters
    ]


def check_mixing_settings(
    temperature: float, unimax_budget_bytes: float | None, unimax_max_epochs: float
) -> None:
    """Raises ValueError naming the flag when a mixing-rate setting is impossible.

    The rates are computed from the counters after the pipeline has run, so the command
    checks them first: a typo must not cost a whole run.
    """
    import math

    settings = [("--temperature", temperature), ("--unimax-max-epochs", unimax_max_epochs)]
    if unimax_budget_bytes is not None:
        settings.append(("--unimax-budget-bytes", unimax_budget_bytes))
    for flag, value in settings:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} {value}: must be a positive number")


def language_summary(
    counters: Mapping[str, Mapping[str, int]],
    temperature: float = mixing.MT5_TEMPERATURE,
    unimax_budget_bytes: float | None = None,
    unimax_max_epochs: float = 1.0,
) -> dict:
    """Per-language pages and bytes, the und share, and mixing rates for stats.json.

    Temperature rates use train pages (mT5 sampled examples); UniMax uses train
    bytes (umT5 budgets characters) with a budget that defaults to all train bytes.
    """
    write = counters.get("write", {})
    languages: dict[str, dict[str, int]] = {}
    for name, value in write.items():
        destination, _, metric = name.rpartition(":")
        if metric not in ("pages", "bytes") or "/" not in destination:
            continue
        language, split = destination.split("/")
        entry = languages.setdefault(
            language,
            {"train_pages": 0, "validation_pages": 0, "train_bytes": 0, "validation_bytes": 0},
        )
        entry[f"{split}_{metric}"] = value
    total_pages = sum(e["train_pages"] + e["validation_pages"] for e in languages.values())
    und = languages.get(UNKNOWN_LANGUAGE, {})
    und_pages = und.get("train_pages", 0) + und.get("validation_pages", 0)
    summary: dict = {
        "languages": dict(sorted(languages.items())),
        "und_share": und_pages / total_pages if total_pages else 0.0,
    }
    pages = {k: v["train_pages"] for k, v in languages.items() if k != UNKNOWN_LANGUAGE}
    sizes = {k: v["train_bytes"] for k, v in languages.items() if k != UNKNOWN_LANGUAGE}
    if any(pages.values()):
        budget = unimax_budget_bytes or sum(sizes.values())
        summary["mixing_rates"] = {
            "temperature": {
                "temperature": temperature,
                "basis": "train pages",
                "rates": mixing.temperature_rates(pages, temperature),
            },
            "unimax": {
                "budget_bytes": budget,
                "max_epochs": unimax_max_epochs,
                "basis": "train bytes",
                "rates": mixing.unimax_rates(sizes, budget, unimax_max_epochs),
            },
        }
    return summary
