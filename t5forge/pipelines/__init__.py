"""seqio Task and Mixture registration over built corpora (issue: objectives)."""
