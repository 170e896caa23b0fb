"""Hard negatives for the retrieval encoder against in-batch negatives only: what they add and cost.

    python benchmarks/hard_negatives.py [--corpora ncbi cdr] [--seeds 1 2 3] [--settings 1:0 2:0 1:50]

Each setting is `hard_negatives:refresh_steps` (`hybrid.config.retrieval`; see `ehrbert.models.retrieval`).
For each corpus, seed and setting, the hybrid stage (`ehrbert.hybrid`) runs as the pipeline runs it, with
params.yaml's settings but for those two, the same classifier (outputs/finetune) and a throwaway MLflow store
and output folder. Its dev F1 (the full first stage, the figure a dev-only choice reads) and test scores are
set beside the pipeline's own run of the same corpus and seed (metrics/hybrid: in-batch negatives, unless
params.yaml already switches them on). The encoder's training time comes from each run's MLflow store (the
pipeline's: `MLFLOW_TRACKING_URI`); the whole stage is timed here for the runs made here.

Each finished run is kept in reports/hard_negatives.json, so that an interrupted measurement goes on where it
stopped. Writes reports/hard_negatives.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from data_paths import stage_arguments  # benchmarks/ (this script's folder) is on the path

from ehrbert.stage import read_params
from ehrbert.stats import mean_sd

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("retrieval", "hybrid_no_concept")  # the encoder alone, and the full first stage (dev's choice)


def run_stage(corpus: str, seed: int, hard: int, refresh: int, params: dict, scratch: Path) -> dict:
    """One hybrid stage run with these hard-negative settings; its metrics and wall time."""
    from ehrbert import hybrid

    params = json.loads(json.dumps(params))
    params["hybrid"]["config"]["retrieval"].update({"hard_negatives": hard, "refresh_steps": refresh})
    folder = scratch / f"{corpus}-s{seed}-h{hard}-r{refresh}"
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    classifier = params["hybrid"]["config"]["classifier_model"]
    argv = [
        "--corpus", corpus, "--seed", str(seed), "--params", str(folder / "params.yaml"),
        "--classifier", str(ROOT / f"outputs/finetune/{classifier}-{corpus}-s{seed}"),
        *stage_arguments(params["data"]),
        "--out-dir", str(folder / "out"), "--metrics", str(folder / "metrics.json"),
        "--run-record", str(folder / "run.json"),
    ]  # fmt: skip
    started = time.perf_counter()
    hybrid.main(argv)
    seconds = time.perf_counter() - started
    return {
        "metrics": json.loads((folder / "metrics.json").read_text()),
        "seconds": round(seconds, 1),
        "train_seconds": train_seconds(folder / "run.json"),
    }


def train_seconds(record: Path) -> float | None:
    """The encoder's training time (mining included) that a hybrid stage run logged to the current MLflow store."""
    if not os.environ.get("MLFLOW_TRACKING_URI") or not record.exists():
        return None
    import mlflow

    run = mlflow.get_run(json.loads(record.read_text())["runs"]["retrieval"])
    return run.data.metrics.get("retrieval_train_seconds")


def summary(row: dict) -> dict:
    out = {"dev_f1": row["metrics"][VARIANTS[-1]]["test"]["dev_f1"]}
    for variant in VARIANTS:
        test = row["metrics"][variant]["test"]
        out.update({f"{variant}_{k}": test[k] for k in ("acc1", "acc1_seen", "acc1_unseen", "f1")})
    return out


def seconds(rows: list[dict], key: str) -> str:
    """Mean of the rows' `key` (seconds), or a dash when a row lacks it."""
    values = [r.get(key) for r in rows]
    return f"{statistics.mean(values):.0f}" if all(v is not None for v in values) else "–"


def report(results: dict, corpora: list[str], seeds: list[int], settings: list[str]) -> str:
    lines = [
        "# Hard negatives for the retrieval encoder",
        "",
        "`python benchmarks/hard_negatives.py` (see its docstring). Mean (SD) over seeds "
        f"{', '.join(map(str, seeds))}; `in-batch` is the pipeline's own run (metrics/hybrid). `h:r`: hard "
        "negatives per anchor, re-mined every r steps (0: once, by the starting encoder). Dev F1 is the full "
        "first stage's (hybrid_no_concept), the figure a dev-only choice reads; test acc@1 of retrieval alone "
        "and of the full first stage (seen / unseen concepts); seconds of encoder training (mining included) and "
        "of the whole stage, mean over seeds (2 CPU cores).",
        "",
        "| corpus | negatives | dev F1 | retrieval acc@1 | first stage acc@1 | seen / unseen | test F1 | training s "
        "| stage s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    last = VARIANTS[-1]
    for corpus in corpora:
        for setting in ["in-batch", *settings]:
            rows = [results.get(f"{corpus}-s{s}-{setting}") for s in seeds]
            if not all(rows):
                continue
            sums = [summary(r) for r in rows]
            cell = {key: mean_sd([s[key] for s in sums]) for key in sums[0]}
            lines.append(
                f"| {corpus} | {setting} | {cell['dev_f1']} | {cell['retrieval_acc1']} | {cell[last + '_acc1']} | "
                f"{cell[last + '_acc1_seen']} / {cell[last + '_acc1_unseen']} | {cell[last + '_f1']} | "
                f"{seconds(rows, 'train_seconds')} | {seconds(rows, 'seconds')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=["1:0"], help="hard_negatives:refresh_steps")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/hard_negatives")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    params = read_params(ROOT / "params.yaml")
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    for corpus in args.corpora:
        for seed in args.seeds:
            results[f"{corpus}-s{seed}-in-batch"] = {
                "metrics": json.loads((ROOT / f"metrics/hybrid/{corpus}-s{seed}.json").read_text()),
                "seconds": None,  # the pipeline's whole stage is not timed; its encoder training is
                "train_seconds": train_seconds(ROOT / f"runs/hybrid/{corpus}-s{seed}.json"),
            }
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"  # the measurement's runs: thrown away
        for setting in args.settings:
            hard, refresh = (int(v) for v in setting.split(":"))
            for corpus in args.corpora:
                for seed in args.seeds:
                    key = f"{corpus}-s{seed}-{setting}"
                    if key not in results:
                        results[key] = run_stage(corpus, seed, hard, refresh, params, Path(scratch))
                        store.write_text(json.dumps(results, indent=1) + "\n")
                        print(key, summary(results[key]), results[key]["seconds"], file=sys.stderr, flush=True)
    if tracking:
        os.environ["MLFLOW_TRACKING_URI"] = tracking
    store.write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report(results, args.corpora, args.seeds, args.settings))


if __name__ == "__main__":
    main()
