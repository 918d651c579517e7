"""The trainer end to end on CPU: real span-corruption data from the shared WET files."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import PYTHON_DOCS_WET

from t5forge.beam_jobs import wet
from t5forge.cli import main as cli

SPM = os.path.join(os.path.dirname(__file__), "fixtures", "objectives", "spm2000.model")
VOCAB = 2176  # 2000 pieces + 100 sentinels, rounded up to a multiple of 128
LENGTHS = {"inputs": 128, "targets": 29}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def span_arrays(tmp_path_factory):
    """Span-corruption examples (inputs 128) of real pages, in document order, through the
    same task registration and feature converter as `t5forge train --task`."""
    from t5forge.model.data import task_arrays
    from t5forge.pipelines import register_corpus_tasks

    corpus = tmp_path_factory.mktemp("corpus")
    pages = list(wet.read_wet_file(PYTHON_DOCS_WET))[:120]
    for split, chunk in (("train", pages[:110]), ("validation", pages[110:])):
        with gzip.open(corpus / f"c4-{split}.00000-of-00001.json.gz", "wt") as f:
            for page in chunk:
                f.write(
                    json.dumps({"url": page.url, "timestamp": page.timestamp, "text": page.text})
                )
                f.write("\n")
    register_corpus_tasks("trainer_test", str(corpus), SPM, replace=True)
    common = dict(sequence_length=LENGTHS, examples=10**9, shuffle=False, num_epochs=1)
    train = task_arrays("trainer_test_span_corruption", split="train", **common)
    held = task_arrays("trainer_test_span_corruption", split="validation", **common)
    return train, held


def _config(output, **kw):
    from t5forge.model.optim import OptimizerConfig
    from t5forge.model.trainer import TrainConfig

    defaults = dict(
        output=str(output),
        model="t5.1.1-tiny",
        model_overrides={"vocab_size": VOCAB, "dtype": "float32"},
        steps=12,
        batch_size=8,
        log_every=1,
        eval_every=1000,
        checkpoint_every=4,
        progress=False,
        optimizer=OptimizerConfig(name="adafactor"),
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


def _train_rows(directory):
    from t5forge.model.metrics import read_metrics

    return {m["step"]: m for m in read_metrics(str(directory)) if m["split"] == "train"}


def test_real_data_is_span_corruption(span_arrays):
    train, held = span_arrays
    assert len(train["encoder_input_tokens"]) > 200 and len(held["encoder_input_tokens"]) >= 16
    inputs = train["encoder_input_tokens"]
    sentinels = (inputs >= 2000) & (inputs < 2100)
    assert sentinels.any(axis=1).mean() > 0.95  # masked spans in nearly every example
    assert (train["decoder_loss_weights"].sum(axis=1) > 10).all()


def test_loss_falls_on_real_span_corruption(tmp_path, span_arrays):
    from t5forge.model.data import ArrayBatches
    from t5forge.model.trainer import train

    train_arrays, held = span_arrays
    config = _config(
        tmp_path,
        steps=80,
        batch_size=16,
        log_every=10,
        eval_every=40,
        checkpoint_every=0,
        eval_batches=4,
    )
    summary = train(
        config,
        ArrayBatches(train_arrays, 16, seed=0),
        ArrayBatches(held, 16, shuffle=False),
        log=lambda s: None,
    )
    rows = _train_rows(tmp_path)
    assert rows[1]["cross_entropy"] > np.log(VOCAB) - 0.5  # starts near uniform
    assert summary["train"]["cross_entropy"] < rows[1]["cross_entropy"] - 2.0
    assert summary["eval"]["cross_entropy"] < rows[1]["cross_entropy"] - 1.5
    assert 0.05 < summary["eval"]["accuracy"] < 1.0


@pytest.mark.parametrize("group_updates", [False, True])
def test_resume_after_interruption_reproduces_losses(tmp_path, span_arrays, group_updates):
    from t5forge.model.data import ArrayBatches
    from t5forge.model.optim import OptimizerConfig
    from t5forge.model.trainer import train

    arrays, _ = span_arrays
    overrides = {"vocab_size": VOCAB, "dtype": "float32", "dropout_rate": 0.1}
    optimizer = OptimizerConfig(name="adafactor", group_updates=group_updates)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    # --resume on an empty directory starts from step 0, and says so
    config = _config(straight, model_overrides=overrides, optimizer=optimizer, resume=True)
    first_log = []
    train(config, ArrayBatches(arrays, 8), log=first_log.append)
    assert any("no checkpoint in" in m and "starting from step 0" in m for m in first_log)

    def interrupt(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            _config(broken, model_overrides=overrides, optimizer=optimizer),
            ArrayBatches(arrays, 8),
            on_step=interrupt,
            log=lambda s: 0,
        )
    assert max(_train_rows(broken)) == 7
    messages = []
    train(
        _config(broken, model_overrides=overrides, optimizer=optimizer, resume=True),
        ArrayBatches(arrays, 8),
        log=messages.append,
    )
    assert any("resumed" in m and "step 4" in m for m in messages)
    assert any("state restored in" in m for m in messages)  # no fresh initialisation first
    a, b = _train_rows(straight), _train_rows(broken)
    assert sorted(a) == sorted(b) == list(range(1, 13))  # each step logged once
    for step in range(5, 13):
        assert b[step]["cross_entropy"] == a[step]["cross_entropy"], step
        assert b[step]["grad_norm"] == a[step]["grad_norm"], step


@pytest.mark.parametrize("name", ["adafactor", "adamw-scaled"])
def test_grouped_updates_are_the_per_parameter_updates(name):
    """--group-updates stacks same-named parameters across layers and vmaps the optimizer:
    the same parameters after three steps (Adafactor bit for bit), far fewer state arrays."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from t5forge.model.config import get_config
    from t5forge.model.network import Transformer
    from t5forge.model.optim import OptimizerConfig, make_optimizer

    model = Transformer(get_config("t5.1.1-tiny", vocab_size=VOCAB))
    ids = jnp.ones((1, 8), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.key(0), ids, ids))["params"]
    results = []
    for grouped in (False, True):
        optimizer, _ = make_optimizer(
            OptimizerConfig(name=name, group_updates=grouped, weight_decay=0.01)
        )
        state, current = optimizer.init(params), params
        rng = np.random.default_rng(0)

        @jax.jit
        def step(current, state, grads, optimizer=optimizer):
            updates, state = optimizer.update(grads, state, current)
            return optax.apply_updates(current, updates), state

        for _ in range(3):
            shapes = jax.tree.leaves(current)
            noise = [jnp.asarray(rng.normal(size=p.shape), p.dtype) for p in shapes]
            grads = jax.tree.unflatten(jax.tree.structure(current), noise)
            current, state = step(current, state, grads)
        results.append((current, state))
    (plain, plain_state), (grouped, grouped_state) = results
    tolerance = 0.0 if name == "adafactor" else 1e-6
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(grouped), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tolerance, atol=tolerance)
    n_params = len(jax.tree.leaves(params))
    groups = grouped_state[-1]
    assert isinstance(groups, dict) and len(groups) < n_params // 2
    assert any(key.endswith("attention.query.kernel") for key in groups)
    assert len(jax.tree.leaves(grouped_state)) < len(jax.tree.leaves(plain_state))


def test_gradient_accumulation_equals_whole_batch(tmp_path, span_arrays):
    from t5forge.model.data import ArrayBatches
    from t5forge.model.optim import OptimizerConfig
    from t5forge.model.trainer import train

    arrays, _ = span_arrays
    adamw = OptimizerConfig(name="adamw-scaled", schedule="constant", learning_rate=1e-3)
    runs = {}
    for accum in (1, 4):
        out = tmp_path / f"accum{accum}"
        train(
            _config(out, steps=4, grad_accum=accum, optimizer=adamw, checkpoint_every=0),
            ArrayBatches(arrays, 8),
            log=lambda s: 0,
        )
        runs[accum] = _train_rows(out)
    for step in range(1, 5):
        assert runs[4][step]["loss"] == pytest.approx(runs[1][step]["loss"], rel=1e-4)
        assert runs[4][step]["grad_norm"] == pytest.approx(runs[1][step]["grad_norm"], rel=1e-4)


def test_padding_lengths_train_like_the_mask_and_a_refused_graph_falls_back(
    tmp_path, span_arrays, monkeypatch
):
    """padding="auto" sends unpacked padding to cuDNN as sequence lengths. Here the decision
    is made to believe it runs on cuDNN (the kernels still run XLA's path on CPU): the losses
    equal the boolean-mask run's. When the attention refuses lengths (as some cuDNN might),
    the steps are recompiled with padding as head features, and if those are refused too,
    with the mask; the run goes on with a warning per refusal."""
    import jax

    from t5forge.model import network
    from t5forge.model.data import ArrayBatches
    from t5forge.model.trainer import train

    arrays, held = span_arrays
    assert (arrays["encoder_input_tokens"][:, -1] == 0).any()  # some rows are padded
    monkeypatch.setattr(network, "resolve_attention_impl", lambda requested, **kw: "cudnn")

    def run(name, padding):
        logs = []
        overrides = {"vocab_size": VOCAB, "dtype": "float32", "padding": padding}
        config = _config(
            tmp_path / name,
            steps=6,
            checkpoint_every=0,
            eval_every=6,
            eval_batches=2,
            model_overrides=overrides,
        )
        summary = train(
            config, ArrayBatches(arrays, 8), ArrayBatches(held, 8, shuffle=False), log=logs.append
        )
        return summary, _train_rows(tmp_path / name), logs

    def assert_same_losses(summary, rows, exact=False):
        for step in range(1, 7):
            if exact:
                assert rows[step]["loss"] == mask_rows[step]["loss"]
            else:
                assert rows[step]["loss"] == pytest.approx(mask_rows[step]["loss"], rel=1e-5)
        assert summary["eval"]["cross_entropy"] == pytest.approx(
            mask["eval"]["cross_entropy"], rel=0 if exact else 1e-5
        )

    mask, mask_rows, _ = run("mask", "mask")
    lengths, lengths_rows, logs = run("lengths", "auto")
    assert (mask["padding"], lengths["padding"]) == ("mask", "lengths")
    assert not [line for line in logs if "warning" in line]
    assert_same_losses(lengths, lengths_rows)

    real_attention = jax.nn.dot_product_attention
    refused = {"lengths"}

    def refusing(q, k, v, *args, query_seq_lengths=None, key_value_seq_lengths=None, **kwargs):
        given = query_seq_lengths is not None or key_value_seq_lengths is not None
        if "lengths" in refused and given:
            raise NotImplementedError("this cuDNN refuses a bias with sequence lengths")
        if "features" in refused and q.shape[-1] != 16:  # t5.1.1-tiny's head size
            raise NotImplementedError("this cuDNN refuses a head size of 24")
        return real_attention(q, k, v, *args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", refusing)
    features, features_rows, logs = run("features", "auto")
    assert features["padding"] == "features"
    warnings = [line for line in logs if "did not compile" in line]
    assert len(warnings) == 1 and "refuses a bias with sequence lengths" in warnings[0]
    assert "--override padding=features" in warnings[0]
    compiled = [line for line in logs if line.startswith("compiled the train step in")]
    assert len(compiled) == 1 and compiled[0].endswith(
        "(attention: cudnn; padding of unpacked batches as features)"  # the patched decision
    )
    assert_same_losses(features, features_rows)

    refused.add("features")
    fallback, fallback_rows, logs = run("fallback", "auto")
    assert fallback["padding"] == "mask"
    warnings = [line for line in logs if "did not compile" in line]
    assert len(warnings) == 2 and "head size of 24" in warnings[1]
    assert_same_losses(fallback, fallback_rows, exact=True)
    # An explicit padding is what the user asked for: no silent fallback.
    with pytest.raises(NotImplementedError, match="refuses"):
        run("explicit", "lengths")

    # Running out of memory is not a refusal: no other padding path would help.
    attempts = []

    def out_of_memory(q, k, v, *args, query_seq_lengths=None, **kwargs):
        if query_seq_lengths is None and q.shape[-1] == 16:  # the mask path (initialisation)
            return real_attention(q, k, v, *args, **kwargs)
        attempts.append(1)
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80 GB")

    monkeypatch.setattr(jax.nn, "dot_product_attention", out_of_memory)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        run("oom", "auto")
    assert len(attempts) == 1  # one compilation, not one per padding path


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, span_arrays):
    from t5forge.model.data import ArrayBatches
    from t5forge.model.optim import OptimizerConfig
    from t5forge.model.trainer import Checkpoints, TrainingDivergedError, load_run_params, train

    arrays, _ = span_arrays
    # A learning rate of 1e25 makes the weights overflow float32 within a few steps.
    config = _config(
        tmp_path,
        steps=40,
        checkpoint_every=1,
        log_every=5,
        optimizer=OptimizerConfig(name="adamw", schedule="constant", learning_rate=1e25),
    )
    with pytest.raises(TrainingDivergedError) as raised:
        train(config, ArrayBatches(arrays, 8), log=lambda s: 0)
    message = str(raised.value)
    bad_step = int(message.split(":")[0].split()[-1])
    assert message.startswith(f"step {bad_step}: ") and "last good checkpoint is step" in message
    good = Checkpoints(str(tmp_path), keep=3)
    latest = good.latest_step()
    good.close()
    assert latest == bad_step - 1
    _, params = load_run_params(str(tmp_path))
    assert all(np.isfinite(p).all() for p in __import__("jax").tree.leaves(params))


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from t5forge.model.data import ArrayBatches
    from t5forge.model.metrics import read_metrics
    from t5forge.model.trainer import TrainConfig, train
    from t5forge.model.optim import OptimizerConfig
    data = dict(np.load(sys.argv[1]))
    config = TrainConfig(
        output=sys.argv[2], model="t5.1.1-tiny", steps=5, batch_size=8, log_every=1,
        checkpoint_every=0, progress=False, mesh=sys.argv[3] or None,
        model_overrides={"vocab_size": VOCAB_SIZE, "dtype": "float32"},
        optimizer=OptimizerConfig(name="adafactor", group_updates=sys.argv[4] == "grouped"),
    )
    summary = train(config, ArrayBatches(data, 8), log=lambda s: None)
    rows = [m for m in read_metrics(sys.argv[2]) if m["split"] == "train"]
    print(json.dumps({"mesh": summary["mesh"], "devices": summary["devices"],
                      "losses": [m["cross_entropy"] for m in rows]}))
    """
).replace("VOCAB_SIZE", str(VOCAB))


def _run_sharded(tmp_path, data_file, name, mesh, devices, optimizer=""):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(data_file), str(tmp_path / name), mesh, optimizer],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_training_on_8_devices_matches_one_device(tmp_path, span_arrays):
    arrays, _ = span_arrays
    data_file = tmp_path / "data.npz"
    np.savez(data_file, **{k: v[:64] for k, v in arrays.items()})
    single = _run_sharded(tmp_path, data_file, "one", "", 1)
    sharded = _run_sharded(tmp_path, data_file, "eight", "data=2,fsdp=2,tensor=2", 8)
    assert single["devices"] == 1
    assert sharded["devices"] == 8 and sharded["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert len(single["losses"]) == len(sharded["losses"]) == 5
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=2e-4)
    assert single["losses"][-1] < single["losses"][0]
    # --group-updates: the stacked optimizer state takes its parameters' shardings
    grouped = _run_sharded(tmp_path, data_file, "grouped", "data=2,fsdp=2,tensor=2", 8, "grouped")
    np.testing.assert_allclose(grouped["losses"], single["losses"], rtol=2e-4)


def test_cli_train_plot_resume_and_export_hf(tmp_path, span_arrays, capsys):
    arrays, _ = span_arrays
    data = tmp_path / "span.npz"
    np.savez(data, **{k: v[:96] for k, v in arrays.items()})
    run = tmp_path / "run"
    args = [
        "train", "--data", str(data), "--model", "t5.1.1-tiny",
        "--override", f"vocab_size={VOCAB}", "--override", "dtype=float32",
        "--batch-size", "8", "--eval-fraction", "0.25", "--eval-every", "3",
        "--eval-batches", "2", "--checkpoint-every", "3", "--log-every", "1",
        "--output", str(run), "--no-progress",
    ]  # fmt: skip
    assert cli(args + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "to step 3" in out and "eval cross-entropy" in out
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert {r["split"] for r in rows} == {"train", "eval"}
    assert os.listdir(run / "tensorboard" / "train")
    run_info = json.load(open(run / "run.json"))
    assert run_info["loss_normalization"] == "sum" and run_info["model"]["vocab_size"] == VOCAB

    # Same output without --resume: refused, nothing changed.
    assert cli(args + ["--steps", "6"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(args + ["--steps", "6", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert max(steps) == 6

    assert cli(["plot", str(run)]) == 0
    with open(run / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    from t5forge.model.hf_checkpoint import load_hf_checkpoint
    from t5forge.model.trainer import load_run_params

    hf_dir = tmp_path / "hf"
    assert cli(["export-hf", str(run), "--output", str(hf_dir)]) == 0
    config, trained = load_run_params(str(run))
    hf_config, imported = load_hf_checkpoint(str(hf_dir))
    assert hf_config.d_model == config.d_model and hf_config.vocab_size == VOCAB
    import jax

    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(imported), strict=True):
        np.testing.assert_array_equal(a, b)

    # Continued pretraining from the exported checkpoint starts from the trained weights:
    # its first loss is the trained model's, well below the random initialisation's.
    again = tmp_path / "again"
    init_args = [a if a != str(run) else str(again) for a in args]
    assert cli(init_args + ["--steps", "1", "--init-from", str(hf_dir)]) == 0
    first = json.loads(open(again / "metrics.jsonl").readline())
    original = _train_rows(run)
    assert first["cross_entropy"] < original[1]["cross_entropy"] - 0.5
    assert abs(first["cross_entropy"] - original[6]["cross_entropy"]) < 0.5


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, encoder_input_tokens=np.ones((4, 8), np.int32))
    good = tmp_path / "good.npz"
    rows = np.ones((16, 8), np.int32)
    features = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    np.savez(good, decoder_loss_weights=rows, **{name: rows for name in features})
    text = tmp_path / "notes.txt"
    text.write_text("not an export\n")
    empty = tmp_path / "empty.npz"
    np.savez(empty)  # what exporting an empty split used to write
    big = tmp_path / "big.npz"  # ids up to 1099, as from a 1000-piece vocabulary
    big_rows = np.full((16, 8), 1099, np.int32)
    np.savez(big, decoder_loss_weights=rows, **{name: big_rows for name in features})
    tiny_500 = ["--model", "t5.1.1-tiny", "--override", "vocab_size=500"]
    corpus = tmp_path / "mc4"  # a corpus directory given for the export made from it
    corpus.mkdir()
    cases = [
        (tmp_path / "missing.npz", [], "missing.npz"),
        (text, [], "not a .npz file"),
        (corpus, [], f"--data {corpus}: a directory, not a .npz file"),
        (good, ["--eval-data", str(corpus)], f"--eval-data {corpus}: a directory"),
        (empty, [], f"--data {empty}: holds no examples"),
        (big, tiny_500, f"--data {big}: holds token id 1099, but the model's vocab_size is 500"),
        (good, [*tiny_500, "--eval-data", str(big)], f"--eval-data {big}: holds token id 1099"),
        (bad, [], "missing features"),
        (bad, ["--model", "t5.9-huge"], "unknown model config"),
        (good, ["--model", "t5.1.1-tiny", "--mesh", "data=3,pipeline=2"], "--mesh"),
        (good, ["--model", "t5.1.1-tiny", "--override", "num_heads=abc"], "num_heads"),
        (good, ["--model", "t5.1.1-tiny", "--learning-rate", "-1"], "--learning-rate"),
        (good, ["--model", "t5.1.1-tiny", "--log-every", "0"], "--log-every"),
        (good, ["--model", "t5.1.1-tiny", "--batch-size", "0"], "--batch-size"),
    ]
    for data, extra, message in cases:
        output = tmp_path / "o"
        args = ["train", "--data", str(data), "--steps", "1", "--output", str(output), *extra]
        assert cli(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not output.exists()  # no partial output


def test_model_info_without_a_name_says_one_is_needed(capsys):
    assert cli(["model-info"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0] == "t5forge model-info: error: give a model NAME (or --list); the names:"
    assert "t5.1.1-small" in lines and captured.out == ""
    assert cli(["model-info", "--list"]) == 0  # what --help says lists them
    captured = capsys.readouterr()
    assert "t5.1.1-small" in captured.out.splitlines() and captured.err == ""


def test_out_of_memory_is_one_line_and_removes_only_a_new_run_directory(
    tmp_path, capsys, monkeypatch
):
    """XLA's RESOURCE_EXHAUSTED (a batch too large for the device) becomes exit 2 with a
    hint; the directory is removed only where this run created it and wrote no checkpoint.
    The step is replaced by one that raises what XLA raises: a real out-of-memory would
    depend on the machine's memory and overcommit settings."""
    import jax

    from t5forge.model import trainer

    data = tmp_path / "data.npz"
    rows = np.ones((16, 8), np.int32)
    features = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    np.savez(data, decoder_loss_weights=rows, **{name: rows for name in features})
    checkpoint_first = []

    def out_of_memory(config, *args, **kwargs):
        os.makedirs(os.path.join(config.output, "checkpoints"), exist_ok=True)
        open(os.path.join(config.output, "metrics.jsonl"), "w").close()
        if checkpoint_first:
            os.makedirs(os.path.join(config.output, "checkpoints", "4"))
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 566581353424 bytes."
        )

    monkeypatch.setattr(trainer, "train", out_of_memory)

    def run(output, *extra):
        args = ["train", "--data", str(data), "--model", "t5.1.1-tiny", "--steps", "1",
                "--batch-size", "100000", "--output", str(output), *extra]  # fmt: skip
        code = cli(args)
        return code, capsys.readouterr().err.strip()

    code, err = run(tmp_path / "new")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "out of device memory at --batch-size 100000" in err
    assert "smaller --batch-size" in err and "--grad-accum N" in err
    assert not (tmp_path / "new").exists()

    mine = tmp_path / "mine"  # the user's directory (or a --resume): never removed
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    assert run(mine, "--resume")[0] == 2
    assert (mine / "notes.txt").read_text() == "keep\n"

    checkpoint_first.append(True)  # a new run that got as far as a checkpoint keeps it
    assert run(tmp_path / "later")[0] == 2
    assert (tmp_path / "later" / "checkpoints" / "4").is_dir()

    def other_error(config, *args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(trainer, "train", other_error)  # not memory: not hidden
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        cli(["train", "--data", str(data), "--model", "t5.1.1-tiny", "--steps", "1",
             "--output", str(tmp_path / "other")])  # fmt: skip


def test_model_info_prints_the_published_parameter_count(capsys):
    assert cli(["model-info", "t5.1.1-small"]) == 0
    out = capsys.readouterr().out
    assert "76,961,152" in out and "106.25 GFLOP" in out
    assert cli(["model-info", "t5-efficient-tiny-nl32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["encoder_layers"] == info["decoder_layers"] == 32 and info["d_kv"] == 64


def test_quickstart_refuses_bad_values_and_leaves_nothing_when_a_stage_fails(tmp_path, monkeypatch):
    from t5forge import quickstart as qs

    for kwargs, flag in (
        ({"steps": 0}, "--steps"),
        ({"batch_size": 0}, "--batch-size"),
        ({"vocab_size": 50}, "--vocab-size"),
    ):
        with pytest.raises(ValueError, match=flag):
            qs.quickstart(str(tmp_path / "qs"), **kwargs)
        assert not (tmp_path / "qs").exists()

    def stage_fails(output, *args):
        os.makedirs(os.path.join(output, "corpus"))
        raise ValueError("build-c4 failed (its error is above)")

    monkeypatch.setattr(qs, "_run_stages", stage_fails)
    with pytest.raises(ValueError, match="build-c4 failed"):
        qs.quickstart(str(tmp_path / "qs"))
    assert not (tmp_path / "qs").exists()


def test_quickstart_runs_the_whole_story(tmp_path):
    from t5forge.quickstart import quickstart

    lines = []
    summary = quickstart(str(tmp_path / "qs"), steps=30, batch_size=16, log=lines.append)
    assert os.path.exists(summary["curves"])
    assert os.path.exists(tmp_path / "qs" / "corpus" / "stats.json")
    assert os.path.exists(tmp_path / "qs" / "vocab" / "demo_spm.model")
    rows = _train_rows(tmp_path / "qs" / "run")
    assert rows[30]["cross_entropy"] < rows[1]["cross_entropy"] - 1.0
    assert any(line.startswith("held-out cross-entropy") for line in lines)


@pytest.mark.usefixtures("span_arrays")  # registers the trainer_test_* tasks
def test_task_batches_resume_at_the_same_position():
    """`--task` streams the seqio task in its seeded order; a resumed run skips to its step."""
    from t5forge.model.data import TaskBatches

    batches = TaskBatches(
        "trainer_test_span_corruption", 4, split="train", sequence_length=LENGTHS, seed=3
    )
    stream = batches.iterate(0)
    first = [next(stream) for _ in range(3)]
    resumed = next(batches.iterate(2))
    for name in ("encoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
        assert first[2][name].shape == (4, LENGTHS["inputs" if "encoder" in name else "targets"])
        np.testing.assert_array_equal(resumed[name], first[2][name])
    assert not np.array_equal(first[0]["encoder_input_tokens"], first[1]["encoder_input_tokens"])


@pytest.mark.usefixtures("span_arrays")  # registers the trainer_test_* tasks
def test_cli_train_on_a_task_with_its_validation_split(tmp_path, capsys):
    args = [
        "train", "--task", "trainer_test_span_corruption", "--model", "t5.1.1-tiny",
        "--override", f"vocab_size={VOCAB}", "--override", "dtype=float32",
        "--sequence-length", "inputs=128,targets=29", "--batch-size", "4", "--steps", "2",
        "--eval-split", "validation", "--eval-batches", "2", "--eval-every", "2",
        "--output", str(tmp_path / "run"), "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    assert cli(args) == 0
    assert "eval cross-entropy" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [2]
    assert not (tmp_path / "run" / "tensorboard").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `t5forge train` as on a GPU, where the random parameters are drawn on each host's CPU.
HOST_INIT_CLI = (
    "import sys; from t5forge.model import trainer; trainer._initialise_on_host = lambda: True; "
    "from t5forge.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("host_init", [False, True])
def test_two_host_training_matches_one_host(tmp_path, span_arrays, host_init):
    """`--distributed` with two processes (jax.distributed on CPU): each host feeds its half of
    every batch, and the losses equal a single-process run's; also with the parameters drawn
    on each host and placed on the global mesh (the GPU start-up path)."""
    arrays, _ = span_arrays
    data = tmp_path / "span.npz"
    np.savez(data, **{k: v[:64] for k, v in arrays.items()})
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    launcher = ["-c", HOST_INIT_CLI] if host_init else ["-m", "t5forge.cli"]
    base = [
        sys.executable, *launcher, "train", "--data", str(data),
        "--model", "t5.1.1-tiny", "--override", f"vocab_size={VOCAB}",
        "--override", "dtype=float32", "--steps", "4", "--batch-size", "8", "--log-every", "1",
        "--checkpoint-every", "0", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    port = _free_port()
    hosts = [
        subprocess.Popen(
            base + ["--output", str(tmp_path / "two"), "--distributed",
                    "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                    "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    for host in hosts:
        _, err = host.communicate(timeout=600)
        assert host.returncode == 0, err[-3000:]
    one = subprocess.run(
        base + ["--output", str(tmp_path / "one")], env=env, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    losses = {
        name: [r["cross_entropy"] for r in _train_rows(tmp_path / name).values()]
        for name in ("one", "two")
    }
    assert len(losses["two"]) == 4  # only process 0 writes metrics
    np.testing.assert_allclose(losses["two"], losses["one"], rtol=1e-5)
    run_info = json.load(open(tmp_path / "two" / "run.json"))
    assert len(run_info["devices"]) == 2


def test_import_hf_names_a_missing_local_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["import-hf", str(tmp_path / "no" / "such")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    # A relative name shaped like owner/name is a hub id; its failure says both things.
    from t5forge.model import hf_checkpoint

    def offline(repo_id, *args, **kwargs):
        raise hf_checkpoint.CheckpointError(f"https://hub/{repo_id}/config.json: unreachable")

    monkeypatch.setattr(hf_checkpoint, "download_hf_checkpoint", offline)
    assert cli(["import-hf", "missing/dir"]) == 2
    err = capsys.readouterr().err
    assert "missing/dir: no such local directory, and fetching it as a hub repository" in err
    assert os.listdir(tmp_path) == []


def test_import_hf_prints_a_train_command_that_continues_the_checkpoint(tmp_path, capsys):
    import shlex

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "hf_t5", "t5_1_0")
    assert cli(["import-hf", fixture]) == 0
    out = capsys.readouterr().out
    assert "tied classifier" in out
    command = shlex.split(out.strip().splitlines()[-1].split("train from it: ")[1])
    assert command[:4] == ["t5forge", "train", "--init-from", fixture] and command[-1] == "..."
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 200, (16, 24)).astype(np.int32)
    targets = rng.integers(2, 200, (16, 6)).astype(np.int32)
    data = tmp_path / "small.npz"
    np.savez(
        data,
        encoder_input_tokens=tokens,
        decoder_target_tokens=targets,
        decoder_input_tokens=np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        decoder_loss_weights=np.ones_like(targets),
    )
    run = [
        "--data",
        str(data),
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "0",
        "--output",
        str(tmp_path / "run"),
        "--no-progress",
        "--override",
        "dtype=float32",
    ]
    assert cli(command[1:-1] + run) == 0
    # A model that does not match the checkpoint is refused with the flags that would.
    assert cli(["train", "--init-from", fixture, "--model", "t5.1.1-tiny"] + run[:-2]) == 2
    assert "--model t5-efficient-tiny" in capsys.readouterr().err


def test_import_hf_flags_for_a_relu_model_nearest_to_a_gated_name():
    """A tiny relu T5 1.0 checkpoint is nearest to t5.1.1-tiny in field count, but GEGLU has
    no --override form: the printed flags must come from a relu name instead of failing."""
    from t5forge.model.commands import ARCHITECTURE_FIELDS, model_flags, parse_overrides
    from t5forge.model.config import get_config

    config = get_config(
        "t5.1.1-tiny", activations=("relu",), tie_embeddings=True, vocab_size=2100,
        d_model=64, d_kv=16, num_heads=4, d_ff=128,
        num_encoder_layers=2, num_decoder_layers=2,
    )  # fmt: skip
    flags = model_flags(config).split()
    name = flags[1]
    rebuilt = get_config(name, **parse_overrides(flags[3::2]))
    for field in ARCHITECTURE_FIELDS:
        assert getattr(rebuilt, field) == getattr(config, field), field


class _StopBeforeTrainingError(Exception):
    pass


def test_init_from_with_resume_and_no_checkpoint_starts_from_the_checkpoint(tmp_path, monkeypatch):
    """Jobs that always pass --resume start without a checkpoint: --init-from must apply then
    (it was ignored, training silently from random); with a checkpoint, the checkpoint wins."""
    from t5forge.model import trainer

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "hf_t5", "t5_1_0")
    seen = []

    def fake_train(config, train_batches, eval_batches, *, init_params=None, notice=None):
        seen.append(init_params)
        raise _StopBeforeTrainingError

    monkeypatch.setattr(trainer, "train", fake_train)
    data = tmp_path / "small.npz"
    tokens = np.random.default_rng(0).integers(2, 200, (8, 8)).astype(np.int32)
    np.savez(
        data,
        encoder_input_tokens=tokens,
        decoder_target_tokens=tokens,
        decoder_input_tokens=tokens,
        decoder_loss_weights=np.ones_like(tokens),
    )
    out = tmp_path / "run"
    args = [
        "train", "--init-from", fixture, "--model", "t5-efficient-tiny",
        "--override", "vocab_size=200", "--override", "d_model=32", "--override", "d_kv=8",
        "--override", "d_ff=64", "--override", "num_encoder_layers=2",
        "--override", "num_decoder_layers=2", "--override", "relpos_buckets=16",
        "--override", "relpos_max_distance=32", "--override", "num_heads=4",
        "--data", str(data), "--steps", "1", "--batch-size", "4",
        "--output", str(out), "--resume",
    ]  # fmt: skip
    with pytest.raises(_StopBeforeTrainingError):
        cli(args)
    assert seen[-1] is not None
    (out / "checkpoints" / "5").mkdir(parents=True)
    with pytest.raises(_StopBeforeTrainingError):
        cli(args)
    assert seen[-1] is None


def test_export_hf_refuses_to_overwrite_the_run_itself(tmp_path, capsys, monkeypatch):
    """--output RUN_DIR (or a directory holding it) with --overwrite deleted the whole run."""
    from t5forge.model import hf_checkpoint, trainer

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "hf_t5", "t5_1_0")
    loaded = hf_checkpoint.load_hf_checkpoint(fixture)
    monkeypatch.setattr(trainer, "load_run_params", lambda directory: loaded)
    run = tmp_path / "runs" / "a"
    (run / "checkpoints" / "10").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for output in (run, tmp_path / "runs", tmp_path):
        assert cli(["export-hf", str(run), "--output", str(output), "--overwrite"]) == 2
        assert "is or contains the run" in capsys.readouterr().err
        assert sorted(os.listdir(run)) == ["checkpoints", "run.json"]
    assert cli(["export-hf", str(run), "--output", str(run / "hf")]) == 0
    assert sorted(os.listdir(run / "hf")) == ["config.json", "model.safetensors"]


@pytest.mark.usefixtures("span_arrays")  # registers the trainer_test_* tasks
def test_cli_train_refuses_a_task_vocabulary_larger_than_the_model(tmp_path, capsys):
    args = [
        "train", "--task", "trainer_test_span_corruption", "--model", "t5.1.1-tiny",
        "--override", "vocab_size=2000", "--sequence-length", "inputs=128,targets=29",
        "--batch-size", "4", "--steps", "1", "--output", str(tmp_path / "run"),
    ]  # fmt: skip
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--task trainer_test_span_corruption: its inputs vocabulary has 2100 ids" in err
    assert "vocab_size is 2000" in err
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint_notice_and_absolute_summary_paths(
    tmp_path, span_arrays, capsys, monkeypatch
):
    """--resume into a directory without a checkpoint starts from step 0 and says so on
    stderr; the summary gives the checkpoints and metrics paths both absolute."""
    args = _tiny_train_args(
        tmp_path, span_arrays[0], 8, "--steps", "1", "--batch-size", "4", "--no-tensorboard",
        "--checkpoint-every", "0",
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    args[args.index("--output") + 1] = "run"  # relative, as typed
    assert cli(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    run_dir = os.path.realpath(tmp_path / "run")
    assert (
        f"t5forge train: --resume: no checkpoint in {run_dir}/checkpoints; starting from step 0"
        in captured.err.splitlines()
    )
    assert "no checkpoint in" not in captured.out
    out = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in captured.out.splitlines()
           if line.startswith(("checkpoints: ", "metrics: "))}  # fmt: skip
    assert out == {
        "checkpoints": os.path.join(run_dir, "checkpoints"),
        "metrics": os.path.join(run_dir, "metrics.jsonl"),
    }


def _tiny_train_args(tmp_path, arrays, rows: int, *options: str) -> list[str]:
    """`t5forge train` of t5.1.1-tiny on the first `rows` examples, into tmp_path/run."""
    data = tmp_path / "span.npz"
    np.savez(data, **{k: v[:rows] for k, v in arrays.items()})
    return [
        "train", "--data", str(data), "--model", "t5.1.1-tiny", "--override",
        f"vocab_size={VOCAB}", "--no-progress", "--output", str(tmp_path / "run"), *options,
    ]  # fmt: skip


def test_resume_with_another_optimizer_layout_is_a_clear_error(tmp_path, span_arrays, capsys):
    args = _tiny_train_args(
        tmp_path, span_arrays[0], 16, "--batch-size", "4", "--checkpoint-every", "2",
        "--no-tensorboard",
    )  # fmt: skip
    assert cli(args + ["--steps", "2"]) == 0
    capsys.readouterr()
    assert cli(args + ["--steps", "4", "--resume", "--no-group-updates"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-group-updates" in err and "checkpoints/2" in err


def test_profile_steps_write_a_jax_profiler_trace(tmp_path, span_arrays, capsys):
    args = _tiny_train_args(
        tmp_path, span_arrays[0], 32, "--steps", "4", "--batch-size", "8", "--checkpoint-every", "0"
    )
    assert cli(args + ["--profile-steps", "2:3"]) == 0
    written = [name for _, _, files in os.walk(tmp_path / "run" / "profile") for name in files]
    assert any(name.endswith(".xplane.pb") for name in written)
    assert "perfetto_trace.json.gz" in written  # what benchmarks/profile_summary.py reads
    assert cli(args + ["--profile-steps", "3:1"]) == 2
    assert "--profile-steps" in capsys.readouterr().err


def test_compiled_steps_are_cached_for_the_next_run(tmp_path, span_arrays):
    """--compilation-cache DIR keeps the compiled steps; a second run (as after --resume)
    loads them instead of compiling again (the persistent cache must be configured before a
    process's first compilation, hence the subprocesses)."""
    arrays, _ = span_arrays
    data = tmp_path / "span.npz"
    np.savez(data, **{k: v[:32] for k, v in arrays.items()})
    cache = tmp_path / "jit-cache"
    script = textwrap.dedent(
        """
        import sys
        from jax._src import monitoring
        from t5forge.cli import main
        hits = []
        monitoring.register_event_listener(
            lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
        )
        code = main(sys.argv[1:])
        print("CACHE_HITS", len(hits))
        sys.exit(code)
        """
    )
    args = [
        "train", "--data", str(data), "--model", "t5.1.1-tiny", "--override",
        f"vocab_size={VOCAB}", "--steps", "2", "--batch-size", "8", "--checkpoint-every", "0",
        "--no-progress", "--no-tensorboard", "--compilation-cache", str(cache),
        # The tiny step compiles in well under jax's default 1 s threshold for caching.
        "--override", "dtype=float32",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    runs = []
    for name in ("first", "second"):
        proc = subprocess.run(
            [sys.executable, "-c", script, *args, "--output", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "compiled the train step in" in proc.stdout
        runs.append(int(proc.stdout.split("CACHE_HITS")[-1].split()[0]))
    assert any(cache.iterdir())
    assert runs[0] == 0 and runs[1] > 0


def test_parameters_drawn_on_the_host_are_the_on_device_ones(tmp_path, span_arrays, monkeypatch):
    """On a GPU the trainer draws the random parameters with XLA:CPU (compiling the
    initialisers for the GPU takes minutes) and places them on the mesh: the same run as one
    initialised on the device, in the model's parameter dtype."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from t5forge.model import trainer
    from t5forge.model.config import get_config
    from t5forge.model.data import ArrayBatches
    from t5forge.model.network import Transformer

    arrays, _ = span_arrays
    overrides = {"vocab_size": VOCAB, "dtype": "float32", "param_dtype": "bfloat16"}
    placed = []
    place = trainer._place_params
    monkeypatch.setattr(trainer, "_place_params", lambda *a: placed.append(place(*a)) or placed[-1])
    rows = {}
    for on_host in (False, True):
        monkeypatch.setattr(trainer, "_initialise_on_host", lambda on_host=on_host: on_host)
        output = tmp_path / f"host_{on_host}"
        config = _config(output, model_overrides=overrides, steps=3, checkpoint_every=0)
        trainer.train(config, ArrayBatches(arrays, 8), log=lambda s: 0)
        rows[on_host] = _train_rows(output)
    assert len(placed) == 1  # only the host-initialised run placed parameters
    model = Transformer(get_config("t5.1.1-tiny", **overrides))
    ids = jnp.ones((1, 8), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, ids))["params"]
    assert jax.tree.map(lambda x: x.dtype, placed[0]) == jax.tree.map(lambda x: x.dtype, shapes)
    assert jnp.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(placed[0])}
    for step in (1, 2, 3):
        assert rows[True][step]["cross_entropy"] == rows[False][step]["cross_entropy"], step
        assert rows[True][step]["grad_norm"] == rows[False][step]["grad_norm"], step
