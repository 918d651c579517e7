"""Hugging Face T5 checkpoint import/export (t5forge.model.hf_checkpoint), without torch.

The fixtures in tests/fixtures/hf_t5 come from tests/make_hf_fixtures.py (transformers 5.23,
torch 2.13): tiny randomly initialised T5 1.1 / T5 1.0 / umT5 models and their PyTorch logits.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest

from t5forge.model import hf_checkpoint as hf
from t5forge.model.config import get_config
from t5forge.model.hf_checkpoint import CheckpointError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf_t5")
# fixture directory -> the reference logits it must reproduce
CHECKPOINTS = {
    "t5_1_1": "t5_1_1",
    "t5_1_1_bin": "t5_1_1",
    "t5_1_0": "t5_1_0",
    "t5_1_0_legacy_bin": "t5_1_0",
    "umt5": "umt5",
}
ALIASES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(fixture("reference.npz")))


@pytest.fixture(scope="module")
def loaded():
    """Fixture directory -> (config, params), loaded once per module."""
    return {name: hf.load_hf_checkpoint(fixture(name)) for name in CHECKPOINTS}


def run_model(config, params, reference, impl="xla"):
    from t5forge.model.network import Transformer

    model = Transformer(config.replace(dtype="float32", attention_impl=impl))
    logits = model.apply(
        {"params": params}, reference["encoder_input_ids"], reference["decoder_input_ids"]
    )
    return np.asarray(logits)


def assert_same_params(a, b):
    flat_a, flat_b = hf._flatten(a), hf._flatten(b)
    assert sorted(flat_a) == sorted(flat_b)
    for path in flat_a:
        assert flat_a[path].dtype == flat_b[path].dtype == np.float32, path
        np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=path)


# ---------------------------------------------------------------------------------------------
# Logits against PyTorch


@pytest.mark.parametrize("impl", ["xla", "plain"])
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_logits_match_pytorch(name, impl, loaded, reference):
    config, params = loaded[name]
    logits = run_model(config, params, reference, impl)
    expected = reference[f"{CHECKPOINTS[name]}_logits"]
    assert logits.shape == expected.shape
    assert np.max(np.abs(logits - expected)) < 1e-4


def test_configs_read_from_config_json(loaded):
    v11, v10, umt5 = loaded["t5_1_1"][0], loaded["t5_1_0"][0], loaded["umt5"][0]
    assert (v11.num_encoder_layers, v11.num_decoder_layers) == (2, 3)
    assert v11.activations == ("gelu", "linear") and not v11.tie_embeddings
    assert v10.activations == ("relu",) and v10.tie_embeddings
    assert (v10.relpos_buckets, v10.relpos_max_distance) == (16, 32)
    assert umt5.relpos_per_layer and not umt5.tie_embeddings
    assert umt5.relpos_max_distance == 24
    assert v11.name == "t5_1_1"  # the directory's name


def test_fixture_detects_swapped_tensors(loaded, reference):
    """The reference logits notice a transposed square kernel or swapped per-layer tables
    (so a mapping bug of that kind cannot pass the logits test)."""
    config, params = loaded["umt5"]
    expected = reference["umt5_logits"]
    transposed = hf._unflatten(dict(hf._flatten(params)))
    query = transposed["encoder"]["layers_0"]["attention"]["query"]
    query["kernel"] = query["kernel"].T.copy()
    assert np.max(np.abs(run_model(config, transposed, reference) - expected)) > 1e-2
    swapped = hf._unflatten(dict(hf._flatten(params)))
    layers = swapped["decoder"]
    layers["layers_0"]["relpos_bias"], layers["layers_1"]["relpos_bias"] = (
        layers["layers_1"]["relpos_bias"],
        layers["layers_0"]["relpos_bias"],
    )
    assert np.max(np.abs(run_model(config, swapped, reference) - expected)) > 1e-2


def test_params_match_the_model_tree(loaded):
    """Same tree and shapes as Transformer.init (unboxed), all float32."""
    import jax
    from flax import linen as nn

    from t5forge.model.network import Transformer

    tokens = np.ones((1, 4), np.int32)
    for name in ("t5_1_1", "t5_1_0", "umt5"):
        config, params = loaded[name]
        model = Transformer(config.replace(dtype="float32", attention_impl="xla"))
        init = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), tokens, tokens))
        abstract = nn.meta.unbox(init["params"])
        assert jax.tree.structure(abstract) == jax.tree.structure(params)
        for ours, theirs in zip(jax.tree.leaves(abstract), jax.tree.leaves(params), strict=True):
            assert ours.shape == theirs.shape and theirs.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# File formats


def test_bin_and_safetensors_give_identical_params(loaded):
    assert_same_params(loaded["t5_1_1"][1], loaded["t5_1_1_bin"][1])
    assert_same_params(loaded["t5_1_0"][1], loaded["t5_1_0_legacy_bin"][1])
    assert loaded["t5_1_1"][0].replace(name="x") == loaded["t5_1_1_bin"][0].replace(name="x")


@pytest.mark.parametrize("file", ["zoo.bin", "zoo_legacy.bin", "zoo.safetensors"])
def test_tensor_zoo(file):
    """Strided views, storage offsets and shared storages, bf16/f16/f64/int/bool, a scalar and
    an empty tensor, as torch.save and the safetensors library wrote them."""
    expected = dict(np.load(fixture("tensor_zoo/expected.npz")))
    tensors = hf.read_weight_file(fixture(f"tensor_zoo/{file}"))
    assert sorted(tensors) == sorted(expected)
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype, name
        assert tensors[name].shape == value.shape, name
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def test_safetensors_write_read_round_trip(tmp_path):
    import ml_dtypes

    tensors = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f16": np.array([1.5, -2.0], np.float16),
        "f64": np.array([np.pi]),
        "i64": np.array([-(2**40), 7]),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "bf16": np.array([1.0, -3.140625, 1e30], np.float32).astype(ml_dtypes.bfloat16),
        "big_endian": np.array([1.0, 2.0], ">f4"),
    }
    path = str(tmp_path / "x.safetensors")
    hf.write_safetensors(path, tensors, {"format": "pt"})
    header, metadata, data_start = hf.read_safetensors_header(path)
    assert metadata == {"format": "pt"} and data_start % 8 == 0
    assert header["bf16"].dtype == "BF16" and header["big_endian"].dtype == "F32"
    back = hf.read_safetensors(path)
    for name, value in tensors.items():
        want = value.astype(np.float32) if name == "bf16" else value
        assert back[name].shape == want.shape, name
        np.testing.assert_array_equal(back[name], want, err_msg=name)
    assert back["big_endian"].dtype == np.float32
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]  # no temporary left


def test_safetensors_header_length_starting_with_a_pickle_byte(tmp_path):
    """A header length whose low byte is 0x80 (pickle's PROTO opcode) is still safetensors."""
    path = str(tmp_path / "model.safetensors")
    for length in range(1, 300):
        hf.write_safetensors(path, {"x" * length: np.ones(2, np.float32)})
        if open(path, "rb").read(1) == b"\x80":
            break
    else:
        raise AssertionError("no name length gave a 0x80 header length")
    assert hf.read_weight_file(path)["x" * length].tolist() == [1.0, 1.0]


def test_safetensors_reads_a_hand_built_file(tmp_path):
    """The byte layout of the format description, built by hand (no writer involved)."""
    header = {
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]},
        "a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
    }
    header_bytes = json.dumps(header).encode()
    data = struct.pack("<q", -5) + struct.pack("<HH", 0x3FC0, 0xC120)  # bf16 1.5, -10.0
    path = tmp_path / "hand.safetensors"
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    tensors = hf.read_safetensors(str(path))
    assert tensors["a"].tolist() == [-5]
    assert tensors["b"].dtype == np.float32 and tensors["b"].tolist() == [1.5, -10.0]


# ---------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("name", ["t5_1_1", "t5_1_1_bin", "t5_1_0", "t5_1_0_legacy_bin", "umt5"])
def test_export_round_trip(name, loaded, tmp_path):
    """Export -> re-import gives identical params and config; every exported tensor is
    byte-equal to the original file's; the original only adds aliases of the embedding."""
    config, params = loaded[name]
    out = hf.save_hf_checkpoint(params, config, str(tmp_path / "export"))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert os.stat(out).st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    config_back, params_back = hf.load_hf_checkpoint(out, name=config.name)
    assert config_back == config
    assert_same_params(params_back, params)

    original, _ = hf.read_hf_tensors(fixture(name))
    exported, _ = hf.read_hf_tensors(out)
    for tensor, value in exported.items():
        assert value.dtype == original[tensor].dtype == np.float32
        assert value.shape == original[tensor].shape, tensor
        assert value.tobytes() == original[tensor].tobytes(), tensor
    extra = set(original) - set(exported)
    assert extra <= ALIASES | ({"lm_head.weight"} if config.tie_embeddings else set())


def test_exported_config_json(loaded, tmp_path):
    config, params = loaded["t5_1_1"]
    out = hf.save_hf_checkpoint(params, config, str(tmp_path / "t5"))
    written = json.load(open(os.path.join(out, "config.json")))
    assert written["model_type"] == "t5"
    assert written["architectures"] == ["T5ForConditionalGeneration"]
    assert written["feed_forward_proj"] == "gated-gelu" and written["dense_act_fn"] == "gelu_new"
    assert written["tie_word_embeddings"] is False
    assert written["scale_decoder_outputs"] is False
    assert (written["num_layers"], written["num_decoder_layers"]) == (2, 3)
    config, params = loaded["umt5"]
    out = hf.save_hf_checkpoint(params, config, str(tmp_path / "umt5"))
    written = json.load(open(os.path.join(out, "config.json")))
    assert written["model_type"] == "umt5" and "scale_decoder_outputs" not in written
    assert hf.read_safetensors_header(os.path.join(out, "model.safetensors"))[1] == {"format": "pt"}


def test_sharded_export(loaded, tmp_path):
    config, params = loaded["umt5"]
    out = hf.save_hf_checkpoint(params, config, str(tmp_path / "sharded"), max_shard_bytes=50_000)
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors.index.json" in files
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(
        a.nbytes for a in hf.hf_tensors_from_params(params, config).values()
    )
    _, back = hf.load_hf_checkpoint(out)
    assert_same_params(back, params)


def test_bfloat16_export(loaded, tmp_path):
    import ml_dtypes

    config, params = loaded["t5_1_1"]
    out = hf.save_hf_checkpoint(params, config, str(tmp_path / "bf16"), dtype="bfloat16")
    header, _, _ = hf.read_safetensors_header(os.path.join(out, "model.safetensors"))
    assert {info.dtype for info in header.values()} == {"BF16"}
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
    _, back = hf.load_hf_checkpoint(out)
    flat, flat_back = hf._flatten(params), hf._flatten(back)
    for path, value in flat.items():
        rounded = value.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(flat_back[path], rounded, err_msg=path)


def test_export_of_boxed_jax_params(tmp_path):
    """The tree Transformer.init returns: {"params": ...} with LogicallyPartitioned boxes
    around jax arrays (values drawn here; an abstract init gives the boxes and shapes)."""
    import jax
    import jax.numpy as jnp

    from t5forge.model.network import Transformer

    small = dict(vocab_size=64, d_model=16, num_heads=2, d_kv=4, d_ff=24)
    config = get_config("umt5-small", num_encoder_layers=2, num_decoder_layers=1, **small)
    tokens = np.ones((1, 3), np.int32)
    model = Transformer(config.replace(dtype="float32"))
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), tokens, tokens))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), abstract)
    leaf = variables["params"]["token_embedder"]["embedding"]
    assert type(leaf).__name__ == "LogicallyPartitioned" and isinstance(leaf.value, jax.Array)
    out = hf.save_hf_checkpoint(variables, config, str(tmp_path / "umt5"))
    config_back, params = hf.load_hf_checkpoint(out, name=config.name)
    assert config_back == config
    flat = hf._plain_params(variables)
    for path, value in hf._flatten(params).items():
        np.testing.assert_array_equal(value, flat[path], err_msg=path)


def test_export_is_atomic_and_refuses_to_overwrite(loaded, tmp_path):
    config, params = loaded["t5_1_0"]
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        hf.save_hf_checkpoint(params, config, str(target))
    assert os.listdir(target) == ["keep"]
    broken = dict(hf._flatten(params))
    del broken["encoder/encoder_norm/scale"]
    with pytest.raises(CheckpointError, match="encoder/encoder_norm/scale"):
        hf.save_hf_checkpoint(hf._unflatten(broken), config, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left
    hf.save_hf_checkpoint(params, config, str(target), overwrite=True)
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_unrepresentable_configs_are_refused(loaded):
    for config in (get_config("t5.1.th-base"), get_config("t5.1.n4w10-base")):
        with pytest.raises(CheckpointError, match="cannot be written"):
            hf.config_to_hf(config)


# ---------------------------------------------------------------------------------------------
# config.json


def test_config_from_hub_style_configs():
    t5_small = {
        "model_type": "t5",
        "vocab_size": 32128,
        "d_model": 512,
        "d_kv": 64,
        "d_ff": 2048,
        "num_layers": 6,
        "num_heads": 8,
        "relative_attention_num_buckets": 32,
        "feed_forward_proj": "relu",
    }
    config = hf.config_from_hf(t5_small)
    assert config.tie_embeddings and config.activations == ("relu",)
    assert config.num_decoder_layers == 6 and config.relpos_max_distance == 128
    assert config.dropout_rate == 0.1  # transformers' default

    v1_1 = {**t5_small, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
    config = hf.config_from_hf(v1_1)
    assert not config.tie_embeddings and config.activations == ("gelu", "linear")
    flan = {**v1_1, "dense_act_fn": "gelu_new", "is_gated_act": True}
    assert hf.config_from_hf(flan).activations == ("gelu", "linear")
    # transformers lets dense_act_fn override feed_forward_proj ("gelu" is the exact erf form).
    exact = {**v1_1, "dense_act_fn": "gelu"}
    assert hf.config_from_hf(exact).activations == ("gelu_exact", "linear")
    byt5 = {**v1_1, "num_layers": 12, "num_decoder_layers": 4, "vocab_size": 384}
    config = hf.config_from_hf(byt5)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (12, 4)

    mt5 = {**v1_1, "model_type": "mt5", "vocab_size": 250112}
    del mt5["tie_word_embeddings"]
    assert not hf.config_from_hf(mt5).tie_embeddings  # mT5 default: untied
    # transformers 5 saves mT5 with tie_word_embeddings forced true; its MT5 never scales.
    mt5_v5 = {**mt5, "tie_word_embeddings": True, "transformers_version": "5.23.0"}
    assert not hf.config_from_hf(mt5_v5).tie_embeddings
    # transformers 5 T5: the real head flag is scale_decoder_outputs.
    t5_v5 = {**v1_1, "tie_word_embeddings": True, "scale_decoder_outputs": False}
    assert not hf.config_from_hf(t5_v5).tie_embeddings

    umt5 = {**mt5, "model_type": "umt5", "vocab_size": 256384}
    config = hf.config_from_hf(umt5, name="umt5-small", dtype="float32")
    assert config.relpos_per_layer and not config.tie_embeddings
    assert config.name == "umt5-small" and config.dtype == "float32"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"model_type": "longt5"}, "model_type 'longt5' is not supported"),
        ({"feed_forward_proj": "gelu-gated"}, "not 'ACT' or 'gated-ACT'"),
        ({"feed_forward_proj": "gated-quick_gelu"}, "activation 'quick_gelu'"),
        ({"d_model": None}, r"missing entries \[.d_model.\]"),
        ({"relative_attention_num_buckets": 33}, "relpos_buckets must be even"),
        ({"num_heads": "four"}, "unusable value"),
    ],
)
def test_config_from_hf_errors(bad, match):
    base = {"model_type": "t5", "vocab_size": 10, "d_model": 8, "d_kv": 4, "d_ff": 16}
    with pytest.raises(CheckpointError, match=match):
        hf.config_from_hf({**base, "num_layers": 1, "num_heads": 2, **bad})


@pytest.mark.parametrize(
    "name",
    ["t5.1.0-small", "t5.1.1-base", "flan-t5-large", "mt5-small", "umt5-xl", "byt5-small",
     "t5-efficient-tiny-nl8"],
)  # fmt: skip
def test_config_to_hf_and_back(name):
    config = get_config(name)
    assert hf.config_from_hf(hf.config_to_hf(config), name=name) == config
    exact = config.replace(activations=("gelu_exact", "linear"))
    assert hf.config_from_hf(hf.config_to_hf(exact), name=name) == exact


# ---------------------------------------------------------------------------------------------
# Tensor checks


def copy_checkpoint(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(fixture(name), target)
    return target


def rewrite_safetensors(directory, edit):
    path = str(directory / "model.safetensors")
    tensors = hf.read_safetensors(path)
    edit(tensors)
    hf.write_safetensors(path, tensors, {"format": "pt"})
    return path


def test_missing_tensor_is_named(tmp_path):
    directory = copy_checkpoint("t5_1_1", tmp_path)
    path = rewrite_safetensors(
        directory, lambda t: t.pop("decoder.block.2.layer.1.EncDecAttention.v.weight")
    )
    with pytest.raises(CheckpointError) as error:
        hf.load_hf_checkpoint(str(directory))
    assert "missing tensors" in str(error.value)
    assert "decoder.block.2.layer.1.EncDecAttention.v.weight" in str(error.value)
    assert path in str(error.value)


def test_unexpected_tensor_is_named(tmp_path):
    directory = copy_checkpoint("t5_1_1", tmp_path)

    def add(tensors):
        tensors["decoder.block.3.layer.0.layer_norm.weight"] = np.ones(32, np.float32)
        # transformers drops this one too, so it is no error.
        tensors["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.ones(
            (32, 4), np.float32
        )

    path = rewrite_safetensors(directory, add)
    with pytest.raises(CheckpointError, match="no place for") as error:
        hf.load_hf_checkpoint(str(directory))
    assert "decoder.block.3.layer.0.layer_norm.weight" in str(error.value)
    assert "EncDecAttention.relative_attention_bias" not in str(error.value)
    assert path in str(error.value)


def test_shape_mismatch_is_named(tmp_path):
    config = hf.load_hf_checkpoint(fixture("t5_1_1"))[0].replace(d_ff=48)
    with pytest.raises(CheckpointError) as error:
        hf.load_hf_checkpoint(fixture("t5_1_1"), config=config)
    message = str(error.value)
    assert "DenseReluDense.wi_0.weight has shape [64, 32]" in message
    assert "expects [48, 32]" in message and "model.safetensors" in message


def test_tied_model_with_a_different_head_is_refused(tmp_path):
    directory = copy_checkpoint("t5_1_0", tmp_path)
    rewrite_safetensors(directory, lambda t: t.update({"lm_head.weight": t["shared.weight"] * 2}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from shared.weight"):
        hf.load_hf_checkpoint(str(directory))


def test_embedding_alias_must_match(tmp_path):
    directory = copy_checkpoint("t5_1_1", tmp_path)
    rewrite_safetensors(
        directory, lambda t: t.update({"encoder.embed_tokens.weight": t["shared.weight"] + 1})
    )
    with pytest.raises(CheckpointError, match="encoder.embed_tokens.weight differs"):
        hf.load_hf_checkpoint(str(directory))


def test_untied_model_without_head_uses_the_embedding_as_transformers_does(tmp_path):
    """transformers 5 ties lm_head to the embedding when the file has none (its config says
    tie_word_embeddings=true); the unscaled head then is the embedding."""
    directory = copy_checkpoint("t5_1_1", tmp_path)
    rewrite_safetensors(directory, lambda t: t.pop("lm_head.weight"))
    config, params = hf.load_hf_checkpoint(str(directory))
    assert not config.tie_embeddings
    np.testing.assert_array_equal(
        params["decoder"]["logits_dense"]["kernel"], params["token_embedder"]["embedding"].T
    )
    hf_config = json.load(open(directory / "config.json"))
    (directory / "config.json").write_text(json.dumps({**hf_config, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        hf.load_hf_checkpoint(str(directory))


def test_transformers_5_umt5_config_with_distinct_head_is_untied(tmp_path, loaded, reference):
    directory = copy_checkpoint("umt5", tmp_path)
    hf_config = json.load(open(directory / "config.json"))
    hf_config["tie_word_embeddings"] = True  # what transformers 5 writes unless told otherwise
    (directory / "config.json").write_text(json.dumps(hf_config))
    config, params = hf.load_hf_checkpoint(str(directory))
    assert not config.tie_embeddings
    assert_same_params(params, loaded["umt5"][1])


# ---------------------------------------------------------------------------------------------
# Hostile and damaged files


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_torch_zip(path, payload: bytes, storages=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(layout, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"shared.weight": _RunsCommand(f"touch {marker}")}, protocol=2)
    path = tmp_path / "pytorch_model.bin"
    if layout == "zip":
        write_torch_zip(path, payload)
    else:  # the legacy stream: magic number, protocol, system info, then the state dict
        head = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in head) + payload)
    (tmp_path / "config.json").write_text(open(fixture("t5_1_0/config.json")).read())
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (posix|os)\.system") as error:
        hf.load_hf_checkpoint(str(tmp_path))
    assert str(path) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target", [("builtins", "eval"), ("torch", "load"), ("numpy", "frombuffer")]
)
def test_only_tensor_globals_are_resolved(target, tmp_path):
    module, name = target
    payload = (
        b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x03\x00\x00\x001+1\x85R."
    )  # GLOBAL module.name, ("1+1",), REDUCE
    path = tmp_path / "x.bin"
    write_torch_zip(path, payload)
    with pytest.raises(CheckpointError, match=f"refusing to unpickle {module}.{name}"):
        hf.read_torch_bin(str(path))


def torch_state_dict_pickle(offset: int, size: tuple, stride: tuple, numel: int) -> bytes:
    """The opcodes torch.save writes for {"w": a float32 tensor over storage "0"}, built by
    hand (no torch): _rebuild_tensor_v2(persistent storage, offset, size, stride, ...)."""

    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    def ints(values) -> bytes:
        return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"

    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu")
    storage += b"K" + bytes([numel]) + b"tQ"  # ("storage", FloatStorage, "0", "cpu", numel)
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K" + bytes([offset])
    tensor += ints(size) + ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR"
    return b"\x80\x02}(" + text("w") + tensor + b"u."


def test_hand_built_torch_archive_is_read(tmp_path):
    path = tmp_path / "x.bin"
    storage = np.arange(12, dtype="<f4")
    write_torch_zip(path, torch_state_dict_pickle(1, (3, 2), (1, 4), 12), {"0": storage.tobytes()})
    expected = np.lib.stride_tricks.as_strided(storage[1:], (3, 2), (4, 16))
    np.testing.assert_array_equal(hf.read_torch_bin(str(path))["w"], expected)


@pytest.mark.parametrize(
    "offset, size, stride, match",
    [
        (0, (2, 2), (3, 1), "reaches element 4 of a storage of 4"),
        (3, (2,), (1,), "reaches element 4 of a storage of 4"),
        (0, (200, 200), (0, 0), "40000 elements, more than its storage"),
    ],
)
def test_out_of_bounds_tensor_view_is_refused(offset, size, stride, match, tmp_path):
    """A tensor whose size/stride reaches past its storage must not read foreign memory."""
    path = tmp_path / "x.bin"
    payload = torch_state_dict_pickle(offset, size, stride, 4)
    write_torch_zip(path, payload, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match=match):
        hf.read_torch_bin(str(path))


def test_truncated_safetensors(tmp_path):
    data = open(fixture("t5_1_0/model.safetensors"), "rb").read()
    path = tmp_path / "model.safetensors"
    path.write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text(open(fixture("t5_1_0/config.json")).read())
    with pytest.raises(CheckpointError, match="truncated") as error:
        hf.load_hf_checkpoint(str(tmp_path))
    assert str(path) in str(error.value)
    for damaged, match in [
        (data[:5], "no header"),
        (struct.pack("<Q", 10**12) + data[8:], "header length"),
        (data[:8] + b"#" + data[9:], "not valid JSON"),
    ]:
        path.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=match) as error:
            hf.read_safetensors(str(path))
        assert str(path) in str(error.value)


def test_inconsistent_safetensors_header(tmp_path):
    for entry, match in [
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "byte range"),
        ({"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}, "unsupported dtype"),
        ({"dtype": "F32", "shape": [1]}, "malformed header entry"),
    ]:
        header = json.dumps({"t": entry}).encode()
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
        with pytest.raises(CheckpointError, match=match):
            hf.read_safetensors(str(path))


@pytest.mark.parametrize("name", ["t5_1_1_bin/pytorch_model-00001-of-00002.bin",
                                  "t5_1_0_legacy_bin/pytorch_model.bin"])  # fmt: skip
def test_truncated_torch_bin(name, tmp_path):
    data = open(fixture(name), "rb").read()
    path = tmp_path / "pytorch_model.bin"
    for cut in (len(data) // 3, len(data) - 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as error:
            hf.read_torch_bin(str(path))
        assert str(path) in str(error.value)


def test_index_problems(tmp_path):
    directory = copy_checkpoint("umt5", tmp_path)
    index_path = directory / "model.safetensors.index.json"
    index = json.load(open(index_path))
    shard = sorted(set(index["weight_map"].values()))[1]
    os.remove(directory / shard)
    with pytest.raises(CheckpointError, match=f"shard files missing.*{shard}"):
        hf.load_hf_checkpoint(str(directory))
    index["weight_map"]["shared.weight"] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        hf.load_hf_checkpoint(str(directory))


def test_no_weights_or_config(tmp_path):
    with pytest.raises(CheckpointError, match="no weights found"):
        hf.load_hf_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        hf.load_hf_checkpoint(str(tmp_path / "absent"))
    shutil.copy(fixture("t5_1_0/model.safetensors"), tmp_path)
    with pytest.raises(CheckpointError, match="no config.json in .* to give the architecture"):
        hf.load_hf_checkpoint(str(tmp_path))
    config = hf.load_hf_checkpoint(fixture("t5_1_0"))[0]
    assert hf.load_hf_checkpoint(str(tmp_path / "model.safetensors"), config=config)[0] == config


def test_config_json_given_for_the_checkpoint_names_the_directory():
    """import-hf DIR/config.json (or --init-from it) said 'not a checkpoint index
    (KeyError: 'weight_map')'; it now says to give the directory."""
    with pytest.raises(CheckpointError, match="the architecture, not the weights; give the"):
        hf.load_hf_checkpoint(fixture("t5_1_0/config.json"))


def test_a_training_run_given_as_a_checkpoint_says_how_to_use_it(tmp_path):
    """--init-from RUN_DIR (a t5forge run, not an HF checkpoint) said only 'no weights found'."""
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match="a t5forge training run.*--resume.*export-hf"):
        hf.load_hf_checkpoint(str(tmp_path))
    (tmp_path / "run.json").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        hf.load_hf_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Download (against a local server laid out like the hub: /<repo>/resolve/<revision>/<file>)


def hub_layout(root, repo, revision, source, files=None):
    target = root / repo / "resolve" / revision
    target.mkdir(parents=True)
    for file in files or os.listdir(fixture(source)):
        shutil.copy(fixture(f"{source}/{file}"), target)


@pytest.mark.parametrize("source", ["t5_1_1", "umt5", "t5_1_1_bin"])
def test_download(source, serve_directory, tmp_path, loaded):
    hub_layout(tmp_path / "hub", "org/tiny", "main", source)
    server = serve_directory(tmp_path / "hub")
    seen = []
    target = tmp_path / "models" / "tiny"
    path = hf.download_hf_checkpoint(
        "org/tiny",
        str(target),
        endpoint=server.url.rstrip("/"),
        progress=lambda name, done, total: seen.append((name, done, total)),
    )
    assert path == str(target)
    assert sorted(os.listdir(target)) == sorted(os.listdir(fixture(source)))
    for file in os.listdir(target):
        assert (target / file).read_bytes() == open(fixture(f"{source}/{file}"), "rb").read()
    assert seen and seen[-1][1] == seen[-1][2]
    _, params = hf.load_hf_checkpoint(str(target))
    assert_same_params(params, loaded[source][1])
    assert os.listdir(tmp_path / "models") == ["tiny"]


def test_download_prefers_safetensors_and_uses_the_revision(serve_directory, tmp_path):
    hub_layout(tmp_path / "hub", "tiny", "v1.0", "t5_1_1")
    for file in os.listdir(fixture("t5_1_1_bin")):
        if file.endswith(".bin") or file.endswith(".bin.index.json"):
            shutil.copy(fixture(f"t5_1_1_bin/{file}"), tmp_path / "hub/tiny/resolve/v1.0")
    server = serve_directory(tmp_path / "hub")
    target = tmp_path / "out"
    hf.download_hf_checkpoint("tiny", str(target), revision="v1.0", endpoint=server.url)
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]


def test_download_failures_leave_nothing(serve_directory, tmp_path):
    hub = tmp_path / "hub"
    hub_layout(hub, "org/no-weights", "main", "t5_1_1", ["config.json"])
    hub_layout(hub, "org/lost-shard", "main", "umt5")
    index = json.load(open(fixture("umt5/model.safetensors.index.json")))
    os.remove(hub / "org/lost-shard/resolve/main" / sorted(set(index["weight_map"].values()))[-1])
    hub_layout(hub, "org/truncated", "main", "t5_1_0")
    weights = hub / "org/truncated/resolve/main/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    server = serve_directory(hub)
    models = tmp_path / "models"
    models.mkdir()
    for repo, match in [
        ("org/absent", "no config.json"),
        ("org/no-weights", "no weights"),
        ("org/lost-shard", "shard model-00003-of-00003.safetensors .* is missing"),
        ("org/truncated", "truncated"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            hf.download_hf_checkpoint(repo, str(models / "m"), endpoint=server.url)
        assert os.listdir(models) == []
    server.stop()
    with pytest.raises(CheckpointError, match="127.0.0.1"):
        hf.download_hf_checkpoint("org/tiny", str(models / "m"), endpoint=server.url, timeout=5)
    assert os.listdir(models) == []
    with pytest.raises(ValueError, match="not a hub repository id"):
        hf.download_hf_checkpoint("../etc", str(models / "m"), endpoint=server.url)
    (models / "m").mkdir()
    with pytest.raises(FileExistsError):
        hf.download_hf_checkpoint("org/tiny", str(models / "m"), endpoint=server.url)


def test_failed_download_removes_the_directories_it_made(
    serve_directory, tmp_path, monkeypatch, capsys
):
    """`t5forge import-hf REPO` offline (or for a repo that does not exist) used to leave an
    empty ./hf-checkpoints/ behind: the parents made for the download go with it, and only
    those."""
    import functools

    from t5forge.cli import main as cli

    (tmp_path / "hub").mkdir()
    server = serve_directory(tmp_path / "hub")  # holds no repository: config.json is a 404
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        hf.download_hf_checkpoint("org/absent", str(work / "a" / "b" / "m"), endpoint=server.url)
    assert os.listdir(work) == []
    (work / "mine").mkdir()  # a parent that was there before stays
    with pytest.raises(CheckpointError, match="no config.json"):
        hf.download_hf_checkpoint("org/absent", str(work / "mine" / "x" / "m"), endpoint=server.url)
    assert os.listdir(work) == ["mine"] and os.listdir(work / "mine") == []

    # The command, with its default location (under the working directory), against the
    # local server instead of the hub.
    monkeypatch.chdir(work / "mine")
    monkeypatch.setattr(
        hf,
        "download_hf_checkpoint",
        functools.partial(hf.download_hf_checkpoint, endpoint=server.url),
    )
    assert cli(["import-hf", "org/absent"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert os.listdir(work / "mine") == []
    monkeypatch.setenv("COLUMNS", "200")  # no line wrapping in the help
    with pytest.raises(SystemExit):
        cli(["import-hf", "--help"])
    assert "(default: ./hf-checkpoints/OWNER--NAME)" in capsys.readouterr().out


def test_bad_config_json_is_named(tmp_path):
    directory = copy_checkpoint("t5_1_0", tmp_path)
    hf_config = json.load(open(directory / "config.json"))
    (directory / "config.json").write_text(json.dumps({**hf_config, "model_type": "longt5"}))
    with pytest.raises(CheckpointError, match="config.json: model_type 'longt5'") as error:
        hf.load_hf_checkpoint(str(directory))
    assert str(directory) in str(error.value)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        hf.load_hf_checkpoint(str(directory))
