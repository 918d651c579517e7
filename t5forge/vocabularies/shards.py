"""Token shards: corpus documents as token ids, readable with numpy alone.

A tokenized corpus is a directory with `manifest.json` and, per input file,
two `.npy` arrays: `NNNNN.tokens.npy` (every document's ids, concatenated;
uint16 when the vocabulary fits, else uint32) and `NNNNN.offsets.npy` (int64,
documents + 1 entries: document i is tokens[offsets[i]:offsets[i+1]]). Both
open memory-mapped, so accelerator machines without TensorFlow can stream them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "t5forge-tokens/1"


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def read_manifest(directory: str) -> dict:
    """The manifest of a tokenized corpus (errors name the directory)."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{directory}: no {MANIFEST} (not a tokenized corpus)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_shard(directory: str, shard: dict) -> tuple[np.ndarray, np.ndarray]:
    """One shard's (memory-mapped token ids, document offsets); errors name the file."""
    arrays = []
    for key, mmap_mode in (("tokens_file", "r"), ("offsets_file", None)):
        path = os.path.join(directory, shard[key])
        try:
            arrays.append(np.load(path, mmap_mode=mmap_mode, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable token shard ({e})") from e
    tokens, offsets = arrays
    if len(offsets) == 0 or offsets[-1] > len(tokens):
        raise ValueError(
            f"{os.path.join(directory, shard['offsets_file'])}: offsets run past "
            f"the {len(tokens)} tokens of {shard['tokens_file']}"
        )
    return tokens, offsets


def iter_token_documents(directory: str) -> Iterator[np.ndarray]:
    """Every document's token ids, in corpus order (memory-mapped views)."""
    manifest = read_manifest(directory)
    for shard in manifest["shards"]:
        tokens, offsets = load_shard(directory, shard)
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            yield tokens[start:end]
