"""Vocabularies: SentencePiece and ByT5 bytes with T5's sentinel layout.

`Tokenizer` works with SentencePiece/numpy alone; `get_vocabulary` returns the
seqio vocabulary (TensorFlow). Both come from the same spec ("byte",
"PATH.model", "PATH.model:N").
"""

from t5forge.vocabularies.tokenizer import (
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    VocabSpec,
    VocabularyError,
    get_vocabulary,
    num_sentinels,
    parse_vocab_spec,
    sentinel_id,
)

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "Tokenizer",
    "VocabSpec",
    "VocabularyError",
    "get_vocabulary",
    "num_sentinels",
    "parse_vocab_spec",
    "sentinel_id",
]
