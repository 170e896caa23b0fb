"""The paper's normalizer: a mention's [CLS] vector -> softmax over *all* concepts of the vocabulary.

It is transformers' BERT sequence classifier with one label per vocabulary concept: the encoder's
[CLS] vector (through BERT's pooler, as in BERT's own fine-tuning) -> dropout -> a linear layer
whose weights start uniform. A saved normalizer is one directory that loads by itself:
`save_pretrained` writes the encoder, the head and the tokenizer, and `config.id2label` holds the
concept IDs, so label i is always the same concept. Inputs are the preprocessed mention queries
(`ehrbert.text.preprocess_mention`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ehrbert.corpora.records import Vocabulary

log = logging.getLogger(__name__)


def build(encoder_path: str | Path, vocabulary: Vocabulary, dropout: float, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh classifier over every concept of `vocabulary` on top of the encoder at `encoder_path`."""
    concept_ids = [c.concept_id for c in vocabulary.concepts]
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(encoder_path),
        num_labels=len(concept_ids),
        id2label=dict(enumerate(concept_ids)),
        label2id={c: i for i, c in enumerate(concept_ids)},
        classifier_dropout=dropout,
        problem_type="single_label_classification",
    )
    head = model.classifier
    bound = 1.0 / math.sqrt(head.in_features)
    torch.nn.init.uniform_(head.weight, -bound, bound)  # the paper's uniform initialization
    torch.nn.init.zeros_(head.bias)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path))
    return model, tokenizer


def load(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    return model.eval(), AutoTokenizer.from_pretrained(str(path))


def concept_ids(model: PreTrainedModel) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def encode(tokenizer: PreTrainedTokenizerBase, queries: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(queries, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


@torch.inference_mode()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: list[str],
    k: int = 5,
    max_length: int = 32,
    batch_size: int = 256,
) -> tuple[list[list[str]], list[list[float]]]:
    """Top-k concept IDs and their softmax probabilities for each query, best first.

    Each distinct query is encoded once, and queries are batched in order of length, so a batch
    pads only to its own longest query.
    """
    model.eval()
    labels = concept_ids(model)
    unique = sorted(set(queries), key=lambda q: (len(q), q))
    answers: dict[str, tuple[list[str], list[float]]] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        batch = encode(tokenizer, chunk, max_length).to(model.device)
        probabilities = model(**batch).logits.float().softmax(-1)  # (B, concepts)
        top = probabilities.topk(min(k, probabilities.shape[-1]), dim=-1)
        for query, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
            answers[query] = ([labels[j] for j in indices], values)
    return [answers[q][0] for q in queries], [answers[q][1] for q in queries]
