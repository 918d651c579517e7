"""The directories a write creates, so that a failed or interrupted write can remove them.

Every command that writes output (the corpus jobs, train-spm, the checkpoint writers) leaves
the file system as it found it when it fails: it notes the missing directories before
creating them and removes exactly those, where still empty, afterwards. Standard library only,
so that every layer (Beam jobs, vocabularies, the JAX-only model) can use it.
"""

from __future__ import annotations

import os


def missing_dirs(path: str) -> list[str]:
    """`path` and its missing ancestors, deepest first: what `os.makedirs(path)` would create.

    Remote paths (gs://, s3://...) have no directories to create: [].
    """
    if "://" in path:
        return []
    missing = []
    directory = os.path.abspath(path)
    while not os.path.lexists(directory) and directory != os.path.dirname(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    return missing


def remove_empty_dirs(directories: list[str]) -> None:
    """Removes each of `directories` (deepest first) that exists and is empty; best effort."""
    for directory in directories:
        try:
            os.rmdir(directory)
        except OSError:  # not empty (someone else wrote there) or already gone: keep it
            pass
