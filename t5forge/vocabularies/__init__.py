"""SentencePiece and byte vocabularies with T5 sentinel ids (issue: vocabularies)."""
