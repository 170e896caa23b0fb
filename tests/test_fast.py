"""The served fast form (`ehrbert.models.fast`): built from a saved hybrid folder, it computes what the torch form
computes (tokens, query vectors, classifier top k, nearest names) and answers through the same decisions; a
registered hybrid version carries it and serves through it without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from ehrbert import registry, serving
from ehrbert.models import classifier, retrieval
from ehrbert.models.fast import FastNormalizer, FastOptions, build
from ehrbert.models.hybrid import HybridNormalizer

QUERIES = ["breast cancer", "colon cancer", "cancer of the breast", "breast and colon cancer", "zzz", "Café-au-lait"]


@pytest.fixture(scope="module")
def fast_folder(tiny_hybrid, tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "fast"
    build(tiny_hybrid, out)
    return out


def test_build_writes_each_encoder_in_fp32_and_int8_and_the_graph(fast_folder):
    manifest = json.loads((fast_folder / "fast.json").read_text())
    assert manifest["format"] == "ehrbert-fast/1" and manifest["classifier"] is True
    names = {"retriever.onnx", "retriever-int8.onnx", "classifier.onnx", "classifier-int8.onnx", "names.hnsw"}
    assert names <= {p.name for p in fast_folder.iterdir()}


def test_a_failed_build_leaves_nothing_behind(tiny_normalizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="hybrid.json"):  # a classifier folder has no fast form
        build(tiny_normalizer, tmp_path / "fast")
    assert list(tmp_path.iterdir()) == []


def test_the_fast_form_computes_what_the_torch_form_computes(tiny_hybrid, fast_folder):
    torch_form = HybridNormalizer.load(tiny_hybrid)
    fast = FastNormalizer.load_fast(tiny_hybrid, fast_folder, options=FastOptions(index="exact"))
    texts = [*QUERIES, "a much longer query " * 10]  # past max_length: truncated the same way

    # tokens: the tokenizers library on tokenizer.json, as transformers' fast tokenizer with the same settings
    expected = torch_form.tokenizer(texts, padding=True, truncation=True, max_length=torch_form.config.max_length)
    tokens = fast.retriever.tokens(texts)
    assert tokens["input_ids"].tolist() == expected["input_ids"]
    assert tokens["attention_mask"].tolist() == expected["attention_mask"]

    # query vectors: the exported mean pooling, against torch in fp32
    batch = torch_form.tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.inference_mode():
        reference = retrieval.mean_pool(torch_form.encoder, batch).numpy()
    (vectors,) = fast.retriever.run(texts)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)

    # the classifier's top k: the same labels and probabilities as `classifier.predict`
    ranked, probabilities = classifier.predict(
        torch_form.classifier, torch_form.classifier_tokenizer, texts, k=fast.classifier_top_k, max_length=24
    )
    for scores, labels, probs in zip(fast.classify(texts), ranked, probabilities):
        assert list(scores) == labels
        assert list(scores.values()) == pytest.approx(probs, abs=1e-5)


def test_the_graph_finds_what_the_exact_product_finds_and_names_meet_themselves(tiny_hybrid, fast_folder):
    exact = FastNormalizer.load_fast(tiny_hybrid, fast_folder, options=FastOptions(index="exact"))
    graph = FastNormalizer.load_fast(tiny_hybrid, fast_folder)  # hnsw, the default
    assert exact.index.embeddings is not None and graph.index.embeddings is None  # the graph holds the vectors
    for found, also in zip(exact.search(QUERIES), graph.search(QUERIES)):
        assert [p for p, _ in found] == [p for p, _ in also]
        assert [s for _, s in found] == pytest.approx([s for _, s in also], abs=1e-5)
    name = exact.index.texts[0]
    assert exact.search([name])[0][0] == (0, 1.0) and graph.search([name])[0][0] == (0, 1.0)
    assert [a.concept_ids for a in exact.predict(QUERIES)] == [a.concept_ids for a in graph.predict(QUERIES)]


def test_options_are_checked():
    for bad in ({"weights": "int4"}, {"index": "ivf"}, {"threads": -1}, {"ef_search": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FastOptions(**bad)
    with pytest.raises(ValueError, match="EHRBERT_THREADS"):
        serving.fast_options({}, {"EHRBERT_THREADS": "two"})
    assert serving.fast_options({"weights": "int8"}, {"EHRBERT_INDEX": "exact"}) == FastOptions("int8", "exact")


def test_a_registered_hybrid_serves_through_its_fast_form(
    tracking_store, tiny_hybrid, tiny_normalizer, tiny_concepts, fast_folder
):
    mlflow.set_experiment("fast")
    with mlflow.start_run() as run:
        mlflow.log_param("max_length", 24)
    registry.register_champion(run.info.run_id, "ehrbert-fast", tiny_hybrid, lambda: tiny_concepts, max_length=24)
    uri = "models:/ehrbert-fast@champion"
    model = mlflow.pyfunc.load_model(uri)
    assert isinstance(model.unwrap_python_model().model, FastNormalizer)
    assert model.model_config["runtime"] == "onnx" and model.model_config["index"] == "hnsw"
    mentions = pd.DataFrame({"mention": QUERIES})
    answers = model.predict(mentions)
    fast = FastNormalizer.load_fast(tiny_hybrid, fast_folder)
    found = fast.predict(serving.mention_queries(mentions))  # the queries as the pyfunc makes them
    expected = serving.answers_frame(tiny_concepts, [a.concept_ids for a in found], [a.score for a in found])
    pd.testing.assert_frame_equal(answers, expected)

    # the torch form on request (its query vectors are bf16: the answers agree, the scores to about 1e-2)
    torch_model = mlflow.pyfunc.load_model(uri, model_config={"runtime": "torch"})
    assert type(torch_model.unwrap_python_model().model) is HybridNormalizer
    assert torch_model.predict(mentions).columns.tolist() == answers.columns.tolist()
    with pytest.raises(ValueError, match="runtime 'tensorflow'"):
        mlflow.pyfunc.load_model(uri, model_config={"runtime": "tensorflow"})
    with mlflow.start_run():  # a version without the fast form runs in torch, and says so when asked for onnx
        info = registry.log_normalizer(tiny_normalizer, tiny_concepts, max_length=16)
    assert mlflow.pyfunc.load_model(info.model_uri).model_config["runtime"] == "torch"
    with pytest.raises(ValueError, match="no fast form"):
        mlflow.pyfunc.load_model(info.model_uri, model_config={"runtime": "onnx"})

    # the fast form loads without torch or transformers: that is what makes a server start in seconds
    code = (
        "import sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        "print(model.predict(pd.DataFrame({'mention': ['colon cancer']}))['concept_id'][0])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert shown[0] == answers["concept_id"][QUERIES.index("colon cancer")] and shown[1] == "[]"
