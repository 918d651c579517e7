"""Hugging Face T5-family checkpoints in and out: config.json, safetensors, PyTorch .bin, the hub.

Covers the checkpoints that transformers loads as T5ForConditionalGeneration,
MT5ForConditionalGeneration or UMT5ForConditionalGeneration: T5 1.0, T5 1.1, LM-adapted,
Flan-T5, T5-Efficient, mT5, ByT5 and umT5 (a relative-position table in every layer).

- `load_hf_checkpoint(path)` -> (T5Config, params): float32 numpy parameters with exactly the
  tree of `Transformer(config).init(...)["params"]` (unboxed), every checkpoint tensor used and
  every parameter filled; anything else is a `CheckpointError` naming the file and the tensor.
- `save_hf_checkpoint(params, config, directory)`: safetensors (optionally sharded) plus a
  config.json that transformers loads; written to a temporary directory, then renamed.
- `download_hf_checkpoint(repo_id, directory)`: config.json and the weights from the hub (or
  any server with the hub's `/<repo>/resolve/<revision>/<file>` layout), atomically.

Nothing here needs torch, transformers or the `safetensors` package: safetensors files are
read and written with numpy, and PyTorch .bin files are read by an unpickler that resolves
only the handful of torch names a tensor archive uses (to inert stand-ins) and takes the raw
tensor bytes from the archive, so a malicious pickle cannot run code (DESIGN.md: no pickle for
anything read from disk). JAX and Flax are imported only by the functions that need the
model's parameter shapes.

Name mapping (HF `nn.Linear` weights are (out, in); our kernels are (in, out), so those and the
relative-position tables, (buckets, heads) in HF, are transposed):
  shared.weight                                   token_embedder/embedding
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o} encoder/layers_i/attention/{query,key,value,out}
  encoder.block.i.layer.0.layer_norm              encoder/layers_i/pre_attention_layer_norm
  encoder.block.i.layer.1.DenseReluDense.{wi,wi_0,wi_1,wo}   encoder/layers_i/mlp/...
  encoder.block.i.layer.1.layer_norm              encoder/layers_i/pre_mlp_layer_norm
  encoder.block.0...relative_attention_bias       encoder/relpos_bias/rel_embedding
                                                  (umT5: block.i -> encoder/layers_i/relpos_bias)
  decoder.block.i.layer.{0,1,2}                   decoder/layers_i/{self_attention,
                                                  encoder_decoder_attention, mlp} and their norms
  {encoder,decoder}.final_layer_norm              {encoder/encoder_norm, decoder/decoder_norm}
  lm_head.weight                                  decoder/logits_dense/kernel (untied models)

Tied heads. HF has two separate notions: whether the decoder output is multiplied by
d_model**-0.5 (T5 1.0, the tied head of mesh-TF/t5x) and whether lm_head is the embedding.
Our `tie_embeddings=True` is both; `False` is neither (T5 1.1, mT5, umT5, ByT5). Since
transformers 5 every T5-family config is saved with tie_word_embeddings=true whatever the model
is (the flag is forced on), plus `scale_decoder_outputs` for model_type t5 only, so:
  * model_type t5: scaled iff scale_decoder_outputs (when present), else tie_word_embeddings
    (default true);
  * mt5: tie_word_embeddings (default false), but never scaled in a config written by
    transformers >= 5 (its MT5 model never scales);
  * umt5: tie_word_embeddings (default false), except that a config written by transformers
    >= 5 whose checkpoint has an lm_head different from the embedding is untied (released
    umT5 is untied and unscaled; transformers 5's UMT5 model scales anyway, see
    `save_hf_checkpoint`);
  * an unscaled model without lm_head.weight uses the embedding as its head when
    tie_word_embeddings is true (what transformers does): it is copied into logits_dense;
  * a scaled model whose lm_head differs from the embedding cannot be represented: error.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from t5forge.model.config import T5Config
from t5forge.paths import missing_dirs, remove_empty_dirs

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"
# Looked for in this order in a checkpoint directory (and on the hub).
WEIGHT_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, TORCH_NAME, TORCH_INDEX_NAME)

# Tensors transformers itself drops when loading (a cross-attention relative bias some old
# conversions carried; T5 never uses it).
IGNORED_HF_TENSORS = frozenset(
    {"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"}
)
# Names that hold the embedding itself in checkpoints that store tied tensors more than once.
EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not match the model (names the file)."""


# ---------------------------------------------------------------------------------------------
# safetensors, with numpy: u64 little-endian header length, a JSON header, then the raw
# little-endian tensor bytes ("data_offsets" are relative to the end of the header).

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # bit pattern; widened to float32 on reading
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_SAFETENSORS_CODES = {v.str[1:]: k for k, v in _SAFETENSORS_DTYPES.items() if k != "BF16"}
# A header this large would be a corrupt length field, not a real header (HF caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One safetensors header entry: dtype code, shape and byte range within the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the bf16 bits are a float32's upper half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parses and checks a safetensors header.

    Returns (tensors by name, the "__metadata__" strings, offset of the data in the file).
    Raises CheckpointError for a truncated file, a header that is not JSON, unknown dtypes,
    byte ranges that disagree with the shapes, overlap, or data past the end of the file.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({file_size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(file_size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{path}: safetensors header length {header_len} exceeds the file size "
                f"({file_size} bytes): truncated or not a safetensors file"
            )
        header_bytes = f.read(header_len)
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: safetensors __metadata__ is not a JSON object")
    data_size = file_size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(s) for s in shape)
            begin, end = int(begin), int(end)
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(
                f"{path}: malformed header entry for {name!r}: {entry!r}"
            ) from None
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: {name} has unsupported dtype {dtype!r}")
        nbytes = math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize
        if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes:
            raise CheckpointError(
                f"{path}: {name} has shape {list(shape)} ({dtype}, {nbytes} bytes) but byte "
                f"range [{begin}, {end})"
            )
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated: {name} ends at data byte {end}, the file holds {data_size}"
            )
        tensors[name] = TensorInfo(dtype, shape, begin, end)
    previous_end, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < previous_end:
            raise CheckpointError(f"{path}: tensors {previous} and {name} overlap")
        previous_end, previous = max(previous_end, info.end), name
    return tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + header_len


def read_safetensors(path: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file as native-endian numpy arrays (BF16 becomes float32).

    `names` restricts reading to those tensors (all by default; unknown names are an error).
    """
    tensors, _, data_start = read_safetensors_header(path)
    wanted = list(tensors) if names is None else list(names)
    unknown = [n for n in wanted if n not in tensors]
    if unknown:
        raise CheckpointError(f"{path}: no tensors named {unknown}")
    arrays = {}
    with open(path, "rb") as f:
        for name in wanted:
            info = tensors[name]
            f.seek(data_start + info.begin)
            buffer = f.read(info.end - info.begin)
            if len(buffer) != info.end - info.begin:
                raise CheckpointError(f"{path}: truncated while reading {name}")
            array = np.frombuffer(buffer, _SAFETENSORS_DTYPES[info.dtype]).reshape(info.shape)
            if info.dtype == "BF16":
                arrays[name] = bfloat16_bits_to_float32(array)
            else:
                arrays[name] = array.astype(array.dtype.newbyteorder("="))
    return arrays


def _safetensors_code(array: np.ndarray) -> str:
    if array.dtype.name == "bfloat16":  # ml_dtypes.bfloat16, as used by JAX
        return "BF16"
    code = _SAFETENSORS_CODES.get(array.dtype.newbyteorder("<").str[1:])
    if code is None:
        raise ValueError(f"dtype {array.dtype} cannot be stored in safetensors")
    return code


def _little_endian_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        array = array.view(np.uint16)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(
    path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes `tensors` as a safetensors file (via a temporary name, then rename).

    Arrays keep their dtype (ml_dtypes/JAX bfloat16 is written as BF16). Tensors are laid out
    in name order; the header is padded with spaces to a multiple of 8 bytes, as the
    `safetensors` library does, so the data is aligned.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    ordered = sorted(tensors)
    for name in ordered:
        array = tensors[name]
        nbytes = array.size * array.dtype.itemsize
        header[name] = {
            "dtype": _safetensors_code(array),
            "shape": list(array.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            for name in ordered:
                f.write(_little_endian_bytes(tensors[name]))
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


# ---------------------------------------------------------------------------------------------
# PyTorch .bin (torch.save): read without running pickle code.
#
# A torch.save file is a zip archive (torch >= 1.6) holding `<archive>/data.pkl`, a pickle of
# the state dict whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
# stride, ...)` calls on "persistent ids" ("storage", torch.FloatStorage, key, device, numel);
# the storage bytes are the archive member `<archive>/data/<key>`. The older format is a
# stream of pickles (magic number, protocol, system info, the state dict, the storage keys)
# followed by each storage as an int64 element count and its raw bytes. Here the unpickler's
# find_class hands out inert stand-ins for exactly those torch names and refuses everything
# else, so the pickle can only build dicts, tuples and our tensor references.

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001


# Frozen and slotted: a pickle's BUILD opcode can neither add nor change their attributes.
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """Stands in for torch.FloatStorage etc.: only its element type matters."""

    name: str
    code: str  # numpy type code without byte order, or "bf16"

    @property
    def itemsize(self) -> int:
        return 2 if self.code == "bf16" else np.dtype(self.code).itemsize

    def numpy_dtype(self, byteorder: str) -> np.dtype:
        code = "u2" if self.code == "bf16" else self.code
        return np.dtype(code).newbyteorder(byteorder)


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage named by a persistent id: its key, element type, and the view into it."""

    key: str
    storage_type: _StorageType
    numel: int
    offset: int = 0  # legacy format: a view starting `offset` elements into storage `key`


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    """What `_rebuild_tensor_v2` would build: a strided view of a storage."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor(_v2); the extra arguments (requires_grad,
    backward hooks, metadata) do not affect the values."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    try:
        return _TensorRef(
            storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
        )
    except (TypeError, ValueError):
        raise pickle.UnpicklingError(
            f"bad tensor geometry: offset {storage_offset!r}, size {size!r}, stride {stride!r}"
        ) from None


def _rebuild_parameter(data, *_ignored):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): the tensor itself."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


_TORCH_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_TORCH_SAFE_GLOBALS.update(
    {("torch", name): _StorageType(name, code) for name, code in _TORCH_STORAGE_DTYPES.items()}
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict, resolving only `_TORCH_SAFE_GLOBALS`."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _TORCH_SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.path}: refusing to unpickle {module}.{name}: a PyTorch checkpoint holds "
                "only tensors, and this reader never runs code from a file (convert it to "
                "safetensors if it needs more)"
            ) from None

    def persistent_load(self, pid):
        # zip: ("storage", type, key, device, numel); legacy: the same plus view metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _device, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageRef(str(key), storage_type, numel)
        _view_key, view_offset, view_size = view
        return _StorageRef(str(key), storage_type, int(view_size), int(view_offset))


def _unpickle(data: bytes | io.BytesIO, path: str):
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    try:
        return _RestrictedUnpickler(stream, path).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, MemoryError, RecursionError, OverflowError) as e:  # fmt: skip
        raise CheckpointError(
            f"{path}: corrupt or unsupported pickle ({type(e).__name__}: {e})"
        ) from None


def _materialise(ref: _TensorRef, storage: np.ndarray, path: str, name: str) -> np.ndarray:
    """Copies the tensor `ref` out of its storage's elements, after checking the bounds."""
    size, stride = ref.size, ref.stride
    if len(size) != len(stride) or ref.offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(f"{path}: {name} has invalid size {size} / stride {stride}")
    if math.prod(size) > storage.size:
        # Only a stride-0 (expanded) tensor could; state dicts hold none, and a hostile file
        # could otherwise ask for an enormous copy of a few bytes.
        raise CheckpointError(
            f"{path}: {name} has {math.prod(size)} elements, more than its storage ({storage.size})"
        )
    if math.prod(size) == 0:
        array = np.zeros(size, storage.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise CheckpointError(
                f"{path}: {name} reaches element {last} of a storage of {storage.size}"
            )
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=size,
            strides=[s * itemsize for s in stride],
            writeable=False,
        )
        array = np.array(view)
    if ref.storage.storage_type.code == "bf16":
        return bfloat16_bits_to_float32(array)
    return array.astype(array.dtype.newbyteorder("="))


def _state_dict_refs(obj, path: str) -> dict[str, _TensorRef]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    refs = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise CheckpointError(
                f"{path}: entry {name!r} is not a tensor ({type(value).__name__}); expected a flat "
                "state dict as transformers saves it"
            )
        refs[name] = value
    return refs


def _check_storage_types(refs: Mapping[str, _TensorRef], path: str) -> dict[str, _StorageType]:
    """Storage key -> element type; one key read as two types is a corrupt file."""
    types: dict[str, _StorageType] = {}
    for name, ref in refs.items():
        known = types.setdefault(ref.storage.key, ref.storage.storage_type)
        if known != ref.storage.storage_type:
            raise CheckpointError(
                f"{path}: {name} reads storage {ref.storage.key!r} as "
                f"{ref.storage.storage_type.name}, another tensor as {known.name}"
            )
    return types


def _read_torch_zip(path: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            pickles = [m for m in members if m.endswith("/data.pkl") and m.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: not a torch.save archive (no <name>/data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "<"
            if f"{prefix}byteorder" in members:
                order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                if order not in ("little", "big"):
                    raise CheckpointError(f"{path}: unknown byte order {order!r}")
                byteorder = "<" if order == "little" else ">"
            refs = _state_dict_refs(_unpickle(archive.read(pickles[0]), path), path)
            storages: dict[str, np.ndarray] = {}
            arrays = {}
            _check_storage_types(refs, path)
            for name, ref in refs.items():
                key = ref.storage.key
                if key not in storages:
                    member = f"{prefix}data/{key}"
                    if member not in members:
                        raise CheckpointError(f"{path}: storage {member} of {name} is missing")
                    raw = archive.read(member)
                    storage_type = ref.storage.storage_type
                    if len(raw) < ref.storage.numel * storage_type.itemsize:
                        raise CheckpointError(
                            f"{path}: storage {member} of {name} has {len(raw)} bytes, "
                            f"{ref.storage.numel} elements of {storage_type.name} need more"
                        )
                    storages[key] = np.frombuffer(
                        raw, storage_type.numpy_dtype(byteorder), count=ref.storage.numel
                    )
                arrays[name] = _materialise(ref, storages[key], path, name)
            return arrays
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: corrupt zip archive ({e})") from None
    except (OSError, EOFError, zlib.error, NotImplementedError) as e:  # damaged members
        raise CheckpointError(f"{path}: cannot read the archive ({e})") from None


def _read_torch_legacy(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        stream = io.BytesIO(f.read())
    magic = _unpickle(stream, path)
    if magic != _TORCH_LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a "
                              "legacy torch.save stream)")  # fmt: skip
    protocol = _unpickle(stream, path)
    if protocol != _TORCH_LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy torch.save protocol {protocol!r}")
    sys_info = _unpickle(stream, path)
    little = not isinstance(sys_info, Mapping) or sys_info.get("little_endian", True)
    byteorder = "<" if little else ">"
    refs = _state_dict_refs(_unpickle(stream, path), path)
    keys = _unpickle(stream, path)
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: corrupt legacy checkpoint (no storage key list)")
    types = _check_storage_types(refs, path)
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        header = stream.read(8)
        if len(header) < 8 or key not in types:
            raise CheckpointError(
                f"{path}: truncated or corrupt legacy checkpoint at storage {key!r}"
            )
        (numel,) = struct.unpack(byteorder + "q", header)
        nbytes = numel * types[key].itemsize
        raw = stream.read(nbytes)
        if numel < 0 or len(raw) != nbytes:
            raise CheckpointError(
                f"{path}: truncated legacy checkpoint: storage {key!r} incomplete"
            )
        storages[key] = np.frombuffer(raw, types[key].numpy_dtype(byteorder))
    arrays = {}
    for name, ref in refs.items():
        if ref.storage.key not in storages:
            raise CheckpointError(f"{path}: storage {ref.storage.key!r} of {name} is missing")
        storage = storages[ref.storage.key][ref.storage.offset :][: ref.storage.numel]
        arrays[name] = _materialise(ref, storage, path, name)
    return arrays


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
    """Tensors of a `torch.save`d state dict (zip or legacy format), without torch.

    Only the globals a tensor archive uses are resolved (to inert stand-ins); any other global
    in the pickle (os.system, builtins.eval, ...) raises CheckpointError before anything runs.
    BF16 tensors come back as float32, the rest in their dtype. Tensors that share a storage
    (tied weights) come back as separate, equal arrays.
    """
    if zipfile.is_zipfile(path):
        return _read_torch_zip(path)
    return _read_torch_legacy(path)


# ---------------------------------------------------------------------------------------------
# Checkpoint directories: single files or sharded with an index.


def _read_index(path: str) -> dict[str, str]:
    """weight_map of a sharded checkpoint's index (tensor name -> shard file name)."""
    try:
        with open(path) as f:
            index = json.load(f)
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a checkpoint index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: weight_map is not an object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not _is_plain_file_name(shard):
            raise CheckpointError(
                f"{path}: shard name {shard!r} of {name} is not a plain file name"
            )
    return weight_map


def _is_plain_file_name(name: str) -> bool:
    """True for a file name without directories (shard names come from files we download)."""
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name)) and name not in (".", "..")


@dataclasses.dataclass(frozen=True)
class WeightFiles:
    """Where a checkpoint's tensors are: its directory, weight files and (sharded) index."""

    directory: str
    files: tuple[str, ...]
    index: str | None = None
    weight_map: Mapping[str, str] = dataclasses.field(default_factory=dict)


def find_weight_files(path: str) -> WeightFiles:
    """The weight files of a checkpoint given as a directory, a weight file or an index.

    A directory is searched for model.safetensors, model.safetensors.index.json,
    pytorch_model.bin, pytorch_model.bin.index.json, in that order; an index names its shards.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        directory = path
        found = [n for n in WEIGHT_NAMES if os.path.isfile(os.path.join(path, n))]
        if not found and os.path.isfile(os.path.join(path, "run.json")):
            raise CheckpointError(
                f"{path}: a t5forge training run, not a Hugging Face checkpoint; continue it "
                f"with `t5forge train --resume --output {path}`, or convert it first with "
                f"`t5forge export-hf {path} --output DIR`"
            )
        if not found:
            raise CheckpointError(
                f"{path}: no weights found (looked for {', '.join(WEIGHT_NAMES)})"
            )
        path = os.path.join(path, found[0])
    elif os.path.isfile(path):
        directory = os.path.dirname(path) or "."
        if os.path.basename(path) == CONFIG_NAME:
            raise CheckpointError(
                f"{path}: the architecture, not the weights; give the checkpoint directory "
                f"{directory}"
            )
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if not path.endswith(".json"):
        return WeightFiles(directory, (path,))
    weight_map = _read_index(path)
    files = tuple(os.path.join(directory, shard) for shard in sorted(set(weight_map.values())))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(f"{path}: shard files missing: {missing}")
    return WeightFiles(directory, files, path, weight_map)


def read_weight_file(path: str) -> dict[str, np.ndarray]:
    """Tensors of one weight file: *.safetensors, else a torch.save archive or pickle stream
    (told apart by content), else safetensors under another name."""
    if not path.endswith(".safetensors"):
        with open(path, "rb") as f:
            head = f.read(1)
        # A zip archive, or a pickle stream (protocol >= 2 starts with the PROTO opcode).
        if zipfile.is_zipfile(path) or head == b"\x80":
            return read_torch_bin(path)
    return read_safetensors(path)


def read_hf_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a checkpoint (directory, weight file or index) and the file of each.

    With an index, every tensor it lists must be in the shard it names. A tensor stored in
    several shards must be identical in all of them.
    """
    found = find_weight_files(path)
    tensors: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for file in found.files:
        for name, array in read_weight_file(file).items():
            if name in tensors:
                if not _same_tensor(tensors[name], array):
                    raise CheckpointError(
                        f"{file}: {name} differs from the copy in {sources[name]}"
                    )
                continue
            tensors[name], sources[name] = array, file
    for name, shard in found.weight_map.items():
        if name not in tensors or os.path.basename(sources[name]) != shard:
            raise CheckpointError(f"{found.index}: {name} is listed but not in {shard}")
    return tensors, sources


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# config.json <-> T5Config

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "umt5")
# transformers activation names (ACT2FN keys) -> ours; "gelu" is the exact erf form there.
_ACTIVATIONS_FROM_HF = {
    "relu": "relu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_python_tanh": "gelu",
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "silu": "silu",
    "swish": "silu",
    "linear": "linear",
}
_ACTIVATIONS_TO_HF = {
    "relu": "relu",
    "gelu": "gelu_new",
    "gelu_exact": "gelu",
    "silu": "silu",
    "linear": "linear",
}
_ARCHITECTURES = {
    "t5": "T5ForConditionalGeneration",
    "mt5": "MT5ForConditionalGeneration",
    "umt5": "UMT5ForConditionalGeneration",
}


def _model_type(hf_config: Mapping[str, Any]) -> str:
    model_type = hf_config.get("model_type", "t5")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return model_type


def _written_by_transformers_5(hf_config: Mapping[str, Any]) -> bool:
    """transformers >= 5 forces tie_word_embeddings=true into every T5-family config it saves."""
    version = str(hf_config.get("transformers_version", "0"))
    major = re.match(r"\d+", version)
    return major is not None and int(major.group()) >= 5


def _activations_from_hf(hf_config: Mapping[str, Any], model_type: str) -> tuple[str, ...]:
    """Our MLP activations, resolved the way transformers does: feed_forward_proj ("ACT" or
    "gated-ACT", where "gated-gelu" means the tanh GELU "gelu_new"), then dense_act_fn and
    is_gated_act from the file when present (transformers lets them override)."""
    projection = str(
        hf_config.get("feed_forward_proj", "relu" if model_type == "t5" else "gated-gelu")
    )
    parts = projection.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise CheckpointError(f"feed_forward_proj {projection!r} is not 'ACT' or 'gated-ACT'")
    act = "gelu_new" if projection == "gated-gelu" else parts[-1]
    gated = len(parts) == 2
    if hf_config.get("dense_act_fn") is not None:
        act = str(hf_config["dense_act_fn"])
    if hf_config.get("is_gated_act") is not None:
        gated = bool(hf_config["is_gated_act"])
    if act not in _ACTIVATIONS_FROM_HF:
        raise CheckpointError(
            f"activation {act!r} is not supported "
            f"(supported: {', '.join(sorted(_ACTIVATIONS_FROM_HF))})"
        )
    ours = _ACTIVATIONS_FROM_HF[act]
    return (ours, "linear") if gated else (ours,)


def _scaled_tied_head(hf_config: Mapping[str, Any], model_type: str) -> bool:
    """Whether the config describes a T5 1.0-style head (scaled decoder output @ embedding)."""
    if model_type == "t5":
        if "scale_decoder_outputs" in hf_config:
            return bool(hf_config["scale_decoder_outputs"])
        return bool(hf_config.get("tie_word_embeddings", True))
    if model_type == "mt5" and _written_by_transformers_5(hf_config):
        return False  # transformers 5's MT5 never scales; its tie flag is forced on
    return bool(hf_config.get("tie_word_embeddings", False))


def _hf_ties_missing_head(hf_config: Mapping[str, Any] | None) -> bool:
    """Whether transformers would use the embedding as lm_head when the file has none."""
    if hf_config is None:
        return False
    default = hf_config.get("model_type", "t5") == "t5"
    return bool(hf_config.get("tie_word_embeddings", default))


def config_from_hf(hf_config: Mapping[str, Any], name: str | None = None, **overrides) -> T5Config:
    """The T5Config of a Hugging Face T5 / mT5 / umT5 config.json (a parsed dict).

    Shapes, activations (feed_forward_proj, or dense_act_fn + is_gated_act), relative-position
    buckets and max distance, layer-norm epsilon and dropout come from the file; the head is
    tied and scaled as described in the module docstring. `overrides` replace T5Config fields
    (e.g. dtype="float32"). Raises CheckpointError for unsupported model types or activations.
    """
    model_type = _model_type(hf_config)
    missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
               if hf_config.get(k) is None]  # fmt: skip
    if missing:
        raise CheckpointError(f"missing entries {missing}")
    try:
        config = _config_from_hf_entries(hf_config, model_type, name)
    except (TypeError, ValueError) as e:  # T5Config's own checks raise ValueError
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"unusable value: {e}") from None
    return config.replace(**overrides) if overrides else config


def _config_from_hf_entries(
    hf_config: Mapping[str, Any], model_type: str, name: str | None
) -> T5Config:
    num_layers = int(hf_config["num_layers"])
    decoder_layers = hf_config.get("num_decoder_layers")
    return T5Config(
        name=name or str(hf_config.get("_name_or_path") or f"hf-{model_type}"),
        vocab_size=int(hf_config["vocab_size"]),
        d_model=int(hf_config["d_model"]),
        num_heads=int(hf_config["num_heads"]),
        d_kv=int(hf_config["d_kv"]),
        d_ff=int(hf_config["d_ff"]),
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers if decoder_layers is None else int(decoder_layers),
        activations=_activations_from_hf(hf_config, model_type),
        tie_embeddings=_scaled_tied_head(hf_config, model_type),
        relpos_per_layer=model_type == "umt5",
        relpos_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
        relpos_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
    )


def config_to_hf(
    config: T5Config, base: Mapping[str, Any] | None = None, dtype: str = "float32"
) -> dict[str, Any]:
    """A config.json dict for `config` that transformers loads as the same model.

    `base` (e.g. the config.json a checkpoint was imported with) keeps its other entries
    (token ids, task parameters); the architecture entries are rewritten. model_type is umt5
    for per-layer relative-position tables, else t5 (mt5 when `base` says so and the head is
    untied, since transformers 5's MT5 cannot scale a tied head). Raises CheckpointError for
    what HF T5 cannot express: per-layer heads or d_ff, talking heads, other MLP shapes.
    """
    problems = []
    if config.layer_heads is not None or config.layer_d_ff is not None:
        problems.append("per-layer head counts or d_ff")
    if config.talking_heads:
        problems.append("talking-heads attention")
    acts = config.activations
    gated = len(acts) == 2 and acts[1] == "linear"
    if not (len(acts) == 1 or gated) or acts[0] not in _ACTIVATIONS_TO_HF:
        problems.append(f"MLP activations {acts}")
    if problems:
        raise CheckpointError(
            f"{config.name}: cannot be written as a Hugging Face T5 checkpoint: "
            + ", ".join(problems)
        )
    act = _ACTIVATIONS_TO_HF[acts[0]]
    if gated:
        if act == "gelu":
            act = "gelu_python"  # the same exact GELU; "gated-gelu" would mean the tanh one
        projection = "gated-gelu" if act == "gelu_new" else f"gated-{act}"
    else:
        projection = act
    hf: dict[str, Any] = dict(base or {})
    for stale in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        hf.pop(stale, None)
    if config.relpos_per_layer:
        model_type = "umt5"
    elif hf.get("model_type") == "mt5" and not config.tie_embeddings:
        model_type = "mt5"
    else:
        model_type = "t5"
        hf["scale_decoder_outputs"] = config.tie_embeddings
    if model_type != "t5":
        hf.pop("scale_decoder_outputs", None)
    hf.update(
        architectures=[_ARCHITECTURES[model_type]],
        model_type=model_type,
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relpos_buckets,
        relative_attention_max_distance=config.relpos_max_distance,
        layer_norm_epsilon=config.layer_norm_epsilon,
        dropout_rate=config.dropout_rate,
        feed_forward_proj=projection,
        dense_act_fn=act,  # transformers lets this override feed_forward_proj
        is_gated_act=gated,
        tie_word_embeddings=config.tie_embeddings,
        is_encoder_decoder=True,
        dtype=dtype,
        torch_dtype=dtype,
    )
    for key, value in (("pad_token_id", 0), ("eos_token_id", 1), ("decoder_start_token_id", 0)):
        hf.setdefault(key, value)
    return hf


# ---------------------------------------------------------------------------------------------
# Parameters <-> HF tensors


def hf_tensor_names(config: T5Config) -> dict[str, tuple[str, bool]]:
    """Our parameter path ("encoder/layers_0/attention/query/kernel") -> (HF tensor name,
    whether the tensor is stored transposed relative to ours)."""
    names: dict[str, tuple[str, bool]] = {"token_embedder/embedding": ("shared.weight", False)}

    def attention(ours: str, theirs: str) -> None:
        for our_name, their_name in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            names[f"{ours}/{our_name}/kernel"] = (f"{theirs}.{their_name}.weight", True)

    def mlp(ours: str, theirs: str) -> None:
        inputs = ["wi"] if len(config.activations) == 1 else [
            f"wi_{i}" for i in range(len(config.activations))
        ]  # fmt: skip
        for wi in [*inputs, "wo"]:
            names[f"{ours}/{wi}/kernel"] = (f"{theirs}.{wi}.weight", True)

    def norm(ours: str, theirs: str) -> None:
        names[f"{ours}/scale"] = (f"{theirs}.weight", False)

    def relpos(ours: str, block: str) -> None:
        theirs = f"{block}.layer.0.SelfAttention.relative_attention_bias.weight"
        names[f"{ours}/relpos_bias/rel_embedding"] = (theirs, True)

    for i in range(config.num_encoder_layers):
        ours, theirs = f"encoder/layers_{i}", f"encoder.block.{i}"
        norm(f"{ours}/pre_attention_layer_norm", f"{theirs}.layer.0.layer_norm")
        attention(f"{ours}/attention", f"{theirs}.layer.0.SelfAttention")
        norm(f"{ours}/pre_mlp_layer_norm", f"{theirs}.layer.1.layer_norm")
        mlp(f"{ours}/mlp", f"{theirs}.layer.1.DenseReluDense")
        if config.relpos_per_layer:
            relpos(ours, theirs)
    for i in range(config.num_decoder_layers):
        ours, theirs = f"decoder/layers_{i}", f"decoder.block.{i}"
        norm(f"{ours}/pre_self_attention_layer_norm", f"{theirs}.layer.0.layer_norm")
        attention(f"{ours}/self_attention", f"{theirs}.layer.0.SelfAttention")
        norm(f"{ours}/pre_cross_attention_layer_norm", f"{theirs}.layer.1.layer_norm")
        attention(f"{ours}/encoder_decoder_attention", f"{theirs}.layer.1.EncDecAttention")
        norm(f"{ours}/pre_mlp_layer_norm", f"{theirs}.layer.2.layer_norm")
        mlp(f"{ours}/mlp", f"{theirs}.layer.2.DenseReluDense")
        if config.relpos_per_layer:
            relpos(ours, theirs)
    if not config.relpos_per_layer:
        relpos("encoder", "encoder.block.0")
        relpos("decoder", "decoder.block.0")
    norm("encoder/encoder_norm", "encoder.final_layer_norm")
    norm("decoder/decoder_norm", "decoder.final_layer_norm")
    if not config.tie_embeddings:
        names["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
    return names


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{path}/"))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


_SHAPE_CACHE: dict[T5Config, dict[str, tuple[int, ...]]] = {}


def model_parameter_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """Path -> shape of every parameter of `Transformer(config)`, from an abstract init."""
    if config not in _SHAPE_CACHE:
        import jax
        import jax.numpy as jnp
        from flax.core import meta

        from t5forge.model.network import Transformer

        # Numerics and attention path do not change shapes; fix them so tracing works anywhere.
        model = Transformer(config.replace(dtype="float32", attention_impl="xla", remat="none"))
        tokens = jnp.ones((1, 1), jnp.int32)
        variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
        flat = _flatten(meta.unbox(variables["params"]))
        _SHAPE_CACHE[config] = {path: tuple(leaf.shape) for path, leaf in flat.items()}
    return dict(_SHAPE_CACHE[config])


def _check_model_coverage(config: T5Config, names: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = model_parameter_shapes(config)
    unmapped = sorted(set(shapes) - set(names))
    if unmapped:
        raise CheckpointError(
            f"{config.name}: parameters {unmapped[:5]} have no Hugging Face T5 counterpart"
        )
    stale = sorted(set(names) - set(shapes))
    if stale:  # the name table and the network disagree: a bug here, not in the checkpoint
        raise AssertionError(f"hf_tensor_names gives parameters the model lacks: {stale[:5]}")
    return shapes


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def params_from_hf_tensors(
    tensors: Mapping[str, np.ndarray],
    config: T5Config,
    *,
    sources: Mapping[str, str] | None = None,
    head_from_embedding: bool = False,
    where: str = "checkpoint",
) -> dict[str, Any]:
    """HF tensors -> our float32 parameter tree (the unboxed `init(...)["params"]` layout).

    Every parameter must be filled and every tensor used: embedding aliases
    (encoder/decoder.embed_tokens) and a tied lm_head must equal shared.weight; a missing
    lm_head of an untied model is the embedding only with `head_from_embedding` (the HF tie).
    `sources` (tensor -> file) and `where` name the files in errors.
    """
    sources = sources or {}
    available = dict(tensors)

    def origin(name: str) -> str:
        return sources.get(name, where)

    if "shared.weight" not in available:
        alias = next((a for a in EMBEDDING_ALIASES if a in available), None)
        if alias is not None:
            available["shared.weight"] = available[alias]
    used = set(IGNORED_HF_TENSORS)
    shared = available.get("shared.weight")
    copies = [a for a in EMBEDDING_ALIASES if a in available]
    if config.tie_embeddings and "lm_head.weight" in available:
        copies.append("lm_head.weight")
    for name in copies:
        if shared is not None and not np.array_equal(available[name], shared):
            why = (
                f"{config.name} ties its head to the embedding (T5 1.0 style, decoder output "
                "scaled by d_model**-0.5); an untied head with that scaling has no equivalent here"
                if name == "lm_head.weight"
                else "it should be a copy of the shared embedding"
            )
            raise CheckpointError(f"{origin(name)}: {name} differs from shared.weight: {why}")
        used.add(name)
    if not config.tie_embeddings and "lm_head.weight" not in available:
        if head_from_embedding and shared is not None:
            available["lm_head.weight"] = shared

    names = hf_tensor_names(config)
    shapes = _check_model_coverage(config, names)
    flat, missing = {}, []
    for path, (hf_name, transposed) in names.items():
        if hf_name not in available:
            missing.append(hf_name)
            continue
        array = available[hf_name]
        expected = shapes[path][::-1] if transposed else shapes[path]
        if array.shape != expected:
            raise CheckpointError(
                f"{origin(hf_name)}: {hf_name} has shape {list(array.shape)}; {config.name} "
                f"expects {list(expected)} (for {path})"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointError(f"{origin(hf_name)}: {hf_name} has non-float dtype {array.dtype}")
        flat[path] = np.ascontiguousarray(array.T if transposed else array, dtype=np.float32)
        used.add(hf_name)
    if missing:
        raise CheckpointError(f"{where}: missing tensors for {config.name}: {_listing(missing)}")
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise CheckpointError(
            f"{where}: tensors that {config.name} has no place for: {_listing(unexpected)} "
            f"(files: {_listing(sorted({origin(n) for n in unexpected}), 3)})"
        )
    return _unflatten(flat)


def _plain_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flat path -> numpy array from a params tree: boxed or not, with or without {"params"}."""
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    try:
        from flax.core import meta

        params = meta.unbox(params)
    except ImportError:  # a tree of plain arrays needs no Flax
        pass
    return {path: np.asarray(value) for path, value in _flatten(params).items()}


EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def _cast(array: np.ndarray, dtype: str, name: str) -> np.ndarray:
    if dtype == "float32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "float16":
        out = array.astype(np.float16)
        if not np.isfinite(out).all() and np.isfinite(array).all():
            raise CheckpointError(f"{name}: values beyond the float16 range (use bfloat16)")
        return out
    import ml_dtypes  # JAX's bfloat16 numpy type; rounds to nearest even

    return np.asarray(array, np.float32).astype(ml_dtypes.bfloat16)


def hf_tensors_from_params(
    params: Mapping[str, Any], config: T5Config, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """Our parameter tree -> HF tensor name -> array (in `dtype`), checking the tree first."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {EXPORT_DTYPES}, not {dtype!r}")
    flat = _plain_params(params)
    names = hf_tensor_names(config)
    shapes = _check_model_coverage(config, names)
    missing = sorted(set(shapes) - set(flat))
    unexpected = sorted(set(flat) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"params do not match {config.name}: missing {_listing(missing)}; "
            f"unexpected {_listing(unexpected)}"
        )
    tensors = {}
    for path, (hf_name, transposed) in names.items():
        array = flat[path]
        if array.shape != shapes[path]:
            raise CheckpointError(
                f"params: {path} has shape {list(array.shape)}, {config.name} expects "
                f"{list(shapes[path])}"
            )
        tensors[hf_name] = _cast(array.T if transposed else array, dtype, path)
    return tensors


# ---------------------------------------------------------------------------------------------
# Load / save


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def load_hf_checkpoint(
    path: str, config: T5Config | None = None, *, name: str | None = None, **overrides
) -> tuple[T5Config, dict[str, Any]]:
    """Reads a Hugging Face T5-family checkpoint: (config, float32 numpy params).

    `path`: a checkpoint directory (config.json plus model.safetensors, a safetensors index
    and shards, pytorch_model.bin, or a .bin index and shards), or one weight/index file.
    `config`: use this architecture instead of the one config.json describes. `name` names
    the derived config (default: the directory's name); `overrides` replace config fields
    (e.g. dtype="float32"). Use the result as `model.apply({"params": params}, ...)`.

    Raises CheckpointError naming the file for unreadable files, missing or unexpected
    tensors and shape mismatches.
    """
    found = find_weight_files(path)
    config_path = os.path.join(found.directory, CONFIG_NAME)
    hf_config = _read_json(config_path) if os.path.isfile(config_path) else None
    derived = config is None
    if derived:
        if hf_config is None:
            raise CheckpointError(
                f"{path}: no {CONFIG_NAME} in {os.path.abspath(found.directory)} to give the "
                "architecture (give the checkpoint directory, or config= from Python)"
            )
        name = name or os.path.basename(os.path.abspath(found.directory))
        try:
            config = config_from_hf(hf_config, name=name)
        except CheckpointError as e:
            raise CheckpointError(f"{config_path}: {e}") from None
    tensors, sources = read_hf_tensors(path)
    if derived:
        head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
        if (
            config.tie_embeddings
            and head is not None
            and shared is not None
            and not np.array_equal(head, shared)
            and _written_by_transformers_5(hf_config)
            and _model_type(hf_config) != "t5"  # t5 configs carry scale_decoder_outputs
        ):
            # transformers 5 forced tie_word_embeddings=true into this mT5/umT5 config; the
            # distinct lm_head shows the model is untied (and, as released, unscaled).
            config = config.replace(tie_embeddings=False)
    if overrides:
        config = config.replace(**overrides)
    params = params_from_hf_tensors(
        tensors,
        config,
        sources=sources,
        head_from_embedding=_hf_ties_missing_head(hf_config),
        where=found.index or (found.files[0] if len(found.files) == 1 else found.directory),
    )
    return config, params


def _shard(tensors: Mapping[str, np.ndarray], max_shard_bytes: int | None) -> list[list[str]]:
    """Tensor names per shard, in name order, each shard at most `max_shard_bytes` unless a
    single tensor is larger."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _replace_directory(source: str, target: str) -> None:
    """Renames `source` to `target`, replacing an existing `target` (old one removed last)."""
    if not os.path.exists(target):
        os.rename(source, target)
        return
    trash = tempfile.mkdtemp(
        prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target)
    )
    os.rmdir(trash)
    os.rename(target, trash)
    os.rename(source, target)
    shutil.rmtree(trash, ignore_errors=True)


def _temporary_sibling(directory: str) -> tuple[str, list[str]]:
    """(a new temporary directory beside `directory`, the parents made for it)."""
    parent = os.path.dirname(directory)
    created = missing_dirs(parent)
    os.makedirs(parent, exist_ok=True)
    try:
        sibling = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    except BaseException:
        remove_empty_dirs(created)
        raise
    os.chmod(sibling, 0o755)  # mkdtemp makes it private; the checkpoint it becomes is not
    return sibling, created


def save_hf_checkpoint(
    params: Mapping[str, Any],
    config: T5Config,
    directory: str,
    *,
    dtype: str = "float32",
    max_shard_bytes: int | None = None,
    hf_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes params as a Hugging Face checkpoint directory that transformers loads.

    config.json (see `config_to_hf`; `hf_config` is the base whose other entries are kept)
    and model.safetensors, or model-0000i-of-0000n.safetensors shards plus
    model.safetensors.index.json when the tensors exceed `max_shard_bytes`. Tensors are
    cast to `dtype` (float32, bfloat16 or float16). The head is lm_head.weight for untied
    models; tied models store only shared.weight, which transformers ties to the head.
    Everything is written to a temporary sibling directory, then renamed into place; an
    existing `directory` is an error unless `overwrite`. Returns the directory's path.

    Note: transformers 5.x's UMT5ForConditionalGeneration multiplies the decoder output by
    d_model**-0.5 even for untied models (it forces tie_word_embeddings on), so its umT5 logits
    are scaled relative to the released model's and ours; probabilities' argmax is unchanged.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(
            f"{directory} already exists (--overwrite, or overwrite=True, replaces it)"
        )
    tensors = hf_tensors_from_params(params, config, dtype)
    hf = config_to_hf(config, base=hf_config, dtype=dtype)
    temporary, created = _temporary_sibling(directory)
    try:
        with open(os.path.join(temporary, CONFIG_NAME), "w") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
            f.write("\n")
        shards = _shard(tensors, max_shard_bytes)
        metadata = {"format": "pt"}  # transformers refuses safetensors without it
        if len(shards) == 1:
            write_safetensors(os.path.join(temporary, SAFETENSORS_NAME), tensors, metadata)
        else:
            weight_map = {}
            for i, names in enumerate(shards, start=1):
                filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                shard = {n: tensors[n] for n in names}
                write_safetensors(os.path.join(temporary, filename), shard, metadata)
                weight_map.update(dict.fromkeys(names, filename))
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                "weight_map": dict(sorted(weight_map.items())),
            }
            with open(os.path.join(temporary, SAFETENSORS_INDEX_NAME), "w") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
        _replace_directory(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        remove_empty_dirs(created)  # a failed write leaves no empty parent directories either
        raise
    return directory


# ---------------------------------------------------------------------------------------------
# Download


class _FileNotOnServerError(Exception):
    """HTTP 404 for one file: the caller may try the next candidate."""


ProgressCallback = Callable[[str, int, "int | None"], None]


def _fetch(
    url: str,
    destination: str,
    *,
    token: str | None,
    timeout: float,
    progress: ProgressCallback | None,
) -> None:
    headers = {"User-Agent": "t5forge"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    name = os.path.basename(destination)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            with open(destination, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(name, done, total)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _FileNotOnServerError(url) from None
        hint = " (private or gated repository: pass token=)" if e.code in (401, 403) else ""
        raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
    except urllib.error.URLError as e:
        raise CheckpointError(f"{url}: {e.reason}") from None
    except (TimeoutError, ConnectionError) as e:
        raise CheckpointError(f"{url}: {type(e).__name__}: {e}") from None
    if total is not None and done != total:
        raise CheckpointError(f"{url}: download incomplete ({done} of {total} bytes)")


def is_hub_repo_id(text: str) -> bool:
    """Whether `text` has the shape of a hub repository id ("name" or "owner/name")."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?", text))


def download_hf_checkpoint(
    repo_id: str,
    directory: str,
    revision: str = "main",
    endpoint: str = "https://huggingface.co",
    *,
    token: str | None = None,
    timeout: float = 60.0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> str:
    """Downloads a hub checkpoint's config.json and weights into `directory`.

    Files come from `{endpoint}/{repo_id}/resolve/{revision}/{file}`: config.json, then the
    first of model.safetensors, model.safetensors.index.json (+ its shards),
    pytorch_model.bin, pytorch_model.bin.index.json (+ its shards) that exists (HTTP 404
    moves on to the next). `token` (default: $HF_TOKEN) is sent as a bearer token for gated
    or private repositories. The files go to a temporary sibling directory that is renamed
    to `directory` once everything arrived and the safetensors headers check out, so a
    failure leaves nothing behind. `progress(file_name, bytes_done, total_or_None)` is
    called as data arrives. Returns the directory's path.
    """
    if not is_hub_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repository id (owner/name)")
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(
            f"{directory} already exists (--overwrite, or overwrite=True, replaces it)"
        )
    token = token if token is not None else os.environ.get("HF_TOKEN")
    base_url = f"{endpoint.rstrip('/')}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/"
    where = f"{repo_id}@{revision}"

    temporary, created = _temporary_sibling(directory)
    try:

        def fetch(file_name: str) -> str:
            destination = os.path.join(temporary, file_name)
            _fetch(
                base_url + file_name, destination, token=token, timeout=timeout, progress=progress
            )
            return destination

        try:
            fetch(CONFIG_NAME)
        except _FileNotOnServerError:
            raise CheckpointError(f"{where}: no {CONFIG_NAME} at {base_url}") from None
        _model_type(_read_json(os.path.join(temporary, CONFIG_NAME)))
        for weight_name in WEIGHT_NAMES:
            try:
                fetched = fetch(weight_name)
            except _FileNotOnServerError:
                continue
            files = [fetched]
            if weight_name.endswith(".json"):
                files = []
                for shard in sorted(set(_read_index(fetched).values())):
                    try:
                        files.append(fetch(shard))
                    except _FileNotOnServerError:
                        raise CheckpointError(f"{where}: shard {shard} listed in {weight_name} "
                                              "is missing") from None  # fmt: skip
            for file in files:
                if file.endswith(".safetensors"):
                    read_safetensors_header(file)
            break
        else:
            raise CheckpointError(
                f"{where}: no weights at {base_url} (tried {', '.join(WEIGHT_NAMES)})"
            )
        _replace_directory(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        # e.g. ./hf-checkpoints/ made for a download that failed (offline, no such repo)
        remove_empty_dirs(created)
        raise
    return directory
