"""seqio Task and Mixture registration over built corpora (issue: objectives)."""

from t5forge.pipelines.tasks import (
    BYT5_MEAN_NOISE_SPAN_LENGTH,
    OBJECTIVES,
    JsonLinesDataSource,
    check_sequence_length,
    corpus_source,
    register_corpus_tasks,
)

__all__ = [
    "BYT5_MEAN_NOISE_SPAN_LENGTH",
    "OBJECTIVES",
    "JsonLinesDataSource",
    "check_sequence_length",
    "corpus_source",
    "register_corpus_tasks",
]
