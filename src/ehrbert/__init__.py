"""EhrBERT: BERT further pretrained on clinical notes, fine-tuned as a [CLS] entity normalizer."""

__version__ = "0.1.0"
