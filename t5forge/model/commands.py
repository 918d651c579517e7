"""`t5forge train`, `plot`, `model-info`, `import-hf`, `export-hf` and `quickstart`.

Argument parsers only at import (argparse); JAX, TensorFlow and matplotlib are imported by
the handlers, so `t5forge --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from t5forge import mixing

EXIT_DIVERGED = 3
HF_DOWNLOAD_ROOT = "hf-checkpoints"  # import-hf's default download location, under the cwd


def parse_overrides(pairs: list[str]) -> dict:
    """["dropout_rate=0.1", "attention_impl=xla"] -> typed dict (ints, floats, bools, text)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--override {pair!r}: expected FIELD=VALUE")
        out[key.strip()] = _typed(value.strip())
    return out


def _typed(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def add_parsers(sub) -> None:
    """Adds the model and training subcommands to the `t5forge` parser."""
    p = sub.add_parser(
        "model-info",
        help="parameters, shapes and FLOPs of a named T5 architecture",
        description="Print a named architecture's shapes, parameter count and training "
        "FLOPs per example/token (no parameters are allocated).",
    )
    p.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="e.g. t5.1.1-base, t5-efficient-small-el16 (required unless --list)",
    )
    p.add_argument("--list", action="store_true", help="list the named architectures")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--sequence-length", default="inputs=512,targets=114", metavar="LENGTHS")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_model_info)

    p = sub.add_parser(
        "train",
        help="pretrain a T5-family model on a task or an exported file",
        description="Train a T5-family model with JAX on a seqio task (needs TensorFlow) or "
        "a `t5forge export` file (numpy only). Writes checkpoints, metrics.jsonl and "
        "TensorBoard events to --output; --resume continues an interrupted run exactly.",
    )
    _add_train_args(p)
    p.set_defaults(handler=run_train)

    p = sub.add_parser(
        "plot",
        help="draw a training run's loss and throughput curves",
        description="Read DIR/metrics.jsonl and write DIR/curves.png.",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--output", metavar="PNG")
    p.set_defaults(handler=run_plot)

    p = sub.add_parser(
        "import-hf",
        help="download or convert a Hugging Face T5 checkpoint",
        description="Read a Hugging Face T5/mT5/umT5/ByT5 checkpoint (a local directory, or a "
        "hub repo id that is downloaded into --download-dir), check it loads, and print its "
        "architecture and the `t5forge train --init-from` command that continues training it.",
    )
    p.add_argument("source", metavar="DIR_OR_REPO")
    p.add_argument(
        "--download-dir",
        metavar="DIR",
        help=f"where a hub checkpoint is saved (default: ./{HF_DOWNLOAD_ROOT}/OWNER--NAME)",
    )
    p.add_argument("--revision", default="main")
    p.set_defaults(handler=run_import_hf)

    p = sub.add_parser(
        "export-hf",
        help="write a training run's newest checkpoint as a Hugging Face checkpoint",
        description="Convert the newest checkpoint of a `t5forge train` run into "
        "model.safetensors + config.json that transformers loads.",
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=run_export_hf)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="t5.1.1-small", help="named architecture (model-info --list)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="model config field, e.g. dropout_rate=0.1, vocab_size=32128, attention_impl=xla",
    )
    data = p.add_argument_group("data (one of --data or --task)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE.npz", help="a `t5forge export` file")
    source.add_argument("--task", metavar="NAME", help="a seqio task or mixture (TensorFlow)")
    data.add_argument("--corpus", metavar="DIR", help="register t5forge's tasks over DIR first")
    data.add_argument("--vocab", metavar="SPEC", help="vocabulary for --corpus tasks")
    data.add_argument("--prefix", default="corpus", help="task prefix for --corpus")
    data.add_argument(
        "--mixing",
        default="temperature",
        choices=mixing.METHODS,
        help="a build-mc4 --corpus's mixture rates, from its stats.json (default temperature)",
    )
    data.add_argument("--module", action="append", default=[], help="import MODULE first")
    data.add_argument("--split", default="train")
    data.add_argument("--sequence-length", default="inputs=512,targets=114", metavar="LENGTHS")
    data.add_argument("--pack", action="store_true", help="pack --task examples")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-data", metavar="FILE.npz", help="exported validation examples")
    ev.add_argument("--eval-split", metavar="SPLIT", help="validation split of --task")
    ev.add_argument(
        "--eval-fraction",
        type=float,
        default=0.0,
        help="hold out this fraction of --data's examples for evaluation",
    )
    ev.add_argument("--eval-every", type=int, default=1000, metavar="K")
    ev.add_argument("--eval-batches", type=int, default=20, metavar="N")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--steps", type=int, required=True)
    opt.add_argument("--batch-size", type=int, default=128)
    opt.add_argument("--grad-accum", type=int, default=1, metavar="N", help="microbatches/step")
    opt.add_argument(
        "--optimizer", default="adafactor", choices=["adafactor", "adamw-scaled", "adamw"]
    )
    opt.add_argument(
        "--lr-schedule", default=None, choices=["rsqrt", "cosine", "constant", "linear"]
    )
    opt.add_argument("--learning-rate", type=float, help="peak rate (default per optimizer)")
    opt.add_argument("--warmup-steps", type=int, default=10_000)
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--grad-clip", type=float, help="global-norm clipping (0: off)")
    opt.add_argument(
        "--group-updates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute the optimizer's per-parameter updates once per group of layers (the "
        "same arithmetic in far fewer GPU kernels; the default). Checkpoints keep the layout: "
        "resume an ungrouped one with --no-group-updates",
    )
    opt.add_argument("--z-loss", type=float, default=1e-4)
    opt.add_argument(
        "--loss-normalization",
        choices=["sum", "num_real_target_tokens", "num_total_target_tokens", "per_sequence"],
        help="default: sum for Adafactor (t5x), num_real_target_tokens for AdamW",
    )
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--init-from", metavar="HF_DIR", help="start from a Hugging Face checkpoint")
    run = p.add_argument_group("run")
    run.add_argument("--output", required=True, metavar="DIR")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    run.add_argument("--checkpoint-every", type=int, default=1000, metavar="K")
    run.add_argument("--keep-checkpoints", type=int, default=3, metavar="N")
    run.add_argument("--log-every", type=int, default=50, metavar="K")
    run.add_argument("--no-tensorboard", action="store_true")
    run.add_argument(
        "--profile-steps",
        metavar="FIRST:LAST",
        help="trace these steps with jax.profiler into OUTPUT/profile (an xplane for TensorBoard "
        "and perfetto_trace.json.gz for ui.perfetto.dev), e.g. 20:25",
    )
    run.add_argument("--no-progress", action="store_true")
    run.add_argument(
        "--compilation-cache",
        metavar="DIR|off",
        help="keep compiled steps here so that reruns and resumes skip compilation (minutes on a "
        "GPU); default $JAX_COMPILATION_CACHE_DIR, else ~/.cache/t5forge/jax",
    )
    run.add_argument(
        "--mesh",
        metavar="data=N,fsdp=N,tensor=N",
        help="device mesh (default: data parallel over all devices)",
    )
    dist = p.add_argument_group(
        "multi-host (jax.distributed; on Cloud TPU and SLURM/Open MPI clusters the values are "
        "auto-detected with --distributed alone)"
    )
    dist.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize")
    dist.add_argument("--coordinator-address", metavar="HOST:PORT")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)


def compilation_cache_dir(value: str | None) -> str | None:
    """The persistent compilation cache directory for --compilation-cache (None: off)."""
    if value == "off":
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "t5forge", "jax")


def _initialize_distributed(args) -> None:
    if not (args.distributed or args.coordinator_address):
        return
    import jax

    kwargs = {}
    if args.coordinator_address:
        kwargs["coordinator_address"] = args.coordinator_address
    if args.num_processes is not None:
        kwargs["num_processes"] = args.num_processes
    if args.process_id is not None:
        kwargs["process_id"] = args.process_id
    jax.distributed.initialize(**kwargs)


def register_tasks(args) -> list[str]:
    """Imports --module modules and registers t5forge's tasks over --corpus; their names."""
    import importlib

    for module in args.module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--module {module}: cannot import ({e})") from e
    if not args.corpus:
        return []
    if not args.vocab:
        raise ValueError("--corpus needs --vocab SPEC")
    from t5forge.pipelines import register_corpus_tasks

    return register_corpus_tasks(args.prefix, args.corpus, args.vocab, mixing_method=args.mixing)


def build_data(args, process_index: int = 0, process_count: int = 1, vocab_size: int | None = None):
    """(train batches, eval batches or None) from the command's data arguments.

    With `vocab_size` (the model's), data holding larger token ids is refused here, before
    the run's directory exists, rather than training on to a NaN loss.
    """
    from t5forge.model import data

    common = dict(process_index=process_index, process_count=process_count)
    eval_batches = None
    if args.data:
        arrays = data.load_exported(args.data)
        if vocab_size is not None:
            data.check_token_ids(arrays, vocab_size, f"--data {args.data}")
        if args.eval_fraction:
            count = len(arrays["encoder_input_tokens"])
            arrays, held = data.hold_out(
                arrays, int(round(count * args.eval_fraction)), f"--eval-fraction {args.data}"
            )
            eval_batches = data.ArrayBatches(
                held, args.batch_size, shuffle=False, name=args.data, **common
            )
        train_batches = data.ArrayBatches(
            arrays, args.batch_size, seed=args.seed, name=args.data, **common
        )
    else:
        from t5forge.sequence_lengths import parse_sequence_length

        register_tasks(args)
        lengths = parse_sequence_length(args.sequence_length)
        train_batches = data.TaskBatches(
            args.task,
            args.batch_size,
            split=args.split,
            sequence_length=lengths,
            pack=args.pack,
            seed=args.seed,
            **common,
        )
        if vocab_size is not None:
            data.check_task_vocabulary(args.task, vocab_size)
        if args.eval_split:
            held = data.task_arrays(
                args.task,
                split=args.eval_split,
                sequence_length=lengths,
                examples=args.eval_batches * args.batch_size,
                pack=args.pack,
                shuffle=False,
            )
            eval_batches = data.ArrayBatches(held, args.batch_size, shuffle=False, **common)
    if args.eval_data:
        held = data.load_exported(args.eval_data, "--eval-data")
        if vocab_size is not None:
            data.check_token_ids(held, vocab_size, f"--eval-data {args.eval_data}")
        eval_batches = data.ArrayBatches(
            held,
            args.batch_size,
            shuffle=False,
            name=args.eval_data,
            **common,
        )
    return train_batches, eval_batches


def train_config_from_args(args):
    from t5forge.model.optim import OptimizerConfig
    from t5forge.model.trainer import TrainConfig

    schedule = args.lr_schedule or ("rsqrt" if args.optimizer == "adafactor" else "cosine")
    return TrainConfig(
        output=args.output,
        model=args.model,
        model_overrides=parse_overrides(args.override),
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer=OptimizerConfig(
            name=args.optimizer,
            schedule=schedule,
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps,
            total_steps=args.steps,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            group_updates=args.group_updates,
        ),
        z_loss=args.z_loss,
        loss_normalization=args.loss_normalization,
        grad_accum=args.grad_accum,
        seed=args.seed,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        mesh=args.mesh,
        resume=args.resume,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        profile_steps=_profile_steps(args.profile_steps),
    )


def _profile_steps(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    first, sep, last = text.partition(":")
    try:
        steps = (int(first), int(last if sep else first))
    except ValueError:
        raise ValueError(f"--profile-steps {text!r}: expected FIRST:LAST step numbers") from None
    if not 1 <= steps[0] <= steps[1]:
        raise ValueError(f"--profile-steps {text!r}: need 1 <= FIRST <= LAST")
    return steps


def run_train(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    config = train_config_from_args(args)  # validates before anything heavy is imported
    model_config = config.model_config()
    _initialize_distributed(args)
    import jax

    from t5forge.model.trainer import TrainingDivergedError, latest_checkpoint_step, train

    # XLA's runtime errors (out of memory among them); XlaRuntimeError in older jax.
    runtime_error = getattr(jax.errors, "JaxRuntimeError", None) or getattr(
        jax.errors, "XlaRuntimeError", RuntimeError
    )

    cache = compilation_cache_dir(args.compilation_cache)
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", cache)

    train_batches, eval_batches = build_data(
        args, jax.process_index(), jax.process_count(), vocab_size=model_config.vocab_size
    )
    init_params = None
    # --resume continues from a checkpoint when there is one; the first launch of a job that
    # always passes --resume has none, and must start from --init-from, not from random.
    if args.init_from and not (args.resume and latest_checkpoint_step(args.output) is not None):
        from t5forge.model.hf_checkpoint import load_hf_checkpoint

        hf_config, init_params = load_hf_checkpoint(args.init_from)
        mine = model_config
        for field in ARCHITECTURE_FIELDS:
            if getattr(hf_config, field) != getattr(mine, field):
                raise ValueError(
                    f"--init-from {args.init_from}: {field} is {getattr(hf_config, field)}, "
                    f"--model {args.model} has {getattr(mine, field)}; use "
                    f"{model_flags(hf_config)}"
                )
    output_existed = os.path.exists(args.output)
    try:
        summary = train(
            config,
            train_batches,
            eval_batches,
            init_params=init_params,
            notice=lambda message: print(f"t5forge train: {message}", file=sys.stderr),
        )
    except TrainingDivergedError as e:
        print(f"t5forge train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except runtime_error as e:
        if not is_out_of_memory(e):
            raise
        # Nothing of a run that never got to a checkpoint is worth keeping: remove the
        # directory this run made, so that the retry with a smaller batch starts clean. A
        # directory that was there before (--resume, or the user's own) is never touched.
        removed = ""
        if not output_existed and latest_checkpoint_step(args.output) is None:
            shutil.rmtree(args.output, ignore_errors=True)
            removed = f"; removed {args.output}"
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"out of device memory at --batch-size {args.batch_size} ({detail}){removed}; "
            "use a smaller --batch-size, or keep it and split each step into microbatches "
            "with --grad-accum N"
        ) from None
    except KeyboardInterrupt:
        print(
            f"t5forge train: interrupted; continue with --resume --output {args.output}",
            file=sys.stderr,
        )
        return 130
    _print_summary(summary)
    return 0


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a JAX runtime error is XLA running out of device (or host) memory."""
    return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def _print_summary(summary: dict) -> None:
    train = summary.get("train") or {}
    line = (
        f"trained {summary['model']} ({summary['parameters']:,} parameters) to step "
        f"{summary['steps']} on {summary['devices']} device(s)"
    )
    if train:
        line += f": train cross-entropy {train['cross_entropy']:.4f}"
    if summary.get("eval"):
        line += f", eval cross-entropy {summary['eval']['cross_entropy']:.4f}"
    if summary.get("tokens_per_second"):
        line += f", {summary['tokens_per_second']:,.0f} tokens/s"
    print(line)
    # Both absolute (checkpoints already is), so either can be pasted from anywhere.
    print(f"checkpoints: {os.path.abspath(summary['checkpoints'])}")
    print(f"metrics: {os.path.abspath(os.path.join(summary['output'], 'metrics.jsonl'))}")


def run_plot(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from t5forge.model.plot import plot_run

    skipped: list[str] = []  # a damaged line costs one point of the curve, not the plot
    path = plot_run(args.directory, args.output, skipped)
    if skipped:
        print(
            f"skipped {len(skipped)} corrupt metrics line(s); first: {skipped[0]}",
            file=sys.stderr,
        )
    print(f"curves: {path}")
    return 0


def run_model_info(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from t5forge.model.config import available_configs, describe, get_config
    from t5forge.sequence_lengths import parse_sequence_length

    if args.list or not args.name:
        # Without a NAME (and no --list) this is a usage error: say so on stderr, then list
        # the names there too, so that stdout stays empty for a failed command.
        out = sys.stdout if args.list else sys.stderr
        if not args.list:
            print("t5forge model-info: error: give a model NAME (or --list); the names:", file=out)
        for name in available_configs():
            print(name, file=out)
        print(
            "t5-efficient-<size>[-el|dl|nl|ff|dm|kv|nh<N>...]   (e.g. t5-efficient-small-el16)",
            file=out,
        )
        return 0 if args.list else 2
    lengths = parse_sequence_length(args.sequence_length)
    info = describe(
        get_config(args.name, **parse_overrides(args.override)),
        (lengths.get("inputs", 512), lengths.get("targets", 114)),
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.2f}M)"
        elif key.startswith("train_flops"):
            value = f"{value:.4g} ({value / 1e9:.2f} GFLOP)"
        print(f"{key:<{width}}  {value}")
    return 0


def run_import_hf(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from t5forge.model import hf_checkpoint
    from t5forge.model.config import describe

    source = args.source
    if not os.path.exists(source):
        if not hf_checkpoint.is_hub_repo_id(source):
            raise FileNotFoundError(
                f"{source}: no such checkpoint directory (nor a hub repository id owner/name)"
            )
        target = args.download_dir or os.path.join(HF_DOWNLOAD_ROOT, source.replace("/", "--"))
        try:
            hf_checkpoint.download_hf_checkpoint(source, target, revision=args.revision)
        except (OSError, hf_checkpoint.CheckpointError) as e:
            raise hf_checkpoint.CheckpointError(
                f"{source}: no such local directory, and fetching it as a hub repository "
                f"failed: {e}"
            ) from e
        source = target
    config, params = hf_checkpoint.load_hf_checkpoint(source)
    info = describe(config)
    print(f"checkpoint: {os.path.abspath(source)}")
    print(
        f"architecture: d_model {config.d_model}, d_ff {config.d_ff}, heads {config.num_heads}x"
        f"{config.d_kv}, layers {config.num_encoder_layers}/{config.num_decoder_layers}, "
        f"vocab {config.vocab_size}, {info['mlp']}, "
        f"{'tied' if config.tie_embeddings else 'untied'} classifier"
    )
    print(f"parameters: {info['parameters']:,}")
    print(f"train from it: t5forge train --init-from {source} {model_flags(config)} ...")
    return 0


# The fields a checkpoint fixes (the rest are numerics, speed and regularisation choices).
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "d_model",
    "num_heads",
    "d_kv",
    "d_ff",
    "num_encoder_layers",
    "num_decoder_layers",
    "activations",
    "tie_embeddings",
    "layer_heads",
    "layer_d_ff",
    "talking_heads",
    "relpos_per_layer",
    "relpos_buckets",
    "relpos_max_distance",
    "layer_norm_epsilon",
)


def model_flags(config) -> str:
    """`--model NAME [--override F=V ...]` that builds `config`'s shapes."""
    from t5forge.model.config import NAMED_CONFIGS

    def differences(named):
        return [f for f in ARCHITECTURE_FIELDS if getattr(named, f) != getattr(config, f)]

    def cost(named):
        # A tuple field (activations, per-layer widths) has no --override form, so the nearest
        # name that needs none of them wins over one that is nearer in field count.
        fields = differences(named)
        return (any(isinstance(getattr(config, f), tuple) for f in fields), len(fields))

    best = min(NAMED_CONFIGS.values(), key=cost)
    flags = [f"--model {best.name}"]
    for field in differences(best):
        value = getattr(config, field)
        if isinstance(value, tuple):
            raise ValueError(f"{field}={value} has no --override form; use the Python API")
        flags.append(f"--override {field}={value}")
    return " ".join(flags)


def run_export_hf(args, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    from t5forge.model.hf_checkpoint import save_hf_checkpoint
    from t5forge.model.trainer import load_run_params

    output, run = os.path.realpath(args.output), os.path.realpath(args.run)
    if os.path.commonpath([output, run]) == output:
        # --overwrite replaces --output as a whole: here that would delete the run itself.
        raise ValueError(
            f"--output {args.output} is or contains the run {args.run}; export to another "
            "directory (one inside the run, such as RUN_DIR/hf, is fine)"
        )
    config, params = load_run_params(args.run)
    save_hf_checkpoint(params, config, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.output} ({config.name})")
    return 0
