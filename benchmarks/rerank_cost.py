"""What the second stage gives and costs when served: acc@1 against time, reranking every mention or only the unsure.

    python benchmarks/rerank_cost.py [--models models:/ehrbert-ncbi@champion models:/ehrbert-cdr@champion]

For each registered model, loaded as it is served (its model config: the fast form) and as its registered
variant: the test mentions' first-stage candidates are computed once; then, for each gate in `GATES`, the
reranker reorders only the mentions whose first-stage top-2 margin is below the gate (0: none, the first stage;
inf: every mention, as the served model does). For each gate: acc@1 on the corpus's test split, the share of
mentions reranked, and the reranker's time per mention over all mentions (median of `--repeats`). Also the
latency of one mention a call with and without the reranker (median over `--single-calls` mentions). A model
whose registered variant does not rerank (dev did not choose the reranker for it) is reported as such.

Writes reports/rerank_cost.json and reports/rerank_cost.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import mlflow
from bench import median_time  # benchmarks/ (this script's folder) is on the path
from data_paths import data_paths

from ehrbert.metrics import accuracy_at_k
from ehrbert.models.hybrid import Candidates, decide
from ehrbert.stage import read_params
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
GATES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, math.inf]


def subset(candidates: Candidates, rows: list[int]) -> Candidates:
    pick = lambda values: [values[i] for i in rows] if values else values
    return Candidates(*(pick(getattr(candidates, f.name)) for f in dataclasses.fields(Candidates)))


def margin(answer) -> float:
    """The first stage's top-2 margin (infinite for one candidate: nothing to reorder)."""
    return answer.scores[0] - answer.scores[1] if len(answer.scores) > 1 else math.inf


def rerank_gated(reranker, queries: list[str], first: list, candidates, margins: list[float], gate: float) -> list:
    """What a model with this gate answers: the first stage's `first` answers, reranked (features and trees
    for those mentions only) where the margin is below `gate`."""
    rows = [i for i, m in enumerate(margins) if m < gate]
    answers = list(first)
    if rows:
        picked = reranker.rerank([queries[i] for i in rows], [first[i] for i in rows], subset(candidates, rows))
        for i, answer in zip(rows, picked):
            answers[i] = answer
    return answers


def measure(uri: str, params: dict, repeats: int, single_calls: int) -> dict:
    pyfunc = mlflow.pyfunc.load_model(uri)
    model = pyfunc.unwrap_python_model().model
    corpus = uri.split("/")[-1].split("@")[0].removeprefix("ehrbert-")
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    mentions, queries = task.mentions("test"), task.queries("test")
    out = {"model": uri, "runtime": type(model).__name__, "reranks": bool(model.rerank), "mentions": len(queries)}
    if not model.rerank:
        out["first_stage_acc1"] = accuracy_at_k(mentions, [a.ranked for a in model.predict(queries)], 1)
        return out
    reranker, k = model.reranker, model.reranker.config.depth
    candidates = model.candidates(queries)
    first = decide(candidates, model.settings, k=k)
    margins = [margin(a) for a in first]
    gates = []
    for gate in GATES:
        rerank = lambda g=gate: rerank_gated(reranker, queries, first, candidates, margins, g)
        answers = rerank()
        seconds = median_time(rerank, repeats)
        gates.append(
            {
                "gate": "never" if gate == 0 else ("always" if math.isinf(gate) else gate),
                "reranked_share": round(sum(m < gate for m in margins) / len(queries), 3),
                "acc1": round(accuracy_at_k(mentions, [a.ranked for a in answers], 1), 4),
                "rerank_ms_per_mention": round(1000 * seconds / len(queries), 3),
            }
        )
    singles = queries[:single_calls]
    with_reranker = median_time(lambda: [model.predict([q]) for q in singles], repeats) / len(singles)
    model.rerank = False
    without = median_time(lambda: [model.predict([q]) for q in singles], repeats) / len(singles)
    model.rerank = True
    out.update(
        gates=gates,
        single_call_ms_first_stage=round(1000 * without, 2),
        single_call_ms_reranked=round(1000 * with_reranker, 2),
    )
    return out


def markdown(results: list[dict]) -> str:
    lines = ["# The second stage's cost: acc@1 against time", ""]
    for r in results:
        lines.append(f"## {r['model']} ({r['runtime']}, {r['mentions']} test mentions)")
        lines.append("")
        if not r["reranks"]:
            lines += [
                f"Does not rerank (dev did not choose the reranker); acc@1 {100 * r['first_stage_acc1']:.2f}.",
                "",
            ]
            continue
        lines += [
            f"One mention a call: {r['single_call_ms_first_stage']} ms without the reranker, "
            f"{r['single_call_ms_reranked']} ms with it.",
            "",
            "| rerank where top-2 margin < | mentions reranked | test acc@1 | reranker ms / mention |",
            "|---|---|---|---|",
        ]
        for g in r["gates"]:
            lines.append(
                f"| {g['gate']} | {100 * g['reranked_share']:.1f} % | {100 * g['acc1']:.2f} | "
                f"{g['rerank_ms_per_mention']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["models:/ehrbert-ncbi@champion", "models:/ehrbert-cdr@champion"]
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "rerank_cost.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-calls", type=int, default=100)
    args = parser.parse_args(argv)
    params = read_params(args.params)
    results = [measure(uri, params, args.repeats, args.single_calls) for uri in args.models]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
