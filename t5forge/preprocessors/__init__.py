"""seqio-compatible pretraining objectives (issue: objectives)."""
