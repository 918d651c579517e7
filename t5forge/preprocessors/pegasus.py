"""PEGASUS gap-sentence generation (GSG; Zhang et al., 2020) as a seqio preprocessor.

The reference is google-research/pegasus's `SentenceMaskAndEncode` op
(pretrain_parsing_ops.cc, sentence_selection.cc, rouge.cc), re-done in Python
and numpy; docs/objectives.md lists every choice. Per document:

1. Split into sentences with the corpus jobs' pluggable splitter ("punkt" or
   "regex", `t5forge.beam_jobs.sentences`) and encode each sentence on its own
   (as PEGASUS does), dropping sentences that encode to nothing.
2. Window: keep the longest run of whole leading sentences whose tokens fit
   the inputs length (minus EOS). Masking only shortens a sentence, so any
   choice of gap sentences fits; a first sentence longer than that is cut
   (the one case where a sentence is not kept whole). The window is "the
   document" for everything below.
3. Choose m = min(int(max(N * gap_ratio, 1)), N) of its N sentences (float32,
   as PEGASUS) by the strategy:
   - "random": a random m; "lead": the first m;
   - "ind_orig" / "ind_uniq" (the paper's best is Ind-Orig): the m best by
     ROUGE-1 F1 of the sentence against the rest of the window, ties to the
     later sentence;
   - "seq_orig" / "seq_uniq": greedily, each pick maximising F1(picked + it,
     rest - it);
   - "dynamic_rouge" (pegasus_large's "mixed & stochastic"): Ind-Orig with the
     ratio multiplied by U(dynamic_min_ratio, 1) per document and each score by
     (1 + score_noise * N(0, score_noise)), the Gaussian the code draws (its
     README says "20% uniform noise"; docs/objectives.md).
4. Targets: the chosen sentences in document order. If they exceed the
   targets length (minus EOS), the least preferred chosen sentences are given
   back to the inputs until the rest fit; a lone chosen sentence that is still
   too long is cut.
5. Inputs: the window with each chosen sentence replaced by one
   <mask_sentence> token (or, with `sentence_mask_probs`, kept intact or
   removed, PEGASUS's other options), then optionally MLM: int(max(W * ratio,
   1)) of the W whole words outside the masks are chosen, each replaced by
   <mask_word> (80%), random ordinary ids (10%) or left (10%).

The mask tokens are sentinel ids that `reserved_ids` sets aside (the two
lowest sentinels but three, e.g. 32003 and 32004 for T5's vocabulary); PEGASUS's
own ids 2 and 3 are T5's UNK and an ordinary piece. EOS is not added here:
the task's `append_eos_after_trim` adds it, as for span corruption.

Randomness: seqio's per-example seed (`seqio.map_over_dataset(num_seeds=1)`,
so `seqio.map_seed_manager` controls it) keys numpy Philox generators inside
the example's Python function, one counter stream per decision. Nothing
carries over between examples, so the same seed gives the same examples for
any parallelism, and toggling MLM does not change which sentences are chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from t5forge.beam_jobs.sentences import SENTENCE_SPLITTERS, get_sentence_splitter
from t5forge.preprocessors import rouge
from t5forge.preprocessors.reserved_ids import num_vocabulary_sentinels, reserved_id

STRATEGIES = ("random", "lead", "ind_orig", "ind_uniq", "seq_orig", "seq_uniq", "dynamic_rouge")
# What happens to a chosen sentence in the inputs (PEGASUS also has "replace
# by a random sentence", which pegasus_large leaves at 0 and which could
# overflow the inputs length, so it is not offered).
SENTENCE_ACTIONS = ("mask", "keep", "remove")
# What happens to a word chosen for MLM.
WORD_ACTIONS = ("mask", "random", "keep")
# PEGASUS ids below this are special; ordinary ids start here in T5's layout.
FIRST_ORDINARY_ID = 3

# One Philox counter stream per random decision of an example.
_RATIO_STREAM, _NOISE_STREAM, _ORDER_STREAM, _SENTENCE_STREAM, _MLM_STREAM = range(5)
# The stream key when every document gets the same score noise by index.
_SHARED_NOISE_KEY = (0, 0)


def num_gap_sentences(num_sentences: int, gap_ratio: float) -> int:
    """PEGASUS's count of gap sentences: min(int(max(N * ratio, 1)), N), in float32.

    For example 7 sentences at ratio 0.3 give 2; no sentences give 0.
    """
    if num_sentences <= 0:
        return 0
    product = np.float32(num_sentences) * np.float32(gap_ratio)
    return min(int(max(product, np.float32(1.0))), num_sentences)


def example_rng(seed: Sequence[int] | np.ndarray, stream: int) -> np.random.Generator:
    """A numpy generator for decision `stream` of the example with this seed pair.

    Philox is counter-based: the key is the seed (two int64, read as uint64)
    and the stream sits in the counter's high word, so streams never overlap.
    """
    key = np.asarray(seed, dtype=np.int64).reshape(2).view(np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=[0, 0, 0, stream]))


def best_first(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties to the higher index (PEGASUS's pair sort)."""
    indices = np.arange(len(scores))
    return np.lexsort((-indices, -scores))


def _check_probs(name: str, probs: Sequence[float], labels: Sequence[str]) -> np.ndarray:
    """Cumulative thresholds of one probability per label; ValueError naming `name` if invalid."""
    values = np.asarray(probs, dtype=np.float64)
    if values.shape != (len(labels),) or (values < 0).any() or abs(values.sum() - 1) > 1e-6:
        raise ValueError(
            f"{name}={tuple(probs)!r}: need {len(labels)} non-negative probabilities "
            f"({', '.join(labels)}) that sum to 1"
        )
    cumulative = np.cumsum(values)
    cumulative[-1] = 1.0  # so that every uniform draw in [0, 1) lands on an action
    return cumulative


def _sentence_encoder(vocabulary: Any) -> Callable[[str], list[int]]:
    """str -> ids with the vocabulary's own Python encoder (seqio's `encode`)."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        processor = vocabulary.tokenizer  # the same processor `encode` uses, fetched once
        return processor.EncodeAsIds
    return vocabulary.encode


def _word_start_fn(vocabulary: Any) -> Callable[[np.ndarray], np.ndarray]:
    """ids -> bool array: which tokens begin a whole word (for MLM).

    SentencePiece: pieces starting with "▁" (PEGASUS's whole-word rule);
    bytes: a whitespace byte after a non-whitespace one (so, as with "▁", the
    space belongs to the word after it); anything else: every token.
    """
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        processor = vocabulary.tokenizer
        starts = np.array(
            [processor.IdToPiece(i).startswith("▁") for i in range(processor.GetPieceSize())]
        )
        return lambda ids: starts[ids]
    if isinstance(vocabulary, seqio.ByteVocabulary):
        space_ids = np.array([ord(c) + 3 for c in " \t\n\r\x0b\x0c"])

        def byte_starts(ids: np.ndarray) -> np.ndarray:
            space = np.isin(ids, space_ids)
            return space & ~np.concatenate([[False], space[:-1]])

        return byte_starts
    return lambda ids: np.ones(len(ids), dtype=bool)


@dataclasses.dataclass
class GapSentenceExample:
    """One document's gap-sentence example and how it was made.

    Attributes:
      sentences: the window's sentences (text), in document order.
      sentence_ids: their token ids, one int32 array each.
      scores: the selection scores (noisy for "dynamic_rouge"); None for
        "random", "lead" and the sequential strategies.
      order: sentence indices, most preferred first (only the first m for
        the sequential strategies).
      num_gap: m, the number of gap sentences the ratio asks for.
      selected: the gap sentences after fitting the targets, ascending.
      actions: for each selected sentence, its `SENTENCE_ACTIONS` entry.
      inputs: int32 inputs (no EOS).
      targets: int32 targets (no EOS).
      mlm_labels: int32, like `inputs`: the original id where MLM chose a
        token, 0 elsewhere.
    """

    sentences: list[str]
    sentence_ids: list[np.ndarray]
    scores: np.ndarray | None
    order: np.ndarray
    num_gap: int
    selected: np.ndarray
    actions: list[str]
    inputs: np.ndarray
    targets: np.ndarray
    mlm_labels: np.ndarray


class GapSentenceGenerator:
    """Makes PEGASUS gap-sentence examples from document text (pure Python and numpy).

    `pegasus_gap_sentences` runs one inside a tf.data map; it can also be
    called directly. See the module docstring for the procedure and
    `pegasus_gap_sentences` for the options.

    Args:
      vocabulary: a seqio vocabulary; its sentinels provide the mask ids.
      inputs_length: most input tokens to produce (EOS excluded).
      targets_length: most target tokens to produce (EOS excluded).
    """

    def __init__(
        self,
        vocabulary: Any,
        inputs_length: int,
        targets_length: int,
        *,
        strategy: str = "ind_orig",
        gap_ratio: float = 0.3,
        sentence_splitter: str = "punkt",
        rouge_stopwords: str | Sequence[str] | None = "english",
        rouge_use_stemmer: bool = False,
        dynamic_min_ratio: float = 0.33,
        score_noise: float = 0.2,
        score_noise_per_document: bool = True,
        sentence_mask_probs: Sequence[float] = (1.0, 0.0, 0.0),
        mlm_ratio: float = 0.0,
        mlm_probs: Sequence[float] = (0.8, 0.1, 0.1),
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if not 0.0 < gap_ratio <= 1.0:
            raise ValueError(f"gap_ratio={gap_ratio!r}: must be in (0, 1]")
        if sentence_splitter not in SENTENCE_SPLITTERS:
            raise ValueError(
                f"sentence_splitter={sentence_splitter!r}: choose one of "
                f"{', '.join(SENTENCE_SPLITTERS)}"
            )
        if not 0.0 <= dynamic_min_ratio <= 1.0:
            raise ValueError(f"dynamic_min_ratio={dynamic_min_ratio!r}: must be in [0, 1]")
        if score_noise < 0:
            raise ValueError(f"score_noise={score_noise!r}: must be >= 0")
        if not 0.0 <= mlm_ratio < 1.0:
            raise ValueError(f"mlm_ratio={mlm_ratio!r}: must be in [0, 1)")
        if inputs_length < 1 or targets_length < 1:
            raise ValueError(
                f"gap sentences need room for at least one token in inputs and targets "
                f"(besides EOS), got inputs {inputs_length} / targets {targets_length}"
            )
        self.strategy = strategy
        self.gap_ratio = gap_ratio
        self.inputs_length = int(inputs_length)
        self.targets_length = int(targets_length)
        self.dynamic_min_ratio = dynamic_min_ratio
        self.score_noise = score_noise
        self.score_noise_per_document = score_noise_per_document
        self.mlm_ratio = mlm_ratio
        self._sentence_cumprobs = _check_probs(
            "sentence_mask_probs", sentence_mask_probs, SENTENCE_ACTIONS
        )
        self._word_cumprobs = _check_probs("mlm_probs", mlm_probs, WORD_ACTIONS)
        self._stopwords = rouge.get_stopwords(rouge_stopwords)
        self._use_stemmer = rouge_use_stemmer
        self._split = get_sentence_splitter(sentence_splitter)
        self.mask_sentence_id = reserved_id(vocabulary, "<mask_sentence>")
        self.mask_word_id = reserved_id(vocabulary, "<mask_word>")
        # MLM's random replacements: ordinary ids only (no specials, no sentinels).
        self.random_id_range = (
            FIRST_ORDINARY_ID,
            int(vocabulary.vocab_size) - num_vocabulary_sentinels(vocabulary),
        )
        self._encode = _sentence_encoder(vocabulary)
        self._word_starts = _word_start_fn(vocabulary) if mlm_ratio > 0 else None

    # -- steps -------------------------------------------------------------

    def window(self, text: str) -> tuple[list[str], list[np.ndarray]]:
        """The leading whole sentences whose tokens fit the inputs length, and their ids.

        Reads only as much of the text as that needs (the splitters are lazy).
        """
        sentences: list[str] = []
        ids: list[np.ndarray] = []
        used = 0
        for sentence in self._split(text):
            encoded = np.asarray(self._encode(sentence), dtype=np.int32)
            if encoded.size == 0:
                continue
            if used + encoded.size > self.inputs_length:
                if not sentences:  # a first sentence that alone overflows: its start
                    sentences.append(sentence)
                    ids.append(encoded[: self.inputs_length])
                break
            sentences.append(sentence)
            ids.append(encoded)
            used += encoded.size
        return sentences, ids

    def preference(
        self, sentences: Sequence[str], seed: Any
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(order, scores, m): sentences most preferred first, their scores, and m."""
        n = len(sentences)
        ratio = self.gap_ratio
        if self.strategy == "dynamic_rouge":
            ratio *= example_rng(seed, _RATIO_STREAM).uniform(self.dynamic_min_ratio, 1.0)
        m = num_gap_sentences(n, ratio)
        if self.strategy == "lead":
            return np.arange(n), None, m
        if self.strategy == "random":
            return example_rng(seed, _ORDER_STREAM).permutation(n), None, m
        counts = rouge.unigram_counts(
            [rouge.rouge_tokens(s, self._stopwords, self._use_stemmer) for s in sentences]
        )
        unique = self.strategy.endswith("_uniq")
        if self.strategy.startswith("seq_"):
            return np.asarray(rouge.sequential_selection(counts, m, unique)), None, m
        scores = rouge.independent_scores(counts, unique)
        if self.strategy == "dynamic_rouge" and self.score_noise > 0:
            key = seed if self.score_noise_per_document else _SHARED_NOISE_KEY
            noise = example_rng(key, _NOISE_STREAM).normal(0.0, self.score_noise, n)
            scores = scores * (1.0 + self.score_noise * noise)
        return best_first(scores), scores, m

    def fit_targets(self, order: np.ndarray, m: int, ids: Sequence[np.ndarray]) -> np.ndarray:
        """The first m of `order`, minus the least preferred until their tokens fit (>= 1 kept)."""
        chosen = list(order[:m])
        lengths = [ids[i].size for i in chosen]
        while len(chosen) > 1 and sum(lengths) > self.targets_length:
            chosen.pop()
            lengths.pop()
        return np.sort(np.asarray(chosen, dtype=np.int64))

    def mask_words(
        self, inputs: np.ndarray, sentence_start: np.ndarray, seed: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """MLM over whole words outside the sentence masks; returns (inputs, labels)."""
        labels = np.zeros_like(inputs)
        if self.mlm_ratio <= 0 or inputs.size == 0:
            return inputs, labels
        word_start = self._word_starts(inputs) | sentence_start
        word_of_token = np.cumsum(word_start) - 1
        first_tokens = np.flatnonzero(word_start)
        words = np.flatnonzero(inputs[first_tokens] != self.mask_sentence_id)
        if words.size == 0:
            return inputs, labels
        rng = example_rng(seed, _MLM_STREAM)
        count = min(int(max(np.float32(words.size) * np.float32(self.mlm_ratio), 1.0)), words.size)
        chosen = rng.permutation(words)[:count]
        word_action = np.full(first_tokens.size, -1)
        word_action[chosen] = np.searchsorted(self._word_cumprobs, rng.random(count), side="right")
        token_action = word_action[word_of_token]
        labels = np.where(token_action >= 0, inputs, 0).astype(np.int32)
        out = inputs.copy()
        out[token_action == WORD_ACTIONS.index("mask")] = self.mask_word_id
        replace = token_action == WORD_ACTIONS.index("random")
        out[replace] = rng.integers(*self.random_id_range, size=int(replace.sum()))
        return out, labels

    # -- whole example -----------------------------------------------------

    def __call__(self, text: str, seed: Any) -> GapSentenceExample:
        """The gap-sentence example of `text` for a seed pair (empty if no sentences)."""
        sentences, ids = self.window(text)
        order, scores, m = self.preference(sentences, seed)
        selected = self.fit_targets(order, m, ids)
        draws = example_rng(seed, _SENTENCE_STREAM).random(selected.size)
        actions = [
            SENTENCE_ACTIONS[k] for k in np.searchsorted(self._sentence_cumprobs, draws, "right")
        ]
        action_of = dict(zip(selected.tolist(), actions, strict=True))
        pieces: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for i, tokens in enumerate(ids):
            action = action_of.get(i, "keep")
            if action == "remove":
                continue
            if action == "mask":
                tokens = np.array([self.mask_sentence_id], dtype=np.int32)
            pieces.append(tokens)
            start = np.zeros(tokens.size, dtype=bool)
            start[0] = True
            starts.append(start)
        empty = np.zeros(0, dtype=np.int32)
        inputs = np.concatenate(pieces) if pieces else empty
        sentence_start = np.concatenate(starts) if starts else np.zeros(0, dtype=bool)
        inputs, mlm_labels = self.mask_words(inputs, sentence_start, seed)
        targets = np.concatenate([ids[i] for i in selected]) if selected.size else empty
        return GapSentenceExample(
            sentences=sentences,
            sentence_ids=ids,
            scores=scores,
            order=np.asarray(order),
            num_gap=m,
            selected=selected,
            actions=actions,
            inputs=inputs.astype(np.int32),
            targets=targets[: self.targets_length].astype(np.int32),
            mlm_labels=mlm_labels.astype(np.int32),
        )

    def arrays(self, text: bytes, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, mlm_labels) for `tf.numpy_function` (text as UTF-8 bytes)."""
        example = self(bytes(text).decode("utf-8", errors="replace"), seed)
        return example.inputs, example.targets, example.mlm_labels


def pegasus_gap_sentences(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    strategy: str = "ind_orig",
    gap_ratio: float = 0.3,
    sentence_splitter: str = "punkt",
    rouge_stopwords: str | Sequence[str] | None = "english",
    rouge_use_stemmer: bool = False,
    dynamic_min_ratio: float = 0.33,
    score_noise: float = 0.2,
    score_noise_per_document: bool = True,
    sentence_mask_probs: Sequence[float] = (1.0, 0.0, 0.0),
    mlm_ratio: float = 0.0,
    mlm_probs: Sequence[float] = (0.8, 0.1, 0.1),
    mlm_labels_key: str | None = None,
    text_key: str = "targets",
    input_feature_key: str = "inputs",
) -> tf.data.Dataset:
    """PEGASUS's gap-sentence generation over documents of raw text.

    Each document (one scalar string in `text_key`, e.g. after
    `rekey({"targets": "text"})`, before any tokenization: sentences must be
    found in the text) becomes one example whose inputs are its leading whole
    sentences with the gap sentences masked, and whose targets are the gap
    sentences in document order. Both leave one position for the EOS that
    `seqio.preprocessors.append_eos_after_trim` adds. Documents with no
    sentence are dropped. The procedure is in the module docstring.

    Args:
      dataset: examples holding the text in `text_key`.
      sequence_length: lengths of `input_feature_key` and 'targets', EOS included.
      output_features: features; the 'targets' vocabulary encodes the sentences.
      strategy: one of `STRATEGIES`; "ind_orig" is the paper's best.
      gap_ratio: fraction of sentences to mask (0.3, the paper's ablation
        value; pegasus_large used 0.45 with "dynamic_rouge").
      sentence_splitter: "punkt" or "regex", as in the corpus jobs.
      rouge_stopwords: words ROUGE ignores: "english" (`rouge.ENGLISH_STOPWORDS`,
        as PEGASUS removes an English list), None, or the words.
      rouge_use_stemmer: Porter-stem ROUGE tokens (rouge-score's option).
      dynamic_min_ratio: "dynamic_rouge" draws the ratio from
        gap_ratio * U(dynamic_min_ratio, 1).
      score_noise: "dynamic_rouge" multiplies scores by
        (1 + score_noise * N(0, score_noise)).
      score_noise_per_document: draw that noise per document. False gives
        every document the same noise by sentence index, the reference's
        behaviour (it seeds a fresh engine identically on every call).
      sentence_mask_probs: probabilities that a gap sentence is masked, kept
        intact or removed in the inputs (pegasus_large: 0.9, 0.1, 0).
      mlm_ratio: fraction of whole words outside the masks to corrupt (0 = no
        MLM; the paper's MLM used 0.15).
      mlm_probs: probabilities that a chosen word becomes <mask_word>, random
        ordinary ids, or stays.
      mlm_labels_key: if set, each example also holds the MLM labels under
        this key (original ids where MLM chose a token, else 0).
      text_key: the feature holding the document text.
      input_feature_key: name of the output inputs feature.

    Returns:
      a dataset of {input_feature_key, 'targets'} int32 examples (+ labels).

    Raises:
      ValueError: bad options, lengths below 2, a vocabulary without the
        reserved sentinels, inputs and targets with different vocabularies,
        or a `text_key` that is not a scalar string feature.
    """
    spec = dataset.element_spec
    if not isinstance(spec, Mapping) or text_key not in spec:
        raise ValueError(f"pegasus_gap_sentences: examples have no text feature {text_key!r}")
    if spec[text_key].dtype != tf.string or spec[text_key].shape.rank != 0:
        raise ValueError(
            f"pegasus_gap_sentences: feature {text_key!r} must be one string per example "
            f"(raw text, before tokenize), got {spec[text_key]}"
        )
    vocabulary = output_features["targets"].vocabulary
    if (
        input_feature_key in output_features
        and output_features[input_feature_key].vocabulary != vocabulary
    ):
        raise ValueError("pegasus_gap_sentences: inputs and targets must share one vocabulary")
    budgets = {}
    for key in (input_feature_key, "targets"):
        feature = output_features.get(key)
        budgets[key] = int(sequence_length[key]) - (1 if feature is None or feature.add_eos else 0)
    generator = GapSentenceGenerator(
        vocabulary,
        budgets[input_feature_key],
        budgets["targets"],
        strategy=strategy,
        gap_ratio=gap_ratio,
        sentence_splitter=sentence_splitter,
        rouge_stopwords=rouge_stopwords,
        rouge_use_stemmer=rouge_use_stemmer,
        dynamic_min_ratio=dynamic_min_ratio,
        score_noise=score_noise,
        score_noise_per_document=score_noise_per_document,
        sentence_mask_probs=sentence_mask_probs,
        mlm_ratio=mlm_ratio,
        mlm_probs=mlm_probs,
    )

    @seqio.map_over_dataset(num_seeds=1)
    def gap_sentences_one(features, seed):
        inputs, targets, labels = tf.numpy_function(
            generator.arrays,
            [features[text_key], seed],
            [tf.int32, tf.int32, tf.int32],
            stateful=False,
        )
        out = {input_feature_key: inputs, "targets": targets}
        if mlm_labels_key:
            out[mlm_labels_key] = labels
        for value in out.values():
            value.set_shape([None])
        return out

    return gap_sentences_one(dataset).filter(lambda ex: tf.size(ex["targets"]) > 0)
