"""MLflow set-up shared by every stage: one tracking store, one experiment per stage and corpus.

The store is MLFLOW_TRACKING_URI when set, else `sqlite:///mlflow.db` at the repository root (the
model registry needs a database). Artifacts of a sqlite store go to `mlruns/` beside it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URI = f"sqlite:///{ROOT / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


@contextlib.contextmanager
def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `experiment` (created on first use) on the project's tracking store."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        # with the default store, artifacts sit beside it whatever the working directory
        location = (ROOT / "mlruns" / experiment).as_uri() if uri == DEFAULT_URI else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    # Under `mlflow run`, MLFLOW_RUN_ID names the project's own run: start a fresh run that points
    # to it as its parent instead of resuming it (it lives in another experiment).
    parent = os.environ.pop("MLFLOW_RUN_ID", None)
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    try:
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            yield run
    finally:
        if parent:
            os.environ["MLFLOW_RUN_ID"] = parent
