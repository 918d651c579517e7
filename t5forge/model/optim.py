"""Optimizers and learning-rate schedules of the two standard T5 pretraining recipes.

- "adafactor": t5x's Adafactor (decay 0.8, update clipping 1.0, parameter-scale floor 1e-3,
  factored second moments for matrices with both dims >= 128, no momentum, no weight decay)
  with the "rsqrt" schedule 1/sqrt(max(step, 10k)) (base 1.0: a constant 0.01 for 10k steps).
- "adamw-scaled": nanoT5's AdamW (0.9/0.999, eps 1e-6) whose step is multiplied by
  max(1e-3, RMS(parameter)), as Adafactor's relative step; with the "cosine" schedule (linear
  warmup from 0.5x to 1x, then cosine to 1e-5) and gradient clipping 1.0. Plain AdamW without
  the RMS scaling diverges on T5 pretraining (nanoT5 README).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adafactor", "adamw-scaled", "adamw")
SCHEDULES = ("rsqrt", "cosine", "constant", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adafactor"
    schedule: str = "rsqrt"
    # Peak learning rate. rsqrt: the rate is `learning_rate * sqrt(warmup_steps) /
    # sqrt(max(step, warmup_steps))`, so the t5x default (1.0 / sqrt(max(step, 10k))) is
    # learning_rate 0.01 with warmup_steps 10000.
    learning_rate: float | None = None
    warmup_steps: int = 10_000
    total_steps: int = 100_000
    final_learning_rate: float = 1e-5
    weight_decay: float = 0.0
    # Global-norm gradient clipping; 0 disables it. None: 1.0 for AdamW, off for Adafactor
    # (which clips its updates instead).
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.name!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"--lr-schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}"
            )

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 0.01 if self.name == "adafactor" else 2e-2 if self.name == "adamw-scaled" else 1e-4

    @property
    def clip(self) -> float:
        if self.grad_clip is not None:
            return self.grad_clip
        return 0.0 if self.name == "adafactor" else 1.0


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Learning rate as a function of the 0-based step."""
    peak = config.peak_learning_rate
    warmup = max(int(config.warmup_steps), 0)
    if config.schedule == "constant":
        return optax.constant_schedule(peak)
    if config.schedule == "rsqrt":
        # t5x `rsqrt_decay` (no ramp-down): constant peak until `warmup`, then ~1/sqrt(step).
        scale = peak * max(warmup, 1) ** 0.5

        def rsqrt(step):
            return scale / jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), max(warmup, 1)))

        return rsqrt
    if config.schedule == "cosine":
        # nanoT5: LinearLR(0.5 -> 1) over warmup, then cosine annealing to the final rate.
        decay_steps = max(config.total_steps - warmup, 1)
        cosine = optax.cosine_decay_schedule(
            peak, decay_steps, alpha=config.final_learning_rate / peak
        )
        if warmup == 0:
            return cosine
        ramp = optax.linear_schedule(0.5 * peak, peak, warmup)
        return optax.join_schedules([ramp, cosine], [warmup])
    # linear: warmup from 0, then linear decay to the final rate (t5x/NVIDIA "linear_decay").
    ramp = optax.linear_schedule(0.0, peak, max(warmup, 1))
    decay = optax.linear_schedule(
        peak, config.final_learning_rate, max(config.total_steps - warmup, 1)
    )
    return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(config: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation (gradient clipping first, when on) and its schedule."""
    schedule = learning_rate_schedule(config)
    parts = []
    if config.clip > 0:
        parts.append(optax.clip_by_global_norm(config.clip))
    if config.name == "adafactor":
        parts.append(
            optax.adafactor(
                learning_rate=schedule,
                min_dim_size_to_factor=128,
                decay_rate=0.8,
                decay_offset=0,
                multiply_by_parameter_scale=True,
                clipping_threshold=1.0,
                momentum=None,
                eps=1e-30,
                factored=True,
                weight_decay_rate=config.weight_decay or None,
            )
        )
    else:
        adam = [optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6)]
        if config.name == "adamw-scaled":
            adam.append(optax.scale_by_param_block_rms(min_scale=1e-3))
        if config.weight_decay:
            # As nanoT5: no decay on norm scales (vectors), only on matrices.
            adam.append(optax.add_decayed_weights(config.weight_decay, mask=_matrices))
        adam.append(optax.scale_by_learning_rate(schedule))
        parts.extend(adam)
    return optax.chain(*parts), schedule
