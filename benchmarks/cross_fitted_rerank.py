"""A reranker trained on cross-fitted candidates of the training split, against the rerank stage's (dev's).

    accelerate launch $ACCELERATE_ARGS benchmarks/cross_fitted_rerank.py [--corpora ncbi cdr cadec] [--seeds 1 2 3]
        [--folds 5] [--encoder shared|per-group] [--report-only]

The rerank stage (`ehrbert.rerank`) trains its reranker on the dev split's candidates, because the training
split's own candidates are not what the first stage gives an unseen mention: every training mention is an index
entry, and the encoder has learned it. Dev is small (NCBI: 787 mentions), and on NCBI it never admits the
reranker. Cross-fitting makes training candidates that are like test's: the training documents are cut into
`--folds` groups, and each group's candidates come from a first stage that never saw the group's mentions.

For each corpus and seed, with the first stage as retrieval alone (`hybrid.config`: its encoder, its training
and index; no classifier, so that the cross-fitted first stages are cheap; NCBI's champion is retrieval alone):

- **full**: the encoder trained on the whole training split, from the same start, params and seed as the hybrid
  stage trains it, and the index of the vocabulary and every training mention; the dev and test candidates.
- **each group**: an index of the vocabulary and the other groups' mentions, and the reranker's training
  evidence (mention counts, the share of a query's annotations, the training mentions it compares with) from
  those mentions alone. The group's candidates, features and labels are the reranker's cross-fitted training
  rows. The encoder is `--encoder`: `per-group`, one trained the same way on the other groups' mentions (nothing
  of the first stage has seen the group; six encoders and six embeddings of the vocabulary a seed), or `shared`,
  the whole split's (it has met the group's mentions in training, about twice each at NCBI's size, but no index
  entry or evidence holds them; one encoder a seed).

Readings, the reranker of `ehrbert.models.rerank` with params.yaml `rerank.config`, each judged on dev as the
stage judges its own (used where it fixes more dev mentions than it breaks at rank 1, one-sided exact McNemar
P < `significance`):

- `dev`: the stage's: trained on dev's candidates; dev answers cross-validated over dev documents;
- `cross-fitted`: trained on the training split's cross-fitted candidates; dev is unseen by it;
- `cross-fitted + dev`: trained on both; each dev fold's answers from one trained on the training rows and the
  other dev folds.

Each finished corpus and seed is kept in reports/cross_fitted_rerank.json, so that an interrupted measurement
goes on where it stopped; writes reports/cross_fitted_rerank.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from data_paths import data_paths  # benchmarks/ (this script's folder) is on the path
from document_consistency import p_paired
from sklearn.model_selection import GroupKFold
from transformers import set_seed

from ehrbert.hub import resolve_model
from ehrbert.hybrid import HybridConfig, score
from ehrbert.launch import make_accelerator
from ehrbert.metrics import seen_concepts
from ehrbert.models import retrieval
from ehrbert.models.hybrid import HybridNormalizer, Settings, decide
from ehrbert.models.name_index import NameIndex
from ehrbert.models.rerank import RerankConfig, Reranker, reorder
from ehrbert.rerank import cross_validated, flips
from ehrbert.stage import config_from, read_params
from ehrbert.stats import mean_sd
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
READINGS = ("first stage", "dev", "cross-fitted", "cross-fitted + dev")
KEYS = ("acc1", "acc1_seen", "acc1_unseen", "f1")
ENCODERS = ("per-group", "shared")  # the cross-fitted first stages' encoder: trained without the group, or not
FLIPS = ("dev_fixed", "dev_broken", "test_fixed", "test_broken")


def first_stage(task, config: HybridConfig, seed: int, mentions: list, queries: list[str], accelerator):
    """Retrieval alone, trained and indexed on `mentions` (with their `queries`) as the hybrid stage does it."""
    set_seed(seed)
    encoder, tokenizer = retrieval.load_encoder(resolve_model(config.encoder))
    names = retrieval.concept_names(task.vocabulary)
    pairs = retrieval.mention_pairs(mentions, queries, names)
    retrieval.train_encoder(encoder, tokenizer, names, pairs, config.retrieval, seed, accelerator)
    index = NameIndex.build(task.vocabulary, mentions, queries)
    index.embed(encoder, tokenizer, config.retrieval)
    return HybridNormalizer(encoder, tokenizer, index, config.retrieval, classifier_top_k=config.classifier_top_k)


def rows_for(model, reranker: Reranker, queries: list[str], mentions: list, depth: int) -> tuple:
    """(answers, features, owners, labels) of `queries` under `model`, with `reranker`'s evidence."""
    candidates = model.candidates(queries)
    answers = decide(candidates, Settings(), k=depth)
    features, owners = reranker.features(queries, answers, candidates)
    return answers, features, owners, Reranker.labels(answers, owners, mentions, reranker.config.candidates)


def indexed_without(full: HybridNormalizer, task, config: HybridConfig, mentions: list, queries: list[str]):
    """`full`'s encoder over an index of the vocabulary and `mentions` alone (their vectors taken from `full`'s
    index, which holds every training mention)."""
    index = NameIndex.build(task.vocabulary, mentions, queries)
    index.embeddings = full.index.embeddings[[full.index.position[text] for text in index.texts]]
    return HybridNormalizer(
        full.encoder, full.tokenizer, index, config.retrieval, classifier_top_k=config.classifier_top_k
    )


def cross_fitted_rows(
    task, config: HybridConfig, rerank: RerankConfig, seed: int, folds: int, accelerator, full=None
) -> tuple:
    """The training split's rows (features, labels), each group's from a first stage and evidence without it: an
    encoder trained without the group, or with `full` (the whole split's first stage) its encoder, shared."""
    mentions, queries = task.mentions("train"), task.queries("train")
    groups = [m.doc_id for m in mentions]
    features, labels = [], []
    for k, (rest, held) in enumerate(GroupKFold(folds).split(queries, groups=groups)):
        started = time.perf_counter()
        rest_mentions, rest_queries = [mentions[i] for i in rest], [queries[i] for i in rest]
        if full is None:
            model = first_stage(task, config, seed, rest_mentions, rest_queries, accelerator)
        else:
            model = indexed_without(full, task, config, rest_mentions, rest_queries)
        evidence = Reranker.build(rerank, task.vocabulary, rest_mentions, rest_queries)
        _, x, _, y = rows_for(model, evidence, [queries[i] for i in held], [mentions[i] for i in held], rerank.depth)
        features.append(x)
        labels.append(y)
        print(f"  group {k + 1}/{folds}: {len(held)} mentions, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return np.concatenate(features), np.concatenate(labels)


def dev_with_training_rows(reranker, dev: tuple, documents: list[str], train_rows: tuple, seed: int) -> np.ndarray:
    """Each dev pair's probability from a reranker trained on the training rows and the other dev documents."""
    features, labels, owners = dev
    groups = np.asarray([documents[i] for i in owners])
    out = np.zeros(len(features))
    for rest, held in GroupKFold(reranker.config.folds).split(features, labels, groups):
        x = np.concatenate([train_rows[0], features[rest]])
        y = np.concatenate([train_rows[1], labels[rest]])
        out[held] = reranker.new_model(seed).fit(x, y).predict_proba(features[held])[:, 1]
    return out


def measure(corpus: str, seed: int, folds: int, params: dict, accelerator, shared: bool) -> dict:
    """Every reading's dev judgement and dev and test scores for one corpus and seed (`shared`: the cross-fitted
    first stages share the whole split's encoder)."""
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", ROOT / "params.yaml")
    rerank = config_from(RerankConfig, params["rerank"]["config"], "rerank.config", ROOT / "params.yaml")
    significance, depth, k = rerank.significance, rerank.depth, rerank.candidates
    seen = seen_concepts(task.mentions("train"))

    model = first_stage(task, config, seed, task.mentions("train"), task.queries("train"), accelerator)
    started = time.perf_counter()
    train_rows = cross_fitted_rows(task, config, rerank, seed, folds, accelerator, model if shared else None)
    cross_seconds = time.perf_counter() - started
    evidence = Reranker.build(rerank, task.vocabulary, task.mentions("train"), task.queries("train"))
    dev_mentions, test_mentions = task.mentions("dev"), task.mentions("test")
    dev_first, dev_x, dev_owners, dev_y = rows_for(model, evidence, task.queries("dev"), dev_mentions, depth)
    test_first, test_x, test_owners, _ = rows_for(model, evidence, task.queries("test"), test_mentions, depth)
    documents = [m.doc_id for m in dev_mentions]

    def fitted(x: np.ndarray, y: np.ndarray) -> list:
        return reorder(test_first, test_owners, evidence.new_model(seed).fit(x, y).predict_proba(test_x)[:, 1], k)

    both = (np.concatenate([train_rows[0], dev_x]), np.concatenate([train_rows[1], dev_y]))
    dev_answers = {
        "first stage": dev_first,
        "dev": reorder(dev_first, dev_owners, cross_validated(evidence, dev_x, dev_y, dev_owners, documents, seed), k),
        "cross-fitted": reorder(
            dev_first, dev_owners, evidence.new_model(seed).fit(*train_rows).predict_proba(dev_x)[:, 1], k
        ),
        "cross-fitted + dev": reorder(
            dev_first,
            dev_owners,
            dev_with_training_rows(evidence, (dev_x, dev_y, dev_owners), documents, train_rows, seed),
            k,
        ),
    }
    test_answers = {
        "first stage": test_first,
        "dev": fitted(dev_x, dev_y),
        "cross-fitted": fitted(*train_rows),
        "cross-fitted + dev": fitted(*both),
    }
    out = {"cross_fit_seconds": round(cross_seconds, 1), "training_rows": len(train_rows[1]), "dev_rows": len(dev_y)}
    for reading in READINGS:
        fixed, broken, p_value = flips(dev_mentions, dev_first, dev_answers[reading])
        test_fixed, test_broken, _ = flips(test_mentions, test_first, test_answers[reading])
        dev_scores = score(task, "dev", dev_answers[reading], seen)
        test_scores = score(task, "test", test_answers[reading], seen)
        out[reading] = {
            "dev_acc1": dev_scores["acc1"],
            "dev_f1": dev_scores["f1"],
            "dev_fixed": fixed,
            "dev_broken": broken,
            "dev_p_value": p_value,
            "used": reading != "first stage" and fixed > broken and p_value < significance,
            "test": {key: test_scores[key] for key in KEYS},
            "test_fixed": test_fixed,
            "test_broken": test_broken,
        }
    return out


def report(results: dict, corpora: list[str], seeds: list[int], folds: int) -> str:
    lines = [
        "# A reranker trained on cross-fitted candidates",
        "",
        f"`benchmarks/cross_fitted_rerank.py` (see its docstring): first stage retrieval alone; {folds} groups of "
        "training documents, each group's candidates from a first stage indexed without it, its encoder trained "
        "without it (`per-group`) or the whole split's (`shared`). Mean (SD) over the seeds measured. Dev: acc@1 "
        "(the `dev` reading's cross-validated over dev documents), mentions fixed / broken at rank 1 against the "
        "first stage over all seeds, and the seeds on which the stage's rule (McNemar) would use it. Test: always "
        "used, with the paired t-test's P over seeds against the first stage, and the mentions fixed / broken.",
        "",
        "| corpus | encoder | seeds | reading | dev acc@1 | dev fixed / broken | used on | test acc@1 | P | "
        "seen / unseen | test F1 | test fixed / broken |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for corpus in corpora:
        for encoder in ENCODERS:
            measured = [s for s in seeds if f"{corpus}-s{s}-{encoder}" in results]
            if not measured:
                continue
            rows = [results[f"{corpus}-s{s}-{encoder}"] for s in measured]
            lines += table_rows(f"{corpus} | {encoder} | {', '.join(map(str, measured))}", rows)
            seconds = sum(r["cross_fit_seconds"] for r in rows) / len(rows)
            notes.append(
                f"- {corpus}, {encoder}: {rows[0]['training_rows']} cross-fitted training rows against "
                f"{rows[0]['dev_rows']} dev rows a seed; the {folds} cross-fitted first stages took "
                f"{seconds / 60:.1f} min a seed (2 CPU cores)."
            )
    return "\n".join([*lines, "", *notes]) + "\n"


def table_rows(head: str, rows: list[dict]) -> list[str]:
    """One table line per reading, over `rows` (one a seed)."""
    first = [r["first stage"]["test"]["acc1"] for r in rows]
    lines = []
    for reading in READINGS:
        cells = [r[reading] for r in rows]
        test = {key: mean_sd([c["test"][key] for c in cells]) for key in KEYS}
        p_value = "–" if reading == "first stage" else p_paired(first, [c["test"]["acc1"] for c in cells])
        total = {key: sum(c[key] for c in cells) for key in FLIPS}
        lines.append(
            f"| {head} | {reading} | {mean_sd([c['dev_acc1'] for c in cells])} | "
            f"{total['dev_fixed']} / {total['dev_broken']} | {sum(c['used'] for c in cells)} of {len(cells)} | "
            f"{test['acc1']} | {p_value} | {test['acc1_seen']} / {test['acc1_unseen']} | {test['f1']} | "
            f"{total['test_fixed']} / {total['test_broken']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr", "cadec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--folds", type=int, default=5, help="groups of training documents")
    parser.add_argument(
        "--encoder", choices=ENCODERS, default="shared", help="the cross-fitted first stages' encoder (see above)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports/cross_fitted_rerank")
    parser.add_argument("--report-only", action="store_true", help="write the report from the kept results")
    args = parser.parse_args(argv)
    params = read_params(ROOT / "params.yaml")
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    if not args.report_only:
        accelerator = make_accelerator()
        for corpus in args.corpora:
            for seed in args.seeds:
                key = f"{corpus}-s{seed}-{args.encoder}"
                if key in results:
                    continue
                results[key] = measure(corpus, seed, args.folds, params, accelerator, args.encoder == "shared")
                store.write_text(json.dumps(results, indent=1) + "\n")
                summary = {r: round(results[key][r]["test"]["acc1"], 4) for r in READINGS}
                print(key, summary, file=sys.stderr, flush=True)
    args.out.with_suffix(".md").write_text(report(results, args.corpora, args.seeds, args.folds), encoding="utf-8")


if __name__ == "__main__":
    main()
