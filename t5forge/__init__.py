"""t5forge: from raw web crawl to a validated T5-family pretraining run."""

__version__ = "0.1.0"
