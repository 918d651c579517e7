"""Vocabulary ids that t5forge reserves for its own special tokens.

PEGASUS numbers its mask tokens 2 and 3, and UL2's mode tokens are strings
("[NLU]", "[S2S]", "[NLG]") that the tokenizer would split into pieces. In T5's
id layout 2 is UNK and there are no free low ids, so t5forge takes these
tokens from the vocabulary's sentinels (extra ids), from the end that span
corruption reaches last: sentinels count down from `vocab_size - 1`
(`<extra_id_0>`), so the lowest sentinel ids are the last ones a span
denoiser would use. With E sentinels (`t5forge.vocabularies.num_sentinels`):

    id vocab_size - E + 0  (<extra_id_{E-1}>)  [NLU]           UL2 R-denoisers
    id vocab_size - E + 1  (<extra_id_{E-2}>)  [S2S]           UL2 S-denoiser
    id vocab_size - E + 2  (<extra_id_{E-3}>)  [NLG]           UL2 X-denoisers
    id vocab_size - E + 3  (<extra_id_{E-4}>)  <mask_sentence> PEGASUS MASK1 (gap sentence)
    id vocab_size - E + 4  (<extra_id_{E-5}>)  <mask_word>     PEGASUS MASK2 (MLM)

For T5's 32000 + 100 extra ids that is 32000..32004; for ByT5's byte
vocabulary (no extra ids; E = 11, the bytes UTF-8 never uses) it is 248..252.
UL2's and PEGASUS's own noise spans never use them: UL2's span denoisers get
E - 5 sentinels (`span_sentinel_budget`). T5's objectives (span corruption,
iid, prefix-LM) keep t5's sentinels, since their output must equal t5's, and
reach these ids after E - 5 spans: never at T5's 512/114 (at most 26 of the
100), but ByT5 at 1024/189 makes up to 9 spans of the 11 byte sentinels,
258..250, so 250..252 mean both a span and [NLG] / <mask_sentence> /
<mask_word>. That is harmless in a task alone; for a mixture of ByT5 span
corruption with UL2 or PEGASUS give the byte vocabulary 9 extra ids
(`byte:9`: sentinels 267..259, reserved ids still 248..252). `span_corruption`
logs it once when it happens.
"""

from __future__ import annotations

from typing import Any

RESERVED_TOKENS = ("[NLU]", "[S2S]", "[NLG]", "<mask_sentence>", "<mask_word>")


def num_vocabulary_sentinels(vocabulary: Any) -> int:
    """Sentinel ids the vocabulary really has (`t5forge.vocabularies.num_sentinels`).

    Vocabularies it cannot inspect count their `extra_ids`.
    """
    from t5forge.vocabularies import num_sentinels

    try:
        return num_sentinels(vocabulary)
    except AttributeError:
        return int(getattr(vocabulary, "extra_ids", 0) or 0)


def reserved_id(vocabulary: Any, token: str) -> int:
    """The id t5forge uses for `token` (one of `RESERVED_TOKENS`) in `vocabulary`.

    Raises:
      ValueError: unknown token, or a vocabulary with fewer sentinels than
        there are reserved tokens.
    """
    if token not in RESERVED_TOKENS:
        raise ValueError(f"{token!r} is not a reserved token; choose one of {RESERVED_TOKENS}")
    sentinels = num_vocabulary_sentinels(vocabulary)
    if sentinels < len(RESERVED_TOKENS):
        raise ValueError(
            f"the vocabulary (size {vocabulary.vocab_size}) has {sentinels} sentinel ids, but "
            f"t5forge takes {len(RESERVED_TOKENS)} of them for {', '.join(RESERVED_TOKENS)}; "
            "use a vocabulary with more extra ids (spec PATH.model:N)"
        )
    return int(vocabulary.vocab_size) - sentinels + RESERVED_TOKENS.index(token)


def span_sentinel_budget(vocabulary: Any) -> int:
    """Sentinels left for noise spans once the reserved tokens are taken."""
    return max(num_vocabulary_sentinels(vocabulary) - len(RESERVED_TOKENS), 0)
