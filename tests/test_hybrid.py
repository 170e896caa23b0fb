"""Beyond the paper: retrieval over vocabulary names, composite and no-concept answers, raw text in, served.

Tiny randomly initialized BERTs stand in for the encoders; the end-to-end test runs the stage on the real
NCBI disease corpus and MEDIC, on a temporary MLflow store.
"""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ehrbert import cross_fit, finetune, hybrid, peers, registry, rerank, serving
from ehrbert.composite import split_coordination
from ehrbert.corpora.records import COMPOSITE, Concept, Mention, Vocabulary
from ehrbert.models import retrieval
from ehrbert.models.hybrid import VARIANTS, Answer, Candidates, HybridNormalizer, Settings, decide
from ehrbert.models.name_index import NameIndex
from ehrbert.models.retrieval import RetrievalConfig
from ehrbert.predictions import read_predictions, top1_correct

ROOT_PARAMS = hybrid.__file__.replace("src/ehrbert/hybrid.py", "params.yaml")


@pytest.mark.parametrize(
    "query, parts",
    [
        ("breast and ovarian cancer", ["breast cancer", "ovarian cancer"]),
        ("breast and or ovarian cancer", ["breast cancer", "ovarian cancer"]),
        ("colon breast or ovarian cancer", ["colon breast", "ovarian cancer"]),  # no shared head: the parts as they are
        ("cancers of the breast and ovary", ["cancers of the breast", "cancers of the ovary"]),
        ("deafness and blindness", ["deafness", "blindness"]),
        ("hereditary nonpolyposis colorectal cancer", []),
        ("and", []),
    ],
)
def test_split_coordination(query, parts):
    assert split_coordination(query) == parts


VOCABULARY = Vocabulary(
    [
        Concept("D1", "breast cancer", ("breast neoplasm",)),
        Concept("D2", "ovarian cancer"),
        Concept("D3", "wilson disease", ("hepatolenticular degeneration",)),
        Concept("D4", "fabry disease"),
        Concept("D5", "apc deficiency"),
    ]
)


def _mentions():
    composite = Mention("1", ((0, 25),), "breast and ovarian cancer", ("D1", "D2"), COMPOSITE)
    wilson = Mention("1", ((30, 44),), "Wilson's", ("D3",))
    return [composite, composite, wilson, Mention("1", ((50, 58),), "Wilson's", ("D4",))], [
        "breast and ovarian cancer",
        "breast and ovarian cancer",
        "wilsons",
        "wilsons",
    ]


def test_name_index_orders_tuples_by_training_frequency_and_round_trips(tmp_path):
    mentions, queries = _mentions()
    mentions[-1] = Mention("1", ((50, 58),), "Wilson's", ("D3",))  # wilsons: D3 twice, then D4 once
    mentions.append(Mention("1", ((60, 68),), "Wilson's", ("D4",)))
    index = NameIndex.build(VOCABULARY, mentions, [*queries, "wilsons"])
    concepts = dict(zip(index.texts, index.concepts))
    assert concepts["breast neoplasm"] == [("D1",)]
    assert concepts["breast and ovarian cancer"] == [("D1", "D2")]
    assert concepts["wilsons"] == [("D3",), ("D4",)]
    assert index.concept_ids() == {"D1", "D2", "D3", "D4", "D5"}
    index.embeddings = np.eye(len(index), 8, dtype=np.float32)
    index.save(tmp_path)
    loaded = NameIndex.load(tmp_path)
    assert loaded.texts == index.texts and loaded.concepts == index.concepts
    np.testing.assert_allclose(loaded.embeddings, index.embeddings)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="index.json: not a ehrbert-name-index/1 file"):
        NameIndex.load(tmp_path)


def _candidates():
    return Candidates(
        retrieval=[{"D1": 0.90, "D2": 0.85}, {"D1": 0.97, "D2": 0.97}, {"D3": 0.80, "D4": 0.70}, {"D5": 0.40}],
        best_tuple=[("D1",), ("D1", "D2"), ("D3",), ("D5",)],
        classifier=[{"D2": 0.9, "D1": 0.1}, {}, {}, {}],
        parts=[[], [], [("D3", 0.95), ("D4", 0.92)], []],
        floor=[0.85, 0.97, 0.70, 0.40],
    )


def test_a_concept_the_hits_lack_gets_the_kth_hits_cosine():
    # every top-k entry names D1 (an exact name at 1.0, the k-th entry at 0.8): the classifier's D9 may have at
    # most 0.8, so it never ties with D1 at w = 0, and at w > 0 outranks it only by a larger probability margin
    candidates = Candidates(
        retrieval=[{"D1": 1.0}], best_tuple=[("D1",)], classifier=[{"D9": 0.6, "D1": 0.3}], parts=[[]], floor=[0.8]
    )
    assert decide(candidates, Settings())[0].ranked == ["D1", "D9"]
    assert decide(candidates, Settings())[0].scores == pytest.approx([1.0, 0.8])
    assert decide(candidates, Settings(classifier_weight=0.5))[0].ranked == ["D1", "D9"]  # 1.15 > 1.1
    assert decide(candidates, Settings(classifier_weight=1.0))[0].ranked == ["D9", "D1"]  # 1.4 > 1.3


def test_decide_interpolates_the_classifier():
    assert decide(_candidates(), Settings())[0].concept_ids == ("D1",)  # retrieval alone
    answer = decide(_candidates(), Settings(classifier_weight=0.1))[0]  # 0.85 + 0.09 > 0.90 + 0.01
    assert answer.concept_ids == ("D2",) and answer.ranked == ["D2", "D1"] and answer.score == pytest.approx(0.94)


def test_decide_composite_and_no_concept():
    plain = decide(_candidates(), Settings())
    assert [a.concept_ids for a in plain] == [("D1",), ("D1",), ("D3",), ("D5",)]
    composite = decide(_candidates(), Settings(composite_threshold=0.9))
    assert composite[1].concept_ids == ("D1", "D2")  # a composite training mention's tuple
    assert composite[2].concept_ids == ("D3", "D4")  # every part at least 0.9
    assert decide(_candidates(), Settings(composite_threshold=0.93))[2].concept_ids == ("D3",)
    nil = decide(_candidates(), Settings(no_concept_threshold=0.5))
    assert nil[3].concept_ids == () and nil[3].ranked == ["D5"]  # no answer, the ranking is kept for acc@k
    assert nil[0].concept_ids == ("D1",)


def test_contrastive_training_lowers_the_loss_and_search_finds_exact_names(tiny_bert):
    model, tokenizer = retrieval.load_encoder(tiny_bert)
    names = retrieval.concept_names(VOCABULARY)
    mentions, queries = _mentions()
    pairs = retrieval.mention_pairs(mentions, queries, names)
    assert pairs == [
        ("breast and ovarian cancer", "D1"),
        ("breast and ovarian cancer", "D2"),
        ("wilsons", "D3"),
        ("wilsons", "D4"),
    ]
    config = RetrievalConfig(steps=50, batch_size=4, learning_rate=1e-3, synonym_fraction=0.5)
    history = retrieval.train_encoder(model, tokenizer, names, pairs, config, seed=0)
    assert [h["step"] for h in history] == [25, 50] and history[-1]["loss"] < history[0]["loss"]
    index = NameIndex.build(VOCABULARY)
    index.embed(model, tokenizer, config)
    found = retrieval.search(model, tokenizer, index, ["fabry disease", "apc deficiency"], config)
    assert [index.texts[hits[0][0]] for hits in found] == ["fabry disease", "apc deficiency"]
    assert found[0][0][1] == 1.0 and all(a[1] >= b[1] for a, b in zip(found[0], found[0][1:]))


def test_hard_negatives_are_the_nearest_texts_of_other_concepts(tiny_bert):
    names = {"D1": ["breast cancer", "mammary cancer"], "D2": ["ovarian cancer"], "D3": ["wilson disease"]}
    pairs = [("breast ca", "D1"), ("ovarian ca", "D2")]
    config = RetrievalConfig(hard_negatives=1, batch_size=4, steps=6, refresh_steps=3, learning_rate=1e-3)
    negatives = retrieval.Negatives(names, pairs, config)
    assert negatives.texts == [
        "breast cancer",
        "mammary cancer",
        "ovarian cancer",
        "wilson disease",
        "breast ca",
        "ovarian ca",
    ]
    # hand-made vectors: "breast ca" is nearest to "ovarian ca" (another concept), then to its own names
    negatives.vectors = torch.nn.functional.normalize(
        torch.tensor(
            [[1.0, 0.1, 0.0], [1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.9, 1.1, 0.0]]
        ),
        dim=-1,
    )
    assert negatives.mine(["breast ca"], ["D1"]) == ["ovarian ca"]  # its own concept's names are never negatives
    assert negatives.mine(["breast ca", "ovarian cancer"], ["D1", "D2"]) == ["ovarian ca", "breast ca"]
    assert negatives.concepts_of("ovarian ca") == {"D2"}
    # training with them: the loss goes down, the table is re-mined every `refresh_steps`
    model, tokenizer = retrieval.load_encoder(tiny_bert)
    config = RetrievalConfig(hard_negatives=2, refresh_steps=25, steps=50, batch_size=4, learning_rate=1e-3)
    pairs = [("breast and ovarian cancer", "D1"), ("wilsons", "D3")]
    history = retrieval.train_encoder(model, tokenizer, retrieval.concept_names(VOCABULARY), pairs, config, seed=0)
    assert history[-1]["loss"] < history[0]["loss"]


def test_score_reports_seen_unseen_and_no_concept():
    from ehrbert.corpora.records import NO_CONCEPT, Document
    from ehrbert.tasks import Task

    doc = Document(
        "1",
        "x" * 40,
        [
            Mention("1", ((0, 2),), "ab", ("D1",)),
            Mention("1", ((3, 5),), "cd", ("D5",)),
            Mention("1", ((6, 8),), "ef", (), NO_CONCEPT),
        ],
    )
    task = Task("toy", VOCABULARY, {"test": [doc]}, level="mention")
    answers = [Answer(["D1"], [0.9], ("D1",)), Answer(["D2"], [0.3], ()), Answer(["D4"], [0.2], ())]
    scores = hybrid.score(task, "test", answers, seen={"D1"})
    assert scores["acc1_seen"] == 1.0 and scores["acc1_unseen"] == 0.0 and scores["mentions_unseen"] == 1
    assert (scores["no_concept_precision"], scores["no_concept_recall"]) == (0.5, 1.0)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 1)


def test_peers_protocol_splits_composite_mentions_and_drops_the_concept_less():
    from ehrbert.corpora.records import NO_CONCEPT, Document
    from ehrbert.tasks import Task

    text = "breast and ovarian cancer; Wilson's; hand and foot syndrome; nothing"
    mentions = [
        Mention("1", ((0, 25),), "breast and ovarian cancer", ("D1", "D2"), COMPOSITE),  # two parts, two concepts
        Mention("1", ((27, 35),), "Wilson's", ("D3",)),
        Mention("1", ((37, 59),), "hand and foot syndrome", ("D4", "D5"), COMPOSITE),
        Mention("1", ((61, 68),), "nothing", (), NO_CONCEPT),
    ]
    task = Task("toy", VOCABULARY, {"test": [Document("1", text, mentions)]}, level="mention")
    queries, gold, counts = peers.protocol_queries(task, "test")
    assert queries[:3] == ["breast cancer", "ovarian cancer", "wilsons"]
    assert gold[:3] == [{"D1"}, {"D2"}, {"D3"}]
    # "hand and foot syndrome" -> "hand syndrome", "foot syndrome": as many parts as concepts, so split too
    assert queries[3:] == ["hand syndrome", "foot syndrome"] and gold[3:] == [{"D4"}, {"D5"}]
    assert counts == {
        "mentions": 4,
        "no_concept": 1,
        "composite_split": 2,
        "composite_whole": 0,
        "queries": 5,
    }
    three = Mention("1", ((0, 25),), "breast and ovarian cancer", ("D1", "D2", "D4"), COMPOSITE)
    task = Task("toy", VOCABULARY, {"test": [Document("1", text, [three])]}, level="mention")
    queries, gold, counts = peers.protocol_queries(task, "test")
    assert queries == ["breast and ovarian cancer"] and gold == [{"D1", "D2", "D4"}]  # kept whole: any is right
    assert counts["composite_whole"] == 1


def test_stage_logs_each_variant_and_serves_unseen_concepts_and_raw_text(
    argv, ncbi_data, tiny_bert, raw_data, tmp_path, tracking_store, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(open(ROOT_PARAMS))
    params["finetune"]["config"].update(max_epochs=1)
    params["hybrid"]["config"]["encoder"] = str(tiny_bert)
    params["hybrid"]["config"]["retrieval"].update(steps=2, batch_size=8)
    params["finetune"]["models"] = [{"name": "base", "path": str(tiny_bert)}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    finetune.main(
        argv(
            corpus="ncbi",
            model="base",
            model_path=tiny_bert,
            seed="1",
            params="params.yaml",
            out_dir="ft",
            metrics="ft.json",
            run_record="ft-run.json",
            **ncbi_data,
        )
    )
    hybrid.main(
        argv(
            corpus="ncbi",
            seed="1",
            params="params.yaml",
            classifier="ft",
            classifier_run_record="ft-run.json",
            out_dir="out",
            metrics="metrics.json",
            run_record="run.json",
            **ncbi_data,
        )
    )

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics) == list(VARIANTS)
    final = metrics["hybrid_no_concept"]["test"]
    assert final["mentions_seen"] + final["mentions_unseen"] == 960
    assert {"text_f1", "text_span_f1", "acc1_unseen", "no_concept_answers"} <= set(final)
    assert (tmp_path / "out" / "hybrid_no_concept_test_predictions.tsv").read_text().count("\n") == 961
    runs = mlflow.search_runs(experiment_names=["finetune-ncbi"]).set_index("tags.model")
    assert set(runs.index) == {"base", *VARIANTS}
    assert runs.loc["hybrid", "tags.classifier_run"] == runs.loc["base", "run_id"]
    assert runs.loc["hybrid_no_concept", "metrics.test_f1"] == pytest.approx(final["f1"])
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["runs"] == {v: runs.loc[v, "run_id"] for v in VARIANTS} and record["model_dir"] == "out/model"
    assert "retrieval_train_seconds" not in final and runs.loc["hybrid", "metrics.retrieval_train_seconds"] > 0

    # one model folder answers as any variant, as the stage scored it (the saved index is fp16, so a random
    # tiny encoder's near-ties may flip: agreement, not identity)
    test_predictions = pd.read_csv(
        tmp_path / "out" / "retrieval_test_predictions.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    retrieval_only = HybridNormalizer.load(tmp_path / "out" / "model", "retrieval")
    assert retrieval_only.settings == Settings(**metrics["retrieval"]["settings"])
    answers = retrieval_only.predict(test_predictions["query"].tolist())
    same = np.mean(["|".join(a.concept_ids) == p for a, p in zip(answers, test_predictions["predicted"])])
    assert same > 0.9
    with pytest.raises(ValueError, match="no variant 'hybrid_best'"):
        HybridNormalizer.load(tmp_path / "out" / "model", "hybrid_best")

    # the final variant's model, registered from the stage's output folder and loaded as the served pyfunc
    from types import SimpleNamespace

    from ehrbert.tasks import load_task

    task = load_task(
        "ncbi",
        SimpleNamespace(ncbi_dir=raw_data / "ncbi_disease", ncbi_vocabulary=raw_data / "medic" / "CTD_diseases.tsv.gz"),
        {},
    )
    names = {c.concept_id: c.name for c in task.vocabulary.concepts}
    version, _ = registry.register_champion(
        runs.loc["hybrid_no_concept", "run_id"],
        "ehrbert-ncbi",
        tmp_path / "out" / "model",
        lambda: names,
        variant="hybrid_no_concept",
    )
    served = mlflow.pyfunc.load_model("models:/ehrbert-ncbi@champion")
    seen = {c for m in task.mentions("train") for c in m.concept_ids}
    unseen = next(
        c for c in task.vocabulary.concepts if c.concept_id not in seen and c.name.lower() == "acromicric dysplasia"
    )
    answer = served.predict(pd.DataFrame({"mention": ["Acromicric dysplasia"]}))
    assert answer.loc[0, "concept_id"] == unseen.concept_id and answer.loc[0, "concept_name"] == unseen.name

    text = "Acromicric dysplasia and Wilson disease were seen."
    found = served.predict(pd.DataFrame({"text": [text]}))
    assert list(found.columns) == [
        "row",
        "start",
        "end",
        "mention",
        "concept_id",
        "concept_ids",
        "concept_name",
        "score",
    ]
    assert [text[s:e] for s, e in zip(found["start"], found["end"])] == found["mention"].tolist()
    assert "Acromicric dysplasia" in found["mention"].tolist()
    with pytest.raises(Exception, match="either 'mention'"):
        served.predict(pd.DataFrame({"text": [text], "mention": ["x"]}))

    # any other variant registers from the same folder and serves as itself
    registry.register_champion(
        runs.loc["retrieval", "run_id"],
        "ehrbert-ncbi-retrieval",
        tmp_path / "out" / "model",
        lambda: names,
        variant="retrieval",
    )
    served_retrieval = mlflow.pyfunc.load_model("models:/ehrbert-ncbi-retrieval@champion")
    frame = pd.DataFrame({"mention": test_predictions["mention"].tolist()[:20]})
    pd.testing.assert_frame_equal(
        served_retrieval.predict(frame), serving.normalize_mentions(retrieval_only, None, names, frame)
    )

    # the training split's cross-fitted candidates (ehrbert.cross_fit): each group answered without its mentions
    params["rerank"]["cross_fit"]["groups"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cross_fit.main(
        argv(
            corpus="ncbi",
            seed="1",
            params="params.yaml",
            hybrid="out",
            classifier="ft",
            classifier_metrics="ft.json",
            classifier_init=str(tiny_bert),
            out_dir="xfit",
            metrics="xfit.json",
            **ncbi_data,
        )
    )
    held_groups = cross_fit.read_candidates(tmp_path / "xfit", 5134)  # NCBI's training mentions, each held once
    assert len(held_groups) == 3 and all(len(g.candidates.classifier) == len(g.held) for g in held_groups)
    xfit = json.loads((tmp_path / "xfit.json").read_text())
    assert sum(xfit["group_mentions"]) == 5134 and 0 < xfit["train_acc1_cross_fitted"] < 1
    with pytest.raises(SystemExit, match="not each of the training split's 100 mentions"):
        cross_fit.read_candidates(tmp_path / "xfit", 100)

    # the second stage (ehrbert.rerank) on the hybrid's folder: each reading (dev's rows, the cross-fitted training
    # rows, both) judged on dev and the held-out training mentions, one run; its folder answers as hybrid_rerank
    # by default and as every earlier variant too
    rerank_argv = dict(
        corpus="ncbi",
        seed="1",
        params="params.yaml",
        hybrid="out",
        hybrid_run_record="run.json",
        out_dir="second",
        metrics="second.json",
        run_record="second-run.json",
        **ncbi_data,
    )
    with pytest.raises(SystemExit, match="needs the training split's cross-fitted candidates: --cross-fitted"):
        rerank.main(argv(**rerank_argv))
    rerank.main(argv(cross_fitted="xfit", **rerank_argv))
    second = json.loads((tmp_path / "second.json").read_text())["hybrid_rerank"]
    assert second["judge"] == "held_out" and set(second["readings"]) == set(rerank.READINGS)
    for entry in second["readings"].values():  # every training mention and dev's, judged once each
        assert entry["training"]["fixed"] <= entry["held_out"]["fixed"]
        assert entry["held_out"]["admitted"] == (
            entry["held_out"]["fixed"] > entry["held_out"]["broken"] and entry["held_out"]["p_value"] < 0.05
        )
    shipped = second["readings"][second["reading"]]["held_out"]
    assert second["rerank_used"] and shipped["admitted"]
    assert shipped["net"] == max(e["held_out"]["net"] for e in second["readings"].values() if e["held_out"]["admitted"])
    assert second["test"]["acc1"] > final["acc1"]  # a random tiny encoder leaves much to the lexical features
    runs = mlflow.search_runs(experiment_names=["finetune-ncbi"]).set_index("tags.model")
    assert runs.loc["hybrid_rerank", "tags.first_stage_run"] == runs.loc["hybrid_no_concept", "run_id"]
    assert runs.loc["hybrid_rerank", "params.rerank_used"] == "True"
    assert runs.loc["hybrid_rerank", "params.rerank_reading"] == second["reading"]
    assert (
        runs.loc["hybrid_rerank", "metrics.cross_fitted_held_out_fixed"]
        == (second["readings"]["cross_fitted"]["held_out"]["fixed"])
    )
    assert json.loads((tmp_path / "second-run.json").read_text())["model_dir"] == "second/model"
    reranked = HybridNormalizer.load(tmp_path / "second" / "model")
    assert reranked.rerank and HybridNormalizer.variants_in(tmp_path / "second" / "model")[-1] == "hybrid_rerank"
    assert not HybridNormalizer.load(tmp_path / "second" / "model", "hybrid_no_concept").rerank

    # a test mention the first stage answers wrong and the reranker right, served as each (the first stage as it
    # answers from the saved folder: its fp16 index may flip a tiny encoder's near-ties against the stage's run)
    fixed = read_predictions(tmp_path / "second" / "hybrid_rerank_test_predictions.tsv")
    first = HybridNormalizer.load(tmp_path / "second" / "model", "hybrid_no_concept").predict(fixed["query"].tolist())
    expected = {
        "hybrid_rerank": fixed["predicted"].tolist(),
        "hybrid_no_concept": ["|".join(a.concept_ids) for a in first],
    }
    gold = fixed["gold"].tolist()
    row = next(
        i
        for i in range(len(fixed))
        if not top1_correct(gold[i], expected["hybrid_no_concept"][i])
        and top1_correct(gold[i], expected["hybrid_rerank"][i])
    )
    monkeypatch.setenv("EHRBERT_INDEX", "exact")  # the fast form's exact product: the stage's candidates, not HNSW's
    for variant in ("hybrid_rerank", "hybrid_no_concept"):
        registry.register_champion(
            runs.loc[variant, "run_id"],
            f"ehrbert-ncbi-{variant}",
            tmp_path / "second" / "model",
            lambda: names,
            variant=variant,
        )
        served = mlflow.pyfunc.load_model(f"models:/ehrbert-ncbi-{variant}@champion")  # the fast form
        answer = served.predict(pd.DataFrame({"mention": [fixed.loc[row, "query"]]}))
        assert answer.loc[0, "concept_ids"] == expected[variant][row], variant

    # the peers' protocol: the encoder and the classifier retrained on train + dev, every reading on the same
    # test queries; the classifier must start where its train-only run started
    peers_argv = dict(
        corpus="ncbi", seed="1", params="params.yaml", hybrid="out", hybrid_run_record="run.json",
        classifier="ft", classifier_metrics="ft.json", metrics="peers/ncbi-s1.json", **ncbi_data,
    )  # fmt: skip
    with pytest.raises(ValueError, match="--classifier-init elsewhere: ft was fine-tuned from finetune.models 'base'"):
        peers.main(argv(classifier_init="elsewhere", **peers_argv))
    peers.main(argv(classifier_init=str(tiny_bert), **peers_argv))
    reading = json.loads((tmp_path / "peers" / "ncbi-s1.json").read_text())
    assert reading["mentions"] == 960 and reading["no_concept"] == 0
    assert reading["queries"] >= 960 + reading["composite_split"]  # each split composite: a query a part
    assert reading["classifier_weight"] == metrics["hybrid"]["settings"]["classifier_weight"]
    assert reading["classifier_epochs"] == json.loads((tmp_path / "ft.json").read_text())["best_epoch"]
    assert 0 < reading["train_only_acc1"] < 1 and 0 < reading["train_dev_acc1"] < 1
    assert 0 < reading["train_dev_train_only_classifier_acc1"] < 1
    # retrieval alone, the same models without the classifier: another reading of the same candidates
    assert 0 < reading["train_only_retrieval_acc1"] < 1 and 0 < reading["train_dev_retrieval_acc1"] < 1
    run = mlflow.search_runs(experiment_names=["peers-ncbi"]).iloc[0]
    assert run["tags.first_stage_run"] == record["runs"]["hybrid"]
    assert run["metrics.test_train_dev_acc1"] == pytest.approx(reading["train_dev_acc1"])
    params["peers"] = {"corpora": ["ncbi"], "seeds": [1]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    peers.report(["--metrics", "peers", "--params", "params.yaml", "--out", "peers.md"])
    table = (tmp_path / "peers.md").read_text()
    assert f"| ncbi | {reading['queries']} |" in table and f"{100 * reading['train_dev_acc1']:.2f} (0.00)" in table
    assert f"| {100 * reading['train_dev_retrieval_acc1']:.2f} (0.00) |\n" in table  # the last column


def test_variant_labels_name_only_the_components_switched_on():
    config = hybrid.HybridConfig(classifier_model="base")
    assert hybrid.variant_label("retrieval", "R", config) == "R"
    assert (
        hybrid.variant_label("hybrid_no_concept", "R", config)
        == "R + base classifier + composite mentions + no-concept threshold"
    )
    without = hybrid.HybridConfig(classifier=False, composite=True, no_concept=True)
    assert hybrid.variant_label("hybrid_no_concept", "R", without) == "R + composite mentions + no-concept threshold"


def test_switched_off_components_are_left_out_of_the_variants():
    from ehrbert.corpora.records import Document
    from ehrbert.tasks import Task

    doc = Document(
        "1",
        "x" * 80,
        [
            Mention("1", ((0, 25),), "breast and ovarian cancer", ("D1", "D2"), COMPOSITE),
            Mention("1", ((30, 44),), "wilson disease", ("D3",)),
            Mention("1", ((50, 58),), "fabry", ("D4",)),
        ],
    )
    task = Task("toy", VOCABULARY, {"dev": [doc]}, level="document")
    dev = Candidates(
        retrieval=[{"D1": 0.9}, {"D3": 0.95}, {"D4": 0.6, "D5": 0.59}],
        best_tuple=[("D1", "D2"), ("D3",), ("D4",)],
        classifier=[{}, {}, {}],
        parts=[[("D1", 0.9), ("D2", 0.9)], [], []],
        floor=[0.9, 0.95, 0.59],
    )
    config = hybrid.HybridConfig(classifier=False, composite=True, no_concept=True, composite_thresholds=[0.8])
    variants = hybrid.choose_settings(task, dev, config, seen={"D1", "D3"})
    assert [name for name, _, _ in variants] == ["retrieval", "hybrid_composite", "hybrid_no_concept"]
    composite = variants[1][1]
    assert composite.classifier_weight == 0.0 and composite.composite_threshold == 0.8  # both concepts: dev F1 up
    assert "composite_threshold" in variants[1][2] and variants[2][1].composite_threshold == 0.8
    only_retrieval = hybrid.HybridConfig(classifier=False, composite=False, no_concept=False)
    assert [name for name, _, _ in hybrid.choose_settings(task, dev, only_retrieval, seen=set())] == ["retrieval"]
