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
