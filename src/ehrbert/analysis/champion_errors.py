"""What each corpus's champion still gets wrong: every test error of the registered champion put under one cause.

An error is acc@1's (`ehrbert.metrics.accuracy_at_k`): a test mention with a concept whose first-ranked answer is
none of its gold IDs; mentions without a concept are left out, as acc@1 leaves them out. Each error gets the
first of these causes that holds:

- ``not_in_vocabulary``: a gold ID the vocabulary lacks (MEDIC 2017 has no OMIM:613825), so no answer is right;
- ``unseen_concept``: a gold concept with no training mention (`ehrbert.metrics.is_seen`): only the vocabulary's
  names can lead to it;
- ``training_disagrees``: training holds this very text (the mention's query) and annotates it most often with
  another concept set than this mention's gold: the corpus is not consistent with itself, and following training
  is wrong here;
- ``text_in_training``: training holds this text and annotates it most often with the gold concepts, and the
  answer is still another: the normalizer did not follow its own training data;
- ``seen_other_name``: the rest, a concept training shows under other texts, reached under another name (often a
  corpus convention that the names contradict: "familial melanoma" is annotated *Melanoma*).

Beside each cause: how many of its errors have a gold concept among the first stage's candidates (`top_k` of the
predictions, the candidates a second stage reorders), i.e. could be fixed by reordering alone.

The corpora are `compare.corpora`; the champion of a corpus is the one `compare` registered
(metrics/compare.json: model and seed); its run and output folder come from `compare`'s run table
(reports/runs.csv), its test predictions from that folder. Writes a CSV (corpus, cause, errors, reachable) and a
Markdown report with up to `--examples` errors a cause for corpora whose text may be shown (not
`error_analysis.restricted_corpora`); logs the counts to MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd

from ehrbert.analysis.errors import aligned
from ehrbert.corpora.records import Mention, Vocabulary
from ehrbert.metrics import is_seen, seen_concepts
from ehrbert.predictions import PREDICTION_FILE, read_predictions
from ehrbert.stage import read_params, setup_logging
from ehrbert.tasks import add_data_arguments, load_task
from ehrbert.tracking import start_run

log = logging.getLogger(__name__)

CAUSES = ("not_in_vocabulary", "unseen_concept", "training_disagrees", "text_in_training", "seen_other_name")


def champion_predictions(compare: dict, runs: pd.DataFrame, corpus: str, source: Path) -> tuple[str, int, Path]:
    """(model, seed, test predictions TSV) of `corpus`'s champion in `compare` (metrics/compare.json), its output
    folder taken from `runs` (reports/runs.csv, read from `source`): a hybrid variant's predictions are
    ``<variant>_test_predictions.tsv`` beside its model folder (stages hybrid and rerank), a fine-tuned
    classifier's ``test_predictions.tsv``."""
    champion = compare.get(corpus, {}).get("champion")
    if not champion:
        raise SystemExit(f"metrics/compare.json: no champion for {corpus}")
    model, seed = champion["model"], int(champion["seed"])
    rows = runs[(runs["corpus"] == corpus) & (runs["mentions"] == "gold") & (runs["model"] == model)]
    rows = rows[rows["seed"].astype(int) == seed]
    if len(rows) != 1:
        raise SystemExit(f"{source}: {len(rows)} runs of {model} seed {seed} on {corpus}, expected 1")
    row = rows.iloc[0]
    variant = row["variant"] if isinstance(row["variant"], str) and row["variant"] else None
    folder = Path(row["model_dir"]).parent
    path = folder / (f"{variant}_{PREDICTION_FILE}" if variant else PREDICTION_FILE)
    if not path.is_file():
        raise SystemExit(f"{source}: the champion's run ({model} seed {seed} on {corpus}) has no predictions {path}")
    return model, seed, path


def training_concepts(mentions: list[Mention], queries: list[str]) -> dict[str, tuple[str, ...]]:
    """Each training query -> the concept set training annotates it with most often (the first seen on a tie)."""
    counts: dict[str, Counter] = {}
    for mention, query in zip(mentions, queries):
        counts.setdefault(query, Counter())[tuple(sorted(mention.concept_ids))] += 1
    return {query: counter.most_common(1)[0][0] for query, counter in counts.items()}


def cause(mention: Mention, query: str, vocabulary: Vocabulary, seen: set[str], training: dict) -> str:
    """The first of `CAUSES` that holds for an error on `mention` (see the module's docstring)."""
    if any(concept not in vocabulary for concept in mention.concept_ids):
        return "not_in_vocabulary"
    if not is_seen(mention, seen):
        return "unseen_concept"
    if query in training:
        same = training[query] == tuple(sorted(mention.concept_ids))
        return "text_in_training" if same else "training_disagrees"
    return "seen_other_name"


def errors(mentions: list[Mention], table: pd.DataFrame, vocabulary: Vocabulary, train: tuple) -> pd.DataFrame:
    """One row per error of the predictions `table` (aligned with the test `mentions`): its cause, whether a gold
    concept is among the candidates, and what to show of it."""
    train_mentions, train_queries = train
    seen, training = seen_concepts(train_mentions), training_concepts(train_mentions, train_queries)
    rows = []
    for mention, row in zip(mentions, table.itertuples()):
        if not mention.concept_ids:
            continue
        ranked = row.top_k.split("|") if row.top_k else []
        if ranked and ranked[0] in mention.concept_ids:
            continue
        rows.append(
            {
                "cause": cause(mention, row.query, vocabulary, seen, training),
                "reachable": any(c in mention.concept_ids for c in ranked),
                "doc_id": mention.doc_id,
                "mention": mention.text,
                "gold": " | ".join(f"{c} {vocabulary.name_of(c)}" for c in mention.concept_ids),
                "answer": f"{ranked[0]} {vocabulary.name_of(ranked[0])}" if ranked else "(none)",
                "training": " | ".join(training.get(row.query, ())),
            }
        )
    return pd.DataFrame(rows, columns=["cause", "reachable", "doc_id", "mention", "gold", "answer", "training"])


def counts(found: pd.DataFrame, corpus: str, tested: int) -> pd.DataFrame:
    """Errors and reachable errors per cause, every cause listed, with the test mentions that have a concept."""
    grouped = found.groupby("cause")["reachable"].agg(["size", "sum"])
    return pd.DataFrame(
        {
            "corpus": corpus,
            "cause": CAUSES,
            "errors": [int(grouped["size"].get(c, 0)) for c in CAUSES],
            "reachable": [int(grouped["sum"].get(c, 0)) for c in CAUSES],
            "mentions": tested,
        }
    )


def examples(found: pd.DataFrame, per_cause: int) -> pd.DataFrame:
    """Up to `per_cause` errors of each cause, in `CAUSES`' order, a mention text and gold once."""
    distinct = found.drop_duplicates(["cause", "mention", "gold"])
    order = distinct["cause"].map(CAUSES.index)
    return distinct.iloc[order.argsort(kind="stable")].groupby("cause").head(per_cause)


def markdown(sections: list[tuple[str, str, int, pd.DataFrame, pd.DataFrame | None]]) -> str:
    """The report: per corpus the champion, the errors by cause, and examples where the corpus may be shown."""
    out = [
        "# The champions' remaining test errors, by cause",
        "",
        "Written by `ehrbert.analysis.champion_errors` (stage `champion_errors`); the causes are defined there. "
        "An error: a test mention with a concept whose first answer is none of its gold IDs (acc@1's rule). "
        "Reachable: a gold concept is among the first stage's candidates.",
    ]
    for corpus, model, seed, table, shown in sections:
        total = int(table["errors"].sum())
        tested = int(table["mentions"].iloc[0])
        out += ["", f"## {corpus}: `{model}` seed {seed}", ""]
        accuracy = 100 * (1 - total / tested)
        out += [f"{total} errors in {tested} test mentions with a concept (acc@1 {accuracy:.2f}).", ""]
        out += ["| cause | errors | share (%) | reachable |", "|---|---|---|---|"]
        for r in table.itertuples():
            share = 100 * r.errors / total if total else 0.0
            out.append(f"| {r.cause} | {r.errors} | {share:.1f} | {r.reachable} |")
        if shown is None:
            out += ["", "(Examples not shown: this corpus's text may not be redistributed.)"]
            continue
        for name, rows in shown.groupby("cause", sort=False):
            out += ["", f"{name}:", ""]
            for r in rows.itertuples():
                seen_as = f"; training: {r.training}" if r.training else ""
                out.append(f'- "{r.mention}" ({r.doc_id}): gold {r.gold}; answered {r.answer}{seen_as}')
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, required=True, help="compare's metrics (metrics/compare.json)")
    parser.add_argument("--runs", type=Path, required=True, help="compare's run table (reports/runs.csv)")
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--examples", type=int, default=8, help="errors shown a cause")
    parser.add_argument("--table", type=Path, required=True, help="CSV: errors per corpus and cause")
    parser.add_argument("--markdown", type=Path, required=True, help="the report")
    args = parser.parse_args(argv)
    setup_logging()

    params = read_params(args.params)
    restricted = set(params["error_analysis"]["restricted_corpora"])
    corpora = params["compare"]["corpora"]
    compare = json.loads(args.compare.read_text())
    runs = pd.read_csv(args.runs, dtype={"variant": str, "model_dir": str})
    tables, sections = [], []
    for corpus in corpora:
        model, seed, path = champion_predictions(compare, runs, corpus, args.runs)
        task = load_task(corpus, args, params["cadec_split"])
        mentions = task.mentions("test")
        table = aligned(read_predictions(path), mentions, path)
        found = errors(mentions, table, task.vocabulary, (task.mentions("train"), task.queries("train")))
        tally = counts(found, corpus, sum(1 for m in mentions if m.concept_ids))
        tables.append(tally.assign(model=model, seed=seed))
        shown = None if corpus in restricted else examples(found, args.examples)
        sections.append((corpus, model, seed, tally, shown))
        log.info("%s: %s seed %d, %d errors: %s", corpus, model, seed, len(found), dict(zip(tally.cause, tally.errors)))

    summary = pd.concat(tables, ignore_index=True)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.table, index=False)
    args.markdown.write_text(markdown(sections))
    with start_run(
        experiment="error-analysis",
        run_name="champion-errors",
        tags={"corpora": ",".join(corpora)},
        params={
            "compare.corpora": corpora,
            "error_analysis.restricted_corpora": sorted(restricted),
            "cadec_split": params["cadec_split"],
        },
    ):
        mlflow.log_metrics({f"{r.corpus}/{r.cause}": float(r.errors) for r in summary.itertuples()})
        mlflow.log_artifact(str(args.table))
        mlflow.log_artifact(str(args.markdown))
    log.info("wrote %s, %s", args.table, args.markdown)


if __name__ == "__main__":
    main()
