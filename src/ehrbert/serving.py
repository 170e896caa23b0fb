"""A trained normalizer as an MLflow pyfunc model: mentions (or raw text) in, concept ID + name + score out.

The pyfunc is thin: `NormalizerModel.load_context` loads the saved folder, the paper's classifier with
`ehrbert.models.classifier.load` or the beyond-the-paper normalizer with `ehrbert.models.hybrid.HybridNormalizer.load`,
and the concept names from `concepts.tsv`; `predict` delegates to `normalize_mentions` (a ``mention``
column, optional ``context``) or `annotate_texts` (a ``text`` column: the hybrid normalizer's detector finds
the mentions, each returned with its row and character offsets), which the tests also call in process.
Several concepts (a composite mention) come as ``concept_ids`` joined by ``|``; no concept (the hybrid's
calibrated threshold) as empty ``concept_id``. What is packaged (`ehrbert.registry.log_normalizer`):

- artifact ``normalizer``: the stage's `model/` folder (the classifier: weights, tokenizer, config whose
  ``id2label`` holds the concept IDs; the hybrid: retriever, name index, classifier, detector, the settings
  of every variant);
- artifact ``concepts``: ``concepts.tsv`` (concept_id, name), taken from the task vocabulary, since the
  model folder knows only IDs;
- ``code_paths``: the `ehrbert` package (the model needs `normalizer` and `text`), nothing else;
- model config: the query length the model was trained with (`max_length`), the inference batch
  size (`predict_batch_size`) and, for a hybrid folder, the `variant` it answers as;
- a signature (``mention``, ``context`` and ``text``, str, each optional; out ``concept_id``,
  ``concept_ids``, ``concept_name``, ``score``, and for text ``row``, ``start``, ``end``, ``mention``) and
  an input example. Loading reads local files only: no network.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from ehrbert.models import classifier
from ehrbert.models.hybrid import HybridNormalizer, is_hybrid
from ehrbert.text import find_abbreviations, preprocess_mention

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent  # the `ehrbert` package: the pyfunc's only code path
CONCEPTS_FILE = "concepts.tsv"
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "mention", required=False),
            ColSpec("string", "context", required=False),
            ColSpec("string", "text", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("long", "row", required=False),
            ColSpec("long", "start", required=False),
            ColSpec("long", "end", required=False),
            ColSpec("string", "mention", required=False),
            ColSpec("string", "concept_id"),
            ColSpec("string", "concept_ids"),
            ColSpec("string", "concept_name"),
            ColSpec("double", "score"),
        ]
    ),
)
INPUT_EXAMPLE = pd.DataFrame(
    {
        "mention": ["APC", "breast cancer"],
        "context": ["Germline mutations of adenomatous polyposis coli (APC) cause familial polyposis.", ""],
    }
)
REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "pandas",
    "numpy",
    "pyab3p",
    "scikit-learn",
)  # what the model imports at load time


def _bad_input(message: str) -> MlflowException:
    # MlflowException with INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message
    return MlflowException.invalid_parameter_value(message)


def validate_input(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The mention texts and their contexts ("" where none), or an error that names the bad field.

    `mention` is required and must be a string in every row; `context` is optional, and a missing
    value (None/NaN) in it means "no context".
    """
    if not isinstance(frame, pd.DataFrame):
        raise _bad_input(f"input must be a table with a 'mention' column, got {type(frame).__name__}")
    if "mention" not in frame.columns:
        raise _bad_input(
            f"input has no 'mention' column (str, the mention text; or 'text', raw text, for a model "
            f"with a detector); columns: {list(frame.columns)}"
        )
    mentions = frame["mention"].tolist()
    for row, value in enumerate(mentions):
        if _missing(value):
            raise _bad_input(f"'mention' must be a string in every row; row {row} has no value")
        if not isinstance(value, str):
            raise _bad_input(f"'mention' must be a string in every row; row {row} has {type(value).__name__} {value!r}")
    contexts = frame["context"].tolist() if "context" in frame.columns else [""] * len(mentions)
    for row, value in enumerate(contexts):
        if _missing(value):
            contexts[row] = ""
        elif not isinstance(value, str):
            raise _bad_input(
                f"'context' must be a string (or missing) in every row; row {row} has {type(value).__name__} {value!r}"
            )
    return mentions, contexts


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None, or NaN as pandas fills it


def mention_queries(frame: pd.DataFrame) -> list[str]:
    """What the model sees of each row: the mention preprocessed as in training (`preprocess_mention`),
    with the abbreviations Ab3P finds in the row's `context` (each distinct context is searched once)."""
    mentions, contexts = validate_input(frame)
    abbreviations = {text: find_abbreviations(text) for text in dict.fromkeys(contexts) if text}
    return [preprocess_mention(mention, abbreviations.get(context, {})) for mention, context in zip(mentions, contexts)]


def normalize_mentions(
    model,
    tokenizer,
    concept_names: Mapping[str, str],
    frame: pd.DataFrame,
    max_length: int = 32,
    batch_size: int = 256,
) -> pd.DataFrame:
    """One row per input row: the answer's concept ID(s), name(s) and score.

    `model` is the paper's classifier (score: softmax probability; batching is `classifier.predict`'s,
    queries sorted by length, `batch_size` at a time) or a `HybridNormalizer` (`tokenizer` unused;
    score: cosine + weighted probability).
    """
    queries = mention_queries(frame)
    if isinstance(model, HybridNormalizer):
        answers = model.predict(queries) if queries else []
        return answers_frame(concept_names, [a.concept_ids for a in answers], [a.score for a in answers])
    ranked, scores = classifier.predict(model, tokenizer, queries, k=1, max_length=max_length, batch_size=batch_size)
    return answers_frame(concept_names, [tuple(r[:1]) for r in ranked], [s[0] for s in scores])


def answers_frame(
    concept_names: Mapping[str, str], concept_ids: list[tuple[str, ...]], scores: list[float]
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "concept_id": pd.Series([ids[0] if ids else "" for ids in concept_ids], dtype=object),
            "concept_ids": pd.Series(["|".join(ids) for ids in concept_ids], dtype=object),
            "concept_name": pd.Series(
                [" | ".join(concept_names.get(c, "") for c in ids) for ids in concept_ids], dtype=object
            ),
            "score": pd.Series(scores, dtype="float64"),
        }
    )


def validate_texts(frame: pd.DataFrame) -> list[str]:
    """The `text` column, or an error that names the bad row."""
    texts = frame["text"].tolist()
    for row, value in enumerate(texts):
        if _missing(value) or not isinstance(value, str):
            raise _bad_input(
                f"'text' must be a string in every row; row {row} has {'no value' if _missing(value) else repr(value)}"
            )
    return texts


def annotate_texts(model, concept_names: Mapping[str, str], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per mention found in the input texts: input row, character offsets, mention and its answer."""
    if not isinstance(model, HybridNormalizer) or model.detector is None:
        raise _bad_input(
            "this model normalizes mentions only: send a 'mention' column (and optional 'context'), not 'text'"
        )
    found = [(row, *hit) for row, hits in enumerate(model.annotate(validate_texts(frame))) for hit in hits]
    answers = answers_frame(concept_names, [a.concept_ids for *_, a in found], [a.score for *_, a in found])
    places = pd.DataFrame(
        {
            "row": pd.Series([f[0] for f in found], dtype="int64"),
            "start": pd.Series([f[1] for f in found], dtype="int64"),
            "end": pd.Series([f[2] for f in found], dtype="int64"),
            "mention": pd.Series([f[3] for f in found], dtype=object),
        }
    )
    return pd.concat([places, answers], axis=1)


def predict_frame(
    model, tokenizer, concept_names: Mapping[str, str], frame, max_length: int = 32, batch_size: int = 256
) -> pd.DataFrame:
    """What the served model answers: `annotate_texts` for a `text` column, else `normalize_mentions`."""
    if isinstance(frame, pd.DataFrame) and "text" in frame.columns:
        if "mention" in frame.columns:
            raise _bad_input("send either 'mention' (with optional 'context') or 'text' columns, not both")
        return annotate_texts(model, concept_names, frame)
    return normalize_mentions(model, tokenizer, concept_names, frame, max_length, batch_size)


def write_concepts(concept_names: Mapping[str, str], path: Path) -> None:
    pd.DataFrame({"concept_id": list(concept_names), "name": list(concept_names.values())}).to_csv(
        path, sep="\t", index=False
    )


def read_concepts(path: str | Path) -> dict[str, str]:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return dict(zip(table["concept_id"], table["name"]))


class NormalizerModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a saved normalizer folder plus its concept names."""

    def load_context(self, context) -> None:
        folder = context.artifacts["normalizer"]
        config = context.model_config or {}
        if is_hybrid(folder):
            self.model, self.tokenizer = HybridNormalizer.load(folder, config.get("variant") or None), None
        else:
            self.model, self.tokenizer = classifier.load(folder)
        self.concept_names = read_concepts(context.artifacts["concepts"])
        self.max_length = int(config.get("max_length", 32))
        self.batch_size = int(config.get("predict_batch_size", 256))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_frame(
            self.model, self.tokenizer, self.concept_names, model_input, self.max_length, self.batch_size
        )
