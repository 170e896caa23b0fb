"""MLflow runs are never left RUNNING: SIGTERM ends a run FAILED, and a rerun marks a SIGKILLed one KILLED."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from ehrbert.tracking import start_run

SCRIPT = """
import sys, time
from ehrbert.tracking import start_run
with start_run("stage-x", "run-x", tags={}, params={}):
    print("started", flush=True)
    time.sleep(120)
"""


def _start(tracking_store) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_store}
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "started"
    return process


def _status(run_name: str) -> list[str]:
    runs = mlflow.search_runs(experiment_names=["stage-x"], filter_string=f"attributes.run_name = '{run_name}'")
    return sorted(runs["status"])


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, "FAILED"), (signal.SIGKILL, "KILLED")])
def test_an_interrupted_run_is_not_left_running(tracking_store, sig, expected):
    process = _start(tracking_store)
    assert _status("run-x") == ["RUNNING"]
    process.send_signal(sig)
    process.wait(timeout=60)
    if sig == signal.SIGKILL:
        assert _status("run-x") == ["RUNNING"]  # nothing could end it; the rerun below does
        time.sleep(0.1)
        with start_run("stage-x", "run-x", tags={}, params={}):
            pass
        assert _status("run-x") == ["FINISHED", expected]
    else:
        assert _status("run-x") == [expected]


def test_a_live_run_of_the_same_name_is_left_alone(tracking_store):
    process = _start(tracking_store)
    try:
        with start_run("stage-x", "run-x", tags={}, params={}):
            pass
        assert _status("run-x") == ["FINISHED", "RUNNING"]
    finally:
        process.kill()
        process.wait()
