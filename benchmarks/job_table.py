"""The results table shared by the corpus-job benchmarks."""

from __future__ import annotations


def print_job_table(rows: list[tuple[str, float, int, str]], input_mb: float) -> None:
    """rows: (label, seconds, pages, output check); the first row is the reference."""
    reference_seconds = rows[0][1]
    print(f"\n{'job':<40}{'seconds':>9}{'MB/s':>8}{'vs TFDS':>9}{'pages':>7}  output")
    for label, seconds, pages, check in rows:
        print(
            f"{label:<40}{seconds:>9.1f}{input_mb / seconds:>8.3f}"
            f"{reference_seconds / seconds:>8.2f}x{pages:>7}  {check}"
        )
