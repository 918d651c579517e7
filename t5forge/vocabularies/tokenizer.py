"""Vocabularies from a short spec, with T5's sentinel layout.

A spec names a vocabulary:

* ``byte`` — ByT5's bytes (seqio `ByteVocabulary`, no extra ids, as ByT5
  was trained); ``byte:N`` adds N extra ids.
* ``PATH.model`` — a SentencePiece model plus extra ids: the number recorded
  in ``PATH.settings.json`` (written by `t5forge train-spm`), 0 if the model
  already holds ``<extra_id_i>`` pieces (like cc_all.32000.100extra), else 100
  (T5's default). ``PATH.model:N`` sets N explicitly.

`get_vocabulary` builds the seqio vocabulary (needs TensorFlow). `Tokenizer`
gives the same ids and decodings with SentencePiece or plain bytes alone, for
machines and worker processes without TensorFlow: it adds the extra ids to the
model exactly as seqio's `SentencePieceVocabulary` does (USER_DEFINED pieces
``▁<extra_id_i>`` appended in reverse, so ``<extra_id_0>`` is the last id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_EXTRA_IDS = 100
BYTE_OFFSET = 3  # ids 0, 1, 2 are pad, eos, unk; byte b is id b + 3
# UTF-8 never contains bytes 0xF5-0xFF, so their ids (248-258) are safe
# sentinels in a byte vocabulary without extra ids.
UNUSED_UTF8_BYTES = 11


class VocabularyError(ValueError):
    """A vocabulary spec or model file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class VocabSpec:
    """A parsed vocabulary spec: `kind` is "byte" or "sentencepiece"."""

    kind: str
    extra_ids: int
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "byte":
            return "byte" if not self.extra_ids else f"byte:{self.extra_ids}"
        return f"{self.path}:{self.extra_ids}"


def _has_baked_extra_ids(model_bytes: bytes) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
    return any(p.piece in ("<extra_id_0>", "▁<extra_id_0>") for p in model.pieces)


def parse_vocab_spec(spec: str) -> VocabSpec:
    """Parses "byte", "byte:N", "PATH" or "PATH:N" (errors name the spec)."""
    if spec == "byte" or spec.startswith("byte:"):
        extra = spec.partition(":")[2] or "0"
        if not extra.isdigit():
            raise VocabularyError(f"--vocab {spec}: extra ids must be a number")
        return VocabSpec("byte", int(extra))
    path, sep, extra = spec.rpartition(":")
    if sep and not extra.isdigit() and os.path.isfile(path) and not os.path.isfile(spec):
        raise VocabularyError(f"--vocab {spec}: {extra!r} after ':' must be a number of extra ids")
    if not sep or not extra.isdigit():
        path, extra = spec, None
    if not os.path.isfile(path):
        raise VocabularyError(f"--vocab {spec}: no such SentencePiece model file {path}")
    if extra is not None:
        return VocabSpec("sentencepiece", int(extra), path)
    settings = os.path.splitext(path)[0] + ".settings.json"
    if os.path.exists(settings):
        try:
            with open(settings, encoding="utf-8") as f:
                return VocabSpec("sentencepiece", int(json.load(f)["extra_ids"]), path)
        except (ValueError, KeyError, TypeError) as e:
            raise VocabularyError(f"--vocab {spec}: unreadable {settings} ({e})") from e
    with open(path, "rb") as f:
        model_bytes = f.read()
    try:
        baked = _has_baked_extra_ids(model_bytes)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise VocabularyError(f"--vocab {spec}: {path} is not a SentencePiece model") from e
    return VocabSpec("sentencepiece", 0 if baked else DEFAULT_EXTRA_IDS, path)


def get_vocabulary(spec: str | VocabSpec):
    """The seqio vocabulary for a spec (imports seqio, hence TensorFlow)."""
    import seqio

    if isinstance(spec, str):
        spec = parse_vocab_spec(spec)
    if spec.kind == "byte":
        return seqio.ByteVocabulary(extra_ids=spec.extra_ids)
    return seqio.SentencePieceVocabulary(spec.path, extra_ids=spec.extra_ids)


class Tokenizer:
    """seqio-identical encoding and decoding without TensorFlow."""

    def __init__(self, spec: str | VocabSpec):
        self.spec = parse_vocab_spec(spec) if isinstance(spec, str) else spec
        self.extra_ids = self.spec.extra_ids
        if self.spec.kind == "byte":
            self._sp = None
            self.vocab_size = 256 + BYTE_OFFSET + self.extra_ids
            self.fingerprint = hashlib.sha256(f"byte:{self.extra_ids}".encode()).hexdigest()
        else:
            self._sp, model_bytes = self._load_sentencepiece()
            self.vocab_size = self._sp.GetPieceSize()
            self.fingerprint = hashlib.sha256(model_bytes).hexdigest()
        self.pad_id, self.eos_id, self.unk_id = PAD_ID, EOS_ID, UNK_ID

    def _load_sentencepiece(self):
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        path = self.spec.path
        try:
            with open(path, "rb") as f:
                model = sentencepiece_model_pb2.ModelProto.FromString(f.read())
        except Exception as e:  # noqa: BLE001
            raise VocabularyError(
                f"--vocab {self.spec}: {path} is not a SentencePiece model"
            ) from e
        for i in reversed(range(self.extra_ids)):
            model.pieces.add(
                piece=f"▁<extra_id_{i}>",
                score=0.0,
                type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED,
            )
        model_bytes = model.SerializeToString()
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_bytes)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError
            raise VocabularyError(
                f"--vocab {self.spec}: {path} is not a SentencePiece model"
            ) from e
        if (processor.pad_id(), processor.eos_id(), processor.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
            raise VocabularyError(
                f"--vocab {self.spec}: ids pad={processor.pad_id()} eos={processor.eos_id()} "
                f"unk={processor.unk_id()}, but T5 needs pad=0 eos=1 unk=2"
            )
        return processor, model_bytes

    @property
    def _base_size(self) -> int:
        return self.vocab_size if self._sp is not None else 256 + BYTE_OFFSET

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS (seqio's `encode`)."""
        if self._sp is None:
            return [b + BYTE_OFFSET for b in text.encode("utf-8")]
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list:
        """Token ids of many texts; SentencePiece spreads them over `num_threads` threads."""
        if self._sp is None:
            import numpy as np

            return [
                np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET
                for t in texts
            ]
        return self._sp.Encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """seqio's `decode`: up to and including the first EOS; unknown ids become UNK."""
        ids = [int(i) for i in ids]
        ids = [UNK_ID if i >= self._base_size else i for i in ids]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID) + 1]
        if self._sp is None:
            data = bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < 256 + BYTE_OFFSET)
            return data.decode("utf-8", errors="ignore")
        return self._sp.DecodeIds(ids)

    def id_to_piece(self, i: int) -> str:
        """The piece of an id (bytes as \\xNN, specials by name)."""
        if self._sp is not None:
            return self._sp.IdToPiece(int(i))
        if i < BYTE_OFFSET:
            return ("<pad>", "</s>", "<unk>")[i]
        if i < 256 + BYTE_OFFSET:
            b = i - BYTE_OFFSET
            return chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"
        return f"<extra:{i}>"


def sentinel_id(vocabulary, i: int = 0) -> int:
    """The id of the i-th sentinel (`<extra_id_i>`): vocab_size - 1 - i, as T5 numbers them."""
    return vocabulary.vocab_size - 1 - i


def num_sentinels(vocabulary) -> int:
    """How many sentinel ids the vocabulary really has.

    SentencePiece: the consecutive ``<extra_id_i>`` pieces counted down from the
    top id. Bytes: the extra ids plus the 11 byte ids that UTF-8 never uses
    (ByT5's sentinels 258, 257, ... are those). Works on seqio vocabularies
    and on `Tokenizer`.
    """
    processor = getattr(vocabulary, "_sp", None) or getattr(vocabulary, "tokenizer", None)
    if processor is None:  # a byte vocabulary
        return vocabulary.extra_ids + UNUSED_UTF8_BYTES
    count = 0
    while count < vocabulary.vocab_size:
        piece = processor.IdToPiece(vocabulary.vocab_size - 1 - count)
        if piece not in (f"▁<extra_id_{count}>", f"<extra_id_{count}>"):
            break
        count += 1
    return count
