import argparse
import math

import mlflow
import pandas as pd
import pytest
import yaml

from ehrbert.analysis import errors
from ehrbert.corpora.records import COMPOSITE, NO_CONCEPT, Mention
from ehrbert.predictions import find_prediction_files, predictions_table, run_folder
from ehrbert.tasks import load_task

CONFIG = errors.ErrorAnalysisConfig(models=["base", "bio", "ehr_half", "ehr_full"])


def _mention(doc_id, start, text, ids, relation="single"):
    return Mention(doc_id, ((start, start + len(text)),), text, tuple(ids), relation)


# Training counts: D3 twice, D1 once, D2 six times, D4 never.
TRAIN = [
    _mention("t1", 0, "Wilson disease", ["D3"]),
    _mention("t1", 20, "WD", ["D3"]),
    _mention("t2", 0, "breast cancer", ["D1"]),
    *[_mention("t3", 20 * i, "ovarian cancer", ["D2"]) for i in range(6)],
]
TEST = [
    _mention("1", 0, "Wilson disease", ["D3"]),
    _mention("1", 20, "WD", ["D3"]),
    _mention("1", 30, "breast and ovarian cancer", ["D1", "D2"], COMPOSITE),
    _mention("2", 0, "Fabry disease", ["D4"]),
    _mention("2", 20, "unknown disease", [], NO_CONCEPT),
]
QUERIES = ["wilson disease", "wilson disease", "breast and ovarian cancer", "fabry disease", "unknown disease"]
PREDICTED = ["D3", "D4", "D1", "D4", "D3"]  # right, wrong, one of two, right (unseen), a concept for none


def _features():
    return errors.mention_features(TEST, QUERIES, errors.concept_frequencies(TRAIN), CONFIG)


def test_buckets_and_labels():
    assert errors.bucket_labels([0, 1, 5, 20], low=0) == ["0", "1", "2-5", "6-20", ">20"]
    assert errors.bucket_labels([1, 2, 3], low=1) == ["1", "2", "3", ">3"]
    assert errors.bucket_labels([2, 4], low=1) == ["1-2", "3-4", ">4"]
    assert [errors.bucket(v, [0, 1, 5, 20], 0) for v in (0, 1, 2, 5, 6, 20, 21)] == [
        "0",
        "1",
        "2-5",
        "2-5",
        "6-20",
        "6-20",
        ">20",
    ]


@pytest.mark.parametrize(
    "text, query, expected",
    [
        ("CT", "copper toxicosis", True),  # Ab3P expanded it
        ("von Hippel-Lindau (VHL) tumor", "von hippel lindau tumor", True),  # Ab3P dropped the short form
        ("BZS", "bzs", True),  # Ab3P found no long form; still a short form
        ("XDR-TB", "xdr tb", True),
        ("SCA1", "sca1", True),
        ("Wilson disease", "wilson disease", False),
        ("SSc", "ssc", False),  # not all capitals (and Ab3P did not expand it here)
        ("KIDNEY PROBLEMS", "kidney problems", False),  # shouting, several words
        ("LIPITOR", "lipitor", False),  # longer than short_form_max_length
        ("A", "a", False),
    ],
)
def test_abbreviation_rule(text, query, expected):
    assert errors.is_abbreviation(text, query, max_length=6) is expected


def test_mention_features():
    features = _features()
    assert features["train_mentions"].tolist() == [2, 2, 1, 0, -1]
    assert features["seen"].tolist() == ["seen", "seen", "seen", "unseen", "no concept"]
    assert features["frequency"].tolist() == ["2-5", "2-5", "1", "0", "no concept"]
    assert features["abbreviation"].tolist() == [
        "no abbreviation",
        "abbreviation",
        "no abbreviation",
        "no abbreviation",
        "no abbreviation",
    ]
    assert features["composite"].tolist() == ["one ID", "one ID", "several IDs", "one ID", "no concept"]
    assert features["words"].tolist() == [2, 1, 4, 2, 2]
    assert features["length"].tolist() == ["2", "1", ">3", "2", "2"]
    assert features["spans"].tolist()[2] == "30 55" and features["gold"].tolist()[2] == "D1|D2"


def test_bucket_scores_by_hand():
    scores = errors.bucket_scores(TEST, _features(), PREDICTED, errors.bucket_order(CONFIG)).set_index(
        ["dimension", "bucket"]
    )
    order = list(scores.index)
    assert order[:4] == [("all", "all"), ("seen", "seen"), ("seen", "unseen"), ("seen", "no concept")]
    assert [b for d, b in order if d == "frequency"] == ["0", "1", "2-5", "no concept"]
    assert [b for d, b in order if d == "length"] == ["1", "2", ">3"]  # no 3-word mention: no row

    def check(key, mentions, acc1, precision, recall, f1):
        row = scores.loc[key]
        assert row["mentions"] == mentions
        assert math.isnan(row["acc1"]) if acc1 is None else row["acc1"] == pytest.approx(acc1)
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1))

    # all: acc@1 3/4 (the composite counts as right); mention level tp 2, fp 3 (wrong, composite, no concept), fn 2
    check(("all", "all"), 5, 3 / 4, 2 / 5, 2 / 4, 4 / 9)
    check(("seen", "seen"), 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3)
    check(("seen", "unseen"), 1, 1.0, 1.0, 1.0, 1.0)
    check(("seen", "no concept"), 1, None, 0.0, 0.0, 0.0)
    check(("frequency", "1"), 1, 1.0, 0.0, 0.0, 0.0)
    check(("frequency", "2-5"), 2, 1 / 2, 1 / 2, 1 / 2, 1 / 2)
    check(("abbreviation", "abbreviation"), 1, 0.0, 0.0, 0.0, 0.0)
    check(("abbreviation", "no abbreviation"), 4, 1.0, 2 / 4, 2 / 3, 4 / 7)
    check(("composite", "several IDs"), 1, 1.0, 0.0, 0.0, 0.0)  # right at acc@1, never at mention level
    check(("composite", "one ID"), 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3)
    check(("length", "2"), 3, 1.0, 2 / 3, 1.0, 0.8)
    assert scores.loc[("all", "all"), "share"] == 1.0 and scores.loc[("length", "2"), "share"] == pytest.approx(0.6)
    assert scores.loc[("seen", "seen"), "correct"] == 2 and scores.loc[("seen", "no concept"), "scored"] == 0


def test_bucket_summary_means_and_sds_over_seeds():
    features, order = _features(), errors.bucket_order(CONFIG)
    runs = pd.concat(
        [
            errors.bucket_scores(TEST, features, PREDICTED, order).assign(corpus="toy", model="m", seed=1),
            errors.bucket_scores(TEST, features, ["D3", "D3", "D1", "D1", "D3"], order).assign(
                corpus="toy", model="m", seed=2
            ),
        ]
    )
    summary = errors.bucket_summary(runs).set_index(["dimension", "bucket"])
    unseen = summary.loc[("seen", "unseen")]
    assert (unseen["seeds"], unseen["mentions"]) == (2, 1)
    assert unseen["acc1_mean"] == pytest.approx(0.5) and unseen["acc1_sd"] == pytest.approx(math.sqrt(0.5))
    assert summary.loc[("abbreviation", "abbreviation"), "acc1_mean"] == pytest.approx(0.5)
    single = errors.bucket_summary(runs[runs["seed"] == 1])
    assert single["acc1_sd"].isna().all() and list(single.columns[:8]) == [
        "corpus",
        "model",
        "dimension",
        "bucket",
        "mentions",
        "share",
        "scored",
        "seeds",
    ]


def test_disagreements_name_the_winner():
    def table(predicted):
        return pd.DataFrame({"predicted": predicted, "score": [0.9, 0.8, 0.7, 0.6, 0.5]})

    names = {"D1": "breast cancer", "D2": "ovarian cancer", "D3": "wilson disease", "D4": "fabry disease"}
    found = errors.disagreements(
        _features(),
        {"base": table(PREDICTED), "ehr_full": table(["D3", "D3", "D2", "D5", "D3"])},
        ["base", "ehr_full"],
        lambda cid: names.get(cid, cid),
    )
    assert found["mention"].tolist() == ["WD", "Fabry disease", "breast and ovarian cancer"]
    assert found["winner"].tolist() == ["ehr_full", "base", "both"]
    first = found.iloc[0]
    assert (first["base_predicted"], first["base_name"], first["base_correct"]) == ("D4", "fabry disease", False)
    assert (first["ehr_full_predicted"], first["ehr_full_correct"], first["abbreviation"]) == (
        "D3",
        True,
        "abbreviation",
    )
    assert found.iloc[2]["gold_names"] == "breast cancer | ovarian cancer"
    assert found.iloc[1]["ehr_full_name"] == "D5"  # not in the vocabulary: the ID itself


def _write_predictions(task, root, model, seed, right):
    """A predictions TSV as the fine-tuning stage writes it; mention i is right where right(i)."""
    mentions, queries = task.mentions("test"), task.queries("test")
    ranked = [
        [m.concept_ids[0] if (m.concept_ids and right(i)) else "D000001", "D003924"] for i, m in enumerate(mentions)
    ]
    scores = [[0.9 - 0.0001 * i, 0.05] for i in range(len(mentions))]
    folder = run_folder(root, model, task.name, seed)
    folder.mkdir(parents=True)
    predictions_table(task, "test", queries, ranked, scores).to_csv(
        folder / "test_predictions.tsv", sep="\t", index=False
    )


def test_main_writes_tables_figures_plot_data_and_logs_to_mlflow(raw_data, tmp_path, tracking_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        ncbi_dir=raw_data / "ncbi_disease", ncbi_vocabulary=raw_data / "medic" / "CTD_diseases.tsv.gz"
    )
    task = load_task("ncbi", args, {})
    _write_predictions(task, tmp_path / "ft", "base", 1, lambda i: i % 2 == 0)
    _write_predictions(task, tmp_path / "ft", "base", 2, lambda i: i % 3 == 0)
    _write_predictions(task, tmp_path / "ft", "ehr_full", 1, lambda i: True)
    (tmp_path / "ft" / "ehr_full-ncbi-s2").mkdir()  # a run that did not finish: skipped
    assert list(find_prediction_files(tmp_path / "ft", "ncbi", ["base", "ehr_full"])) == [
        ("base", 1),
        ("base", 2),
        ("ehr_full", 1),
    ]
    params = {
        "cadec_split": {},
        "error_analysis": {
            "models": ["base", "ehr_full"],
            "corpora": ["ncbi", "cadec"],
            "restricted_corpora": ["ncbi"],
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    errors.main(
        [
            "--predictions",
            "ft",
            "--ncbi-dir",
            str(args.ncbi_dir),
            "--ncbi-vocabulary",
            str(args.ncbi_vocabulary),
            "--table",
            "r/error_analysis.csv",
            "--markdown",
            "r/error_analysis.md",
            "--examples",
            "r/error_analysis_examples.csv",
            "--restricted-examples",
            "r/restricted/error_analysis_examples.csv",
            "--figures",
            "r/figures",
            "--plot-data",
            "r/plots",
        ]
    )  # cadec has no predictions here: left out with a warning

    table = pd.read_csv(tmp_path / "r" / "error_analysis.csv", keep_default_na=False, na_values=[""])
    overall = table[table["dimension"] == "all"].set_index("model")
    assert overall.loc["base", "seeds"] == 2 and overall.loc["ehr_full", "seeds"] == 1
    assert overall.loc["base", "mentions"] == 960
    assert overall.loc["ehr_full", "acc1_mean"] == pytest.approx(1.0)
    unseen = table[(table["bucket"] == "unseen") & (table["model"] == "ehr_full")].iloc[0]
    assert unseen["acc1_mean"] == pytest.approx(1.0) and 0 < unseen["mentions"] < 960
    assert set(table["dimension"]) == {"all", *errors.DIMENSIONS}

    examples = pd.read_csv(
        tmp_path / "r" / "restricted" / "error_analysis_examples.csv", dtype=str, keep_default_na=False
    )
    assert pd.read_csv(tmp_path / "r" / "error_analysis_examples.csv").empty  # ncbi is "restricted" in this test
    assert len(examples) == sum(
        i % 2 == 1 for i, m in enumerate(task.mentions("test")) if m.concept_ids
    )  # base wrong at seed 1
    assert set(examples["winner"]) == {"ehr_full"} and set(examples["corpus"]) == {"ncbi"}

    markdown = (tmp_path / "r" / "error_analysis.md").read_text()
    assert "## ncbi" in markdown and f"for {len(examples)} of 960 test mentions" in markdown
    assert (tmp_path / "r" / "figures" / "error_analysis_ncbi.png").stat().st_size > 10_000
    plot = pd.read_csv(tmp_path / "r" / "plots" / "ncbi_seen.csv")
    assert list(plot.columns) == ["bucket_model", "bucket", "model", "mentions", "acc1", "f1"]
    assert "unseen | ehr_full" in set(plot["bucket_model"])

    run = mlflow.search_runs(experiment_names=["error-analysis"]).iloc[0]
    assert run["metrics.ncbi/ehr_full/unseen_acc1"] == pytest.approx(1.0)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"error_analysis.csv", "error_analysis.md", "figures", "plots", "restricted"} <= logged


def test_predictions_must_be_the_tasks_test_mentions(tmp_path):
    table = pd.DataFrame({"doc_id": ["1", "1"], "spans": ["0 14", "20 22"]})
    assert errors.aligned(table, TEST[:2], tmp_path) is table
    with pytest.raises(ValueError, match="test mentions in order"):
        errors.aligned(table, TEST[1:3], tmp_path)
