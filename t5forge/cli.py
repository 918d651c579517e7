"""The `t5forge` command.

Subcommands import their heavy dependencies (Beam, TensorFlow, JAX) only when
they run, so `t5forge --help` stays fast. Errors a user can cause become a
one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from t5forge import mixing

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by SIGINT (128 + 2)
# Commands that remove everything they created when interrupted (see beam_jobs.job.run_job).
_CLEAN_ON_INTERRUPT = ("build-c4", "build-mc4")
DEMO_OUTPUT = "t5forge-demo"


class UsageError(Exception):
    """A problem with the command's input that the user can fix."""


def _demo_wet_path() -> str:
    return os.path.join(os.path.dirname(__file__), "beam_jobs", "data", "demo.warc.wet.gz")


def _add_corpus_input_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("input (default: the demo WET file shipped with t5forge)")
    src.add_argument(
        "--input",
        nargs="+",
        action="extend",
        metavar="WET",
        help="WET files or globs: local paths, gs://, s3://, http(s):// URLs",
    )
    src.add_argument(
        "--input-list",
        metavar="LISTING",
        help="a wet.paths(.gz) listing; relative lines are resolved against "
        "https://data.commoncrawl.org/",
    )
    src.add_argument(
        "--cc-version",
        metavar="CC-MAIN-YYYY-WW",
        help="read every WET file of this Common Crawl dump",
    )
    src.add_argument("--max-files", type=int, metavar="N", help="read only the first N files")
    src.add_argument(
        "--download-dir",
        metavar="DIR",
        help="where http(s) WET files are downloaded (deleted after reading)",
    )


def _add_runner_args(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group(
        "running",
        "Any other --flag is a Beam pipeline option, e.g. --runner DataflowRunner --project P "
        "--region R --temp_location gs://B/tmp --setup_file ./setup.py",
    )
    run.add_argument(
        "--workers", type=int, metavar="N", help="local runner processes (default: all cores)"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace an existing corpus in --output"
    )
    run.add_argument(
        "--shard-size-mb",
        type=int,
        default=256,
        metavar="MB",
        help="target size of an output shard (default 256)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5forge",
        description="From Common Crawl WET files to a validated T5-family pretraining run.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Beam's logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "build-c4",
        help="build a C4 (English) corpus from WET files with TFDS's exact rules",
        description="Build a C4-style corpus. With no --input, builds the demo corpus into "
        f"./{DEMO_OUTPUT}/ from the sample WET file shipped with t5forge.",
    )
    _add_corpus_input_args(p)
    p.add_argument("--output", metavar="DIR", help=f"output directory (demo: ./{DEMO_OUTPUT})")
    p.add_argument(
        "--variant", default="en", choices=["en", "en.noclean", "en.noblocklist", "realnewslike"]
    )
    p.add_argument("--format", default="tfrecord", choices=["tfrecord", "jsonl"])
    bad = p.add_mutually_exclusive_group()
    bad.add_argument(
        "--badwords",
        metavar="PATH",
        help="a bad-words file (English) or a directory of per-language files "
        "(default: LDNOOBW en @25e679f0, downloaded once and cached)",
    )
    bad.add_argument("--no-badwords", action="store_true", help="skip the bad-words filter")
    p.add_argument(
        "--sentence-splitter",
        default="punkt",
        choices=["punkt", "regex"],
        help="sentence counter for the >= 3 sentences rule (default: punkt, as TFDS)",
    )
    p.add_argument(
        "--realnews-domains",
        metavar="PATH_OR_URL",
        help="Grover's domain_to_allowed_subdomains.json (realnewslike; default: "
        "downloaded from its pinned URL)",
    )
    _add_runner_args(p)
    p.set_defaults(handler=_run_build_c4)

    p = sub.add_parser(
        "build-mc4",
        help="build an mC4 (multilingual) corpus from WET files with TFDS's exact rules",
        description="Build an mC4-style corpus: per-language train/validation shards in "
        "DIR/<language>/<split>/, cld3 language id, per-language bad words, stats.json with "
        "pages, bytes and mixing rates per language.",
    )
    _add_corpus_input_args(p)
    p.add_argument("--output", metavar="DIR", required=True, help="output directory")
    p.add_argument(
        "--languages",
        default="all",
        metavar="all|CODE,...",
        help="cld3 codes to keep (default: all 107 mC4 codes); und is always kept",
    )
    p.add_argument(
        "--min-probability",
        type=float,
        default=0.95,
        help="cld3 probability below which a page is 'und' (default 0.95)",
    )
    p.add_argument("--format", default="tfrecord", choices=["tfrecord", "jsonl"])
    bad = p.add_mutually_exclusive_group()
    bad.add_argument(
        "--badwords",
        metavar="DIR",
        help="a directory of per-language bad-words files (default: the pinned LDNOOBW lists, "
        "downloaded once and cached)",
    )
    bad.add_argument("--no-badwords", action="store_true", help="skip the bad-words filter")
    p.add_argument(
        "--temperature",
        type=float,
        default=1 / 0.3,
        help="temperature of the sampling rates in stats.json (default 1/0.3, as mT5)",
    )
    p.add_argument(
        "--unimax-budget-bytes",
        type=float,
        metavar="BYTES",
        help="UniMax budget: the bytes training will read (default: all train bytes)",
    )
    p.add_argument(
        "--unimax-max-epochs",
        type=float,
        default=1.0,
        help="UniMax: most passes over any language (default 1)",
    )
    _add_runner_args(p)
    p.set_defaults(handler=_run_build_mc4)

    p = sub.add_parser(
        "train-spm",
        help="train a SentencePiece vocabulary with T5's id layout on a corpus",
        description="Train a SentencePiece model on build-c4/build-mc4 output or plain text "
        "(pad 0, eos 1, unk 2, no bos), sampling sentences reproducibly; mC4 directories are "
        "sampled by language with temperature, as mT5 did. Writes PREFIX.model, PREFIX.vocab "
        "and PREFIX.settings.json.",
    )
    p.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        metavar="CORPUS",
        help="corpus directories or files (TFRecord, JSON lines, plain text)",
    )
    p.add_argument("--output", required=True, metavar="PREFIX")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--character-coverage", type=float, metavar="F")
    p.add_argument("--byte-fallback", action="store_true")
    p.add_argument(
        "--extra-ids",
        type=int,
        default=100,
        metavar="N",
        help="sentinels seqio appends when loading the model (default 100)",
    )
    p.add_argument("--sample-sentences", type=int, default=1_000_000, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature",
        type=float,
        default=1 / 0.3,
        help="language sampling temperature for mC4 directories (default 1/0.3)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_run_train_spm)

    p = sub.add_parser(
        "tokenize",
        help="encode corpus files into token-id shards readable with numpy alone",
        description="Encode every document of the inputs into DIR/NNNNN.tokens.npy + "
        "NNNNN.offsets.npy shards (one per input file) and DIR/manifest.json. With --decode, "
        "turn such a directory back into JSON lines.",
    )
    p.add_argument(
        "--vocab",
        required=True,
        metavar="SPEC",
        help="'byte', 'byte:N', 'PATH.model' or 'PATH.model:EXTRA_IDS'",
    )
    p.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N")
    p.add_argument(
        "--format",
        default="npy",
        choices=["npy"],
        help="token shard format (numpy .npy arrays, memory-mappable)",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="decode a tokenized directory (--input) back to JSON lines",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_run_tokenize)

    p = sub.add_parser(
        "inspect",
        help="show how a vocabulary tokenizes some text",
        description="Print pieces, ids, sentinel names and the round trip of each TEXT.",
    )
    p.add_argument("--vocab", required=True, metavar="SPEC")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.set_defaults(handler=_run_inspect)

    p = sub.add_parser(
        "export",
        help="write a seqio task's model-ready batches to a .npz that numpy alone reads",
        description="Run a task (tokenize -> objective -> feature converter) and write the "
        "converted features (encoder/decoder tokens, segment ids, positions, loss weights) as "
        "int32 arrays to PATH.npz with a PATH.json description, for trainers without TensorFlow.",
    )
    p.add_argument("--task", required=True, metavar="NAME", help="a seqio task or mixture")
    p.add_argument(
        "--corpus",
        metavar="DIR",
        help="register t5forge's tasks over this build-c4/build-mc4 output first",
    )
    p.add_argument("--vocab", metavar="SPEC", help="vocabulary for --corpus tasks")
    p.add_argument(
        "--prefix", default="corpus", help="task name prefix for --corpus (default corpus)"
    )
    p.add_argument(
        "--mixing",
        default="temperature",
        choices=mixing.METHODS,
        help="a build-mc4 --corpus's mixture rates, from its stats.json: mT5's temperature "
        "(default) or UniMax",
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this Python module first (it registers tasks)",
    )
    p.add_argument("--split", default="train")
    p.add_argument("--sequence-length", default="inputs=512,targets=114", metavar="NAME=N,...")
    p.add_argument("--examples", type=int, required=True, metavar="N")
    p.add_argument("--output", required=True, metavar="PATH")
    p.add_argument("--pack", action="store_true", help="pack several examples per row")
    p.add_argument(
        "--packer",
        default="fast",
        choices=["fast", "seqio"],
        help="fast: t5forge's packer (seqio's output, faster); seqio: seqio's own",
    )
    p.add_argument("--converter", default="encdec", choices=["encdec", "prefixlm", "decoder"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_run_export)

    p = sub.add_parser(
        "report",
        help="print a corpus's statistics and write report.html",
        description="Read DIR/stats.json, print the per-rule table and write "
        "DIR/report.html (funnel chart and length histograms).",
    )
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(handler=_run_report)

    from t5forge.model import commands  # argparse only; JAX is imported by the handlers

    commands.add_parsers(sub)

    p = sub.add_parser(
        "quickstart",
        help="the whole story on the demo data: corpus, vocabulary, tasks, a tiny T5, curves",
        description="Build the demo C4 corpus, train a SentencePiece model on it, register the "
        "span-corruption task, train a tiny T5 on CPU and draw its loss curves into DIR. A few "
        "minutes on 2 cores.",
    )
    p.add_argument("--output", default="t5forge-quickstart", metavar="DIR")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--overwrite", action="store_true", help="start over in an existing DIR")
    p.set_defaults(handler=_run_quickstart)
    return parser


def _resolve_inputs(args) -> tuple[list[str], bool]:
    """The WET paths to read, and whether this is the demo."""
    from t5forge.beam_jobs import wet

    given = [x for x in (args.input, args.input_list, args.cc_version) if x]
    if len(given) > 1:
        raise UsageError("give only one of --input, --input-list, --cc-version")
    if args.input:
        paths = wet.expand_inputs(args.input)
    elif args.input_list:
        paths = wet.read_path_listing(args.input_list)
    elif args.cc_version:
        paths = wet.read_path_listing(wet.common_crawl_listing_url(args.cc_version))
    else:
        return [_demo_wet_path()], True
    if args.max_files is not None:
        paths = paths[: args.max_files]
    return paths, False


def _check_at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{flag} {value}: must be at least 1")


def _check_corpus_args(args) -> None:
    """Rejects impossible build-c4/build-mc4 settings before any work or output.

    Without this, --workers -1 or --shard-size-mb 0 crash deep inside the job, and
    --max-files 0 would silently read every file.
    """
    _check_at_least_one("--workers", args.workers)
    _check_at_least_one("--shard-size-mb", args.shard_size_mb)
    _check_at_least_one("--max-files", args.max_files)


def _beam_option_parser() -> argparse.ArgumentParser | None:
    """A parser that knows every Apache Beam pipeline option of the imported option classes
    (None where this Beam lacks the parser class its options register themselves with).

    Beam keeps the flags it does not know and ignores them, so a typo such as --wrokers would
    otherwise pass silently. Subclasses are walked recursively, like Beam's own views.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    try:  # private, but it is what Beam's option classes add their flags to
        from apache_beam.options.pipeline_options import _BeamArgumentParser
    except ImportError:
        logging.getLogger(__name__).warning("cannot check Beam pipeline options in this Beam")
        return None

    class OptionParser(_BeamArgumentParser):
        def error(self, message):  # a bad value of a Beam option is a usage error, not exit()
            raise UsageError(f"Beam pipeline option: {message}")

    parser = OptionParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    pending, seen = list(PipelineOptions.__subclasses__()), set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)  # Beam's own way for a class to list its options
        except argparse.ArgumentError:  # an option class that clashes with another: skip it
            continue
    return parser


def _check_beam_args(command: str, beam_args: list[str]) -> None:
    """Rejects arguments that are neither this command's flags nor Beam pipeline options."""
    parser = _beam_option_parser() if beam_args else None
    if parser is None:
        return
    _, unknown = parser.parse_known_args(beam_args)
    if unknown:
        flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")] or unknown
        raise UsageError(
            f"unknown argument(s) {' '.join(flags)}: neither a {command} flag nor an Apache Beam "
            f"pipeline option (see t5forge {command} --help)"
        )


def _require_inputs(args) -> list[str]:
    if not (args.input or args.input_list or args.cc_version):
        raise UsageError("give the WET files with --input, --input-list or --cc-version")
    return _resolve_inputs(args)[0]


def _input_bytes(paths: list[str]) -> int | None:
    from apache_beam.io.filesystems import FileSystems

    try:
        return sum(FileSystems.match([p])[0].metadata_list[0].size_in_bytes for p in paths)
    except Exception:  # noqa: BLE001 - sizes are for the throughput line only
        return None


def _load_c4_badwords(args, demo: bool):
    from t5forge.beam_jobs import badwords

    if args.no_badwords or args.variant in ("en.noclean", "en.noblocklist"):
        return None, "off"
    if args.badwords:
        # load_badwords takes a file (English) or a directory of per-language lists; stats.json
        # says which it was, as build-mc4 does.
        kind = "directory" if os.path.isdir(args.badwords) else "file"
        return badwords.load_badwords(args.badwords), f"{kind} {args.badwords}"
    try:
        path = badwords.fetch_word_list("en", badwords.EN_COMMIT, badwords.default_cache_dir())
    except OSError as e:
        if not demo:
            raise UsageError(str(e)) from e
        print(f"warning: {e}\nwarning: the demo runs without the bad-words filter", file=sys.stderr)
        return None, "unavailable (offline demo)"
    return badwords.load_badwords(path), f"LDNOOBW en @{badwords.EN_COMMIT[:8]}"


REALNEWS_DOMAINS_URL = (
    "https://raw.githubusercontent.com/rowanz/grover/38f7184bd87237ae2d3bc330b99f1e2e246f6d51/"
    "realnews/domain_to_allowed_subdomains.json"
)


def _load_realnews_domains(source: str | None) -> dict:
    import json

    from t5forge.beam_jobs import wet

    source = source or REALNEWS_DOMAINS_URL
    local = source
    try:
        if source.startswith(("http://", "https://")):
            local = wet.download_file(source)
        with open(local, encoding="utf-8") as f:
            domains = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--realnews-domains {source}: {e}") from e
    finally:
        if local != source and os.path.exists(local):
            os.remove(local)
    if not isinstance(domains, dict) or not domains:
        raise UsageError(f"--realnews-domains {source}: expected a JSON object of domains")
    return domains


def _run_build_c4(args, beam_args: list[str]) -> int:
    from t5forge.beam_jobs import c4, job

    _check_corpus_args(args)
    _check_beam_args("build-c4", beam_args)
    paths, demo = _resolve_inputs(args)
    output = args.output or (DEMO_OUTPUT if demo else None)
    if output is None:
        raise UsageError("--output DIR is required with --input, --input-list or --cc-version")
    # Only the default demo directory is replaced without --overwrite: a forgotten --input
    # must not turn `--output my-corpus/` into the demo corpus over the user's own.
    overwrite = args.overwrite or (demo and args.output is None)
    job.check_output(output, overwrite)
    words, badwords_source = _load_c4_badwords(args, demo)
    domains = (
        _load_realnews_domains(args.realnews_domains) if args.variant == "realnewslike" else None
    )
    config = c4.C4Config(
        variant=args.variant,
        sentence_splitter=args.sentence_splitter,
        badwords={k: sorted(v) for k, v in words.items()} if words else None,
        realnews_domains=domains,
        output_format=args.format,
        shard_bytes=args.shard_size_mb << 20,
    )
    # Only clean_page (and the line dedup after it) counts sentences: a variant without it
    # never loads the splitter, so a warning about its parameters would be noise.
    if c4.VARIANTS[args.variant].clean:
        _check_sentence_splitter(args.sentence_splitter)
    print(
        f"build-c4: {len(paths)} WET file(s) -> {output} "
        f"(variant {args.variant}, {args.format}, sentence splitter {args.sentence_splitter})",
        file=sys.stderr,
    )
    stats = job.run_job(
        build=lambda pipeline, tmp, progress: c4.build_c4(
            pipeline, paths, config, tmp, args.download_dir, progress
        ),
        output_dir=output,
        overwrite=overwrite,
        own_files=c4.is_output_file,
        beam_args=beam_args,
        workers=args.workers,
        describe={
            "job": "build-c4",
            "variant": args.variant,
            "format": args.format,
            "sentence_splitter": args.sentence_splitter,
            "badwords": badwords_source,
            "inputs": paths if len(paths) <= 100 else paths[:100] + ["..."],
            "num_input_files": len(paths),
        },
        splits=c4.SPLITS,
        funnel=c4.funnel,
        input_bytes=_input_bytes(paths),
        total_files=len(paths),
        check_counters=lambda counters: c4.require_pages_read(counters, paths),
    )
    return _report_corpus(output, stats)


def _load_mc4_badwords(args, languages):
    from t5forge.beam_jobs import badwords

    if args.no_badwords:
        return None, "off"
    if args.badwords:
        if not os.path.isdir(args.badwords):
            raise UsageError(
                f"--badwords {args.badwords}: expected a directory of per-language files"
            )
        return badwords.load_badwords(args.badwords), f"directory {args.badwords}"
    # Only the lists of the languages asked for (a page is judged by its base language's list):
    # a job over a few languages needs only their downloads, or their cached copies offline.
    wanted = {code.split("-")[0] for code in languages}
    lists = [lang for lang in badwords.LIST_LANGUAGES if lang.split("-")[0] in wanted]
    try:
        words = badwords.fetch_badwords(badwords.default_cache_dir(), languages=lists)
    except OSError as e:
        raise UsageError(str(e)) from e
    source = f"LDNOOBW @{badwords.MULTILINGUAL_COMMIT[:8]} (en @{badwords.EN_COMMIT[:8]})"
    if lists != badwords.LIST_LANGUAGES:
        source += f": {', '.join(sorted({lang.split('-')[0] for lang in lists})) or 'no list'}"
    return words, source


def _run_build_mc4(args, beam_args: list[str]) -> int:
    from t5forge.beam_jobs import c4, job, mc4
    from t5forge.beam_jobs.cld3 import MC4_LANGUAGES

    _check_corpus_args(args)
    mc4.check_mixing_settings(args.temperature, args.unimax_budget_bytes, args.unimax_max_epochs)
    _check_beam_args("build-mc4", beam_args)
    languages = (
        tuple(MC4_LANGUAGES)
        if args.languages == "all"
        else tuple(code.strip() for code in args.languages.split(",") if code.strip())
    )
    if not languages:
        raise UsageError(f"--languages {args.languages!r}: names no language; give all or CODE,...")
    paths = _require_inputs(args)
    job.check_output(args.output, args.overwrite)
    config = mc4.MC4Config(
        languages=languages,
        min_probability=args.min_probability,
        output_format=args.format,
        shard_bytes=args.shard_size_mb << 20,
    )
    words, badwords_source = _load_mc4_badwords(args, languages)
    config.badwords = {k: sorted(v) for k, v in words.items()} if words else None
    print(
        f"build-mc4: {len(paths)} WET file(s) -> {args.output} ({len(languages)} languages "
        f"+ und, {args.format})",
        file=sys.stderr,
    )
    stats = job.run_job(
        build=lambda pipeline, tmp, progress: mc4.build_mc4(
            pipeline, paths, config, tmp, args.download_dir, progress
        ),
        output_dir=args.output,
        overwrite=args.overwrite,
        own_files=mc4.is_output_file,
        beam_args=beam_args,
        workers=args.workers,
        describe={
            "job": "build-mc4",
            "format": args.format,
            "languages_requested": "all" if args.languages == "all" else list(languages),
            "min_probability": args.min_probability,
            "badwords": badwords_source,
            "inputs": paths if len(paths) <= 100 else paths[:100] + ["..."],
            "num_input_files": len(paths),
        },
        splits=None,
        funnel=mc4.funnel,
        input_bytes=_input_bytes(paths),
        total_files=len(paths),
        summarize=lambda counters: mc4.language_summary(
            counters, args.temperature, args.unimax_budget_bytes, args.unimax_max_epochs
        ),
        check_counters=lambda counters: c4.require_pages_read(counters, paths),
    )
    return _report_corpus(args.output, stats)


def _report_corpus(output: str, stats: dict) -> int:
    """Writes report.html and prints the summary of a finished corpus job.

    The corpus is complete by now: a Ctrl-C here is reported as coming after the write.
    """
    from t5forge.beam_jobs import job, report

    try:
        report_path = report.write_report(output)
        print(report.format_table(stats))
        print(f"corpus: {os.path.abspath(output)}\nreport: {os.path.abspath(report_path)}")
    except KeyboardInterrupt:
        raise job.OutputWrittenInterrupt(output) from None
    return 0


def _check_sentence_splitter(name: str) -> None:
    if name == "punkt":
        import warnings

        from t5forge.beam_jobs import sentences

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            english = sentences.punkt_has_english_parameters()
        if not english:
            message = caught[0].message if caught else "punkt runs without English parameters"
            print(f"warning: {message}", file=sys.stderr)
            os.environ[sentences.PUNKT_WARNED_ENV] = "1"


def _no_extra_args(beam_args: list[str]) -> None:
    if beam_args:
        raise UsageError(f"unknown arguments: {' '.join(beam_args)}")


def _run_train_spm(args, extra: list[str]) -> int:
    from t5forge.vocabularies.train import train_sentencepiece

    _no_extra_args(extra)
    settings = train_sentencepiece(
        args.input,
        args.output,
        args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        byte_fallback=args.byte_fallback,
        extra_ids=args.extra_ids,
        sample_sentences=args.sample_sentences,
        seed=args.seed,
        temperature=args.temperature,
        overwrite=args.overwrite,
        progress=True,
    )
    print(
        json.dumps(
            {k: settings[k] for k in settings if k != "trainer_args"}, indent=2, ensure_ascii=False
        )[:4000]
    )
    print(
        f"model: {os.path.abspath(args.output)}.model (+ .vocab, .settings.json); "
        f"use --vocab {args.output}.model"
    )
    return 0


def _run_tokenize(args, extra: list[str]) -> int:
    from t5forge.vocabularies import tokenize

    _no_extra_args(extra)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.decode:
        if len(args.input) != 1:
            raise UsageError("--decode takes one tokenized directory as --input")
        result = tokenize.decode_corpus(args.vocab, args.input[0], args.output, args.overwrite)
        print(
            f"decoded {result['documents']} documents from {result['shards']} shard(s) "
            f"into {args.output}"
        )
        return 0
    manifest = tokenize.tokenize_corpus(
        args.vocab, args.input, args.output, workers=args.workers, overwrite=args.overwrite
    )
    print(
        f"tokenized {manifest['documents']:,} documents, {manifest['tokens']:,} tokens, "
        f"{manifest['text_bytes'] / 1e6:.1f} MB of text in {manifest['seconds']:.1f} s "
        f"({manifest['mb_per_second']:.2f} MB/s, {args.workers} worker(s)) -> {args.output}"
    )
    if manifest["damaged_records_skipped"]:
        print(f"damaged records skipped: {manifest['damaged_records_skipped']}")
    return 0


def _run_inspect(args, extra: list[str]) -> int:
    from t5forge.vocabularies import Tokenizer, num_sentinels, sentinel_id

    _no_extra_args(extra)
    tokenizer = Tokenizer(args.vocab)
    sentinels = num_sentinels(tokenizer)
    print(
        f"vocab {tokenizer.spec}: size {tokenizer.vocab_size}, pad 0, eos 1, unk 2, "
        f"{sentinels} sentinel(s)"
        + (
            f": <extra_id_0> = {sentinel_id(tokenizer, 0)} ... <extra_id_{sentinels - 1}> = "
            f"{sentinel_id(tokenizer, sentinels - 1)}"
            if sentinels
            else ""
        )
    )
    top = tokenizer.vocab_size - 1
    for text in args.texts:
        ids = tokenizer.encode(text)
        pieces = [tokenizer.id_to_piece(i) for i in ids]
        names = [f"{i}=<extra_id_{top - i}>" for i in ids if top - i < sentinels]
        decoded = tokenizer.decode(ids)
        print(f"\ntext:    {text!r}")
        print(f"ids:     {list(map(int, ids))}")
        print(f"pieces:  {pieces}")
        if names:
            print(f"sentinels: {', '.join(names)}")
        print(f"decoded: {decoded!r} ({'exact round trip' if decoded == text else 'normalized'})")
    return 0


def _run_export(args, extra: list[str]) -> int:
    from t5forge.model import commands
    from t5forge.pipelines import export
    from t5forge.sequence_lengths import parse_sequence_length

    _no_extra_args(extra)
    lengths = parse_sequence_length(args.sequence_length)
    export.check_output(args.output, args.overwrite)  # before the slow task registration
    names = commands.register_tasks(args)
    if names:
        print(
            f"registered {len(names)} task(s): {', '.join(names[:8])}"
            + (" ..." if len(names) > 8 else ""),
            file=sys.stderr,
        )
    info = export.export_task(
        args.task,
        args.output,
        lengths,
        args.examples,
        split=args.split,
        pack=args.pack,
        converter=args.converter,
        packer=args.packer,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    shapes = ", ".join(f"{k} {v}" for k, v in info["features"].items())
    print(f"exported {info['examples']} example(s) of {args.task} to {info['output']}: {shapes}")
    from t5forge.pipelines.tasks import malformed_line_counts

    skipped = malformed_line_counts()
    if skipped:
        print(f"malformed corpus lines skipped: {sum(skipped.values())} ({skipped})")
    return 0


def _run_report(args, beam_args: list[str]) -> int:
    from t5forge.beam_jobs import job, report

    if beam_args:
        raise UsageError(f"unknown arguments: {' '.join(beam_args)}")
    stats = job.load_stats(args.directory)
    path = report.write_report(args.directory)
    print(report.format_table(stats))
    print(f"report: {os.path.abspath(path)}")
    return 0


def _run_quickstart(args, extra: list[str]) -> int:
    from t5forge.quickstart import quickstart

    _no_extra_args(extra)
    quickstart(
        args.output,
        steps=args.steps,
        batch_size=args.batch_size,
        vocab_size=args.vocab_size,
        overwrite=args.overwrite,
    )
    return 0


@contextlib.contextmanager
def _quiet_beam_after_interrupt():
    """Ctrl-C during a corpus job ends it with the job's one line, not Beam's noise.

    While the job unwinds, Beam's runner threads lose their workers and each logs an error or
    prints a traceback. The process is on its way out, so from the first Ctrl-C on, logging and
    reports of exceptions in other threads are switched off for the rest of the process. Only
    where Python's own SIGINT handler is in place (the main thread, not overridden).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def interrupt_quietly(signum, frame):
        logging.disable(logging.CRITICAL)
        threading.excepthook = lambda args: None
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt_quietly)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    handler: Callable = args.handler
    try:
        if args.command in _CLEAN_ON_INTERRUPT:
            with _quiet_beam_after_interrupt():
                return handler(args, extra)
        return handler(args, extra)
    except KeyboardInterrupt as interrupt:
        # One line instead of a traceback; the corpus jobs have removed what they created,
        # unless the interrupt came once the whole corpus was in place.
        written = getattr(interrupt, "output_dir", None)
        if written:
            cleaned = (
                f" after the corpus was written to {written}; "
                f"t5forge report {written} redraws its report"
            )
        elif args.command in _CLEAN_ON_INTERRUPT:
            cleaned = "; nothing written"
        else:
            cleaned = ""
        print(f"t5forge {args.command}: interrupted{cleaned}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"t5forge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"t5forge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
