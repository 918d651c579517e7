"""Timing t5forge's jobs and printing the table, shared by the corpus-job benchmarks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def time_ours(
    job_name: str,
    worker_counts: list[int],
    run: Callable[[str, int], object],
    read_corpus: Callable[[str], set],
    expected: set,
    tmp: str,
) -> list[tuple[str, float, int, str]]:
    """Rows for `run(output_dir, workers)` at each worker count, checked against `expected`."""
    rows = []
    for workers in worker_counts:
        out = os.path.join(tmp, f"ours-{workers}")
        start = time.perf_counter()
        run(out, workers)
        elapsed = time.perf_counter() - start
        got = read_corpus(out)
        check = "identical" if got == expected else "DIFFERENT"
        rows.append((f"t5forge {job_name}, {workers} worker(s)", elapsed, len(got), check))
    return rows


def print_job_table(rows: list[tuple[str, float, int, str]], input_mb: float) -> None:
    """rows: (label, seconds, pages, output check); the first row is the reference."""
    reference_seconds = rows[0][1]
    print(f"\n{'job':<40}{'seconds':>9}{'MB/s':>8}{'vs TFDS':>9}{'pages':>7}  output")
    for label, seconds, pages, check in rows:
        print(
            f"{label:<40}{seconds:>9.1f}{input_mb / seconds:>8.3f}"
            f"{reference_seconds / seconds:>8.2f}x{pages:>7}  {check}"
        )
