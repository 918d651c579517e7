"""The t5forge command: demo run, bad input (exit code 2, no output), help speed."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from conftest import DEMO_WET

T5FORGE = [sys.executable, "-m", "t5forge.cli"]


def run(args, cwd, **kw):
    env = dict(os.environ, XDG_CACHE_HOME=str(cwd / "cache"))
    return subprocess.run(T5FORGE + args, cwd=cwd, capture_output=True, text=True, env=env, **kw)


def test_help_imports_nothing_heavy():
    code = (
        "import sys, t5forge.cli as c\n"
        "c.build_parser().format_help()\n"
        "heavy = [m for m in ('apache_beam', 'tensorflow', 'jax', 'nltk', 'matplotlib') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run(T5FORGE + ["--help"], capture_output=True, text=True).stdout
    assert "build-c4" in help_text and "report" in help_text


def test_model_info_needs_neither_tensorflow_nor_jax():
    # It is the arithmetic of the configs, for machines with any subset of the dependencies.
    code = (
        "import sys, t5forge.cli as c\n"
        "assert c.main(['model-info', 't5.1.1-base', '--sequence-length', "
        "'inputs=512,targets=114']) == 0\n"
        "print([m for m in ('tensorflow', 'seqio', 'jax', 'apache_beam') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "247,577,856" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_demo_build(tmp_path):
    """`t5forge build-c4` with no input builds the demo corpus and its report."""
    result = run(["build-c4", "--workers", "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "t5forge-demo"
    names = sorted(os.listdir(demo))
    assert "c4-train.tfrecord-00000-of-00001" in names
    assert "stats.json" in names and "report.html" in names
    assert not [n for n in names if n.startswith(".")]
    assert f"report: {demo / 'report.html'}" in result.stdout
    stats = json.loads((demo / "stats.json").read_text())
    assert stats["counters"]["split-wet-file"]["passed"] == 310
    assert stats["splits"]["train"]["pages"] > 200
    assert "WET records read" in result.stdout
    # Running it again replaces the demo corpus.
    assert run(["build-c4", "--workers", "1"], tmp_path).returncode == 0
    # But not a corpus at an --output the user named (a forgotten --input): that needs --overwrite.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "c4-train.tfrecord-00000-of-00001").write_bytes(b"the user's own shard")
    result = run(["build-c4", "--output", "mine", "--workers", "1"], tmp_path)
    assert_usage_error(result, "--output mine", "--overwrite")
    assert (mine / "c4-train.tfrecord-00000-of-00001").read_bytes() == b"the user's own shard"


def assert_usage_error(result, *needles):
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("t5forge ")
    for needle in needles:
        assert needle in last


def test_missing_input(tmp_path):
    result = run(["build-c4", "--input", "nope/*.wet.gz", "--output", "out"], tmp_path)
    assert_usage_error(result, "nope/*.wet.gz")
    assert not (tmp_path / "out").exists()


def test_missing_output_flag(tmp_path):
    assert_usage_error(run(["build-c4", "--input", DEMO_WET], tmp_path), "--output")


def test_existing_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run(["build-c4", "--input", DEMO_WET, "--output", "out", "--no-badwords"], tmp_path)
    assert_usage_error(result, "out", "--overwrite")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_bad_input_list(tmp_path):
    (tmp_path / "list.gz").write_bytes(b"\x1f\x8bnot really gzip")
    result = run(["build-c4", "--input-list", "list.gz", "--output", "o"], tmp_path)
    assert_usage_error(result, "list.gz")
    assert_usage_error(
        run(["build-c4", "--cc-version", "2019-18", "--output", "o"], tmp_path), "CC-MAIN-YYYY-WW"
    )


def test_bad_badwords_path(tmp_path):
    result = run(
        ["build-c4", "--input", DEMO_WET, "--output", "o", "--badwords", "nope.txt"], tmp_path
    )
    assert_usage_error(result, "nope.txt")
    assert not (tmp_path / "o").exists()


def test_report_of_missing_directory(tmp_path):
    assert_usage_error(run(["report", "nowhere"], tmp_path), "nowhere")


def test_corrupt_file_is_counted_and_job_completes(tmp_path):
    good = open(DEMO_WET, "rb").read()
    (tmp_path / "a.warc.wet.gz").write_bytes(good[: len(good) // 3])  # truncated
    (tmp_path / "b.warc.wet.gz").write_bytes(b"this is not a WET file at all")
    result = run(
        [
            "build-c4",
            "--input",
            "a.warc.wet.gz",
            "b.warc.wet.gz",
            "--output",
            "o",
            "--no-badwords",
            "--format",
            "jsonl",
            "--workers",
            "1",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    read = stats["counters"]["split-wet-file"]
    assert read["corrupt:truncated_file"] == 1
    assert read["corrupt:lost_record"] == 1
    assert read["filtered:no_url"] >= 1
    assert read["passed"] > 50
    with gzip.open(tmp_path / "o" / "c4-train.00000-of-00001.json.gz", "rt") as f:
        assert sum(1 for _ in f) == stats["splits"]["train"]["pages"] > 30


def test_realnewslike(tmp_path):
    (tmp_path / "domains.json").write_text(json.dumps({"python.org": ["docs"], "other.com": 1}))
    result = run(
        [
            "build-c4",
            "--input",
            DEMO_WET,
            "--output",
            "o",
            "--variant",
            "realnewslike",
            "--realnews-domains",
            "domains.json",
            "--no-badwords",
            "--workers",
            "1",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["counters"]["realnews-domain-filter"]["passed"] == 309
    (tmp_path / "domains.json").write_text(json.dumps({"python.org": ["www"]}))
    result = run(
        [
            "build-c4",
            "--input",
            DEMO_WET,
            "--output",
            "o2",
            "--variant",
            "realnewslike",
            "--realnews-domains",
            "domains.json",
            "--no-badwords",
            "--workers",
            "1",
        ],
        tmp_path,
    )
    stats = json.loads((tmp_path / "o2" / "stats.json").read_text())
    assert stats["counters"]["realnews-domain-filter"]["filtered:bad_subdomain"] == 309
    assert stats["splits"]["train"]["pages"] == 0


@pytest.mark.parametrize("extra", [[], ["--sentence-splitter", "regex"]])
def test_report_command(tmp_path, extra):
    out = tmp_path / "o"
    result = run(
        [
            "build-c4",
            "--input",
            DEMO_WET,
            "--output",
            str(out),
            "--no-badwords",
            "--workers",
            "1",
            *extra,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    os.remove(out / "report.html")
    result = run(["report", str(out)], tmp_path)
    assert result.returncode == 0
    assert (out / "report.html").exists()
    assert "line-filtered:no_endmark" in result.stdout


def test_build_mc4_cli(tmp_path):
    from conftest import DEBIAN_WET

    if not os.path.exists(DEBIAN_WET):
        pytest.skip("shared data missing")
    assert_usage_error(run(["build-mc4", "--output", "o"], tmp_path), "--input")
    assert_usage_error(
        run(
            ["build-mc4", "--input", DEBIAN_WET, "--output", "o", "--languages", "de,klingon"],
            tmp_path,
        ),
        "klingon",
    )
    assert_usage_error(
        run(
            ["build-mc4", "--input", DEBIAN_WET, "--output", "o", "--badwords", DEBIAN_WET],
            tmp_path,
        ),
        "directory",
    )
    assert not (tmp_path / "o").exists()
    result = run(
        [
            "build-mc4",
            "--input",
            DEBIAN_WET,
            "--output",
            "o",
            "--no-badwords",
            "--format",
            "jsonl",
            "--workers",
            "1",
            "--unimax-budget-bytes",
            "1000000",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["mixing_rates"]["unimax"]["budget_bytes"] == 1_000_000
    assert (tmp_path / "o" / "de" / "train" / "c4-de-train.00000-of-00001.json.gz").exists()
    assert "und share" in result.stdout
    assert (tmp_path / "o" / "report.html").exists()
    # Overwrite replaces the language directories.
    result = run(
        [
            "build-mc4",
            "--input",
            DEBIAN_WET,
            "--output",
            "o",
            "--no-badwords",
            "--languages",
            "ja",
            "--workers",
            "1",
            "--overwrite",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir()) == ["ja", "und"]


def main_in_process(args, cwd, monkeypatch, capsys):
    """Runs `t5forge ARGS` in this process (fast for errors found before any job runs).

    Returns the exit code and the last line of stderr.
    """
    import logging

    from t5forge import cli

    monkeypatch.chdir(cwd)
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    try:
        code = cli.main(args)
    finally:
        beam_logger.setLevel(level)  # main quiets Beam for the whole process
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    "command, flags, needle",
    [
        ("build-c4", ["--workers", "-1"], "--workers -1"),
        ("build-c4", ["--workers", "0"], "--workers 0"),
        ("build-c4", ["--shard-size-mb", "0"], "--shard-size-mb 0"),
        ("build-c4", ["--shard-size-mb", "-5"], "--shard-size-mb -5"),
        ("build-c4", ["--max-files", "-1"], "--max-files -1"),
        ("build-c4", ["--max-files", "0"], "--max-files 0"),
        ("build-c4", ["--wrokers", "1"], "--wrokers"),
        ("build-c4", ["--sentence-spliter", "regex"], "--sentence-spliter"),
        ("build-c4", ["--direct_num_workers", "many"], "--direct_num_workers"),
        ("build-mc4", ["--workers", "-1"], "--workers -1"),
        ("build-mc4", ["--shard-size-mb", "0"], "--shard-size-mb 0"),
        ("build-mc4", ["--temperature", "0"], "--temperature 0"),
        ("build-mc4", ["--temperature", "-1"], "--temperature -1"),
        ("build-mc4", ["--unimax-max-epochs", "0"], "--unimax-max-epochs 0"),
        ("build-mc4", ["--unimax-budget-bytes", "-5"], "--unimax-budget-bytes -5"),
        ("build-mc4", ["--languages", ""], "--languages"),
        ("build-mc4", ["--langauges", "de"], "--langauges"),
    ],
)
def test_bad_corpus_flags_fail_before_any_output(
    tmp_path, monkeypatch, capsys, command, flags, needle
):
    args = [command, "--input", DEMO_WET, "--output", "o", "--no-badwords", *flags]
    code, last = main_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 2, last
    assert last.startswith(f"t5forge {command}: error: ") and needle in last
    assert os.listdir(tmp_path) == []


def test_beam_pipeline_options_pass_the_flag_check():
    from t5forge import cli

    for flags in (
        ["--runner", "DirectRunner", "--direct_num_workers", "2"],
        ["--runner=DataflowRunner", "--project", "p", "--region", "r"],
        ["--temp_location", "gs://bucket/tmp", "--setup_file", "./setup.py"],
        ["--runner", "FlinkRunner", "--flink_master", "localhost:8081"],
        ["--experiments=a", "--experiments", "b", "--save_main_session"],
    ):
        cli._check_beam_args("build-c4", flags)
    with pytest.raises(cli.UsageError, match="--proj:"):  # no abbreviations, unlike argparse
        cli._check_beam_args("build-c4", ["--proj", "p"])


def test_output_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    args = ["build-c4", "--input", DEMO_WET, "--output", "afile", "--no-badwords"]
    code, last = main_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert last == "t5forge build-c4: error: --output afile: exists and is not a directory"
    assert os.listdir(tmp_path) == ["afile"]


def test_only_unreadable_inputs_exit_2_and_write_nothing(tmp_path):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'no-such.warc.wet.gz'}\n")
    cases = [
        # A directory is refused before the job runs, with a glob to use instead.
        (["--input", "emptydir"], ("--input emptydir: a directory", "*.warc.wet.gz")),
        (["--input-list", "list.txt"], ("no page could be read", "could not be opened: 1")),
    ]
    for source, messages in cases:
        args = ["build-c4", *source, "--output", "o", "--no-badwords", "--workers", "1"]
        result = run(args, tmp_path)
        assert_usage_error(result, *messages)
        assert not (tmp_path / "o").exists()


def test_damaged_input_is_in_the_summary_and_beam_options_pass(tmp_path):
    good = open(DEMO_WET, "rb").read()
    (tmp_path / "a.warc.wet.gz").write_bytes(good[: len(good) // 3])  # truncated
    result = run(
        [
            "build-c4",
            "--input",
            "a.warc.wet.gz",
            "--output",
            "o",
            "--no-badwords",
            "--sentence-splitter",
            "regex",
            "--runner",
            "DirectRunner",
            "--direct_num_workers",
            "1",
            "--workers",
            "1",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Damaged input" in result.stdout
    assert "corrupt:truncated_file  input files cut off before their end      1" in result.stdout
    assert "Damaged input" in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.parametrize("target", ["process group", "job process"])
def test_ctrl_c_removes_what_the_job_created_in_one_line(tmp_path, target):
    """Ctrl-C in a terminal signals the whole group (Beam's workers too); `kill -INT PID` only
    the job's process, which must then stop its workers itself rather than wait for them."""
    import signal
    import time

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    args = ["build-c4", "--input", *[DEMO_WET] * 8, "--output", "o", "--no-badwords"]
    process = subprocess.Popen(
        T5FORGE + args + ["--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored
    )
    deadline = time.time() + 120
    while not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o"):
        assert time.time() < deadline and process.poll() is None, "the job never started"
        time.sleep(0.05)
    time.sleep(1)
    if target == "process group":
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    else:
        os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "t5forge build-c4: interrupted; nothing written"
    # No traceback from any process: not the command, not Beam's workers or runner threads.
    assert "Traceback" not in err and "Error" not in err, err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_once_the_corpus_is_in_place_says_it_was_written(tmp_path, monkeypatch, capsys):
    """An interrupt the job held back while moving the finished corpus in (job.py) or one during
    the report: the message must not claim that nothing was written."""
    from t5forge.beam_jobs import job

    def finished_then_interrupted(output_dir, **settings):
        raise job.OutputWrittenInterrupt(output_dir)

    monkeypatch.setattr(job, "run_job", finished_then_interrupted)
    args = ["build-c4", "--input", DEMO_WET, "--output", "o", "--no-badwords"]
    code, last = main_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 130
    assert last == (
        "t5forge build-c4: interrupted after the corpus was written to o; "
        "t5forge report o redraws its report"
    )


def test_inputs_that_are_not_warc_files_are_damage(tmp_path):
    """Plain text (or an empty file) given as WET input holds no WARC record: damaged input,
    so a job of nothing else exits 2 and writes nothing, and one among good files is counted."""
    (tmp_path / "garbage.wet.gz").write_text("hello world\nthis is plain text, not WARC\n")
    (tmp_path / "empty.wet.gz").write_bytes(b"")
    args = ["build-c4", "--output", "o", "--no-badwords", "--workers", "1"]
    result = run([*args, "--input", "garbage.wet.gz", "empty.wet.gz"], tmp_path)
    assert_usage_error(result, "no page could be read", "not WARC/WET files (no WARC record): 2")
    assert not (tmp_path / "o").exists()
    result = run(
        [*args, "--input", "garbage.wet.gz", DEMO_WET, "--format", "jsonl", "--sentence-splitter",
         "regex"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    read = json.loads((tmp_path / "o" / "stats.json").read_text())["counters"]["split-wet-file"]
    assert read["corrupt:not_a_warc_file"] == 1
    assert read["passed"] == 310 and read["filtered:no_url"] == 1  # the demo's warcinfo record
    assert "corrupt:not_a_warc_file" in result.stdout and "Damaged input" in result.stdout
    assert "corrupt:not_a_warc_file" in (tmp_path / "o" / "report.html").read_text()


def test_badwords_source_says_file_or_directory(tmp_path):
    import argparse

    from t5forge import cli

    (tmp_path / "bwdir").mkdir()
    (tmp_path / "bwdir" / "en").write_text("zzzbadword\n")
    (tmp_path / "bw.txt").write_text("zzzbadword\n")
    for path, source in ((tmp_path / "bwdir", "directory"), (tmp_path / "bw.txt", "file")):
        args = argparse.Namespace(no_badwords=False, variant="en", badwords=str(path))
        words, recorded = cli._load_c4_badwords(args, demo=False)
        assert words == {"en": {"zzzbadword"}}
        assert recorded == f"{source} {path}"


@pytest.mark.parametrize(
    "variant, warned",
    [("en", True), ("en.noblocklist", True), ("realnewslike", True), ("en.noclean", False)],
)
def test_punkt_warning_only_for_variants_that_count_sentences(
    tmp_path, monkeypatch, capsys, variant, warned
):
    """en.noclean runs no clean_page, so it never counts sentences: no punkt warning."""
    import logging

    from t5forge import cli
    from t5forge.beam_jobs import job, sentences

    monkeypatch.setattr(sentences, "punkt_has_english_parameters", lambda: False)
    monkeypatch.setenv(sentences.PUNKT_WARNED_ENV, "")  # restored after the test

    def stop(output_dir, **settings):
        raise ValueError("stopped before the job ran")

    monkeypatch.setattr(job, "run_job", stop)
    (tmp_path / "domains.json").write_text(json.dumps({"python.org": 1}))
    args = ["build-c4", "--input", DEMO_WET, "--output", "o", "--no-badwords",
            "--variant", variant, "--realnews-domains", "domains.json"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    try:
        assert cli.main(args) == 2
    finally:
        beam_logger.setLevel(level)  # main quiets Beam for the whole process
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("stopped before the job ran")
    assert ("warning: punkt runs without English parameters" in err) is warned
    assert os.listdir(tmp_path) == ["domains.json"]
