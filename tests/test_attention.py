import argparse
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ehrbert.analysis import attention
from ehrbert.corpora.records import Concept, Document, Mention, Vocabulary
from ehrbert.models import classifier
from ehrbert.predictions import predictions_table, run_folder
from ehrbert.tasks import Task, load_task
from ehrbert.tracking import start_run, write_run_record

CONCEPTS = [
    Concept("D1", "breast cancer"),
    Concept("D2", "ovarian cancer"),
    Concept("D3", "wilson disease"),
    Concept("D4", "fabry disease"),
]


def _saved_normalizer(tiny_bert, folder, vocabulary, seed=0):
    model, tokenizer = classifier.build(tiny_bert, vocabulary, dropout=0.1, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cls_attention_is_a_distribution_over_the_word_pieces(tiny_bert, tmp_path):
    folder = _saved_normalizer(tiny_bert, tmp_path / "m", Vocabulary(CONCEPTS))
    model, tokenizer = attention.load_for_attention(folder)
    pieces, weights = attention.cls_attention(model, tokenizer, "wilson disease", max_length=24)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) >= 4  # at least one piece per word
    assert weights.shape == (2, 2, len(pieces))  # (layers, heads, pieces) of the tiny BERT
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)

    # the default (SDPA) model returns no weights: said plainly instead of an empty figure
    sdpa, _ = classifier.load(folder)
    with pytest.raises(ValueError, match="eager"):
        attention.cls_attention(sdpa, tokenizer, "wilson disease", max_length=24)
    # eager attention is the same arithmetic: the same probabilities
    queries = ["wilson disease", "breast and ovarian cancer"]
    eager_ranked, eager_scores = classifier.predict(model, tokenizer, queries, k=4)
    sdpa_ranked, sdpa_scores = classifier.predict(sdpa, tokenizer, queries, k=4)
    assert eager_ranked == sdpa_ranked
    np.testing.assert_allclose(eager_scores, sdpa_scores, atol=1e-5)

    p = attention.panel("m", model, tokenizer, "wilson disease", top_k=3, max_length=24)
    assert p.per_layer.shape == (2, len(pieces)) and len(p.ranked) == 3 and p.scores == sorted(p.scores, reverse=True)


def test_resolve_fills_text_query_and_gold_and_checks_the_text():
    doc = Document("7", "Wilson disease (WD) is rare. WD patients.")
    doc.mentions = [Mention("7", ((0, 14),), "Wilson disease", ("D3",)), Mention("7", ((29, 31),), "WD", ("D3",))]
    task = Task("toy", Vocabulary(CONCEPTS), {"train": [], "dev": [], "test": [doc]}, level="document")
    case = attention.resolve([attention.Case("toy", "7", "29 31", why="abbreviation")], task)[0]
    assert (case.text, case.query, case.gold) == ("WD", "wilson disease", ("D3",))
    assert case.stem == "attention_toy_7_29-31"
    with pytest.raises(ValueError, match="params say"):
        attention.resolve([attention.Case("toy", "7", "29 31", text="Wilson")], task)
    with pytest.raises(ValueError, match="no test mention"):
        attention.resolve([attention.Case("toy", "7", "0 5")], task)


def test_pick_disagreements_both_directions_most_confident_first():
    table = pd.DataFrame(
        {
            "doc_id": ["1", "1", "2", "2", "3"],
            "spans": ["0 2", "5 9", "0 2", "4 8", "0 3"],
            "query": ["wd", "fabry disease", "wd", "cancer", "bc"],
            "gold": ["D3", "D4", "D3", "D1|D2", "D1"],
        }
    )
    base = table.assign(predicted=["D4", "D4", "D1", "D1", "D2"], score=[0.9, 0.8, 0.7, 0.6, 0.5])
    ehr = table.assign(predicted=["D3", "D1", "D3", "D2", "D1"], score=[0.5, 0.6, 0.95, 0.7, 0.8])
    cases = attention.pick_disagreements("toy", {"base": base, "ehr_full": ehr}, ["base", "ehr_full"], n=2, seed=1)
    # ehr_full alone right: rows 0, 2 (same query "wd": one kept, the more confident) and 4;
    # then base alone right: row 1
    assert [(c.doc_id, c.spans) for c in cases] == [("2", "0 2"), ("3", "0 3"), ("1", "5 9")]
    assert (
        cases[0].why == "ehr_full right, base wrong (seed 1)" and cases[-1].why == "base right, ehr_full wrong (seed 1)"
    )
    excluded = attention.pick_disagreements(
        "toy", {"base": base, "ehr_full": ehr}, ["base", "ehr_full"], n=1, exclude={("2", "0 2")}
    )
    assert [(c.doc_id, c.spans) for c in excluded] == [("3", "0 3"), ("1", "5 9")]


def _finetune_output(tiny_bert, task, root, model_name, seed):
    """What the fine-tuning stage leaves for a run: an MLflow run, the model folder (with its training record)
    in the output folder, and the run record."""
    tags = {"model": model_name, "model_label": model_name, "corpus": task.name, "seed": str(seed), "mentions": "gold"}
    with start_run(
        experiment=f"finetune-{task.name}", run_name=f"{model_name}-{task.name}-s{seed}", tags=tags, params={}
    ) as run:
        mlflow.log_params({"max_length": 24, "seed": seed})
    folder = run_folder(root, model_name, task.name, seed)
    torch.manual_seed(seed)
    _saved_normalizer(tiny_bert, folder / classifier.MODEL_DIR, task.vocabulary, seed)
    (folder / classifier.MODEL_DIR / classifier.TRAINING_FILE).write_text(json.dumps({"config": {"max_length": 24}}))
    write_run_record(
        root.parent / "runs" / f"{folder.name}.json", {"gold": run.info.run_id}, experiment=f"finetune-{task.name}"
    )


def _write_predictions(task, root, model, seed, right):
    mentions, queries = task.mentions("test"), task.queries("test")
    ranked = [[m.concept_ids[0] if (m.concept_ids and right(i)) else "D000001"] for i, m in enumerate(mentions)]
    scores = [[0.9 - 0.0001 * i] for i in range(len(mentions))]
    folder = run_folder(root, model, task.name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    predictions_table(task, "test", queries, ranked, scores).to_csv(
        folder / "test_predictions.tsv", sep="\t", index=False
    )


def test_main_draws_each_case_for_each_model_and_logs_to_mlflow(
    tiny_bert, raw_data, tmp_path, tracking_store, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        ncbi_dir=raw_data / "ncbi_disease", ncbi_vocabulary=raw_data / "medic" / "CTD_diseases.tsv.gz"
    )
    task = load_task("ncbi", args, {})
    for model_name in ("base", "ehr_full"):
        _finetune_output(tiny_bert, task, tmp_path / "ft", model_name, seed=1)
    _write_predictions(task, tmp_path / "ft", "base", 1, lambda i: i % 3 != 0)
    _write_predictions(task, tmp_path / "ft", "ehr_full", 1, lambda i: i % 3 != 1)
    params = {
        "cadec_split": {},
        "case_study": {
            "models": ["base", "bio", "ehr_full"],  # no bio model: left out with a warning
            "mentions": [
                {"corpus": "ncbi", "doc_id": 9949209, "spans": "655 657", "text": "CT", "why": "abbreviation"}
            ],
            "seed": 1,
            "top_k": 3,
            "compare": ["base", "ehr_full"],
            "disagreements": 1,
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    attention.main(
        [
            "--predictions",
            "ft",
            "--run-records",
            "runs",
            "--ncbi-dir",
            str(args.ncbi_dir),
            "--ncbi-vocabulary",
            str(args.ncbi_vocabulary),
            "--out-dir",
            "r/case_study",
            "--restricted-out-dir",
            "r/restricted/case_study",
        ]
    )

    out = tmp_path / "r" / "case_study"
    figures = sorted(p.name for p in out.glob("attention_*.png"))
    assert (
        len(figures) == 3 and "attention_ncbi_9949209_655-657.png" in figures
    )  # the chosen mention + one per direction
    top = pd.read_csv(out / "predictions.csv", dtype={"doc_id": str})
    assert len(top) == 3 * 2 * 3  # cases x models with a run x top-3
    chosen = top[top["case"] == "attention_ncbi_9949209_655-657"]
    assert set(chosen["query"]) == {"copper toxicosis"} and set(chosen["gold"]) == {"C566123"}
    assert set(top["why"]) == {
        "abbreviation",
        "ehr_full right, base wrong (seed 1)",
        "base right, ehr_full wrong (seed 1)",
    }
    weights = pd.read_csv(out / "attention.csv")
    sums = weights.groupby(["case", "model", "layer"])["weight"].sum()
    assert len(sums) == 3 * 2 * 2 and np.allclose(sums, 1.0, atol=1e-4)
    assert pd.read_csv(tmp_path / "r" / "restricted" / "case_study" / "attention.csv").empty

    run = mlflow.search_runs(experiment_names=["case-study"]).iloc[0]
    assert (
        run["params.run_ncbi_base"] == json.loads((tmp_path / "runs" / "base-ncbi-s1.json").read_text())["runs"]["gold"]
    )
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "case_study")}
    assert "case_study/attention_ncbi_9949209_655-657.png" in logged
