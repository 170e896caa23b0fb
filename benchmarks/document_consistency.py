"""Document consistency over the pipeline's normalizers: what it adds to each variant, chosen on dev.

    python benchmarks/document_consistency.py [--corpora ncbi cdr cadec] [--seeds 1 2 3] [--report-only]

For each corpus and seed it loads the second stage's saved normalizer (outputs/rerank/<corpus>-s<seed>/model,
which holds every first-stage variant too; `dvc repro rerank@<corpus>-<seed>` makes it), computes the dev and
test candidates once, and answers as each variant: `retrieval`, `hybrid`, `hybrid_composite`,
`hybrid_no_concept` and `hybrid_rerank` (the first stage where the stage shipped no reranker; else its dev
answers from rerankers that never saw their document, as the rerank stage judged the reading it shipped:
`ehrbert.rerank.dev_probabilities` over dev's rows, the cross-fitted training rows of outputs/cross_fit, or
both). For each variant the rule of `ehrbert.models.consistency` is chosen on dev (params.yaml `consistency`: the
grid; used where dev's one-sided exact McNemar P is below `significance`), once by each objective (the task's F1,
acc@1; params.yaml names the one a stage would use), and applied to test. Test acc@1 (seen / unseen concepts) and the
task's F1 are set beside the variant's own, with the mentions it fixed and broke on test.

Writes reports/document_consistency.json (per corpus and seed, objective and variant) and .md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from data_paths import data_paths  # benchmarks/ (this script's folder) is on the path
from scipy.stats import binomtest, ttest_rel

from ehrbert.cross_fit import read_candidates
from ehrbert.hybrid import score
from ehrbert.metrics import seen_concepts
from ehrbert.models.consistency import OBJECTIVES, Consistency, ConsistencyConfig, apply, choose
from ehrbert.models.hybrid import HybridNormalizer, decide
from ehrbert.models.rerank import Reranker, reorder
from ehrbert.rerank import VARIANT as RERANKED
from ehrbert.rerank import decided_groups, dev_probabilities, flips
from ehrbert.stage import config_from, read_params
from ehrbert.stats import mean_sd
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("acc1", "acc1_seen", "acc1_unseen", "f1")
OBJECTIVE_NAMES = {"f1": "F1", "acc1": "acc@1"}


def variant_answers(model: HybridNormalizer, variant: str, queries: list[str], candidates, depth: int) -> list:
    """The variant's answers, each with at least `depth` ranked candidates."""
    depth = max(depth, model.reranker.config.depth if model.reranker else 0)
    answers = decide(candidates, model.variants[variant], k=depth)
    if variant in model.reranked:
        answers = model.reranker.rerank(queries, answers, candidates)
    return answers


def held_out_reranked(model: HybridNormalizer, variant: str, task, splits: dict, depth: int, run: tuple) -> list:
    """The reranked variant's dev answers as the rerank stage judged the reading it shipped (`run`: corpus, seed):
    each dev document's from a reranker that never trained on it (the saved reranker may have trained on all of
    dev, so its dev answers are not a fair place to choose anything)."""
    corpus, seed = run
    queries, documents, candidates = splits["dev"]
    reranker = model.reranker
    answers = decide(candidates, model.variants[variant], k=max(depth, reranker.config.depth))
    features, owners = reranker.features(queries, answers, candidates)
    labels = Reranker.labels(answers, owners, task.mentions("dev"), reranker.config.candidates)
    reading = json.loads((ROOT / f"metrics/rerank/{corpus}-s{seed}.json").read_text())[RERANKED]["reading"]
    groups = []
    if reading != "dev":
        held = read_candidates(ROOT / f"outputs/cross_fit/{corpus}-s{seed}", len(task.mentions("train")))
        groups = decided_groups(task, reranker.config, held, model.variants[variant])
    probabilities = dev_probabilities(reranker, reading, (features, labels, owners), documents, groups, seed)
    return reorder(answers, owners, probabilities, reranker.config.candidates)


def measure(corpus: str, seed: int, params: dict, config: ConsistencyConfig) -> dict[str, dict]:
    """Per variant: the rule chosen on dev, dev and test scores without and with it, and the test flips."""
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    seen = seen_concepts(task.mentions("train"))
    folder = ROOT / f"outputs/rerank/{corpus}-s{seed}/model"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no saved normalizer; run `dvc repro rerank@{corpus}-{seed}` first")
    model = HybridNormalizer.load(folder)
    splits = {}
    for split in ("dev", "test"):
        queries = task.queries(split)
        documents = [m.doc_id for m in task.mentions(split)]
        splits[split] = (queries, documents, model.candidates(queries))
    variants = list(model.variants)  # `hybrid_rerank` answers as the first stage where the stage shipped no reranker
    out = {}
    for variant in variants:
        queries, _, candidates = splits["test"]
        answers = {"test": variant_answers(model, variant, queries, candidates, config.depth)}
        if variant in model.reranked:
            answers["dev"] = held_out_reranked(model, variant, task, splits, config.depth, (corpus, seed))
        else:
            queries, _, candidates = splits["dev"]
            answers["dev"] = variant_answers(model, variant, queries, candidates, config.depth)
        for objective in OBJECTIVES:
            out.setdefault(objective, {})[variant] = measure_variant(task, seen, splits, answers, config, objective)
    return out


def measure_variant(task, seen: set[str], splits: dict, answers: dict, config: ConsistencyConfig, objective: str):
    """One variant's answers without and with the rule dev chooses for it by `objective`."""
    dev_queries, dev_documents, _ = splits["dev"]

    def on_dev(rule: Consistency) -> float:
        return score(task, "dev", apply(answers["dev"], dev_documents, dev_queries, rule), seen)[objective]

    dev_mentions = task.mentions("dev")
    started = time.perf_counter()
    rule, tried = choose(config.weights, config.margins, on_dev, config.depth)
    dev_with = apply(answers["dev"], dev_documents, dev_queries, rule)
    dev_fixed, dev_broken, dev_p = flips(dev_mentions, answers["dev"], dev_with)
    used = dev_fixed > dev_broken and dev_p < config.significance
    test_queries, test_documents, _ = splits["test"]
    test_with = apply(answers["test"], test_documents, test_queries, rule)
    seconds = time.perf_counter() - started
    test_fixed, test_broken, test_p = flips(task.mentions("test"), answers["test"], test_with)
    without, best = score(task, "test", answers["test"], seen), score(task, "test", test_with, seen)
    return {
        "rule": asdict(rule),
        "dev": {"without": next(iter(tried.values())), "with": tried[rule]},
        "dev_fixed": dev_fixed,
        "dev_broken": dev_broken,
        "dev_p_value": dev_p,
        "used": used,
        "test_without": {k: without[k] for k in KEYS},
        "test_dev_best": {k: best[k] for k in KEYS},
        "test_used": {k: (best if used else without)[k] for k in KEYS},
        "test_fixed": test_fixed,
        "test_broken": test_broken,
        "test_p_value": test_p,
        "choose_and_apply_seconds": round(seconds, 2),
    }


def p_paired(before: list[float], after: list[float]) -> str:
    """Paired t-test P over seeds; a dash where it is undefined (one seed, or the same change on every seed)."""
    differences = {round(b - a, 12) for a, b in zip(before, after)}
    if len(before) < 2 or len(differences) < 2:
        return "–"
    return f"{ttest_rel(after, before).pvalue:.3f}"


def report(results: dict, corpora: list[str], seeds: list[int], config: ConsistencyConfig) -> str:
    lines = [
        "# Document consistency",
        "",
        "`python benchmarks/document_consistency.py` (see its docstring; the rule: `ehrbert.models.consistency`). "
        f"Mean (SD) over seeds {', '.join(map(str, seeds))} of the pipeline's normalizers. For each variant, "
        "(weight, margin) is chosen on dev from the grid of params.yaml `consistency` "
        f"(weights {config.weights}, margins {config.margins}, depth {config.depth}) and used where dev's "
        f"one-sided exact McNemar P < {config.significance}. *Without*: the variant as the pipeline serves it; "
        "*dev's best*: with the rule dev chose, whatever its P; *used*: with it only where dev's P says so. "
        "P: paired t-test over seeds against *without*. Flips: test mentions the dev-best rule made right / "
        "wrong at rank 1, summed over seeds, with the two-sided exact binomial P of that split (the same mentions "
        "under each seed's model: a description, not an independent test).",
    ]
    for objective in sorted(OBJECTIVES, key=lambda o: o != config.objective):
        lines += [
            "",
            f"## Chosen by dev {OBJECTIVE_NAMES[objective]}"
            + (" (params.yaml)" if objective == config.objective else ""),
            "",
            f"| corpus | variant | used (seeds) | dev {OBJECTIVE_NAMES[objective]} without → dev's best "
            "| test acc@1 without | dev's best | P | used | seen / unseen, used "
            "| test F1 without | dev's best | P | used | test flips + / −, P |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for corpus in corpora:
            rows = [results.get(f"{corpus}-s{s}", {}).get(objective) for s in seeds]
            if all(rows):
                lines += [table_row(corpus, v, [r[v] for r in rows]) for v in rows[0] if all(v in r for r in rows)]
        lines += ["", "Rules dev chose (weight / margin; dev mentions fixed / broken at rank 1, McNemar P):", ""]
        for corpus in corpora:
            for seed in seeds:
                row = results.get(f"{corpus}-s{seed}", {}).get(objective, {})
                chosen = ", ".join(
                    f"{v} {c['rule']['weight']} / {c['rule']['margin']} ({c['dev_fixed']} / {c['dev_broken']}, "
                    f"P {c['dev_p_value']:.3g})"
                    for v, c in row.items()
                )
                if chosen:
                    lines.append(f"- {corpus} seed {seed}: {chosen}")
    return "\n".join(lines) + "\n"


def table_row(corpus: str, variant: str, cells: list[dict]) -> str:
    def get(part: str, key: str) -> list[float]:
        return [c[part][key] for c in cells]

    return (
        f"| {corpus} | {variant} | {sum(c['used'] for c in cells)} of {len(cells)} "
        f"| {mean_sd(get('dev', 'without'))} → {mean_sd(get('dev', 'with'))} "
        f"| {mean_sd(get('test_without', 'acc1'))} | {mean_sd(get('test_dev_best', 'acc1'))} "
        f"| {p_paired(get('test_without', 'acc1'), get('test_dev_best', 'acc1'))} "
        f"| {mean_sd(get('test_used', 'acc1'))} "
        f"| {mean_sd(get('test_used', 'acc1_seen'))} / {mean_sd(get('test_used', 'acc1_unseen'))} "
        f"| {mean_sd(get('test_without', 'f1'))} | {mean_sd(get('test_dev_best', 'f1'))} "
        f"| {p_paired(get('test_without', 'f1'), get('test_dev_best', 'f1'))} "
        f"| {mean_sd(get('test_used', 'f1'))} "
        f"| {flips_text(sum(c['test_fixed'] for c in cells), sum(c['test_broken'] for c in cells))} |"
    )


def flips_text(fixed: int, broken: int) -> str:
    """Fixed / broken, with the two-sided exact binomial P of that split (seeds pooled: the same test mentions
    under three models, so a description, not an independent test)."""
    if fixed + broken == 0:
        return "0 / 0"
    return f"{fixed} / {broken}, P {binomtest(fixed, fixed + broken, 0.5).pvalue:.2g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr", "cadec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "reports/document_consistency")
    parser.add_argument("--report-only", action="store_true", help="write the .md from the .json, measure nothing")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    params = read_params(ROOT / "params.yaml")
    config = config_from(ConsistencyConfig, params["consistency"], "consistency", ROOT / "params.yaml")
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    for corpus in [] if args.report_only else args.corpora:
        for seed in args.seeds:
            key = f"{corpus}-s{seed}"
            results[key] = measure(corpus, seed, params, config)
            store.write_text(json.dumps(results, indent=1) + "\n")
            chosen = results[key][config.objective].items()
            print(key, {v: (r["rule"], r["used"], r["test_used"]["acc1"]) for v, r in chosen}, file=sys.stderr)
    args.out.with_suffix(".md").write_text(report(results, args.corpora, args.seeds, config))


if __name__ == "__main__":
    main()
