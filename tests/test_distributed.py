"""The science does not change with the process count: one process and two (Accelerate, gloo) train to the same
weights within a stated tolerance; and training spans machines: pretraining as two Accelerate machines.

Two processes see the same global batches: the fine-tuning sampler's batches are split between the processes and
DDP averages their gradients; the contrastive retrieval training gathers every process's vectors with their
gradients so that each pair still meets the whole batch as negatives. What differs is float arithmetic (each
process pads its own share, sums come in another order), so the weights agree to a tolerance, not bit for bit.
Dropout is switched off for the comparison: its masks depend on the shapes each process draws them for, so
with dropout two process counts differ as two seeds do. Measured here (tiny BERT, fp32, 5 steps at lr 1e-3):
retrieval encoder weights within 1e-4 (absolute; 2e-6 measured), while training moved them by 5e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from ehrbert.models import retrieval
from ehrbert.models.retrieval import RetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMES = {
    "D1": ["breast cancer", "breast neoplasm", "mammary cancer"],
    "D2": ["ovarian cancer", "ovary neoplasm"],
    "D3": ["wilson disease", "hepatolenticular degeneration"],
    "D4": ["fabry disease", "anderson fabry disease"],
    "D5": ["colon cancer", "colonic neoplasm", "colorectal cancer"],
    "D6": ["heart failure", "cardiac failure"],
}
PAIRS = [("breast ca", "D1"), ("ovarian ca", "D2"), ("wilsons", "D3"), ("fabry", "D4"), ("crc", "D5"), ("chf", "D6")]
CONFIG = RetrievalConfig(steps=5, batch_size=8, learning_rate=1e-3, synonym_fraction=0.5, max_length=16)
# with hard negatives, re-mined once on the way: every process must draw the same ones
HARD = RetrievalConfig(**{**asdict(CONFIG), "hard_negatives": 2, "refresh_steps": 3})

# each process's script; test_retrieval_training_on_two_processes_matches_one writes NAMES, PAIRS and CONFIG's fields
# above it as literals, so that nothing is imported from the tests
SCRIPT = """
import sys, torch
from ehrbert.models import retrieval
from ehrbert.launch import make_accelerator
CONFIG = retrieval.RetrievalConfig(**CONFIG_FIELDS)
accelerator = make_accelerator()
model, tokenizer = retrieval.load_encoder(sys.argv[1])
for module in model.modules():
    if isinstance(module, torch.nn.Dropout):
        module.p = 0.0
retrieval.train_encoder(model, tokenizer, NAMES, PAIRS, CONFIG, seed=5, accelerator=accelerator)
if accelerator.is_main_process:
    torch.save({"world": accelerator.num_processes, "weights": model.state_dict()}, sys.argv[2])
"""


@pytest.mark.parametrize("config", [CONFIG, HARD], ids=["in-batch", "hard-negatives"])
def test_retrieval_training_on_two_processes_matches_one(tiny_bert, tmp_path, config):
    script = tmp_path / "train.py"
    script.write_text(f"NAMES, PAIRS, CONFIG_FIELDS = {NAMES!r}, {PAIRS!r}, {asdict(config)!r}\n{SCRIPT}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "cpu-2proc.yaml"),
            "--mixed_precision",
            "no",
            str(script),
            str(tiny_bert),
            str(tmp_path / "two.pt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["world"] == 2

    torch.manual_seed(0)
    model, tokenizer = retrieval.load_encoder(tiny_bert)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # dropout draws other masks for other shapes; without it the arithmetic is comparable
    before = {k: v.clone() for k, v in model.state_dict().items()}
    retrieval.train_encoder(model, tokenizer, NAMES, PAIRS, config, seed=5)
    # the pooler is not trained (mean pooling) and is newly initialized at each load of this checkpoint
    one = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
    moved = max((one[k] - before[k]).abs().max().item() for k in one)
    differ = max((one[k] - two["weights"][k]).abs().max().item() for k in one)
    assert moved > 1e-3  # training did move the weights...
    assert differ < 1e-4, f"1 vs 2 processes differ by {differ:.2e} (weights moved {moved:.2e})"  # ...the same way


def test_pretraining_on_two_machines(make_pretraining_workspace, pretraining_cli, tmp_path_factory, servers):
    """Two Accelerate "machines" on 127.0.0.1, one process each, as a team launches on two nodes: the same
    command on each with its own --machine_rank and the main machine's address. They join one process group
    (world size 2), train one run, and the main machine's process alone logs it and writes the model."""
    root = make_pretraining_workspace(tmp_path_factory.mktemp("two-machines"), max_steps=4)
    port = servers.free_port()
    args = pretraining_cli.args(root, "out", every=2)
    logs, machines = [], []
    for rank in (0, 1):
        command = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "accelerate" / "cpu-2proc.yaml")]
        command += ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)]
        command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no"]
        logs.append(root / f"machine{rank}.log")
        with open(logs[-1], "w") as log:
            machines.append(
                subprocess.Popen(
                    [*command, "-m", "ehrbert.pretrain", *args],
                    cwd=root,
                    env=pretraining_cli.env(root),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [machine.wait(timeout=600) for machine in machines]
    finally:
        for machine in machines:
            machine.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    summary = json.loads((root / "out" / "pretraining.json").read_text())
    assert summary["processes"] == 2 and summary["total_steps"] == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    assert [(r.info.status, r.data.params["processes"]) for r in runs] == [("FINISHED", "2")]
    assert json.loads((root / "out-run.json").read_text())["runs"]["pretrain"] == runs[0].info.run_id
