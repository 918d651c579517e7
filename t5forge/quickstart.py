"""`t5forge quickstart`: the whole story on the shipped demo data, on CPU, in a few minutes.

1. build the demo C4 corpus (the WET slice shipped with t5forge, TFDS's C4 rules);
2. train a small SentencePiece vocabulary on it (T5 ids, 100 sentinels);
3. register the corpus tasks and read the span-corruption task once, in document order;
   the last 10% of examples (whole documents, never trained on) are held out;
4. train a tiny T5 1.1 with Adafactor, evaluating on the held-out examples;
5. draw the loss curves.
"""

from __future__ import annotations

import os
import shutil
import time

LENGTHS = {"inputs": 128, "targets": 29}  # random_spans_helper(128, 0.15, 3) -> 29 targets
HELD_OUT = 0.1
# SentencePiece needs room for the demo text's characters and T5's special pieces.
MIN_VOCAB_SIZE = 500


def _round_up(n: int, multiple: int = 128) -> int:
    return -(-n // multiple) * multiple


def quickstart(
    output: str,
    *,
    steps: int = 300,
    batch_size: int = 32,
    vocab_size: int = 2000,
    overwrite: bool = False,
    log=print,
) -> dict:
    """Runs the five stages into `output`; returns the training summary.

    A stage that fails (or an interrupt) removes `output` again: nothing half-made is left.
    """
    for flag, value in (("--steps", steps), ("--batch-size", batch_size)):
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    if os.path.exists(output):
        if not overwrite:
            raise FileExistsError(f"--output {output} exists; pass --overwrite to start over")
        shutil.rmtree(output)
    os.makedirs(output)
    try:
        return _run_stages(output, steps, batch_size, vocab_size, log)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise


def _stage(exit_code: int, command: str) -> None:
    """Turns a stage's exit code back into what happened: an interrupt or an error."""
    if exit_code == 130:
        raise KeyboardInterrupt
    if exit_code != 0:
        raise ValueError(f"{command} failed (its error is above)")


def _run_stages(output: str, steps: int, batch_size: int, vocab_size: int, log) -> dict:
    from t5forge.cli import main as cli

    started = time.perf_counter()
    corpus = os.path.join(output, "corpus")
    spm_prefix = os.path.join(output, "vocab", "demo_spm")
    run_dir = os.path.join(output, "run")

    log(f"[1/5] building the demo C4 corpus into {corpus}")
    _stage(cli(["build-c4", "--output", corpus, "--format", "jsonl"]), "build-c4")
    log(f"[2/5] training a {vocab_size}-piece SentencePiece model")
    args = ["train-spm", "--input", corpus, "--output", spm_prefix]
    _stage(cli(args + ["--vocab-size", str(vocab_size)]), "train-spm")

    log("[3/5] registering the corpus tasks and reading span corruption (inputs 128)")
    from t5forge.model.data import ArrayBatches, hold_out, task_arrays
    from t5forge.pipelines import register_corpus_tasks

    vocab = spm_prefix + ".model"
    register_corpus_tasks("quickstart", corpus, vocab, replace=True)
    arrays = task_arrays(
        "quickstart_span_corruption",
        split="train",
        sequence_length=LENGTHS,
        examples=10**9,
        shuffle=False,
        num_epochs=1,
    )
    count = len(arrays["encoder_input_tokens"])
    held = max(batch_size, int(count * HELD_OUT))
    train_arrays, eval_arrays = hold_out(arrays, held, "the demo corpus")
    log(f"      {count} examples: {count - held} to train on, {held} held out")

    log(f"[4/5] training t5.1.1-tiny for {steps} steps on CPU into {run_dir}")
    from t5forge.model.optim import OptimizerConfig
    from t5forge.model.trainer import TrainConfig, train

    config = TrainConfig(
        output=run_dir,
        model="t5.1.1-tiny",
        model_overrides={"vocab_size": _round_up(vocab_size + 100), "dtype": "float32"},
        steps=steps,
        batch_size=batch_size,
        optimizer=OptimizerConfig(name="adafactor", schedule="rsqrt"),
        log_every=10,
        eval_every=max(steps // 5, 1),
        eval_batches=held // batch_size,
        checkpoint_every=max(steps // 3, 1),
    )
    summary = train(
        config,
        ArrayBatches(train_arrays, batch_size, seed=0),
        ArrayBatches(eval_arrays, batch_size, shuffle=False),
        log=log,
    )

    log("[5/5] drawing the curves")
    from t5forge.model.metrics import read_metrics
    from t5forge.model.plot import plot_run

    png = plot_run(run_dir)
    train_rows = [m for m in read_metrics(run_dir) if m["split"] == "train"]
    first, last = train_rows[0]["cross_entropy"], train_rows[-1]["cross_entropy"]
    evals = [m for m in read_metrics(run_dir) if m["split"] == "eval"]
    log(
        f"\ntrain cross-entropy {first:.3f} (step {train_rows[0]['step']}) -> {last:.3f} "
        f"(step {train_rows[-1]['step']})"
    )
    if evals:
        log(
            "held-out cross-entropy "
            + ", ".join(f"{m['cross_entropy']:.3f} (step {m['step']})" for m in evals)
        )
    log(f"curves: {png}")
    log(f"checkpoints: {summary['checkpoints']}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    summary["curves"] = png
    return summary
