"""Compact Flax T5 models and trainer; imports JAX/Flax/optax/numpy only (issue: models)."""
