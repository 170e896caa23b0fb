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

import functools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from ehrbert.microbatch import MicroBatcher
from ehrbert.models.hybrid import HybridNormalizer, is_hybrid
from ehrbert.text import find_abbreviations, normalize, preprocess_mention

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
    "onnxruntime",
    "faiss-cpu",
    "tokenizers",
)  # what the model imports at load time


def _bad_input(message: str) -> MlflowException:
    # MlflowException with INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message
    return MlflowException.invalid_parameter_value(message)


# The input contract (docs/serving.md, "Input limits"). Over a limit, or a value that is not text, the request gets
# 400 with a message naming the field and the rows; nothing is truncated or skipped silently.
MAX_ROWS = 10_000  # rows per request: a batch caller splits larger tables
MAX_MENTION_CHARS = 1_000  # a mention is a phrase; the model reads its first 24 word pieces anyway
MAX_CONTEXT_CHARS = 100_000  # a context or a raw text is a note: the longest MTSamples note has 18,425
MAX_TEXT_CHARS = 100_000
SHOWN_ROWS = 5  # rows named in one message

# Micro-batching of concurrent requests (`ehrbert.microbatch`), on unless EHRBERT_MICROBATCH=0; the window a batch
# waits for company after its first request, in ms: EHRBERT_BATCH_WAIT_MS, else the model config's batch_wait_ms
# (default 0: no added wait, a batch is what queued while the previous one ran).
MICROBATCH_ENV, BATCH_WAIT_ENV = "EHRBERT_MICROBATCH", "EHRBERT_BATCH_WAIT_MS"

# How a hybrid version runs (docs/serving.md, "Speed"): "onnx", its fast form (`ehrbert.models.fast`, packaged with
# every hybrid version), or "torch"; and the fast form's options. Each is the model config's value (set when the
# version was registered) unless its environment variable says otherwise.
RUNTIMES = ("onnx", "torch")
RUNTIME_ENV = "EHRBERT_RUNTIME"
FAST_OPTION_ENVS = {
    "weights": "EHRBERT_WEIGHTS",
    "index": "EHRBERT_INDEX",
    "threads": "EHRBERT_THREADS",
    "ef_search": "EHRBERT_EF_SEARCH",
}


def fast_options(config: Mapping, environ: Mapping[str, str]):
    """The fast form's `FastOptions`: each from its environment variable, else the model config, else the default."""
    from ehrbert.models.fast import FastOptions

    values = {}
    for field, variable in FAST_OPTION_ENVS.items():
        value = environ.get(variable) or config.get(field)
        if value not in (None, ""):
            default = getattr(FastOptions, field)
            try:
                values[field] = type(default)(value)
            except ValueError as error:
                raise ValueError(
                    f"{variable} or model config {field!r}: {value!r} is not {type(default).__name__}"
                ) from error
    return FastOptions(**values)


def _rows(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
    return (
        f"row {shown}"
        if len(rows) == 1
        else f"rows {shown}" + (f" (and {len(rows) - SHOWN_ROWS} more)" if len(rows) > SHOWN_ROWS else "")
    )


def _strings(frame: pd.DataFrame, column: str, limit: int, optional: bool = False) -> list[str]:
    """The column's values as strings, or a 400 naming the rows that are missing, not strings, not valid Unicode
    (a lone surrogate) or longer than `limit` characters. Missing values of an optional column become ""."""
    values = frame[column].tolist()
    missing = [row for row, value in enumerate(values) if _missing(value)]
    if missing and not optional:
        raise _bad_input(f"'{column}' must be a string in every row; {_rows(missing)} has no value")
    values = ["" if _missing(value) else value for value in values]
    wrong = [row for row, value in enumerate(values) if not isinstance(value, str)]
    if wrong:
        value, more = values[wrong[0]], f" (also {_rows(wrong[1:])})" if len(wrong) > 1 else ""
        raise _bad_input(
            f"'{column}' must be a string{' (or missing)' if optional else ''} in every row; "
            f"row {wrong[0]} has {type(value).__name__} {repr(value)[:80]}{more}"
        )
    invalid = [row for row, value in enumerate(values) if not _is_unicode(value)]
    if invalid:
        raise _bad_input(f"'{column}' must be valid Unicode text; {_rows(invalid)} holds a lone surrogate")
    long = [row for row, value in enumerate(values) if len(value) > limit]
    if long:
        raise _bad_input(f"'{column}' is limited to {limit:,} characters; {_rows(long)} is longer")
    return values


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None, or NaN as pandas fills it


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_table(frame, needed: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise _bad_input(f"input must be a table with a '{needed}' column, got {type(frame).__name__}")
    if len(frame) > MAX_ROWS:
        raise _bad_input(f"a request holds at most {MAX_ROWS:,} rows; this one has {len(frame):,}: split the table")


def validate_input(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The mention texts and their contexts ("" where none), or a 400 that names the bad field and rows.

    `mention` is required: a string in every row, at most MAX_MENTION_CHARS characters, with something left after
    normalization (a letter or digit). A blank or punctuation-only mention is refused, not answered: any answer,
    even "no concept", would be stored by the caller as the normalization of something that never was a mention.
    `context` is optional (at most MAX_CONTEXT_CHARS characters); a missing value (None/NaN) means "no context".
    """
    _check_table(frame, "mention")
    if "mention" not in frame.columns:
        raise _bad_input(
            f"input has no 'mention' column (str, the mention text; or 'text', raw text, for a model "
            f"with a detector); columns: {[str(c)[:80] for c in frame.columns][:20]}"
        )
    mentions = _strings(frame, "mention", MAX_MENTION_CHARS)
    blank = [row for row, mention in enumerate(mentions) if not normalize(mention)]  # nothing left to read
    if blank:
        raise _bad_input(
            f"'mention' must contain a letter or digit; {_rows(blank)} is blank or punctuation only "
            "(leave such rows out)"
        )
    contexts = (
        _strings(frame, "context", MAX_CONTEXT_CHARS, optional=True)
        if "context" in frame.columns
        else [""] * len(mentions)
    )
    return mentions, contexts


def mention_queries(frame: pd.DataFrame) -> list[str]:
    """What the model sees of each row: the mention preprocessed as in training (`preprocess_mention`),
    with the abbreviations Ab3P finds in the row's `context` (each distinct context is searched once)."""
    mentions, contexts = validate_input(frame)
    abbreviations = {text: find_abbreviations(text) for text in dict.fromkeys(contexts) if text}
    return [preprocess_mention(mention, abbreviations.get(context, {})) for mention, context in zip(mentions, contexts)]


def answer_queries(
    model, tokenizer, queries: list[str], max_length: int = 32, batch_size: int = 256
) -> list[tuple[tuple[str, ...], float]]:
    """(concept IDs, score) for each query: the paper's classifier (score: softmax probability; batching is
    `classifier.predict`'s, queries sorted by length, `batch_size` at a time) or a `HybridNormalizer`
    (`tokenizer` unused; score: cosine + weighted probability)."""
    if not queries:
        return []
    if isinstance(model, HybridNormalizer):
        return [(a.concept_ids, a.score) for a in model.predict(queries)]
    from ehrbert.models import classifier  # torch: only for the paper's classifier

    ranked, scores = classifier.predict(model, tokenizer, queries, k=1, max_length=max_length, batch_size=batch_size)
    return [(tuple(r[:1]), s[0]) for r, s in zip(ranked, scores)]


def normalize_mentions(
    model,
    tokenizer,
    concept_names: Mapping[str, str],
    frame: pd.DataFrame,
    max_length: int = 32,
    batch_size: int = 256,
    answer: Callable[[list[str]], list] | None = None,
) -> pd.DataFrame:
    """One row per input row: the answer's concept ID(s), name(s) and score (`answer_queries`, or `answer`, which
    gives the same for a list of queries: the served model's micro-batcher)."""
    queries = mention_queries(frame)
    found = answer(queries) if answer is not None else answer_queries(model, tokenizer, queries, max_length, batch_size)
    return answers_frame(concept_names, [ids for ids, _ in found], [score for _, score in found])


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
    """The `text` column (strings of at most MAX_TEXT_CHARS characters; an empty text has no mentions), or a 400
    that names the bad rows."""
    _check_table(frame, "text")
    return _strings(frame, "text", MAX_TEXT_CHARS)


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
    model,
    tokenizer,
    concept_names: Mapping[str, str],
    frame,
    max_length: int = 32,
    batch_size: int = 256,
    answer: Callable[[list[str]], list] | None = None,
) -> pd.DataFrame:
    """What the served model answers: `annotate_texts` for a `text` column, else `normalize_mentions`."""
    if isinstance(frame, pd.DataFrame) and "text" in frame.columns:
        if "mention" in frame.columns:
            raise _bad_input("send either 'mention' (with optional 'context') or 'text' columns, not both")
        return annotate_texts(model, concept_names, frame)
    return normalize_mentions(model, tokenizer, concept_names, frame, max_length, batch_size, answer)


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
        runtime = os.environ.get(RUNTIME_ENV) or config.get("runtime") or "torch"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r} ({RUNTIME_ENV} or the model config): expected one of {RUNTIMES}")
        if runtime == "onnx" and "fast" not in context.artifacts:
            raise ValueError(
                "runtime 'onnx': this version has no fast form (a paper classifier, or registered before the fast "
                f"form existed): serve it with {RUNTIME_ENV}=torch, or register it again"
            )
        if runtime == "onnx":
            from ehrbert.models.fast import FastNormalizer

            options, variant = fast_options(config, os.environ), config.get("variant") or None
            self.model, self.tokenizer = (
                FastNormalizer.load_fast(folder, context.artifacts["fast"], variant, options),
                None,
            )
        elif is_hybrid(folder):
            self.model, self.tokenizer = HybridNormalizer.load(folder, config.get("variant") or None), None
        else:
            from ehrbert.models import classifier  # torch: the paper's classifier has no fast form

            self.model, self.tokenizer = classifier.load(folder)
        self.concept_names = read_concepts(context.artifacts["concepts"])
        self.max_length = int(config.get("max_length", 32))
        self.batch_size = int(config.get("predict_batch_size", 256))
        self.batcher = None
        if os.environ.get(MICROBATCH_ENV, "1") != "0":
            wait_ms = float(os.environ.get(BATCH_WAIT_ENV, config.get("batch_wait_ms", 0.0)))
            answer = functools.partial(
                answer_queries, self.model, self.tokenizer, max_length=self.max_length, batch_size=self.batch_size
            )
            self.batcher = MicroBatcher(answer, wait_s=wait_ms / 1000, max_items=MAX_ROWS)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_frame(
            self.model,
            self.tokenizer,
            self.concept_names,
            model_input,
            self.max_length,
            self.batch_size,
            self.batcher,
        )
