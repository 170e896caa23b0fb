"""The paper's case study and error analysis of the fine-tuned normalizers.

- `ehrbert.analysis.attention` (stage ``case_study``): for chosen test mentions, each model's [CLS]
  attention over the word pieces and its top predictions, drawn as heatmaps.
- `ehrbert.analysis.errors` (stage ``error_analysis``): accuracy and F1 per model and corpus, split by
  seen / unseen concept, concept frequency, abbreviation, composite and mention length; the mentions
  where the notes-adapted model and the general base disagree.

Both read what the fine-tuning stage left: its test predictions (one TSV per model, corpus and seed,
read here) and its MLflow runs (the models, read by the case study).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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
        seeds = sorted(int(p.name[len(prefix):]) for p in Path(root).glob(f"{prefix}*") if p.name[len(prefix):].isdigit())
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
