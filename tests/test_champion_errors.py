"""The champions' remaining errors by cause (ehrbert.analysis.champion_errors)."""

from __future__ import annotations

import pandas as pd
import pytest

from ehrbert.analysis import champion_errors
from ehrbert.corpora.records import Concept, Mention, Vocabulary
from ehrbert.predictions import PREDICTION_FILE

VOCABULARY = Vocabulary(
    [
        Concept("D1", "Melanoma"),
        Concept("D2", "Melanoma, familial"),
        Concept("D3", "Breast Neoplasms"),
        Concept("D4", "Rare syndrome"),
    ]
)
TRAIN = (
    [Mention("t1", ((0, 5),), "familial melanoma", ("D1",)), Mention("t2", ((0, 5),), "familial melanoma", ("D1",))]
    + [Mention("t3", ((0, 5),), "familial melanoma", ("D2",)), Mention("t4", ((0, 5),), "breast cancer", ("D3",))],
    ["familial melanoma", "familial melanoma", "familial melanoma", "breast cancer"],
)


def _mention(i: int, gold: tuple[str, ...]) -> Mention:
    return Mention("d1", ((i, i + 1),), f"m{i}", gold)


def _table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """Predictions rows (query, top_k) as the prediction files hold them."""
    return pd.DataFrame({"query": [q for q, _ in rows], "top_k": [k for _, k in rows]})


def test_each_error_gets_the_first_cause_that_holds_and_right_answers_none():
    cases = [
        (("D1",), "familial melanoma", "D1|D2", None),  # right
        (("OMIM:9",), "c9 deficiency", "D4|D1", "not_in_vocabulary"),
        (("D4",), "rare thing", "D1|D4", "unseen_concept"),  # D4 has no training mention
        (("D2",), "familial melanoma", "D1|D2", "training_disagrees"),  # training says D1 twice, D2 once
        (("D1",), "familial melanoma", "D2|D1", "text_in_training"),  # training says D1, answered D2
        (("D3",), "malignant breast disease", "D1", "seen_other_name"),  # D3 seen under another text; not in top_k
        ((), "no concept here", "D1", None),  # a mention without a concept is no acc@1 error
    ]
    mentions = [_mention(i, gold) for i, (gold, *_rest) in enumerate(cases)]
    table = _table([(query, top_k) for _, query, top_k, _ in cases])
    found = champion_errors.errors(mentions, table, VOCABULARY, TRAIN)
    assert found["cause"].tolist() == [c for *_rest, c in cases if c]
    assert found["reachable"].tolist() == [False, True, True, True, False]
    assert found.loc[found["cause"] == "training_disagrees", "training"].item() == "D1"
    assert found.loc[found["cause"] == "seen_other_name", "answer"].item() == "D1 Melanoma"

    tally = champion_errors.counts(found, "ncbi", tested=6)
    assert tally["cause"].tolist() == list(champion_errors.CAUSES)
    assert tally["errors"].tolist() == [1, 1, 1, 1, 1] and tally["reachable"].sum() == 3
    report = champion_errors.markdown([("ncbi", "hybrid_rerank", 2, tally, champion_errors.examples(found, 8))])
    assert "5 errors in 6 test mentions with a concept (acc@1 16.67)" in report
    assert '"m3" (d1): gold D2 Melanoma, familial; answered D1 Melanoma; training: D1' in report
    hidden = champion_errors.markdown([("cadec", "hybrid_rerank", 2, tally, None)])
    assert "m3" not in hidden and "may not be redistributed" in hidden


def _runs(tmp_path, variant: str | None) -> pd.DataFrame:
    folder = tmp_path / "outputs" / "rerank" / "ncbi-s2"
    (folder / "model").mkdir(parents=True)
    row = {"corpus": "ncbi", "mentions": "gold", "model": "hybrid_rerank", "seed": 2}
    return pd.DataFrame([{**row, "model_dir": str(folder / "model"), "variant": variant}])


def test_the_champions_predictions_are_found_from_compares_outputs_or_the_error_names_them(tmp_path):
    compare = {"ncbi": {"champion": {"model": "hybrid_rerank", "seed": 2}}}
    runs = _runs(tmp_path, "hybrid_rerank")
    source = tmp_path / "runs.csv"
    with pytest.raises(SystemExit, match="no predictions .*hybrid_rerank_test_predictions.tsv"):
        champion_errors.champion_predictions(compare, runs, "ncbi", source)
    predictions = tmp_path / "outputs" / "rerank" / "ncbi-s2" / f"hybrid_rerank_{PREDICTION_FILE}"
    predictions.write_text("")
    assert champion_errors.champion_predictions(compare, runs, "ncbi", source) == ("hybrid_rerank", 2, predictions)
    with pytest.raises(SystemExit, match="no champion for cdr"):
        champion_errors.champion_predictions(compare, runs, "cdr", source)
    other_seed = {"ncbi": {"champion": {"model": "hybrid_rerank", "seed": 3}}}
    with pytest.raises(SystemExit, match=r"runs.csv: 0 runs of hybrid_rerank seed 3 on ncbi, expected 1"):
        champion_errors.champion_predictions(other_seed, runs, "ncbi", source)
    # a fine-tuned classifier's run has no variant: its predictions are test_predictions.tsv
    classifier = _runs(tmp_path / "c", None)
    (tmp_path / "c" / "outputs" / "rerank" / "ncbi-s2" / PREDICTION_FILE).write_text("")
    assert champion_errors.champion_predictions(compare, classifier, "ncbi", source)[2].name == PREDICTION_FILE
