"""The test-predictions file that every normalizing stage writes and the analysis reads: one TSV, one home.

One row per test mention: doc_id, spans ("start end" pairs joined by ";"), mention, query, gold (IDs joined
by "|", empty for a mention without a concept), predicted (the answer: the top-1 ID, or for the hybrid the
answered ID set joined by "|", empty for no concept), score (the answer's score, when the model gives one) and
top_k (IDs joined by "|", best first). `predictions_table` builds it, `read_predictions` reads it back.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ehrbert.tasks import Task


def format_spans(spans: tuple[tuple[int, int], ...]) -> str:
    """Spans as the predictions TSV writes them: ``"0 5;9 14"``."""
    return ";".join(f"{start} {end}" for start, end in spans)


def predictions_table(
    task: Task, split: str, queries: list[str], ranked: list[list[str]], scores: list[list[float]] | None = None
) -> pd.DataFrame:
    """One row per mention of `split`: its spans, text, query, gold IDs and best-first predictions.

    `score` (the top-1 probability) only when the normalizer gives one.
    """
    mentions = task.mentions(split)
    columns = {
        "doc_id": [m.doc_id for m in mentions],
        "spans": [format_spans(m.spans) for m in mentions],
        "mention": [m.text for m in mentions],
        "query": queries,
        "gold": ["|".join(m.concept_ids) for m in mentions],
        "predicted": [r[0] if r else "" for r in ranked],
    }
    if scores is not None:
        columns["score"] = [s[0] for s in scores]
    columns["top_k"] = ["|".join(r) for r in ranked]
    return pd.DataFrame(columns)


PREDICTION_FILE = "test_predictions.tsv"
PREDICTION_COLUMNS = ("doc_id", "spans", "mention", "query", "gold", "predicted", "score", "top_k")


def run_folder(root: Path, model: str, corpus: str, seed: int) -> Path:
    """The fine-tuning output folder of one run, named as dvc.yaml names it: ``<model>-<corpus>-s<seed>``."""
    return Path(root) / f"{model}-{corpus}-s{seed}"


def find_prediction_files(root: Path, corpus: str, models: list[str]) -> dict[tuple[str, int], Path]:
    """{(model, seed): test predictions TSV} of every finished run of `models` on `corpus` under `root`.

    Ordered as `models`, then by seed. A folder without the TSV (a run that did not finish) is skipped.
    """
    found: dict[tuple[str, int], Path] = {}
    for model in models:
        prefix = f"{model}-{corpus}-s"
        seeds = sorted(
            int(p.name[len(prefix) :]) for p in Path(root).glob(f"{prefix}*") if p.name[len(prefix) :].isdigit()
        )
        for seed in seeds:
            path = run_folder(root, model, corpus, seed) / PREDICTION_FILE
            if path.is_file():
                found[(model, seed)] = path
    return found


def read_predictions(path: Path) -> pd.DataFrame:
    """A fine-tuning run's test predictions, every column as written (IDs and doc IDs stay strings).

    Columns: doc_id, spans ("start end" pairs joined by ";"), mention, query, gold (IDs joined by "|",
    empty for a mention without a concept), predicted (the top-1 ID), score (its probability) and top_k
    (IDs joined by "|", best first).
    """
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = set(PREDICTION_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return table.assign(score=pd.to_numeric(table["score"]))


def gold_ids(gold: str) -> set[str]:
    """The gold IDs of one TSV row (empty for a mention without a concept)."""
    return set(gold.split("|")) if gold else set()


def top1_correct(gold: str, predicted: str) -> bool:
    """acc@1's rule (`ehrbert.metrics.accuracy_at_k`): the top-1 ID is one of the gold IDs."""
    return predicted in gold_ids(gold)


def write_predictions(table: pd.DataFrame, path: str | Path) -> Path:
    """`table` (`predictions_table`'s) as the TSV at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False)
    return path
