"""The training loop: one jitted step, sharded over a device mesh, with checkpoints and metrics.

    state = init or restore
    for step in range(start, steps):
        state, metrics = train_step(state, batch(step))
        every log_every: metrics -> metrics.jsonl / TensorBoard; stop on NaN/inf
        every eval_every: validation loss
        every checkpoint_every: orbax checkpoint (atomic, keep the newest N)

Determinism: the batch of a step is a function of (seed, step) and the dropout key is
fold_in(key(seed), step), so a run resumed from a checkpoint at step s computes the same
losses after s as a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct

from t5forge.model import sharding
from t5forge.model.config import T5Config, get_config, train_flops
from t5forge.model.losses import NORMALIZATIONS, loss_and_metrics, loss_weights
from t5forge.model.network import Transformer, config_attention_impl, resolve_padding
from t5forge.model.optim import OptimizerConfig, grouped_state_parameter, make_optimizer

# Dense bf16 peak FLOP/s by device kind, for MFU (spec sheets; SXM parts).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12, "L4": 121e12}


class TrainingDivergedError(RuntimeError):
    """The loss or the gradients became NaN/inf."""


@dataclasses.dataclass
class TrainConfig:
    output: str
    model: str = "t5.1.1-small"
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 128
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    z_loss: float = 1e-4
    # None: "sum" for Adafactor (t5x), "num_real_target_tokens" for AdamW (nanoT5).
    loss_normalization: str | None = None
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 20
    checkpoint_every: int = 1000  # 0: no checkpoints (benchmarks)
    keep_checkpoints: int = 3
    mesh: str | None = None
    resume: bool = False
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float | None = None
    # (first, last) step to trace with jax.profiler into DIR/profile (TensorBoard/Perfetto).
    profile_steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"--steps must be positive, got {self.steps}")
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--log-every", self.log_every),
            ("--eval-every", self.eval_every),
            ("--keep-checkpoints", self.keep_checkpoints),
        ):
            if value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        for flag, value in (
            ("--eval-batches", self.eval_batches),
            ("--checkpoint-every", self.checkpoint_every),
        ):
            if value < 0:
                raise ValueError(f"{flag} must not be negative (0: none), got {value}")
        if self.grad_accum <= 0 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"--grad-accum {self.grad_accum} must divide --batch-size {self.batch_size}"
            )
        if self.loss_normalization is not None and self.loss_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"--loss-normalization {self.loss_normalization!r}: one of {NORMALIZATIONS}"
            )

    @property
    def normalization(self) -> str:
        if self.loss_normalization is not None:
            return self.loss_normalization
        return "sum" if self.optimizer.name == "adafactor" else "num_real_target_tokens"

    def model_config(self) -> T5Config:
        return get_config(self.model, **dict(self.model_overrides))


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


# ---------------------------------------------------------------------------------------------
# The step functions


def _apply(model: Transformer, params, batch, *, dropout_key=None):
    packed = "encoder_segment_ids" in batch
    return model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["encoder_segment_ids"] if packed else None,
        batch["decoder_segment_ids"] if packed else None,
        deterministic=dropout_key is None,
        rngs=None if dropout_key is None else {"dropout": dropout_key},
    )


def make_train_step(
    model: Transformer,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: TrainConfig,
) -> Callable:
    """train_step(state, batch) -> (state, metrics); metrics are sums over the batch."""
    dropout = model.config.dropout_rate > 0
    base_key = jax.random.key(config.seed + 1)

    def microbatch_loss(params, micro, divisor, key):
        logits = _apply(model, params, micro, dropout_key=key if dropout else None)
        return loss_and_metrics(
            logits,
            micro["decoder_target_tokens"],
            micro["decoder_loss_weights"],
            z_loss=config.z_loss,
            token_weights=micro["token_weights"],
            divisor=divisor,
        )

    grad_fn = jax.value_and_grad(microbatch_loss, has_aux=True)

    def train_step(state: TrainState, batch):
        batch = dict(batch)
        batch["token_weights"], divisor = loss_weights(
            batch["decoder_loss_weights"],
            config.normalization,
            batch.get("decoder_segment_ids"),
        )
        key = jax.random.fold_in(base_key, state.step)
        if config.grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, divisor, key)
        else:
            # Microbatches in a scan: gradients of per-microbatch losses that share the
            # whole batch's divisor add up to the whole batch's gradient.
            micro = jax.tree.map(lambda a: a.reshape(config.grad_accum, -1, *a.shape[1:]), batch)

            def accumulate(carry, inputs):
                index, mb = inputs
                micro_key = jax.random.fold_in(key, index)
                (micro_loss, m), g = grad_fn(state.params, mb, divisor, micro_key)
                return jax.tree.map(jnp.add, carry, (micro_loss, m, g)), None

            zeros = jax.tree.map(
                jnp.zeros_like,
                (jnp.float32(0), {k: jnp.float32(0) for k in _METRIC_KEYS}, state.params),
            )
            (loss, metrics, grads), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(config.grad_accum), micro)
            )
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            grad_norm=grad_norm,
            learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
        )
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


_METRIC_KEYS = ("cross_entropy", "z_loss", "correct", "weight")


def make_eval_step(model: Transformer, config: TrainConfig) -> Callable:
    def eval_step(params, batch):
        logits = _apply(model, params, batch)
        _, metrics = loss_and_metrics(
            logits,
            batch["decoder_target_tokens"],
            batch["decoder_loss_weights"],
            z_loss=config.z_loss,
        )
        return metrics

    return eval_step


# What `padding="auto"` tries next when the fused kernels refuse a graph at compile time.
_PADDING_FALLBACKS = {"lengths": "features", "features": "mask"}
_OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"


class _CompiledSteps:
    """The jitted train and eval steps, compiled ahead of their first call.

    Compiling explicitly times compilation apart from training and lets a refusal be recovered:
    with `padding="auto"` on cuDNN an unpacked batch's padding goes to the kernel as sequence
    lengths (`resolve_padding`); should this cuDNN/jax combination refuse that graph, the steps
    are rebuilt with the padding as extra head features, then as the boolean mask (same
    numbers, slower), and the run goes on with a warning instead of failing. An explicit
    `padding` is never replaced.
    """

    def __init__(self, model_config: T5Config, build, log: Callable[[str], None]):
        self.model_config = model_config
        self._automatic = model_config.padding == "auto"
        self._build = build  # T5Config -> {"train": jitted, "eval": jitted}
        self._jitted = build(model_config)
        self._compiled: dict = {}
        self._log = log
        self.compile_seconds = 0.0

    def __call__(self, which: str, *args):
        batch = args[-1]
        key = (which, tuple(sorted((k, a.shape, str(a.dtype)) for k, a in batch.items())))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compile(which, key, args)
        return compiled(*args)

    def _compile(self, which: str, key, args):
        start = time.perf_counter()
        while True:
            try:
                compiled = self._jitted[which].lower(*args).compile()
                break
            except Exception as error:  # noqa: BLE001 - any refusal of the kernel graph
                current = resolve_padding(self.model_config)
                fallback = _PADDING_FALLBACKS.get(current) if self._automatic else None
                text = str(error).strip()
                if fallback is None or _OUT_OF_MEMORY in text:
                    raise  # another padding path would not need less memory
                reason = text.splitlines()[0][:300] if text else ""
                self._log(
                    f"warning: the {which} step with padding as {current} did not compile "
                    f"({type(error).__name__}: {reason}); trying padding as {fallback} (same "
                    f"numbers). Pass --override padding={fallback} to skip this try."
                )
                self.model_config = self.model_config.replace(padding=fallback)
                self._jitted = self._build(self.model_config)
                self._compiled.clear()
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        cfg = self.model_config
        attention = config_attention_impl(cfg, dropout=cfg.dropout_rate > 0 and which == "train")
        self._log(
            f"compiled the {which} step in {seconds:.1f} s (attention: {attention}; "
            f"padding of unpacked batches as {resolve_padding(cfg)})"
        )
        self._compiled[key] = compiled
        return compiled


# ---------------------------------------------------------------------------------------------
# State creation, sharding, checkpoints


def random_params(model: Transformer, lengths: Mapping[str, int], key):
    """`model`'s random parameters, unboxed; its initialisation runs one unpacked row."""
    return nn.meta.unbox(model.init(key, *_dummy_batch(lengths)))["params"]


def _dummy_batch(lengths: Mapping[str, int]):
    return (
        jnp.ones((1, lengths["inputs"]), jnp.int32),
        jnp.ones((1, lengths["targets"]), jnp.int32),
    )


def _opt_state_shardings(opt_state_shapes, param_shardings, mesh):
    """Optimizer-state leaves shaped like their parameter share its sharding; the rest
    (factored Adafactor statistics, counters) are small and replicated."""
    by_path = {
        _param_path(path): s for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    }
    replicated = sharding.replicated(mesh)

    def choose(path, leaf):
        key = _param_path(path)
        for length in range(len(key), 0, -1):
            candidate = by_path.get(key[-length:])
            if candidate is not None:
                shape_ok = _sharded_shape_ok(candidate, leaf.shape)
                return candidate if shape_ok else replicated
        if key and leaf.ndim:
            # --group-updates: a group's state is stacked along a new leading axis and
            # named after the group's first parameter; it shares that parameter's sharding.
            candidate = by_path.get(grouped_state_parameter(key[-1]))
            if candidate is not None and _sharded_shape_ok(candidate, leaf.shape[1:]):
                spec = jax.sharding.PartitionSpec(None, *candidate.spec)
                return jax.sharding.NamedSharding(mesh, spec)
        return replicated

    return jax.tree_util.tree_map_with_path(choose, opt_state_shapes)


def _param_path(path) -> tuple[str, ...]:
    return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def _sharded_shape_ok(named: jax.sharding.NamedSharding, shape) -> bool:
    spec = tuple(named.spec)
    if len(spec) > len(shape):
        return False
    for dim, axes in zip(shape, spec, strict=False):
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else axes
        if dim % int(np.prod([named.mesh.shape[n] for n in names])):
            return False
    return True


class Checkpoints:
    """orbax checkpoints of the train state under DIR/checkpoints: periodic, atomic (orbax
    writes to a temporary directory and renames it), keeping the newest `keep`."""

    def __init__(self, directory: str, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.path.join(directory, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: Mapping[str, Any]) -> None:
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state_tree(state)),
                meta=ocp.args.JsonSave(dict(meta)),
            ),
            force=True,
        )

    def restore(self, target: TrainState) -> tuple[TrainState, dict]:
        ocp = self._ocp
        step = self.manager.latest_step()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            _state_tree(target),
        )
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except ValueError as e:
            if "tree structures do not match" not in str(e):
                raise
            raise ValueError(
                f"--resume: the checkpoint {self.directory}/{step} holds a train state of another "
                "layout (a different --optimizer, --group-updates/--no-group-updates or model "
                "than this run; run.json in the output directory describes the run that wrote "
                "it)"
            ) from None
        tree = restored["state"]
        state = TrainState(
            step=tree["step"],
            params=tree["params"],
            opt_state=jax.tree.unflatten(
                jax.tree.structure(target.opt_state), jax.tree.leaves(tree["opt_state"])
            ),
        )
        return state, dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _state_tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


# ---------------------------------------------------------------------------------------------
# Metrics over a logging interval


def per_token(sums: list[Mapping[str, float]]) -> dict[str, float]:
    """Cross-entropy, z-loss and accuracy per real target token over batches of summed metrics."""
    total = {k: sum(float(m[k]) for m in sums) for k in _METRIC_KEYS}
    tokens = max(total["weight"], 1.0)
    return {
        "cross_entropy": total["cross_entropy"] / tokens,
        "z_loss": total["z_loss"] / tokens,
        "accuracy": total["correct"] / tokens,
        "tokens": total["weight"],
    }


def summarize(step_metrics: list[Mapping[str, float]]) -> dict[str, float]:
    """Train metrics of a logging interval: per-token averages, mean loss, last norm and rate."""
    summary = per_token(step_metrics)
    del summary["tokens"]
    return {
        "loss": float(np.mean([float(m["loss"]) for m in step_metrics])),
        **summary,
        "grad_norm": float(step_metrics[-1]["grad_norm"]),
        "learning_rate": float(step_metrics[-1]["learning_rate"]),
    }


def _first_nonfinite(step_metrics: list[Mapping[str, float]], first_step: int):
    for offset, m in enumerate(step_metrics):
        for key in ("loss", "grad_norm"):
            if not math.isfinite(float(m[key])):
                return first_step + offset, key, float(m[key])
    return None


def peak_flops_per_device() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


# ---------------------------------------------------------------------------------------------
# The run


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


class _StepProfiler:
    """jax.profiler trace of steps first..last (1-based, inclusive) into `directory`."""

    def __init__(self, steps: tuple[int, int] | None, directory: str):
        self.steps, self.directory, self.active = steps, directory, False

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0] and not self.active:
            # The Perfetto JSON beside the xplane opens in ui.perfetto.dev without TensorBoard
            # and is what benchmarks/profile_summary.py reads.
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= self.steps[1]:
            jax.block_until_ready(state)  # the traced steps' device work ends inside the trace
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def latest_checkpoint_step(output: str) -> int | None:
    """The newest checkpoint step of the run directory `output`, as `train` (and --resume)
    sees it; None when it has none. Creates nothing."""
    if not os.path.isdir(os.path.join(output, "checkpoints")):
        return None
    checkpoints = Checkpoints(output, keep=1_000_000)
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.close()


def _check_output(config: TrainConfig, checkpoints_exist: bool) -> None:
    if checkpoints_exist and not config.resume:
        raise FileExistsError(
            f"--output {config.output} already holds checkpoints; pass --resume to continue "
            "that run or choose another --output"
        )


def train(
    config: TrainConfig,
    train_data,
    eval_data=None,
    *,
    on_step: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    notice: Callable[[str], None] | None = None,
    init_params: Any | None = None,
) -> dict:
    """Trains `config.model` on `train_data` (an ArrayBatches or TaskBatches).

    `init_params` (e.g. an imported Hugging Face checkpoint) replaces the random
    initialisation of a new run (continued pretraining, fine-tuning); ignored on --resume.
    `log` takes the progress lines; `notice` (default: `log`) the ones a user must see
    however progress is shown (the CLI prints them on stderr).

    Returns a summary: final step, last train/eval metrics, throughput, checkpoint directory.
    Raises TrainingDivergedError at the first step whose loss or gradient norm is not finite,
    after which the newest checkpoint on disk is the last good state.
    """
    from t5forge.model.metrics import MetricsWriter

    initial = init_params
    model_config = config.model_config()
    lengths = train_data.lengths
    mesh = sharding.make_mesh(config.mesh)  # a bad --mesh fails before anything is written
    os.makedirs(config.output, exist_ok=True)
    checkpoints = Checkpoints(config.output, config.keep_checkpoints)
    _check_output(config, checkpoints.latest_step() is not None)

    # Initialisation runs a forward pass of one unpacked row; the parameters do not depend on
    # how padding reaches the kernels, so it uses the mask (no cuDNN lengths graph to refuse).
    model = Transformer(model_config.replace(padding="mask"))
    optimizer, schedule = make_optimizer(config.optimizer)
    rules = sharding.LOGICAL_AXIS_RULES

    init_start = time.perf_counter()
    resuming = config.resume and checkpoints.latest_step() is not None
    if config.resume and not resuming and jax.process_index() == 0:
        # Scripts that always pass --resume (preemptible jobs) start this way; say so, as a
        # notice rather than a progress line: a mistyped --output silently retrains from 0.
        (notice or log)(f"--resume: no checkpoint in {checkpoints.directory}; starting from step 0")
    if initial is None and not resuming and _initialise_on_host():
        initial = random_params_on_host(model_config, lengths, config.seed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(model.init, jax.random.key(config.seed), *_dummy_batch(lengths))
        param_shardings = sharding.logical_shardings(boxed["params"], mesh, rules)

        if resuming:  # the checkpoint's state replaces it: shapes and shardings suffice
            params = _with_shardings(_abstract_params(boxed["params"]), param_shardings)
        elif initial is None:
            init = functools.partial(random_params, model, lengths)
            params = jax.jit(init, out_shardings=param_shardings)(jax.random.key(config.seed))
        else:
            params = _place_params(initial, boxed["params"], param_shardings)
        opt_shapes = jax.eval_shape(optimizer.init, params)
        opt_shardings = _opt_state_shardings(opt_shapes, param_shardings, mesh)
        replicated = sharding.replicated(mesh)
        start = 0
        if resuming:
            abstract = TrainState(
                step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                params=params,
                opt_state=_with_shardings(opt_shapes, opt_shardings),
            )
            state, meta = checkpoints.restore(abstract)
            start = int(jax.device_get(state.step))
            log(f"resumed from {checkpoints.directory} at step {start} ({meta.get('model')})")
        else:
            opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
            step0 = jax.device_put(jnp.zeros((), jnp.int32), replicated)
            state = TrainState(step=step0, params=params, opt_state=opt_state)
        jax.block_until_ready(state)
        what = "restored" if resuming else "ready"
        log(f"parameters and optimizer state {what} in {time.perf_counter() - init_start:.1f} s")
        if start >= config.steps:
            log(f"nothing to do: the checkpoint is at step {start} >= --steps {config.steps}")

        state_shardings = jax.tree.map(lambda x: x.sharding, state)
        batch_sharding = sharding.batch_sharding(mesh)

        def build_steps(step_model_config: T5Config) -> dict:
            step_model = Transformer(step_model_config)
            train_step = jax.jit(
                make_train_step(step_model, optimizer, schedule, config),
                in_shardings=(state_shardings, batch_sharding),
                out_shardings=(state_shardings, sharding.replicated(mesh)),
                donate_argnums=(0,),
            )
            eval_step = jax.jit(
                make_eval_step(step_model, config),
                in_shardings=(param_shardings, batch_sharding),
                out_shardings=sharding.replicated(mesh),
            )
            return {"train": train_step, "eval": eval_step}

        steps = _CompiledSteps(model_config, build_steps, log)

        def to_device(batch):
            global_shape = {n: (config.batch_size, *a.shape[1:]) for n, a in batch.items()}
            return {
                n: jax.make_array_from_process_local_data(batch_sharding, a, global_shape[n])
                for n, a in batch.items()
            }

        eval_batches = None
        if eval_data is not None:
            eval_batches = [to_device(b) for b in eval_data.epoch_batches()[: config.eval_batches]]

        writer = MetricsWriter(
            config.output,
            tensorboard=config.tensorboard,
            resume_step=start if config.resume else None,
            enabled=jax.process_index() == 0,
        )
        flops_per_example = train_flops(model_config, lengths["inputs"], lengths["targets"])
        peak = config.peak_flops or peak_flops_per_device()
        tokens_per_batch = config.batch_size * (lengths["inputs"] + lengths["targets"])
        meta = {
            "model": model_config.name,
            "model_config": dataclasses.asdict(model_config),
            "batch_size": config.batch_size,
            "lengths": lengths,
            "seed": config.seed,
        }
        _write_run_info(config, model_config, lengths)

        def run_eval(step: int) -> dict[str, float] | None:
            if not eval_batches:
                return None
            result = per_token(
                jax.device_get([steps("eval", state.params, b) for b in eval_batches])
            )
            writer.write(step, result, split="eval")
            # Per token, unlike the train "loss" (which follows --loss-normalization).
            result["loss"] = result["cross_entropy"] + result["z_loss"]
            return result

        pending: list[dict] = []
        pending_first = start
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] | None = None
        timed_steps, timed_seconds = 0, 0.0
        interval_start = None
        bar = _progress(config.steps, start, config.progress and jax.process_index() == 0)
        batches: Iterator = train_data.iterate(start)

        def flush(step_done: int) -> None:
            """Fetch the pending metrics (steps up to `step_done`), check them, log them."""
            nonlocal pending, pending_first, last_train, interval_start, timed_steps
            nonlocal timed_seconds
            if not pending:
                return
            fetched = jax.device_get(pending)
            now = time.perf_counter()
            bad = _first_nonfinite(fetched, pending_first + 1)
            if bad is not None:
                bad_step, key, value = bad
                good = checkpoints.latest_step()
                where = (
                    f"the last good checkpoint is step {good} in {checkpoints.directory}"
                    if good is not None
                    else "no checkpoint was written yet"
                )
                raise TrainingDivergedError(
                    f"step {bad_step}: {key} is {value}; training stopped, {where}"
                )
            summary = summarize(fetched)
            if interval_start is not None:
                seconds = now - interval_start
                steps = len(fetched)
                timed_steps += steps
                timed_seconds += seconds
                summary["seconds_per_step"] = seconds / steps
                summary["tokens_per_second"] = tokens_per_batch * steps / seconds
                summary["examples_per_second"] = config.batch_size * steps / seconds
                if peak:
                    summary["mfu"] = (flops_per_example * config.batch_size * steps / seconds) / (
                        peak * jax.device_count()
                    )
            interval_start = now
            writer.write(step_done, summary)
            last_train = summary
            pending = []
            pending_first = step_done
            if bar is not None:
                bar.set_postfix(
                    loss=f"{summary['cross_entropy']:.3f}",
                    tok_s=f"{summary.get('tokens_per_second', 0):.0f}",
                )

        profiler = _StepProfiler(config.profile_steps, os.path.join(config.output, "profile"))
        step = start
        try:
            for step in range(start, config.steps):
                profiler.before(step + 1)
                batch = to_device(next(batches))
                state, metrics = steps("train", state, batch)
                pending.append(metrics)
                done = step + 1
                if done == start + 1:
                    # The first step includes compilation: time from its end.
                    flush(done)
                elif done % config.log_every == 0 or done == config.steps:
                    flush(done)
                if on_step is not None:
                    on_step(done, metrics)
                if eval_batches and (done % config.eval_every == 0 or done == config.steps):
                    flush(done)
                    last_eval = run_eval(done)
                    if last_eval is not None:
                        log(
                            f"step {done}: eval cross-entropy {last_eval['cross_entropy']:.4f}, "
                            f"accuracy {last_eval['accuracy']:.4f}"
                        )
                if config.checkpoint_every > 0 and (
                    done % config.checkpoint_every == 0 or done == config.steps
                ):
                    flush(done)  # never checkpoint a state that follows a NaN step
                    checkpoints.save(state, {**meta, "step": done})
                if interval_start is not None and not pending:
                    # Evaluation and checkpoint time is not training throughput.
                    interval_start = time.perf_counter()
                profiler.after(done, state)
                if bar is not None:
                    bar.update(1)
        finally:
            profiler.stop()
            if bar is not None:
                bar.close()
            checkpoints.close()
            writer.close()

    summary = {
        "output": config.output,
        "model": model_config.name,
        "steps": config.steps,
        "start_step": start,
        "train": last_train,
        "eval": last_eval,
        "checkpoints": checkpoints.directory,
        "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "compile_seconds": steps.compile_seconds,
        # What the compiled steps used: "auto" can fall back to the mask.
        "padding": resolve_padding(steps.model_config),
    }
    if timed_steps:
        summary["seconds_per_step"] = timed_seconds / timed_steps
        summary["tokens_per_second"] = tokens_per_batch * timed_steps / timed_seconds
    return summary


def _initialise_on_host() -> bool:
    """Whether new runs draw their random parameters with XLA:CPU: on GPUs, where compiling
    the initialisers took 1.5-2 minutes (`random_params_on_host`)."""
    return jax.default_backend() == "gpu"


def random_params_on_host(model_config: T5Config, lengths: Mapping[str, int], seed: int):
    """The random initial parameters of `model_config`, computed by XLA:CPU (numpy arrays), or
    None where this process has no CPU backend.

    Every parameter draws from its own threefry stream, and the initialiser of t5.1.1-small
    is ~80k HLO operations. XLA's GPU compiler takes 87 s over it (H100, jax 0.11.2; base
    110 s), XLA:CPU about 10 s, for the same random bits: threefry is counter-based.
    """
    try:
        # This process's own CPU: under jax.distributed the CPU devices can span processes.
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None
    # XLA attention lowers on the CPU (cuDNN's would not); the parameters do not depend on it.
    model = Transformer(model_config.replace(padding="mask", attention_impl="xla"))
    with jax.default_device(cpu):
        init = functools.partial(random_params, model, lengths)
        return jax.device_get(jax.jit(init)(jax.random.key(seed)))


def _place_params(initial, boxed_shapes, shardings):
    """Checks `initial` against the model's parameter tree and places it on the mesh, in the
    model's parameter dtype."""
    expected = sharding.boxed_shapes(boxed_shapes)
    want = {
        "/".join(_param_path(p)): tuple(x)
        for p, x in jax.tree_util.tree_flatten_with_path(
            expected, is_leaf=lambda x: isinstance(x, tuple)
        )[0]
    }
    have = {
        "/".join(_param_path(p)): np.shape(x)
        for p, x in jax.tree_util.tree_flatten_with_path(initial)[0]
    }
    if want != have:
        missing = sorted(set(want) - set(have))[:5]
        extra = sorted(set(have) - set(want))[:5]
        shapes = [k for k in set(want) & set(have) if want[k] != have[k]][:5]
        raise ValueError(
            "initial parameters do not match the model: "
            f"missing {missing}, unexpected {extra}, shape mismatches {shapes}"
        )
    abstract = _abstract_params(boxed_shapes)
    return jax.tree.map(
        lambda x, a, s: jax.device_put(np.asarray(x, a.dtype), s), initial, abstract, shardings
    )


def _with_shardings(shapes, shardings):
    """ShapeDtypeStructs of `shapes` (a tree of them) carrying `shardings`: a restore target."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )


def _abstract_params(boxed_shapes):
    """The ShapeDtypeStructs of an abstract boxed parameter tree. Not `nn.meta.unbox`, which
    would apply sharding constraints inside a mesh context."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        boxed_shapes,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def _write_run_info(config: TrainConfig, model_config: T5Config, lengths) -> None:
    if jax.process_index() != 0:
        return
    info = {
        "model": dataclasses.asdict(model_config),
        "train": {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k not in ("optimizer", "model_overrides")
        },
        "optimizer": dataclasses.asdict(config.optimizer),
        "loss_normalization": config.normalization,
        "lengths": dict(lengths),
        "jax": jax.__version__,
        "devices": [d.device_kind for d in jax.devices()],
    }
    path = os.path.join(config.output, "run.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def load_run_params(directory: str, step: int | None = None) -> tuple[T5Config, Any]:
    """(model config, parameters as numpy) of a run's newest (or given) checkpoint."""
    import orbax.checkpoint as ocp

    info_path = os.path.join(directory, "run.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{directory}: not a t5forge training run (no run.json)")
    with open(info_path, encoding="utf-8") as f:
        fields = json.load(f)["model"]
    for name in ("activations", "layer_heads", "layer_d_ff"):
        if fields.get(name) is not None:
            fields[name] = tuple(fields[name])
    model_config = T5Config(**fields)
    checkpoints = Checkpoints(directory, keep=1_000_000)
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory}: no checkpoint in {checkpoints.directory}")
    restored = checkpoints.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    checkpoints.close()
    params = jax.tree.map(np.asarray, restored["state"]["params"])
    return model_config, params
