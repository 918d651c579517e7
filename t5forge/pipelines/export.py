"""`t5forge export`: a seqio task's model-ready batches in a file numpy alone reads.

The accelerator machines have JAX but no TensorFlow, seqio or Beam. Export runs
the task here (tokenize -> objective -> feature converter) and writes the
converted features as one `.npz` (every feature an int32 array of shape
[examples, length]) plus a JSON sidecar that says what is inside. The trainer
loads it with `numpy.load`.
"""

from __future__ import annotations

import json
import os
import tempfile

CONVERTERS = ("encdec", "prefixlm", "decoder")


PACKERS = ("fast", "seqio")


def feature_converter(kind: str, pack: bool, packer: str = "fast"):
    """A seqio feature converter; with pack and packer "fast", packed by `pack_dataset`.

    `t5forge.pipelines.packing.pack_dataset` gives seqio's packed examples
    exactly (tests/test_packing.py), several times faster; only the converter's
    packing step is swapped, the rest is seqio's own code.
    """
    import seqio

    bases = {
        "encdec": seqio.EncDecFeatureConverter,
        "prefixlm": seqio.PrefixLMFeatureConverter,
        "decoder": seqio.DecoderFeatureConverter,
    }
    if kind not in bases:
        raise ValueError(f"unknown feature converter {kind!r}; choose one of {', '.join(bases)}")
    if packer not in PACKERS:
        raise ValueError(f"unknown packer {packer!r}; choose one of {', '.join(PACKERS)}")
    if not pack or packer == "seqio":
        return bases[kind](pack=pack)
    from t5forge.pipelines.packing import pack_dataset

    class FastPacking(bases[kind]):
        def _pack_or_pad(self, ds, packed_lengths):
            return pack_dataset(ds, packed_lengths)

    return FastPacking(pack=True)


def converted_dataset(
    task: str,
    sequence_length: dict[str, int],
    *,
    split: str = "train",
    pack: bool = False,
    converter: str = "encdec",
    packer: str = "fast",
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
):
    """A seqio task's (or mixture's) examples after the feature converter (tf.data)."""
    import seqio

    try:
        provider = seqio.get_mixture_or_task(task)
    except ValueError as e:
        raise ValueError(f"--task {task}: not a registered seqio task or mixture") from e
    missing = sorted(set(provider.output_features) - set(sequence_length))
    if missing:
        raise ValueError(
            f"--sequence-length {sequence_length}: {task} needs a length for "
            f"{', '.join(missing)} too"
        )
    if split not in provider.splits:
        raise ValueError(f"--split {split}: {task} has splits {', '.join(provider.splits)}")
    dataset = provider.get_dataset(
        sequence_length, split=split, shuffle=shuffle, seed=seed, num_epochs=num_epochs
    )
    return feature_converter(converter, pack, packer)(dataset, sequence_length)


def converted_arrays(task: str, sequence_length: dict[str, int], examples: int, **kwargs):
    """Up to `examples` converted examples as int32 arrays [examples, length] per feature
    (fewer when num_epochs ends the data first; an empty dict when there is none)."""
    import numpy as np

    rows: dict[str, list] = {}
    dataset = converted_dataset(task, sequence_length, **kwargs)
    for n, example in enumerate(dataset.as_numpy_iterator()):
        if n == examples:
            break
        for name, value in example.items():
            rows.setdefault(name, []).append(value)
    return {name: np.stack(values).astype(np.int32) for name, values in rows.items()}


def check_output(output: str, overwrite: bool = False) -> str:
    """The .npz path `output` names (".npz" added if missing); FileExistsError when it
    exists and `overwrite` is not set. Cheap: the CLI calls it before registering tasks."""
    if not output.endswith(".npz"):
        output += ".npz"
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace it")
    return output


def export_task(
    task: str,
    output: str,
    sequence_length: dict[str, int],
    examples: int,
    split: str = "train",
    pack: bool = False,
    converter: str = "encdec",
    packer: str = "fast",
    seed: int = 0,
    shuffle: bool = True,
    overwrite: bool = False,
) -> dict:
    """Writes `examples` converted examples of `task` to `output` (.npz + .json sidecar)."""
    import numpy as np

    if examples <= 0:
        raise ValueError(f"--examples must be positive, got {examples}")
    output = check_output(output, overwrite)
    arrays = converted_arrays(
        task,
        sequence_length,
        examples,
        split=split,
        pack=pack,
        converter=converter,
        packer=packer,
        seed=seed,
        shuffle=shuffle,
    )
    if not arrays:
        # An empty .npz is of no use (train cannot read it) and looks like a success; like
        # `train --eval-split`, say which split of which task was empty and write nothing.
        raise ValueError(
            f"--task {task}: split {split!r} gave no examples; nothing written to {output}"
        )
    count = len(next(iter(arrays.values())))
    info = {
        "task": task,
        "split": split,
        "sequence_length": sequence_length,
        "feature_converter": converter,
        "pack": pack,
        "packer": packer if pack else None,
        "seed": seed,
        "examples": count,
        "features": {name: list(a.shape) for name, a in arrays.items()},
        "non_padding_fraction": {
            name: float((a != 0).mean()) for name, a in arrays.items() if name.endswith("tokens")
        },
    }
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-export-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes the file private; an export is not
            np.savez(f, **arrays)
        sidecar = output[: -len(".npz")] + ".json"
        with open(sidecar + ".tmp", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        os.replace(tmp, output)
        os.replace(sidecar + ".tmp", sidecar)
    except BaseException:
        for path in (tmp, output[: -len(".npz")] + ".json.tmp"):
            if os.path.exists(path):
                os.remove(path)
        raise
    info["output"] = output
    return info
