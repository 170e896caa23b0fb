"""The comparison stage: tables and t-tests from hand-made runs, champion choice, and the registry.

Hand-checked numbers (ncbi, gold mentions, test F1 per seed):
  base     0.70 0.73 0.71   mean 0.713333  SD sqrt(((-0.013333)^2 + 0.016667^2 + (-0.003333)^2) / 2) = 0.015275
  ehr_half 0.78 0.80 0.79   mean 0.79      SD 0.01
  ehr_full 0.80 0.82 0.84   mean 0.82      SD 0.02
Welch, ehr_full vs base: SE = sqrt(0.02^2/3 + 0.015275^2/3) = sqrt(0.00013333 + 0.00007778) = 0.014530,
t = (0.82 - 0.713333) / 0.014530 = 7.3413; df = 0.00021111^2 / (0.00013333^2/2 + 0.00007778^2/2) = 3.7409;
two-sided p = 2 * P(T_3.7409 > 7.3413) = 0.00237.
"""

import json
import math
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from ehrbert import compare
from ehrbert.tracking import write_run_record

F1 = {  # (corpus, mentions, model) -> test F1 of seeds 1, 2, 3
    ("ncbi", "gold", "base"): [0.70, 0.73, 0.71],
    ("ncbi", "gold", "ehr_half"): [0.78, 0.80, 0.79],
    ("ncbi", "gold", "ehr_full"): [0.80, 0.82, 0.84],
    ("cadec", "gold", "base"): [0.60, 0.62, 0.64],
    ("cadec", "gold", "ehr_half"): [0.66, 0.66, 0.65],
    ("cadec", "gold", "ehr_full"): [0.61, 0.66, 0.62],
    ("cadec", "predicted", "ehr_half"): [0.50, 0.52, 0.51],
}
CONFIG = compare.CompareConfig(
    corpora=["ncbi", "cdr", "cadec"],
    models=["base", "bio", "ehr_half", "ehr_full"],
    reference="base",
    champion_models=["ehr_half", "ehr_full"],
    components=[],
    alpha=0.05,
    baseline_labels={"vocab": "dictionary baseline (exact + TF-IDF), not DNorm"},
)
BASELINE = {
    "ncbi": {
        "vocab": {"precision": 0.74, "recall": 0.76, "f1": 0.75, "acc1": 0.79},
        "vocab+train": {"precision": 0.84, "recall": 0.86, "f1": 0.85, "acc1": 0.85},
    }
}


def raw_runs() -> pd.DataFrame:
    """What `mlflow.search_runs` returns for the runs of F1, plus a run of a model not in the params."""
    rows = []
    minute = 0
    for (corpus, mentions, model), scores in F1.items():
        for seed, f1 in enumerate(scores, start=1):
            minute += 1
            rows.append(
                {
                    "run_id": f"{corpus}-{mentions}-{model}-{seed}",
                    "start_time": pd.Timestamp(2025, 1, 1, 0, minute),
                    "tags.corpus": corpus,
                    "tags.mentions": mentions,
                    "tags.model": model,
                    "tags.seed": str(seed),
                    "tags.model_label": f"label of {model}",
                    "params.max_length": "24",
                    "metrics.test_f1": f1,
                    "metrics.dev_f1": f1,  # dev agrees with test here; see the dev-only test below
                    "metrics.test_precision": f1 - 0.01,
                    "metrics.test_recall": f1 + 0.01,
                    "metrics.test_acc1": f1 + 0.02,
                }
            )
    rows.append({**rows[0], "run_id": "foreign", "tags.model": "bert-large", "metrics.test_f1": 0.99})
    return pd.DataFrame(rows)


@pytest.fixture
def runs() -> pd.DataFrame:
    return compare.runs_table(raw_runs(), CONFIG.corpora, CONFIG.models)


def test_runs_table_keeps_the_runs_of_listed_models_in_order(runs):
    assert len(runs) == sum(len(s) for s in F1.values())
    assert "foreign" not in set(runs["run_id"])
    assert list(dict.fromkeys(runs["corpus"])) == ["ncbi", "cadec"]  # the order of CONFIG.corpora
    ncbi = runs[runs["corpus"] == "ncbi"]
    assert list(dict.fromkeys(ncbi["model"])) == ["base", "ehr_half", "ehr_full"]
    assert ncbi["seed"].tolist() == [1, 2, 3] * 3
    assert math.isnan(runs["micro_f1"].iloc[0])  # not logged: NaN, not an error
    assert runs["max_length"].iloc[0] == 24


def test_two_runs_for_one_seed_are_an_error_not_a_choice():
    raw = raw_runs()
    twice = pd.concat([raw, raw.iloc[[0]].assign(run_id="again", **{"metrics.test_f1": 0.1})], ignore_index=True)
    with pytest.raises(ValueError, match=r"ncbi/gold/base/seed 1: runs \['again', 'ncbi-gold-base-1'\]"):
        compare.runs_table(twice, CONFIG.corpora, CONFIG.models)


def test_welch_matches_the_hand_computed_test():
    t, p = compare.welch(F1[("ncbi", "gold", "ehr_full")], F1[("ncbi", "gold", "base")])
    assert t == pytest.approx(7.3413, abs=1e-3)
    assert p == pytest.approx(0.00237, abs=1e-5)
    assert compare.welch([0.8], [0.7, 0.72]) == pytest.approx((math.nan, math.nan), nan_ok=True)  # one run
    assert compare.welch([0.8, 0.8], [0.7, 0.7]) == pytest.approx((math.nan, math.nan), nan_ok=True)  # no spread


def test_summary_mean_sd_delta_and_p(runs):
    summary = compare.model_rows(runs, "base").set_index(["corpus", "mentions", "model"])
    full = summary.loc[("ncbi", "gold", "ehr_full")]
    assert full["seeds"] == 3
    assert full["f1_mean"] == pytest.approx(0.82)
    assert full["f1_sd"] == pytest.approx(0.02)
    assert full["precision_mean"] == pytest.approx(0.81)
    assert full["recall_mean"] == pytest.approx(0.83)
    assert full["delta_f1"] == pytest.approx(0.82 - 0.713333, abs=1e-6)
    assert full["p_value"] == pytest.approx(0.00237, abs=1e-5)
    base = summary.loc[("ncbi", "gold", "base")]
    assert base["f1_sd"] == pytest.approx(0.015275, abs=1e-6)
    assert base["delta_f1"] == 0 and math.isnan(base["p_value"])
    predicted = summary.loc[("cadec", "predicted", "ehr_half")]  # no base run on predicted mentions
    assert math.isnan(predicted["delta_f1"]) and math.isnan(predicted["p_value"])


def test_pairwise_ttests_cover_every_pair(runs):
    tests = compare.pairwise_ttests(runs, alpha=0.05)
    ncbi = tests[tests["corpus"] == "ncbi"].set_index(["model_a", "model_b"])
    assert set(ncbi.index) == {("base", "ehr_half"), ("base", "ehr_full"), ("ehr_half", "ehr_full")}
    row = ncbi.loc[("base", "ehr_full")]
    assert row["p_value"] == pytest.approx(0.00237, abs=1e-5) and row["t"] == pytest.approx(-7.3413, abs=1e-3)
    assert row["difference"] == pytest.approx(0.713333 - 0.82, abs=1e-6) and bool(row["significant"])
    assert len(tests[(tests["corpus"] == "cadec") & (tests["mentions"] == "predicted")]) == 0  # one model: no pair


def test_table2_adds_the_dictionary_rows_with_their_delta(runs):
    summary = compare.model_rows(runs, "base")
    table = compare.table2(summary, compare.baseline_rows(BASELINE, CONFIG.baseline_labels, CONFIG.corpora), "base")
    ncbi = table[table["corpus"] == "ncbi"].set_index("model")
    assert list(ncbi.index) == ["base", "ehr_half", "ehr_full", "dictionary:vocab", "dictionary:vocab+train"]
    assert ncbi.loc["dictionary:vocab", "model_label"] == "dictionary baseline (exact + TF-IDF), not DNorm"
    assert "not DNorm" in ncbi.loc["dictionary:vocab+train", "model_label"]  # a default label is honest too
    assert ncbi.loc["dictionary:vocab", "delta_f1"] == pytest.approx(0.75 - 0.713333, abs=1e-6)
    assert math.isnan(ncbi.loc["dictionary:vocab", "f1_sd"])
    assert list(dict.fromkeys(table["corpus"])) == ["ncbi", "cadec"]
    markdown = compare.table2_markdown(table, "base", 0.05)
    assert "82.00 (2.00), +10.67" in markdown  # ehr_full on ncbi: mean (SD), Δ
    assert "0.002 *" in markdown  # p of ehr_full vs base, marked significant


def test_champion_is_the_best_mean_notes_model_and_its_best_seed(runs):
    summary = compare.model_rows(runs, "base")
    champions = {c.corpus: c for c in compare.choose_champions(runs, summary, ["ehr_half", "ehr_full"], "base")}
    assert set(champions) == {"ncbi", "cadec"}  # predicted-mention runs never make a champion
    ncbi = champions["ncbi"]
    assert (ncbi.model, ncbi.seed, ncbi.run_id, ncbi.f1) == ("ehr_full", 3, "ncbi-gold-ehr_full-3", 0.84)
    assert ncbi.f1_mean == pytest.approx(0.82) and ncbi.p_value == pytest.approx(0.00237, abs=1e-5)
    cadec = champions["cadec"]  # ehr_half mean 0.6567 beats ehr_full 0.63; seeds 1 and 2 tie at 0.66
    assert (cadec.model, cadec.seed) == ("ehr_half", 1)


def test_champion_is_chosen_on_dev_and_test_only_reports_it(runs):
    ncbi = runs[runs["corpus"] == "ncbi"].copy()
    # test prefers ehr_full (mean 0.82, best seed 3); dev prefers ehr_half, and within it seed 2
    ncbi["dev_f1"] = ncbi["f1"]
    ncbi.loc[ncbi["model"] == "ehr_half", "dev_f1"] = [0.85, 0.90, 0.86]
    champion = compare.choose_champions(ncbi, compare.model_rows(ncbi, "base"), ["ehr_half", "ehr_full"], "base")[0]
    half = ncbi[(ncbi["model"] == "ehr_half") & (ncbi["seed"] == 2)].iloc[0]
    assert (champion.model, champion.seed, champion.run_id) == ("ehr_half", 2, half["run_id"])
    assert champion.f1 == half["f1"] and champion.dev_f1 == 0.90  # reported with its test F1
    assert champion.dev_f1_mean == pytest.approx(0.87)

    ncbi.loc[ncbi.index[4], "dev_f1"] = math.nan  # a candidate run from before dev F1 was logged
    with pytest.raises(ValueError, match=r"1 champion candidate runs log no dev_f1, e.g. run ncbi-gold-ehr_half-2"):
        compare.choose_champions(ncbi, compare.model_rows(ncbi, "base"), ["ehr_half", "ehr_full"], "base")


def test_champion_ties_go_to_the_model_listed_first(runs):
    tied = runs[runs["corpus"] == "ncbi"].copy()
    for column in ("f1", "dev_f1"):
        tied.loc[tied["model"] == "ehr_half", column] = tied.loc[tied["model"] == "ehr_full", column].to_numpy()
    summary = compare.model_rows(tied, "base")
    assert compare.choose_champions(tied, summary, ["ehr_half", "ehr_full"], "base")[0].model == "ehr_half"
    assert compare.choose_champions(tied, summary, ["ehr_full", "ehr_half"], "base")[0].model == "ehr_full"


# --- the stage on a real (temporary) MLflow store --------------------------------------------------


def log_finetune_runs(tmp_path: Path, model_dir: Path, scores: dict, record: bool = True) -> dict:
    """Fine-tuning runs as `ehrbert.finetune` leaves them (tags, test metrics, the model folder `model_dir` and,
    unless `record` is off, a run record in tmp_path/runs); {key: run_id}."""
    run_ids = {}
    for (corpus, mentions, model), values in scores.items():
        experiment = f"finetune-{corpus}"
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=(tmp_path / "artifacts" / experiment).as_uri())
        mlflow.set_experiment(experiment)
        for seed, f1 in enumerate(values, start=1):
            tags = {
                "model": model,
                "model_label": f"label of {model}",
                "corpus": corpus,
                "seed": str(seed),
                "mentions": mentions,
            }
            with mlflow.start_run(tags=tags) as run:
                mlflow.log_params({"max_length": 16, "batch_size": 32})
                mlflow.log_metrics(
                    {"test_f1": f1, "test_precision": f1, "test_recall": f1, "test_acc1": f1, "dev_f1": f1}
                )
            run_ids[(corpus, mentions, model, seed)] = run.info.run_id
            if record:
                path = tmp_path / "runs" / f"{model}-{corpus}-s{seed}.json"
                runs = json.loads(path.read_text())["runs"] if path.exists() else {}
                write_run_record(
                    path, {**runs, mentions: run.info.run_id}, experiment=experiment, model_dir=str(model_dir)
                )
    return run_ids


def run_stage(tmp_path: Path, *extra: str) -> dict:
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"compare": {**asdict(CONFIG), "corpora": ["ncbi", "cadec"]}, "cadec_split": {}}))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(BASELINE))
    metrics = tmp_path / "metrics" / "compare.json"
    compare.main(
        [
            "--baseline",
            str(baseline),
            "--reports",
            str(tmp_path / "reports"),
            "--metrics",
            str(metrics),
            "--run-records",
            str(tmp_path / "runs"),
            "--params",
            str(params),
            *extra,
        ]
    )
    return json.loads(metrics.read_text())


def test_stage_writes_reports_and_registers_champions_once(
    tmp_path, tracking_store, monkeypatch, tiny_normalizer, tiny_concepts
):
    scores = {key: value for key, value in F1.items() if key[1] == "gold"}
    run_ids = log_finetune_runs(tmp_path, tiny_normalizer, scores)
    loaded = []
    monkeypatch.setattr(compare, "concept_names", lambda corpus, args, split: loaded.append(corpus) or tiny_concepts)

    metrics = run_stage(tmp_path)
    reports = tmp_path / "reports"
    for name in (*compare.TABLE2_FILES, *compare.TTEST_FILES, compare.RUNS_FILE, compare.CHART_FILE):
        assert (reports / name).stat().st_size > 0, name
    assert (reports / compare.CHART_FILE).read_bytes()[:4] == b"\x89PNG"
    assert "dictionary baseline (exact + TF-IDF), not DNorm" in (reports / "table2.md").read_text()
    assert metrics["ncbi"]["ehr_full"]["f1"] == pytest.approx(0.82)
    assert metrics["ncbi"]["ehr_full"]["p_value"] == pytest.approx(0.00237, abs=1e-5)
    assert metrics["ncbi"]["base"]["p_value"] is None  # NaN is not JSON
    champion_metrics = metrics["ncbi"]["champion"]
    assert (champion_metrics["model"], champion_metrics["seed"], champion_metrics["f1"]) == ("ehr_full", 3, 0.84)
    assert champion_metrics["dev_f1"] == 0.84 and champion_metrics["dev_f1_mean"] == pytest.approx(0.82)

    client = MlflowClient()
    champion = client.get_model_version_by_alias("ehrbert-ncbi", "champion")
    assert champion.run_id == run_ids[("ncbi", "gold", "ehr_full", 3)]
    assert float(champion.tags["mean_f1"]) == pytest.approx(0.82)
    assert float(champion.tags["mean_dev_f1"]) == pytest.approx(0.82) and "dev" in champion.tags["chosen_by"]
    assert float(champion.tags["p_value_vs_reference"]) == pytest.approx(0.00237, abs=1e-5)
    assert (
        client.get_model_version_by_alias("ehrbert-cadec", "champion").run_id
        == run_ids[("cadec", "gold", "ehr_half", 1)]
    )
    assert sorted(loaded) == ["cadec", "ncbi"]

    run_stage(tmp_path)  # nothing changed: no new version, no vocabulary loaded
    assert sorted(loaded) == ["cadec", "ncbi"]

    # a run in the same experiment that no run record names (a manual run, another profile) changes nothing
    log_finetune_runs(tmp_path, tiny_normalizer, {("ncbi", "gold", "ehr_half"): [0.99, 0.99, 0.99]}, record=False)
    table = (reports / "table2.csv").read_text()
    assert run_stage(tmp_path) == metrics and (reports / "table2.csv").read_text() == table
    assert (
        client.get_model_version_by_alias("ehrbert-ncbi", "champion").run_id == run_ids[("ncbi", "gold", "ehr_full", 3)]
    )
    for name in ("ehrbert-ncbi", "ehrbert-cadec"):
        assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # a better ehr_half seed makes ehr_half the ncbi champion: one new version, the alias moves
    later = log_finetune_runs(tmp_path, tiny_normalizer, {("ncbi", "gold", "ehr_half"): [0.78, 0.80, 0.99]})
    run_stage(tmp_path)
    assert len(client.search_model_versions("name = 'ehrbert-ncbi'")) == 2
    assert (
        client.get_model_version_by_alias("ehrbert-ncbi", "champion").run_id == later[("ncbi", "gold", "ehr_half", 3)]
    )

    model = mlflow.pyfunc.load_model("models:/ehrbert-ncbi@champion")
    predictions = model.predict(pd.DataFrame({"mention": ["breast cancer"]}))
    assert predictions["concept_name"].iloc[0] == tiny_concepts[predictions["concept_id"].iloc[0]]


def test_a_run_record_naming_a_run_the_store_lacks_fails_clearly(tmp_path, tracking_store):
    write_run_record(tmp_path / "runs" / "ehr_half-ncbi-s1.json", {"gold": "0123abc"}, experiment="finetune-ncbi")
    with pytest.raises(SystemExit, match=r"not on .*0123abc \(.*ehr_half-ncbi-s1.json\)"):
        run_stage(tmp_path, "--no-register")


def test_registry_alias_is_the_profile_s_and_experiments_get_their_own(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert compare.registry_alias("champion") == "champion"
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-lr")
    assert compare.registry_alias("champion") == "champion-tiny-lr"  # never moves the workspace pipeline's champion
    assert compare.registry_alias("champion-paper") == "champion-paper"  # a profile that names its own alias keeps it


def test_stage_without_runs_fails_clearly(tmp_path, tracking_store):
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit, match="no fine-tuning runs"):
        run_stage(tmp_path, "--no-register")


def test_components_table_tests_each_added_component_against_the_row_above(runs):
    table = compare.components_table(runs, ["base", "ehr_half", "ehr_full", "absent"])
    ncbi = table[table["corpus"] == "ncbi"].set_index("model")
    assert list(ncbi.index) == ["base", "ehr_half", "ehr_full"]  # models without runs are left out
    assert math.isnan(ncbi.loc["base", "p_previous"])
    assert ncbi.loc["ehr_full", "delta_f1_previous"] == pytest.approx(0.82 - 0.79)
    assert ncbi.loc["ehr_full", "delta_f1_first"] == pytest.approx(0.82 - 0.713333, abs=1e-6)
    assert ncbi.loc["ehr_full", "p_first"] == pytest.approx(0.00237, abs=1e-5)  # the hand-computed test above
    assert ncbi.loc["ehr_full", "p_previous"] == pytest.approx(compare.welch([0.80, 0.82, 0.84], [0.78, 0.80, 0.79])[1])
    markdown = compare.components_markdown(table, alpha=0.05)
    assert "### ncbi" in markdown and "+3.00" in markdown and "(0.002 *)" in markdown
    assert "No runs" in compare.components_markdown(compare.components_table(runs, ["absent"]), alpha=0.05)
