"""Language sampling rates for multilingual mixtures.

* Temperature sampling (mT5): rate proportional to n ** (1 / T); mT5 used
  T = 1 / 0.3 (exponent alpha = 0.3) on the number of examples per language.
* UniMax (umT5; Chung et al. 2023): spread a total budget as evenly as
  possible over languages, visiting the smallest first, giving no language
  more than `max_epochs` passes over its data. The budget is what the training
  run will read; with a budget equal to the corpus and one epoch, UniMax is
  size-proportional sampling.
"""

from __future__ import annotations

from collections.abc import Mapping

MT5_TEMPERATURE = 1 / 0.3
METHODS = ("temperature", "unimax")  # the rates build-mc4 writes to stats.json


def _normalise(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("cannot compute mixing rates: every language is empty")
    return {lang: w / total for lang, w in sorted(weights.items())}


def temperature_rates(sizes: Mapping[str, float], temperature: float = MT5_TEMPERATURE):
    """Rates proportional to size ** (1 / temperature) (T = 1: proportional; large T: uniform)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _normalise({lang: n ** (1.0 / temperature) for lang, n in sizes.items() if n > 0})


def unimax_allocation(
    sizes: Mapping[str, float], budget: float, max_epochs: float = 1.0
) -> dict[str, float]:
    """UniMax: how much of the budget each language gets (same units as sizes)."""
    if budget <= 0 or max_epochs <= 0:
        raise ValueError("UniMax needs a positive budget and a positive number of epochs")
    languages = sorted((n, lang) for lang, n in sizes.items() if n > 0)
    remaining = float(budget)
    allocation = {}
    for i, (size, lang) in enumerate(languages):
        fair_share = remaining / (len(languages) - i)
        allocation[lang] = min(size * max_epochs, fair_share)
        remaining -= allocation[lang]
    return allocation


def unimax_rates(sizes: Mapping[str, float], budget: float, max_epochs: float = 1.0):
    """UniMax sampling rates (the allocation, normalised)."""
    return _normalise(unimax_allocation(sizes, budget, max_epochs))
