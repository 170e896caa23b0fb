"""MLproject stays in step with dvc.yaml, and an entry point runs under `mlflow run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

from ehrbert import mlproject

ROOT = Path(__file__).resolve().parents[1]


def test_mlproject_is_generated_from_dvc_yaml():
    """The committed file is what `python -m ehrbert.mlproject` writes now: every stage, the same flags."""
    assert (ROOT / "MLproject").read_text() == mlproject.render(mlproject.resolved_commands(ROOT)), (
        "MLproject is out of date: run `python -m ehrbert.mlproject > MLproject`"
    )
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    assert stages <= set(entries) and (ROOT / "python_env.yaml").is_file()


def test_entry_point_parameters_and_outputs():
    parameters, command = mlproject.entry_point(
        "accelerate launch $ACCELERATE_ARGS -m ehrbert.finetune --seed 1 --train a.txt --train b.txt "
        "--out-dir outputs/finetune/x --run-records runs/finetune runs/hybrid",
        ["outputs/finetune/x"],
    )
    assert parameters == {"seed": "1", "out_dir": "manual/outputs/finetune/x"}  # outputs never overwrite DVC's
    assert command == (
        "accelerate launch $ACCELERATE_ARGS -m ehrbert.finetune --seed {seed} --train a.txt "
        "--train b.txt --out-dir {out_dir} --run-records runs/finetune runs/hybrid"
    )


def test_an_entry_point_runs_under_mlflow_run(raw_data, tmp_path):
    """`mlflow run . -e detector --env-manager local`: the stage's command with MLproject's parameters."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)  # another test's mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID into this process
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(ROOT),
        "-e",
        "detector",
        "--env-manager",
        "local",
        "-P",
        f"cadec_dir={raw_data / 'cadec'}",
        "-P",
        f"out={tmp_path / 'detector.json'}",
        "-P",
        f"metrics={tmp_path / 'metrics.json'}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["f1"] > 0
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(search_all_experiments=True)
    assert (
        len(runs) == 1
        and runs.iloc[0]["status"] == "FINISHED"
        and runs.iloc[0]["params.cadec_dir"] == str(raw_data / "cadec")
    )
