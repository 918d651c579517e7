"""End-to-end C4 job throughput: t5forge build-c4 vs TFDS's C4 graph, same files, one run.

    python benchmarks/c4_job.py [WET ...]

TFDS's graph is assembled from its own `c4_utils` functions (tests/c4_reference.py)
and runs on Beam's default local runner (in-process), as `tfds build` does; it
gets the same Punkt tokenizer t5forge uses and the same bad-words list. t5forge
runs on its default local runner (multi-process) with 1 worker and with all
cores. Both outputs are compared; MB/s is compressed WET input per second of
wall time, pipeline start-up included.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "wet")
DEFAULT_INPUTS = [
    os.path.join(SHARED, "python-docs-3.11.warc.wet.gz"),
    os.path.join(SHARED, "debian-reference-9lang.warc.wet.gz"),
]
BADWORDS = ["kill", "abort", "naked", "slave", "strip tease"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", default=DEFAULT_INPUTS)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    from c4_reference import run_tfds_c4
    from job_table import print_job_table, time_ours
    from test_c4_job import read_reference, read_tfrecord_corpus

    from t5forge.beam_jobs import c4, job, sentences

    inputs = [os.path.abspath(p) for p in args.inputs]
    mb = sum(os.path.getsize(p) for p in inputs) / 1e6
    print(f"{len(inputs)} WET file(s), {mb:.2f} MB compressed")
    tmp = tempfile.mkdtemp(prefix="c4-bench-")

    # TFDS gets its own plain Punkt tokenizer (same parameters, none of our caching).
    plain_punkt = sentences._new_punkt_tokenizer()
    start = time.perf_counter()
    run_tfds_c4(
        inputs,
        os.path.join(tmp, "tfds"),
        lambda text: len(plain_punkt.tokenize(text)),
        badwords={"en": set(BADWORDS)},
    )
    t_tfds = time.perf_counter() - start
    expected = read_reference(os.path.join(tmp, "tfds"))

    rows = [("TFDS graph, DirectRunner in-process", t_tfds, len(expected), "reference")]
    config = c4.C4Config(badwords={"en": BADWORDS})

    def run(out, workers):
        job.run_job(
            build=lambda p, d, progress: c4.build_c4(p, inputs, config, d),
            output_dir=out,
            overwrite=False,
            own_files=lambda n: True,
            beam_args=[],
            workers=workers,
            describe={},
            splits=c4.SPLITS,
            funnel=c4.funnel,
        )

    rows += time_ours(
        "build-c4", sorted({1, args.workers}), run, read_tfrecord_corpus, expected, tmp
    )

    print_job_table(rows, mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
