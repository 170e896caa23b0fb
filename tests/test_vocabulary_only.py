"""A normalizer from a vocabulary alone (`ehrbert.vocabulary_only`): built from MEDIC with the tiny BERT as its
encoder, no NCBI training mention anywhere in it, scored on NCBI test, registered, and served by the project's
pyfunc as the in-process model answers."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from ehrbert import vocabulary_only
from ehrbert.corpora.medic import read_medic
from ehrbert.models.hybrid import HybridNormalizer
from ehrbert.models.name_index import NameIndex

ROOT = Path(__file__).resolve().parents[1]


def test_a_vocabulary_alone_is_scored_registered_and_served(
    argv, ncbi_data, tiny_bert, tmp_path, tracking_store, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["vocabulary_only"]["encoder"] = str(tiny_bert)
    params["vocabulary_only"]["retrieval"].update(steps=2, batch_size=8, embed_batch_size=256)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    vocabulary_only.main(
        argv(
            vocabulary=ncbi_data["ncbi_vocabulary"],
            format="medic",
            params="params.yaml",
            out_dir="out",
            evaluate="ncbi",
            metrics="metrics.json",
            register="ehrbert-medic-only",
            **ncbi_data,
        )
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mentions_seen"] + metrics["mentions_unseen"] == 960 and 0 <= metrics["acc1"] <= 1
    assert "no_concept_f1" not in metrics  # it never answers "no concept"

    model = HybridNormalizer.load(tmp_path / "out" / "model")
    medic = read_medic(ncbi_data["ncbi_vocabulary"])
    assert model.index.texts == NameIndex.build(medic).texts  # names and synonyms only: no training mention
    assert model.classifier is None and model.settings.composite_threshold is None
    assert model.settings.no_concept_threshold is None and model.config.synonym_fraction == 1.0

    run = mlflow.search_runs(experiment_names=["vocabulary-only"]).iloc[0]
    assert run["tags.model"] == "vocabulary_only" and run["metrics.test_acc1"] == pytest.approx(metrics["acc1"])
    served = mlflow.pyfunc.load_model("models:/ehrbert-medic-only@champion")
    queries = ["copper toxicosis", "colorectal cancer", "huntington disease"]
    answers = served.predict(pd.DataFrame({"mention": queries}))
    assert answers["concept_id"].tolist() == [a.concept_ids[0] for a in model.predict(queries)]
    assert all(concept_id in medic for concept_id in answers["concept_id"])
