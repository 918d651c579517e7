"""clean_page throughput: t5forge vs TFDS's c4_utils.clean_page, same text, one run.

    python benchmarks/c4_clean.py [WET ...]

Defaults to the shared Python-docs and Debian WET files. For each sentence
counter it runs both implementations over every page, checks the outputs are
identical, and prints MB/s and the speed ratio. TFDS would download the
withdrawn Punkt pickle; it is given the same Punkt tokenizer t5forge uses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "wet")
DEFAULT_INPUTS = [
    os.path.join(SHARED, "python-docs-3.11.warc.wet.gz"),
    os.path.join(SHARED, "debian-reference-9lang.warc.wet.gz"),
]


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", default=DEFAULT_INPUTS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from tensorflow_datasets.text import c4_utils

    from t5forge.beam_jobs import cleaning, sentences, wet

    pages = [p for path in args.inputs for p in wet.read_wet_file(path)]
    mb = sum(len(p.text.encode("utf-8")) for p in pages) / 1e6
    print(f"{len(pages)} pages, {mb:.2f} MB of WET text from {len(args.inputs)} file(s)")
    tfds_clean = c4_utils.get_clean_page_fn()
    punkt = sentences.get_sentence_counter("punkt")
    # TFDS gets its own plain Punkt tokenizer (same parameters, none of our caching).
    plain_punkt = sentences._new_punkt_tokenizer()

    def tfds_punkt(text):
        return len(plain_punkt.tokenize(text))

    english = sentences.punkt_has_english_parameters()
    print("punkt parameters:", "NLTK English" if english else "Punkt defaults (not installed)")

    def run_tfds(count):
        c4_utils._get_sentences = lambda text: [None] * count(text)
        out = []
        for p in pages:
            kept = list(tfds_clean(p, counter_inc_fn=lambda *a: None))
            out.append(kept[0].text if kept else None)
        return out

    def run_ours(count):
        return [cleaning.clean_page(p.text, count_sentences=count) for p in pages]

    def trivial(text):
        return 1

    rows = []
    t_ref, ref = best_of(lambda: run_tfds(tfds_punkt), args.repeats)
    for label, count in (
        ("punkt (both)", punkt),
        ("regex (ours) vs punkt (TFDS)", sentences.get_sentence_counter("regex")),
    ):
        t_ours, ours = best_of(lambda count=count: run_ours(count), args.repeats)
        same = sum(a == b for a, b in zip(ours, ref, strict=True))
        rows.append((label, mb / t_ref, mb / t_ours, t_ref / t_ours, f"{same}/{len(pages)}"))
    t_ref_trivial, ref_trivial = best_of(lambda: run_tfds(trivial), args.repeats)
    t_ours_trivial, ours_trivial = best_of(lambda: run_ours(trivial), args.repeats)
    same = sum(a == b for a, b in zip(ours_trivial, ref_trivial, strict=True))
    rows.append(
        (
            "1 sentence per line (both)",
            mb / t_ref_trivial,
            mb / t_ours_trivial,
            t_ref_trivial / t_ours_trivial,
            f"{same}/{len(pages)}",
        )
    )

    print(f"\n{'sentence counter':<32}{'TFDS MB/s':>11}{'ours MB/s':>11}{'ratio':>8}  same output")
    for label, ref_speed, our_speed, ratio, same in rows:
        print(f"{label:<32}{ref_speed:>11.2f}{our_speed:>11.2f}{ratio:>7.1f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
