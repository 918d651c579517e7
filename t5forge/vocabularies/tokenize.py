"""`t5forge tokenize`: corpus files -> token shards (and back with --decode).

Documents are read in file order and cut into batches of about 1 MB of text;
`workers` processes encode the batches (each with its own SentencePiece
processor) and hand back flat id arrays, in order, while the main process reads
ahead and writes. Large files are thus spread over all workers as well as many
small ones. Output never depends on the number of workers, so shards are
byte-identical for any `workers`. Everything is written into a temporary
directory that is renamed into place at the end.

(SentencePiece's own multi-threaded batch encoder was measured first: it builds
Python lists under the GIL and scaled to only ~1.1x on 2 cores.)
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from t5forge.vocabularies import records, shards
from t5forge.vocabularies.tokenizer import Tokenizer

BATCH_CHARS = 1 << 20  # text per task: large enough to amortise IPC, small enough to balance


def _batches(
    paths: list[str], batch_chars: int, damage: collections.Counter
) -> Iterator[tuple[int, list[str]]]:
    """(input index, documents) batches, in order, never mixing two inputs; damaged records
    are counted in `damage` and skipped."""
    for index, path in enumerate(paths):
        batch: list[str] = []
        size = 0
        for document in records.iter_documents(path, damage=damage):
            batch.append(document)
            size += len(document)
            if size >= batch_chars:
                yield index, batch
                batch, size = [], 0
        yield index, batch


_worker_tokenizer: Tokenizer | None = None


def _init_worker(vocab: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(vocab)


def _encode_batch(task: tuple[int, list[str], str]) -> tuple[int, np.ndarray, np.ndarray, int]:
    """(input index, flat ids, per-document lengths, text bytes) for one batch."""
    index, documents, dtype = task
    tokenizer = _worker_tokenizer
    encoded = [tokenizer.encode(d) for d in documents]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(
        itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum())
    )
    return index, flat, lengths, sum(len(d.encode("utf-8")) for d in documents)


def _encoded_batches(vocab: str, paths: list[str], dtype, workers: int, batch_chars: int, damage):
    """Encoded batches in input order, from `workers` processes (or this one)."""
    batches = _batches(paths, batch_chars, damage)
    tasks = ((index, batch, np.dtype(dtype).name) for index, batch in batches)
    if workers <= 1:
        # Read ahead in a thread: SentencePiece releases the GIL part of the time.
        _init_worker(vocab)
        yield from map(_encode_batch, tasks)
        return
    import multiprocessing

    # spawn: a clean interpreter per worker, safe whatever threads this one runs.
    with multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(vocab,)
    ) as pool:
        yield from pool.imap(_encode_batch, tasks, chunksize=1)


def _prepare_output(output: str, overwrite: bool) -> str:
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-tokenize-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the output it becomes is not
    return tmp


def _commit_output(tmp: str, output: str) -> None:
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)


def _shard_name(index: int) -> str:
    return f"{index:05d}"


def tokenize_corpus(
    vocab: str,
    inputs: list[str],
    output: str,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    batch_chars: int = BATCH_CHARS,
) -> dict:
    """Encodes every document of `inputs` into token shards in `output`; returns the manifest."""
    tokenizer = Tokenizer(vocab)
    paths = [p for item in inputs for p in records.corpus_files(item)]
    dtype = shards.token_dtype(tokenizer.vocab_size)
    tmp = _prepare_output(output, overwrite)
    started = time.time()
    try:
        damage: collections.Counter = collections.Counter()
        manifest_shards = _encode_all(
            tokenizer, paths, tmp, dtype, workers, batch_chars, progress, damage
        )
        seconds = time.time() - started
        manifest = {
            "format": shards.FORMAT,
            "vocab": str(tokenizer.spec),
            "vocab_size": tokenizer.vocab_size,
            "vocab_fingerprint": tokenizer.fingerprint,
            "dtype": np.dtype(dtype).name,
            "documents": sum(s["documents"] for s in manifest_shards),
            "tokens": sum(s["tokens"] for s in manifest_shards),
            "text_bytes": sum(s["text_bytes"] for s in manifest_shards),
            "shards": manifest_shards,
            "damaged_records_skipped": dict(sorted(damage.items())),
        }
        with open(os.path.join(tmp, shards.MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
        _commit_output(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["seconds"] = seconds
    manifest["mb_per_second"] = manifest["text_bytes"] / 1e6 / max(seconds, 1e-9)
    return manifest


def _encode_all(tokenizer, paths, tmp, dtype, workers, batch_chars, progress, damage):
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="file", desc="tokenize", disable=not progress)
    pieces: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    text_bytes = 0
    current = 0
    done = []

    def flush():
        nonlocal pieces, lengths, text_bytes
        ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
        doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(doc_lengths) + 1, dtype=np.int64)
        np.cumsum(doc_lengths, out=offsets[1:])
        name = _shard_name(current)
        np.save(os.path.join(tmp, f"{name}.tokens.npy"), ids)
        np.save(os.path.join(tmp, f"{name}.offsets.npy"), offsets)
        done.append(
            {
                "source": paths[current],
                "tokens_file": f"{name}.tokens.npy",
                "offsets_file": f"{name}.offsets.npy",
                "documents": len(doc_lengths),
                "tokens": int(offsets[-1]),
                "text_bytes": text_bytes,
            }
        )
        pieces, lengths, text_bytes = [], [], 0
        bar.update(1)

    spec = str(tokenizer.spec)
    for index, flat, doc_lengths, size in _encoded_batches(
        spec, paths, dtype, workers, batch_chars, damage
    ):
        while current < index:
            flush()
            current += 1
        pieces.append(flat)
        lengths.append(doc_lengths)
        text_bytes += size
    while current < len(paths):
        flush()
        current += 1
    bar.close()
    return done


def decode_corpus(vocab: str, input_dir: str, output: str, overwrite: bool = False) -> dict:
    """Turns token shards back into JSON lines ({"text": ...}), one file per shard."""
    tokenizer = Tokenizer(vocab)
    manifest = shards.read_manifest(input_dir)
    if manifest["vocab_fingerprint"] != tokenizer.fingerprint:
        raise ValueError(
            f"--vocab {vocab} is not the vocabulary {input_dir} was tokenized with "
            f"({manifest['vocab']})"
        )
    tmp = _prepare_output(output, overwrite)
    try:
        documents = 0
        for shard in manifest["shards"]:
            tokens, offsets = shards.load_shard(input_dir, shard)
            name = shard["tokens_file"].replace(".tokens.npy", ".jsonl")
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                for start, end in zip(offsets[:-1], offsets[1:], strict=True):
                    text = tokenizer.decode(tokens[start:end].tolist())
                    f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    documents += 1
        _commit_output(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"documents": documents, "shards": len(manifest["shards"])}
