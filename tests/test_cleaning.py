"""C4's clean_page rules on hand-made pages, one rule at a time."""

import pytest

from t5forge.beam_jobs import cleaning, sentences
from t5forge.beam_jobs.cleaning import clean_page, clean_page_with_reasons

GOOD = "This is a perfectly normal line of text."
GOOD2 = "Here is another sentence that ends well!"
GOOD3 = "Does this third line also end properly?"


def one_per_line(line):
    return 1


def page(*lines):
    return "\n".join(lines)


def test_keeps_good_lines_and_joins_them():
    assert clean_page(page(GOOD, GOOD2, GOOD3), count_sentences=one_per_line) == page(
        GOOD, GOOD2, GOOD3
    )


def test_too_few_sentences_drops_page():
    result = clean_page_with_reasons(page(GOOD, GOOD2), count_sentences=one_per_line)
    assert result.text is None
    assert result.counts["filtered:too_few_sentences"] == 1
    # Two lines with two sentences each are enough.
    assert clean_page(page(GOOD, GOOD2), count_sentences=lambda line: 2) == page(GOOD, GOOD2)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("No end mark on this line at all", "line-filtered:no_endmark"),
        ("It trails off like this one does...", "line-filtered:no_endmark"),
        ("Curly quote ending is not accepted here\u201d", "line-filtered:no_endmark"),
        ("Too short.", "line-filtered:too_short"),
        ("Please enable JavaScript to view this page.", "line-filtered:javascript"),
        ("By using this site you agree to our Terms of Use.", "line-filtered:policy"),
        ("This website USES COOKIES to improve the experience.", "line-filtered:policy"),
        ("Read our privacy policy before you continue here.", "line-filtered:policy"),
        ("a" * 1001 + " is a very long word in this line.", "line-filtered:too_long_word"),
    ],
)
def test_line_rules(line, reason):
    result = clean_page_with_reasons(page(GOOD, line, GOOD2, GOOD3), count_sentences=one_per_line)
    assert result.text == page(GOOD, GOOD2, GOOD3)
    assert result.counts[reason] == 1


def test_word_of_exactly_max_length_is_kept():
    line = "a" * 1000 + " is a long but allowed word."
    assert clean_page(page(GOOD, line, GOOD2), count_sentences=one_per_line) == page(
        GOOD, line, GOOD2
    )


def test_end_marks_include_ascii_double_quote():
    line = 'He said it was "the best thing ever"'
    assert clean_page(page(GOOD, line, GOOD2), count_sentences=one_per_line) == page(
        GOOD, line, GOOD2
    )


def test_citations_removed_before_end_mark_check():
    line = "Python was created by Guido van Rossum.[1]"
    cleaned = clean_page(page(GOOD, line, GOOD2), count_sentences=one_per_line)
    assert cleaned == page(GOOD, "Python was created by Guido van Rossum.", GOOD2)
    line = "An empty bracket pair is removed too.[] And [edit] this[citation needed] as well."
    cleaned = clean_page(page(GOOD, line, GOOD2), count_sentences=one_per_line)
    assert cleaned.splitlines()[1] == "An empty bracket pair is removed too. And  this as well."


def test_too_long_word_checked_before_citation_removal():
    # The word is only over the limit with its citation marker attached.
    line = "x" * 998 + "[12] makes this line too long."
    result = clean_page_with_reasons(page(GOOD, line, GOOD2, GOOD3), count_sentences=one_per_line)
    assert result.counts["line-filtered:too_long_word"] == 1


def test_lorem_ipsum_on_a_kept_line_drops_page():
    line = "Lorem ipsum dolor sit amet, consectetur."
    result = clean_page_with_reasons(page(GOOD, line, GOOD2, GOOD3), count_sentences=one_per_line)
    assert result.text is None
    assert result.counts["filtered:loremipsum"] == 1


def test_lorem_ipsum_on_a_short_line_is_harmless():
    assert clean_page(page(GOOD, "Lorem ipsum.", GOOD2, GOOD3), count_sentences=one_per_line) == (
        page(GOOD, GOOD2, GOOD3)
    )


def test_brace_on_a_kept_line_drops_page():
    line = "The function body { return x; } is code here."
    result = clean_page_with_reasons(page(GOOD, line, GOOD2, GOOD3), count_sentences=one_per_line)
    assert result.text is None
    assert result.counts["filtered:squigglybracket"] == 1


def test_brace_on_a_dropped_line_is_harmless():
    # Short line, and a line without an end mark: dropped before the brace rule.
    text = page(GOOD, "if x {y}.", "for (;;) { loop forever }", GOOD2, GOOD3)
    assert clean_page(text, count_sentences=one_per_line) == page(GOOD, GOOD2, GOOD3)


def test_javascript_line_with_brace_is_a_line_drop_not_a_page_drop():
    line = "Enable javascript to see { the content } here."
    assert clean_page(page(GOOD, line, GOOD2, GOOD3), count_sentences=one_per_line) == page(
        GOOD, GOOD2, GOOD3
    )


@pytest.mark.parametrize("sep", ["\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_unicode_line_breaks_split_lines(sep):
    text = sep.join([GOOD, "no end mark here", GOOD2, GOOD3])
    assert clean_page(text, count_sentences=one_per_line) == page(GOOD, GOOD2, GOOD3)


def test_lines_are_stripped():
    text = page("   " + GOOD + "\t", "\u00a0" + GOOD2, GOOD3 + "  ")
    assert clean_page(text, count_sentences=one_per_line) == page(GOOD, GOOD2, GOOD3)


def test_custom_thresholds():
    text = page("Short one.", "Two words.", "Three small words.")
    assert clean_page(text, count_sentences=one_per_line) is None
    assert clean_page(text, count_sentences=one_per_line, min_words_per_line=2) == text
    assert clean_page(page(GOOD), count_sentences=one_per_line, min_num_sentences=1) == GOOD
    assert (
        clean_page(
            page("abcdef is a word."),
            count_sentences=one_per_line,
            max_word_length=5,
            min_num_sentences=0,
        )
        == ""
    )


def test_plain_callable_counter_is_called_for_every_kept_line():
    calls = []

    def counter(line):
        calls.append(line)
        return 0

    assert clean_page(page(GOOD, GOOD2, GOOD3, GOOD), count_sentences=counter) is None
    assert calls == [GOOD, GOOD2, GOOD3, GOOD]


def test_punkt_counts_the_tfds_test_line_as_one_sentence():
    punkt = sentences.get_sentence_counter("punkt")
    line = "This line looks like it has three sentences...but it's actually just 1."
    assert punkt(line) == 1
    assert punkt("One sentence here. And a second one there.") == 2


def test_shortcuts_agree_with_counting(python_docs_pages):
    """Skipping Punkt where the answer is known never changes a decision."""
    punkt = sentences.get_sentence_counter("punkt")
    for p in python_docs_pages[:150]:
        cleaned = clean_page(p.text, count_sentences=one_per_line, min_num_sentences=0)
        kept = [line for line in (cleaned or "").split("\n") if line]
        for line in kept:
            n = punkt(line)
            assert n >= 1
            if punkt.is_single_sentence(line):
                assert n == 1, line
        for k in range(1, 6):
            assert cleaning.has_min_sentences(kept, punkt, k) == (
                sum(punkt(line) for line in kept) >= k
            )


def test_default_counter_is_configurable():
    text = page(GOOD, GOOD2)
    try:
        cleaning.set_default_sentence_counter(lambda line: 5)
        assert clean_page(text) == text
    finally:
        cleaning.set_default_sentence_counter("punkt")
    assert clean_page(text) is None


def test_regex_counter():
    rc = sentences.get_sentence_counter("regex")
    assert rc("One. Two! Three? Four") == 4
    assert rc('He said "stop." Then left.') == 2
    assert rc("") == 0
    with pytest.raises(ValueError, match="unknown sentence splitter"):
        sentences.get_sentence_counter("spacy")


def test_normalize_url_and_length():
    from t5forge.beam_jobs.wet import normalize_url

    assert normalize_url("https://www.example.com/a/b/") == "example.com/a/b"
    assert normalize_url("http://example.com/a?utm_source=x&y=1") == "example.com/a"
    assert normalize_url("http://example.com/a?ref=home") == "example.com/a"
    assert normalize_url("http://example.com/a?feed=rss") == "example.com/a"
    assert normalize_url("http://example.com/a?id=3") == "example.com/a?id=3"
    assert cleaning.is_valid_length("x" * 190_000)
    assert not cleaning.is_valid_length("x" * 190_001)


def test_paragraph_filter():
    long = "y" * 200
    assert cleaning.paragraph_filter("\n".join([long, long, long]))
    assert not cleaning.paragraph_filter("\n".join([long, long, "y" * 199, "short"]))
    assert not cleaning.paragraph_filter("\n".join([long, long]))


@pytest.mark.parametrize("name", ["punkt", "regex"])
def test_count_up_to_equals_capped_count(python_docs_pages, name):
    counter = sentences.get_sentence_counter(name)
    texts = [p.text for p in python_docs_pages[:60]]
    texts += [line for t in texts[:10] for line in t.split("\n")[:30]]
    for text in texts:
        full = counter(text)
        for limit in (1, 2, 3, 5):
            assert counter.count_up_to(text, limit) == min(full, limit)


def test_clean_page_equals_tfds_on_every_shared_page(python_docs_pages):
    """Same text and same per-reason counters as TFDS's c4_utils.clean_page."""
    import collections

    c4_utils = pytest.importorskip("tensorflow_datasets.text.c4_utils")
    punkt = sentences.get_sentence_counter("punkt")
    plain = sentences._new_punkt_tokenizer()  # TFDS gets no shortcuts and no caching
    original = c4_utils._get_sentences
    c4_utils._get_sentences = plain.tokenize
    try:
        tfds_clean = c4_utils.get_clean_page_fn()
        kept = 0
        for page in python_docs_pages:
            counts = collections.Counter()
            out = list(tfds_clean(page, counter_inc_fn=lambda n, a=1, c=counts: c.update({n: a})))
            expected = out[0].text if out else None
            result = clean_page_with_reasons(page.text, count_sentences=punkt)
            assert result.text == expected, page.url
            assert +result.counts == +counts, page.url
            kept += expected is not None
    finally:
        c4_utils._get_sentences = original
    assert len(python_docs_pages) >= 300 and 0 < kept < len(python_docs_pages)


# ------------------------------------------------------------------------------------------
# Punkt's English parameters from the legacy pickle (what TFDS loads), read without running it


@pytest.fixture(scope="module")
def trained_punkt(python_docs_pages):
    """A Punkt tokenizer trained on real pages: learned abbreviations, collocations, starters."""
    from nltk.tokenize import punkt

    trainer = punkt.PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    trainer.train("\n".join(page.text for page in python_docs_pages[:120]), finalize=True)
    parameters = trainer.get_params()
    assert parameters.abbrev_types and parameters.collocations and parameters.sent_starters
    return punkt.PunktSentenceTokenizer(parameters)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_legacy_punkt_pickle_gives_the_same_parameters_and_sentences(
    tmp_path, trained_punkt, python_docs_pages, protocol
):
    import pickle

    path = tmp_path / "english.pickle"
    path.write_bytes(pickle.dumps(trained_punkt, protocol=protocol))
    parameters = sentences.legacy_punkt_parameters(str(path))
    expected = trained_punkt._params
    assert parameters.abbrev_types == expected.abbrev_types
    assert parameters.collocations == expected.collocations
    assert parameters.sent_starters == expected.sent_starters
    assert dict(parameters.ortho_context) == dict(expected.ortho_context)
    from nltk.tokenize import punkt

    loaded = punkt.PunktSentenceTokenizer(parameters)
    untrained = punkt.PunktSentenceTokenizer()
    texts = [page.text for page in python_docs_pages[120:160]]
    assert [loaded.tokenize(t) for t in texts] == [trained_punkt.tokenize(t) for t in texts]
    # The parameters matter on this text: untrained Punkt splits it differently.
    assert [untrained.tokenize(t) for t in texts] != [trained_punkt.tokenize(t) for t in texts]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_legacy_punkt_pickle_runs_nothing(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "english.pickle"
    path.write_bytes(pickle.dumps({"abbrev_types": _Exploit(str(marker))}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (posix|os)\.mkdir"):
        sentences.legacy_punkt_parameters(str(path))
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"some": "dict"}))
    with pytest.raises(ValueError, match="no Punkt parameters"):
        sentences.legacy_punkt_parameters(str(path))


def test_punkt_uses_the_legacy_pickle_when_punkt_tab_is_missing(
    tmp_path, trained_punkt, monkeypatch
):
    import pickle

    import nltk.data
    from nltk.tokenize import punkt

    def no_punkt_tab(language):
        raise LookupError("punkt_tab not installed")

    monkeypatch.setattr(punkt, "PunktTokenizer", no_punkt_tab)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty"), str(tmp_path / "data")])
    assert sentences.legacy_punkt_parameters() is None
    with pytest.warns(UserWarning, match="untrained"):
        monkeypatch.delenv(sentences.PUNKT_WARNED_ENV, raising=False)
        assert sentences._new_punkt_tokenizer()._params.abbrev_types == set()
    path = tmp_path / "data" / sentences.LEGACY_PUNKT_PICKLES[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(trained_punkt, protocol=2))
    tokenizer = sentences._new_punkt_tokenizer()
    assert tokenizer._params.abbrev_types == trained_punkt._params.abbrev_types
    monkeypatch.setattr(sentences, "_punkt_tokenizer", lambda: tokenizer)
    assert sentences.punkt_has_english_parameters()
    monkeypatch.setattr(sentences, "_punkt_tokenizer", lambda: punkt.PunktSentenceTokenizer())
    assert not sentences.punkt_has_english_parameters()
