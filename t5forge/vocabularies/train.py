"""Training a SentencePiece vocabulary the way T5 and mT5 did.

Sentences are the non-empty lines of corpus documents (C4 documents are
paragraphs joined with newlines). Up to `sample_sentences` of them are drawn
by seeded reservoir sampling; a `build-mc4` output directory is sampled per
language with mT5's temperature rule (rate proportional to train_pages ** (1/T),
"und" left out), reading only `<lang>/train/`. The model keeps T5's id layout
(pad 0, eos 1, unk 2, no BOS); the sentinel ("extra") ids are not in the model:
seqio's SentencePieceVocabulary appends them when it loads the file, so the
count is only recorded in `PREFIX.settings.json`.

The same inputs and seed give the same sample and a byte-identical .model:
the sentences are handed to SentencePiece already sampled (it neither samples
nor shuffles them), with a fixed thread count, and the temporary paths it
writes into the model's trainer_spec are cleared afterwards.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tqdm import tqdm

from t5forge import __version__, mixing
from t5forge.paths import missing_dirs, remove_empty_dirs
from t5forge.vocabularies.records import CorpusError, corpus_files, iter_documents

MODEL_TYPES = ("unigram", "bpe")
# SentencePiece's own default; fixed rather than os.cpu_count() so the model
# does not depend on the machine it was trained on.
NUM_THREADS = 16
UNDETERMINED = "und"
SUFFIXES = (".model", ".vocab", ".settings.json")


@dataclasses.dataclass
class Source:
    """Corpus files sampled together with one quota (one language, or all input)."""

    name: str
    files: list[str]
    quota: int = 0
    train_pages: int | None = None
    rate: float | None = None
    seen: int = 0
    sampled: int = 0


def output_paths(output_prefix: str) -> list[str]:
    """PREFIX.model, PREFIX.vocab and PREFIX.settings.json."""
    return [output_prefix + suffix for suffix in SUFFIXES]


def read_stats(directory: str) -> dict | None:
    """The stats.json of a build-c4/build-mc4 output directory, or None if it has none."""
    path = os.path.join(directory, "stats.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: unreadable stats file ({e})") from e
    if not isinstance(stats, dict):
        raise CorpusError(f"{path}: not a JSON object")
    return stats


def language_quotas(
    train_pages: dict[str, int], sample_sentences: int, temperature: float
) -> dict[str, tuple[float, int]]:
    """(rate, quota) per language, rate proportional to pages ** (1/temperature).

    This is mT5's language sampling (alpha = 1/temperature = 0.3 by default).
    "und" and languages without train pages get nothing. Quotas are rounded by
    largest remainder so that they add up to `sample_sentences` exactly.
    """
    pages = {lang: n for lang, n in train_pages.items() if lang != UNDETERMINED and n > 0}
    if not pages:
        return {}
    rates = mixing.temperature_rates(pages, temperature)
    exact = {lang: sample_sentences * rate for lang, rate in rates.items()}
    quotas = {lang: math.floor(x) for lang, x in exact.items()}
    left = sample_sentences - sum(quotas.values())
    by_remainder = sorted(exact, key=lambda lang: (quotas[lang] - exact[lang], lang))
    for lang in by_remainder[:left]:
        quotas[lang] += 1
    return {lang: (rates[lang], quotas[lang]) for lang in rates}


def _mc4_train_pages(directory: str, stats: dict) -> dict[str, int]:
    """train_pages per language from a build-mc4 stats.json."""
    if not isinstance(stats["languages"], dict):
        raise CorpusError(f'{directory}/stats.json: "languages" is not an object')
    pages = {}
    for lang, counts in stats["languages"].items():
        try:
            pages[lang] = int(counts.get("train_pages", 0))
        except (AttributeError, TypeError, ValueError) as e:
            raise CorpusError(f"{directory}/stats.json: bad counts for {lang!r}") from e
    return pages


def _c4_train_files(directory: str) -> list[str]:
    """The train shards of a build-c4 output directory (validation is left out)."""
    files = [
        path for path in corpus_files(directory) if os.path.basename(path).startswith("c4-train.")
    ]
    if not files:
        raise CorpusError(f"{directory}: build-c4 output holds no c4-train files")
    return files


def _mc4_language_train_files(directory: str) -> list[str] | None:
    """The train shards of one language directory of a build-mc4 output (`mc4/de`), or None
    when `directory` is not one. Validation is left out, as for a whole build-c4 directory."""
    parent = os.path.dirname(os.path.abspath(directory))
    stats = read_stats(parent)
    if stats is None or "languages" not in stats:
        return None
    train_dir = os.path.join(directory, "train")
    return corpus_files(train_dir) if os.path.isdir(train_dir) else None


def plan_sources(inputs: list[str], sample_sentences: int, temperature: float) -> list[Source]:
    """What to read and how many sentences to keep from each part.

    Files, plain directories, build-c4 directories and one language of a build-mc4 directory
    (`mc4/de`: its train shards) form a single pool.
    build-mc4 directories (stats.json with "languages") are split by language
    with temperature quotas; several of them are merged language by language.
    Mixing the two kinds is refused: there is no rule for weighting them.
    """
    pool: list[str] = []
    pages: dict[str, int] = {}
    language_files: dict[str, list[str]] = {}
    for path in inputs:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or directory")
        stats = read_stats(path) if os.path.isdir(path) else None
        if stats is None:
            language_train = _mc4_language_train_files(path) if os.path.isdir(path) else None
            pool.extend(language_train if language_train is not None else corpus_files(path))
        elif "languages" not in stats:
            pool.extend(_c4_train_files(path))
        else:
            for lang, count in _mc4_train_pages(path, stats).items():
                pages[lang] = pages.get(lang, 0) + count
                if lang != UNDETERMINED and count > 0:
                    train_dir = os.path.join(path, lang, "train")
                    language_files.setdefault(lang, []).extend(corpus_files(train_dir))
    if pool and pages:
        raise ValueError("cannot mix build-mc4 directories with other inputs: " + ", ".join(inputs))
    if pool:
        return [Source("", pool, sample_sentences)]
    quotas = language_quotas(pages, sample_sentences, temperature)
    return [
        Source(lang, language_files[lang], quota, pages[lang], rate)
        for lang, (rate, quota) in quotas.items()
    ]


def iter_sentences(
    files: Iterable[str], damage: collections.Counter | None = None
) -> Iterator[str]:
    """The non-empty lines (stripped) of every document of `files`, in order; damaged records
    are counted in `damage` and skipped (`records.iter_documents`)."""
    for path in files:
        for document in iter_documents(path, damage=damage):
            for line in document.split("\n"):
                line = line.strip()
                if line:
                    yield line


def reservoir_sample(items: Iterable[str], k: int, rng: random.Random) -> tuple[list[str], int]:
    """A uniform sample of at most k items from a stream (Algorithm R), and the stream length."""
    sample: list[str] = []
    seen = 0
    for seen, item in enumerate(items, 1):
        if len(sample) < k:
            sample.append(item)
        else:
            slot = rng.randrange(seen)
            if slot < k:
                sample[slot] = item
    return sample, seen


def sample_corpus(
    inputs: list[str],
    sample_sentences: int,
    seed: int = 0,
    temperature: float = 1 / 0.3,
    damage: collections.Counter | None = None,
    progress: bool = False,
) -> tuple[list[str], list[Source]]:
    """The sentences to train on and, per source, its quota and counts.

    One `random.Random(seed)` drives every reservoir, sources in a fixed
    order, so the same inputs and seed always give the same sample. A language
    with fewer sentences than its quota gives all it has; the shortfall is not
    handed to other languages, which would tilt the mix toward big ones.
    `progress` shows a running count of the sentences read, per source, on stderr.
    """
    sources = plan_sources(inputs, sample_sentences, temperature)
    rng = random.Random(seed)
    sentences: list[str] = []
    for source in sources:
        if source.quota <= 0:
            continue
        sentences_of_source = tqdm(
            iter_sentences(source.files, damage),
            desc=f"read {source.name or 'corpus'} ({len(source.files)} file(s))",
            unit=" sentences",
            unit_scale=True,
            disable=not progress,
        )
        kept, source.seen = reservoir_sample(sentences_of_source, source.quota, rng)
        source.sampled = len(kept)
        sentences.extend(kept)
    if not sentences:
        raise ValueError(f"no sentences to train on in {', '.join(inputs)}")
    return sentences, sources


def trainer_arguments(
    vocab_size: int, model_type: str, character_coverage: float | None, byte_fallback: bool
) -> dict:
    """SentencePieceTrainer arguments besides input and model_prefix (T5's id layout)."""
    return {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "pad_id": 0,
        "eos_id": 1,
        "unk_id": 2,
        "bos_id": -1,
        "byte_fallback": byte_fallback,
        # The sample is already drawn: SentencePiece must take all of it as is.
        "input_sentence_size": 0,
        "shuffle_input_sentence": False,
        "num_threads": NUM_THREADS,
        # None: SentencePiece's default (0.9995), left out of the call.
        "character_coverage": character_coverage,
    }


def _vocab_size_error(error: RuntimeError, vocab_size: int, count: int, inputs: list[str]):
    """A ValueError for SentencePiece's vocabulary size complaints, or None for others."""
    message = str(error)
    where = f"the {count} sentences sampled from {', '.join(inputs)}"
    high = re.search(r"Vocabulary size too high.*<= (\d+)", message)
    if high:
        return ValueError(
            f"vocab_size {vocab_size} is too large for {where}: "
            f"SentencePiece can make at most {high.group(1)} pieces from them"
        )
    low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if low:
        return ValueError(
            f"vocab_size {vocab_size} is too small for {where}: the characters to "
            f"cover and the special pieces need {low.group(2)}"
        )
    return None


def _train(
    sentences: list[str], work_dir: str, trainer_args: dict, seed: int, inputs: list[str]
) -> str:
    """Trains in `work_dir` from a sentence file; returns the model prefix there."""
    sentence_file = os.path.join(work_dir, "sentences.txt")
    with open(sentence_file, "w", encoding="utf-8") as f:
        for sentence in sentences:
            f.write(sentence + "\n")
    prefix = os.path.join(work_dir, "spm")
    args = {key: value for key, value in trainer_args.items() if value is not None}
    spm.set_random_generator_seed(seed)  # SentencePiece's only seeding hook
    try:
        spm.SentencePieceTrainer.Train(
            input=sentence_file, model_prefix=prefix, minloglevel=1, **args
        )
    except RuntimeError as e:
        friendly = _vocab_size_error(e, trainer_args["vocab_size"], len(sentences), inputs)
        if friendly:
            raise friendly from e
        raise
    return prefix


def _strip_temporary_paths(model_path: str) -> str:
    """Clears the temp input/prefix paths from the trainer_spec; returns the sha256."""
    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    proto.trainer_spec.ClearField("input")
    proto.trainer_spec.ClearField("model_prefix")
    data = proto.SerializeToString(deterministic=True)
    with open(model_path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def _check_free(paths: list[str]) -> None:
    for path in paths:
        if os.path.exists(path):
            raise FileExistsError(
                f"{path} already exists (--overwrite, or overwrite=True, replaces it)"
            )


def _publish(sources: list[str], targets: list[str], overwrite: bool) -> None:
    """Renames the finished files into place; on failure takes back what was moved."""
    if not overwrite:
        _check_free(targets)
    moved = []
    try:
        for source, target in zip(sources, targets, strict=True):
            os.replace(source, target)
            moved.append(target)
    except BaseException:
        for target in moved:
            os.remove(target)
        raise


def _source_report(sources: list[Source]) -> dict | None:
    """Per-language quota and counts for the settings (None for a single pool)."""
    if len(sources) == 1 and not sources[0].name:
        return None
    return {
        s.name: {
            "train_pages": s.train_pages,
            "rate": s.rate,
            "quota": s.quota,
            "sentences_seen": s.seen,
            "sentences_sampled": s.sampled,
        }
        for s in sources
    }


def _check_arguments(
    inputs: list[str],
    vocab_size: int,
    model_type: str,
    extra_ids: int,
    sample_sentences: int,
    temperature: float,
) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, not {model_type!r}")
    if not inputs:
        raise ValueError("no inputs given")
    for flag, value, ok, needs in (
        ("--vocab-size", vocab_size, vocab_size >= 1, "positive"),
        ("--sample-sentences", sample_sentences, sample_sentences >= 1, "positive"),
        ("--extra-ids", extra_ids, extra_ids >= 0, "not negative"),
        ("--temperature", temperature, temperature > 0, "above 0"),
    ):
        if not ok:
            raise ValueError(f"{flag} must be {needs}, got {value}")


def train_sentencepiece(
    inputs: list[str],
    output_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float | None = None,
    byte_fallback: bool = False,
    extra_ids: int = 100,
    sample_sentences: int = 1_000_000,
    seed: int = 0,
    temperature: float = 1 / 0.3,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Trains PREFIX.model/.vocab from corpus `inputs`; writes and returns the settings.

    `character_coverage` None keeps SentencePiece's default. `extra_ids` is
    recorded, not built in (seqio appends the sentinels at load time).
    Outputs appear all at once or not at all: everything is made in a
    temporary directory next to them and renamed into place at the end.
    `progress` reports reading (a running count) and training (start, time taken) on stderr.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = list(inputs)
    _check_arguments(inputs, vocab_size, model_type, extra_ids, sample_sentences, temperature)
    if character_coverage is not None and not 0 < character_coverage <= 1:
        raise ValueError(f"--character-coverage must be in (0, 1], got {character_coverage}")
    if not os.path.basename(output_prefix) or os.path.isdir(output_prefix):
        raise ValueError(
            f"--output {output_prefix}: a directory; give a file prefix such as "
            f"{os.path.join(output_prefix, 'spm')} (writes .model, .vocab, .settings.json)"
        )
    targets = output_paths(output_prefix)
    if not overwrite:
        _check_free(targets)
    damage: collections.Counter = collections.Counter()
    sentences, sources = sample_corpus(
        inputs, sample_sentences, seed, temperature, damage, progress=progress
    )
    trainer_args = trainer_arguments(vocab_size, model_type, character_coverage, byte_fallback)

    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    created = missing_dirs(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.basename(output_prefix)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{name}.", suffix=".tmp", dir=out_dir) as work:
            if progress:
                print(
                    f"training SentencePiece ({model_type}, {vocab_size} pieces) on "
                    f"{len(sentences):,} sentences...",
                    file=sys.stderr,
                    flush=True,
                )
            started = time.monotonic()
            prefix = _train(sentences, work, trainer_args, seed, inputs)
            if progress:
                print(f"trained in {time.monotonic() - started:.1f} s", file=sys.stderr)
            settings = {
                "t5forge_version": __version__,
                "sentencepiece_version": spm.__version__,
                "inputs": inputs,
                "seed": seed,
                "sample_sentences": sample_sentences,
                "sentences_seen": sum(s.seen for s in sources),
                "sentences_sampled": len(sentences),
                "damaged_records_skipped": dict(sorted(damage.items())),
                "temperature": temperature,
                "languages": _source_report(sources),
                "extra_ids": extra_ids,
                "trainer": trainer_args,
                "model_file": name + ".model",
                "model_sha256": _strip_temporary_paths(prefix + ".model"),
            }
            with open(prefix + ".settings.json", "w", encoding="utf-8") as f:
                json.dump(settings, f, indent=2, ensure_ascii=False)
                f.write("\n")
            # .model goes last, so a .model on disk always has its .vocab and settings.
            finished = [prefix + suffix for suffix in SUFFIXES]
            _publish(finished[::-1], targets[::-1], overwrite)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return settings
