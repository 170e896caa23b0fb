"""The paper's normalizer: a mention's [CLS] vector -> softmax over *all* concepts of the vocabulary.

It is transformers' BERT sequence classifier with one label per vocabulary concept: the encoder's
[CLS] vector (through BERT's pooler, as in BERT's own fine-tuning) -> dropout -> a linear layer.

The head starts in one of two ways (`HEAD_INITS`):
- `uniform`, the paper's: U(-1/sqrt(d), 1/sqrt(d)), zero bias. A concept that no training mention
  names only ever gets pushed down, so the classifier cannot answer it (0 % on such mentions).
- `names`: weight imprinting (Qi, Brown and Lowe, "Low-shot learning with imprinted weights",
  CVPR 2018). Concept i's row is the vector the head itself sees for the concept's preferred name
  (pooled [CLS], before dropout), centred on the mean name vector, made unit length and scaled so
  that a logit is about `scale` x cosine; the bias subtracts the mean from the mention's vector
  too. Centring removes the direction that all names share, which dominates the pooler output of
  a model pretrained with NSP (biomedical stand-in, BC5CDR, seed 1: test F1 66.5 not centred, 78.2
  centred; the general base: dev acc@1 0.87 not centred, 0.85 centred). Before any training the
  classifier already answers by nearest preferred name; training then moves the rows and the encoder. Same model,
  same softmax over all concepts, only the starting point differs; it costs one pass over the preferred names.

A saved normalizer is one directory that loads by itself:
`save_pretrained` writes the encoder, the head and the tokenizer, and `config.id2label` holds the
concept IDs, so label i is always the same concept. Inputs are the preprocessed mention queries
(`ehrbert.text.preprocess_mention`). The stage that trains it is `ehrbert.finetune`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ehrbert.corpora.records import Vocabulary
from ehrbert.models.encoding import encode, encode_by_length
from ehrbert.text import normalize

log = logging.getLogger(__name__)

HEAD_INITS = ("uniform", "names")


def build(
    encoder_path: str | Path,
    vocabulary: Vocabulary,
    dropout: float,
    seed: int,
    head_init: str = "uniform",
    head_scale: float = 20.0,
    max_length: int = 32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh classifier over every concept of `vocabulary` on top of the encoder at `encoder_path`.

    `head_init` is one of HEAD_INITS; `head_scale` and `max_length` matter only for `names`.
    """
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init {head_init!r}: expected one of {', '.join(HEAD_INITS)}")
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
    if head_init == "names":
        imprint_names(model, tokenizer, vocabulary, head_scale, max_length)
    return model, tokenizer


def imprint_names(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, vocabulary: Vocabulary, scale: float, max_length: int
) -> None:
    """Head row i = the centred pooled vector of concept i's preferred name, unit length x scale / mean norm;
    bias i = -(row i . mean), so that logit i = row i . (mention vector - mean)."""
    names = [normalize(concept.name) for concept in vocabulary.concepts]
    vectors = pooled_vectors(model, tokenizer, names, max_length)
    mean = vectors.mean(dim=0)
    centred = vectors - mean
    norms = centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    weight = centred / norms * (scale / norms.mean())
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(-(weight @ mean))
    log.info("head imprinted from %d preferred names", len(names))


def pooled_vectors(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, batch_size: int = 512
) -> torch.Tensor:
    """(len(texts), hidden) float32: the vector the head sees for each text (pooled [CLS], no dropout)."""
    return encode_by_length(
        model, tokenizer, texts, lambda m, batch: m.base_model(**batch).pooler_output, max_length, batch_size
    )


def load(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    return model.eval(), AutoTokenizer.from_pretrained(str(path))


MODEL_DIR = "model"  # in a fine-tuning output folder: the saved normalizer
TRAINING_FILE = "training.json"  # in the saved normalizer: the fine-tuning config it was trained with


def training_record(folder: str | Path) -> dict:
    """The training record (TRAINING_FILE: the fine-tuning config, model, corpus and seed) of a fine-tuning output
    folder (the stage's DVC out)."""
    path = Path(folder) / MODEL_DIR / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not a fine-tuned normalizer (run the finetune stage with `dvc repro`, or `dvc pull` it)"
        )
    return json.loads(path.read_text())


def load_finetuned(folder: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """(model, tokenizer, training record) from a fine-tuning output folder (the stage's DVC out)."""
    record = training_record(folder)
    model, tokenizer = load(Path(folder) / MODEL_DIR)
    return model, tokenizer, record


def concept_ids(model: PreTrainedModel) -> list[str]:
    id2label = model.config.id2label  # read once: every attribute read of a transformers config is a slow lookup
    return [id2label[i] for i in range(len(id2label))]


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
    if model.training:  # walking the modules costs a few ms: only when there is a mode to change
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
