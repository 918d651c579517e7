"""The `--sequence-length` option's parser, shared by commands that may not import TensorFlow.

`t5forge model-info` and `t5forge train --data` run on machines with JAX alone; the seqio
commands (`export`, `train --task`) parse the same text.
"""

from __future__ import annotations


def parse_sequence_length(text: str) -> dict[str, int]:
    """ "inputs=512,targets=114" -> {"inputs": 512, "targets": 114} (errors quote the text)."""
    lengths = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(f"--sequence-length {text!r}: expected name=positive integer pairs")
        lengths[name.strip()] = int(value)
    return lengths
