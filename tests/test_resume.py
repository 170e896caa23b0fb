"""Resuming after a crash: a pretraining or fine-tuning run killed after a checkpoint and rerun must end where an
uninterrupted run of the same configuration ends.

Pretraining.

Three real runs of `python -m ehrbert.pretrain` (one CPU process, conftest's tiny pretraining workspace: 12 steps of
batch 8 over about three epochs, a checkpoint every 3 steps, all kept): one uninterrupted; one started in a
subprocess and killed with SIGKILL as soon as its step-3 checkpoint is complete (the marker file is written last);
and the rerun of the killed one, which resumes from the newest complete checkpoint and finishes.

What holds (measured, and asserted below): the killed run's step-3 checkpoint is byte for byte the uninterrupted
run's (weights, optimizer, scheduler, RNG states); the rerun resumes from the newest complete checkpoint, trains only
the missing steps at the same learning rates, and carries the held-out scores from before training over.

Why it holds: the MLM masks come from a generator of their own, seeded per batch (`ehrbert.pretrain.SeededMasking`),
and the DataLoader has its own generator, so the global torch RNG, which a checkpoint saves and restores, is
dropout's alone. (With the masks from the global RNG, Accelerate's one-batch look-ahead had drawn batch k+1's masks
before the step-k checkpoint saved the RNG, and a resumed run ended as far from the uninterrupted one as training
had moved the weights.) Measured: weights and held-out scores bit-identical (0.0).

Fine-tuning. Three real runs of `python -m ehrbert.finetune` (tiny BERT on NCBI, 4 epochs, dropout on, fp32, one
CPU process): one uninterrupted, one killed with SIGKILL as soon as its epoch-2 checkpoint is complete, and its
rerun, which goes on from epoch 3. Measured: the rerun's weights, test predictions and DVC metrics are byte for byte
the uninterrupted run's (tolerance 0), and so is every epoch's dev accuracy in MLflow. The checkpoint carries the
sampler's generator and the best-on-dev weights so far, which `save_state` does not.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from ehrbert import checkpoints

STEPS, EVERY, KILL_AFTER = 12, 3, 3
STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")  # save_state's files
# One machine, one process, fp32 on CPU, the same operations in the same order: a resume that restores everything
# gives the uninterrupted run's weights bit for bit (0.0 measured with the RNG fixed as above). 1e-6 leaves room for
# a kernel that sums in another order after a reload, and stays three orders below what training moves (~6e-3).
WEIGHT_TOLERANCE = 1e-6
PERPLEXITY_TOLERANCE = 1e-6  # relative


def _command(cli, root: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "ehrbert.pretrain", *cli.args(root, name, f"{name}-checkpoints", EVERY)]


def _run(cli, root: Path, name: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(cli, root, name), cwd=root, env=cli.env(root), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _run_and_kill(cli, root: Path, name: str, step: int, timeout: float = 240) -> subprocess.Popen:
    """Start a run and SIGKILL it as soon as its checkpoint of `step` is complete."""
    marker = checkpoints.step_folder(root / f"{name}-checkpoints", step) / checkpoints.MARKER
    with open(root / f"{name}-killed.log", "w") as log:
        process = subprocess.Popen(
            _command(cli, root, name), cwd=root, env=cli.env(root), stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(
                f"no checkpoint at step {step} (exit {process.returncode}):\n"
                f"{(root / f'{name}-killed.log').read_text()[-4000:]}"
            )
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_pretraining_workspace, pretraining_cli) -> dict:
    root = make_pretraining_workspace(tmp_path_factory.mktemp("resume"), max_steps=STEPS)
    _run(pretraining_cli, root, "straight")
    killed = _run_and_kill(pretraining_cli, root, "resumed", KILL_AFTER)
    at_kill = [step for step, _, _ in checkpoints.completed(root / "resumed-checkpoints")]
    rerun = _run(pretraining_cli, root, "resumed")
    return {"root": root, "killed": killed, "at_kill": at_kill, "rerun": rerun}


def _run_id(root: Path, name: str) -> str:
    return json.loads((root / f"{name}-run.json").read_text())["runs"]["pretrain"]


def _progress(client: MlflowClient, root: Path, name: str) -> dict:
    """What the last invocation for `name` did (progress.json, logged to MLflow only)."""
    folder = client.download_artifacts(_run_id(root, name), "progress.json", str(root / f"{name}-progress"))
    return json.loads(Path(folder).read_text())


def test_a_killed_run_resumes_from_its_newest_checkpoint_and_trains_only_the_missing_steps(runs):
    root = runs["root"]
    assert runs["killed"].returncode == -signal.SIGKILL
    resumed_from = runs["at_kill"][-1]
    assert runs["at_kill"][0] == KILL_AFTER and resumed_from < STEPS, f"killed too late: {runs['at_kill']}"
    # the first steps of both runs were the same computation, and the checkpoint holds all of its state
    for name in STATE_FILES:
        straight = checkpoints.step_folder(root / "straight-checkpoints", KILL_AFTER) / name
        killed = checkpoints.step_folder(root / "resumed-checkpoints", KILL_AFTER) / name
        assert straight.read_bytes() == killed.read_bytes(), name

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    progress = _progress(client, root, "resumed")
    assert progress["resumed_from_step"] == resumed_from and progress["steps_run"] == STEPS - resumed_from
    assert f"resuming from {root / 'resumed-checkpoints' / f'step_{resumed_from}'}" in runs["rerun"].stderr
    completed = [step for step, _, _ in checkpoints.completed(root / "resumed-checkpoints")]
    assert completed == list(range(EVERY, STEPS + 1, EVERY))
    # the scheduler came back: the same learning rate at every resumed step
    rates = {
        name: {m.step: m.value for m in client.get_metric_history(_run_id(root, name), "learning_rate")}
        for name in ("straight", "resumed")
    }
    assert sorted(rates["resumed"]) == list(range(resumed_from + 1, STEPS + 1))
    assert all(rates["resumed"][step] == rates["straight"][step] for step in rates["resumed"])
    straight = json.loads((root / "straight" / "pretraining.json").read_text())
    resumed = json.loads((root / "resumed" / "pretraining.json").read_text())
    assert resumed["total_steps"] == straight["total_steps"] == STEPS
    assert resumed["fingerprint"] == straight["fingerprint"]
    assert resumed["heldout_before"] == straight["heldout_before"]  # carried over in the checkpoint, not recomputed


def test_the_resumed_run_ends_with_the_uninterrupted_run_s_weights_and_heldout_scores(runs):
    root = runs["root"]
    straight, resumed = (
        load_file(str(root / "straight" / "model.safetensors")),
        load_file(str(root / "resumed" / "model.safetensors")),
    )
    assert straight.keys() == resumed.keys()
    base = load_file(str(root / "base" / "model.safetensors"))
    moved = max((straight[f"bert.{k}"] - v).abs().max().item() for k, v in base.items() if f"bert.{k}" in straight)
    differ = max((straight[k] - resumed[k]).abs().max().item() for k in straight)
    after = [
        json.loads((root / name / "pretraining.json").read_text())["heldout_after"] for name in ("straight", "resumed")
    ]
    assert differ <= WEIGHT_TOLERANCE, (
        f"weights differ by {differ:.2e} (training moved them {moved:.2e}); held-out "
        f"after: {after[0]} uninterrupted, {after[1]} resumed"
    )
    assert after[1]["perplexity"] == pytest.approx(after[0]["perplexity"], rel=PERPLEXITY_TOLERANCE)
    assert after[1]["nsp_accuracy"] == after[0]["nsp_accuracy"]
    assert after[1]["masked_word_pieces"] == after[0]["masked_word_pieces"]


# --- fine-tuning -----------------------------------------------------------------------------------------------

EPOCHS, KILL_AFTER_EPOCH = 4, 2


def _finetune_command(root: Path, name: str, tiny_bert: Path, raw_data: Path) -> list[str]:
    flags = dict(
        corpus="ncbi",
        model="tiny",
        model_path=tiny_bert,
        seed=5,
        ncbi_dir=raw_data / "ncbi_disease",
        ncbi_vocabulary=raw_data / "medic" / "CTD_diseases.tsv.gz",
        params=root / "params.yaml",
        out_dir=root / name,
        metrics=root / f"{name}.json",
        run_record=root / f"{name}-run.json",
        checkpoint_dir=root / f"{name}-checkpoints",
    )
    return [sys.executable, "-m", "ehrbert.finetune"] + [
        part for key, value in flags.items() for part in (f"--{key.replace('_', '-')}", str(value))
    ]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_bert, raw_data, pretraining_cli) -> dict:
    root = tmp_path_factory.mktemp("finetune-resume")
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["finetune"]["config"].update(max_epochs=EPOCHS, patience=EPOCHS, head_lr=1e-2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = pretraining_cli.env(root)
    env.pop("ACCELERATE_MIXED_PRECISION", None)  # fp32

    def run(name: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            _finetune_command(root, name, tiny_bert, raw_data),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        return done

    run("straight")
    marker = checkpoints.step_folder(root / "resumed-checkpoints", KILL_AFTER_EPOCH) / checkpoints.MARKER
    with open(root / "killed.log", "w") as log:
        process = subprocess.Popen(
            _finetune_command(root, "resumed", tiny_bert, raw_data),
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 400
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"no checkpoint after epoch {KILL_AFTER_EPOCH}:\n{(root / 'killed.log').read_text()[-4000:]}")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = [step for step, _, _ in checkpoints.completed(root / "resumed-checkpoints")]
    model_at_kill = (root / "resumed" / "model").exists()
    return {
        "root": root,
        "killed": process,
        "at_kill": at_kill,
        "model_at_kill": model_at_kill,
        "rerun": run("resumed"),
    }


def test_a_killed_fine_tuning_run_goes_on_from_its_last_epoch_and_ends_as_the_uninterrupted_run(finetuned):
    root = finetuned["root"]
    assert finetuned["killed"].returncode == -signal.SIGKILL
    assert not finetuned["model_at_kill"]  # killed before it wrote anything
    # the newest complete checkpoint is the one the rerun starts from; the one before it is pruned only after the
    # newest is marked complete, so a kill in between may leave both (the next save or the finished run removes it)
    assert finetuned["at_kill"][-1] == KILL_AFTER_EPOCH and len(finetuned["at_kill"]) <= 2, finetuned["at_kill"]
    assert f"resuming from {root / 'resumed-checkpoints' / f'step_{KILL_AFTER_EPOCH}'}" in finetuned["rerun"].stderr
    assert f"epoch {KILL_AFTER_EPOCH}:" not in finetuned["rerun"].stderr  # only the missing epochs ran
    for file in ("model/model.safetensors", "test_predictions.tsv"):
        assert (root / "straight" / file).read_bytes() == (root / "resumed" / file).read_bytes(), file
    assert (root / "straight.json").read_bytes() == (root / "resumed.json").read_bytes()  # the DVC metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_ids = {n: json.loads((root / f"{n}-run.json").read_text())["runs"]["gold"] for n in ("straight", "resumed")}
    for metric in ("train_loss", "dev_acc1"):  # every epoch's, the resumed ones too: the same batches in the same order
        history = {
            n: sorted((m.step, m.value) for m in client.get_metric_history(i, metric)) for n, i in run_ids.items()
        }
        assert history["resumed"] == history["straight"] and len(history["straight"]) == EPOCHS, metric
    # a finished run leaves no training state behind
    assert not list((root / "straight-checkpoints").glob("step_*"))
    assert not list((root / "resumed-checkpoints").glob("step_*"))
