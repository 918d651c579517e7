"""Running a corpus job: pipeline options, atomic output, and stats.json.

All shards are written into a hidden temporary directory inside the output
directory and moved into place only after the pipeline succeeded, so a failed
or interrupted job leaves no partial corpus behind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from t5forge.paths import missing_dirs, remove_empty_dirs

STATS_FILE = "stats.json"
_TMP_PREFIX = ".t5forge-tmp-"


class OutputExistsError(FileExistsError):
    """--output already holds files and --overwrite was not given."""


class OutputNotADirectoryError(NotADirectoryError):
    """--output names something that is not a directory (e.g. a regular file)."""


def pipeline_options(beam_args: Iterable[str], workers: int | None):
    """Beam options: the local multi-process runner unless the flags name another."""
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        PipelineOptions,
        StandardOptions,
    )

    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1")
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = "DirectRunner"
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = workers or os.cpu_count() or 1
    return options


def check_output(output_dir: str, overwrite: bool) -> None:
    """Raises if `output_dir` cannot take a new corpus; creates nothing.

    Commands call it before any work, so a wrong --output fails at once with a message about
    --output, not about an internal temporary path.
    """
    from apache_beam.io.filesystems import FileSystems

    if "://" not in output_dir and os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise OutputNotADirectoryError(f"--output {output_dir}: exists and is not a directory")
    if FileSystems.exists(output_dir) and _relative_files(output_dir) and not overwrite:
        raise OutputExistsError(
            f"--output {output_dir} already holds files; pass --overwrite to replace them"
        )


def prepare_output(output_dir: str, overwrite: bool, own_files: Callable[[str], bool]) -> str:
    """Checks the output directory and makes a fresh temporary directory in it."""
    from apache_beam.io.filesystems import FileSystems

    check_output(output_dir, overwrite)
    if not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)
    tmp = FileSystems.join(output_dir, _TMP_PREFIX + uuid.uuid4().hex[:12])
    FileSystems.mkdirs(tmp)
    return tmp


def _relative_files(directory: str) -> list[str]:
    """Paths of all files under `directory`, relative to it, hidden ones excluded."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(directory, "**")
    prefix = directory.rstrip("/") + "/"
    relative = []
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        rel = metadata.path[len(prefix) :] if metadata.path.startswith(prefix) else metadata.path
        if not any(part.startswith(".") for part in rel.split("/")):
            relative.append(rel)
    return sorted(relative)


def finalize_output(tmp_dir: str, output_dir: str, own_files: Callable[[str], bool]) -> list[str]:
    """Replaces the job's old files in `output_dir` with the new ones from `tmp_dir`.

    `own_files` gets paths relative to the output directory.
    """
    from apache_beam.io.filesystems import FileSystems

    old = [FileSystems.join(output_dir, r) for r in _relative_files(output_dir) if own_files(r)]
    if old:
        FileSystems.delete(old)
        if "://" not in output_dir:
            _remove_emptied_dirs(old, output_dir)
    new = _relative_files(tmp_dir)
    sources = [FileSystems.join(tmp_dir, r) for r in new]
    finals = [FileSystems.join(output_dir, r) for r in new]
    for final in finals:
        if "://" not in final:  # local renames need the parent directory
            os.makedirs(os.path.dirname(final), exist_ok=True)
    if new:
        FileSystems.rename(sources, finals)
    FileSystems.delete([tmp_dir])
    return finals


def _remove_emptied_dirs(deleted: list[str], top: str) -> None:
    """Removes the directories that deleting `deleted` left empty (below `top`)."""
    top = os.path.abspath(top)
    parents = {os.path.dirname(os.path.abspath(p)) for p in deleted}
    for directory in sorted(parents, key=len, reverse=True):
        while directory != top and directory.startswith(top) and not os.listdir(directory):
            os.rmdir(directory)
            directory = os.path.dirname(directory)


def discard_output(tmp_dir: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.delete([tmp_dir])
    except Exception:  # noqa: BLE001 - best effort cleanup after a failure
        logging.warning("could not remove temporary directory %s", tmp_dir)


def collect_counters(result) -> dict[str, dict[str, int]]:
    """All Beam counters of a finished pipeline as {namespace: {name: value}}."""
    counters: dict[str, dict[str, int]] = {}
    for c in result.metrics().query()["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        ns = counters.setdefault(c.key.metric.namespace, {})
        ns[c.key.metric.name] = ns.get(c.key.metric.name, 0) + int(value or 0)
    return {ns: dict(sorted(v.items())) for ns, v in sorted(counters.items())}


def split_summary(
    counters: dict[str, dict[str, int]], splits: Iterable[str] | None
) -> dict[str, Any]:
    """Pages, bytes and the length histogram of each split, from the write counters.

    `splits` None means every destination that was written.
    """
    write = counters.get("write", {})
    if splits is None:
        splits = sorted(name[: -len(":pages")] for name in write if name.endswith(":pages"))
    summary = {}
    for split in splits:
        prefix = f"{split}:length_bucket:"
        histogram = {
            int(name[len(prefix) :]): n for name, n in write.items() if name.startswith(prefix)
        }
        summary[split] = {
            "pages": write.get(f"{split}:pages", 0),
            "bytes": write.get(f"{split}:bytes", 0),
            "length_histogram": {
                "bucket_edges_chars": [round(2 ** (k / 4)) for k in sorted(histogram)],
                "bucket_index": sorted(histogram),
                "counts": [histogram[k] for k in sorted(histogram)],
                "note": "bucket k counts documents of [2**(k/4), 2**((k+1)/4)) characters",
            },
        }
    return summary


class _FileProgress:
    """A progress bar over input files, fed by marker files the readers write.

    Only for the local runner, whose workers share this machine's disk.
    """

    def __init__(self, directory: str, total: int):
        import threading

        os.makedirs(directory, exist_ok=True)
        self._directory = directory
        self._total = total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from tqdm import tqdm

        with tqdm(total=self._total, desc="WET files read", unit="file", mininterval=1) as bar:
            while True:
                done = min(len(os.listdir(self._directory)), self._total)
                bar.update(done - bar.n)
                if self._stop.wait(0.5):
                    bar.update(min(len(os.listdir(self._directory)), self._total) - bar.n)
                    return

    def close(self):
        self._stop.set()
        self._thread.join()


def run_job(
    *,
    build: Callable[[Any, str, str | None], Any],
    output_dir: str,
    overwrite: bool,
    own_files: Callable[[str], bool],
    beam_args: Iterable[str],
    workers: int | None,
    describe: dict[str, Any],
    splits: Iterable[str] | None,
    funnel: Callable[[dict], list],
    input_bytes: int | None = None,
    total_files: int | None = None,
    summarize: Callable[[dict], dict] | None = None,
    check_counters: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Runs a corpus pipeline end to end and writes stats.json; returns the stats.

    Whatever goes wrong (an exception, a failed check, Ctrl-C), the temporary directory and
    any output directory this call created are removed, so nothing half-written remains.

    Args:
      build: adds the job to (pipeline, temporary output dir, progress dir or
        None); readers drop one marker file per finished input into the
        progress dir.
      total_files: the number of input files, for the local progress bar.
      summarize: extra stats.json entries computed from the counters.
      check_counters: raises (e.g. ValueError) when the counters show the run
        is unusable, such as no readable input; then nothing is written.
      own_files: recognises file names this job writes (old ones are replaced).
      describe: job settings recorded in stats.json.
    """
    options = pipeline_options(beam_args, workers)
    created_dirs = missing_dirs(output_dir)
    tmp_dir = None
    try:
        tmp_dir = prepare_output(output_dir, overwrite, own_files)
        counters, seconds = _run_pipeline(build, options, tmp_dir, total_files)
        if check_counters:
            check_counters(counters)
        stats = dict(describe)
        stats.update(_run_stats(options, counters, seconds, input_bytes, funnel, splits))
        if summarize:
            stats.update(summarize(counters))
        with _interrupts_deferred() as deferred:
            files = _write_stats_and_finalize(stats, tmp_dir, output_dir, own_files)
    except BaseException:
        if tmp_dir:
            discard_output(tmp_dir)
        remove_empty_dirs(created_dirs)
        raise
    if deferred:
        raise OutputWrittenInterrupt(output_dir)
    prefix = output_dir.rstrip("/") + "/"
    stats["files"] = [f[len(prefix) :] if f.startswith(prefix) else f for f in files]
    return stats


class OutputWrittenInterrupt(KeyboardInterrupt):
    """Ctrl-C that came while the finished output was being moved into place.

    The move is allowed to finish (stopping half-way would leave a partial corpus), so the
    output directory holds the whole result; the interrupt is raised afterwards.
    """

    def __init__(self, output_dir: str):
        super().__init__(output_dir)
        self.output_dir = output_dir


@contextlib.contextmanager
def _interrupts_deferred():
    """Holds back SIGINT inside the block; yields a list that gets an entry if one came.

    Only in the main thread of the process (the only one Python delivers signals to); elsewhere
    the block runs as is.
    """
    deferred: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: deferred.append(signum))
    try:
        yield deferred
    finally:
        # None: the previous handler was not set from Python and cannot be put back as such.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _run_pipeline(
    build: Callable, options, tmp_dir: str, total_files: int | None
) -> tuple[dict[str, dict[str, int]], float]:
    """Builds and runs the pipeline into `tmp_dir`; returns its counters and the seconds taken."""
    import apache_beam as beam

    local = options.get_all_options().get("runner") == "DirectRunner"
    progress_dir = os.path.join(tmp_dir, ".progress") if local and total_files else None
    progress = _FileProgress(progress_dir, total_files) if progress_dir else None
    started = time.time()
    runner = _local_runner(options) if local else None
    try:
        pipeline = beam.Pipeline(runner=runner, options=options)
        build(pipeline, tmp_dir, progress_dir)
        with _workers_stopped_on_interrupt() if runner else contextlib.nullcontext():
            result = pipeline.run()
            result.wait_until_finish()
        return collect_counters(result), time.time() - started
    finally:
        if progress:
            progress.close()


@contextlib.contextmanager
def _workers_stopped_on_interrupt():
    """A SIGINT to the job's process also ends the local runner's worker processes.

    A terminal's Ctrl-C reaches the workers by itself, but a SIGINT sent to the job's process
    alone (kill -INT PID, a supervisor, a notebook's interrupt) does not; Beam's shutdown then
    waits for workers that may never finish. Each `sdk_worker` records its pid in a directory
    named by `sdk_worker.PID_DIR_ENV`; on SIGINT this process marks the directory interrupted
    (a worker still starting up sees the mark and exits), signals every recorded worker, and
    then interrupts itself as before. Only in the main thread, where signals are delivered.
    """
    from t5forge.beam_jobs import sdk_worker

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid_dir = tempfile.mkdtemp(prefix="t5forge-workers-")
    os.environ[sdk_worker.PID_DIR_ENV] = pid_dir  # Beam starts workers with this environment
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        sdk_worker.stop_workers(pid_dir)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        os.environ.pop(sdk_worker.PID_DIR_ENV, None)
        shutil.rmtree(pid_dir, ignore_errors=True)


def _local_runner(options):
    """Beam's multi-process local runner, with workers that end quietly on Ctrl-C (`sdk_worker`).

    The runner and worker count of direct_running_mode="multi_processing", which would pick
    Beam's own worker command; None (Beam decides) for any other running mode.
    """
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return None
    direct.direct_running_mode = "in_memory"  # leaves the worker environment given here in place
    command = f"{shlex.quote(sys.executable)} -m t5forge.beam_jobs.sdk_worker"
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))


def _run_stats(
    options, counters: dict, seconds: float, input_bytes: int | None, funnel, splits
) -> dict[str, Any]:
    """The stats.json entries every corpus job records about its run."""
    stats = {
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "runner": options.get_all_options().get("runner"),
        "workers": options.get_all_options().get("direct_num_workers"),
        "python": platform.python_version(),
        "input_bytes": input_bytes,
        "counters": counters,
        "funnel": funnel(counters),
        "splits": split_summary(counters, splits),
    }
    if input_bytes:
        stats["input_mb_per_second"] = round(input_bytes / 1e6 / max(seconds, 1e-9), 3)
    return stats


def _write_stats_and_finalize(
    stats: dict, tmp_dir: str, output_dir: str, own_files: Callable[[str], bool]
) -> list[str]:
    """Writes stats.json next to the new shards, then moves them all into `output_dir`."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(FileSystems.join(tmp_dir, STATS_FILE)) as f:
        f.write(stats_json(stats).encode("utf-8"))
    return finalize_output(tmp_dir, output_dir, own_files)


def stats_json(stats: dict[str, Any]) -> str:
    return json.dumps(stats, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_stats(directory: str) -> dict[str, Any]:
    """Reads a corpus directory's stats.json (errors name the directory)."""
    path = os.path.join(directory, STATS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{directory}: no {STATS_FILE} (not a t5forge corpus directory)"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
