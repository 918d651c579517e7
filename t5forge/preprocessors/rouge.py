"""ROUGE-1 F1 for choosing gap sentences (PEGASUS), vectorised over a document.

Tokenization is the one `rouge-score` and PEGASUS's `rouge.cc` share: the text
is lowercased and every maximal run of ``[a-z0-9]`` is a token; everything
else (punctuation, and letters outside ASCII) separates tokens and is dropped.
Options on top of that:

* stemming (off by default, as in `rouge-score`): NLTK's Porter stemmer on
  tokens longer than 3 characters, exactly as `rouge-score`'s
  ``use_stemmer=True``; PEGASUS never stems;
* stopwords: removed from both sides before counting, as PEGASUS does when
  given a stopword file (pegasus_large is configured with an English one that
  is not published). `ENGLISH_STOPWORDS` is t5forge's list: NLTK's English
  stopwords reduced to the entries that can be ROUGE tokens (``don't`` is
  already the two tokens ``don`` and ``t``, both listed). `rouge-score` has
  no stopword option; removing the stopwords from both texts first gives its
  scores.

Scores come in PEGASUS's two flavours: "orig" counts every occurrence of a
word (clipped overlap, as `rouge-score`) and "uniq" counts each distinct word
once. F1 is computed exactly as 2 * overlap / (|candidate| + |reference|),
algebraically PEGASUS's (and `rouge-score`'s) 2PR / (P + R), and 0 when
nothing overlaps. In float64 two equal ratios give equal floats, so ties are
real ties (PEGASUS computes in float32 and may order near-equal scores
differently).

A document is scored through its sentence-by-word count matrix
(`unigram_counts`): the reference for a sentence is the document's counts
minus its own, so a whole document costs a few numpy operations instead of
one pass over the text per sentence.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")

# NLTK's English stopword list, minus entries with an apostrophe (those can
# never be ROUGE tokens; their pieces, such as "don" and "t", are listed).
ENGLISH_STOPWORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    this that these those am is are was were be been being have has had having do does did
    doing a an the and but if or because as until while of at by for with about against
    between into through during before after above below to from up down in out on off over
    under again further then once here there when where why how all any both each few more
    most other some such no nor not only own same so than too very s t can will just don
    should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn
    mustn needn shan shouldn wasn weren won wouldn
    """.split()
)

STOPWORD_LISTS = {"english": ENGLISH_STOPWORDS}


def get_stopwords(stopwords: str | Iterable[str] | None) -> frozenset[str]:
    """The stopword set for a spec: None (none), "english", or an iterable of words.

    Words given explicitly are lowercased; a word that cannot be a ROUGE
    token (it holds a character outside [a-z0-9]) raises ValueError, since it
    could never be removed.
    """
    if stopwords is None:
        return frozenset()
    if isinstance(stopwords, str):
        try:
            return STOPWORD_LISTS[stopwords]
        except KeyError:
            raise ValueError(
                f"stopwords={stopwords!r}: choose None, one of {sorted(STOPWORD_LISTS)}, "
                "or give the words"
            ) from None
    words = frozenset(word.lower() for word in stopwords)
    bad = sorted(word for word in words if not _TOKEN.fullmatch(word))
    if bad:
        raise ValueError(f"stopwords {bad[:5]} are not ROUGE tokens (only [a-z0-9]+ can be)")
    return words


@functools.lru_cache(maxsize=1)
def _porter_stem() -> Callable[[str], str]:
    from nltk.stem import porter

    # rouge-score's stemmer (NLTK's default mode); words repeat a lot.
    return functools.lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem)


def rouge_tokens(
    text: str, stopwords: frozenset[str] = frozenset(), use_stemmer: bool = False
) -> list[str]:
    """ROUGE tokens of `text`: lowercased [a-z0-9]+ runs, minus stopwords, optionally stemmed.

    Stopwords are matched before stemming (the lists hold unstemmed words).
    """
    tokens = _TOKEN.findall(text.lower())
    if stopwords:
        tokens = [token for token in tokens if token not in stopwords]
    if use_stemmer:
        stem = _porter_stem()
        tokens = [stem(token) if len(token) > 3 else token for token in tokens]
    return tokens


def unigram_counts(sentences: Sequence[Sequence[str]]) -> np.ndarray:
    """The [num sentences, num distinct words] int32 matrix of word counts.

    Columns are the distinct words of all sentences, in order of first
    appearance.
    """
    word_ids: dict[str, int] = {}
    flat = [word_ids.setdefault(token, len(word_ids)) for tokens in sentences for token in tokens]
    rows = np.repeat(np.arange(len(sentences)), [len(tokens) for tokens in sentences])
    width = max(len(word_ids), 1)
    counts = np.bincount(
        rows * width + np.asarray(flat, dtype=np.int64), minlength=len(sentences) * width
    )
    return counts.reshape(len(sentences), width).astype(np.int32)


def f1_from_counts(
    candidate: np.ndarray, reference: np.ndarray, unique: bool = False
) -> np.ndarray:
    """ROUGE-1 F1 of candidate vs reference word counts, over the last axis.

    Args:
      candidate: [..., V] word counts of the candidate text(s).
      reference: [..., V] word counts of the reference text(s), broadcastable.
      unique: count each distinct word once (PEGASUS "uniq"), else every
        occurrence with clipped overlap ("orig").

    Returns:
      float64 F1 scores of shape [...]; 0 where nothing overlaps.
    """
    if unique:
        candidate, reference = candidate > 0, reference > 0
        overlap = np.count_nonzero(candidate & reference, axis=-1)
        size = np.count_nonzero(candidate, axis=-1) + np.count_nonzero(reference, axis=-1)
    else:
        overlap = np.minimum(candidate, reference).sum(axis=-1)
        size = candidate.sum(axis=-1) + reference.sum(axis=-1)
    return np.where(overlap > 0, 2.0 * overlap / np.maximum(size, 1), 0.0)


def independent_scores(counts: np.ndarray, unique: bool = False) -> np.ndarray:
    """PEGASUS "Ind" scores: each sentence's F1 against the rest of the document.

    Args:
      counts: [N, V] word counts of the N sentences (`unigram_counts`).
      unique: "uniq" instead of "orig" counting.

    Returns:
      float64 [N] scores.
    """
    rest = counts.sum(axis=0, keepdims=True) - counts
    return f1_from_counts(counts, rest, unique)


def sequential_selection(counts: np.ndarray, num: int, unique: bool = False) -> list[int]:
    """PEGASUS "Seq": greedily picks `num` sentences, returned in the order picked.

    Each round adds the sentence that maximises F1(selected + it, rest of the
    document - it); ties go to the later sentence, as in PEGASUS.

    Args:
      counts: [N, V] word counts of the N sentences.
      num: sentences to pick (at most N).
      unique: "uniq" instead of "orig" counting.

    Returns:
      sentence indices, best first.
    """
    num_sentences = counts.shape[0]
    selected_counts = np.zeros(counts.shape[1], dtype=counts.dtype)
    remaining_counts = counts.sum(axis=0)
    available = np.ones(num_sentences, dtype=bool)
    order: list[int] = []
    for _ in range(min(num, num_sentences)):
        scores = f1_from_counts(selected_counts + counts, remaining_counts - counts, unique)
        scores = np.where(available, scores, -1.0)
        best = num_sentences - 1 - int(np.argmax(scores[::-1]))  # last maximum
        order.append(best)
        available[best] = False
        selected_counts = selected_counts + counts[best]
        remaining_counts = remaining_counts - counts[best]
    return order


def rouge1_f1(
    reference: str,
    candidate: str,
    stopwords: frozenset[str] = frozenset(),
    use_stemmer: bool = False,
    unique: bool = False,
) -> float:
    """ROUGE-1 F1 of two texts (`rouge-score`'s rouge1 fmeasure with the defaults)."""
    counts = unigram_counts(
        [
            rouge_tokens(candidate, stopwords, use_stemmer),
            rouge_tokens(reference, stopwords, use_stemmer),
        ]
    )
    return float(f1_from_counts(counts[0], counts[1], unique))
