"""Does seqio's packing limit throughput, compared with the objective itself?

    python benchmarks/packing.py [--docs 40] [--repeats 3] [--batch-size 32]

Builds pretraining examples with t5forge's objectives from real text (the first
`--docs` non-empty pages of the shared WET files, tokenized with the fixture
model tests/fixtures/objectives/spm2000.model) and times, on the same cached
token ids:

* objective: tokens -> objective -> append_eos_after_trim (what feeds a
  feature converter), materialised;
* pack=False / pack=True: the seqio feature converter alone, on the objective's
  examples cached in memory, materialised;
* objective+pack: the objective followed by the packing converter, end to end.

Setups: span_corruption 512/114 with `seqio.EncDecFeatureConverter`, prefix_lm
with `seqio.DecoderFeatureConverter` (inputs 512 + targets 512 -> decoder
length 1024) and full_lm 1024 with `seqio.DecoderFeatureConverter`.

Reported per row: input examples/s, output rows/s, batches/s (rows/s over
`--batch-size`, without actually batching), rows per input example, and the
packing efficiency, i.e. the non-padding fraction of the model's token slots
(encoder and decoder separately for encoder-decoder). Best of `--repeats`
runs after one warm-up; dataset construction (tracing) is timed apart
and excluded from the rates. Run from the repository root; needs tensorflow and seqio.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from typing import Any

from objectives import REPO, SPM_MODEL, read_texts  # same corpus and model as that benchmark

# name -> (objective, objective lengths, converter kind, converter task lengths)
SETUPS: dict[str, tuple[str, dict[str, int], str, dict[str, int]]] = {
    "span_corruption enc-dec": (
        "span_corruption",
        {"inputs": 512, "targets": 114},
        "encdec",
        {"inputs": 512, "targets": 114},
    ),
    "prefix_lm decoder": (
        "prefix_lm",
        {"inputs": 512, "targets": 512},
        "decoder",
        {"inputs": 512, "targets": 512},
    ),
    "full_lm decoder": ("full_lm", {"targets": 1024}, "decoder", {"targets": 1024}),
}


def ragged_dataset(rows: list[dict[str, Any]]):
    """A dataset of {key: int32 vector} from examples cached as numpy arrays."""
    import numpy as np
    import tensorflow as tf

    columns = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        flat = np.concatenate(values).astype(np.int32)
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        columns[key] = tf.RaggedTensor.from_row_lengths(flat, lengths)
    return tf.data.Dataset.from_tensor_slices(columns)


def objective_dataset(name, lengths, features, tokens, seed):
    """Cached tokens -> our objective -> append_eos_after_trim."""
    import seqio

    import t5forge.preprocessors as ours

    with seqio.map_seed_manager(seed):
        ds = ragged_dataset([{"targets": t} for t in tokens])
        ds = getattr(ours, name)(ds, sequence_length=lengths, output_features=features)
        if name != "full_lm":
            ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
    return ds


def converter(kind: str, pack: bool):
    import seqio

    if kind == "encdec":
        return seqio.EncDecFeatureConverter(pack=pack)
    return seqio.DecoderFeatureConverter(pack=pack)


def convert_cached(kind: str, pack: bool, examples, task_lengths):
    """The converter alone, on examples cached in memory."""
    return converter(kind, pack)(ragged_dataset(examples), task_lengths)


def convert_objective(kind: str, make_objective, task_lengths):
    """The objective followed by the packing converter."""
    return converter(kind, True)(make_objective(), task_lengths)


def best_time(make, repeats: int) -> tuple[float, float, list[dict[str, Any]]]:
    """Best (build s, iterate s, examples) of `make()`, after one warm-up.

    build is constructing (tracing) the dataset; iterate is materialising it.
    """
    out = list(make().as_numpy_iterator())
    build = iterate = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        ds = make()
        t1 = time.perf_counter()
        out = list(ds.as_numpy_iterator())
        build = min(build, t1 - t0)
        iterate = min(iterate, time.perf_counter() - t1)
    return build, iterate, out


def efficiency(rows: list[dict[str, Any]], keys: list[str]) -> list[float]:
    """Non-padding fraction of the token slots of each feature in `keys`."""
    import numpy as np

    fractions = []
    for key in keys:
        arrays = [row[key] for row in rows]
        slots = sum(a.size for a in arrays)
        fractions.append(sum(int(np.count_nonzero(a)) for a in arrays) / slots)
    return fractions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40, help="pages of text to use")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    import seqio
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    texts = read_texts(args.docs)
    vocab = seqio.SentencePieceVocabulary(SPM_MODEL, extra_ids=100)
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    tokenized = seqio.preprocessors.tokenize(
        tf.data.Dataset.from_tensor_slices({"targets": texts}), features, copy_pretokenized=False
    )
    tokens = [ex["targets"] for ex in tokenized.as_numpy_iterator()]
    print(
        f"{len(texts)} pages, {sum(len(t) for t in tokens)} tokens; best of {args.repeats} "
        f"runs after one warm-up; batches/s = rows/s / {args.batch_size}; {os.cpu_count()} CPUs"
    )

    table = []
    for label, (name, lengths, kind, task_lengths) in SETUPS.items():
        feats = {"targets": features["targets"]} if name == "full_lm" else features
        make_objective = functools.partial(
            objective_dataset, name, lengths, feats, tokens, args.seed
        )
        build_s, objective_s, examples = best_time(make_objective, args.repeats)
        n = len(examples)
        keys = (
            ["encoder_input_tokens", "decoder_target_tokens"]
            if kind == "encdec"
            else ["decoder_target_tokens"]
        )
        table.append((label, "objective", n, objective_s, build_s, None, None))
        for pack in (False, True):
            convert = functools.partial(convert_cached, kind, pack, examples, task_lengths)
            build_s, seconds, rows = best_time(convert, args.repeats)
            table.append(
                (label, f"pack={pack}", n, seconds, build_s, len(rows), efficiency(rows, keys))
            )

        end_to_end = functools.partial(convert_objective, kind, make_objective, task_lengths)
        build_s, seconds, rows = best_time(end_to_end, args.repeats)
        table.append(
            (label, "objective+pack", n, seconds, build_s, len(rows), efficiency(rows, keys))
        )
        print(f"  done {label}: {n} examples", flush=True)

    print()
    header = (
        f"{'setup':<25}{'stage':<16}{'examples':>9}{'ex/s':>9}{'rows':>7}{'rows/s':>9}"
        f"{'batch/s':>9}{'rows/ex':>8}{'build':>8}  efficiency (non-padding)"
    )
    print(header)
    print("-" * len(header))
    for label, stage, n, seconds, build_s, rows_out, eff in table:
        if rows_out is None:
            print(f"{label:<25}{stage:<16}{n:>9}{n / seconds:>9.0f}{build_s * 1e3:>47.0f}ms")
            continue
        eff_text = " / ".join(f"{e:.1%}" for e in eff)
        if len(eff) == 2:
            eff_text = f"enc {eff[0]:.1%} / dec {eff[1]:.1%}"
        print(
            f"{label:<25}{stage:<16}{n:>9}{n / seconds:>9.0f}{rows_out:>7}"
            f"{rows_out / seconds:>9.0f}{rows_out / seconds / args.batch_size:>9.1f}"
            f"{rows_out / n:>8.2f}{build_s * 1e3:>6.0f}ms  {eff_text}"
        )

    # Conclusion: packing limits throughput if pack=True alone is not clearly
    # faster than the objective that feeds it.
    verdicts = []
    for i in range(0, len(table), 4):
        label, _, n, objective_s, _, _, _ = table[i]
        pack_s = table[i + 2][3]
        verdicts.append((label, (n / pack_s) / (n / objective_s)))
    slowest = min(verdicts, key=lambda v: v[1])
    limiting = [label for label, ratio in verdicts if ratio < 1.0]
    print("ex/s, rows/s, batch/s exclude build (constructing/tracing the dataset, one-off)")
    print()
    print(
        "conclusion: "
        + (
            f"seqio's packing alone is slower than the objective feeding it for "
            f"{', '.join(limiting)} (pack=True ex/s / objective ex/s: "
            + ", ".join(f"{ratio:.2f}" for _, ratio in verdicts)
            + "), so packing, not the objective, limits throughput there"
            if limiting
            else "seqio's packing alone is faster than the objective in every setup "
            f"(at least {slowest[1]:.1f}x, {slowest[0]}), so it does not limit throughput"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
