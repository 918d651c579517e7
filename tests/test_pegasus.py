"""PEGASUS gap sentences on real text, against an independent brute-force selection.

Documents are pages of ../shared/data/wet after C4's cleaning rules. The
expected selections are computed here from scratch: the corpus jobs'
sentence splitter, seqio's `encode`, and the rouge-score package as the scorer
(its tokenizer with PEGASUS-style stopword removal), one rest-of-document
text per sentence, no count matrices.
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

pytestmark = pytest.mark.skipif(
    not (os.path.exists(PYTHON_DOCS_WET) and os.path.exists(DEBIAN_WET)),
    reason="needs ../shared/data/wet",
)

SPM = os.path.join(os.path.dirname(__file__), "fixtures", "objectives", "spm2000.model")
EOS = 1
LENGTHS = {"inputs": 512, "targets": 256}


@functools.cache
def _texts(path: str = PYTHON_DOCS_WET, count: int = 40) -> tuple[str, ...]:
    """The first `count` pages of a WET file that C4's cleaning keeps."""
    texts = []
    for page in wet.read_wet_file(path):
        text = cleaning.clean_page(page.text)
        if text:
            texts.append(text)
        if len(texts) == count:
            break
    return tuple(texts)


@functools.cache
def _vocabulary(extra_ids: int = 100):
    import seqio

    return seqio.SentencePieceVocabulary(SPM, extra_ids=extra_ids)


def _features(vocabulary=None):
    import seqio

    vocabulary = vocabulary or _vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def _generator(lengths=LENGTHS, **options):
    from t5forge.preprocessors import GapSentenceGenerator

    return GapSentenceGenerator(
        _vocabulary(), lengths["inputs"] - 1, lengths["targets"] - 1, **options
    )


# ----------------------------------------------------------------------------
# The independent reference
# ----------------------------------------------------------------------------


class _StopwordTokenizer(tokenizers.Tokenizer):
    """rouge-score's tokenizer, stopwords dropped (PEGASUS's rouge.cc does the same)."""

    def tokenize(self, text):
        from t5forge.preprocessors.rouge import ENGLISH_STOPWORDS

        return [t for t in tokenize.tokenize(text, None) if t not in ENGLISH_STOPWORDS]


_SCORER = rouge_scorer.RougeScorer(["rouge1"], tokenizer=_StopwordTokenizer())


def _f1(reference: str, candidate: str, unique: bool) -> float:
    if unique:  # each distinct word once: rouge-score on the word sets
        tokenizer = _StopwordTokenizer()
        reference = " ".join(sorted(set(tokenizer.tokenize(reference))))
        candidate = " ".join(sorted(set(tokenizer.tokenize(candidate))))
    return _SCORER.score(reference, candidate)["rouge1"].fmeasure


def _window(text: str, budget: int) -> tuple[list[str], list[list[int]]]:
    """Leading whole sentences whose encodings fit `budget` tokens (first one cut if needed)."""
    vocabulary = _vocabulary()
    kept, ids, used = [], [], 0
    for sentence in sentences.split_sentences(text):
        encoded = list(vocabulary.encode(sentence))
        if not encoded:
            continue
        if used + len(encoded) > budget:
            if not kept:
                kept, ids = [sentence], [encoded[:budget]]
            break
        kept.append(sentence)
        ids.append(encoded)
        used += len(encoded)
    return kept, ids


def _num_gap(n: int, ratio: float) -> int:
    """PEGASUS's GetNumMaskedSentences, in float32 as the C++ computes it."""
    return min(int(max(np.float32(n) * np.float32(ratio), np.float32(1.0))), n) if n else 0


def _preference(window: list[str], strategy: str, m: int) -> list[int]:
    """Sentence indices, most preferred first, by brute force with rouge-score."""
    unique = strategy.endswith("uniq")
    n = len(window)
    if strategy.startswith("ind"):
        scores = [_f1(" ".join(window[:i] + window[i + 1 :]), window[i], unique) for i in range(n)]
        # Scores equal up to float noise are ties; ties go to the later sentence.
        return sorted(range(n), key=lambda i: (-round(scores[i], 12), -i))
    picked: list[int] = []
    for _ in range(m):
        best, best_score = -1, -1.0
        for k in range(n):
            if k in picked:
                continue
            candidate = " ".join(window[j] for j in [*picked, k])
            rest = " ".join(window[j] for j in range(n) if j not in picked and j != k)
            score = _f1(rest, candidate, unique)
            if score >= best_score - 1e-12:
                best, best_score = k, score
        picked.append(best)
    return picked


def _expected_selection(order: list[int], m: int, ids: list[list[int]], budget: int) -> list[int]:
    """The first m preferred, minus the least preferred while their tokens exceed the budget."""
    chosen = order[:m]
    while len(chosen) > 1 and sum(len(ids[i]) for i in chosen) > budget:
        chosen = chosen[:-1]
    return sorted(chosen)


# ----------------------------------------------------------------------------
# Sentence splitting and counts
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("splitter", sentences.SENTENCE_SPLITTERS)
def test_splitters_yield_the_sentences_the_counters_count(splitter):
    counter = sentences.get_sentence_counter(splitter)
    texts = _texts()[:20] + _texts(DEBIAN_WET, 10)
    for text in texts:
        split = sentences.split_sentences(text, splitter)
        assert len(split) == counter(text)
        position = 0
        for sentence in split:  # non-empty, stripped, in order, verbatim
            assert sentence and sentence == sentence.strip()
            position = text.index(sentence, position) + len(sentence)
    with pytest.raises(ValueError, match="splitter 'spacy'"):
        sentences.split_sentences("A. B.", "spacy")


def test_number_of_gap_sentences():
    from t5forge.preprocessors import num_gap_sentences

    assert num_gap_sentences(7, 0.3) == 2  # objectives.md §8 anchor
    assert num_gap_sentences(1, 0.3) == 1  # at least one
    assert num_gap_sentences(2, 1.0) == 2  # at most all
    assert num_gap_sentences(0, 0.3) == 0
    # In float32, as PEGASUS's int * float: 100 * 0.29 is 29.0 (float64: 28.999..., so 28).
    assert num_gap_sentences(100, 0.29) == 29


# ----------------------------------------------------------------------------
# Selection against brute force
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ind_orig", "ind_uniq", "seq_orig", "seq_uniq", "lead"])
def test_selection_matches_brute_force(strategy):
    generator = _generator(strategy=strategy)
    count = 30 if strategy.startswith("ind") or strategy == "lead" else 10
    trimmed = 0
    for index, text in enumerate(_texts()[:count]):
        window, ids = _window(text, LENGTHS["inputs"] - 1)
        m = _num_gap(len(window), 0.3)
        order = list(range(len(window))) if strategy == "lead" else _preference(window, strategy, m)
        expected = _expected_selection(order, m, ids, LENGTHS["targets"] - 1)
        example = generator(text, (index, 5))
        assert example.sentences == window
        assert [list(x) for x in example.sentence_ids] == ids
        assert example.num_gap == m
        assert example.selected.tolist() == expected, (index, example.scores)
        trimmed += len(expected) < m
    assert trimmed < count // 3  # mostly the full ratio; the trimming path is tested below


def test_pipeline_masks_the_top_rouge_sentences_in_place():
    """The tf.data preprocessor end to end: Ind-Orig at 30% on real documents."""
    import seqio
    import tensorflow as tf

    from t5forge.preprocessors import pegasus_gap_sentences, reserved_id

    texts = list(_texts()[:30])
    features = _features()
    with seqio.map_seed_manager(11):
        ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
        ds = pegasus_gap_sentences(ds, LENGTHS, features)
        ds = seqio.preprocessors.append_eos_after_trim(ds, features, LENGTHS)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == len(texts)
    mask = reserved_id(_vocabulary(), "<mask_sentence>")
    ratios = []
    for text, example in zip(texts, examples, strict=True):
        window, ids = _window(text, LENGTHS["inputs"] - 1)
        m = _num_gap(len(window), 0.3)
        chosen = _expected_selection(
            _preference(window, "ind_orig", m), m, ids, LENGTHS["targets"] - 1
        )
        want_inputs = list(
            itertools.chain(*([mask] if i in chosen else ids[i] for i in range(len(ids))))
        )
        want_targets = list(itertools.chain(*(ids[i] for i in chosen)))  # document order
        assert example["inputs"].tolist() == want_inputs + [EOS]
        assert example["targets"].tolist() == want_targets + [EOS]
        assert len(example["inputs"]) <= 512 and len(example["targets"]) <= 256
        ratios.append(len(chosen) / len(window))
    # 30% of the sentences, less the truncation of int(N * 0.3).
    assert 0.22 < np.mean(ratios) <= 0.3


def test_targets_that_do_not_fit_give_back_the_least_preferred_sentences():
    lengths = {"inputs": 512, "targets": 48}
    generator = _generator(lengths)
    given_back = 0
    for index, text in enumerate(_texts()[:30]):
        example = generator(text, (index, 0))
        sizes = [example.sentence_ids[i].size for i in example.order[: example.num_gap]]
        kept = example.selected.size
        assert kept >= 1
        assert sorted(example.order[:kept]) == example.selected.tolist()
        if kept > 1 or sizes[0] <= 47:
            assert sum(sizes[:kept]) <= 47  # whole sentences that fit
            assert example.targets.size == sum(sizes[:kept])
        else:  # a lone sentence longer than the targets is cut
            assert example.targets.size == 47
        if kept < example.num_gap:
            assert sum(sizes[: kept + 1]) > 47  # the next one would not have fit
            given_back += 1
    assert given_back > 5


def test_short_lengths_keep_whole_sentences():
    """Every example fits; inputs are whole sentences except a cut first sentence."""
    lengths = {"inputs": 41, "targets": 16}
    generator = _generator(lengths)
    cut = 0
    for index, text in enumerate(_texts()):
        example = generator(text, (index, 1))
        assert 0 < example.inputs.size <= 40 and 0 < example.targets.size <= 15
        window, ids = _window(text, 40)
        assert example.sentences == window
        assert [list(x) for x in example.sentence_ids] == ids
        first = list(_vocabulary().encode(window[0]))
        if len(first) > 40:  # the only sentence, cut; it is the gap sentence
            cut += 1
            assert len(window) == 1 and ids[0] == first[:40]
            assert example.targets.tolist() == first[:15]
        else:
            assert all(ids[i] == list(_vocabulary().encode(s)) for i, s in enumerate(window))
    assert cut > 0


# ----------------------------------------------------------------------------
# Random, lead, dynamic
# ----------------------------------------------------------------------------


def test_random_strategy_is_uniform_and_seeded():
    generator = _generator(strategy="random")
    text = _texts()[3]
    n = len(generator.window(text)[0])
    hits = np.zeros(n)
    for seed in range(600):
        example = generator(text, (seed, 9))
        hits[example.selected] += 1
        assert example.selected.size == _num_gap(n, 0.3)
    expected = 600 * _num_gap(n, 0.3) / n
    assert np.all(np.abs(hits - expected) < 5 * np.sqrt(expected))
    first, again = generator(text, (1, 2)), generator(text, (1, 2))
    assert first.selected.tolist() == again.selected.tolist()
    assert any(
        generator(text, (s, 2)).selected.tolist() != first.selected.tolist() for s in range(2, 6)
    )


def test_dynamic_rouge_ratio_and_noise():
    clean = _generator(strategy="ind_orig")
    dynamic = _generator(strategy="dynamic_rouge")
    shared = _generator(strategy="dynamic_rouge", score_noise_per_document=False)
    noiseless = _generator(strategy="dynamic_rouge", dynamic_min_ratio=1.0, score_noise=0.0)
    factors, shared_factors, low, high = [], [], 0, 0
    for index, text in enumerate(_texts()):
        seed = (index, 4)
        reference = clean(text, seed)
        example = dynamic(text, seed)
        n = len(example.sentences)
        assert _num_gap(n, 0.3 * 0.33) <= example.num_gap <= _num_gap(n, 0.3)
        low += example.num_gap < _num_gap(n, 0.3)
        high += example.num_gap == _num_gap(n, 0.3)
        positive = reference.scores > 0
        factors.append((example.scores[positive] / reference.scores[positive] - 1) / 0.2)
        shared_example = shared(text, seed)
        if n >= 3 and (reference.scores[:3] > 0).all():
            shared_factors.append(shared_example.scores[:3] / reference.scores[:3])
        plain = noiseless(text, seed)
        assert plain.selected.tolist() == reference.selected.tolist()
    # Scores times (1 + 0.2 * N(0, 0.2)): the factor's noise has std 0.2.
    noise = np.concatenate(factors)
    assert len(noise) > 300
    assert abs(noise.mean()) < 0.03 and 0.17 < noise.std() < 0.23
    assert low > 5 and high > 2
    # The reference's quirk on request: the same noise by sentence index everywhere.
    assert len(shared_factors) > 10
    np.testing.assert_allclose(shared_factors, [shared_factors[0]] * len(shared_factors))


# ----------------------------------------------------------------------------
# Inputs options: MLM and sentence actions
# ----------------------------------------------------------------------------


def test_mlm_on_whole_words_outside_the_masks():
    from t5forge.preprocessors import reserved_id

    vocabulary = _vocabulary()
    mask_sentence = reserved_id(vocabulary, "<mask_sentence>")
    mask_word = reserved_id(vocabulary, "<mask_word>")
    plain = _generator()
    mlm = _generator(mlm_ratio=0.15)
    starts = np.array([vocabulary.tokenizer.IdToPiece(i).startswith("▁") for i in range(2000)])
    outcomes = {"mask": 0, "random": 0, "keep": 0}
    for index, text in enumerate(_texts()):
        seed = (index, 8)
        before, after = plain(text, seed), mlm(text, seed)
        assert after.selected.tolist() == before.selected.tolist()  # MLM does not move GSG
        assert np.array_equal(after.targets, before.targets)
        original = before.inputs
        chosen = after.mlm_labels != 0
        assert np.array_equal(after.mlm_labels[chosen], original[chosen])
        assert not np.any(chosen & (original == mask_sentence))
        assert np.array_equal(after.inputs[~chosen], original[~chosen])
        # Words: a piece starting with "▁" or a sentence's first piece begins one.
        word_start = np.zeros(original.size, dtype=bool)
        word_start[original < 2000] = starts[original[original < 2000]]
        position = 0
        for i, ids in enumerate(before.sentence_ids):
            if i in before.selected:
                word_start[position] = True
                position += 1
            else:
                word_start[position] = True
                position += ids.size
        word = np.cumsum(word_start) - 1
        candidate_words = {w for w, t in zip(word, original, strict=True) if t != mask_sentence}
        chosen_words = set(word[chosen])
        assert len(chosen_words) == min(
            int(max(np.float32(len(candidate_words)) * np.float32(0.15), 1.0)),
            len(candidate_words),
        )
        for w in chosen_words:
            where = word == w
            assert chosen[where].all()  # whole words
            new = after.inputs[where]
            if (new == mask_word).all():
                outcomes["mask"] += 1
            elif np.array_equal(new, original[where]):
                outcomes["keep"] += 1
            else:
                outcomes["random"] += 1
                assert ((new >= 3) & (new < 2000)).all()  # ordinary ids only
    total = sum(outcomes.values())
    assert total > 500
    assert abs(outcomes["mask"] / total - 0.8) < 0.05
    assert abs(outcomes["random"] / total - 0.1) < 0.04
    assert abs(outcomes["keep"] / total - 0.1) < 0.04


def test_sentence_actions_keep_and_remove():
    from t5forge.preprocessors import reserved_id

    mask = reserved_id(_vocabulary(), "<mask_sentence>")
    pegasus_large = _generator(sentence_mask_probs=(0.9, 0.1, 0.0))
    remove = _generator(sentence_mask_probs=(0.0, 0.0, 1.0))
    actions = []
    for index, text in enumerate(_texts()):
        example = pegasus_large(text, (index, 3))
        actions += example.actions
        assert int(np.sum(example.inputs == mask)) == example.actions.count("mask")
        removed = remove(text, (index, 3))
        kept = [x for i, x in enumerate(removed.sentence_ids) if i not in removed.selected]
        assert removed.inputs.tolist() == list(itertools.chain(*kept))
    assert 0.05 < actions.count("keep") / len(actions) < 0.16


# ----------------------------------------------------------------------------
# tf.data behaviour, errors, ids
# ----------------------------------------------------------------------------


def _run(texts, seed, **options):
    import seqio
    import tensorflow as tf

    from t5forge.preprocessors import pegasus_gap_sentences

    with seqio.map_seed_manager(seed):
        ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
        ds = pegasus_gap_sentences(ds, LENGTHS, _features(), **options)
    return list(ds.as_numpy_iterator())


def test_pipeline_is_deterministic_per_seed_and_matches_the_generator():
    texts = list(_texts()[:12]) + ["   ", ""]  # documents without sentences are dropped
    first = _run(texts, 21, strategy="random", mlm_ratio=0.15, mlm_labels_key="mlm")
    again = _run(texts, 21, strategy="random", mlm_ratio=0.15, mlm_labels_key="mlm")
    other = _run(texts, 22, strategy="random", mlm_ratio=0.15, mlm_labels_key="mlm")
    assert len(first) == 12
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("inputs", "targets", "mlm"))
    assert any(
        not np.array_equal(a["inputs"], c["inputs"]) for a, c in zip(first, other, strict=True)
    )
    # The per-example seed is seqio's; the generator called with it gives the same example.
    generator = _generator(strategy="random", mlm_ratio=0.15)
    seeds = _seqio_seeds(21, len(texts))
    for text, seed, example in zip(texts, seeds, first, strict=False):
        direct = generator(text, seed)
        assert np.array_equal(direct.inputs, example["inputs"])
        assert np.array_equal(direct.mlm_labels, example["mlm"])


def _seqio_seeds(seed: int, count: int) -> list[np.ndarray]:
    """The seeds seqio.map_over_dataset(num_seeds=1) hands to examples under this seed."""
    import seqio
    import tensorflow as tf

    with seqio.map_seed_manager(seed):

        @seqio.map_over_dataset(num_seeds=1)
        def seed_of(features, seed):
            return {"seed": seed}

        ds = seed_of(tf.data.Dataset.range(count).map(lambda i: {"i": i}))
    return [ex["seed"] for ex in ds.as_numpy_iterator()]


def test_errors_name_the_input():
    import seqio
    import tensorflow as tf

    from t5forge.preprocessors import pegasus_gap_sentences

    text = tf.data.Dataset.from_tensor_slices({"targets": ["One. Two."]})
    with pytest.raises(ValueError, match="strategy='best'"):
        pegasus_gap_sentences(text, LENGTHS, _features(), strategy="best")
    with pytest.raises(ValueError, match="gap_ratio=1.5"):
        pegasus_gap_sentences(text, LENGTHS, _features(), gap_ratio=1.5)
    with pytest.raises(ValueError, match="sentence_mask_probs"):
        pegasus_gap_sentences(text, LENGTHS, _features(), sentence_mask_probs=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="sentence_splitter='nltk'"):
        pegasus_gap_sentences(text, LENGTHS, _features(), sentence_splitter="nltk")
    tokens = seqio.preprocessors.tokenize(text, _features())
    with pytest.raises(ValueError, match="'targets' must be one string"):
        pegasus_gap_sentences(tokens, LENGTHS, _features())
    with pytest.raises(ValueError, match="no text feature 'body'"):
        pegasus_gap_sentences(text, LENGTHS, _features(), text_key="body")
    with pytest.raises(ValueError, match="has 3 sentinel ids"):
        pegasus_gap_sentences(text, LENGTHS, _features(_vocabulary(extra_ids=3)))
    with pytest.raises(ValueError, match="inputs 0 / targets 255"):
        pegasus_gap_sentences(text, {"inputs": 1, "targets": 256}, _features())


def test_reserved_ids_are_the_lowest_sentinels():
    import seqio

    from t5forge.preprocessors import RESERVED_TOKENS, reserved_id

    spm = [reserved_id(_vocabulary(), token) for token in RESERVED_TOKENS]
    assert spm == list(range(2000, 2005))  # <extra_id_99> .. <extra_id_95>
    assert [_vocabulary().tokenizer.IdToPiece(i) for i in spm[3:]] == [
        "▁<extra_id_96>",
        "▁<extra_id_95>",
    ]
    byte = [reserved_id(seqio.ByteVocabulary(), token) for token in RESERVED_TOKENS]
    assert byte == list(range(248, 253))  # bytes 0xF5.. never occur in UTF-8
    encoded = set(seqio.ByteVocabulary().encode("".join(_texts(DEBIAN_WET, 5))))
    assert not encoded & set(byte)


def test_byte_vocabulary_gap_sentences():
    import seqio

    from t5forge.preprocessors import GapSentenceGenerator

    vocabulary = seqio.ByteVocabulary()
    generator = GapSentenceGenerator(vocabulary, 1023, 255, mlm_ratio=0.15)
    for index, text in enumerate(_texts(DEBIAN_WET, 6)):
        example = generator(text, (index, 0))
        assert 0 < example.inputs.size <= 1023 and 0 < example.targets.size <= 255
        assert np.sum(example.inputs == 251) == np.sum(np.array(example.actions) == "mask")
        chosen = [vocabulary.encode(example.sentences[i]) for i in example.selected]
        assert example.targets.tolist() == list(itertools.chain(*chosen))[:255]


def test_registered_task_equals_the_preprocessor_by_hand(tmp_path):
    """<prefix>_pegasus_gsg: rekey -> cache placeholder -> gap sentences -> EOS, no tokenize."""
    import gzip
    import json

    import seqio
    import tensorflow as tf

    from t5forge import pipelines
    from t5forge.preprocessors import pegasus_gap_sentences

    texts = list(_texts()[:16])
    with gzip.open(tmp_path / "c4-train.00000-of-00001.json.gz", "wt", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    names = pipelines.register_corpus_tasks(
        "peg_task", str(tmp_path), SPM, objectives=["pegasus_gsg"]
    )
    assert names == ["peg_task_pegasus_gsg"]
    task = seqio.get_mixture_or_task("peg_task_pegasus_gsg")
    assert seqio.preprocessors.tokenize not in task.preprocessors
    got = list(task.get_dataset(LENGTHS, split="train", shuffle=False, seed=5).as_numpy_iterator())
    features = task.output_features
    # seqio runs post-cache steps under seed + 42 * (index of the placeholder = 1).
    with seqio.map_seed_manager(5 + 42):
        ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
        ds = pegasus_gap_sentences(ds, LENGTHS, features)
        ds = seqio.preprocessors.append_eos_after_trim(ds, features, LENGTHS)
    want = list(ds.as_numpy_iterator())
    assert len(got) == len(want) == len(texts)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])
        assert x["inputs"][-1] == EOS and x["targets"][-1] == EOS
