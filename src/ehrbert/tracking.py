"""MLflow set-up shared by every stage: one tracking store, one experiment per stage and corpus, provenance tags,
and the run records through which stages name each other's runs.

The store is MLFLOW_TRACKING_URI when set, else `sqlite:///mlflow.db` at the repository root (the
model registry needs a database). Artifacts of a sqlite store go to `mlruns/` beside it.

Every run is tagged with what made it (`provenance_tags`): the git commit, a hash of the params the stage
read, and the DVC experiment it ran in (``workspace`` for a plain `dvc repro`). A training stage writes the
IDs of its runs into a run record, `runs/<stage>/<name>.json` (`write_run_record`): a small DVC output kept in
git beside the metrics, so that a commit names the runs its tables came from. A later stage reads that file
(`read_run_record`) and so uses exactly the runs that made its inputs, never "the newest run with these tags".
The model folders themselves hold no run ID: two runs of one configuration give identical files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URI = f"sqlite:///{ROOT / 'mlflow.db'}"
HOST_TAG, PID_TAG = "host", "pid"  # which process started a run: a rerun marks a dead one's run KILLED


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


@functools.cache
def git_commit() -> str:
    """HEAD of the repository the stage runs in, the working directory that `dvc repro` or `mlflow run` sets
    ("unknown" outside a git checkout); asked once per process."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def params_hash(params: Mapping) -> str:
    """A short stable hash of the params a stage read (the sections it declares in dvc.yaml)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dvc_experiment() -> str:
    """The DVC experiment being run (`dvc exp run` names it in DVC_EXP_NAME), or "workspace"."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def provenance_tags(params: Mapping) -> dict[str, str]:
    return {"git_commit": git_commit(), "params_hash": params_hash(params), "dvc_experiment": dvc_experiment()}


@contextlib.contextmanager
def start_run(experiment: str, run_name: str, tags: dict[str, str], params: Mapping) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `experiment` (created on first use) on the project's tracking store, tagged with
    `tags` and the provenance of `params` (what the stage read of params.yaml)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        # with the default store, artifacts sit beside it whatever the working directory
        location = (ROOT / "mlruns" / experiment).as_uri() if uri == DEFAULT_URI else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    mark_dead_runs_killed(experiment, run_name)
    tags = {**provenance_tags(params), **tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    # Under `mlflow run`, MLFLOW_RUN_ID names the project's own run: start a fresh run that points
    # to it as its parent instead of resuming it (it lives in another experiment).
    parent = os.environ.pop("MLFLOW_RUN_ID", None)
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    _exit_on_sigterm()
    try:
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            yield run
    finally:
        if parent:
            os.environ["MLFLOW_RUN_ID"] = parent


def log_detected_run(
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping,
    trained_in_run: str,
    scores: Mapping[str, float],
    **logged_params,
) -> str:
    """The extra run of a model scored on test from *detected* mentions (the clinical corpus, as in the paper):
    named `run_name`-predicted, tagged mentions=predicted and with the run that trained the model. Its run ID."""
    tags = {**tags, "mentions": "predicted", "trained_in_run": trained_in_run}
    with start_run(experiment=experiment, run_name=f"{run_name}-predicted", tags=tags, params=params) as run:
        if logged_params:
            mlflow.log_params(logged_params)
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()})
        return run.info.run_id


def _exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, `kill`) exits through Python, so that the active run is ended FAILED instead of
    being left RUNNING; only where nobody else handles the signal."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def mark_dead_runs_killed(experiment: str, run_name: str) -> list[str]:
    """Mark KILLED the runs named `run_name` in `experiment` that are still RUNNING although the process that
    started them, on this host, is gone (killed with SIGKILL, or its machine lost power). A process that ends
    otherwise (an exception, SIGTERM, Ctrl-C) marks its own run FAILED or KILLED as it exits. Returns their IDs."""
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [mlflow.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
    )
    dead = [
        run.info.run_id
        for run in found
        if run.data.tags.get(HOST_TAG) == socket.gethostname() and not _alive(int(run.data.tags.get(PID_TAG, "0")))
    ]
    for run_id in dead:
        client.set_terminated(run_id, status="KILLED")
    return dead


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_run_record(path: Path, runs: Mapping[str, str], **facts) -> Path:
    """{"runs": {name: MLflow run ID}, **facts} as JSON at `path`; written last, when the stage's outputs are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": dict(runs), **facts}, indent=2, sort_keys=True) + "\n")
    return path


def read_run_record(path: Path) -> dict:
    """A run record written by `write_run_record`; a clear error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run record; run the stage that writes it (`dvc repro`)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), dict):
        raise ValueError(f"{path}: not a run record (no 'runs' mapping)")
    return record
