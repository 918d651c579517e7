"""Throughput of t5forge's pretraining objectives against t5's, in one run.

    python benchmarks/objectives.py [--docs 40] [--repeats 5] [--seed 7]

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
nothing is changed. Needs tensorflow, seqio, sentencepiece and t5 (reference),
the fixture model tests/fixtures/objectives/spm2000.model and
../shared/data/wet/*.warc.wet.gz. Run from the repository root.
"""

from __future__ import annotations

import argparse
import functools
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40, help="pages of text to use")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only", nargs="*", choices=list(OBJECTIVES), help="objectives to run (default all)"
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

    rows = []
    for label in args.only or OBJECTIVES:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
