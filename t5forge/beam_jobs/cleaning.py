"""C4's page-cleaning rules, exactly as TFDS's `c4_utils` applies them.

`clean_page` is a pure function of the page text. The rules, per line of
`text.splitlines()`, in TFDS's order (the order decides which counter a line
lands in and whether a page dies):

1. strip; drop the line if any whitespace-separated word is longer than
   `max_word_length` (checked before citation removal);
2. remove citation markers (`[1]`, `[]`, `[edit]`, `[citation needed]`);
3. drop the line unless it ends in `.`, `?`, `!` or `"` (and not `...`);
4. drop it if it has fewer than `min_words_per_line` words;
5. drop the page if the lower-cased line contains "lorem ipsum";
6. drop the line if it contains "javascript";
7. drop the page if the line contains "{";
8. drop the line if it contains a cookie/terms/privacy policy phrase;
9. keep the line and count its sentences.

A page with fewer than `min_num_sentences` sentences in its kept lines is
dropped; otherwise its kept lines are joined with "\\n".

Sentence counting dominates TFDS's running time, and mostly it is not needed:
with a counter that counts every non-empty line as at least one sentence (all
counters in `sentences.py`), a page that keeps `min_num_sentences` lines passes
without counting, and a line with no sentence-end character before its end is
one sentence. These shortcuts give the same answer as counting.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable

from t5forge.beam_jobs import sentences

MIN_WORDS_PER_LINE = 5
MIN_NUM_SENTENCES = 3
MAX_WORD_LENGTH = 1000
MAX_PAGE_LENGTH = 190_000
END_MARKS = (".", "?", "!", '"')
ELLIPSIS = "..."
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
CITATION_REGEX = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")

CountSentences = Callable[[str], int]

_default_counter: CountSentences | None = None


def set_default_sentence_counter(counter: CountSentences | str) -> None:
    """Sets the counter `clean_page` uses when none is passed (a name or a callable)."""
    global _default_counter
    if isinstance(counter, str):
        counter = sentences.get_sentence_counter(counter)
    _default_counter = counter


def default_sentence_counter() -> CountSentences:
    """The configured default counter (Punkt unless changed)."""
    global _default_counter
    if _default_counter is None:
        _default_counter = sentences.get_sentence_counter("punkt")
    return _default_counter


class CleanResult(collections.namedtuple("CleanResult", ["text", "counts"])):
    """`text` is the cleaned page or None; `counts` maps TFDS counter names to counts."""


def clean_page(
    text: str,
    *,
    count_sentences: CountSentences | None = None,
    min_words_per_line: int = MIN_WORDS_PER_LINE,
    min_num_sentences: int = MIN_NUM_SENTENCES,
    max_word_length: int = MAX_WORD_LENGTH,
) -> str | None:
    """Returns the C4-cleaned page text, or None if C4 drops the page.

    Args:
      text: the page text (WET body).
      count_sentences: maps a line to its number of sentences; None means the
        configured default (`set_default_sentence_counter`, Punkt at first).
      min_words_per_line: lines with fewer whitespace-separated words are dropped.
      min_num_sentences: pages whose kept lines have fewer sentences are dropped.
      max_word_length: lines with a longer word are dropped.
    """
    return _clean(
        text, count_sentences, min_words_per_line, min_num_sentences, max_word_length, None
    )


def clean_page_with_reasons(
    text: str,
    *,
    count_sentences: CountSentences | None = None,
    min_words_per_line: int = MIN_WORDS_PER_LINE,
    min_num_sentences: int = MIN_NUM_SENTENCES,
    max_word_length: int = MAX_WORD_LENGTH,
) -> CleanResult:
    """`clean_page` that also reports why each line or the page was dropped.

    The counts use TFDS's counter names: "line-filtered:too_long_word",
    "line-filtered:no_endmark", "line-filtered:too_short",
    "line-filtered:javascript", "line-filtered:policy", "line-passed", and for the
    page one of "filtered:loremipsum", "filtered:squigglybracket",
    "filtered:too_few_sentences" or "passed".
    """
    counts: collections.Counter[str] = collections.Counter()
    cleaned = _clean(
        text, count_sentences, min_words_per_line, min_num_sentences, max_word_length, counts
    )
    return CleanResult(cleaned, counts)


def _clean(
    text: str,
    count_sentences: CountSentences | None,
    min_words_per_line: int,
    min_num_sentences: int,
    max_word_length: int,
    counts: collections.Counter[str] | None,
) -> str | None:
    kept = []
    for line in text.splitlines():
        line = line.strip()
        # A word longer than the limit needs a line longer than the limit.
        if len(line) > max_word_length and any(
            len(word) > max_word_length for word in line.split()
        ):
            if counts is not None:
                counts["line-filtered:too_long_word"] += 1
            continue
        if "[" in line:
            line = CITATION_REGEX.sub("", line)
        if not line.endswith(END_MARKS) or line.endswith(ELLIPSIS):
            if counts is not None:
                counts["line-filtered:no_endmark"] += 1
            continue
        if len(line.split()) < min_words_per_line:
            if counts is not None:
                counts["line-filtered:too_short"] += 1
            continue
        line_lower = line.lower()
        if "lorem ipsum" in line_lower:
            if counts is not None:
                counts["line-passed"] += len(kept)  # TFDS counted these as it went
                counts["filtered:loremipsum"] += 1
            return None
        if "javascript" in line_lower:
            if counts is not None:
                counts["line-filtered:javascript"] += 1
            continue
        if "{" in line:
            if counts is not None:
                counts["line-passed"] += len(kept)  # TFDS counted these as it went
                counts["filtered:squigglybracket"] += 1
            return None
        if any(p in line_lower for p in POLICY_SUBSTRINGS):
            if counts is not None:
                counts["line-filtered:policy"] += 1
            continue
        kept.append(line)
    if counts is not None:
        counts["line-passed"] += len(kept)
    if count_sentences is None:
        count_sentences = default_sentence_counter()
    if not has_min_sentences(kept, count_sentences, min_num_sentences):
        if counts is not None:
            counts["filtered:too_few_sentences"] += 1
        return None
    if counts is not None:
        counts["passed"] += 1
    return "\n".join(kept).strip()


def has_min_sentences(
    lines: list[str], count_sentences: CountSentences, min_num_sentences: int
) -> bool:
    """Whether the lines hold at least `min_num_sentences` sentences in total.

    Each line is counted on its own, as TFDS does in `clean_page`.
    """
    if min_num_sentences <= 0:
        return True
    if not isinstance(count_sentences, sentences.SentenceCounter):
        return sum(count_sentences(line) for line in lines) >= min_num_sentences
    # Every kept line is non-empty, so each holds at least one sentence.
    if len(lines) >= min_num_sentences:
        return True
    total = 0
    for line in lines:
        if count_sentences.is_single_sentence(line):
            total += 1
        else:
            total += count_sentences.count_up_to(line, min_num_sentences - total)
        if total >= min_num_sentences:
            return True
    return False


def is_valid_length(text: str, max_length: int = MAX_PAGE_LENGTH) -> bool:
    """False for pages longer than C4's 190,000-character limit."""
    return len(text) <= max_length


def paragraph_filter(text: str, min_paragraphs: int = 3, min_paragraph_len: int = 200) -> bool:
    """mC4's rule: True iff the page has `min_paragraphs` lines of `min_paragraph_len` chars."""
    lines = text.split("\n")
    if len(lines) < min_paragraphs:
        return False
    long_lines = sum(1 for line in lines if len(line) >= min_paragraph_len)
    return long_lines >= min_paragraphs
