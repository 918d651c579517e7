"""Writes the golden outputs of t5's pretraining objectives for tests/test_denoising.py.

What it does:
  1. trains a small SentencePiece model (unigram, 2000 pieces, pad 0 / eos 1 /
     unk 2, no bos, one thread, no input shuffling) on the pages of
     ../shared/data/wet/python-docs-3.11.warc.wet.gz and stores it as
     tests/fixtures/objectives/spm2000.model (the tests load this file, so they
     never depend on SentencePiece training being reproducible);
  2. for every run in RUNS, builds the seqio pipeline
     tokenize -> objective -> append_eos_after_trim over the first 40 pages,
     under `seqio.map_seed_manager(seed)`, with the objective taken from the
     reference package `t5.data.preprocessors`;
  3. writes tests/fixtures/objectives/golden.json: per run, the number of
     examples, a short sha256 of every example's token lists, and the first
     example in full (for readable failures).

The tests run the same pipeline with `t5forge.preprocessors` and compare
example for example; they do not need t5.

Requirements (only for regenerating; the tests do not need them):
  pip install --no-deps t5==0.9.4
  pip install gin-config babel editdistance sacrebleu rouge-score scikit-learn
  plus tensorflow, tensorflow-text, seqio and sentencepiece as for t5forge.

Run from the repository root:
  python tests/make_objective_fixtures.py            # model + golden.json
  python tests/make_objective_fixtures.py --keep-model   # golden.json only
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "objectives")
SPM_MODEL = os.path.join(FIXTURES, "spm2000.model")
GOLDEN = os.path.join(FIXTURES, "golden.json")
WET = os.path.join(HERE, "..", "..", "shared", "data", "wet", "python-docs-3.11.warc.wet.gz")

NUM_DOCUMENTS = 40
EXTRA_IDS = 100
SEEDS = (7, 1234)

# name -> (objective, vocabulary kind, sequence lengths, objective kwargs)
RUNS: dict[str, tuple[str, str, dict[str, int], dict[str, Any]]] = {
    "span_corruption_t5": ("span_corruption", "spm", {"inputs": 512, "targets": 114}, {}),
    "span_corruption_byt5": (
        "span_corruption",
        "byte",
        {"inputs": 1024, "targets": 189},
        {"mean_noise_span_length": 20},
    ),
    "prefix_lm": ("prefix_lm", "spm", {"inputs": 256, "targets": 256}, {}),
    "full_lm": ("full_lm", "spm", {"targets": 256}, {}),
    "iid_denoising": ("iid_denoising", "spm", {"inputs": 256, "targets": 256}, {}),
    # Options the objectives above leave at their defaults (see blocks_objective).
    "building_blocks": ("blocks_objective", "spm", {"inputs": 256, "targets": 256}, {}),
}


def blocks_objective(module: ModuleType, dataset, sequence_length, output_features):
    """Chains the building blocks with their non-default options.

    uniform_random_start and min_length in select_random_chunk, a per-document
    log-uniform split length, random_roll in random_spans_noise_mask, a
    passthrough feature, and the single-sentinel inputs function.
    """
    import functools

    ds = module.select_random_chunk(
        dataset,
        output_features=output_features,
        max_length=400,
        min_length=60,
        uniform_random_start=True,
        additional_feature_keys=["copy"],
        passthrough_feature_keys=["doc"],
    )
    ds = module.split_tokens_to_random_length(
        ds,
        sequence_length=sequence_length,
        output_features=output_features,
        additional_feature_keys=["copy"],
        passthrough_feature_keys=["doc"],
    )
    ds = ds.map(lambda ex: {"targets": ex["targets"], "doc": ex["doc"]})
    return module.denoise(
        ds,
        output_features,
        noise_density=0.3,
        noise_mask_fn=functools.partial(
            module.random_spans_noise_mask, mean_noise_span_length=2.0, random_roll=True
        ),
        inputs_fn=module.noise_span_to_sentinel,
        targets_fn=module.drop_nonnoise_tokens,
        passthrough_feature_keys=["doc"],
    )


def read_documents(path: str = WET, count: int = NUM_DOCUMENTS) -> list[str]:
    """The text of the first `count` non-empty pages of the WET file."""
    from t5forge.beam_jobs.wet import read_wet_file

    texts = []
    for page in read_wet_file(path):
        if page.text.strip():
            texts.append(page.text)
        if len(texts) == count:
            break
    return texts


def train_spm(model_path: str = SPM_MODEL, path: str = WET) -> None:
    """Trains the 2000-piece SentencePiece model deterministically."""
    import sentencepiece as spm

    from t5forge.beam_jobs.wet import read_wet_file

    lines = [
        line for page in read_wet_file(path) for line in page.text.splitlines() if line.strip()
    ]
    prefix = model_path[: -len(".model")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        vocab_size=2000,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    os.remove(prefix + ".vocab")
    _forget_training_paths(model_path)


def _forget_training_paths(model_path: str) -> None:
    """Clears the paths SentencePiece stores in trainer_spec (this machine's, not data)."""
    from sentencepiece import sentencepiece_model_pb2

    with open(model_path, "rb") as f:
        model = sentencepiece_model_pb2.ModelProto.FromString(f.read())
    model.trainer_spec.ClearField("model_prefix")
    del model.trainer_spec.input[:]
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())


def vocabulary(kind: str):
    """The seqio vocabulary for a run: the fixture SentencePiece model or bytes."""
    import seqio

    if kind == "byte":
        return seqio.ByteVocabulary()
    return seqio.SentencePieceVocabulary(SPM_MODEL, extra_ids=EXTRA_IDS)


def run_pipeline(
    module: ModuleType, run: str, seed: int, texts: list[str]
) -> list[dict[str, list[int]]]:
    """Runs tokenize -> `module`'s objective -> append_eos_after_trim for one run.

    `module` is `t5.data.preprocessors` (to make goldens) or
    `t5forge.preprocessors` (in the tests). full_lm appends its own EOS, so it
    is not followed by append_eos_after_trim.
    """
    import seqio
    import tensorflow as tf

    objective_name, vocab_kind, lengths, kwargs = RUNS[run]
    vocab = vocabulary(vocab_kind)
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    if objective_name == "full_lm":
        features = {"targets": features["targets"]}
    if objective_name == "blocks_objective":
        objective: Callable[..., tf.data.Dataset] = functools.partial(blocks_objective, module)
    else:
        objective = getattr(module, objective_name)
    ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
    with seqio.map_seed_manager(seed):
        ds = seqio.preprocessors.tokenize(ds, features, copy_pretokenized=False)
        if objective_name == "blocks_objective":
            ds = ds.enumerate().map(
                lambda i, ex: {"targets": ex["targets"], "copy": ex["targets"], "doc": i}
            )
        ds = objective(ds, sequence_length=lengths, output_features=features, **kwargs)
        if objective_name != "full_lm":
            ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
    return [{k: v.tolist() for k, v in sorted(ex.items())} for ex in ds.as_numpy_iterator()]


def example_digest(example: dict[str, list[int]]) -> str:
    """A short sha256 of an example's token lists (keys sorted)."""
    blob = json.dumps(example, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def summarize(examples: list[dict[str, list[int]]]) -> dict[str, Any]:
    """The golden record of one run: count, digests and the first example."""
    return {
        "num_examples": len(examples),
        "digests": [example_digest(ex) for ex in examples],
        "first_example": examples[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-model", action="store_true", help="reuse the stored SentencePiece model"
    )
    args = parser.parse_args(argv)

    import seqio
    import t5.data.preprocessors as reference

    os.makedirs(FIXTURES, exist_ok=True)
    if not (args.keep_model and os.path.exists(SPM_MODEL)):
        train_spm()
    texts = read_documents()
    golden: dict[str, Any] = {
        "source": "t5.data.preprocessors (t5 0.9.4), seqio " + getattr(seqio, "__version__", "?"),
        "num_documents": len(texts),
        "runs": {},
    }
    for run in RUNS:
        for seed in SEEDS:
            examples = run_pipeline(reference, run, seed, texts)
            golden["runs"][f"{run}/seed={seed}"] = summarize(examples)
            print(f"{run} seed={seed}: {len(examples)} examples", file=sys.stderr)
    tmp = GOLDEN + ".tmp"
    with open(tmp, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, GOLDEN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
