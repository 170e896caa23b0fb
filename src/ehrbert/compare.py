"""Compare the fine-tuned normalizers from MLflow: the paper's Table 2, its t-tests (Tables 3-5), the champions.

Input: the fine-tuning and hybrid runs that made the pipeline's models, named by the run records those
stages wrote (`runs/finetune/*.json`, `runs/hybrid/*.json`, see `ehrbert.tracking`), read from MLflow by run
ID (tags ``model``, ``model_label``, ``corpus``, ``seed``, ``mentions``; metrics ``test_precision``,
``test_recall``, ``test_f1``, ...), and the dictionary baseline's metrics file. Other runs in the same
experiments (another profile, a manual `mlflow run`) are never read. Output:

- Table 2 analog (`table2`): per corpus and model, test F1, P and R as mean (SD) over seeds (SD is the
  sample SD, ddof=1), and Δ F1 = mean F1 minus the reference model's (the general base) mean F1.
  The dictionary baseline (exact match, else TF-IDF nearest name; with or without the training
  mentions as names) is shown as reference rows: one deterministic run, no SD, and named for what it
  is, not DNorm.
- Tables 3-5 analog (`pairwise_ttests`): for every pair of models on a corpus, the t-test p-value of
  their test F1 over seeds.
- Component table (`components_table`): the paper's model, then the beyond-the-paper normalizer with one
  component added at a time (`ehrbert.hybrid`): F1, acc@1 on seen and unseen concepts, no-concept
  precision/recall, and each step's Δ F1 with its t-test p-value against the step before and the paper's model.
- Champions (`choose_champions`): per corpus, of the candidate models (`champion_models`: the
  notes-adapted EhrBERT models and the hybrid variants), the one with the highest mean *dev* F1 over seeds,
  and its best-dev-F1 run (metric ``dev_f1``, which every candidate's stage logs); test scores never choose.
  `main` registers the model folder of that run (the DVC output the run record names) as
  ``ehrbert-{corpus}`` with the alias `compare.alias` (see `registry_alias` and
  `ehrbert.registry.register_champion`).

Which t-test, and why. Welch's two-sample t-test, two-sided (`scipy.stats.ttest_ind(a, b,
equal_var=False)`) on the per-seed test F1 of two models. The unit of replication is one fine-tuning
run, so a model's F1 over seeds samples its run-to-run variation, and the question is whether two
models' mean F1 differ by more than that variation. Runs of two different models are independent
samples: a seed fixes the classifier's initial weights and the batch order, but from the first step
on two different encoders follow unrelated trajectories, so "seed 1 of base" and "seed 1 of
ehr_full" share no noise that pairing could remove. A paired test (`ttest_rel`) would assume such a
correlation and would also need every seed to have finished for both models. Student's pooled test
assumes equal variances, which models of different quality need not have (a better starting point
often varies less); Welch's test does not. Cautions: with 3-5 seeds the test has little power, so
p >= alpha means "no difference shown", not "no difference"; p-values are not corrected for the
several comparisons (as in the paper); and a pair where a model has fewer than two runs, or both
models scored the same F1 in every run, has no p-value (NaN, shown as "n/a").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from itertools import combinations
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ehrbert import registry
from ehrbert.stage import config_from, read_params, setup_logging, write_json
from ehrbert.stats import mean_sd_columns, p_text, percent, welch
from ehrbert.tasks import add_data_arguments, load_task
from ehrbert.tracking import dvc_experiment, provenance_tags, read_run_record, tracking_uri

log = logging.getLogger(__name__)

METRICS = (
    "precision",
    "recall",
    "f1",
    "acc1",
    "acc5",
    "micro_f1",  # test_* metrics read from each run
    "acc1_seen",
    "acc1_unseen",
    "no_concept_precision",
    "no_concept_recall",
    "no_concept_gold",
)  # these five: hybrid runs only
REGISTERED_NAME = "ehrbert-{corpus}"
TABLE2_FILES = ("table2.csv", "table2.md")
TTEST_FILES = ("ttests.csv", "ttests.md")
COMPONENT_FILES = ("components.csv", "components.md")
RUNS_FILE = "runs.csv"  # the runs the tables were computed from
CHART_FILE = "f1_by_model.png"


@dataclass
class CompareConfig:
    # what is compared: params.yaml names it, there is no default
    corpora: list[str]
    models: list[str]  # row order
    champion_models: list[str]  # champion candidates
    components: list[str]  # the paper's model, then each added component (hybrid)
    baseline_labels: dict[str, str]  # baseline variant -> row label
    reference: str = "base"  # Δ F1 and the p-value in Table 2 are against this model
    alpha: float = 0.05  # significance level marked in the tables
    alias: str = "champion"  # the registry alias of each corpus's champion; another profile names its own


@dataclass
class Champion:
    corpus: str
    model: str
    model_label: str
    run_id: str  # the best-dev-F1 run of the model with the best mean dev F1
    seed: int
    f1: float  # that run's test F1
    dev_f1: float  # that run's dev F1
    dev_f1_mean: float  # what the model was chosen by
    f1_mean: float
    f1_sd: float
    seeds: int
    delta_f1: float  # mean F1 minus the reference model's mean F1
    p_value: float  # Welch t-test against the reference model
    reference: str
    max_length: int | None  # query length the run was trained with
    model_dir: str = ""  # the run's servable model folder (a DVC out), from its run record
    variant: str = ""  # for a hybrid model folder: which of its variants this run is


# ---------------------------------------------------------------------------------------------------
# Pure core: DataFrames in, DataFrames out.


def runs_table(raw: pd.DataFrame, corpora: list[str], models: list[str]) -> pd.DataFrame:
    """`mlflow.search_runs` output -> one row per (corpus, mentions, model, seed); two runs for one is an error.

    Columns: run_id, start_time, corpus, mentions, model, model_label, seed, max_length, the test
    metrics of METRICS and dev_f1 (NaN where a run did not log one). Only runs of `corpora` and `models` are kept,
    ordered as those lists, gold mentions before predicted ones, then by seed.
    """
    columns = [
        *("run_id", "start_time", "corpus", "mentions", "model", "model_label", "seed", "max_length"),
        *(*METRICS, "dev_f1"),
    ]
    if raw.empty:
        return pd.DataFrame(columns=columns)

    def get(column: str) -> pd.Series:
        return raw[column] if column in raw.columns else pd.Series(np.nan, index=raw.index, dtype=object)

    runs = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "start_time": raw["start_time"],
            "corpus": get("tags.corpus"),
            "mentions": get("tags.mentions").fillna("gold"),
            "model": get("tags.model"),
            "model_label": get("tags.model_label").fillna(get("tags.model")),
            "seed": pd.to_numeric(get("tags.seed"), errors="coerce"),
            "max_length": pd.to_numeric(get("params.max_length"), errors="coerce"),
            **{metric: pd.to_numeric(get(f"metrics.test_{metric}"), errors="coerce") for metric in METRICS},
            "dev_f1": pd.to_numeric(get("metrics.dev_f1"), errors="coerce"),
        }
    )
    unknown = sorted(set(runs["model"].dropna()) - set(models))
    if unknown:
        log.info("leaving out runs of models not listed in params: %s", unknown)
    runs = runs[runs["model"].isin(models) & runs["corpus"].isin(corpora) & runs["seed"].notna() & runs["f1"].notna()]
    twice = runs[runs.duplicated(["corpus", "mentions", "model", "seed"], keep=False)]
    if not twice.empty:
        key = ["corpus", "mentions", "model", "seed"]
        first = twice.iloc[0]
        same = twice[(twice[key] == first[key]).all(axis=1)]
        raise ValueError(
            f"{len(twice)} runs for the same (corpus, mentions, model, seed), e.g. {first['corpus']}/"
            f"{first['mentions']}/{first['model']}/seed {int(first['seed'])}: runs {sorted(same['run_id'])}"
        )
    order = {"corpus": {c: i for i, c in enumerate(corpora)}, "model": {m: i for i, m in enumerate(models)}}
    runs = runs.assign(
        _corpus=runs["corpus"].map(order["corpus"]),
        _predicted=runs["mentions"] != "gold",
        _model=runs["model"].map(order["model"]),
    )
    runs = runs.sort_values(["_corpus", "_predicted", "_model", "seed"])
    return runs.astype({"seed": int}).reset_index(drop=True)[columns]


def model_rows(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Table 2 rows of the fine-tuned models: one per (corpus, mentions, model).

    Columns: corpus, mentions, model, model_label, seeds, {metric}_mean and {metric}_sd for each of
    METRICS, delta_f1 (vs `reference`'s mean F1 in the same corpus and mentions; NaN without it) and
    p_value (Welch, F1 against `reference`; NaN for the reference itself).
    """
    rows = []
    for (corpus, mentions, model), group in runs.groupby(["corpus", "mentions", "model"], sort=False):
        row = {
            "corpus": corpus,
            "mentions": mentions,
            "model": model,
            "model_label": group["model_label"].iloc[-1],
            "seeds": len(group),
        }
        row.update(mean_sd_columns(group, METRICS))
        ref = runs[(runs["corpus"] == corpus) & (runs["mentions"] == mentions) & (runs["model"] == reference)]["f1"]
        row["delta_f1"] = row["f1_mean"] - ref.mean() if len(ref) else math.nan
        row["p_value"] = welch(group["f1"], ref)[1] if model != reference else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def baseline_rows(baseline: dict, labels: dict[str, str], corpora: list[str]) -> pd.DataFrame:
    """Table 2 reference rows from the baseline metrics ({corpus: {variant: {f1, precision, ...}}})."""
    rows = []
    for corpus in corpora:
        for variant, scores in baseline.get(corpus, {}).items():
            row = {
                "corpus": corpus,
                "mentions": "gold",
                "model": f"dictionary:{variant}",
                "model_label": labels.get(variant, f"dictionary baseline ({variant}), not DNorm"),
                "seeds": 1,
            }
            for metric in METRICS:
                row[f"{metric}_mean"] = scores.get(metric, math.nan)
                row[f"{metric}_sd"] = math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def table2(summary: pd.DataFrame, baseline: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The fine-tuned models' rows, then the dictionary rows (Δ F1 against `reference` too), per corpus."""
    if baseline.empty:
        return summary.reset_index(drop=True)
    reference_f1 = summary[summary["model"] == reference].set_index(["corpus", "mentions"])["f1_mean"]
    baseline = baseline.copy()
    keys = list(zip(baseline["corpus"], baseline["mentions"]))
    baseline["delta_f1"] = [f1 - reference_f1.get(key, math.nan) for key, f1 in zip(keys, baseline["f1_mean"])]
    baseline["p_value"] = math.nan
    table = pd.concat([summary, baseline], ignore_index=True)
    corpus_order = {c: i for i, c in enumerate(dict.fromkeys(table["corpus"]))}
    table["_corpus"], table["_group"] = table["corpus"].map(corpus_order), table["mentions"] != "gold"
    return (
        table.sort_values(["_corpus", "_group"], kind="stable")
        .drop(columns=["_corpus", "_group"])
        .reset_index(drop=True)
    )


def pairwise_ttests(runs: pd.DataFrame, alpha: float, metric: str = "f1") -> pd.DataFrame:
    """Every pair of models per (corpus, mentions): means, difference, Welch t and p of `metric`."""
    rows = []
    for (corpus, mentions), group in runs.groupby(["corpus", "mentions"], sort=False):
        scores = {model: g[metric].to_numpy() for model, g in group.groupby("model", sort=False)}
        for a, b in combinations(scores, 2):
            t, p = welch(scores[a], scores[b])
            rows.append(
                {
                    "corpus": corpus,
                    "mentions": mentions,
                    "metric": metric,
                    "model_a": a,
                    "model_b": b,
                    "n_a": len(scores[a]),
                    "n_b": len(scores[b]),
                    "mean_a": scores[a].mean(),
                    "mean_b": scores[b].mean(),
                    "difference": scores[a].mean() - scores[b].mean(),
                    "t": t,
                    "p_value": p,
                    "significant": bool(p < alpha) if not math.isnan(p) else False,
                }
            )
    return pd.DataFrame(rows)


def components_table(runs: pd.DataFrame, components: list[str]) -> pd.DataFrame:
    """Per corpus (gold mentions), one row per model of `components` that has runs, in that order: mean (SD)
    of F1 and acc@1 (all, seen, unseen concepts), no-concept P/R, and Welch t-tests of F1 against the row
    before (the effect of the component that row adds) and against the first row (the paper's model)."""
    rows = []
    for corpus, group in runs[runs["mentions"] == "gold"].groupby("corpus", sort=False):
        present = [m for m in components if (group["model"] == m).any()]
        for i, model in enumerate(present):
            runs_of = group[group["model"] == model]
            row = {
                "corpus": corpus,
                "model": model,
                "model_label": runs_of["model_label"].iloc[-1],
                "seeds": len(runs_of),
            }
            row.update(
                mean_sd_columns(
                    runs_of,
                    (
                        "f1",
                        "acc1",
                        "acc1_seen",
                        "acc1_unseen",
                        "no_concept_precision",
                        "no_concept_recall",
                        "no_concept_gold",
                    ),
                )
            )
            for name, other in (("previous", present[i - 1] if i else None), ("first", present[0] if i else None)):
                f1 = group[group["model"] == other]["f1"] if other else pd.Series(dtype=float)
                row[f"delta_f1_{name}"] = row["f1_mean"] - f1.mean() if len(f1) else math.nan
                row[f"p_{name}"] = welch(runs_of["f1"], f1)[1] if len(f1) else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _no_concept(row) -> str:
    if pd.isna(row.no_concept_precision_mean):
        return "–"  # the variant always answers
    if row.no_concept_gold_mean == 0:
        return "no gold case"  # nothing to find: each abstention only trades recall for precision
    return f"{percent(row.no_concept_precision_mean)} / {percent(row.no_concept_recall_mean)}"


def components_markdown(table: pd.DataFrame, alpha: float) -> str:
    parts = [
        "## Beyond the paper: the effect of each component (test, mean (SD) over seeds, %)",
        "",
        "Each row adds one component to the row above; the first row is the paper's classifier. Δ and p: F1 "
        "against the row above and against the paper's model (Welch, two-sided). Seen / unseen: gold concept "
        "with / without a training mention (acc@1 of the paper's classifier on these is in "
        "error_analysis.md). No-concept P/R: answers of no concept against gold `-1` / CONCEPT_LESS mentions.",
        "",
    ]
    if table.empty:
        return "\n".join(parts + ["No runs of the listed components.", ""])
    for corpus, rows in table.groupby("corpus", sort=False):
        cell = lambda r, m: percent(getattr(r, f"{m}_mean"), getattr(r, f"{m}_sd"))
        detail = pd.DataFrame(
            [
                {
                    "model": r.model_label,
                    "seeds": str(r.seeds),
                    "F1": cell(r, "f1"),
                    "acc@1": cell(r, "acc1"),
                    "acc@1 seen": cell(r, "acc1_seen"),
                    "acc@1 unseen": cell(r, "acc1_unseen"),
                    "no-concept P / R": _no_concept(r),
                    "Δ F1 (p) vs above": "–"
                    if pd.isna(r.delta_f1_previous)
                    else f"{100 * r.delta_f1_previous:+.2f} ({p_text(r.p_previous, alpha)})",
                    "Δ F1 (p) vs paper": "–"
                    if pd.isna(r.delta_f1_first)
                    else f"{100 * r.delta_f1_first:+.2f} ({p_text(r.p_first, alpha)})",
                }
                for r in rows.itertuples()
            ]
        )
        parts += [f"### {corpus}", "", detail.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts)


def choose_champions(
    runs: pd.DataFrame, summary: pd.DataFrame, candidates: list[str], reference: str
) -> list[Champion]:
    """Per corpus (gold mentions): the candidate model with the highest mean dev F1, and its best-dev-F1 run.

    Only dev chooses: test F1 is what the champion is then reported with. Ties go to the model listed first
    in `candidates`, then to the lowest seed. A candidate run without a dev F1 is an error naming it.
    """
    champions = []
    rank = {model: i for i, model in enumerate(candidates)}
    gold = runs[(runs["mentions"] == "gold") & runs["model"].isin(candidates)]
    undecided = gold[gold["dev_f1"].isna()]
    if not undecided.empty:
        first = undecided.iloc[0]
        raise ValueError(
            f"{len(undecided)} champion candidate runs log no dev_f1, e.g. run {first['run_id']} "
            f"({first['corpus']}/{first['model']}/seed {int(first['seed'])}): rerun its stage"
        )
    dev_means = gold.groupby(["corpus", "model"])["dev_f1"].mean()
    eligible = summary[(summary["mentions"] == "gold") & summary["model"].isin(candidates)]
    for corpus, group in eligible.groupby("corpus", sort=False):
        best = (
            group.assign(_dev=[dev_means[(corpus, model)] for model in group["model"]], _rank=group["model"].map(rank))
            .sort_values(["_dev", "_rank"], ascending=[False, True])
            .iloc[0]
        )
        model_runs = gold[(gold["corpus"] == corpus) & (gold["model"] == best["model"])]
        run = model_runs.sort_values(["dev_f1", "seed"], ascending=[False, True]).iloc[0]
        champions.append(
            Champion(
                corpus=corpus,
                model=best["model"],
                model_label=best["model_label"],
                run_id=run["run_id"],
                seed=int(run["seed"]),
                f1=float(run["f1"]),
                dev_f1=float(run["dev_f1"]),
                dev_f1_mean=float(best["_dev"]),
                f1_mean=float(best["f1_mean"]),
                f1_sd=float(best["f1_sd"]),
                seeds=int(best["seeds"]),
                delta_f1=float(best["delta_f1"]),
                p_value=float(best["p_value"]),
                reference=reference,
                max_length=None if pd.isna(run["max_length"]) else int(run["max_length"]),
                model_dir=str(run.get("model_dir", "") or ""),
                variant=str(run.get("variant", "") or ""),
            )
        )
    return champions


def headline(table: pd.DataFrame, champions: list[Champion]) -> dict:
    """The DVC metrics: per corpus group, each model's mean F1, its SD, Δ and p; and the champion."""
    metrics: dict = {}
    for row in table.itertuples():
        key = row.corpus if row.mentions == "gold" else f"{row.corpus}_{row.mentions}"
        metrics.setdefault(key, {})[row.model] = {
            "f1": row.f1_mean,
            "f1_sd": row.f1_sd,
            "seeds": row.seeds,
            "delta_f1": row.delta_f1,
            "p_value": row.p_value,
        }
    for champion in champions:
        metrics[champion.corpus]["champion"] = {
            "model": champion.model,
            "seed": champion.seed,
            "f1": champion.f1,
            "dev_f1": champion.dev_f1,
            "dev_f1_mean": champion.dev_f1_mean,
        }
    return _without_nan(metrics)


def _without_nan(value):
    """JSON has no NaN: NaN -> None, numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------------
# Presentation: Markdown and the chart.


def _group_name(corpus: str, mentions: str) -> str:
    return corpus if mentions == "gold" else f"{corpus} ({mentions} mentions)"


def table2_markdown(table: pd.DataFrame, reference: str, alpha: float) -> str:
    """One wide table (models x corpora, "F1 (SD), Δ" as in the paper), then per corpus P, R, F1, acc@1."""
    table = table.assign(group=[_group_name(c, m) for c, m in zip(table["corpus"], table["mentions"])])
    cells = [
        percent(r.f1_mean, r.f1_sd)
        + ("" if pd.isna(r.delta_f1) or r.model == reference else f", {100 * r.delta_f1:+.2f}")
        for r in table.itertuples()
    ]
    wide = (
        table.assign(cell=cells)
        .pivot_table(index="model_label", columns="group", values="cell", aggfunc="first", sort=False)
        .fillna("–")
    )
    parts = [
        "## Table 2 analog: test F1 (%), mean (SD) over seeds, and Δ F1 vs the reference",
        "",
        f"Δ: difference of mean F1 to `{reference}` in percentage points. Document-level macro F1 for ncbi/cdr, "
        "mention-level F1 for cadec. Dictionary rows are one deterministic run.",
        "",
        wide.reset_index().rename(columns={"model_label": "model"}).to_markdown(index=False, disable_numparse=True),
    ]
    for group, rows in table.groupby("group", sort=False):
        detail = pd.DataFrame(
            {
                "model": rows["model_label"],
                "seeds": rows["seeds"].astype(str),
                "P": [percent(m, s) for m, s in zip(rows["precision_mean"], rows["precision_sd"])],
                "R": [percent(m, s) for m, s in zip(rows["recall_mean"], rows["recall_sd"])],
                "F1": [percent(m, s) for m, s in zip(rows["f1_mean"], rows["f1_sd"])],
                "acc@1": [percent(m, s) for m, s in zip(rows["acc1_mean"], rows["acc1_sd"])],
                "Δ F1": ["–" if pd.isna(d) else f"{100 * d:+.2f}" for d in rows["delta_f1"]],
                f"p vs {reference}": [
                    p_text(p, alpha) if not m.startswith("dictionary:") else "–"
                    for p, m in zip(rows["p_value"], rows["model"])
                ],
            }
        )
        parts += ["", f"### {group}", "", detail.to_markdown(index=False, disable_numparse=True)]
    parts += ["", f"p: Welch's two-sided t-test on per-seed F1; * marks p < {alpha}."]
    return "\n".join(parts) + "\n"


def ttests_markdown(tests: pd.DataFrame, alpha: float) -> str:
    """Per corpus, the upper triangle of a model x model p-value matrix (Tables 3-5 of the paper)."""
    parts = [
        "## Tables 3-5 analog: pairwise t-test p-values of test F1",
        "",
        f"Welch's two-sided t-test (scipy.stats.ttest_ind, equal_var=False) over seeds; * marks p < {alpha}; "
        "n/a: a model with fewer than two runs, or no spread in either.",
        "",
    ]
    for (corpus, mentions), group in tests.groupby(["corpus", "mentions"], sort=False):
        models = list(dict.fromkeys([*group["model_a"], *group["model_b"]]))
        matrix = pd.DataFrame("", index=models[:-1], columns=models[1:])
        for row in group.itertuples():
            matrix.loc[row.model_a, row.model_b] = p_text(row.p_value, alpha)
        parts += [
            f"### {_group_name(corpus, mentions)}",
            "",
            matrix.rename_axis("model").reset_index().to_markdown(index=False, disable_numparse=True),
            "",
        ]
    return "\n".join(parts)


def plot_f1(table: pd.DataFrame, path: Path) -> None:
    """Grouped bars: mean test F1 per model and corpus, error bars one SD; dictionary rows hatched (PNG, Agg)."""
    table = table.assign(group=[_group_name(c, m) for c, m in zip(table["corpus"], table["mentions"])])
    groups = list(dict.fromkeys(table["group"]))
    labels = list(dict.fromkeys(table["model_label"]))
    width = 0.8 / max(len(labels), 1)
    figure = Figure(figsize=(max(6.0, 2.2 * len(groups)), 5.0))  # no pyplot: Agg canvas, no display, no global state
    axes = figure.subplots()
    for i, label in enumerate(labels):
        rows = table[table["model_label"] == label].set_index("group").reindex(groups)
        dictionary = rows["model"].dropna().str.startswith("dictionary:").any()
        axes.bar(
            np.arange(len(groups)) + (i - (len(labels) - 1) / 2) * width,
            100 * rows["f1_mean"],
            width,
            yerr=None if dictionary else 100 * rows["f1_sd"].fillna(0),
            capsize=3,
            label=label,
            hatch="//" if dictionary else None,
            alpha=0.6 if dictionary else 1.0,
        )
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylabel("test F1 (%)")
    axes.set_title("Test F1, mean ± SD over seeds")
    low = np.nanmin(100 * table["f1_mean"]) if len(table) else 0
    axes.set_ylim(max(0.0, low - 10), 100)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=1, frameon=False)
    figure.savefig(path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------------
# The stage: MLflow in, files and registry out.


def read_run_records(folders: list[Path]) -> dict[str, dict]:
    """{run ID: {"record", "experiment", "model_dir", "variant"}} of every run named by the run records
    (`*.json`) in `folders`: the runs that made the pipeline's current models, and only those."""
    found: dict[str, dict] = {}
    for folder in folders:
        paths = sorted(Path(folder).glob("*.json"))
        if not paths:
            log.warning("no run records in %s", folder)
        for path in paths:
            record = read_run_record(path)
            for name, run_id in record["runs"].items():
                variant = "" if name in ("gold", "predicted") else name.removesuffix("-predicted")
                found[run_id] = {
                    "record": str(path),
                    "experiment": record["experiment"],
                    "model_dir": record.get("model_dir", ""),
                    "variant": variant,
                }
    return found


def fetch_runs(records: dict[str, dict]) -> pd.DataFrame:
    """`mlflow.search_runs` rows of exactly the runs in `records`, with their model folder and variant; a run
    that a record names but the tracking store lacks is an error naming the record."""
    if not records:
        return pd.DataFrame()
    experiments = sorted({r["experiment"] for r in records.values()})
    missing = [name for name in experiments if mlflow.get_experiment_by_name(name) is None]
    ids = list(records)
    frames = []
    if len(missing) < len(experiments):
        for start in range(0, len(ids), 100):  # the search filter takes a bounded list
            chunk = ", ".join(f"'{run_id}'" for run_id in ids[start : start + 100])
            frames.append(
                mlflow.search_runs(
                    experiment_names=[e for e in experiments if e not in missing],
                    filter_string=f"attributes.run_id IN ({chunk})",
                    output_format="pandas",
                )
            )
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])
    absent = [run_id for run_id in ids if run_id not in set(raw["run_id"])]
    if absent:
        raise SystemExit(
            f"{len(absent)} runs named by run records are not on {mlflow.get_tracking_uri()}, e.g. "
            f"{absent[0]} ({records[absent[0]]['record']}): point MLFLOW_TRACKING_URI at the store "
            "the pipeline logged to"
        )
    unfinished = raw[raw["status"] != "FINISHED"]
    if not unfinished.empty:
        raise SystemExit(
            f"run {unfinished.iloc[0]['run_id']} ({records[unfinished.iloc[0]['run_id']]['record']}) "
            f"is {unfinished.iloc[0]['status']}, not FINISHED"
        )
    return raw.assign(
        model_dir=raw["run_id"].map(lambda r: records[r]["model_dir"]),
        variant=raw["run_id"].map(lambda r: records[r]["variant"]),
    )


def registry_alias(alias: str) -> str:
    """The alias champions get: `compare.alias`; inside a DVC experiment that kept the default alias,
    ``champion-<experiment name>``, so that an experiment never moves the workspace pipeline's champion."""
    experiment = dvc_experiment()
    return f"{alias}-{experiment}" if alias == CompareConfig.alias and experiment != "workspace" else alias


def concept_names(corpus: str, args: argparse.Namespace, cadec_split: dict) -> dict[str, str]:
    """{concept ID: preferred name} of the task vocabulary (the model folder knows only the IDs)."""
    return {c.concept_id: c.name for c in load_task(corpus, args, cadec_split).vocabulary.concepts}


def register(champion: Champion, concept_names, alpha: float, alias: str, params: dict) -> None:
    """`ehrbert-{corpus}@alias` -> the champion run's model folder; no new version if it is already registered."""
    tags = {
        "corpus": champion.corpus,
        "model": champion.model,
        "model_label": champion.model_label,
        "seed": champion.seed,
        "chosen_by": "mean dev F1 over seeds, then the seed with the best dev F1",
        "dev_f1": f"{champion.dev_f1:.6f}",
        "mean_dev_f1": f"{champion.dev_f1_mean:.6f}",
        "test_f1": f"{champion.f1:.6f}",
        "mean_f1": f"{champion.f1_mean:.6f}",
        "sd_f1": f"{champion.f1_sd:.6f}",
        "seeds": champion.seeds,
        "reference": champion.reference,
        "delta_f1_vs_reference": f"{champion.delta_f1:.6f}",
        "p_value_vs_reference": f"{champion.p_value:.6g}",
        "t_test": "Welch, two-sided, per-seed test F1",
        "variant": champion.variant or "-",
        **provenance_tags(params),
    }
    description = (
        f"{champion.model_label}, seed {champion.seed}: test F1 {100 * champion.f1:.2f}, chosen on dev "
        f"(mean dev F1 {100 * champion.dev_f1_mean:.2f}; this seed {100 * champion.dev_f1:.2f}). "
        f"Mean test F1 {100 * champion.f1_mean:.2f} (SD {100 * champion.f1_sd:.2f}) over {champion.seeds} seeds, "
        f"{100 * champion.delta_f1:+.2f} vs {champion.reference} (Welch p = {p_text(champion.p_value, alpha)})."
    )
    version, created = registry.register_champion(
        champion.run_id,
        REGISTERED_NAME.format(corpus=champion.corpus),
        Path(champion.model_dir),
        concept_names,
        tags=tags,
        description=description,
        alias=alias,
        max_length=champion.max_length or 32,
        variant=champion.variant or None,
    )
    log.info("%s@%s -> version %s (%s)", version.name, alias, version.version, "new" if created else "unchanged")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="dictionary baseline metrics JSON")
    parser.add_argument("--reports", type=Path, required=True, help="folder for the tables and the chart")
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics JSON")
    parser.add_argument(
        "--run-records",
        type=Path,
        nargs="+",
        required=True,
        help="folders of run records (runs/finetune, runs/hybrid): the runs compared",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--no-register", action="store_true", help="write the reports only; leave the registry alone")
    add_data_arguments(parser)  # the task vocabularies give the registered models their concept names
    args = parser.parse_args(argv)
    setup_logging()

    params = read_params(args.params)
    config = config_from(CompareConfig, params["compare"], "compare", args.params)
    mlflow.set_tracking_uri(tracking_uri())
    raw = fetch_runs(read_run_records(args.run_records))
    try:
        runs = runs_table(raw, config.corpora, config.models)
    except ValueError as error:
        raise SystemExit(f"{', '.join(map(str, args.run_records))}: {error}") from None
    if runs.empty:
        raise SystemExit(
            f"no fine-tuning runs of {config.models} in the run records of {', '.join(map(str, args.run_records))}"
        )
    runs = runs.merge(raw[["run_id", "model_dir", "variant"]], on="run_id", how="left")
    log.info("%d runs: %s", len(runs), runs.groupby(["corpus", "mentions", "model"]).size().to_dict())

    summary = model_rows(runs, config.reference)
    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
    if not baseline:
        log.warning("no dictionary baseline at %s: its rows are left out", args.baseline)
    table = table2(summary, baseline_rows(baseline, config.baseline_labels, config.corpora), config.reference)
    tests = pairwise_ttests(runs, config.alpha)
    try:
        champions = choose_champions(runs, summary, config.champion_models, config.reference)
    except ValueError as error:
        raise SystemExit(f"{', '.join(map(str, args.run_records))}: {error}") from None
    components = components_table(runs, config.components)

    args.reports.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.reports / RUNS_FILE, index=False)
    table.to_csv(args.reports / TABLE2_FILES[0], index=False)
    (args.reports / TABLE2_FILES[1]).write_text(table2_markdown(table, config.reference, config.alpha))
    tests.to_csv(args.reports / TTEST_FILES[0], index=False)
    (args.reports / TTEST_FILES[1]).write_text(ttests_markdown(tests, config.alpha))
    components.to_csv(args.reports / COMPONENT_FILES[0], index=False)
    (args.reports / COMPONENT_FILES[1]).write_text(components_markdown(components, config.alpha))
    plot_f1(table, args.reports / CHART_FILE)
    write_json(args.metrics, headline(table, champions))

    if args.no_register:
        return
    alias = registry_alias(config.alias)
    for champion in champions:
        log.info("champion %s: %s", champion.corpus, asdict(champion))
        # the vocabulary is read only when a new version must be packaged
        register(
            champion,
            partial(concept_names, champion.corpus, args, params["cadec_split"]),
            config.alpha,
            alias,
            {"compare": params["compare"], "cadec_split": params["cadec_split"]},
        )


if __name__ == "__main__":
    main()
