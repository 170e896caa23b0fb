"""Error analysis: where each fine-tuned normalizer is right and wrong, split by what makes a mention hard.

The paper's discussion explains its models' errors by cause; here each cause is a property of the
test mention, and every model's test predictions are scored per value ("bucket") of each property,
per corpus, as the mean (SD) over seeds:

- seen: every gold concept of the mention is annotated at least once in the train split ("seen") or
  not ("unseen"): `ehrbert.metrics.is_seen`, the rule every seen/unseen table uses. The classifier has one
  output per vocabulary concept; an unseen concept's output was only ever pushed down in training, so these
  mentions test what the encoder brings by itself.
- frequency: how many training mentions the mention's rarest gold concept has (buckets from
  `frequency_edges`; bucket "0" is the unseen mentions).
- abbreviation: Ab3P expanded something in the mention (its query differs from its plain normalized
  text), or the whole mention is an all-caps short form: one token of capitals, digits, ``-``, ``/`` or
  ``&`` of at most `short_form_max_length` characters (DM, HTN, XDR-TB). In CADEC a few single words
  shouted in capitals match too.
- composite: the gold has several IDs (NCBI/CDR ``|`` and ``+``, CADEC ``+``) or one.
- length: words in the mention after normalization (buckets from `length_edges`).

Mentions without a concept (``-1``, CADEC CONCEPT_LESS) form a "no concept" bucket of seen, frequency
and composite. The scores are `ehrbert.metrics`' own, on each bucket's mentions:

- acc@1: the top-1 ID is one of the gold IDs (BioSyn's rule; no-concept mentions left out, so their
  bucket has none);
- P/R/F1 at mention level on the gold spans: a mention is right when {top-1} equals its gold ID set
  (any one of them for CADEC alternatives), and a concept predicted for a no-concept mention is a false
  positive. One top-1 ID never equals a set of several, so composite mentions score F1 0 here by
  construction, while the document-level F1 of Table 2 gives them partial credit.

Also written: the test mentions where two models (the general base and EhrBERT_full) give different
top-1 IDs at one seed, with both predictions and the mention's properties. Those of a corpus whose
text may not be redistributed (`restricted_corpora`: CADEC is research-only) go to a separate file,
which dvc.yaml keeps in DVC's cache and out of git; the other outputs hold no CADEC text.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ehrbert.corpora.records import NO_CONCEPT, Mention
from ehrbert.metrics import accuracy_at_k, is_seen, mention_level
from ehrbert.predictions import find_prediction_files, format_spans, read_predictions, top1_correct
from ehrbert.stage import config_from, read_params, setup_logging
from ehrbert.stats import mean_sd_columns, percent
from ehrbert.tasks import add_data_arguments, load_task
from ehrbert.text import normalize
from ehrbert.tracking import start_run

log = logging.getLogger(__name__)

DIMENSIONS = ("seen", "frequency", "abbreviation", "composite", "length")
ALL = "all"  # the dimension (and bucket) of the whole test set, for reference
NO_CONCEPT_BUCKET = "no concept"
SCORES = ("acc1", "precision", "recall", "f1")
_SHORT_FORM = re.compile(r"[A-Z][A-Z0-9/&-]*")


@dataclass
class ErrorAnalysisConfig:
    models: list[str]  # column order; params.yaml names them, there is no default
    corpora: list[str] = field(default_factory=lambda: ["ncbi", "cdr", "cadec"])
    frequency_edges: list[int] = field(default_factory=lambda: [0, 1, 5, 20])  # training mentions: 0, 1, 2-5, 6-20, >20
    length_edges: list[int] = field(default_factory=lambda: [1, 2, 3])  # words: 1, 2, 3, >3
    short_form_max_length: int = 6  # characters of a one-token all-caps mention counted as a short form
    compare: list[str] = field(default_factory=lambda: ["base", "ehr_full"])  # examples: (reference, model)
    example_seed: int = 1  # the seed whose runs give the examples
    restricted_corpora: list[str] = field(default_factory=lambda: ["cadec"])  # their examples stay out of git


# ---------------------------------------------------------------------------------------------------
# Mention properties.


def bucket_labels(edges: Sequence[int], low: int) -> list[str]:
    """Labels of the buckets that inclusive upper `edges` cut from `low` up: [0, 1, 5] -> 0, 1, 2-5, >5."""
    labels, start = [], low
    for edge in edges:
        labels.append(str(edge) if edge == start else f"{start}-{edge}")
        start = edge + 1
    return [*labels, f">{edges[-1]}"]


def bucket(value: int, edges: Sequence[int], low: int) -> str:
    labels = bucket_labels(edges, low)
    return next((label for label, edge in zip(labels, edges) if value <= edge), labels[-1])


def is_short_form(text: str, max_length: int) -> bool:
    """One all-caps token (capitals, digits, - / &) of 2..`max_length` characters: DM, HTN, XDR-TB, SCA1."""
    text = text.strip()
    return 2 <= len(text) <= max_length and _SHORT_FORM.fullmatch(text) is not None


def is_abbreviation(text: str, query: str, max_length: int) -> bool:
    """Ab3P changed the mention (query != its plain normalized text), or the mention is a short form."""
    return query != normalize(text) or is_short_form(text, max_length)


def concept_frequencies(train_mentions: Sequence[Mention]) -> Counter:
    """Training mentions per concept ID (a mention with several IDs counts once for each)."""
    return Counter(cid for mention in train_mentions for cid in dict.fromkeys(mention.concept_ids))


def bucket_order(config: ErrorAnalysisConfig) -> dict[str, list[str]]:
    """Every dimension's buckets in display order."""
    return {
        ALL: [ALL],
        "seen": ["seen", "unseen", NO_CONCEPT_BUCKET],
        "frequency": [*bucket_labels(config.frequency_edges, 0), NO_CONCEPT_BUCKET],
        "abbreviation": ["abbreviation", "no abbreviation"],
        "composite": ["several IDs", "one ID", NO_CONCEPT_BUCKET],
        "length": bucket_labels(config.length_edges, 1),
    }


def mention_features(
    mentions: Sequence[Mention], queries: Sequence[str], frequencies: Counter, config: ErrorAnalysisConfig
) -> pd.DataFrame:
    """One row per test mention: who it is, its properties, and its bucket in each dimension.

    Columns: doc_id, spans, mention, query, gold (IDs joined by "|"), relation, train_mentions (of the
    mention's rarest gold concept; -1 without a concept), words, then ``all`` and one column per
    dimension of DIMENSIONS holding the mention's bucket label.
    """
    if len(mentions) != len(queries):
        raise ValueError(f"{len(mentions)} mentions but {len(queries)} queries")
    rows = []
    for mention, query in zip(mentions, queries):
        has_concept = mention.relation != NO_CONCEPT and bool(mention.concept_ids)
        train_mentions = min(frequencies[cid] for cid in mention.concept_ids) if has_concept else -1
        words = max(len(normalize(mention.text).split()), 1)
        abbreviation = is_abbreviation(mention.text, query, config.short_form_max_length)
        rows.append(
            {
                "doc_id": mention.doc_id,
                "spans": format_spans(mention.spans),
                "mention": mention.text,
                "query": query,
                "gold": "|".join(mention.concept_ids),
                "relation": mention.relation,
                "train_mentions": train_mentions,
                "words": words,
                ALL: ALL,
                "seen": ("seen" if is_seen(mention, frequencies) else "unseen") if has_concept else NO_CONCEPT_BUCKET,
                "frequency": bucket(train_mentions, config.frequency_edges, 0) if has_concept else NO_CONCEPT_BUCKET,
                "abbreviation": "abbreviation" if abbreviation else "no abbreviation",
                "composite": ("several IDs" if len(mention.concept_ids) > 1 else "one ID")
                if has_concept
                else NO_CONCEPT_BUCKET,
                "length": bucket(words, config.length_edges, 1),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Scores per bucket.


def bucket_scores(
    mentions: Sequence[Mention], features: pd.DataFrame, predicted: Sequence[str], order: dict[str, list[str]]
) -> pd.DataFrame:
    """acc@1 and mention-level P/R/F1 of one run (top-1 `predicted[i]` for `mentions[i]`) per bucket.

    Rows: one per (dimension, bucket) that has mentions, ``all`` first, buckets in `order`. Columns:
    dimension, bucket, mentions, share (of all test mentions), scored (mentions with a concept),
    correct (top-1 among the gold IDs), acc1 (NaN when nothing is scored), precision, recall, f1.
    """
    if not len(mentions) == len(features) == len(predicted):
        raise ValueError(f"{len(mentions)} mentions, {len(features)} feature rows, {len(predicted)} predictions")
    rows = []
    for dimension in (ALL, *DIMENSIONS):
        for label in order[dimension]:
            index = np.flatnonzero(features[dimension].to_numpy() == label)
            if not len(index):
                continue
            subset = [mentions[i] for i in index]
            top1 = [[predicted[i]] if predicted[i] else [] for i in index]
            scored = sum(m.relation != NO_CONCEPT for m in subset)
            acc1 = accuracy_at_k(subset, top1, k=1) if scored else math.nan
            prf = mention_level(subset, [(m.doc_id, m.spans, set(t)) for m, t in zip(subset, top1)])
            rows.append(
                {
                    "dimension": dimension,
                    "bucket": label,
                    "mentions": len(index),
                    "share": len(index) / len(mentions),
                    "scored": scored,
                    "correct": round(acc1 * scored) if scored else 0,
                    "acc1": acc1,
                    "precision": prf["precision"],
                    "recall": prf["recall"],
                    "f1": prf["f1"],
                }
            )
    return pd.DataFrame(rows)


def bucket_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per-run bucket scores (columns corpus, model, seed + `bucket_scores`') -> mean and SD over seeds.

    Columns: corpus, model, dimension, bucket, mentions, share, scored, seeds, and {score}_mean and
    {score}_sd (sample SD; NaN with one seed) for acc1, precision, recall, f1. Row order as given.
    """
    rows = []
    for (corpus, model, dimension, label), group in scores.groupby(
        ["corpus", "model", "dimension", "bucket"], sort=False
    ):
        row = {
            "corpus": corpus,
            "model": model,
            "dimension": dimension,
            "bucket": label,
            "mentions": group["mentions"].iloc[0],
            "share": group["share"].iloc[0],
            "scored": group["scored"].iloc[0],
            "seeds": len(group),
        }
        row.update(mean_sd_columns(group, SCORES))
        rows.append(row)
    return pd.DataFrame(rows)


def disagreements(
    features: pd.DataFrame, tables: dict[str, pd.DataFrame], compare: Sequence[str], names: Callable[[str], str]
) -> pd.DataFrame:
    """The mentions where the two `compare` models give different top-1 IDs, with both predictions.

    `tables[model]` is that model's predictions table (`ehrbert.predictions.read_predictions`), aligned with
    `features`. Columns: doc_id, spans, mention, query, gold, gold_names, for each model
    {model}_predicted / _name / _score / _correct, then winner (the model that is right when only one
    is, "both" for two right IDs of a composite mention, else "neither"), train_mentions, and the
    mention's bucket in each dimension. Ordered by winner: the second model, the first, both, neither.
    """
    first, second = compare
    a, b = tables[first], tables[second]
    differ = (a["predicted"] != b["predicted"]).to_numpy()
    out = features.loc[differ, ["doc_id", "spans", "mention", "query", "gold"]].copy()
    out["gold_names"] = [" | ".join(names(cid) for cid in gold.split("|")) if gold else "" for gold in out["gold"]]
    for model, table in ((first, a), (second, b)):
        rows = table.loc[differ]
        out[f"{model}_predicted"] = rows["predicted"].to_numpy()
        out[f"{model}_name"] = [names(cid) for cid in rows["predicted"]]
        out[f"{model}_score"] = rows["score"].round(4).to_numpy()
        out[f"{model}_correct"] = [top1_correct(g, p) for g, p in zip(out["gold"], rows["predicted"])]
    right_a, right_b = out[f"{first}_correct"].to_numpy(), out[f"{second}_correct"].to_numpy()
    out["winner"] = np.select([right_a & right_b, right_b, right_a], ["both", second, first], "neither")
    for column in ("train_mentions", *DIMENSIONS):
        out[column] = features.loc[differ, column].to_numpy()
    rank = {second: 0, first: 1, "both": 2, "neither": 3}
    return out.iloc[np.argsort(out["winner"].map(rank).to_numpy(), kind="stable")].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# Presentation: Markdown, figures and the `dvc plots` data.


def corpus_markdown(summary: pd.DataFrame, models: Sequence[str]) -> str:
    """acc@1 and F1 tables of one corpus: a row per (dimension, bucket), a column per model."""
    cells = {(r["dimension"], r["bucket"], r["model"]): r for r in summary.to_dict("records")}
    buckets = {(r["dimension"], r["bucket"]): r for r in summary.to_dict("records")}  # mentions and share
    present = [m for m in models if m in set(summary["model"])]
    parts = []
    for score, title in (("acc1", "acc@1 (%)"), ("f1", "mention-level F1 (%)")):
        rows = []
        for (dimension, label), first in buckets.items():
            row = {
                "property": dimension,
                "bucket": label,
                "mentions": int(first["mentions"]),
                "share (%)": f"{100 * first['share']:.1f}",
            }
            for model in present:
                cell = cells.get((dimension, label, model))
                row[model] = (
                    "–"
                    if cell is None
                    else percent(cell[f"{score}_mean"], cell[f"{score}_sd"], digits=1, sd_style=" ± {}")
                )
            rows.append(row)
        parts += [f"#### {title}", "", pd.DataFrame(rows).to_markdown(index=False), ""]
    return "\n".join(parts)


def disagreement_counts(examples: pd.DataFrame, total: int, compare: Sequence[str], seed: int) -> str:
    """One sentence: how often the two compared models disagree and who is right then."""
    first, second = compare
    counts = examples["winner"].value_counts()
    return (
        f"At seed {seed}, `{second}` and `{first}` give different top-1 IDs for {len(examples)} of {total} "
        "test mentions: "
        f"only `{second}` right in {counts.get(second, 0)}, only `{first}` right in {counts.get(first, 0)}, "
        f"both right (different IDs of a composite mention) in {counts.get('both', 0)}, "
        f"neither in {counts.get('neither', 0)}."
    )


def markdown(summary: pd.DataFrame, sentences: dict[str, str], config: ErrorAnalysisConfig) -> str:
    parts = [
        "# Error analysis of the fine-tuned normalizers",
        "",
        "Test mentions split by a property; per model, mean ± SD over seeds. acc@1: the top-1 ID is one of the gold "
        "IDs (mentions without a concept left out). Mention-level F1 on the gold spans: right when the top-1 equals "
        "the gold ID set, so a composite or combined mention (several gold IDs) cannot be right; Table 2's "
        "document-level F1 gives it partial credit.",
        "",
        "- seen / unseen: every gold concept has a training mention, or not; frequency: training mentions of the "
        f"rarest gold concept (edges {config.frequency_edges});",
        "- abbreviation: Ab3P expanded something in the mention, or the mention is one all-caps token of at most "
        f"{config.short_form_max_length} characters;",
        f"- composite: several gold IDs; length: words in the mention (edges {config.length_edges}).",
        "",
    ]
    for corpus, rows in summary.groupby("corpus", sort=False):
        total = int(rows.loc[rows["dimension"] == ALL, "mentions"].iloc[0])
        parts += [
            f"## {corpus}",
            "",
            f"{total} test mentions; seeds per model: "
            + ", ".join(f"{m} {int(n)}" for m, n in rows.groupby("model", sort=False)["seeds"].max().items())
            + ".",
            "",
        ]
        if corpus in sentences:
            parts += [sentences[corpus], ""]
        parts.append(corpus_markdown(rows, config.models))
    return "\n".join(parts)


def plot_corpus(
    summary: pd.DataFrame, models: Sequence[str], order: dict[str, list[str]], title: str, path: Path
) -> None:
    """Grouped bars per dimension: acc@1 (top row) and F1 (bottom row) per bucket and model, ± 1 SD (PNG, Agg)."""
    present = [m for m in models if m in set(summary["model"])]
    width = 0.8 / max(len(present), 1)
    figure = Figure(figsize=(3.6 * len(DIMENSIONS), 7.0))  # no pyplot: Agg canvas, no global state
    axes = figure.subplots(2, len(DIMENSIONS), squeeze=False)
    for row, (score, label) in enumerate((("acc1", "acc@1 (%)"), ("f1", "mention-level F1 (%)"))):
        for col, dimension in enumerate(DIMENSIONS):
            ax, part = axes[row][col], summary[summary["dimension"] == dimension]
            buckets = [b for b in order[dimension] if b in set(part["bucket"])]
            x = np.arange(len(buckets))
            for i, model in enumerate(present):
                values = part[part["model"] == model].set_index("bucket").reindex(buckets)
                ax.bar(
                    x + (i - (len(present) - 1) / 2) * width,
                    100 * values[f"{score}_mean"].astype(float),
                    width,
                    yerr=100 * values[f"{score}_sd"].astype(float).fillna(0),
                    capsize=2,
                    label=model,
                )
            counts = part.drop_duplicates("bucket").set_index("bucket")["mentions"].reindex(buckets)
            ax.set_xticks(x, [f"{b}\n(n={int(n)})" for b, n in zip(buckets, counts)], fontsize=7)
            ax.set_ylim(0, 100)
            if row == 0:
                ax.set_title(dimension)
            if col == 0:
                ax.set_ylabel(label)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def plot_data(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{"<corpus>_<dimension>": table} for `dvc plots` (bar_horizontal: x acc1, y "bucket | model")."""
    tables = {}
    for (corpus, dimension), rows in summary.groupby(["corpus", "dimension"], sort=False):
        tables[f"{corpus}_{dimension}"] = pd.DataFrame(
            {
                "bucket_model": rows["bucket"] + " | " + rows["model"],
                "bucket": rows["bucket"],
                "model": rows["model"],
                "mentions": rows["mentions"],
                "acc1": rows["acc1_mean"].round(4),
                "f1": rows["f1_mean"].round(4),
            }
        )
    return tables


# ---------------------------------------------------------------------------------------------------
# The stage: prediction files in, tables and figures out.


def aligned(table: pd.DataFrame, mentions: Sequence[Mention], path: Path) -> pd.DataFrame:
    """`table` if its rows are `mentions` in order (same document and spans), else ValueError."""
    expected = [(m.doc_id, format_spans(m.spans)) for m in mentions]
    if list(zip(table["doc_id"], table["spans"])) != expected:
        raise ValueError(f"{path}: rows are not the task's {len(expected)} test mentions in order")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="fine-tuning outputs: <model>-<corpus>-s<seed>/test_predictions.tsv",
    )
    add_data_arguments(parser)  # the tasks give the train split (seen, frequency), relations and concept names
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--table", type=Path, required=True, help="CSV: scores per corpus, model and bucket")
    parser.add_argument("--markdown", type=Path, required=True, help="the same as Markdown tables")
    parser.add_argument("--examples", type=Path, required=True, help="CSV: mentions where the compared models disagree")
    parser.add_argument(
        "--restricted-examples",
        type=Path,
        required=True,
        help="the same for the restricted corpora (their text must stay out of git)",
    )
    parser.add_argument("--figures", type=Path, required=True, help="folder: one PNG per corpus")
    parser.add_argument("--plot-data", type=Path, required=True, help="folder: the CSVs `dvc plots` draws")
    args = parser.parse_args(argv)
    setup_logging()

    params = read_params(args.params)
    config = config_from(ErrorAnalysisConfig, params["error_analysis"], "error_analysis", args.params)
    order = bucket_order(config)
    per_run, examples, sentences = [], [], {}
    for corpus in config.corpora:
        files = find_prediction_files(args.predictions, corpus, config.models)
        if not files:
            log.warning("%s: no test predictions of %s under %s", corpus, config.models, args.predictions)
            continue
        log.info("%s: %d runs: %s", corpus, len(files), ", ".join(f"{m}-s{s}" for m, s in files))
        task = load_task(corpus, args, params["cadec_split"])
        mentions = task.mentions("test")
        tables = {key: aligned(read_predictions(path), mentions, path) for key, path in files.items()}
        queries = next(iter(tables.values()))["query"].tolist()
        features = mention_features(mentions, queries, concept_frequencies(task.mentions("train")), config)
        for (model, seed), table in tables.items():
            scores = bucket_scores(mentions, features, table["predicted"].tolist(), order)
            per_run.append(scores.assign(corpus=corpus, model=model, seed=seed))

        pair = {model: tables.get((model, config.example_seed)) for model in config.compare}
        if any(table is None for table in pair.values()):
            log.warning("%s: no seed-%d runs of both %s: no examples", corpus, config.example_seed, config.compare)
            continue
        vocabulary = task.vocabulary
        found = disagreements(features, pair, config.compare, vocabulary.name_of)
        sentences[corpus] = disagreement_counts(found, len(mentions), config.compare, config.example_seed)
        examples.append(found.assign(corpus=corpus))
    if not per_run:
        raise SystemExit(f"no test predictions under {args.predictions}")

    scores = pd.concat(per_run, ignore_index=True)
    summary = bucket_summary(scores)
    for path in (args.table, args.markdown, args.examples, args.restricted_examples):
        path.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.table, index=False)
    args.markdown.write_text(markdown(summary, sentences, config))
    examples = pd.concat(examples, ignore_index=True) if examples else pd.DataFrame(columns=["corpus"])
    examples = examples[["corpus", *[c for c in examples.columns if c != "corpus"]]]
    restricted = examples["corpus"].isin(config.restricted_corpora)
    examples[~restricted].to_csv(args.examples, index=False)
    examples[restricted].to_csv(args.restricted_examples, index=False)
    args.figures.mkdir(parents=True, exist_ok=True)
    args.plot_data.mkdir(parents=True, exist_ok=True)
    for corpus, rows in summary.groupby("corpus", sort=False):
        plot_corpus(
            rows,
            config.models,
            order,
            f"{corpus}: test scores by mention property (mean ± SD over seeds)",
            args.figures / f"error_analysis_{corpus}.png",
        )
    for name, table in plot_data(summary).items():
        table.to_csv(args.plot_data / f"{name}.csv", index=False)

    with start_run(
        experiment="error-analysis",
        run_name="error-analysis",
        tags={
            "models": ",".join(config.models),
            "corpora": ",".join(summary["corpus"].unique()),
            "compare": ",".join(config.compare),
        },
        params={"error_analysis": params["error_analysis"], "cadec_split": params["cadec_split"]},
    ):
        mlflow.log_params({k: str(v) for k, v in asdict(config).items()})
        unseen = summary[(summary["dimension"] == "seen") & (summary["bucket"] == "unseen")]
        mlflow.log_metrics(
            {
                f"{r.corpus}/{r.model}/unseen_acc1": float(r.acc1_mean)
                for r in unseen.itertuples()
                if not pd.isna(r.acc1_mean)
            }
        )
        for path in (args.table, args.markdown, args.examples):
            mlflow.log_artifact(str(path))
        mlflow.log_artifact(str(args.restricted_examples), artifact_path="restricted")
        mlflow.log_artifacts(str(args.figures), artifact_path="figures")
        mlflow.log_artifacts(str(args.plot_data), artifact_path="plots")
    log.info("wrote %s, %s, %s", args.table, args.markdown, args.examples)


if __name__ == "__main__":
    main()
