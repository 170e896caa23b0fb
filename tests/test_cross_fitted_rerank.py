"""The cross-fitted reranker benchmark's own logic: the groups' candidates put back in the training split's
order, the first stage's settings chosen on them instead of on dev, and the kept cross-fitting."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from ehrbert.corpora.records import COMPOSITE, Concept, Document, Mention, Vocabulary
from ehrbert.hybrid import HybridConfig
from ehrbert.models.hybrid import Answer, Candidates, HybridNormalizer, Settings
from ehrbert.models.retrieval import RetrievalConfig
from ehrbert.tasks import Task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cross_fitted_rerank as bench  # noqa: E402

VOCABULARY = Vocabulary(
    [
        Concept("D1", "breast cancer"),
        Concept("D2", "ovarian cancer"),
        Concept("D3", "wilson disease"),
        Concept("D4", "fabry disease"),
        Concept("D5", "apc deficiency"),
    ]
)


def candidates(rows: list[tuple]) -> Candidates:
    """Candidates of (retrieval, best tuple, parts, floor) rows, without a classifier."""
    return Candidates(
        retrieval=[r[0] for r in rows],
        best_tuple=[r[1] for r in rows],
        classifier=[],
        parts=[r[2] for r in rows],
        floor=[r[3] for r in rows],
    )


COMPOSITE_ROW = ({"D1": 0.9}, ("D1",), [("D1", 0.9), ("D2", 0.9)], 0.9)
WILSON_ROW = ({"D3": 0.95}, ("D3",), [], 0.95)
FABRY_ROW = ({"D4": 0.6, "D5": 0.59}, ("D4",), [], 0.59)


def test_groups_candidates_are_put_back_in_split_order():
    held = [
        bench.Held(np.array([1]), candidates([WILSON_ROW])),
        bench.Held(np.array([0, 2]), candidates([COMPOSITE_ROW, FABRY_ROW])),
    ]
    merged = bench.in_split_order(held)
    assert merged == candidates([COMPOSITE_ROW, WILSON_ROW, FABRY_ROW])
    assert merged.classifier == []  # no classifier in any group: none in the whole


def test_settings_are_chosen_on_the_training_candidates_not_on_dev():
    train = Document(
        "1",
        "x" * 80,
        [
            Mention("1", ((0, 25),), "breast and ovarian cancer", ("D1", "D2"), COMPOSITE),
            Mention("1", ((30, 44),), "wilson disease", ("D3",)),
            Mention("1", ((50, 58),), "fabry", ("D4",)),
        ],
    )
    dev = Document("2", "x" * 40, [Mention("2", ((0, 14),), "wilson disease", ("D3",))])
    task = Task("toy", VOCABULARY, {"train": [train], "dev": [dev], "test": []}, level="document")
    held = [
        bench.Held(np.array([0, 2]), candidates([COMPOSITE_ROW, FABRY_ROW])),
        bench.Held(np.array([1]), candidates([WILSON_ROW])),
    ]
    config = HybridConfig(classifier=False, composite=True, no_concept=False, composite_thresholds=[0.8])
    settings, tables = bench.chosen_on_training(task, config, held, seen=set())
    assert settings.composite_threshold == 0.8  # the training split's composite mention is answered whole
    assert set(tables) == {"composite_threshold"}
    assert task.splits["dev"] == [dev]  # the task itself is left as it was


def test_the_cross_fitting_is_kept_for_its_fingerprint_only(tmp_path):
    made = []

    def make():
        made.append(1)
        return [bench.Held(np.array([0]), candidates([WILSON_ROW]))]

    cache = tmp_path / "kept" / "ncbi-s1.pkl"
    first, _ = bench.kept_candidates(cache, "a", make)
    again, _ = bench.kept_candidates(cache, "a", make)
    assert len(made) == 1 and again[0].candidates == first[0].candidates
    bench.kept_candidates(cache, "b", make)  # another first stage: made again
    assert len(made) == 2
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ncbi-s1.pkl"]  # nothing half-written left


def test_fingerprint_follows_every_file(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"1")
    before = bench.fingerprint_of(tmp_path / "m")
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"2")
    assert bench.fingerprint_of(tmp_path / "m") != before


def test_a_groups_own_encoder_answers_with_the_hybrids_settings(monkeypatch):
    trained = []

    def first_stage(task, config, seed, mentions, queries, accelerator):  # the training itself is the stage's
        trained.append(list(queries))
        return HybridNormalizer(None, None, None, RetrievalConfig())

    monkeypatch.setattr(bench, "first_stage", first_stage)
    full = HybridNormalizer(None, None, None, RetrievalConfig(), classifier_max_length=40, classifier_top_k=7)
    full.settings = Settings(classifier_weight=0.2, no_concept_threshold=0.6)
    own = bench.trained_without(full, None, HybridConfig(), 1, [], ["wilson disease"], None)
    assert trained == [["wilson disease"]]  # trained on the other groups' mentions alone
    assert (own.classifier_max_length, own.classifier_top_k, own.settings) == (40, 7, full.settings)


def test_the_classifier_is_fine_tuned_again_from_its_runs_folder(monkeypatch, tmp_path):
    paths = []
    monkeypatch.setattr(bench, "training_record", lambda folder: paths.append(folder) or {"model": "base"})

    def retrain(task, run, metrics, start, params, seed, accelerator):
        paths.extend([run, metrics, start])
        return "model", "tokenizer", {}

    monkeypatch.setattr(bench, "retrain_classifier_on_train_and_dev", retrain)
    params = {
        "hybrid": {"config": {"classifier_model": "base"}},
        "finetune": {"models": [{"name": "base", "path": "m"}]},
    }
    task = Task("toy", VOCABULARY, {"train": [], "dev": [], "test": []}, level="document")
    assert bench.classifier_without(task, "ncbi", 2, params, [], [], None) == ("model", "tokenizer")
    assert paths == [
        bench.ROOT / "outputs/finetune/base-ncbi-s2",
        Path("outputs/finetune/base-ncbi-s2"),
        Path("metrics/finetune/base-ncbi-s2.json"),
        Path("m"),
    ]


def test_cadec_is_named_again_without_a_held_group(tiny_raw_data):
    from ehrbert.tasks import load_cadec_task

    task = load_cadec_task(tiny_raw_data / "cadec", seed=13, dev_fraction=0.1, test_fraction=0.2)
    rename = bench.names_without(task)
    named = lambda vocabulary: [(c.concept_id, c.names) for c in vocabulary.concepts]
    assert named(rename(set())) == named(task.vocabulary)  # nothing held: the task's own vocabulary
    key = lambda text: " ".join(text.split()).casefold()
    lost_somewhere = False
    for doc in task.splits["train"]:
        held = rename({doc.doc_id})
        assert [c.concept_id for c in held.concepts] == [c.concept_id for c in task.vocabulary.concepts]
        lost = {key(n) for _, names in named(task.vocabulary) for n in names}
        lost -= {key(n) for _, names in named(held) for n in names}
        own = {key(m.text) for m in doc.mentions} | {key(note) for note in doc.notes.values()}
        assert lost <= own  # only the held post's own texts and notes stop being names
        lost_somewhere |= bool(lost)
    assert lost_somewhere
    assert bench.names_without(dataclasses.replace(task, name="ncbi")) is None  # MEDIC holds no mention text


def test_kept_groups_written_by_the_script_run_as_main_are_read_by_another_benchmark(monkeypatch, tmp_path):
    import pickle
    from typing import NamedTuple

    class Held(NamedTuple):  # the script's own class, as `python benchmarks/cross_fitted_rerank.py` pickles it
        held: np.ndarray
        candidates: Candidates

    Held.__module__, Held.__qualname__ = "__main__", "Held"
    monkeypatch.setattr(sys.modules["__main__"], "Held", Held, raising=False)
    cache = tmp_path / "ncbi-s1.pkl"
    groups = [Held(np.array([0]), candidates([WILSON_ROW]))]
    cache.write_bytes(pickle.dumps({"fingerprint": "a", "groups": groups, "seconds": 3.0}))
    monkeypatch.delattr(sys.modules["__main__"], "Held")
    kept, seconds = bench.kept_candidates(cache, "a", lambda: pytest.fail("kept groups are made again"))
    assert seconds == 3.0 and type(kept[0]) is bench.Held and kept[0].candidates == groups[0].candidates


def test_a_reading_is_judged_on_dev_and_on_held_out_training_mentions():
    wilson, fabry = Mention("2", ((0, 6),), "wilson", ("D3",)), Mention("2", ((10, 15),), "fabry", ("D4",))
    dev = Document("2", "x" * 20, [wilson, fabry])
    test = Document("3", "x" * 20, [Mention("3", ((0, 6),), "wilson", ("D3",))])
    task = Task("toy", VOCABULARY, {"train": [], "dev": [dev], "test": [test]}, level="document")
    right = lambda c: Answer([c, "D5"], [0.9, 0.1], (c,))
    first, reranked = [right("D5"), right("D4")], [right("D3"), right("D4")]  # dev: one fixed, none broken
    held = ([wilson, fabry], [right("D5"), right("D5")], [right("D3"), right("D4")])  # training: two fixed
    out = bench.judged(task, set(), 0.2, (first, reranked), ([right("D3")], [right("D3")]), held, reranks=True)
    assert (out["dev_fixed"], out["dev_broken"], out["dev_p_value"]) == (1, 0, 0.5)
    assert not out["used"]  # one fixed mention is no evidence at P < 0.2
    assert (out["train_fixed"], out["train_broken"], out["held_out_p_value"]) == (2, 0, 0.125)
    assert out["used_held_out"]  # three fixed, none broken over training and dev together: P = 1/8
    assert (out["test_fixed"], out["test_broken"], out["test"]["acc1"]) == (0, 0, 1.0)
    first_stage = bench.judged(task, set(), 0.2, (first, first), ([right("D3")], [right("D3")]), None, reranks=False)
    assert not first_stage["used"] and "used_held_out" not in first_stage
