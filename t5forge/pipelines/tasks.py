"""seqio data sources, Tasks and Mixtures over corpora built by `build-c4` / `build-mc4`.

The tasks have T5's pipeline shape (t5/data/tasks.py, `c4_v220_*`):

    rekey({"inputs": None, "targets": "text"}) -> seqio.preprocessors.tokenize
    -> seqio.CacheDatasetPlaceholder() -> objective -> append_eos_after_trim

so, for the same documents in the same order and the same seed, they yield the
examples T5's registered tasks yield. Two objectives have no t5 task: `pegasus_gsg`
(PEGASUS gap sentences; it finds sentences in the text itself, so its pipeline is
rekey -> CacheDatasetPlaceholder -> pegasus_gap_sentences -> append_eos_after_trim)
and `ul2` (UL2's mixture of denoisers, in the span-corruption pipeline shape). The
corpus may be TFRecord (tf.Example with a "text" bytes feature) or gzipped JSON lines;
both give identical examples.

A directory with a `stats.json` holding "languages" is an mC4 corpus: one task per
language and objective, plus one seqio Mixture per objective whose rates come from
stats.json (mT5's temperature sampling by default, or UniMax).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from t5forge import mixing, preprocessors
from t5forge.vocabularies import get_vocabulary
from t5forge.vocabularies.records import CorpusError, JsonLineError, json_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")
OBJECTIVES = ("span_corruption", "iid_denoising", "prefix_lm", "full_lm", "pegasus_gsg", "ul2")
# Objectives whose preprocessor reads the raw text (no tokenize before the cache).
TEXT_OBJECTIVES = ("pegasus_gsg",)
BYT5_OBJECTIVE = "byt5_span_corruption"
BYT5_MEAN_NOISE_SPAN_LENGTH = 20.0
UNKNOWN_LANGUAGE = "und"
MIXING_METHODS = mixing.METHODS

# `<stem>-<split>.tfrecord-00000-of-00004` or `<stem>-<split>.00000-of-00004.json.gz`
# (also `.jsonl`, `.jsonl.gz`, and names without the shard suffix).
_FILE_RE = re.compile(
    r"^(?P<stem>.+)-(?P<split>train|validation)\."
    r"(?:(?P<tfrecord>tfrecord)(?:-\d+-of-\d+)?"
    r"|(?:\d+-of-\d+\.)?(?P<jsonl>jsonl?)(?:\.gz)?)$"
)
_TASK_NAME_RE = re.compile(r"^[\w.:#]+$")


# ----------------------------------------------------------------------------
# Data sources
# ----------------------------------------------------------------------------


# JSON lines that did not parse, per corpus file: counted and skipped (a damaged record must
# not end a long job, nor vanish unnoticed); `malformed_line_counts` reports them. Kept as
# distinct lines, since a pipeline may read a file more than once (epochs, re-iteration).
_malformed_lines: dict[str, set[int]] = collections.defaultdict(set)  # hashes of the lines
_malformed_lock = threading.Lock()


def malformed_line_counts() -> dict[str, int]:
    """Corpus files and how many distinct JSON lines of theirs this process skipped."""
    with _malformed_lock:
        return {name: len(lines) for name, lines in _malformed_lines.items()}


def _parse_json_text(line, filename) -> tuple[bytes, bool]:
    """(UTF-8 "text" field, True) of one JSON line, or (b"", False) for a malformed one,
    which is counted and logged (once per file). Runs in Python via numpy_function."""
    text = json_text(bytes(line))
    if not isinstance(text, JsonLineError):
        return text.encode("utf-8"), True
    error = text.reason
    name = bytes(filename).decode("utf-8", "replace")
    with _malformed_lock:
        first = not _malformed_lines[name]
        _malformed_lines[name].add(hash(bytes(line)))
    if first:
        shown = bytes(line)[:80].decode("utf-8", "replace")
        logger.warning(
            "%s: skipping a line that is not JSON with a string 'text' (%s): %r; further ones "
            "in this file are counted",
            name,
            error,
            shown,
        )
    return b"", False


def _read_jsonl_file(filename: tf.Tensor) -> tf.data.Dataset:
    """{"text": tf.string} examples of one JSON-lines file (gzip if its name ends in .gz)."""
    compression = tf.where(tf.strings.regex_full_match(filename, r".*\.gz"), "GZIP", "")
    lines = tf.data.TextLineDataset(filename, compression_type=compression)
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)

    def parse(line):
        text, ok = tf.numpy_function(
            _parse_json_text, [line, filename], (tf.string, tf.bool), stateful=False
        )
        text.set_shape([])
        ok.set_shape([])
        return {"text": text}, ok

    parsed = lines.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return parsed.filter(lambda example, ok: ok).map(lambda example, ok: example)


class JsonLinesDataSource(seqio.FileDataSource):
    """A seqio source of {"text": tf.string} examples from (gzipped) JSON-lines files.

    Reads the files exactly as `seqio.TFExampleDataSource` reads TFRecords (same
    interleave of files), so a JSON-lines copy of a TFRecord corpus yields the same
    examples in the same order. The JSON is parsed in Python (`tf.numpy_function`),
    so the pipeline cannot be serialised for tf.data service.
    """

    def __init__(
        self,
        split_to_filepattern: Mapping[str, str | Iterable[str]],
        num_input_examples: Mapping[str, int] | None = None,
        caching_permitted: bool = True,
        file_shuffle_buffer_size: int | None = None,
        cycle_length: int = 16,
        block_length: int = 16,
    ):
        super().__init__(
            read_file_fn=_read_jsonl_file,
            split_to_filepattern=split_to_filepattern,
            num_input_examples=num_input_examples,
            caching_permitted=caching_permitted,
            file_shuffle_buffer_size=file_shuffle_buffer_size,
            cycle_length=cycle_length,
            block_length=block_length,
        )


def _scan(directories: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """{format: {split: [files]}} for the corpus files directly inside `directories`."""
    found: dict[str, dict[str, list[str]]] = {}
    for directory in directories:
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            match = _FILE_RE.match(name)
            path = os.path.join(directory, name)
            if name.startswith(".") or not match or not os.path.isfile(path):
                continue
            fmt = "tfrecord" if match["tfrecord"] else "jsonl"
            found.setdefault(fmt, {}).setdefault(match["split"], []).append(path)
    return found


def _detect(directory: str, searched: Sequence[str], fmt: str | None):
    """(format, {split: files}) for a corpus; errors name the directory."""
    if fmt not in (None, "tfrecord", "jsonl"):
        raise ValueError(f"corpus format must be 'tfrecord' or 'jsonl', got {fmt!r}")
    if not os.path.isdir(directory):
        raise CorpusError(f"{directory}: no such corpus directory")
    found = _scan(searched)
    if fmt is None:
        if len(found) > 1:
            raise CorpusError(
                f"{directory}: holds both TFRecord and JSON-lines corpus files; "
                "choose one with format='tfrecord' or format='jsonl'"
            )
        fmt = next(iter(found), None)
    files = found.get(fmt or "", {})
    if not files:
        kind = {"tfrecord": "TFRecord ", "jsonl": "JSON-lines "}.get(fmt or "", "")
        raise CorpusError(
            f"{directory}: no {kind}corpus files (expected <name>-train.tfrecord-* or "
            "<name>-train.*.json.gz, as build-c4 / build-mc4 write them)"
        )
    return fmt, files


def _source(fmt: str, files: Mapping[str, list[str]]) -> seqio.DataSource:
    split_to_files = {split: list(files[split]) for split in SPLITS if files.get(split)}
    if fmt == "tfrecord":
        return seqio.TFExampleDataSource(
            split_to_filepattern=split_to_files,
            feature_description={"text": tf.io.FixedLenFeature([], tf.string)},
        )
    return JsonLinesDataSource(split_to_filepattern=split_to_files)


def corpus_source(directory: str, *, format: str | None = None) -> seqio.DataSource:
    """A seqio source of {"text"} examples over a C4-layout directory or one mC4 language.

    Accepts a `build-c4` output directory (`c4-train.tfrecord-*`, `c4-validation...`)
    or a `build-mc4` language directory (`<lang>/train/c4-<lang>-train...`). The
    format (TFRecord or JSON lines) is detected from the files unless `format` is
    "tfrecord" or "jsonl". Splits are "train" and "validation" (those with files).
    """
    directory = os.fspath(directory)
    searched = [directory] + [os.path.join(directory, split) for split in SPLITS]
    fmt, files = _detect(directory, searched, format)
    return _source(fmt, files)


# ----------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------


def _objective_fns(vocabulary) -> dict[str, Any]:
    """Objective name -> post-cache preprocessor (ByT5's only for byte vocabularies)."""
    fns: dict[str, Any] = {
        "span_corruption": preprocessors.span_corruption,
        "iid_denoising": preprocessors.iid_denoising,
        "prefix_lm": preprocessors.prefix_lm,
        "full_lm": preprocessors.full_lm,
        "pegasus_gsg": preprocessors.pegasus_gap_sentences,
        "ul2": preprocessors.ul2_denoisers,
    }
    if isinstance(vocabulary, seqio.ByteVocabulary):
        fns[BYT5_OBJECTIVE] = functools.partial(
            preprocessors.span_corruption, mean_noise_span_length=BYT5_MEAN_NOISE_SPAN_LENGTH
        )
    return fns


def check_sequence_length(
    sequence_length: Mapping[str, int],
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[int, int]:
    """Checks span-corruption lengths; returns (raw tokens per segment, targets needed).

    Raises ValueError naming the inputs and targets lengths when the targets length
    is shorter than what `random_spans_helper` computes for the inputs length.
    """
    try:
        inputs_length = int(sequence_length["inputs"])
        targets_length = int(sequence_length["targets"])
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"sequence_length must map 'inputs' and 'targets' to lengths, got {sequence_length!r}"
        ) from e
    if inputs_length < 2 or targets_length < 2:
        raise ValueError(
            f"sequence_length inputs {inputs_length} / targets {targets_length}: "
            "both must be at least 2"
        )
    tokens_length, needed = preprocessors.random_spans_helper(
        inputs_length=inputs_length,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        extra_tokens_per_span_inputs=1,
        extra_tokens_per_span_targets=1,
    )
    if targets_length < needed:
        raise ValueError(
            f"sequence_length inputs {inputs_length} / targets {targets_length} is impossible "
            f"for span corruption (noise_density={noise_density}, mean_noise_span_length="
            f"{mean_noise_span_length}): inputs of {inputs_length} tokens need targets of "
            f"{needed} tokens, more than {targets_length}"
        )
    return tokens_length, needed


def _segment_tokens(objective: str, inputs_length: int) -> int | None:
    """Document tokens per segment for an inputs length, for the objectives that cut
    documents by the inputs length (EOS included in it); None for the others."""
    if objective in ("span_corruption", BYT5_OBJECTIVE):
        mean = BYT5_MEAN_NOISE_SPAN_LENGTH if objective == BYT5_OBJECTIVE else 3.0
        return preprocessors.random_spans_helper(inputs_length, 0.15, mean, 1, 1)[0]
    if objective in ("iid_denoising", "prefix_lm"):  # split_tokens_to_inputs_length
        return inputs_length - 1
    return None  # full_lm cuts by targets; pegasus_gsg and ul2 check their own lengths


def minimum_inputs_length(objective: str) -> int | None:
    """The smallest inputs length at which `objective`'s segments hold a document token
    (None where the inputs length does not set the segments).

    Below it, t5 0.9.4 (and t5forge, which keeps its arithmetic) cuts documents into
    segments of 0 tokens: TensorFlow tries to allocate many GiB, then fails with "Paddings
    must be non-negative". Lengths from there up are t5's, kept as they are even where
    seqio's trimming then cuts a sentinel off (span corruption at inputs 2 to 4).
    """
    if _segment_tokens(objective, 1) is None:
        return None
    length = 1
    while _segment_tokens(objective, length) < 1:
        length += 1
    return length


def check_inputs_length(dataset, sequence_length, *, task: str, objective: str, minimum: int):
    """A pass-through step before the objective: refuses an inputs length below `minimum`
    (`minimum_inputs_length`) when the dataset is built, before TensorFlow runs anything."""
    if sequence_length is not None and sequence_length.get("inputs") is not None:
        inputs_length = int(sequence_length["inputs"])
        if inputs_length < minimum:
            raise ValueError(
                f"{task}: sequence length inputs={inputs_length} is too short for {objective} "
                f"(its segments would hold no document tokens); inputs must be at least "
                f"{minimum}"
            )
    return dataset


def _output_features(vocabulary, objective: str) -> dict[str, seqio.Feature]:
    if objective == "full_lm":  # as t5's c4_v220_full_lm: targets only
        return {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def _preprocessors(objective_fn, objective: str, task: str) -> list:
    steps = [
        functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        objective_fn,
    ]
    minimum = minimum_inputs_length(objective)
    if minimum is not None:  # changes no example: it only refuses impossible lengths
        check = functools.partial(
            check_inputs_length, task=task, objective=objective, minimum=minimum
        )
        steps.insert(steps.index(objective_fn), check)
    if objective in TEXT_OBJECTIVES:  # sentences are found in the text, then encoded
        steps.remove(seqio.preprocessors.tokenize)
    if objective != "full_lm":  # t5's full_lm task ends with the objective (EOS is inside)
        steps.append(seqio.preprocessors.append_eos_after_trim)
    return steps


def _remove(name: str) -> None:
    seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove(name)


def _check_free(name: str, replace: bool) -> None:
    if replace:
        _remove(name)
    elif name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
        raise ValueError(f"{name} is already registered (pass replace=True to replace it)")


def _add_task(name, source, vocabulary, objective, objective_fn, replace) -> None:
    _check_free(name, replace)
    seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=_output_features(vocabulary, objective),
        preprocessors=_preprocessors(objective_fn, objective, name),
        metric_fns=[],
    )


def _task_suffix(language: str) -> str:
    return language.replace("-", "_")


def _mc4_rates(stats: Mapping, mixing_method: str, languages: Iterable[str]) -> dict[str, float]:
    """Per-language mixing rates from stats.json (computed from its counts if absent)."""
    section = stats.get("mixing_rates", {}).get(mixing_method, {})
    rates = section.get("rates")
    if rates is None:
        entries = {
            lang: entry for lang, entry in stats["languages"].items() if lang != UNKNOWN_LANGUAGE
        }
        if mixing_method == "temperature":
            pages = {lang: e.get("train_pages", 0) for lang, e in entries.items()}
            rates = mixing.temperature_rates(pages) if any(pages.values()) else {}
        else:
            sizes = {lang: e.get("train_bytes", 0) for lang, e in entries.items()}
            total = sum(sizes.values())
            rates = mixing.unimax_rates(sizes, total) if total else {}
    wanted = set(languages)
    return {lang: float(rate) for lang, rate in rates.items() if lang in wanted and rate > 0}


def _read_stats(corpus_dir: str) -> dict | None:
    path = os.path.join(corpus_dir, "stats.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise CorpusError(f"{path}: not valid JSON ({e})") from e


def register_corpus_tasks(
    prefix: str,
    corpus_dir: str,
    vocabulary,
    *,
    sequence_length: Mapping[str, int] | None = None,
    format: str | None = None,
    objectives: Sequence[str] | None = None,
    mixing_method: str = "temperature",
    replace: bool = True,
) -> list[str]:
    """Registers seqio Tasks (and, for mC4, Mixtures) over a built corpus; returns their names.

    C4 directory: `<prefix>_span_corruption`, `<prefix>_iid_denoising`, `<prefix>_prefix_lm`,
    `<prefix>_full_lm`, `<prefix>_pegasus_gsg` (PEGASUS gap sentences, Ind-Orig at 30%),
    `<prefix>_ul2` (UL2's seven denoisers, uniform weights), and with a byte vocabulary also
    `<prefix>_byt5_span_corruption` (ByT5's mean noise span of 20).

    mC4 directory (a stats.json with "languages"): those tasks per language as
    `<prefix>_<lang>_<objective>` ("-" in codes becomes "_", "und" is skipped), and per
    objective a Mixture `<prefix>_<objective>` over the languages, with stats.json's
    `mixing_method` rates ("temperature", mT5's T = 1/0.3 on train pages, or "unimax").

    Args:
      prefix: name prefix (letters, digits, "_", ".", ":", "#").
      corpus_dir: output directory of build-c4 or build-mc4.
      vocabulary: a seqio vocabulary or a vocabulary spec ("byte", "PATH.model[:N]").
      sequence_length: if given, the lengths you will train with; checked now so that an
        impossible span-corruption configuration fails here rather than mid-training
        (for a byte vocabulary the ByT5 objective is the one checked). When `objectives`
        names "ul2", every UL2 denoiser's lengths and sentinel budget are checked too
        (`preprocessors.ul2_lengths`); otherwise the ul2 task checks them when its
        dataset is built.
      format: "tfrecord" or "jsonl" to choose when a directory holds both.
      objectives: a subset of the objective names above (default: all).
      mixing_method: "temperature" or "unimax" (mC4 only).
      replace: replace tasks/mixtures already registered under these names (else raise).

    Raises:
      CorpusError: the directory is missing or holds no corpus files.
      ValueError: bad prefix, objective, mixing method or impossible sequence_length.
    """
    if not isinstance(prefix, str) or not _TASK_NAME_RE.match(prefix):
        raise ValueError(f"task prefix {prefix!r} may only hold letters, digits, _ . : #")
    if mixing_method not in MIXING_METHODS:
        raise ValueError(f"mixing_method must be one of {MIXING_METHODS}, got {mixing_method!r}")
    if isinstance(vocabulary, (str, os.PathLike)):
        vocabulary = get_vocabulary(os.fspath(vocabulary))
    available = _objective_fns(vocabulary)
    chosen = list(available) if objectives is None else list(objectives)
    unknown = [o for o in chosen if o not in available]
    if unknown:
        raise ValueError(f"unknown objectives {unknown} (available: {sorted(available)})")
    if sequence_length is not None:
        checked = "span_corruption"
        if BYT5_OBJECTIVE in chosen or (
            isinstance(vocabulary, seqio.ByteVocabulary) and "span_corruption" not in chosen
        ):
            checked = BYT5_OBJECTIVE
        if checked in chosen:
            mean = BYT5_MEAN_NOISE_SPAN_LENGTH if checked == BYT5_OBJECTIVE else 3.0
            check_sequence_length(sequence_length, mean_noise_span_length=mean)
        if objectives is not None and "ul2" in chosen:
            preprocessors.ul2_lengths(sequence_length, vocabulary)

    corpus_dir = os.fspath(corpus_dir)
    stats = _read_stats(corpus_dir) if os.path.isdir(corpus_dir) else None
    if not stats or not isinstance(stats.get("languages"), dict):
        source = corpus_source(corpus_dir, format=format)
        names = []
        for objective in chosen:
            name = f"{prefix}_{objective}"
            _add_task(name, source, vocabulary, objective, available[objective], replace)
            names.append(name)
        return names

    sources = {}
    for language in sorted(stats["languages"]):
        if language == UNKNOWN_LANGUAGE:
            continue
        language_dir = os.path.join(corpus_dir, language)
        if not os.path.isdir(language_dir):
            continue  # listed with no pages written
        sources[language] = corpus_source(language_dir, format=format)
    if not sources:
        raise CorpusError(f"{corpus_dir}: stats.json lists no language directories with files")
    rates = _mc4_rates(stats, mixing_method, sources)
    if not rates:
        raise CorpusError(f"{corpus_dir}: no language has {mixing_method} mixing rate above 0")
    task_names, mixture_names = [], []
    for objective in chosen:
        members = []
        for language, source in sources.items():
            name = f"{prefix}_{_task_suffix(language)}_{objective}"
            _add_task(name, source, vocabulary, objective, available[objective], replace)
            task_names.append(name)
            if language in rates:
                members.append((name, rates[language]))
        mixture = f"{prefix}_{objective}"
        _check_free(mixture, replace)
        seqio.MixtureRegistry.add(mixture, members)
        mixture_names.append(mixture)
    return task_names + mixture_names
