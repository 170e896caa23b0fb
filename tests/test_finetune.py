import argparse
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from accelerate import Accelerator

from ehrbert import finetune
from ehrbert.corpora.records import COMPOSITE, NO_CONCEPT, Concept, Document, Mention, Vocabulary
from ehrbert.metrics import accuracy_at_k
from ehrbert.models import classifier
from ehrbert.tasks import Task, load_task

CONCEPTS = [
    Concept("D1", "breast cancer"),
    Concept("D2", "ovarian cancer"),
    Concept("D3", "wilson disease"),
    Concept("D4", "fabry disease"),
    Concept("D5", "apc deficiency"),
]


def _mention(doc, text, ids, relation="single"):
    start = doc.text.index(text)
    return Mention(doc.doc_id, ((start, start + len(text)),), text, ids, relation)


def _task() -> Task:
    doc = Document("1", "Breast and ovarian cancer. Wilson disease. Wilson disease. Fabry disease. An unknown disease.")
    doc.mentions = [
        _mention(doc, "Breast and ovarian cancer", ("D1", "D2"), COMPOSITE),
        _mention(doc, "Wilson disease", ("D3",)),
        Mention("1", ((43, 57),), "Wilson disease", ("D3",)),
        _mention(doc, "Fabry disease", ("D4",)),
        _mention(doc, "unknown disease", (), NO_CONCEPT),
    ]
    return Task("toy", Vocabulary(CONCEPTS), {"train": [doc], "dev": [doc], "test": [doc]}, level="document")


def test_training_pairs_split_composites_drop_no_concept_and_deduplicate():
    task = _task()
    label2id = {c.concept_id: i for i, c in enumerate(CONCEPTS)}
    pairs = finetune.training_pairs(task, finetune.FinetuneConfig(deduplicate=False), label2id)
    assert pairs == [
        ("breast and ovarian cancer", 0),
        ("breast and ovarian cancer", 1),
        ("wilson disease", 2),
        ("wilson disease", 2),
        ("fabry disease", 3),
    ]
    assert len(finetune.training_pairs(task, finetune.FinetuneConfig(deduplicate=True), label2id)) == 4
    with_names = finetune.training_pairs(task, finetune.FinetuneConfig(add_vocabulary_names=True), label2id)
    assert ("apc deficiency", 4) in with_names


def test_imprinted_head_answers_each_concept_by_its_name_before_training(tiny_bert):
    model, tokenizer = classifier.build(
        tiny_bert, Vocabulary(CONCEPTS), dropout=0.1, seed=0, head_init="names", head_scale=20.0
    )
    vectors = classifier.pooled_vectors(model, tokenizer, [c.name for c in CONCEPTS], max_length=32)
    rows, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    logits = vectors @ rows.T + bias  # what the head gives each preferred name (dropout off)
    assert logits.argmax(dim=-1).tolist() == list(range(len(CONCEPTS)))
    assert torch.allclose(rows.norm(dim=-1), rows.norm(dim=-1).mean().expand(len(CONCEPTS)))  # one length for all
    assert torch.allclose(bias, -(rows @ vectors.mean(dim=0)), atol=1e-5)  # logits score the vector minus the mean
    centred = vectors - vectors.mean(dim=0)
    cosine = torch.nn.functional.cosine_similarity(rows, centred, dim=-1)
    assert torch.allclose(cosine, torch.ones(len(CONCEPTS)), atol=1e-5)


def test_uniform_head_is_the_papers_and_a_bad_head_init_is_named(tiny_bert):
    model, _ = classifier.build(tiny_bert, Vocabulary(CONCEPTS), dropout=0.1, seed=0, head_init="uniform")
    bound = 1 / model.classifier.in_features**0.5
    assert model.classifier.weight.abs().max() <= bound and model.classifier.weight.std() > bound / 3
    with pytest.raises(ValueError, match="head_init 'zeros'"):
        classifier.build(tiny_bert, Vocabulary(CONCEPTS), dropout=0.1, seed=0, head_init="zeros")
    with pytest.raises(ValueError, match="finetune.config.head_init"):
        finetune.FinetuneConfig(head_init="zeros")


def test_label_i_is_the_vocabulary_s_concept_i_after_save_and_reload(tiny_bert, tmp_path):
    """A saved normalizer's label i is concept i of the vocabulary it was built from, and head row i scores that
    concept: with the head set so that row i's logit is LOGITS[i] whatever the query, a saved and reloaded model
    must rank the vocabulary's IDs by those logits."""
    # IDs out of sorted order and from two namespaces: labels sorted or re-keyed on the way would show here
    concepts = [
        Concept("D4", "fabry disease"),
        Concept("OMIM:300", "wilson disease"),
        Concept("C1", "breast cancer"),
        Concept("D2", "ovarian cancer"),
        Concept("D10", "apc deficiency"),
    ]
    logits = torch.tensor([0.0, 4.0, 2.0, 3.0, 1.0])
    model, tokenizer = classifier.build(tiny_bert, Vocabulary(concepts), dropout=0.1, seed=0)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(logits)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    reloaded, reloaded_tokenizer = classifier.load(tmp_path / "model")
    ids = [c.concept_id for c in concepts]
    assert classifier.concept_ids(reloaded) == ids
    assert [reloaded.config.label2id[c] for c in ids] == [0, 1, 2, 3, 4]
    ranked, scores = classifier.predict(reloaded, reloaded_tokenizer, ["wilson disease", "fever"], k=len(ids))
    assert ranked == [["OMIM:300", "D2", "C1", "D10", "D4"]] * 2  # the vocabulary's IDs, by the logits of their rows
    assert scores[1] == pytest.approx(logits.softmax(-1).sort(descending=True).values.tolist(), abs=1e-6)


def _train(tiny_bert, config):
    task = _task()
    model, tokenizer = classifier.build(tiny_bert, task.vocabulary, config.dropout, seed=0)
    pairs = finetune.training_pairs(task, config, model.config.label2id) * 8
    history = finetune.train(
        model, tokenizer, pairs, task.queries("dev"), task.mentions("dev"), config, Accelerator(cpu=True), seed=0
    )
    return history, model, tokenizer, task


def test_loss_decreases_and_the_best_dev_weights_are_kept(tiny_bert):
    config = finetune.FinetuneConfig(encoder_lr=1e-3, head_lr=1e-2, batch_size=4, max_epochs=8, patience=8)
    history, model, tokenizer, task = _train(tiny_bert, config)
    assert len(history) == 8
    assert history[-1]["train_loss"] < 0.75 * history[0]["train_loss"]
    ranked, _ = classifier.predict(model, tokenizer, task.queries("dev"), k=1)
    assert accuracy_at_k(task.mentions("dev"), ranked, k=1) == max(r["dev_acc1"] for r in history)


def test_without_dev_every_epoch_runs_and_the_last_weights_are_kept(tiny_bert):
    task = _task()
    config = finetune.FinetuneConfig(encoder_lr=1e-3, head_lr=1e-2, batch_size=4, max_epochs=3, deduplicate=False)
    model, tokenizer = classifier.build(tiny_bert, task.vocabulary, config.dropout, seed=0)
    pairs = finetune.training_pairs(task, config, model.config.label2id, splits=("train", "dev"))
    assert len(pairs) > len(finetune.training_pairs(task, config, model.config.label2id))
    before = model.classifier.weight.detach().clone()
    history = finetune.train(model, tokenizer, pairs, [], [], config, Accelerator(cpu=True), seed=0)
    assert [r["epoch"] for r in history] == [1, 2, 3] and all("dev_acc1" not in r for r in history)
    assert not torch.equal(model.classifier.weight, before)  # the weights the last epoch left, not the start's
    with pytest.raises(ValueError, match="needs dev mentions"):
        finetune.train(model, tokenizer, pairs, [], [], config, Accelerator(cpu=True), seed=0, checkpoint_dir=Path("x"))


def test_early_stopping_triggers_when_dev_does_not_improve(tiny_bert):
    config = finetune.FinetuneConfig(encoder_lr=0.0, head_lr=0.0, batch_size=4, max_epochs=10, patience=2)
    history, *_ = _train(tiny_bert, config)
    assert [r["epoch"] for r in history] == [1, 2, 3]  # best at 1, then 2 epochs without improvement


def test_main_trains_evaluates_and_logs_to_mlflow(
    argv, ncbi_data, tiny_bert, raw_data, tmp_path, tracking_store, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(open(finetune.__file__.replace("src/ehrbert/finetune.py", "params.yaml")))
    params["finetune"]["config"].update(max_epochs=2, patience=1, head_lr=1e-2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    finetune.main(
        argv(
            corpus="ncbi",
            model="tiny",
            model_path=tiny_bert,
            seed="7",
            **ncbi_data,
            params="params.yaml",
            out_dir="out",
            metrics="metrics.json",
            run_record="run.json",
        )
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"precision", "recall", "f1", "acc1", "acc5", "best_epoch", "dev_f1"} <= set(metrics)
    assert 0 <= metrics["dev_f1"] <= 1  # the kept model's dev document F1, what champions are chosen by
    assert "train_seconds" not in metrics  # wall clock goes to MLflow: the tracked metrics of a rerun stay equal
    assert (tmp_path / "out" / "test_predictions.tsv").read_text().count("\n") == 961  # header + 960 test mentions

    runs = mlflow.search_runs(experiment_names=["finetune-ncbi"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert (run["tags.model"], run["tags.corpus"], run["tags.seed"], run["tags.mentions"]) == (
        "tiny",
        "ncbi",
        "7",
        "gold",
    )
    assert run["metrics.test_f1"] == pytest.approx(metrics["f1"])
    assert run["metrics.dev_f1"] == pytest.approx(metrics["dev_f1"]) and "metrics.test_dev_f1" not in runs
    assert run["metrics.train_seconds"] > 0
    assert run["params.max_epochs"] == "2" and run["params.head_init"] == "names"
    assert run["tags.dvc_experiment"] == "workspace" and len(run["tags.params_hash"]) == 16 and run["tags.git_commit"]
    history = mlflow.tracking.MlflowClient().get_metric_history(run["run_id"], "dev_acc1")
    assert [m.step for m in history] == [1, 2]
    # the run record names the run; the model is the DVC out, and MLflow holds a copy for the UI
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["runs"] == {"gold": run["run_id"]} and record["model_dir"] == "out/model"
    model, tokenizer, trained = classifier.load_finetuned(tmp_path / "out")
    assert trained["config"]["max_length"] == params["finetune"]["config"]["max_length"] and trained["seed"] == 7
    vocabulary = [
        c.concept_id
        for c in load_task(
            "ncbi",
            argparse.Namespace(
                ncbi_dir=raw_data / "ncbi_disease", ncbi_vocabulary=raw_data / "medic" / "CTD_diseases.tsv.gz"
            ),
            {},
        ).vocabulary.concepts
    ]
    assert classifier.concept_ids(model) == vocabulary  # label i is the vocabulary's concept i, every concept once
    predicted = pd.read_csv(tmp_path / "out" / "test_predictions.tsv", sep="\t", dtype=str)
    assert {c for top_k in predicted["top_k"] for c in top_k.split("|")} <= set(vocabulary)
    logged = mlflow.artifacts.download_artifacts(
        run_id=run["run_id"], artifact_path="model", dst_path=str(tmp_path / "dl")
    )
    assert (Path(logged) / "model.safetensors").read_bytes() == (
        tmp_path / "out" / "model" / "model.safetensors"
    ).read_bytes()
    with torch.inference_mode():
        ranked, scores = classifier.predict(model, tokenizer, ["wilson disease"], k=3)
    assert len(ranked[0]) == 3 and scores[0] == sorted(scores[0], reverse=True)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state: a run with another mixed precision needs it cleared, before and
    after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_cadec_run_also_scores_detected_mentions(
    argv, tiny_bert, raw_data, tmp_path, tracking_store, monkeypatch, fresh_accelerate_state
):
    from ehrbert.models.detector import LexiconDetector
    from ehrbert.tasks import load_cadec_task

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "ACCELERATE_MIXED_PRECISION", "bf16"
    )  # what `accelerate launch` hands a script configured for bf16
    params = yaml.safe_load(open(finetune.__file__.replace("src/ehrbert/finetune.py", "params.yaml")))
    params["finetune"]["config"].update(max_epochs=1)
    params["finetune"]["head_init_ablation"]["config"].update(head_init="uniform", max_epochs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    task = load_cadec_task(raw_data / "cadec", **params["cadec_split"])
    names = [n for c in task.vocabulary.concepts for n in c.names]
    LexiconDetector.fit(names, task.splits["train"]).with_min_precision(0.5).save(tmp_path / "detector.json")
    finetune.main(
        argv(
            corpus="cadec",
            model="tiny",
            model_path=tiny_bert,
            seed="1",
            cadec_dir=raw_data / "cadec",
            cadec_detector="detector.json",
            config_overrides="finetune.head_init_ablation.config",
            params="params.yaml",
            out_dir="out",
            metrics="metrics.json",
            run_record="run.json",
        )
    )
    predicted = json.loads((tmp_path / "metrics.json").read_text())["predicted_mentions"]
    assert predicted["detected"] > 1000 and predicted["tp"] + predicted["fn"] == 1660  # test mentions with a concept
    runs = mlflow.search_runs(experiment_names=["finetune-cadec"]).set_index("tags.mentions")
    assert runs.loc["predicted", "tags.trained_in_run"] == runs.loc["gold", "run_id"]
    assert runs.loc["predicted", "metrics.test_f1"] == pytest.approx(predicted["f1"])
    assert runs.loc["gold", "params.head_init"] == "uniform"  # --config-overrides replaces finetune.config keys
    assert runs.loc["gold", "params.mixed_precision"] == "bf16"
    assert runs.loc["gold", "tags.model_label"].endswith("uniform head (paper)")
    assert json.loads((tmp_path / "run.json").read_text())["runs"] == {
        "gold": runs.loc["gold", "run_id"],
        "predicted": runs.loc["predicted", "run_id"],
    }


def test_two_processes_under_accelerate_launch_train_as_one(
    tiny_bert, raw_data, tmp_path, tracking_store, monkeypatch, fresh_accelerate_state
):
    """The project's 2-process Accelerate config (as dvc.yaml launches it): two real processes (gloo), each half of
    the same global batches, one MLflow run that records the world size, and the weights of a one-process run.

    Dropout is off here: its masks depend on the shapes each process draws them for, so with it two process
    counts differ as two seeds do. The tolerance (tiny BERT, bf16 autocast, 1 epoch): weights within 1e-2 of
    the one-process run's, test F1 within 1 point."""
    import os
    import subprocess
    import sys

    params = yaml.safe_load(open(finetune.__file__.replace("src/ehrbert/finetune.py", "params.yaml")))
    params["finetune"]["config"].update(max_epochs=1, dropout=0.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    config_file = Path(finetune.__file__).parents[2] / "accelerate" / "cpu-2proc.yaml"
    data = [
        "--corpus",
        "ncbi",
        "--model",
        "tiny",
        "--model-path",
        str(tiny_bert),
        "--seed",
        "1",
        "--ncbi-dir",
        str(raw_data / "ncbi_disease"),
        "--ncbi-vocabulary",
        str(raw_data / "medic" / "CTD_diseases.tsv.gz"),
        "--params",
        "params.yaml",
    ]
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(config_file),
        "-m",
        "ehrbert.finetune",
        *data,
        "--out-dir",
        "two",
        "--metrics",
        "two.json",
        "--run-record",
        "two-run.json",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # batch 32 a step over both processes: each process takes 16 of each of the 48 global batches of NCBI's
    # 1,514 merged training pairs
    assert "/48 [" in done.stderr and "/95 [" not in done.stderr
    runs = mlflow.search_runs(experiment_names=["finetune-ncbi"])
    assert (
        len(runs) == 1 and runs.iloc[0]["params.processes"] == "2" and runs.iloc[0]["params.mixed_precision"] == "bf16"
    )

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as accelerate/cpu.yaml hands it to one process
    finetune.main([*data, "--out-dir", "one", "--metrics", "one.json", "--run-record", "one-run.json"])
    one, _, _ = classifier.load_finetuned(tmp_path / "one")
    two, _, _ = classifier.load_finetuned(tmp_path / "two")
    two_weights = two.state_dict()
    differ = max((v - two_weights[k]).abs().max().item() for k, v in one.state_dict().items())
    # the float noise of summing gradients over two processes, as Adam amplifies it where gradients are near 0;
    # a run with another seed differs by orders of magnitude more. Test F1 is not compared:
    # a tiny random BERT after one epoch answers at chance (F1 under 0.1), where noise of this size already
    # changes most answers.
    assert differ < 1e-2, f"1 vs 2 processes: weights differ by {differ:.2e}"


def test_two_runs_with_one_seed_give_identical_files(
    argv, ncbi_data, tiny_bert, raw_data, tmp_path, tracking_store, monkeypatch
):
    """Fixed seed, one machine, one process: byte-identical weights, predictions and DVC metrics, so a rerun of
    the stage leaves dvc.lock's hashes as they were (only the run record, which names the new MLflow run, differs)."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(open(finetune.__file__.replace("src/ehrbert/finetune.py", "params.yaml")))
    params["finetune"]["config"].update(max_epochs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("a", "b"):
        finetune.main(
            argv(
                corpus="ncbi",
                model="tiny",
                model_path=tiny_bert,
                seed="3",
                **ncbi_data,
                params="params.yaml",
                out_dir=name,
                metrics=f"{name}.json",
                run_record=f"{name}-run.json",
            )
        )
    for file in ("model/model.safetensors", "model/config.json", "model/training.json", "test_predictions.tsv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a-run.json").read_text() != (tmp_path / "b-run.json").read_text()  # two MLflow runs
