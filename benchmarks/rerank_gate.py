"""The second stage only where the first stage is unsure, with the gate chosen on dev: acc@1 against cost.

    python benchmarks/rerank_gate.py [--corpora cdr] [--seeds 1 2 3] [--report-only]

`benchmarks/rerank_cost.py` draws the test curve of a gate on the first stage's top-2 margin (rerank a mention
only where its margin is below the gate); this script asks which point of it dev would choose. For each corpus
and seed whose rerank stage chose its reranker (outputs/rerank/<corpus>-s<seed>/model; `dvc repro
rerank@<corpus>-<seed>` makes it), the dev answers of the reranker are those the stage judged its shipped reading
by, from rerankers that never saw their document (`document_consistency.held_out_reranked`), and every gate of
`rerank_cost.GATES` is scored on dev. Two rules choose a gate from dev alone:

- *best*: the highest dev acc@1, ties to the smaller gate (fewer mentions reranked);
- *lossless*: the smallest gate whose dev acc@1 is at least the ungated reranker's.

On test, the saved reranker (fitted on all of dev, as served) answers under every gate: acc@1, the share of
mentions reranked, the reranker's time per mention over the whole test set (median of `--repeats`), and its
time on one mention a call (p50 and p99 over `--single-calls` test mentions; a mention the gate skips costs the
margin check only). The first stage's own time is the same under every gate and is not in these figures.

Writes reports/rerank_gate.json (per corpus and seed) and .md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench import median_time  # benchmarks/ (this script's folder) is on the path
from data_paths import data_paths
from document_consistency import held_out_reranked
from rerank_cost import GATES, margin, rerank_gated, subset

from ehrbert.metrics import accuracy_at_k
from ehrbert.models.hybrid import HybridNormalizer, decide
from ehrbert.rerank import VARIANT, flips
from ehrbert.stage import read_params
from ehrbert.stats import mean_sd
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
RULES = ("best", "lossless")


def gated(first: list, reranked: list, margins: list[float], gate: float) -> list:
    """The reranked answer where the margin is below `gate`, the first stage's elsewhere."""
    return [r if m < gate else f for f, r, m in zip(first, reranked, margins)]


def judged(mentions: list, first: list, answers: list, margins: list[float], gate: float) -> dict:
    """acc@1 of `answers`, the share of mentions the gate reranks, and the mentions fixed / broken at rank 1
    against the first stage, with the one-sided exact McNemar P of that split."""
    fixed, broken, p_value = flips(mentions, first, answers)
    return {
        "acc1": accuracy_at_k(mentions, [a.ranked for a in answers], 1),
        "reranked_share": float(np.mean([m < gate for m in margins])),
        "fixed": fixed,
        "broken": broken,
        "p_value": p_value,
    }


def choose(dev_acc1: dict[float, float]) -> dict[str, float]:
    """Each rule's gate from the dev acc@1 of every gate (GATES is sorted: the first of equals is the smaller)."""
    best = max(dev_acc1.values())
    return {
        "best": next(g for g in GATES if dev_acc1[g] == best),
        "lossless": next(g for g in GATES if dev_acc1[g] >= dev_acc1[math.inf]),
    }


def single_calls(reranker, queries, first, candidates, margins, gate: float, calls: int) -> tuple[float, float]:
    """p50 and p99 (ms) of the reranker's step for one mention a call, over the first `calls` test mentions."""
    times = []
    for i in range(min(calls, len(queries))):
        started = time.perf_counter()
        if margins[i] < gate:
            reranker.rerank([queries[i]], [first[i]], subset(candidates, [i]))
        times.append(1000 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def label(gate: float) -> str:
    return "never" if gate == 0 else ("always" if math.isinf(gate) else str(gate))


def measure(corpus: str, seed: int, params: dict, repeats: int, calls: int) -> dict:
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    folder = ROOT / f"outputs/rerank/{corpus}-s{seed}/model"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no saved normalizer; run `dvc repro rerank@{corpus}-{seed}` first")
    model = HybridNormalizer.load(folder, VARIANT)
    if not model.rerank:
        return {"reranks": False}
    reranker, depth = model.reranker, model.reranker.config.depth
    splits = {}
    for split in ("dev", "test"):
        queries = task.queries(split)
        splits[split] = (queries, [m.doc_id for m in task.mentions(split)], model.candidates(queries))
    dev_candidates = splits["dev"][2]
    dev_first = decide(dev_candidates, model.settings, k=depth)
    dev_reranked = held_out_reranked(model, VARIANT, task, splits, depth, (corpus, seed))
    dev_margins = [margin(a) for a in dev_first]
    dev_mentions = task.mentions("dev")
    dev = {}
    for gate in GATES:
        dev[gate] = judged(
            dev_mentions, dev_first, gated(dev_first, dev_reranked, dev_margins, gate), dev_margins, gate
        )
    chosen = choose({g: d["acc1"] for g, d in dev.items()})

    queries, _, candidates = splits["test"]
    first = decide(candidates, model.settings, k=depth)
    margins = [margin(a) for a in first]
    mentions = task.mentions("test")
    test = {}
    for gate in GATES:
        answers = rerank_gated(reranker, queries, first, candidates, margins, gate)
        seconds = median_time(lambda g=gate: rerank_gated(reranker, queries, first, candidates, margins, g), repeats)
        p50, p99 = single_calls(reranker, queries, first, candidates, margins, gate, calls)
        test[gate] = judged(mentions, first, answers, margins, gate) | {
            "ms_per_mention": 1000 * seconds / len(queries),
            "single_call_p50_ms": p50,
            "single_call_p99_ms": p99,
        }
    return {
        "reranks": True,
        "dev_mentions": len(dev_mentions),
        "test_mentions": len(mentions),
        "gates": [label(g) for g in GATES],
        "dev": {label(g): d for g, d in dev.items()},
        "test": {label(g): t for g, t in test.items()},
        "chosen": {rule: label(g) for rule, g in chosen.items()},
    }


def report(results: dict, corpora: list[str], seeds: list[int]) -> str:
    lines = [
        "# The second stage where the first stage is unsure: the gate chosen on dev",
        "",
        "`python benchmarks/rerank_gate.py` (see its docstring). A mention is reranked only where the first "
        "stage's top-2 margin is below the gate. Dev acc@1 is the shipped reading's, from rerankers that never "
        "saw their document (as the rerank stage judges it); test is the saved reranker's. *best*: the highest "
        "dev acc@1, ties to the smaller gate; *lossless*: the smallest gate with the ungated reranker's dev acc@1 "
        "or more. Times: the reranker's step alone, fp32 on 2 CPU cores.",
    ]
    for corpus in corpora:
        rows = [results.get(f"{corpus}-s{s}") for s in seeds]
        if not all(rows):
            continue
        if not all(r["reranks"] for r in rows):
            used = [s for s, r in zip(seeds, rows) if r["reranks"]]
            lines += ["", f"## {corpus}", "", f"The rerank stage chose its reranker on seeds {used} only."]
            rows = [r for r in rows if r["reranks"]]
            if not rows:
                continue
        gates = rows[0]["gates"]
        lines += [
            "",
            f"## {corpus} ({rows[0]['dev_mentions']} dev, {rows[0]['test_mentions']} test mentions; "
            f"mean (SD) over {len(rows)} seeds)",
            "",
            "| rerank where top-2 margin < | dev reranked | dev acc@1 | dev fixed / broken | test reranked "
            "| test acc@1 | test fixed / broken | ms / mention | one a call p50 / p99 ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for gate in gates:
            d = [r["dev"][gate] for r in rows]
            t = [r["test"][gate] for r in rows]
            lines.append(
                f"| {gate} | {mean_sd([x['reranked_share'] for x in d])} | {mean_sd([x['acc1'] for x in d])} "
                f"| {sum(x['fixed'] for x in d)} / {sum(x['broken'] for x in d)} "
                f"| {mean_sd([x['reranked_share'] for x in t])} | {mean_sd([x['acc1'] for x in t])} "
                f"| {sum(x['fixed'] for x in t)} / {sum(x['broken'] for x in t)} "
                f"| {np.mean([x['ms_per_mention'] for x in t]):.3f} "
                f"| {np.mean([x['single_call_p50_ms'] for x in t]):.3f} / "
                f"{np.mean([x['single_call_p99_ms'] for x in t]):.2f} |"
            )
        lines += ["", "Shares and acc@1 in %; fixed / broken summed over seeds, against the first stage.", ""]
        for rule in RULES:
            picks = [r["chosen"][rule] for r in rows]
            test = [r["test"][g] for r, g in zip(rows, picks)]
            always = [r["test"]["always"] for r in rows]
            lines.append(
                f"- *{rule}*: gates {', '.join(picks)} (seeds {', '.join(str(s) for s in seeds[: len(rows)])}); "
                f"test acc@1 {mean_sd([t['acc1'] for t in test])} against {mean_sd([a['acc1'] for a in always])} "
                f"ungated, {mean_sd([t['reranked_share'] for t in test])} % of mentions reranked, "
                f"{np.mean([t['ms_per_mention'] for t in test]):.3f} ms / mention against "
                f"{np.mean([a['ms_per_mention'] for a in always]):.3f}."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["cdr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-calls", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "reports/rerank_gate")
    parser.add_argument("--report-only", action="store_true", help="write the .md from the .json, measure nothing")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    params = read_params(ROOT / "params.yaml")
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    for corpus in [] if args.report_only else args.corpora:
        for seed in args.seeds:
            key = f"{corpus}-s{seed}"
            results[key] = measure(corpus, seed, params, args.repeats, args.single_calls)
            store.write_text(json.dumps(results, indent=1) + "\n")
            print(key, results[key].get("chosen"), file=sys.stderr)
    args.out.with_suffix(".md").write_text(report(results, args.corpora, args.seeds))


if __name__ == "__main__":
    main()
