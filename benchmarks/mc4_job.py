"""End-to-end mC4 job throughput: t5forge build-mc4 vs TFDS's multilingual graph, one run.

    python benchmarks/mc4_job.py [WET ...]

TFDS's graph is assembled from its own `c4_utils` functions
(tests/c4_reference.py: paragraph_filter, remove_duplicate_text with no
sentence minimum, detect_languages with cld3, the 0.999 soft bad-words filter)
and runs on Beam's default local runner (in-process), as `tfds build` does.
t5forge runs on its default local runner (multi-process) with 1 worker and with
all cores. Outputs are compared; MB/s is compressed WET input per second of
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
import t5forge.beam_jobs.cld3  # noqa: E402, F401, I001 - gcld3 before TensorFlow

SHARED = os.path.join(HERE, "..", "..", "shared", "data", "wet")
DEFAULT_INPUTS = [
    os.path.join(SHARED, "debian-reference-9lang.warc.wet.gz"),
    os.path.join(SHARED, "python-docs-3.11.warc.wet.gz"),
]
BADWORDS = {"de": ["drucker"], "es": ["impresora"], "en": ["printer", "samba"], "zh": ["字体"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", default=DEFAULT_INPUTS)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    from c4_reference import run_tfds_mc4
    from job_table import print_job_table, time_ours
    from test_mc4_job import read_reference, read_tfrecord_corpus

    from t5forge.beam_jobs import job, mc4

    inputs = [os.path.abspath(p) for p in args.inputs]
    mb = sum(os.path.getsize(p) for p in inputs) / 1e6
    print(f"{len(inputs)} WET file(s), {mb:.2f} MB compressed")
    tmp = tempfile.mkdtemp(prefix="mc4-bench-")
    words = {k: set(v) for k, v in BADWORDS.items()}

    start = time.perf_counter()
    run_tfds_mc4(inputs, os.path.join(tmp, "tfds"), badwords=words)
    t_tfds = time.perf_counter() - start
    expected = read_reference(os.path.join(tmp, "tfds"))

    rows = [("TFDS graph, DirectRunner in-process", t_tfds, len(expected), "reference")]
    config = mc4.MC4Config(output_format="tfrecord", badwords=BADWORDS)

    def run(out, workers):
        job.run_job(
            build=lambda p, d, progress: mc4.build_mc4(p, inputs, config, d),
            output_dir=out,
            overwrite=False,
            own_files=mc4.is_output_file,
            beam_args=[],
            workers=workers,
            describe={},
            splits=None,
            funnel=mc4.funnel,
            summarize=mc4.language_summary,
        )

    rows += time_ours(
        "build-mc4", sorted({1, args.workers}), run, read_tfrecord_corpus, expected, tmp
    )

    print_job_table(rows, mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
