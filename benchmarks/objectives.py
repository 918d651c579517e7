"""Throughput of t5forge's pretraining objectives against t5's, in one run.

    python benchmarks/objectives.py [--docs 40] [--repeats 5] [--seed 7]
        [--only OBJECTIVE ...] [--pegasus-docs 300]

What it measures, per objective (span_corruption 512/114; ByT5 span corruption
with bytes, mean span 20, 1024/189; iid_denoising 512/512; prefix_lm 512/512;
full_lm 512):

* the same seqio pipeline (tokenize -> objective -> append_eos_after_trim;
  full_lm appends its own EOS) over the first `--docs` non-empty pages of the
  shared WET files, once with `t5.data.preprocessors` and once with
  `t5forge.preprocessors`, under the same `seqio.map_seed_manager(seed)`;
  every example is materialised with `as_numpy_iterator`;
* each variant is run once to warm up (that run is also compared example for
  example: "identical" means same count, same keys, same tokens), then the two
  are run alternately `--repeats` times and the best time of each is kept;
  dataset construction (tracing) is timed separately from iteration and is not
  part of examples/s;
* where the time goes: the pipeline cut after tokenize (materialised) is timed
  alone, and its share of the whole pipeline is printed; the objective alone is
  then timed too, on tokens cached in memory (no SentencePiece), which gives
  the sharpest ours/t5 ratio.

The goal is ratio (ours / t5 examples per second) >= 0.95. It only measures;
nothing is changed.

Two objectives have no t5 counterpart and get their own tables:

* pegasus_gsg (`pegasus_gap_sentences`, 512/256) over the first
  `--pegasus-docs` pages that C4's cleaning keeps (the text a C4 corpus
  holds): examples/s of the tf.data preprocessor per strategy, the same
  Python generator without tf.data, where a document's time goes (sentence
  splitting + per-sentence encoding, ROUGE tokenization, scoring), and the
  vectorised scorer against a plain-Python reference scorer (collections.
  Counter, one rest-of-document counter per sentence) on the same windows,
  checked to give the same scores and greedy picks;
* ul2 (`ul2_denoisers`, 512/512, uniform weights): examples/s and raw tokens/s
  of the whole pipeline and of the objective alone on cached tokens, next to
  t5's span_corruption at 512/114 in the same run as a yardstick (the same
  building blocks, one denoiser). Needs tensorflow, seqio, sentencepiece and t5 (reference),
the fixture model tests/fixtures/objectives/spm2000.model and
../shared/data/wet/*.warc.wet.gz. Run from the repository root.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
WET_DIR = os.path.join(HERE, "..", "..", "shared", "data", "wet")
WET = [
    os.path.join(WET_DIR, "python-docs-3.11.warc.wet.gz"),
    os.path.join(WET_DIR, "debian-reference-9lang.warc.wet.gz"),
]
SPM_MODEL = os.path.join(HERE, "..", "tests", "fixtures", "objectives", "spm2000.model")
EXTRA_IDS = 100

# label -> (objective function name, vocabulary kind, sequence lengths, kwargs)
OBJECTIVES: dict[str, tuple[str, str, dict[str, int], dict[str, Any]]] = {
    "span_corruption": ("span_corruption", "spm", {"inputs": 512, "targets": 114}, {}),
    "span_corruption_byt5": (
        "span_corruption",
        "byte",
        {"inputs": 1024, "targets": 189},
        {"mean_noise_span_length": 20},
    ),
    "iid_denoising": ("iid_denoising", "spm", {"inputs": 512, "targets": 512}, {}),
    "prefix_lm": ("prefix_lm", "spm", {"inputs": 512, "targets": 512}, {}),
    "full_lm": ("full_lm", "spm", {"targets": 512}, {}),
}


def read_texts(count: int) -> list[str]:
    """The first `count` non-empty pages, alternating between the WET files."""
    from t5forge.beam_jobs.wet import read_wet_file

    per_file = [[p.text for p in read_wet_file(path) if p.text.strip()] for path in WET]
    texts: list[str] = []
    i = 0
    while len(texts) < count and any(i < len(pages) for pages in per_file):
        for pages in per_file:
            if i < len(pages) and len(texts) < count:
                texts.append(pages[i])
        i += 1
    return texts


def features_for(label: str) -> dict[str, Any]:
    """The output features of an objective: fixture SentencePiece model or bytes."""
    import seqio

    _, kind, _, _ = OBJECTIVES[label]
    if kind == "byte":
        vocab = seqio.ByteVocabulary()
    else:
        vocab = seqio.SentencePieceVocabulary(SPM_MODEL, extra_ids=EXTRA_IDS)
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    if OBJECTIVES[label][0] == "full_lm":
        features = {"targets": features["targets"]}
    return features


def text_source(texts: list[str], features: dict[str, Any]):
    """The pipeline up to and including tokenize."""
    import seqio
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
    return seqio.preprocessors.tokenize(ds, features, copy_pretokenized=False)


def token_source(tokens: list[Any]):
    """Cached token ids as a dataset of {'targets': int32 vector}."""
    import numpy as np
    import tensorflow as tf

    flat = np.concatenate(tokens).astype(np.int32)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    ragged = tf.RaggedTensor.from_row_lengths(flat, lengths)
    return tf.data.Dataset.from_tensor_slices({"targets": ragged})


def build(module, label: str, seed: int, source: Callable[[], Any], features):
    """source -> `module`'s objective -> append_eos_after_trim, seeded."""
    import seqio

    name, _, lengths, kwargs = OBJECTIVES[label]
    objective = getattr(module, name)
    with seqio.map_seed_manager(seed):
        ds = source()
        ds = objective(ds, sequence_length=lengths, output_features=features, **kwargs)
        if name != "full_lm":
            ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
    return ds


def materialise(ds) -> list[dict[str, Any]]:
    return list(ds.as_numpy_iterator())


def same_examples(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    import numpy as np

    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if sorted(x) != sorted(y):
            return False
        if not all(np.array_equal(x[k], y[k]) for k in x):
            return False
    return True


def timed(make: Callable[[], Any]) -> tuple[float, float, float, list[dict[str, Any]]]:
    """(build s, iterate wall s, iterate CPU s of all threads, examples) of one run."""
    t0 = time.perf_counter()
    ds = make()
    t1, c1 = time.perf_counter(), time.process_time()
    out = materialise(ds)
    t2, c2 = time.perf_counter(), time.process_time()
    return t1 - t0, t2 - t1, c2 - c1, out


def compare(makers: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Any]:
    """Warm-up run of each maker, then `repeats` alternating runs; best times.

    The order alternates too (t5 first, then ours first, ...), so neither side
    always runs right after the other.
    """
    result: dict[str, Any] = {}
    for name, make in makers.items():
        out = timed(make)[3]
        result[name] = {"examples": out, "build": math.inf, "iterate": math.inf, "cpu": math.inf}
    names = list(makers)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            build_s, iterate_s, cpu_s, _ = timed(makers[name])
            best = result[name]
            best["build"] = min(best["build"], build_s)
            best["iterate"] = min(best["iterate"], iterate_s)
            best["cpu"] = min(best["cpu"], cpu_s)
    return result


# ----------------------------------------------------------------------------
# Objectives without a t5 counterpart
# ----------------------------------------------------------------------------

NEW_OBJECTIVES = ("pegasus_gsg", "ul2")
PEGASUS_LENGTHS = {"inputs": 512, "targets": 256}
PEGASUS_STRATEGIES = ("ind_orig", "seq_orig", "dynamic_rouge", "random")
UL2_LENGTHS = {"inputs": 512, "targets": 512}


def read_clean_texts(count: int) -> list[str]:
    """The first `count` pages C4's cleaning keeps, alternating between the WET files."""
    from t5forge.beam_jobs import cleaning
    from t5forge.beam_jobs.wet import read_wet_file

    per_file = []
    for path in WET:
        cleaned = (cleaning.clean_page(p.text) for p in read_wet_file(path))
        per_file.append([t for t in cleaned if t])
    texts = [t for pair in itertools.zip_longest(*per_file) for t in pair if t]
    return texts[:count]


def reference_ind_scores(token_lists: list[list[str]], unique: bool = False) -> list[float]:
    """Plain-Python Ind scores: ROUGE-1 F1 of each sentence against the rest (Counters)."""
    counts = [collections.Counter(tokens) for tokens in token_lists]
    total: collections.Counter = collections.Counter()
    for c in counts:
        total.update(c)
    scores = []
    for c in counts:
        rest = total - c
        if unique:
            overlap = sum(1 for word in c if rest[word] > 0)
            size = len(c) + len(rest)
        else:
            overlap = sum(min(n, rest[word]) for word, n in c.items())
            size = sum(c.values()) + sum(rest.values())
        scores.append(2.0 * overlap / size if overlap else 0.0)
    return scores


def reference_greedy(token_lists: list[list[str]], num: int) -> list[int]:
    """Plain-Python Seq-Orig: greedy picks maximising F1(picked + s, rest - s), ties later."""
    counts = [collections.Counter(tokens) for tokens in token_lists]
    remaining: collections.Counter = collections.Counter()
    for c in counts:
        remaining.update(c)
    selected: collections.Counter = collections.Counter()
    picked: list[int] = []
    for _ in range(min(num, len(counts))):
        best, best_score = -1, -1.0
        for k, c in enumerate(counts):
            if k in picked:
                continue
            candidate, reference = selected + c, remaining - c
            overlap = sum(min(n, reference[word]) for word, n in candidate.items())
            size = sum(candidate.values()) + sum(reference.values())
            score = 2.0 * overlap / size if overlap else 0.0
            if score >= best_score:
                best, best_score = k, score
        picked.append(best)
        selected += counts[best]
        remaining -= counts[best]
    return picked


def best_iterate(make: Callable[[], Any], repeats: int) -> tuple[float, list[dict[str, Any]]]:
    """(best wall seconds to iterate the dataset `make` builds, examples); builds not timed."""
    examples = timed(make)[3]
    return min(timed(make)[1] for _ in range(repeats)), examples


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(best wall seconds of `repeats` calls after one warm-up, last result)."""
    result = fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_pegasus(texts: list[str], repeats: int, seed: int) -> None:
    import numpy as np
    import seqio
    import tensorflow as tf

    from t5forge.preprocessors import (
        GapSentenceGenerator,
        num_gap_sentences,
        pegasus_gap_sentences,
        rouge,
    )

    vocab = seqio.SentencePieceVocabulary(SPM_MODEL, extra_ids=EXTRA_IDS)
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    inputs_budget = PEGASUS_LENGTHS["inputs"] - 1
    targets_budget = PEGASUS_LENGTHS["targets"] - 1
    print(
        f"\nPEGASUS gap sentences, {PEGASUS_LENGTHS['inputs']}/{PEGASUS_LENGTHS['targets']}, "
        f"{len(texts)} C4-cleaned pages, best of {repeats}:"
    )

    def pipeline(options: dict[str, Any]):
        with seqio.map_seed_manager(seed):
            ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
            ds = pegasus_gap_sentences(ds, PEGASUS_LENGTHS, features, **options)
            return seqio.preprocessors.append_eos_after_trim(ds, features, PEGASUS_LENGTHS)

    header = f"{'variant':<24}{'tf.data ex/s':>13}{'generator ex/s':>16}{'examples':>10}"
    print(header)
    print("-" * len(header))
    variants = [(s, {"strategy": s}) for s in PEGASUS_STRATEGIES] + [
        ("ind_orig + MLM 15%", {"mlm_ratio": 0.15}),
        ("ind_orig, regex split", {"sentence_splitter": "regex"}),
    ]
    for label, options in variants:
        wall, examples = best_iterate(functools.partial(pipeline, options), repeats)
        generator = GapSentenceGenerator(vocab, inputs_budget, targets_budget, **options)
        direct, _ = best_time(
            lambda g=generator: [g(t, (i, seed)) for i, t in enumerate(texts)], repeats
        )
        print(
            f"{label:<24}{len(examples) / wall:>13.0f}{len(texts) / direct:>16.0f}"
            f"{len(examples):>10}"
        )

    # Where a document's time goes, and the scorer against the plain-Python reference.
    generator = GapSentenceGenerator(vocab, inputs_budget, targets_budget)
    window_s, windows = best_time(lambda: [generator.window(t)[0] for t in texts], repeats)
    stop = rouge.get_stopwords("english")
    tokens_s, token_lists = best_time(
        lambda: [[rouge.rouge_tokens(s, stop) for s in w] for w in windows], repeats
    )

    def num_gap(n: int) -> int:
        return num_gap_sentences(n, 0.3)

    def ours_ind():
        return [rouge.independent_scores(rouge.unigram_counts(t)) for t in token_lists]

    def ours_seq():
        return [
            rouge.sequential_selection(rouge.unigram_counts(t), num_gap(len(t)))
            for t in token_lists
        ]

    def ref_ind():
        return [reference_ind_scores(t) for t in token_lists]

    def ref_seq():
        return [reference_greedy(t, num_gap(len(t))) for t in token_lists]

    ours_ind_s, ours_ind_out = best_time(ours_ind, repeats)
    ref_ind_s, ref_ind_out = best_time(ref_ind, repeats)
    ours_seq_s, ours_seq_out = best_time(ours_seq, repeats)
    ref_seq_s, ref_seq_out = best_time(ref_seq, repeats)
    same_ind = all(
        np.allclose(a, b, rtol=0, atol=1e-12)
        for a, b in zip(ours_ind_out, ref_ind_out, strict=True)
    )
    same_seq = [list(a) for a in ours_seq_out] == ref_seq_out
    n_docs = len(texts)
    sentences_per_doc = np.mean([len(w) for w in windows])
    print(
        f"\nPer document (window of {sentences_per_doc:.1f} sentences on average), "
        "microseconds, best of the runs:"
    )
    print(f"  split + encode sentences (window)   {window_s / n_docs * 1e6:>9.0f}")
    print(f"  ROUGE tokens                        {tokens_s / n_docs * 1e6:>9.0f}")
    header = f"  {'scorer':<34}{'ours':>9}{'plain Python':>14}{'speed-up':>10}  same result"
    print(header)
    for name, ours_s, ref_s, same in (
        ("Ind-Orig (all sentences)", ours_ind_s, ref_ind_s, same_ind),
        ("Seq-Orig (greedy, 30%)", ours_seq_s, ref_seq_s, same_seq),
    ):
        print(
            f"  {name:<34}{ours_s / n_docs * 1e6:>9.0f}{ref_s / n_docs * 1e6:>14.0f}"
            f"{ref_s / ours_s:>9.1f}x  {same}"
        )


def bench_ul2(texts: list[str], repeats: int, seed: int) -> None:
    import numpy as np
    import seqio
    import t5.data.preprocessors as reference

    from t5forge.preprocessors import UL2_DENOISERS, span_corruption, ul2_denoisers, ul2_lengths

    vocab = seqio.SentencePieceVocabulary(SPM_MODEL, extra_ids=EXTRA_IDS)
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    tokens = [ex["targets"] for ex in materialise(text_source(texts, features))]
    n_tokens = sum(len(t) for t in tokens)
    from_text = functools.partial(text_source, texts, features)
    from_tokens = functools.partial(token_source, tokens)
    span_lengths = {"inputs": 512, "targets": 114}

    def run(objective, lengths, source):
        with seqio.map_seed_manager(seed):
            ds = objective(source(), lengths, features)
            return seqio.preprocessors.append_eos_after_trim(ds, features, lengths)

    variants = {
        "ul2 (ours)": (ul2_denoisers, UL2_LENGTHS),
        "span_corruption (ours)": (span_corruption, span_lengths),
        "span_corruption (t5)": (reference.span_corruption, span_lengths),
    }
    print(
        f"\nUL2 mixture of denoisers, {UL2_LENGTHS['inputs']}/{UL2_LENGTHS['targets']}, "
        f"{len(texts)} pages ({n_tokens / 1e6:.2f} M tokens), best of {repeats}; "
        "span corruption 512/114 as a yardstick."
    )
    print(f"Per-denoiser lengths with {EXTRA_IDS} extra ids (95 sentinels left for spans):")
    for denoiser, size in zip(UL2_DENOISERS, ul2_lengths(UL2_LENGTHS, vocab), strict=True):
        print(
            f"  {denoiser.name:<12} {denoiser.mode}  raw {size.tokens_length:>4}  inputs "
            f"{size.inputs_length:>3}  targets {size.targets_length:>3}  spans "
            f"{size.num_spans:>3}{'  (shrunk to the sentinel budget)' if size.shrunk else ''}"
        )
    logging.getLogger("t5forge.preprocessors.ul2").setLevel(logging.ERROR)  # said above
    header = (
        f"{'objective':<24}{'whole ex/s':>11}{'alone ex/s':>11}{'alone Mtok/s':>13}"
        f"{'examples':>10}{'mean in/tgt':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, (objective, lengths) in variants.items():
        whole_s, examples = best_iterate(
            functools.partial(run, objective, lengths, from_text), repeats
        )
        alone_s, _ = best_iterate(functools.partial(run, objective, lengths, from_tokens), repeats)
        mean_in = np.mean([len(ex["inputs"]) for ex in examples])
        mean_tgt = np.mean([len(ex["targets"]) for ex in examples])
        print(
            f"{name:<24}{len(examples) / whole_s:>11.0f}{len(examples) / alone_s:>11.0f}"
            f"{n_tokens / alone_s / 1e6:>13.2f}{len(examples):>10}"
            f"{mean_in:>7.0f}/{mean_tgt:<5.0f}"
        )
    print(
        "whole: tokenize -> objective -> append_eos_after_trim; alone: on cached token ids;\n"
        "Mtok/s: raw corpus tokens consumed per second (UL2 examples are longer); dataset\n"
        "construction (tracing) is not timed"
    )


def print_t5_tables(rows: list[dict[str, Any]]) -> None:
    """The whole-pipeline and objective-alone tables of the objectives t5 also has."""

    def ratios(result: dict[str, Any]) -> tuple[float, float]:
        """ours/t5 throughput by wall time and by CPU time."""
        return (
            result["t5"]["iterate"] / result["ours"]["iterate"],
            result["t5"]["cpu"] / result["ours"]["cpu"],
        )

    print()
    print("Whole pipeline (tokenize -> objective -> append_eos_after_trim), examples/s:")
    header = (
        f"{'objective':<22}{'lengths':>10}{'examples':>9}{'t5 ex/s':>9}{'ours ex/s':>10}"
        f"{'ratio':>7}{'cpu ratio':>10}  {'identical':<10}{'tokenize':>9}{'share':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        whole = r["whole"]
        wall, cpu = ratios(whole)
        print(
            f"{r['label']:<22}{r['lengths']:>10}{r['n']:>9}"
            f"{r['n'] / whole['t5']['iterate']:>9.0f}{r['n'] / whole['ours']['iterate']:>10.0f}"
            f"{wall:>7.3f}{cpu:>10.3f}  {str(r['identical']):<10}"
            f"{r['tok_s']:>8.3f}s{r['tok_cpu'] / whole['ours']['cpu']:>7.0%}"
        )
    print(
        "ratio: ours/t5 by wall time; cpu ratio: by CPU time of all threads (less sensitive\n"
        "to other load); tokenize: wall time of the pipeline cut after tokenize,\n"
        "materialised; share: its CPU time over ours' whole-pipeline CPU time"
    )
    print()
    print("Objective alone, on cached token ids (no SentencePiece), examples/s:")
    header = (
        f"{'objective':<22}{'t5 ex/s':>9}{'ours ex/s':>10}{'ratio':>7}{'cpu ratio':>10}"
        f"{'t5 build':>10}{'ours build':>12}{'Mtok/s ours':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        alone = r["alone"]
        wall, cpu = ratios(alone)
        print(
            f"{r['label']:<22}{r['n'] / alone['t5']['iterate']:>9.0f}"
            f"{r['n'] / alone['ours']['iterate']:>10.0f}{wall:>7.3f}{cpu:>10.3f}"
            f"{alone['t5']['build'] * 1e3:>8.0f}ms{alone['ours']['build'] * 1e3:>10.0f}ms"
            f"{r['tokens'] / alone['ours']['iterate'] / 1e6:>13.2f}"
        )
    print("build: constructing/tracing the dataset, not included in examples/s")
    slow = [r["label"] for r in rows if min(ratios(r["whole"]) + ratios(r["alone"])) < 0.95]
    print()
    print(
        f"all identical: {all(r['identical'] for r in rows)}; "
        f"some ratio below 0.95: {', '.join(slow) if slow else 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40, help="pages of text to use")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only",
        nargs="*",
        choices=list(OBJECTIVES) + list(NEW_OBJECTIVES),
        help="objectives to run (default all)",
    )
    parser.add_argument(
        "--pegasus-docs", type=int, default=300, help="C4-cleaned pages for pegasus_gsg"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    import t5.data.preprocessors as reference
    import tensorflow as tf

    import t5forge.preprocessors as ours

    tf.get_logger().setLevel("ERROR")
    texts = read_texts(args.docs)
    n_bytes = sum(len(t.encode()) for t in texts)
    print(
        f"{len(texts)} pages, {n_bytes / 1e6:.2f} MB of text; best of {args.repeats} "
        f"alternating runs after one warm-up; tf {tf.__version__}, {os.cpu_count()} CPUs"
    )

    chosen = args.only or list(OBJECTIVES) + list(NEW_OBJECTIVES)
    rows = []
    for label in [name for name in chosen if name in OBJECTIVES]:
        features = features_for(label)
        _, _, lengths, _ = OBJECTIVES[label]

        # Tokenization alone (also caches the ids for the objective-only runs).
        tok_best = tok_cpu = math.inf
        tokens: list[Any] = []
        for _ in range(args.repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            tokenized = materialise(text_source(texts, features))
            tok_best = min(tok_best, time.perf_counter() - t0)
            tok_cpu = min(tok_cpu, time.process_time() - c0)
            tokens = [ex["targets"] for ex in tokenized]

        from_text = functools.partial(text_source, texts, features)
        from_tokens = functools.partial(token_source, tokens)

        whole = compare(
            {
                "t5": functools.partial(build, reference, label, args.seed, from_text, features),
                "ours": functools.partial(build, ours, label, args.seed, from_text, features),
            },
            args.repeats,
        )
        alone = compare(
            {
                "t5": functools.partial(build, reference, label, args.seed, from_tokens, features),
                "ours": functools.partial(build, ours, label, args.seed, from_tokens, features),
            },
            args.repeats,
        )
        n = len(whole["t5"]["examples"])
        identical = same_examples(whole["t5"]["examples"], whole["ours"]["examples"])
        identical_alone = same_examples(alone["t5"]["examples"], alone["ours"]["examples"])
        rows.append(
            {
                "label": label,
                "lengths": "/".join(str(lengths[k]) for k in ("inputs", "targets") if k in lengths),
                "n": n,
                "tokens": sum(len(t) for t in tokens),
                "tok_s": tok_best,
                "tok_cpu": tok_cpu,
                "whole": whole,
                "alone": alone,
                "identical": identical and identical_alone,
            }
        )
        print(f"  done {label}: {n} examples", flush=True)

    if rows:
        print_t5_tables(rows)
    if "pegasus_gsg" in chosen:
        bench_pegasus(read_clean_texts(args.pegasus_docs), args.repeats, args.seed)
    if "ul2" in chosen:
        bench_ul2(texts, args.repeats, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
