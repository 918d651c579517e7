"""Training batches as numpy arrays: from `t5forge export` files, or from seqio tasks.

Batches are a pure function of the step: the examples of step s are positions
[s*B, (s+1)*B) of an endless sequence of seeded per-epoch permutations. A resumed run
therefore sees exactly the batches the interrupted one would have seen, with no iterator
state to save. seqio tasks (TensorFlow needed, imported lazily) are read in their seeded
order and skip to the resumed position.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import numpy as np

ENCDEC_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
)
PACKED_FEATURES = ("encoder_segment_ids", "decoder_segment_ids")


class DataError(ValueError):
    """Training data that cannot be used (names the file or task)."""


def _check_features(arrays: Mapping[str, np.ndarray], source: str) -> None:
    missing = [name for name in ENCDEC_FEATURES if name not in arrays]
    if missing:
        raise DataError(
            f"{source}: missing features {missing} (have {sorted(arrays)}); export the task "
            "with the encdec feature converter"
        )
    count = {len(a) for a in arrays.values()}
    if len(count) != 1 or 0 in count:
        raise DataError(f"{source}: features have different or zero example counts {count}")


def load_exported(path: str, flag: str = "--data") -> dict[str, np.ndarray]:
    """The int32 features of an exported .npz, checked (DataError names `flag` and the file)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise DataError(
            f"{flag} {path}: a directory, not a .npz file (make one with t5forge export)"
        )
    empty = f"{flag} {path}: holds no examples (an export of an empty split?); export again"
    with open(path, "rb") as f:
        magic = f.read(4)
    # An .npz is a zip archive; one saved with no arrays (older exports of an empty split)
    # is a bare end-of-archive record, which is a valid but empty file, not a foreign one.
    if magic == b"PK\x05\x06":
        raise DataError(empty)
    if magic != b"PK\x03\x04":
        raise DataError(f"{flag} {path}: not a .npz file (make one with t5forge export)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: np.asarray(npz[name], dtype=np.int32) for name in npz.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{flag} {path}: not a readable .npz export ({e})") from e
    if not arrays:
        raise DataError(empty)
    _check_features(arrays, f"{flag} {path}")
    return arrays


def token_id_range(arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(smallest, largest) id in the token features (`*_tokens`: the encoder inputs, decoder
    inputs and targets), whatever else the file holds; (0, 0) when they are empty."""
    tokens = [a for name, a in arrays.items() if name.endswith("_tokens") and a.size]
    if not tokens:
        return 0, 0
    return min(int(a.min()) for a in tokens), max(int(a.max()) for a in tokens)


def check_token_ids(arrays: Mapping[str, np.ndarray], vocab_size: int, source: str) -> None:
    """Raises DataError naming `source` when a token id is outside [0, vocab_size).

    The embedding lookup does not fail on such ids: it reads garbage or clamps, so training
    would run on and stop only when the loss becomes NaN, after writing a run directory.
    """
    smallest, largest = token_id_range(arrays)
    if largest >= vocab_size:
        raise DataError(
            f"{source}: holds token id {largest}, but the model's vocab_size is {vocab_size}; "
            "use a model (or --override vocab_size=N) whose vocabulary covers the data's, "
            "or export with the model's vocabulary"
        )
    if smallest < 0:
        raise DataError(f"{source}: holds a negative token id ({smallest})")


class ArrayBatches:
    """Seeded batches over in-memory feature arrays (an export, or a slice of one).

    With several processes (multi-host), each returns its own contiguous rows of the
    global batch; `process_count` must divide `batch_size`.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        name: str = "data",
    ):
        _check_features(arrays, name)
        if batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {batch_size}")
        if batch_size % process_count:
            raise ValueError(f"--batch-size {batch_size} is not divisible by {process_count} hosts")
        self.arrays = dict(arrays)
        self.num_examples = len(next(iter(self.arrays.values())))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.local_rows = slice(
            process_index * batch_size // process_count,
            (process_index + 1) * batch_size // process_count,
        )
        self._orders: dict[int, np.ndarray] = {}

    @property
    def lengths(self) -> dict[str, int]:
        return {
            "inputs": self.arrays["encoder_input_tokens"].shape[1],
            "targets": self.arrays["decoder_target_tokens"].shape[1],
        }

    @property
    def packed(self) -> bool:
        return "encoder_segment_ids" in self.arrays

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                self._orders[epoch] = rng.permutation(self.num_examples)
            else:
                self._orders[epoch] = np.arange(self.num_examples)
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Example indices of the global batch at `step`."""
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.num_examples)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            out[where] = self._order(int(epoch))[offsets[where]]
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.indices(step)[self.local_rows]
        return {name: a[rows] for name, a in self.arrays.items() if _model_feature(name)}

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def epoch_batches(self) -> list[dict[str, np.ndarray]]:
        """Every example once, in order, in batches (the last one padded with empty rows)."""
        batches = []
        for start in range(0, self.num_examples, self.batch_size):
            rows = np.arange(start, min(start + self.batch_size, self.num_examples))
            batch = {n: a[rows] for n, a in self.arrays.items() if _model_feature(n)}
            short = self.batch_size - len(rows)
            if short:
                batch = {n: np.pad(a, ((0, short), (0, 0))) for n, a in batch.items()}
            batches.append({n: a[self.local_rows] for n, a in batch.items()})
        return batches


def hold_out(arrays: Mapping[str, np.ndarray], count: int, source: str = "data"):
    """(train, held-out): the last `count` examples are held out for evaluation."""
    total = len(next(iter(arrays.values())))
    if not 0 < count < total:
        raise DataError(
            f"{source}: holding out {count} of {total} examples leaves no train or eval"
        )
    return (
        {k: v[: total - count] for k, v in arrays.items()},
        {k: v[total - count :] for k, v in arrays.items()},
    )


def _model_feature(name: str) -> bool:
    return name in ENCDEC_FEATURES or name in PACKED_FEATURES


def task_arrays(
    task: str,
    *,
    split: str,
    sequence_length: Mapping[str, int],
    examples: int,
    pack: bool = False,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> dict[str, np.ndarray]:
    """Up to `examples` converted examples of a seqio task or mixture (needs TensorFlow);
    num_epochs=1 stops after one pass over the data."""
    arrays = _export_module(task).converted_arrays(
        task,
        dict(sequence_length),
        examples,
        split=split,
        pack=pack,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
    )
    if not arrays:
        raise DataError(f"--task {task}: split {split!r} gave no examples")
    return arrays


def check_task_vocabulary(task: str, vocab_size: int) -> None:
    """Raises DataError when a seqio task's (or mixture's) vocabulary has more ids than the
    model's `vocab_size` (needs seqio; the task must be registered)."""
    _export_module(task)
    import seqio

    features = seqio.get_mixture_or_task(task).output_features
    for name, feature in features.items():
        size = int(feature.vocabulary.vocab_size)
        if size > vocab_size:
            raise DataError(
                f"--task {task}: its {name} vocabulary has {size} ids (up to {size - 1}), but "
                f"the model's vocab_size is {vocab_size}; use a model (or --override "
                "vocab_size=N) whose vocabulary covers the task's"
            )


def _export_module(task: str):
    """t5forge.pipelines.export, or a DataError saying why seqio tasks cannot be read here."""
    try:
        import seqio  # noqa: F401 - the export module imports it only when it runs

        from t5forge.pipelines import export
    except ImportError as e:
        raise DataError(
            f"--task {task}: reading seqio tasks needs TensorFlow and seqio; on a machine "
            "without them, run `t5forge export` elsewhere and pass --data FILE.npz"
        ) from e
    return export


class TaskBatches:
    """Streaming batches of a seqio task in its seeded order (needs TensorFlow).

    A resumed run skips the examples the interrupted run consumed, so it continues at the
    same position (the skipped examples are preprocessed again, which costs time; for long
    runs prefer an export).
    """

    def __init__(
        self,
        task: str,
        batch_size: int,
        *,
        split: str,
        sequence_length: Mapping[str, int],
        pack: bool = False,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size % process_count:
            raise ValueError(f"--batch-size {batch_size} is not divisible by {process_count} hosts")
        self.task = task
        self.batch_size = batch_size
        self.split = split
        self.lengths = dict(sequence_length)
        self.packed = pack
        self.seed = seed
        self.local_rows = slice(
            process_index * batch_size // process_count,
            (process_index + 1) * batch_size // process_count,
        )
        self._check = task_arrays(  # fails early, with the task's name, if unusable
            task, split=split, sequence_length=self.lengths, examples=1, pack=pack, seed=seed
        )

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        converted = _export_module(self.task).converted_dataset(
            self.task, self.lengths, split=self.split, pack=self.packed, seed=self.seed
        )
        converted = converted.skip(start_step * self.batch_size)
        batched = converted.batch(self.batch_size, drop_remainder=True).prefetch(2)
        for batch in batched.as_numpy_iterator():
            yield {
                n: np.asarray(a, np.int32)[self.local_rows]
                for n, a in batch.items()
                if _model_feature(n)
            }
