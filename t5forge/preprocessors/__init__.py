"""seqio-compatible pretraining objectives.

T5's denoising objectives (`denoising`), PEGASUS gap sentences (`pegasus`, with
ROUGE-1 in `rouge`), UL2's mixture of denoisers (`ul2`), and the sentinel ids
t5forge reserves for their special tokens (`reserved_ids`).
"""

from t5forge.preprocessors.denoising import (
    denoise,
    drop_noise_tokens,
    drop_nonnoise_tokens,
    full_lm,
    iid_denoising,
    iid_noise_mask,
    noise_span_to_sentinel,
    noise_span_to_unique_sentinel,
    noise_token_to_sentinel,
    nonnoise_span_to_sentinel,
    nonnoise_span_to_unique_sentinel,
    prefix_lm,
    random_prefix_noise_mask,
    random_spans_helper,
    random_spans_noise_mask,
    reduce_concat_tokens,
    select_random_chunk,
    sentinel_id,
    single_example_denoise,
    single_example_select_random_chunk,
    span_corruption,
    split_tokens,
    split_tokens_to_inputs_length,
    split_tokens_to_random_length,
    split_tokens_to_targets_length,
)
from t5forge.preprocessors.pegasus import (
    STRATEGIES as PEGASUS_STRATEGIES,
)
from t5forge.preprocessors.pegasus import (
    GapSentenceExample,
    GapSentenceGenerator,
    num_gap_sentences,
    pegasus_gap_sentences,
)
from t5forge.preprocessors.reserved_ids import RESERVED_TOKENS, reserved_id
from t5forge.preprocessors.ul2 import (
    UL2_DENOISERS,
    Denoiser,
    DenoiserLengths,
    assign_denoisers,
    ul2_denoisers,
    ul2_lengths,
)

__all__ = [
    "PEGASUS_STRATEGIES",
    "RESERVED_TOKENS",
    "UL2_DENOISERS",
    "Denoiser",
    "DenoiserLengths",
    "GapSentenceExample",
    "GapSentenceGenerator",
    "assign_denoisers",
    "denoise",
    "drop_noise_tokens",
    "drop_nonnoise_tokens",
    "full_lm",
    "iid_denoising",
    "iid_noise_mask",
    "noise_span_to_sentinel",
    "noise_span_to_unique_sentinel",
    "noise_token_to_sentinel",
    "num_gap_sentences",
    "nonnoise_span_to_sentinel",
    "nonnoise_span_to_unique_sentinel",
    "pegasus_gap_sentences",
    "prefix_lm",
    "random_prefix_noise_mask",
    "random_spans_helper",
    "random_spans_noise_mask",
    "reduce_concat_tokens",
    "reserved_id",
    "select_random_chunk",
    "sentinel_id",
    "single_example_denoise",
    "single_example_select_random_chunk",
    "span_corruption",
    "split_tokens",
    "split_tokens_to_inputs_length",
    "split_tokens_to_random_length",
    "split_tokens_to_targets_length",
    "ul2_denoisers",
    "ul2_lengths",
]
