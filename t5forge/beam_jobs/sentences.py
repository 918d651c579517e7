"""Sentence counters for C4's "at least 3 sentences" rule, and the matching splitters.

TFDS counts sentences with NLTK's Punkt tokenizer and its English parameters,
which it loads from a pickle that NLTK has withdrawn. We never unpickle: the
`punkt` counter uses NLTK's pickle-free `punkt_tab` English parameters when that
data is installed; else the parameters read out of the legacy `punkt` pickle, where
one is installed, by a loader that runs nothing in it (`legacy_punkt_parameters`);
else Punkt's untrained default parameters, with a warning.

A counter is any callable ``str -> int``. Counters defined here also declare two
properties that `clean_page` uses to skip calls whose answer is already known
(see `SentenceCounter`); a plain callable gets no shortcuts and is called for
every kept line, exactly as TFDS does.

`split_sentences` / `get_sentence_splitter` give the sentences themselves (for
sentence-level objectives such as PEGASUS gap sentences), by the same Punkt
setup or regex as the counters of the same name.
"""

from __future__ import annotations

import _compat_pickle
import functools
import os
import pickle
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
    """Punkt with C4's English parameters: NLTK's `punkt_tab` data, else the parameters read
    out of the legacy `punkt` pickle without running it, else (with a warning) untrained."""
    from nltk.tokenize import punkt

    try:
        return punkt.PunktTokenizer("english")
    except LookupError:
        pass
    legacy = legacy_punkt_parameters()
    if legacy is not None:
        return punkt.PunktSentenceTokenizer(legacy)
    if os.environ.get(PUNKT_WARNED_ENV):
        return punkt.PunktSentenceTokenizer()
    warnings.warn(
        "NLTK's English Punkt parameters are not installed (neither punkt_tab "
        "nor the legacy punkt pickle); counting sentences with Punkt's default "
        "(untrained) parameters, which differ from C4's on abbreviations. "
        "Install them with `python -m nltk.downloader punkt_tab` (or copy "
        "tokenizers/punkt_tab/english under a directory on NLTK_DATA) for "
        "C4-exact counts.",
        stacklevel=3,
    )
    return punkt.PunktSentenceTokenizer()


# Where NLTK's `punkt` package (the one TFDS loads) keeps the English model, under a data root.
LEGACY_PUNKT_PICKLES = ("tokenizers/punkt/PY3/english.pickle", "tokenizers/punkt/english.pickle")
_PUNKT_PARAMETER_FIELDS = ("abbrev_types", "collocations", "sent_starters", "ortho_context")


def legacy_punkt_parameters(path: str | None = None):
    """PunktParameters from NLTK's withdrawn `english.pickle`, or None if there is none.

    `path` None looks for `LEGACY_PUNKT_PICKLES` under NLTK's data roots (NLTK_DATA, ~/nltk_data,
    ...). The pickle is read by an unpickler that runs nothing it names: every class of
    `nltk.tokenize.punkt` becomes an inert record of its attributes, and any other global than
    plain containers and numbers is refused (pickle.UnpicklingError naming it). Only the four
    parameter sets are taken from it, into a fresh `PunktParameters`.
    """
    from nltk.tokenize import punkt

    if path is None:
        path = _find_legacy_punkt_pickle()
        if path is None:
            return None
    with open(path, "rb") as file:
        loaded = _InertUnpickler(file, encoding="latin1").load()
    fields = _find_punkt_parameters(loaded)
    if fields is None:
        raise ValueError(f"{path}: no Punkt parameters in this pickle")
    parameters = punkt.PunktParameters()
    parameters.abbrev_types = set(fields["abbrev_types"])
    parameters.collocations = {tuple(pair) for pair in fields["collocations"]}
    parameters.sent_starters = set(fields["sent_starters"])
    parameters.ortho_context.update(fields["ortho_context"])
    return parameters


def _find_legacy_punkt_pickle() -> str | None:
    import nltk.data

    for root in nltk.data.path:
        for relative in LEGACY_PUNKT_PICKLES:
            path = os.path.join(root, relative)
            if os.path.isfile(path):
                return path
    return None


class _InertObject:
    """Stands in for a pickled Punkt object: keeps the attributes it is given, runs no code."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict state, slots state) of a class with __slots__
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        # Anything else is a class's own token (PunktLanguageVars pickles as 1): nothing to keep.


class _InertUnpickler(pickle.Unpickler):
    """Resolves only plain data types; Punkt's classes become `_InertObject` subclasses."""

    _DATA_TYPES = {
        ("builtins", name)
        for name in ("set", "frozenset", "dict", "list", "tuple", "int", "str", "object")
    } | {("collections", "defaultdict"), ("copyreg", "_reconstructor")}

    def find_class(self, module, name):
        # Python 2 names (pickles of protocol < 3 use them: __builtin__.long for int), mapped
        # as pickle itself maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "nltk.tokenize.punkt":
            return type(name, (_InertObject,), {})
        if (module, name) in self._DATA_TYPES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a Punkt pickle")


def _find_punkt_parameters(loaded, depth: int = 0) -> dict | None:
    """The attribute dict holding Punkt's four parameter sets, searched through `loaded`."""
    attributes = getattr(loaded, "__dict__", None)
    if not isinstance(attributes, dict) or depth > 4:
        return None
    if all(field in attributes for field in _PUNKT_PARAMETER_FIELDS):
        return attributes
    for value in attributes.values():
        found = _find_punkt_parameters(value, depth + 1)
        if found is not None:
            return found
    return None


def punkt_count(text: str) -> int:
    """Number of sentences NLTK Punkt finds in `text`."""
    return len(_punkt_tokenizer().tokenize(text))


def punkt_spans(text: str) -> Iterator[tuple[int, int]]:
    """Punkt's sentence spans, produced lazily."""
    return _punkt_tokenizer().span_tokenize(text)


def punkt_has_english_parameters() -> bool:
    """Whether `punkt` runs with NLTK's trained English parameters (from either source)."""
    return bool(_punkt_tokenizer()._params.abbrev_types)  # untrained Punkt knows none


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
