"""Beam counters with a cached handle per name (creating one per call is slow)."""

from __future__ import annotations


class Counters:
    """Increments Beam counters in one namespace: ``Counters("clean-page")("passed")``."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._handles: dict = {}

    def __call__(self, name: str, amount: int = 1) -> None:
        handle = self._handles.get(name)
        if handle is None:
            from apache_beam.metrics import Metrics

            handle = self._handles[name] = Metrics.counter(self.namespace, name)
        handle.inc(amount)

    def __getstate__(self):
        return {"namespace": self.namespace}

    def __setstate__(self, state):
        self.namespace = state["namespace"]
        self._handles = {}
