"""The reranker's hierarchy features (params.yaml `rerank.hierarchy`) against the pipeline's reranker without them.

    python benchmarks/rerank_hierarchy.py [--corpora ncbi cdr] [--seeds 1 2 3]

For each corpus and seed, the rerank stage (`ehrbert.rerank`) runs as the pipeline runs it, on the pipeline's own
first stage (outputs/hybrid) and cross-fitted candidates (outputs/cross_fit), with params.yaml's settings but
`rerank.hierarchy` switched on, into a throwaway MLflow store and output folder. Its readings' judgements and
its test scores are set beside the pipeline's own run of the same corpus and seed (metrics/rerank, whose
setting is params.yaml's). The stage's own rule decides on held-out mentions (training and dev) which reading,
if any, it ships; the switch is worth turning on where that rule's gain (mentions fixed net of those broken, by
the shipped reading) is larger with it. Test scores are reported, never used to choose.

Each finished run is kept in reports/rerank_hierarchy.json, so that an interrupted measurement goes on where it
stopped. Writes reports/rerank_hierarchy.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from data_paths import stage_arguments  # benchmarks/ (this script's folder) is on the path
from scipy.stats import ttest_rel

from ehrbert import rerank
from ehrbert.stage import read_params
from ehrbert.stats import mean_sd

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "hybrid_rerank"


def inputs(corpus: str, seed: int) -> dict[str, Path]:
    """The pipeline's outputs that one measurement reads; a missing one stops it, naming the stage to run."""
    paths = {
        "hybrid": ROOT / f"outputs/hybrid/{corpus}-s{seed}",
        "hybrid_run": ROOT / f"runs/hybrid/{corpus}-s{seed}.json",
        "cross_fitted": ROOT / f"outputs/cross_fit/{corpus}-s{seed}",
        "metrics": ROOT / f"metrics/rerank/{corpus}-s{seed}.json",
    }
    missing = [str(p.relative_to(ROOT)) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `dvc repro rerank@{corpus}-{seed}` first")
    return paths


def run_stage(corpus: str, seed: int, hierarchy: bool, params: dict, scratch: Path) -> dict:
    """One rerank stage run with `rerank.hierarchy` set; its metrics and wall time."""
    paths = inputs(corpus, seed)
    params = json.loads(json.dumps(params))
    params["rerank"]["hierarchy"] = hierarchy
    folder = scratch / f"{corpus}-s{seed}-{hierarchy}"
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    argv = [
        "--corpus", corpus, "--seed", str(seed), "--params", str(folder / "params.yaml"),
        "--hybrid", str(paths["hybrid"]), "--hybrid-run-record", str(paths["hybrid_run"]),
        "--cross-fitted", str(paths["cross_fitted"]),
        *stage_arguments(params["data"]),
        "--out-dir", str(folder / "out"), "--metrics", str(folder / "metrics.json"),
        "--run-record", str(folder / "run.json"),
    ]  # fmt: skip
    started = time.perf_counter()
    rerank.main(argv)
    return {
        "metrics": json.loads((folder / "metrics.json").read_text()),
        "seconds": round(time.perf_counter() - started),
    }


def summary(row: dict) -> dict:
    """The figures of one run: the shipped reading, its held-out gain, dev F1 and the test scores."""
    entry = row["metrics"][VARIANT]
    reading = entry["reading"]
    judged = entry["readings"][reading][entry["judge"]] if reading else {"fixed": 0, "broken": 0, "net": 0}
    test = entry["test"]
    return {
        "reading": reading or "none",
        "fixed": judged["fixed"],
        "broken": judged["broken"],
        "net": judged["net"],
        "dev_f1": test["dev_f1"],
        **{k: test[k] for k in ("acc1", "acc1_seen", "acc1_unseen", "f1")},
    }


def report(results: dict, corpora: list[str], seeds: list[int], pipeline_setting: dict[str, bool]) -> str:
    pipeline = ", ".join(f"{c} `{'on' if pipeline_setting[c] else 'off'}`" for c in corpora)
    lines = [
        "# The reranker's hierarchy features",
        "",
        "`python benchmarks/rerank_hierarchy.py` (see its docstring). Each row is one seed; `off`/`on`: "
        f"`rerank.hierarchy` (the pipeline's own run: {pipeline}). Held-out: the "
        "mentions fixed and broken at rank 1 by the shipped reading, training and dev mentions held out "
        "(the stage's rule); dev F1 and test scores of what the stage ships. Mean (SD) over seeds; P: paired t-test "
        "over seeds, on/off (test scores are reported, not used to choose).",
        "",
        "| corpus | seed | hierarchy | reading shipped | held-out fixed / broken (net) | dev F1 | test acc@1 "
        "| seen / unseen | test F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for corpus in corpora:
        rows = {}
        for setting in ("off", "on"):
            rows[setting] = [summary(results[f"{corpus}-s{s}-{setting}"]) for s in seeds]
            for seed, s in zip(seeds, rows[setting]):
                lines.append(
                    f"| {corpus} | {seed} | {setting} | {s['reading']} | {s['fixed']} / {s['broken']} ({s['net']:+d}) "
                    f"| {100 * s['dev_f1']:.2f} | {100 * s['acc1']:.2f} | {100 * s['acc1_seen']:.2f} / "
                    f"{100 * s['acc1_unseen']:.2f} | {100 * s['f1']:.2f} |"
                )
        for setting in ("off", "on"):
            cell = {
                k: mean_sd([s[k] for s in rows[setting]]) for k in ("dev_f1", "acc1", "acc1_seen", "acc1_unseen", "f1")
            }
            net = sum(s["net"] for s in rows[setting])
            lines.append(
                f"| {corpus} | mean | {setting} | | net {net:+d} over seeds | {cell['dev_f1']} | {cell['acc1']} | "
                f"{cell['acc1_seen']} / {cell['acc1_unseen']} | {cell['f1']} |"
            )
        if len(seeds) > 1:
            p = {k: ttest_rel([s[k] for s in rows["on"]], [s[k] for s in rows["off"]]).pvalue for k in ("acc1", "f1")}
            lines.append(f"| {corpus} | P | on/off | | | | {p['acc1']:.3g} | | {p['f1']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "reports/rerank_hierarchy")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    params = read_params(ROOT / "params.yaml")
    for corpus in args.corpora:
        for seed in args.seeds:
            inputs(corpus, seed)
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    earlier = [key.rsplit("-s", 1)[0] for key in results]  # earlier runs' corpora stay reported
    measured = list(dict.fromkeys(earlier + args.corpora))
    setting = {corpus: rerank.hierarchy_switch(params, ROOT / "params.yaml", corpus) for corpus in measured}
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"  # the measurement's runs: thrown away
        for corpus in args.corpora:
            for seed in args.seeds:
                pipeline = json.loads((ROOT / f"metrics/rerank/{corpus}-s{seed}.json").read_text())
                results[f"{corpus}-s{seed}-{'on' if setting[corpus] else 'off'}"] = {
                    "metrics": pipeline,
                    "seconds": None,
                }
                key = f"{corpus}-s{seed}-{'off' if setting[corpus] else 'on'}"
                if key not in results:
                    results[key] = run_stage(corpus, seed, not setting[corpus], params, Path(scratch))
                    store.write_text(json.dumps(results, indent=1) + "\n")
                    print(key, summary(results[key]), results[key]["seconds"], file=sys.stderr, flush=True)
    if tracking:
        os.environ["MLFLOW_TRACKING_URI"] = tracking
    store.write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report(results, measured, args.seeds, setting))


if __name__ == "__main__":
    main()
