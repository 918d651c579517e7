"""Sentence counters for C4's "at least 3 sentences" rule, and the matching splitters.

TFDS counts sentences with NLTK's Punkt tokenizer and its English parameters,
which it loads from a pickle that NLTK has withdrawn. We never unpickle: the
`punkt` counter uses NLTK's pickle-free `punkt_tab` English parameters when that
data is installed, and Punkt's untrained default parameters (with a warning)
when it is not.

A counter is any callable ``str -> int``. Counters defined here also declare two
properties that `clean_page` uses to skip calls whose answer is already known
(see `SentenceCounter`); a plain callable gets no shortcuts and is called for
every kept line, exactly as TFDS does.

`split_sentences` / `get_sentence_splitter` give the sentences themselves (for
sentence-level objectives such as PEGASUS gap sentences), by the same Punkt
setup or regex as the counters of the same name.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator

SENTENCE_SPLITTERS = ("punkt", "regex")
# Set once the missing-parameters warning has been shown, so the worker
# processes a job starts afterwards do not repeat it.
PUNKT_WARNED_ENV = "T5FORGE_PUNKT_WARNED"

# Punkt proposes a break only right after one of these characters, and only
# when something follows it (a look-ahead in its period-context regex).
_PUNKT_END_CHARS = ".?!"


class SentenceCounter:
    """A sentence counter with facts that make some calls unnecessary.

    Attributes:
      name: the `--sentence-splitter` name.
      at_least_one: a non-empty, stripped text always counts as >= 1 sentence.
      break_chars: a text with none of these characters before its last
        character counts as exactly 1 sentence.
    """

    def __init__(
        self,
        name: str,
        count: Callable[[str], int],
        break_chars: str,
        spans: Callable[[str], Iterator] | None = None,
    ):
        self.name = name
        self._count = count
        self._spans = spans
        self.at_least_one = True
        self.break_chars = break_chars

    def __call__(self, text: str) -> int:
        return self._count(text)

    def count_up_to(self, text: str, limit: int) -> int:
        """min(count(text), limit), reading only as much text as that needs.

        Sentences come out of the splitter one by one and never change once
        produced, so the first `limit` of them settle the question.
        """
        if self._spans is None:
            return min(self._count(text), limit)
        n = 0
        for _ in self._spans(text):
            n += 1
            if n >= limit:
                break
        return n

    def is_single_sentence(self, line: str) -> bool:
        """True when `line` (stripped, non-empty) provably has one sentence."""
        body = line[:-1]
        return not any(c in body for c in self.break_chars)

    def __reduce__(self):
        # Beam pickles DoFns holding a counter; rebuild it by name on the worker
        # instead of shipping a tokenizer object.
        return (get_sentence_counter, (self.name,))

    def __repr__(self) -> str:
        return f"SentenceCounter({self.name!r})"


_punkt_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _punkt_tokenizer():
    with _punkt_lock:
        tokenizer = _new_punkt_tokenizer()
    # Punkt decides each candidate break from its local context string alone,
    # so remembering recent decisions changes nothing but the time.
    tokenizer.text_contains_sentbreak = functools.lru_cache(maxsize=1 << 16)(
        tokenizer.text_contains_sentbreak
    )
    return tokenizer


def _new_punkt_tokenizer():
    from nltk.tokenize import punkt

    try:
        return punkt.PunktTokenizer("english")
    except LookupError:
        if os.environ.get(PUNKT_WARNED_ENV):
            return punkt.PunktSentenceTokenizer()
        warnings.warn(
            "NLTK's punkt_tab English parameters are not installed; counting "
            "sentences with Punkt's default (untrained) parameters, which "
            "differ from C4's on abbreviations. Install them with "
            "`python -m nltk.downloader punkt_tab` for C4-exact counts.",
            stacklevel=3,
        )
        return punkt.PunktSentenceTokenizer()


def punkt_count(text: str) -> int:
    """Number of sentences NLTK Punkt finds in `text`."""
    return len(_punkt_tokenizer().tokenize(text))


def punkt_spans(text: str) -> Iterator[tuple[int, int]]:
    """Punkt's sentence spans, produced lazily."""
    return _punkt_tokenizer().span_tokenize(text)


def punkt_has_english_parameters() -> bool:
    """Whether `punkt` runs with NLTK's trained English parameters."""
    from nltk.tokenize import punkt

    return type(_punkt_tokenizer()) is not punkt.PunktSentenceTokenizer


# A break: end punctuation, optional closing quotes/brackets, then whitespace
# and another token. Unlike Punkt there is no abbreviation list.
_REGEX_BREAK = re.compile(r"[.!?]+[\"')\]]*\s+(?=\S)")


def regex_count(text: str) -> int:
    """Sentence count by end punctuation: a fast, dependency-free heuristic."""
    text = text.strip()
    if not text:
        return 0
    return 1 + len(_REGEX_BREAK.findall(text))


def regex_spans(text: str) -> Iterator[None]:
    """One item per sentence `regex_count` counts, produced lazily."""
    if not text.strip():
        return
    yield None
    for _ in _REGEX_BREAK.finditer(text.strip()):
        yield None


def punkt_sentences(text: str) -> Iterator[str]:
    """Punkt's sentences of `text`, in order and produced lazily.

    Each is the text of one `punkt_spans` span, so whitespace between
    sentences is left out and `punkt_count(text)` is how many there are.
    """
    for start, end in punkt_spans(text):
        yield text[start:end]


def regex_sentences(text: str) -> Iterator[str]:
    """The sentences `regex_count` counts, in order and produced lazily.

    `text` is stripped, then cut after each break of `regex_count` (end
    punctuation and closing quotes/brackets stay with their sentence; the
    whitespace after them is dropped).
    """
    text = text.strip()
    if not text:
        return
    start = 0
    for match in _REGEX_BREAK.finditer(text):
        yield text[start : match.end()].rstrip()
        start = match.end()
    yield text[start:]


_SENTENCE_ITERATORS: dict[str, Callable[[str], Iterator[str]]] = {
    "punkt": punkt_sentences,
    "regex": regex_sentences,
}


def get_sentence_splitter(name: str) -> Callable[[str], Iterator[str]]:
    """The named splitter (one of `SENTENCE_SPLITTERS`): text -> lazy sentences.

    A splitter yields exactly the sentences the counter of the same name
    counts, so corpus filtering and sentence-level objectives agree.
    """
    try:
        return _SENTENCE_ITERATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown sentence splitter {name!r}; choose one of {', '.join(SENTENCE_SPLITTERS)}"
        ) from None


def split_sentences(text: str, splitter: str = "punkt") -> list[str]:
    """All sentences of `text` by the named splitter ("punkt" or "regex")."""
    return list(get_sentence_splitter(splitter)(text))


def get_sentence_counter(name: str) -> SentenceCounter:
    """Returns the named sentence counter (one of `SENTENCE_SPLITTERS`)."""
    if name == "punkt":
        return SentenceCounter("punkt", punkt_count, _PUNKT_END_CHARS, punkt_spans)
    if name == "regex":
        return SentenceCounter("regex", regex_count, _PUNKT_END_CHARS, regex_spans)
    raise ValueError(
        f"unknown sentence splitter {name!r}; choose one of {', '.join(SENTENCE_SPLITTERS)}"
    )
