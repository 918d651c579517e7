"""Builds tests/fixtures/hf_t5: tiny Hugging Face T5-family checkpoints and their PyTorch logits.

Run with the Hugging Face virtualenv (torch + transformers; the tests themselves need neither):

    /work/venv-hf/bin/python tests/make_hf_fixtures.py            # rewrite the fixtures
    /work/venv-hf/bin/python tests/make_hf_fixtures.py --verify-export DIR [--name t5_1_1]

The second form loads a checkpoint that `t5forge.model.hf_checkpoint.save_hf_checkpoint` wrote,
with `transformers.AutoModelForSeq2SeqLM.from_pretrained`, and checks its logits on the stored
inputs against the stored reference logits (the proof that exports load in transformers).

Every model is randomly initialised from a fixed torch seed, with non-trivial values in every
tensor (layer-norm scales around 1, large relative-position tables, an lm_head unlike the
embedding), so that a transposed or swapped tensor cannot go unnoticed. Encoder inputs are 48
tokens long with padding, so relative positions reach the log-spaced buckets (and, for the
umT5 model with max_distance 24, the clamped last bucket).

Fixtures (directory -> what it tests):
  t5_1_1/            T5 1.1 / ByT5 style: gated-gelu, untied head, 2 encoder / 3 decoder layers;
                     written by `save_pretrained` of transformers 5.x, whose config.json says
                     tie_word_embeddings=true with scale_decoder_outputs=false (5.x forces the
                     tie flag on for the T5 family) while the file holds a distinct lm_head.
  t5_1_1_bin/        The same weights as `torch.save(state_dict)` zip archives in two shards with
                     pytorch_model.bin.index.json (the reader must not run pickle code); the state
                     dict keeps encoder/decoder.embed_tokens aliases of `shared`.
  t5_1_0/            T5 1.0 style: relu, tied and scaled head, 16 buckets / max_distance 32; a
                     config.json in the older hub style (no tie_word_embeddings key: default true).
  t5_1_0_legacy_bin/ The same weights in torch's pre-1.6 (non-zip) serialisation, with lm_head,
                     encoder/decoder.embed_tokens sharing `shared`'s storage. (Its storage keys
                     are memory addresses, so this file alone differs between runs.)
  umt5/              umT5 style: a relative-position table in every layer, untied head,
                     max_distance 24, saved in three safetensors shards with an index.
  tensor_zoo/        One state dict of odd tensors (a transposed view, views at a storage offset
                     sharing one storage, bf16, f16, f64, int64, int8, bool, a scalar, an
                     empty tensor) saved by torch.save (zip and legacy) and by the safetensors
                     library, plus expected.npz with their values (bf16 as float32).
  reference.npz      encoder_input_ids (3, 48), decoder_input_ids (3, 20), and <fixture>_logits
                     (3, 20, vocab) from the PyTorch model in eval mode, fp32.

transformers 5.x quirk handled here: constructing a T5-family model ties lm_head to the
embedding even with tie_word_embeddings=False, and UMT5ForConditionalGeneration scales the
decoder output by d_model**-0.5 whenever config.tie_word_embeddings is true (5.x forces it
true). Released umT5 checkpoints are untied and unscaled, so the untied fixtures get a fresh
lm_head parameter (asserted distinct from `shared`) and the umT5 reference logits are computed
with config.tie_word_embeddings set back to False.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    T5Config,
    T5ForConditionalGeneration,
    UMT5Config,
    UMT5ForConditionalGeneration,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf_t5")
VOCAB = 200
ENCODER_LENGTHS = (48, 37, 19)  # real tokens per row; the rest is padding (id 0)
DECODER_LENGTH = 20

COMMON = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, dropout_rate=0.0)


def make_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encoder ids with trailing padding and an EOS; decoder ids starting with id 0 (T5's
    decoder start token), the last row padded after 12 tokens as shifted targets are."""
    rng = np.random.default_rng(seed)
    encoder = np.zeros((len(ENCODER_LENGTHS), max(ENCODER_LENGTHS)), np.int64)
    for row, length in enumerate(ENCODER_LENGTHS):
        encoder[row, : length - 1] = rng.integers(2, VOCAB, length - 1)
        encoder[row, length - 1] = 1
    decoder = rng.integers(1, VOCAB, (len(ENCODER_LENGTHS), DECODER_LENGTH)).astype(np.int64)
    decoder[:, 0] = 0
    decoder[-1, 12:] = 0
    return encoder, decoder


def untie_head(model) -> None:
    """Give the model its own lm_head (transformers 5.x ties it at construction regardless)."""
    head = model.lm_head.weight
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(head.data))
    assert model.lm_head.weight is not model.shared.weight


@torch.no_grad()
def randomise(model, seed: int) -> None:
    """Non-trivial values everywhere, at scales that keep activations and softmax healthy."""
    gen = torch.Generator().manual_seed(seed)
    d_model = model.config.d_model
    for name, param in model.named_parameters():
        if name.endswith("layer_norm.weight"):
            value = 0.5 + torch.rand(param.shape, generator=gen)
        elif "relative_attention_bias" in name:
            value = 1.5 * torch.randn(param.shape, generator=gen)
        elif name == "shared.weight":
            value = torch.randn(param.shape, generator=gen)
        elif name == "lm_head.weight":
            value = torch.randn(param.shape, generator=gen) * d_model**-0.5
        else:  # nn.Linear weight (out, in)
            value = torch.randn(param.shape, generator=gen) * param.shape[1] ** -0.5
            if name.endswith(".q.weight"):  # T5 folds 1/sqrt(d_kv) into the query kernel
                value *= model.config.d_kv**-0.5
        param.copy_(value)


@torch.no_grad()
def reference_logits(model, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
    model.eval()
    enc = torch.from_numpy(encoder)
    out = model(
        input_ids=enc,
        attention_mask=(enc != 0).long(),
        decoder_input_ids=torch.from_numpy(decoder),
    )
    return out.logits.float().numpy()


def clean_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def save_config(path: str, config: dict) -> None:
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def save(model, path: str, **kwargs) -> None:
    model.save_pretrained(clean_dir(path), **kwargs)
    # Not a model file; keep the fixture directories to what the importer reads.
    os.remove(os.path.join(path, "generation_config.json"))


def build_t5_1_1(encoder, decoder) -> np.ndarray:
    config = T5Config(
        **COMMON,
        num_layers=2,
        num_decoder_layers=3,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    assert config.scale_decoder_outputs is False
    model = T5ForConditionalGeneration(config)
    untie_head(model)
    randomise(model, seed=11)
    logits = reference_logits(model, encoder, decoder)

    path = os.path.join(FIXTURES, "t5_1_1")
    save(model, path)
    written = json.load(open(os.path.join(path, "config.json")))
    assert written["tie_word_embeddings"] is True and written["scale_decoder_outputs"] is False

    # The same weights as sharded torch.save zip archives, the way transformers 4.x wrote them.
    state = model.state_dict()
    assert state["encoder.embed_tokens.weight"].data_ptr() == state["shared.weight"].data_ptr()
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2]}
    shards["pytorch_model-00002-of-00002.bin"] = names[len(names) // 2 :]
    bin_path = clean_dir(os.path.join(FIXTURES, "t5_1_1_bin"))
    weight_map = {}
    for filename, keys in shards.items():
        torch.save({k: state[k] for k in keys}, os.path.join(bin_path, filename))
        weight_map.update({k: filename for k in keys})
    total = sum(state[k].numel() * state[k].element_size() for k in names)
    with open(os.path.join(bin_path, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    shutil.copy(os.path.join(path, "config.json"), bin_path)
    return logits


def build_t5_1_0(encoder, decoder) -> np.ndarray:
    config = T5Config(
        **COMMON,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="relu",
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
    )
    assert config.scale_decoder_outputs is True
    model = T5ForConditionalGeneration(config)
    assert model.lm_head.weight is model.shared.weight
    randomise(model, seed=10)
    logits = reference_logits(model, encoder, decoder)

    path = os.path.join(FIXTURES, "t5_1_0")
    save(model, path)
    # Older hub configs (t5-small ...) have no tie flags: the default (tied, scaled) applies.
    written = json.load(open(os.path.join(path, "config.json")))
    del written["tie_word_embeddings"], written["scale_decoder_outputs"]
    save_config(path, written)

    legacy = clean_dir(os.path.join(FIXTURES, "t5_1_0_legacy_bin"))
    torch.save(
        model.state_dict(),
        os.path.join(legacy, "pytorch_model.bin"),
        _use_new_zipfile_serialization=False,
    )
    save_config(legacy, written)
    return logits


def build_umt5(encoder, decoder) -> np.ndarray:
    config = UMT5Config(
        **COMMON,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        relative_attention_max_distance=24,
    )
    model = UMT5ForConditionalGeneration(config)
    untie_head(model)
    # Released umT5 is untied and unscaled; 5.x would scale while this flag is true.
    model.config.tie_word_embeddings = False
    for i, block in enumerate(model.encoder.block):
        assert block.layer[0].SelfAttention.has_relative_attention_bias, i
    randomise(model, seed=12)
    logits = reference_logits(model, encoder, decoder)

    path = os.path.join(FIXTURES, "umt5")
    save(model, path, max_shard_size="100KB")
    written = json.load(open(os.path.join(path, "config.json")))
    assert written["tie_word_embeddings"] is False, written
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    return logits


def build_tensor_zoo() -> None:
    gen = torch.Generator().manual_seed(13)
    base = torch.randn(6, 5, generator=gen)
    zoo = {
        "f32": torch.randn(3, 4, generator=gen),
        "f32_transposed": torch.randn(4, 3, generator=gen).t(),
        "f32_rows_2_to_4": base[2:5],  # storage offset 10, shares `base`'s storage
        "f32_column_1": base[:, 1],  # stride 5
        "f32_base": base,
        "bf16": torch.randn(7, generator=gen).to(torch.bfloat16),
        "f16": torch.randn(2, 3, generator=gen).to(torch.float16),
        "f64": torch.randn(3, generator=gen).to(torch.float64),
        "i64": torch.arange(-3, 5),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    path = clean_dir(os.path.join(FIXTURES, "tensor_zoo"))
    torch.save(zoo, os.path.join(path, "zoo.bin"))
    torch.save(zoo, os.path.join(path, "zoo_legacy.bin"), _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous().clone() for k, v in zoo.items()}, os.path.join(path, "zoo.safetensors")
    )
    expected = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in zoo.items()}
    np.savez(os.path.join(path, "expected.npz"), **expected)


def build_all() -> None:
    torch.manual_seed(0)
    os.makedirs(FIXTURES, exist_ok=True)
    encoder, decoder = make_inputs()
    arrays = {"encoder_input_ids": encoder, "decoder_input_ids": decoder}
    arrays["t5_1_1_logits"] = build_t5_1_1(encoder, decoder)
    arrays["t5_1_0_logits"] = build_t5_1_0(encoder, decoder)
    arrays["umt5_logits"] = build_umt5(encoder, decoder)
    build_tensor_zoo()
    np.savez_compressed(os.path.join(FIXTURES, "reference.npz"), **arrays)
    total = 0
    for root, _, files in os.walk(FIXTURES):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"wrote {FIXTURES} ({total / 1e6:.2f} MB)")


def verify_export(directory: str, name: str) -> int:
    """Loads an exported checkpoint with transformers; compares logits with the reference."""
    reference = np.load(os.path.join(FIXTURES, "reference.npz"))
    model = AutoModelForSeq2SeqLM.from_pretrained(directory)
    if isinstance(model, UMT5ForConditionalGeneration):
        model.config.tie_word_embeddings = False  # see the module docstring
    assert model.lm_head.weight is not model.shared.weight or "1_0" in name
    logits = reference_logits(model, reference["encoder_input_ids"], reference["decoder_input_ids"])
    diff = float(np.max(np.abs(logits - reference[f"{name}_logits"])))
    print(f"{directory}: {type(model).__name__}, max |logits - reference| = {diff:.3g}")
    return 0 if diff < 1e-4 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-export", metavar="DIR")
    parser.add_argument("--name", default="t5_1_1", choices=["t5_1_1", "t5_1_0", "umt5"])
    args = parser.parse_args(argv)
    if args.verify_export:
        return verify_export(args.verify_export, args.name)
    build_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
