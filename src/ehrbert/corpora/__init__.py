"""Corpus readers: files in, plain records (`ehrbert.corpora.records`) out."""
