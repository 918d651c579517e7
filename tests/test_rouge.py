"""t5forge.preprocessors.rouge against the rouge-score package on real sentences.

Documents are pages of the shared WET files after C4's cleaning rules (the text
a C4 corpus holds); sentences come from the corpus jobs' Punkt splitter.
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np
import pytest
from conftest import DEBIAN_WET, PYTHON_DOCS_WET
from rouge_score import rouge_scorer, tokenize, tokenizers

from t5forge.beam_jobs import cleaning, sentences, wet
from t5forge.preprocessors import rouge

pytestmark = pytest.mark.skipif(
    not (os.path.exists(PYTHON_DOCS_WET) and os.path.exists(DEBIAN_WET)),
    reason="needs ../shared/data/wet",
)


@functools.cache
def _documents(path: str, count: int) -> tuple[tuple[str, ...], ...]:
    """The sentences of the first `count` pages of a WET file that C4 keeps."""
    documents = []
    for page in wet.read_wet_file(path):
        text = cleaning.clean_page(page.text)
        if text:
            documents.append(tuple(sentences.split_sentences(text)))
        if len(documents) == count:
            break
    return tuple(documents)


def _all_documents(sentences_per_document: int | None = None) -> list[tuple[str, ...]]:
    """English and 9-language pages, optionally cut to their first sentences."""
    documents = list(_documents(PYTHON_DOCS_WET, 40)) + list(_documents(DEBIAN_WET, 40))
    return [document[:sentences_per_document] for document in documents]


class _StopwordTokenizer(tokenizers.Tokenizer):
    """rouge-score's own tokenizer with stopwords dropped afterwards."""

    def __init__(self, stopwords):
        self.stopwords = stopwords

    def tokenize(self, text):
        return [t for t in tokenize.tokenize(text, None) if t not in self.stopwords]


def test_tokens_are_rouge_scores_tokens():
    from nltk.stem import porter

    stemmer = porter.PorterStemmer()
    checked = 0
    for document in _all_documents():
        for sentence in document:
            assert rouge.rouge_tokens(sentence) == tokenize.tokenize(sentence, None)
            assert rouge.rouge_tokens(sentence, use_stemmer=True) == tokenize.tokenize(
                sentence, stemmer
            )
            checked += 1
    assert checked > 2000
    # Letters outside ASCII are separators, as in rouge-score and PEGASUS.
    assert rouge.rouge_tokens("Größe 2 Ünïcode ok") == ["gr", "e", "2", "n", "code", "ok"]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_f1_equals_rouge_score_sentence_vs_rest_of_document(use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=use_stemmer)
    pairs = 0
    for document in _all_documents(40)[:: 2 if use_stemmer else 1]:
        for i, sentence in enumerate(document[:12]):
            rest = " ".join(document[:i] + document[i + 1 :])
            expected = scorer.score(rest, sentence)["rouge1"].fmeasure
            got = rouge.rouge1_f1(rest, sentence, use_stemmer=use_stemmer)
            assert got == pytest.approx(expected, abs=1e-12), (sentence, expected, got)
            pairs += 1
    assert pairs > 400


def test_stopwords_are_removed_from_both_sides():
    scorer = rouge_scorer.RougeScorer(
        ["rouge1"], tokenizer=_StopwordTokenizer(rouge.ENGLISH_STOPWORDS)
    )
    plain = rouge_scorer.RougeScorer(["rouge1"])
    differ = 0
    for document in _documents(PYTHON_DOCS_WET, 30):
        for a, b in itertools.pairwise(document[:10]):
            expected = scorer.score(a, b)["rouge1"].fmeasure
            got = rouge.rouge1_f1(a, b, stopwords=rouge.get_stopwords("english"))
            assert got == pytest.approx(expected, abs=1e-12)
            differ += got != pytest.approx(plain.score(a, b)["rouge1"].fmeasure)
    assert differ > 50  # stopwords do change English scores


def test_document_scores_match_rouge_score_orig_and_uniq():
    """independent_scores = rouge-score per sentence vs the rest ("uniq": on word sets)."""
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    for document in _all_documents(40)[::2]:
        tokens = [rouge.rouge_tokens(s) for s in document]
        counts = rouge.unigram_counts(tokens)
        orig = rouge.independent_scores(counts)
        uniq = rouge.independent_scores(counts, unique=True)
        for i, sentence in enumerate(document):
            rest = " ".join(document[:i] + document[i + 1 :])
            assert orig[i] == pytest.approx(scorer.score(rest, sentence)["rouge1"].fmeasure)
            rest_set = " ".join(sorted(set(itertools.chain(*tokens[:i], *tokens[i + 1 :]))))
            own_set = " ".join(sorted(set(tokens[i])))
            assert uniq[i] == pytest.approx(scorer.score(rest_set, own_set)["rouge1"].fmeasure)


def test_sequential_selection_is_rouge_score_greedy():
    """Each pick maximises rouge-score's F1(picked + s, rest - s); ties to the later s."""
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    for document in _documents(PYTHON_DOCS_WET, 12):
        document = document[:25]
        num = max(1, len(document) // 3)
        counts = rouge.unigram_counts([rouge.rouge_tokens(s) for s in document])
        got = rouge.sequential_selection(counts, num)
        picked: list[int] = []
        for _ in range(num):
            best, best_score = -1, -1.0
            for k in range(len(document)):
                if k in picked:
                    continue
                candidate = " ".join(document[j] for j in sorted([*picked, k]))
                rest = " ".join(
                    document[j] for j in range(len(document)) if j not in picked and j != k
                )
                score = scorer.score(rest, candidate)["rouge1"].fmeasure
                if score >= best_score - 1e-12:
                    best, best_score = k, score
            picked.append(best)
        assert got == picked


def test_unigram_counts_layout():
    counts = rouge.unigram_counts([["a", "b", "a"], [], ["b", "c"]])
    assert counts.tolist() == [[2, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert rouge.unigram_counts([]).shape == (0, 1)
    assert rouge.independent_scores(counts)[1] == 0.0
    assert rouge.rouge1_f1("", "anything") == 0.0


def test_stopword_specs():
    assert rouge.get_stopwords(None) == frozenset()
    assert "the" in rouge.get_stopwords("english")
    assert rouge.get_stopwords(["The", "of"]) == {"the", "of"}
    with pytest.raises(ValueError, match="klingon"):
        rouge.get_stopwords("klingon")
    with pytest.raises(ValueError, match="don't"):
        rouge.get_stopwords(["don't"])
    # Every listed stopword can be a ROUGE token.
    assert all(rouge.rouge_tokens(word) == [word] for word in rouge.ENGLISH_STOPWORDS)
    assert np.all([w.isascii() for w in rouge.ENGLISH_STOPWORDS])
